"""Fault injection: statuses, Retry-After, delays, resets, truncation, validate, keep-alive."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from sim_helpers import SimClient, fast, headers

from proxy.sim import SIM_STATE, FaultRule, create_sim_app, start_sim

VALIDATE = "/vault/connections/crm/salesforce/validate"


async def _fault(client: TestClient[Any, Any], **rule: Any) -> dict[str, Any]:
    async with client.post("/_sim/faults", json=rule) as resp:
        assert resp.status == 201, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def _counters(client: TestClient[Any, Any]) -> dict[str, Any]:
    async with client.get("/_sim/counters") as resp:
        body: dict[str, Any] = await resp.json()
        return body


async def test_status_fault_fires_next_n_with_retry_after(sim_client: SimClient) -> None:
    """A status fault answers the next N matching requests with that status and Retry-After."""
    client = await sim_client()
    rule = await _fault(
        client, kind="status", status=503, retry_after_s=2, times=2, path_prefix="/crm/"
    )
    assert rule["id"]
    statuses = []
    for _ in range(3):
        async with client.get("/crm/contacts", headers=headers()) as resp:
            statuses.append(resp.status)
            if resp.status == 503:
                assert resp.headers["Retry-After"] == "2"
                assert (await resp.json())["status_code"] == 503
    assert statuses == [503, 503, 200]
    counters = await _counters(client)
    assert counters["failures"] == 2
    assert counters["faults_fired"] == 2


async def test_status_fault_custom_body_and_method_filter(sim_client: SimClient) -> None:
    """A fault limited to POST leaves GET alone and can answer a custom body."""
    client = await sim_client()
    await _fault(client, kind="status", status=429, method="POST", body={"custom": True})
    async with client.get("/crm/contacts", headers=headers()) as resp:
        assert resp.status == 200
    async with client.post("/crm/contacts", json={}, headers=headers()) as resp:
        assert resp.status == 429
        assert await resp.json() == {"custom": True}


async def test_probability_fault_is_seeded(aiohttp_client: Any) -> None:
    """A probabilistic fault fires on a share of matches, identically for the same seed."""
    patterns = []
    for _ in range(2):
        client = await aiohttp_client(create_sim_app(fast(seed=7, initial_token_expires_in_s=None)))
        client.app[SIM_STATE].add_fault(FaultRule(kind="status", status=502, probability=0.5))
        pattern = []
        for _ in range(20):
            async with client.get("/crm/contacts", headers=headers()) as resp:
                pattern.append(resp.status)
        patterns.append(pattern)
    assert patterns[0] == patterns[1]
    assert 0 < patterns[0].count(502) < 20


async def test_delay_fault_adds_latency_then_serves(sim_client: SimClient) -> None:
    """A delay fault holds the request, then serves it normally."""
    client = await sim_client(initial_token_expires_in_s=None)
    await _fault(client, kind="delay", delay_s=0.2, times=1)
    started = time.monotonic()
    async with client.get("/crm/contacts", headers=headers()) as resp:
        assert resp.status == 200
    assert time.monotonic() - started >= 0.2


async def test_reset_fault_drops_the_connection(sim_client: SimClient) -> None:
    """A reset fault aborts the transport with no response, counted as a transport failure."""
    client = await sim_client()
    await _fault(client, kind="reset", times=1)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with client.get("/crm/contacts", headers=headers()) as resp:
            await resp.read()
    counters = await _counters(client)
    assert counters["transport_failures"] == 1
    assert counters["failures"] == 1
    async with client.get("/crm/contacts", headers=headers()) as resp:
        assert resp.status == 200


async def test_truncate_fault_cuts_the_body(sim_client: SimClient) -> None:
    """A truncate fault sends headers and part of a Content-Length body, then closes."""
    client = await sim_client()
    await _fault(client, kind="truncate", times=1)
    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.get("/crm/contacts", headers=headers()) as resp:
            assert resp.status == 200
            await resp.read()


async def test_validate_fails_once_with_500(sim_client: SimClient) -> None:
    """A one-shot 500 on validate is followed by a working validate."""
    client = await sim_client()
    await _fault(client, kind="status", status=500, path_prefix="/vault/", method="POST", times=1)
    async with client.post(VALIDATE, headers=headers()) as resp:
        assert resp.status == 500
    async with client.post(VALIDATE, headers=headers()) as resp:
        assert resp.status == 200
    assert (await _counters(client))["refreshes"]["validate"] == 1


async def test_validate_hang_holds_until_client_gives_up(sim_client: SimClient) -> None:
    """A long delay on validate makes it hang; shutdown still ends it promptly."""
    client = await sim_client()
    await _fault(client, kind="delay", delay_s=3600, path_prefix="/vault/")
    with pytest.raises(TimeoutError):
        async with client.post(
            VALIDATE, headers=headers(), timeout=aiohttp.ClientTimeout(total=0.2)
        ):
            pass


async def test_validate_cooldown_is_fatal_401_with_retry_after_ms(sim_client: SimClient) -> None:
    """A cooldown fault answers Vault's 401 with detail.debug retry_after_ms and cooldown."""
    client = await sim_client()
    await _fault(client, kind="cooldown", cooldown_s=30, path_prefix="/vault/")
    now_ms = time.time() * 1000
    async with client.post(VALIDATE, headers=headers()) as resp:
        assert resp.status == 401
        body = await resp.json()
    assert body["type_name"] == "ConnectorCredentialsError"
    debug = body["detail"]["debug"]
    assert body["detail"]["type"] == "refresh_token_connector_error"
    assert debug["cooldown_remaining_ms"] == 30000
    assert now_ms + 29000 < debug["retry_after_ms"] < now_ms + 31000


async def test_faults_are_listed_and_cleared(sim_client: SimClient) -> None:
    """GET /_sim/faults lists rules with their fire counts; DELETE clears them all."""
    client = await sim_client()
    await _fault(client, kind="status", status=502, times=1)
    async with client.get("/crm/contacts", headers=headers()):
        pass
    async with client.get("/_sim/faults") as resp:
        [rule] = (await resp.json())["faults"]
    assert rule["fired"] == 1
    await _fault(client, kind="status", status=502)
    async with client.delete("/_sim/faults") as resp:
        assert await resp.json() == {"cleared": 2}
    async with client.get("/crm/contacts", headers=headers()) as resp:
        assert resp.status == 200


async def test_control_paths_are_never_faulted(sim_client: SimClient) -> None:
    """Faults apply to Unify and Vault paths only, never to /_sim/."""
    client = await sim_client()
    await _fault(client, kind="status", status=500)
    async with client.get("/_sim/counters") as resp:
        assert resp.status == 200


async def test_idle_keepalive_connections_are_closed() -> None:
    """With keepalive_timeout_s set, the server closes an idle keep-alive connection."""
    runner, port = await start_sim(fast(), keepalive_timeout_s=0.2)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /_sim/counters HTTP/1.1\r\nHost: sim\r\nConnection: keep-alive\r\n\r\n")
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        await reader.readexactly(length)
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), timeout=2) == b""
        assert time.monotonic() - started < 1.5
        writer.close()
    finally:
        await runner.cleanup()
