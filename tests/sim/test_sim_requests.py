"""Header checks, service-id resolution, response shapes and the /_sim control endpoints."""

from __future__ import annotations

from typing import Any

import pytest
from sim_helpers import API_KEY, APP_ID, SimClient, headers

TWO_CRMS = {"crm": ["salesforce", "hubspot"], "accounting": ["xero"]}


@pytest.mark.parametrize(
    ("sent", "status", "type_name"),
    [
        ({"x-apideck-app-id": APP_ID, "x-apideck-consumer-id": "c"}, 401, "UnauthorizedError"),
        (
            {
                "Authorization": "Bearer nope",
                "x-apideck-app-id": APP_ID,
                "x-apideck-consumer-id": "c",
            },
            401,
            "UnauthorizedError",
        ),
        (
            {"Authorization": API_KEY, "x-apideck-app-id": APP_ID, "x-apideck-consumer-id": "c"},
            401,
            "UnauthorizedError",
        ),
        (
            {"Authorization": f"Bearer {API_KEY}", "x-apideck-consumer-id": "c"},
            400,
            "RequestHeadersValidationError",
        ),
        (
            {
                "Authorization": f"Bearer {API_KEY}",
                "x-apideck-app-id": "other",
                "x-apideck-consumer-id": "c",
            },
            401,
            "UnauthorizedError",
        ),
        (
            {"Authorization": f"Bearer {API_KEY}", "x-apideck-app-id": APP_ID},
            400,
            "RequestHeadersValidationError",
        ),
    ],
    ids=["no-key", "wrong-key", "no-bearer", "no-app-id", "wrong-app-id", "no-consumer"],
)
async def test_header_errors_use_apideck_envelope(
    sim_client: SimClient, sent: dict[str, str], status: int, type_name: str
) -> None:
    """Bad or missing key, app id or consumer id is rejected in Apideck's error envelope."""
    client = await sim_client()
    for method, path in (
        ("GET", "/crm/contacts"),
        ("POST", "/vault/connections/crm/salesforce/validate"),
    ):
        async with client.request(method, path, headers=sent) as resp:
            assert resp.status == status
            body = await resp.json()
        assert set(body) >= {"status_code", "error", "type_name", "message", "detail"}
        assert body["status_code"] == status
        assert body["type_name"] == type_name
    async with client.get("/_sim/counters") as resp:
        assert (await resp.json())["refreshes"] == {"request": 0, "validate": 0}


async def test_other_api_keys_are_configurable(sim_client: SimClient) -> None:
    """Any key listed in api_keys is accepted."""
    client = await sim_client(api_keys=frozenset({"k1", "k2"}))
    async with client.get("/crm/contacts", headers=headers(Authorization="Bearer k2")) as resp:
        assert resp.status == 200


async def test_single_service_is_implied(sim_client: SimClient) -> None:
    """Without x-apideck-service-id, a unified API with one connected service uses it."""
    client = await sim_client(services=TWO_CRMS)
    async with client.get("/accounting/invoices", headers=headers()) as resp:
        assert resp.status == 200
        assert (await resp.json())["service"] == "xero"


async def test_service_id_is_mandatory_with_two_services(sim_client: SimClient) -> None:
    """With two services for a unified API the service id is required (400), then honoured."""
    client = await sim_client(services=TWO_CRMS)
    async with client.get("/crm/contacts", headers=headers()) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert body["type_name"] == "RequestHeadersValidationError"
    assert body["detail"]["services"] == ["salesforce", "hubspot"]
    async with client.get(
        "/crm/contacts", headers=headers(**{"x-apideck-service-id": "hubspot"})
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["service"] == "hubspot"


async def test_unknown_service_and_unconnected_api_are_404(sim_client: SimClient) -> None:
    """A service the consumer has not connected, or an API with no service, is 404."""
    client = await sim_client(services=TWO_CRMS)
    async with client.get(
        "/crm/contacts", headers=headers(**{"x-apideck-service-id": "pipedrive"})
    ) as resp:
        assert resp.status == 404
        assert (await resp.json())["type_name"] == "ConnectionNotFoundError"
    async with client.get("/hris/employees", headers=headers()) as resp:
        assert resp.status == 404
    async with client.post("/vault/connections/crm/pipedrive/validate", headers=headers()) as resp:
        assert resp.status == 404
        assert (await resp.json())["type_name"] == "ConnectionNotFoundError"
    async with client.get("/nope/things", headers=headers()) as resp:
        assert resp.status == 404
        assert (await resp.json())["type_name"] == "EntityNotFoundError"


async def test_generic_paths_answer_unified_shapes(sim_client: SimClient) -> None:
    """Other unified paths answer list/one/add/update/delete envelopes with a request id."""
    client = await sim_client()
    expected = [
        ("GET", "/file-storage/files", 200, "all"),
        ("GET", "/hris/employees/e1", 200, "one"),
        ("POST", "/ats/applicants", 201, "add"),
        ("PATCH", "/crm/companies/x", 200, "update"),
        ("DELETE", "/crm/companies/x", 200, "delete"),
    ]
    for method, path, status, operation in expected:
        kwargs: dict[str, Any] = {"json": {"name": "n"}} if method in ("POST", "PATCH") else {}
        async with client.request(method, path, headers=headers(), **kwargs) as resp:
            assert resp.status == status, path
            assert resp.headers["x-apideck-request-id"]
            body = await resp.json()
        assert body["operation"] == operation
        assert body["resource"] == path.split("/")[2]


async def test_invalid_json_body_is_400(sim_client: SimClient) -> None:
    """A write with a body that is not a JSON object is a RequestValidationError."""
    client = await sim_client()
    async with client.post(
        "/crm/contacts", data=b"[1", headers={**headers(), "Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["type_name"] == "RequestValidationError"


async def test_vault_connections_list_and_one(sim_client: SimClient) -> None:
    """GET /vault/connections lists the consumer's connections with service, api and state."""
    client = await sim_client(services=TWO_CRMS)
    async with client.get("/vault/connections", params={"api": "crm"}, headers=headers()) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert [c["service_id"] for c in body["data"]] == ["salesforce", "hubspot"]
    first = body["data"][0]
    assert first["id"] == "crm+salesforce"
    assert first["unified_api"] == "crm"
    assert first["state"] == "callable"
    assert first["enabled"] is True
    async with client.get("/vault/connections", headers=headers()) as resp:
        assert len((await resp.json())["data"]) == 3
    async with client.get("/vault/connections/crm/hubspot", headers=headers()) as resp:
        assert (await resp.json())["data"]["service_id"] == "hubspot"


async def test_counters_count_requests_failures_and_reset(sim_client: SimClient) -> None:
    """Counters track data and vault traffic and failures; reset zeroes and can forget."""
    client = await sim_client()
    async with client.get("/crm/contacts", headers=headers()) as resp:
        assert resp.status == 200
    async with client.get("/crm/contacts", headers={}) as resp:
        assert resp.status == 401
    async with client.post("/vault/connections/crm/salesforce/validate", headers=headers()):
        pass
    async with client.get("/_sim/counters") as resp:
        counters = await resp.json()
    assert counters["requests"] == 2
    assert counters["failures"] == 1
    assert counters["data_failures"] == 1
    assert counters["vault_requests"] == 1
    assert counters["validates"] == 1
    assert counters["statuses"] == {"200": 2, "401": 1}
    conn = counters["per_connection"]["consumer-1/crm/salesforce"]
    assert conn["requests"] == 1
    assert conn["refreshes"] == {"request": 1, "validate": 1}
    assert conn["version"] == 3

    async with client.post("/_sim/reset") as resp:
        assert resp.status == 200
    async with client.get("/_sim/counters") as resp:
        counters = await resp.json()
    assert counters["requests"] == 0
    assert counters["per_connection"]["consumer-1/crm/salesforce"]["version"] == 3
    async with client.post("/_sim/reset", json={"forget_connections": True}):
        pass
    async with client.get("/_sim/counters") as resp:
        assert (await resp.json())["per_connection"] == {}


async def test_control_rejects_bad_bodies(sim_client: SimClient) -> None:
    """Control endpoints answer 400 in the envelope for malformed bodies."""
    client = await sim_client()
    async with client.post("/_sim/connections/expire", json={"expires_in_s": "soon"}) as resp:
        assert resp.status == 400
    async with client.post("/_sim/faults", json={"kind": "explode", "times": -1}) as resp:
        assert resp.status == 400
        detail = (await resp.json())["detail"]
    assert "kind" in detail and "times" in detail


async def test_invalidate_then_reauthorize_controls(sim_client: SimClient) -> None:
    """POST /_sim/connections/invalidate makes requests 401 until /reauthorize."""
    client = await sim_client(initial_token_expires_in_s=None)
    target = {"consumer_id": "consumer-1", "unified_api": "crm"}
    async with client.post("/_sim/connections/invalidate", json=target) as resp:
        assert await resp.json() == {"matched": 1}
    async with client.get("/crm/contacts", headers=headers()) as resp:
        assert resp.status == 401
        assert (await resp.json())["type_name"] == "ConnectorCredentialsError"
    async with client.get("/vault/connections", params={"api": "crm"}, headers=headers()) as resp:
        assert (await resp.json())["data"][0]["state"] == "invalid"
    async with client.post("/_sim/connections/reauthorize", json=target) as resp:
        assert await resp.json() == {"matched": 1}
    async with client.get("/crm/contacts", headers=headers()) as resp:
        assert resp.status == 200
    async with client.get("/_sim/counters") as resp:
        counters = await resp.json()
    assert counters["revocations"] == 1
    assert counters["per_connection"]["consumer-1/crm/salesforce"]["family"] == 2
