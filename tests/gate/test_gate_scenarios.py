"""The gate in the real request path: proxy in front of the simulator, HTTP all the way."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from proxy.settings import SettingsError, load_settings
from proxy.sim import FaultRule
from tests.conftest import Running, handler_of
from tests.gate.conftest import Sim, get, headers

SimProxy = Callable[..., Awaitable[tuple[Sim, Running]]]
CONTACTS = "/crm/contacts"


def validates(sim: Sim) -> int:
    return int(sim.state.counters()["validates"])


async def test_disconnecting_waiter_leaves_validate_and_others_alone(
    sim_and_proxy: SimProxy,
) -> None:
    """A held client that disconnects neither cancels the validate nor fails the others; a
    request arriving afterwards joins the same validate."""
    sim, proxy = await sim_and_proxy(sim={"refresh_latency_s": 0.5})
    url = proxy.url + CONTACTS
    async with aiohttp.ClientSession() as s:
        others = [asyncio.create_task(get(s, url, headers=headers())) for _ in range(5)]
        leaver_session = aiohttp.ClientSession()
        leaver = asyncio.create_task(get(leaver_session, url, headers=headers()))
        await asyncio.sleep(0.15)
        leaver.cancel()
        await leaver_session.close()
        late = asyncio.create_task(get(s, url, headers=headers()))
        results = await asyncio.gather(*others, late)
    assert [status for status, _, _ in results] == [200] * 6
    assert validates(sim) == 1


async def test_short_client_timeout_does_not_fail_others(sim_and_proxy: SimProxy) -> None:
    """The first caller giving up before the validate ends leaves the others succeeding."""
    sim, proxy = await sim_and_proxy(sim={"refresh_latency_s": 0.4})
    url = proxy.url + CONTACTS
    async with aiohttp.ClientSession() as s:
        first = asyncio.create_task(
            get(s, url, headers=headers(), timeout=aiohttp.ClientTimeout(total=0.1))
        )
        await asyncio.sleep(0.02)
        rest = [asyncio.create_task(get(s, url, headers=headers())) for _ in range(4)]
        with pytest.raises(TimeoutError):
            await first
        statuses = [r[0] for r in await asyncio.gather(*rest)]
    assert statuses == [200] * 4
    assert validates(sim) == 1


async def test_validate_500_once_then_success(sim_and_proxy: SimProxy) -> None:
    """A validate failing once with 500 is retried; every held request succeeds."""
    sim, proxy = await sim_and_proxy()
    sim.state.add_fault(
        FaultRule(kind="status", status=500, path_prefix="/vault/connections/crm", times=1)
    )
    async with aiohttp.ClientSession() as s:
        results = await asyncio.gather(
            *(get(s, proxy.url + CONTACTS, headers=headers()) for _ in range(5))
        )
    assert [r[0] for r in results] == [200] * 5
    assert sim.state.counters()["refreshes"]["request"] == 0
    assert validates(sim) == 1  # the 500 never reached the refresh


async def test_fatal_validate_is_shared_and_cooled_down(sim_and_proxy: SimProxy) -> None:
    """Apideck's refresh cooldown reaches every waiter as one clear error with Retry-After,
    and no new validate is sent until it passes."""
    sim, proxy = await sim_and_proxy()
    sim.state.add_fault(
        FaultRule(kind="cooldown", cooldown_s=4.0, path_prefix="/vault/connections/crm", times=1)
    )
    async with aiohttp.ClientSession() as s:
        results = await asyncio.gather(
            *(get(s, proxy.url + CONTACTS, headers=headers()) for _ in range(4))
        )
        vault_after_burst = sim.state.counters()["vault_requests"]
        again = await get(s, proxy.url + CONTACTS, headers=headers())
    bodies = [body for _, body, _ in results]
    assert {status for status, _, _ in results} == {401}
    assert all(b == bodies[0] for b in bodies)
    assert bodies[0] is not None
    assert bodies[0]["type_name"] == "ConnectionValidationError"
    assert set(bodies[0]) >= {"status_code", "error", "type_name", "message", "detail"}
    assert "cooldown" in str(bodies[0]["detail"]).lower()
    assert again[0] == 401
    assert 1 <= int(again[2]["Retry-After"]) <= 4
    assert sim.state.counters()["vault_requests"] == vault_after_burst  # cooldown honoured


async def test_wrong_api_key_cannot_lock_out_the_right_one(sim_and_proxy: SimProxy) -> None:
    """A caller with a wrong API key gets Apideck's refusal and a cooldown of its own; the right
    key on the same connection still works."""
    sim, proxy = await sim_and_proxy()
    async with aiohttp.ClientSession() as s:
        bad = await get(s, proxy.url + CONTACTS, headers=headers(api_key="wrong"))
        vault_after_bad = sim.state.counters()["vault_requests"]
        bad_again = await get(s, proxy.url + CONTACTS, headers=headers(api_key="wrong"))
        good = await get(s, proxy.url + CONTACTS, headers=headers())
    assert bad[0] == 401 and bad_again[0] == 401
    # exactly what Apideck answers a wrong key, without the proxy's Retry-After
    assert bad[1] == bad_again[1]
    assert bad_again[1] is not None and bad_again[1]["type_name"] == "UnauthorizedError"
    assert "Retry-After" not in bad_again[2]
    assert good[0] == 200
    # the bad key's cooldown sent nothing; the good key needed its own validate
    assert sim.state.counters()["vault_requests"] == vault_after_bad + 1


async def test_two_connections_do_not_wait_on_each_other(sim_and_proxy: SimProxy) -> None:
    """A slow validate for one connection leaves another connection's requests unaffected."""
    sim, proxy = await sim_and_proxy(sim={"refresh_latency_s": 0.05})
    sim.state.add_fault(FaultRule(kind="delay", delay_s=1.5, path_prefix="/vault/connections/crm"))
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as s:
        slow = asyncio.create_task(get(s, proxy.url + CONTACTS, headers=headers("a")))
        await asyncio.sleep(0.05)
        started = loop.time()
        fast = await get(s, proxy.url + "/accounting/invoices", headers=headers("b", "xero"))
        fast_s = loop.time() - started
        assert not slow.done()
        assert (await slow)[0] == 200
    assert fast[0] == 200
    assert fast_s < 1.0


async def test_unauthorized_mid_flight_is_replayed_once(sim_and_proxy: SimProxy) -> None:
    """A request whose token is rotated under it gets one coalesced validate and one replay."""
    sim, proxy = await sim_and_proxy(sim={"request_latency_s": 0.4, "refresh_latency_s": 0.05})
    url = proxy.url + CONTACTS
    async with aiohttp.ClientSession() as s:
        assert (await get(s, url, headers=headers()))[0] == 200  # token now known
        in_flight = [asyncio.create_task(get(s, url, headers=headers())) for _ in range(3)]
        await asyncio.sleep(0.1)
        # Someone else (another tool, Apideck's dashboard) rotates the token meanwhile.
        async with s.post(
            sim.url + "/vault/connections/crm/salesforce/validate", headers=headers(), json={}
        ) as r:
            assert r.status == 200
        results = await asyncio.gather(*in_flight)
    assert [r[0] for r in results] == [200] * 3
    replays = handler_of(proxy)._metrics.retries.labels("replay")._value.get()
    assert replays == 3
    # initial validate + the outside one + one coalesced validate for all three 401s
    assert validates(sim) == 3


async def test_replay_happens_only_once(sim_and_proxy: SimProxy) -> None:
    """A token 401 that persists is replayed once and then returned: never a loop."""
    sim, proxy = await sim_and_proxy()
    body = {
        "status_code": 401,
        "error": "Unauthorized",
        "type_name": "ConnectorCredentialsError",
        "message": "Token refresh failed",
        "detail": {"type": "refresh_token_connector_error", "message": "nope"},
    }
    async with aiohttp.ClientSession() as s:
        assert (await get(s, proxy.url + CONTACTS, headers=headers()))[0] == 200
        before = sim.state.counters()["requests"]
        sim.state.add_fault(FaultRule(kind="status", status=401, body=body, path_prefix=CONTACTS))
        status, got, _ = await get(s, proxy.url + CONTACTS, headers=headers())
    assert status == 401
    assert got == body
    assert sim.state.counters()["requests"] - before == 2


async def test_api_key_401_is_not_replayed(sim_and_proxy: SimProxy) -> None:
    """A 401 about the caller's API key passes straight back: a validate cannot fix it."""
    sim, proxy = await sim_and_proxy()
    async with aiohttp.ClientSession() as s:
        assert (await get(s, proxy.url + CONTACTS, headers=headers()))[0] == 200
        sim.state.add_fault(
            FaultRule(
                kind="status",
                status=401,
                path_prefix=CONTACTS,
                body={
                    "status_code": 401,
                    "error": "Unauthorized",
                    "type_name": "UnauthorizedError",
                    "message": "Unauthorized Request",
                    "detail": "Missing authentication",
                },
            )
        )
        before = validates(sim)
        status, _, _ = await get(s, proxy.url + CONTACTS, headers=headers())
    assert status == 401
    assert validates(sim) == before


async def test_three_refresh_cycles(sim_and_proxy: SimProxy) -> None:
    """Three expiries in a row: one validate each, no failures, no refresh inside requests."""
    sim, proxy = await sim_and_proxy(
        sim={"window_s": 0.3, "token_ttl_s": 1.5, "refresh_latency_s": 0.05},
        proxy={"refresh_margin_s": 0.6, "refresh_ahead_s": 0},
    )
    async with aiohttp.ClientSession() as s:
        for cycle in range(1, 4):
            results = await asyncio.gather(
                *(get(s, proxy.url + CONTACTS, headers=headers()) for _ in range(10))
            )
            assert [r[0] for r in results] == [200] * 10
            assert validates(sim) == cycle
            await asyncio.sleep(1.0)  # into the proxy's margin, before the simulator's window
    assert sim.state.counters()["refreshes"]["request"] == 0


async def test_requests_never_cross_connections(sim_and_proxy: SimProxy) -> None:
    """Released requests go out with their own caller's headers, counted on their own
    connection."""
    sim, proxy = await sim_and_proxy()
    consumers = [f"consumer-{i}" for i in range(8)]
    async with aiohttp.ClientSession() as s:
        await asyncio.gather(
            *(get(s, proxy.url + CONTACTS, headers=headers(c)) for c in consumers for _ in range(5))
        )
    per = sim.state.counters()["per_connection"]
    for c in consumers:
        rows = [v for k, v in per.items() if c in k]
        assert len(rows) == 1
        assert rows[0]["requests"] == 5
        assert rows[0]["validates"] == 1


async def test_missing_consumer_id_is_forwarded_ungated(sim_and_proxy: SimProxy) -> None:
    """Without a consumer id there is no connection: Apideck's own 400 comes back, no validate."""
    sim, proxy = await sim_and_proxy()
    h = headers()
    del h["x-apideck-consumer-id"]
    async with aiohttp.ClientSession() as s:
        status, body, _ = await get(s, proxy.url + CONTACTS, headers=h)
    assert status == 400
    assert body is not None and "consumer" in str(body).lower()
    assert validates(sim) == 0


async def test_unknown_unified_api_is_forwarded_ungated(sim_and_proxy: SimProxy) -> None:
    """Paths outside the known unified APIs pass through untouched (Apideck answers them)."""
    sim, proxy = await sim_and_proxy()
    async with aiohttp.ClientSession() as s:
        status, _, _ = await get(s, proxy.url + "/not-an-api/things", headers=headers())
    assert status == 404
    assert validates(sim) == 0


async def test_missing_service_id_is_resolved_through_vault(sim_and_proxy: SimProxy) -> None:
    """With one connected service, the gate finds it via Vault and gates the request."""
    sim, proxy = await sim_and_proxy()
    async with aiohttp.ClientSession() as s:
        results = await asyncio.gather(
            *(get(s, proxy.url + CONTACTS, headers=headers(service=None)) for _ in range(5))
        )
    assert [r[0] for r in results] == [200] * 5
    assert validates(sim) == 1


async def test_ambiguous_service_is_forwarded_ungated(sim_and_proxy: SimProxy) -> None:
    """With two connected services and no service id, Apideck's own 400 comes back."""
    services: dict[str, Any] = {"crm": ["salesforce", "hubspot"]}
    sim, proxy = await sim_and_proxy(sim={"services": services})
    async with aiohttp.ClientSession() as s:
        status, _, _ = await get(s, proxy.url + CONTACTS, headers=headers(service=None))
    assert status == 400
    assert validates(sim) == 0
    ungated = handler_of(proxy)._metrics.ungated.labels("service_unresolved")._value.get()
    assert ungated == 1


async def test_hold_timeout_gives_503_envelope(sim_and_proxy: SimProxy) -> None:
    """A validate slower than the hold timeout answers 503 in the envelope with Retry-After."""
    sim, proxy = await sim_and_proxy(proxy={"hold_timeout_s": 0.3})
    sim.state.add_fault(FaultRule(kind="delay", delay_s=2.0, path_prefix="/vault/connections/crm"))
    async with aiohttp.ClientSession() as s:
        status, body, hdrs = await get(s, proxy.url + CONTACTS, headers=headers())
    assert status == 503
    assert body is not None and body["type_name"] == "ConnectionValidationTimeoutError"
    assert "Retry-After" in hdrs


def test_margin_at_or_above_ttl_is_refused() -> None:
    """Start-up refuses a margin that is not strictly between Apideck's window and a TTL."""
    with pytest.raises(SettingsError) as exc:
        load_settings(None, refresh_margin_s=2000, token_ttl_s=1800)
    assert any("below its token lifetime" in line for line in exc.value.lines)
    with pytest.raises(SettingsError):
        load_settings(None, refresh_margin_s=30)
    with pytest.raises(SettingsError):
        load_settings(None, service_token_ttl_s={"xero": 200})  # below the default margin
