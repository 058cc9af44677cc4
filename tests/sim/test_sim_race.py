"""The refresh race over real HTTP: in-request refresh, bursts at expiry, validate, rotation."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient
from sim_helpers import SimClient, headers

from proxy.sim import SIM_STATE


async def _burst(client: TestClient[Any, Any], n: int) -> list[tuple[int, Any]]:
    async def one() -> tuple[int, Any]:
        async with client.get("/crm/contacts", headers=headers()) as resp:
            return resp.status, await resp.json()

    return await asyncio.gather(*(one() for _ in range(n)))


async def _counters(client: TestClient[Any, Any]) -> dict[str, Any]:
    async with client.get("/_sim/counters") as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def test_request_inside_window_refreshes_itself(sim_client: SimClient) -> None:
    """A lone request whose token is inside the window refreshes in-request and succeeds."""
    client = await sim_client()
    async with client.get("/crm/contacts", headers=headers()) as resp:
        assert resp.status == 200
    counters = await _counters(client)
    assert counters["refreshes"] == {"request": 1, "validate": 0}
    conn = counters["per_connection"]["consumer-1/crm/salesforce"]
    assert conn["version"] == 2
    assert conn["expires_in_s"] > 3590


async def test_request_outside_window_does_not_refresh(sim_client: SimClient) -> None:
    """A token expiring after the window is used as is."""
    client = await sim_client(initial_token_expires_in_s=60.0, window_s=30.0)
    async with client.get("/crm/contacts", headers=headers()) as resp:
        assert resp.status == 200
    assert (await _counters(client))["refreshes"]["request"] == 0


async def test_burst_at_expiry_races_in_rotate_mode(sim_client: SimClient) -> None:
    """20 concurrent requests at expiry each refresh; late refreshes get 401 invalid_grant."""
    client = await sim_client(mode="rotate")
    results = await _burst(client, 20)
    statuses = [status for status, _ in results]
    assert statuses.count(401) == 19
    assert statuses.count(200) == 1
    body = next(body for status, body in results if status == 401)
    assert body["type_name"] == "ConnectorCredentialsError"
    assert body["detail"]["type"] == "refresh_token_connector_error"
    assert "invalid_grant" in body["detail"]["message"]
    counters = await _counters(client)
    assert counters["refreshes"]["request"] >= 2
    assert counters["overlaps"] == 19
    assert counters["failures"] == 19
    assert counters["revocations"] == 0
    assert counters["per_connection"]["consumer-1/crm/salesforce"]["state"] == "callable"


async def test_burst_at_expiry_revokes_in_strict_mode(sim_client: SimClient) -> None:
    """In strict mode the burst revokes the family; requests fail until re-authorisation."""
    client = await sim_client(mode="strict")
    results = await _burst(client, 20)
    assert all(status == 401 for status, _ in results)
    counters = await _counters(client)
    assert counters["revocations"] == 1
    assert counters["per_connection"]["consumer-1/crm/salesforce"]["state"] == "invalid"

    async with client.get("/crm/contacts", headers=headers()) as resp:
        assert resp.status == 401
        body = await resp.json()
    assert body["detail"]["type"] == "refresh_token_connector_error"
    assert "re-authorized" in body["message"]

    async with client.post(
        "/_sim/connections/reauthorize", json={"consumer_id": "consumer-1", "unified_api": "crm"}
    ) as resp:
        assert await resp.json() == {"matched": 1}
    assert all(status == 200 for status, _ in await _burst(client, 5))


async def test_validate_first_then_burst_succeeds_without_request_refreshes(
    sim_client: SimClient,
) -> None:
    """One validate refreshes the token, so a following burst needs no in-request refresh."""
    client = await sim_client()
    async with client.post("/vault/connections/crm/salesforce/validate", headers=headers()) as resp:
        assert resp.status == 200
        assert await resp.json() == {
            "status_code": 200,
            "status": "OK",
            "data": {"id": "crm+salesforce", "state": "callable"},
        }
    assert all(status == 200 for status, _ in await _burst(client, 20))
    counters = await _counters(client)
    assert counters["refreshes"] == {"request": 0, "validate": 1}
    assert counters["validates"] == 1
    assert counters["failures"] == 0


async def test_validate_overlapping_a_request_refresh_fails(sim_client: SimClient) -> None:
    """A validate that starts while a request is refreshing is the late refresh and fails."""
    client = await sim_client(refresh_latency_s=0.2)
    data = asyncio.ensure_future(client.get("/crm/contacts", headers=headers()))
    await asyncio.sleep(0.05)
    async with client.post("/vault/connections/crm/salesforce/validate", headers=headers()) as resp:
        assert resp.status == 401
        body = await resp.json()
    assert body["detail"]["type"] == "refresh_token_connector_error"
    assert (await data).status == 200
    counters = await _counters(client)
    assert counters["overlaps"] == 1
    assert counters["vault_failures"] == 1


async def test_in_flight_request_fails_after_rotation(sim_client: SimClient) -> None:
    """A request still using the old access token gets 401 token_expired once it is rotated."""
    client = await sim_client(
        initial_token_expires_in_s=None, request_latency_s=0.3, refresh_latency_s=0.01
    )
    data = asyncio.ensure_future(client.get("/crm/contacts", headers=headers()))
    await asyncio.sleep(0.05)
    async with client.post("/vault/connections/crm/salesforce/validate", headers=headers()) as resp:
        assert resp.status == 200
    resp = await data
    assert resp.status == 401
    body = await resp.json()
    assert body["type_name"] == "ConnectorCredentialsError"
    assert body["detail"]["type"] == "token_expired"


async def test_validate_on_invalid_connection_is_401(sim_client: SimClient) -> None:
    """Validate does not revive an invalid connection; it answers 401 with the detail object."""
    client = await sim_client(mode="strict")
    await _burst(client, 3)
    async with client.post("/vault/connections/crm/salesforce/validate", headers=headers()) as resp:
        assert resp.status == 401
        body = await resp.json()
    assert body["detail"]["type"] == "refresh_token_connector_error"
    assert body["detail"]["debug"]["response"]["data"]["error"] == "invalid_grant"


async def test_expire_control_pushes_a_connection_to_the_edge(sim_client: SimClient) -> None:
    """POST /_sim/connections/expire puts a fresh token back inside the window."""
    client = await sim_client(initial_token_expires_in_s=None)
    async with client.post(
        "/_sim/connections/expire",
        json={"consumer_id": "consumer-1", "unified_api": "crm", "expires_in_s": 1},
    ) as resp:
        assert await resp.json() == {"matched": 1}
    async with client.get("/crm/contacts", headers=headers()) as resp:
        assert resp.status == 200
    assert (await _counters(client))["refreshes"]["request"] == 1
    state = client.app[SIM_STATE]
    assert state.connection("consumer-1", "crm", "salesforce").version == 2


async def test_connections_are_per_consumer(sim_client: SimClient) -> None:
    """Each consumer id gets its own lazily created connection and token."""
    client = await sim_client()
    for consumer in ("a", "b"):
        async with client.get("/crm/contacts", headers=headers(consumer)) as resp:
            assert resp.status == 200
    per = (await _counters(client))["per_connection"]
    assert set(per) == {"a/crm/salesforce", "b/crm/salesforce"}
    assert (await _counters(client))["overlaps"] == 0
