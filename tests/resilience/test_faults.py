"""Upstream faults injected in the simulator, seen through the proxy: retries, timeouts,
backpressure, bounded state. Counts and outcomes are asserted; figures live in benchmarks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
import psutil

from proxy.errors import Overloaded
from proxy.gate import ConnectionKey, Credentials, Gate, GatePolicy, Outcome, ValidateResult
from proxy.sim import FaultRule
from tests.conftest import Running, handler_of
from tests.gate.conftest import Sim, get, headers

SimProxy = Callable[..., Awaitable[tuple[Sim, Running]]]
CONTACTS = "/crm/contacts"
FAST_RETRY = {"retry_backoff_base_s": 0.01, "retry_backoff_cap_s": 0.05}


def retries(proxy: Running, kind: str) -> float:
    return float(handler_of(proxy)._metrics.retries.labels(kind)._value.get())


async def test_503_with_retry_after_is_retried_for_get(sim_and_proxy: SimProxy) -> None:
    """A GET meeting a 503 with Retry-After succeeds on the retry, after the asked wait."""
    sim, proxy = await sim_and_proxy(proxy=FAST_RETRY)
    async with aiohttp.ClientSession() as s:
        assert (await get(s, proxy.url + CONTACTS, headers=headers()))[0] == 200
        sim.state.add_fault(
            FaultRule(kind="status", status=503, retry_after_s=1, path_prefix=CONTACTS, times=1)
        )
        started = time.monotonic()
        status, _, _ = await get(s, proxy.url + CONTACTS, headers=headers())
    assert status == 200
    assert time.monotonic() - started >= 1.0
    assert retries(proxy, "status_503") == 1


async def test_post_meeting_503_is_not_retried(sim_and_proxy: SimProxy) -> None:
    """A POST that reached upstream gets the 503 as it is: it may already have had an effect."""
    sim, proxy = await sim_and_proxy(proxy=FAST_RETRY)
    async with aiohttp.ClientSession() as s:
        assert (await get(s, proxy.url + CONTACTS, headers=headers()))[0] == 200
        sim.state.add_fault(FaultRule(kind="status", status=503, path_prefix=CONTACTS, times=1))
        before = sim.state.counters()["requests"]
        async with s.post(proxy.url + CONTACTS, headers=headers(), json={"first_name": "Ada"}) as r:
            assert r.status == 503
    assert sim.state.counters()["requests"] - before == 1


async def test_connection_reset_is_retried_for_get_not_post(sim_and_proxy: SimProxy) -> None:
    """A reset mid-request is retried for an idempotent request and answered 502 for a POST."""
    sim, proxy = await sim_and_proxy(proxy=FAST_RETRY)
    async with aiohttp.ClientSession() as s:
        assert (await get(s, proxy.url + CONTACTS, headers=headers()))[0] == 200
        sim.state.add_fault(FaultRule(kind="reset", path_prefix=CONTACTS, times=1))
        assert (await get(s, proxy.url + CONTACTS, headers=headers()))[0] == 200
        sim.state.add_fault(FaultRule(kind="reset", path_prefix=CONTACTS, times=1))
        async with s.post(proxy.url + CONTACTS, headers=headers(), json={}) as r:
            body = await r.json()
            assert r.status == 502
    assert body["type_name"] == "UpstreamConnectionError"


async def test_idle_keepalive_close_is_survived(
    start_simulator: Callable[..., Awaitable[Sim]],
    start_proxy: Callable[..., Awaitable[Running]],
) -> None:
    """An upstream that closes idle keep-alive connections never surfaces as a client error."""
    from proxy.sim import SimConfig, start_sim
    from tests.gate.conftest import gated_settings

    runner, port = await start_sim(
        SimConfig(window_s=1.0, token_ttl_s=30.0, refresh_latency_s=0.01),
        keepalive_timeout_s=0.2,
    )
    try:
        proxy = await start_proxy(f"http://127.0.0.1:{port}", **gated_settings(1.0, 30.0, 3.0))
        async with aiohttp.ClientSession() as s:
            statuses = []
            for _ in range(4):
                statuses.append((await get(s, proxy.url + CONTACTS, headers=headers()))[0])
                await asyncio.sleep(0.35)  # the upstream has closed the pooled connection
        assert statuses == [200] * 4
    finally:
        await runner.cleanup()


async def test_retry_budget_caps_load_under_a_503_wave(sim_and_proxy: SimProxy) -> None:
    """Under a wave of 503s, retries stay a small fraction of requests (no load multiplier)."""
    sim, proxy = await sim_and_proxy(
        proxy={**FAST_RETRY, "retry_budget_ratio": 0.1, "retry_budget_min_per_s": 1.0}
    )
    async with aiohttp.ClientSession() as s:
        assert (await get(s, proxy.url + CONTACTS, headers=headers()))[0] == 200
        sim.state.add_fault(FaultRule(kind="status", status=503, path_prefix=CONTACTS))
        before = sim.state.counters()["requests"]
        results = await asyncio.gather(
            *(get(s, proxy.url + CONTACTS, headers=headers()) for _ in range(200))
        )
        upstream = sim.state.counters()["requests"] - before
    assert {r[0] for r in results} == {503}
    # without the budget this would be 3 x 200 = 600
    assert upstream <= 200 + 0.1 * 200 + 10 + 5


async def test_truncated_upstream_body_aborts_the_client(sim_and_proxy: SimProxy) -> None:
    """A body cut short upstream reaches the client as a broken response, never a short 200."""
    sim, proxy = await sim_and_proxy()
    async with aiohttp.ClientSession() as s:
        assert (await get(s, proxy.url + CONTACTS, headers=headers()))[0] == 200
        sim.state.add_fault(FaultRule(kind="truncate", path_prefix=CONTACTS, times=1))
        try:
            async with s.get(proxy.url + CONTACTS, headers=headers()) as r:
                await r.read()
            broken = False
        except aiohttp.ClientPayloadError:
            broken = True
    assert broken


async def test_slow_upstream_gives_504_envelope(sim_and_proxy: SimProxy) -> None:
    """An upstream slower than the read timeout answers 504 in the error envelope."""
    sim, proxy = await sim_and_proxy(proxy={"read_timeout_s": 0.3})
    async with aiohttp.ClientSession() as s:
        assert (await get(s, proxy.url + CONTACTS, headers=headers()))[0] == 200
        sim.state.add_fault(FaultRule(kind="delay", delay_s=1.5, path_prefix=CONTACTS, times=1))
        status, body, _ = await get(s, proxy.url + CONTACTS, headers=headers())
    assert status == 504
    assert body is not None and body["type_name"] == "UpstreamTimeoutError"


async def test_hanging_validate_does_not_leave_anything_stuck(sim_and_proxy: SimProxy) -> None:
    """A validate that hangs answers waiters with 503 at the hold timeout, and once the
    upstream recovers, a request sent after the advertised Retry-After validates and succeeds."""
    sim, proxy = await sim_and_proxy(proxy={"hold_timeout_s": 0.5, "validate_timeout_s": 0.3})
    sim.state.add_fault(
        FaultRule(kind="delay", delay_s=5.0, path_prefix="/vault/connections/crm", times=2)
    )
    async with aiohttp.ClientSession() as s:
        held = await asyncio.gather(
            *(get(s, proxy.url + CONTACTS, headers=headers()) for _ in range(3))
        )
        assert {r[0] for r in held} == {503}
        sim.state.clear_faults()
        await asyncio.sleep(max(int(r[2]["Retry-After"]) for r in held))
        status, _, _ = await get(s, proxy.url + CONTACTS, headers=headers())
    assert status == 200


async def test_in_flight_bound_rejects_with_503(sim_and_proxy: SimProxy) -> None:
    """Beyond the in-flight bound, requests get 503 with Retry-After instead of queueing."""
    _, proxy = await sim_and_proxy(sim={"request_latency_s": 0.3}, proxy={"max_in_flight": 5})
    async with aiohttp.ClientSession() as s:
        assert (await get(s, proxy.url + CONTACTS, headers=headers()))[0] == 200
        results = await asyncio.gather(
            *(get(s, proxy.url + CONTACTS, headers=headers()) for _ in range(20))
        )
    statuses = [r[0] for r in results]
    assert statuses.count(200) == 5
    assert statuses.count(503) == 15
    rejected = [r for r in results if r[0] == 503]
    assert all(r[1] and r[1]["type_name"] == Overloaded.type_name for r in rejected)
    assert all("Retry-After" in r[2] for r in rejected)


async def test_flood_of_distinct_consumers_keeps_memory_bounded() -> None:
    """100,000 distinct consumer ids leave the connection table capped and memory bounded."""

    class Instant:
        async def validate(self, key: ConnectionKey, c: Credentials) -> ValidateResult:
            return ValidateResult(Outcome.OK, 200)

    gate = Gate(
        GatePolicy(ttl_for=lambda s: 100.0, margin_for=lambda s: 10.0, max_connections=10_000),
        Instant(),
    )
    creds = Credentials("Bearer k", "app", "c")

    async def one(i: int) -> None:
        lease = await gate.admit(ConnectionKey("app", f"flood-{i}", "crm", "x", "k"), creds)
        lease.release()

    process = psutil.Process()
    for start in range(0, 20_000, 1000):
        await asyncio.gather(*(one(i) for i in range(start, start + 1000)))
    after_20k = process.memory_info().rss
    for start in range(20_000, 100_000, 1000):
        await asyncio.gather(*(one(i) for i in range(start, start + 1000)))
    after_100k = process.memory_info().rss
    assert len(gate) <= 10_000
    # The table is full after 10k; 80k more consumers (8x the table) must not grow memory in
    # proportion. 16 MiB is far below what 80k more entries would take (~1 KiB each).
    assert after_100k - after_20k < 16 * 1024 * 1024
    await one(0)  # still serving
    await gate.close()


async def test_flood_through_http_keeps_serving(sim_and_proxy: SimProxy) -> None:
    """Thousands of distinct consumers through the proxy leave it serving with a capped table."""
    _, proxy = await sim_and_proxy(
        sim={"refresh_latency_s": 0.0, "request_latency_s": 0.0}, proxy={"max_connections": 200}
    )
    sem = asyncio.Semaphore(50)

    async def one(s: aiohttp.ClientSession, i: int) -> int:
        async with sem:
            return (await get(s, proxy.url + CONTACTS, headers=headers(f"flood-{i}")))[0]

    async with aiohttp.ClientSession() as s:
        statuses = await asyncio.gather(*(one(s, i) for i in range(2000)))
        assert (await get(s, proxy.url + CONTACTS, headers=headers("after")))[0] == 200
    assert set(statuses) == {200}
    from proxy.app import GATE

    assert len(proxy.app[GATE]) <= 200
