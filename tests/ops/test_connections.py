"""/_proxy/connections: off unless asked for, and never shows a consumer id in clear."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from tests.ops.conftest import API_KEY, CONSUMER, SimProxy, auth_headers, connection_id, fetch


async def test_connections_view_is_off_by_default(sim_proxy: SimProxy) -> None:
    """Without APIDECK_PROXY_ADMIN_ENABLED the view answers 404 in Apideck's error envelope."""
    _, proxy = await sim_proxy()
    async with aiohttp.ClientSession() as s:
        await fetch(s, "GET", proxy.url + "/crm/contacts", headers=auth_headers())
        status, body, headers = await fetch(s, "GET", proxy.url + "/_proxy/connections")
    assert status == 404
    assert headers["Content-Type"].startswith("application/json")
    envelope = json.loads(body)
    assert envelope["status_code"] == 404
    assert envelope["type_name"] == "EntityNotFoundError"
    assert "APIDECK_PROXY_ADMIN_ENABLED" in envelope["detail"]
    assert CONSUMER.encode() not in body


async def test_connections_view_lists_state_with_hashed_identity(sim_proxy: SimProxy) -> None:
    """When enabled, each connection shows state, estimated expiry, last validate outcome and
    waiters under a one-way hash; the consumer id and API key appear nowhere."""
    _, proxy = await sim_proxy(admin_enabled=True)
    async with aiohttp.ClientSession() as s:
        await asyncio.gather(
            *(
                fetch(s, "GET", proxy.url + "/crm/contacts", headers=auth_headers())
                for _ in range(3)
            )
        )
        status, body, _ = await fetch(s, "GET", proxy.url + "/_proxy/connections")
    assert status == 200
    view = json.loads(body)
    assert view["count"] == 1
    [row] = view["connections"]
    assert row["connection"] == connection_id()
    assert row["state"] == "fresh"
    assert row["last_validate"] == "ok"
    assert row["waiters"] == 0
    assert 20 < row["expires_in_s"] <= 30  # validated just now, 30 s tokens
    assert (row["unified_api"], row["service_id"]) == ("crm", "salesforce")
    assert CONSUMER.encode() not in body
    assert API_KEY.encode() not in body
    assert b"SECRET" not in body
