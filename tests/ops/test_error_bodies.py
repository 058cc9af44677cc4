"""Error bodies the proxy writes itself never quote the caller's credentials or consumer id."""

from __future__ import annotations

import json

import aiohttp

from proxy.sim import FaultRule
from tests.conftest import ProxyFactory
from tests.ops.conftest import API_KEY, CONSUMER, SimProxy, auth_headers, fetch

WRONG_KEY = "sk-SECRET-wrong-0000"


def assert_clean(body: bytes, *secrets: str) -> dict[str, object]:
    envelope: dict[str, object] = json.loads(body)
    assert {"status_code", "error", "type_name", "message", "detail"} <= set(envelope)
    for secret in (*secrets, CONSUMER, "SECRET"):
        assert secret.encode() not in body, secret
    return envelope


async def test_validation_failed_envelope_has_no_key(sim_proxy: SimProxy) -> None:
    """A validate Vault refuses for a wrong API key answers Apideck's own 401 (as without the
    proxy) without echoing the key."""
    _, proxy = await sim_proxy()
    async with aiohttp.ClientSession() as s:
        status, body, _ = await fetch(
            s,
            "GET",
            proxy.url + f"/crm/contacts?api_key={WRONG_KEY}",
            headers=auth_headers(api_key=WRONG_KEY),
        )
    assert status == 401
    envelope = assert_clean(body, WRONG_KEY, API_KEY)
    assert envelope["type_name"] == "UnauthorizedError"


async def test_502_envelope_has_no_token(sim_proxy: SimProxy) -> None:
    """An upstream that hangs up answers 502 without the bearer token or query secrets."""
    sim, proxy = await sim_proxy()
    sim.state.add_fault(FaultRule(kind="reset", path_prefix="/crm/contacts", method="POST"))
    async with aiohttp.ClientSession() as s:
        status, body, _ = await fetch(
            s,
            "POST",
            proxy.url + "/crm/contacts?access_token=at-SECRET-1",
            headers=auth_headers(),
            json={"refresh_token": "rt-SECRET-2"},
        )
    assert status == 502
    envelope = assert_clean(body, API_KEY, "at-SECRET-1", "rt-SECRET-2")
    assert envelope["type_name"] == "UpstreamConnectionError"


async def test_504_envelope_has_no_token(sim_proxy: SimProxy) -> None:
    """An upstream too slow to answer gives 504 without the bearer token or query secrets."""
    sim, proxy = await sim_proxy(read_timeout_s=0.2)
    sim.state.add_fault(
        FaultRule(kind="delay", delay_s=2.0, path_prefix="/crm/contacts", method="POST")
    )
    async with aiohttp.ClientSession() as s:
        status, body, _ = await fetch(
            s,
            "POST",
            proxy.url + "/crm/contacts?access_token=at-SECRET-1",
            headers=auth_headers(),
            json={"refresh_token": "rt-SECRET-2"},
        )
    assert status == 504
    envelope = assert_clean(body, API_KEY, "at-SECRET-1", "rt-SECRET-2")
    assert envelope["type_name"] == "UpstreamTimeoutError"


async def test_unreachable_upstream_envelope_has_no_key(start_proxy: ProxyFactory) -> None:
    """With Apideck unreachable, a request the proxy injects its own key into gets a 502
    that quotes neither that key nor the caller's."""
    proxy = await start_proxy("http://127.0.0.1:9", api_key=API_KEY, app_id="ops-app")
    async with aiohttp.ClientSession() as s:
        status, body, _ = await fetch(s, "POST", proxy.url + "/vault/connections")
    assert status == 502
    assert_clean(body, API_KEY)


async def test_parser_errors_do_not_echo_request_bytes(sim_proxy: SimProxy) -> None:
    """400 and 431 bodies for unparsable requests never quote the request (it may hold a key)."""
    import asyncio

    _, proxy = await sim_proxy()
    port = int(proxy.url.rsplit(":", 1)[1])
    secret = "SECRETSECRET" * 2000
    for raw in (
        f"GET /crm/contacts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\n\r\n",
        f"GET /crm/contacts?api_key={secret} HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nBad Header: SECRETSECRET\r\n\r\n",
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw.encode())
        await writer.drain()
        answer = await reader.read(65536)
        writer.close()
        assert answer.split(b" ")[1] in (b"400", b"431")
        assert b"SECRETSECRET" not in answer
