"""Edges of the gate found by review: each test pins a behaviour that once went wrong."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from proxy.sim import FaultRule
from tests.conftest import ProxyFactory, Running, handler_of
from tests.simfixtures import Sim, SimFactory, gated_settings, get, headers

SimProxy = Callable[..., Awaitable[tuple[Sim, Running]]]
CONTACTS = "/crm/contacts"
TOKEN_401 = {
    "status_code": 401,
    "error": "Unauthorized",
    "type_name": "ConnectorCredentialsError",
    "message": "Token refresh failed",
    "detail": {"type": "refresh_token_connector_error", "message": "invalid_grant"},
}


async def test_long_retry_after_on_validate_does_not_spin(sim_and_proxy: SimProxy) -> None:
    """A 429 asking for 60 s on validate is honoured: one Vault call, then 503s carrying the
    wait, never a tight loop of validates."""
    sim, proxy = await sim_and_proxy()
    sim.state.add_fault(
        FaultRule(kind="status", status=429, retry_after_s=60, path_prefix="/vault/connections/crm")
    )
    async with aiohttp.ClientSession() as s:
        results = await asyncio.gather(
            *(get(s, proxy.url + CONTACTS, headers=headers()) for _ in range(5))
        )
        later = await get(s, proxy.url + CONTACTS, headers=headers())
    assert {r[0] for r in results} == {503}
    assert later[0] == 503 and int(later[2]["Retry-After"]) >= 50
    assert sim.state.counters()["faults_fired"] == 1


async def test_two_api_keys_of_one_connection_never_overlap_validates(
    start_simulator: SimFactory, start_proxy: ProxyFactory
) -> None:
    """During an API-key rotation both keys reach the same Apideck connection: their
    validates are serialised and the second adopts the first's token (strict mode: no
    revocation)."""
    sim = await start_simulator(
        window_s=1.0, token_ttl_s=30.0, mode="strict", api_keys=frozenset({"key-a", "key-b"})
    )
    proxy = await start_proxy(sim.url, **gated_settings(1.0, 30.0, 3.0))
    async with aiohttp.ClientSession() as s:
        results = await asyncio.gather(
            *(
                get(s, proxy.url + CONTACTS, headers=headers(api_key=("key-a", "key-b")[i % 2]))
                for i in range(10)
            )
        )
    counters = sim.state.counters()
    assert [r[0] for r in results] == [200] * 10
    assert counters["validates"] == 1
    assert counters["overlaps"] == 0 and counters["revocations"] == 0


async def test_held_request_of_a_departed_client_is_not_sent(sim_and_proxy: SimProxy) -> None:
    """A POST whose client gave up while held is dropped, not created upstream behind the
    client's back (it would be created twice when the client retries)."""
    sim, proxy = await sim_and_proxy(sim={"refresh_latency_s": 1.0})
    session = aiohttp.ClientSession()
    post = asyncio.create_task(
        session.post(proxy.url + CONTACTS, headers=headers(), json={"first_name": "Ada"})
    )
    await asyncio.sleep(0.3)
    post.cancel()
    await session.close()
    await asyncio.sleep(1.2)  # the validate has finished
    assert sim.state.counters()["requests"] == 0


async def test_persistent_token_401_stops_costing_validates(
    sim_and_proxy: SimProxy,
) -> None:
    """When a fresh token does not help (the connection is broken), later token 401s pass
    through without a validate each."""
    sim, proxy = await sim_and_proxy()
    async with aiohttp.ClientSession() as s:
        assert (await get(s, proxy.url + CONTACTS, headers=headers()))[0] == 200
        sim.state.add_fault(
            FaultRule(kind="status", status=401, body=TOKEN_401, path_prefix=CONTACTS)
        )
        statuses = [(await get(s, proxy.url + CONTACTS, headers=headers()))[0] for _ in range(10)]
    assert statuses == [401] * 10
    assert sim.state.counters()["validates"] == 2  # the first, and one for the first 401


async def test_gzipped_token_401_is_still_recognised(
    aiohttp_server: Any, start_proxy: ProxyFactory
) -> None:
    """A token 401 whose body Apideck compressed still triggers the validate and the replay."""
    calls = {"data": 0, "validate": 0}

    async def validate(request: web.Request) -> web.Response:
        calls["validate"] += 1
        return web.json_response({"status_code": 200, "data": {"state": "callable"}})

    async def data(request: web.Request) -> web.Response:
        calls["data"] += 1
        if calls["data"] == 1:
            return web.Response(
                status=401,
                body=gzip.compress(json.dumps(TOKEN_401).encode()),
                headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
            )
        return web.json_response({"data": []})

    app = web.Application()
    app.router.add_post("/vault/connections/{api}/{service}/validate", validate)
    app.router.add_get("/crm/contacts", data)
    upstream = await aiohttp_server(app)
    proxy = await start_proxy(str(upstream.make_url("")), **gated_settings(1.0, 30.0, 3.0))
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        h = {**headers(), "Accept-Encoding": "gzip"}
        async with s.get(proxy.url + CONTACTS, headers=h) as r:
            assert r.status == 200
    assert calls == {"data": 2, "validate": 2}
    assert handler_of(proxy)._metrics.retries.labels("replay")._value.get() == 1


async def test_vault_calls_keep_the_upstream_path_prefix(
    aiohttp_server: Any, start_proxy: ProxyFactory
) -> None:
    """An upstream URL with a path (a gateway in front of Apideck) is kept for Vault calls too."""
    seen: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        seen.append(request.path)
        if request.path.endswith("/validate"):
            return web.json_response({"status_code": 200, "data": {"state": "callable"}})
        return web.json_response({"data": []})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    upstream = await aiohttp_server(app)
    base = str(upstream.make_url("/gateway/apideck"))
    proxy = await start_proxy(base, **gated_settings(1.0, 30.0, 3.0))
    async with aiohttp.ClientSession() as s:
        assert (await get(s, proxy.url + CONTACTS, headers=headers()))[0] == 200
    assert seen == [
        "/gateway/apideck/vault/connections/crm/salesforce/validate",
        "/gateway/apideck/crm/contacts",
    ]


async def test_conflicting_identity_headers_are_refused(sim_and_proxy: SimProxy) -> None:
    """Two different consumer ids in one request get a 400: the gate must not key on one while
    Apideck acts on the other."""
    sim, proxy = await sim_and_proxy()
    h: Any = [*headers().items(), ("x-apideck-consumer-id", "someone-else")]
    async with aiohttp.ClientSession() as s:
        status, body, _ = await get(s, proxy.url + CONTACTS, headers=h)
    assert status == 400
    assert body is not None and body["type_name"] == "RequestValidationError"
    assert sim.state.counters()["requests"] == 0
