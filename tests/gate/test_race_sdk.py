"""The product's reason to exist, with the official Apideck SDK as the client: a burst at token
expiry fails straight at the simulator and succeeds through the proxy, with one validate per
connection and no refresh started inside a request."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import pytest
from apideck_unify import Apideck

from tests.conftest import Running
from tests.gate.conftest import API_KEY, APP_ID, Sim, headers

SimProxy = Callable[..., Awaitable[tuple[Sim, Running]]]
CONSUMERS = ("acme", "globex", "initech")
PER_CONNECTION = 15


def sdk_burst(base_url: str, pool: ThreadPoolExecutor) -> list[asyncio.Future[bool]]:
    """Every worker its own SDK client, all calling crm.contacts.list at the same moment."""
    barrier = threading.Barrier(len(CONSUMERS) * PER_CONNECTION)

    def call(consumer: str) -> bool:
        sdk = Apideck(api_key=API_KEY, app_id=APP_ID, consumer_id=consumer, server_url=base_url)
        barrier.wait()
        try:
            res = sdk.crm.contacts.list(service_id="salesforce")
            return res.get_contacts_response is not None and bool(res.get_contacts_response.data)
        except Exception:
            return False  # any SDK error is a client-visible failure

    loop = asyncio.get_running_loop()
    return [loop.run_in_executor(pool, call, c) for c in CONSUMERS for _ in range(PER_CONNECTION)]


@pytest.mark.parametrize("mode", ["rotate", "strict"])
async def test_burst_at_expiry_direct_fails_proxy_succeeds(
    sim_and_proxy: SimProxy, mode: str
) -> None:
    """Straight at the simulator the burst races (failures, in-request refreshes); through the
    proxy the same burst has 0 failures, 1 validate per connection, 0 in-request refreshes."""
    sim, proxy = await sim_and_proxy(
        sim={"mode": mode, "refresh_latency_s": 0.3, "request_latency_s": 0.05}
    )
    with ThreadPoolExecutor(max_workers=len(CONSUMERS) * PER_CONNECTION) as pool:
        direct = await asyncio.gather(*sdk_burst(sim.url, pool))
        direct_counters = sim.state.counters()
        sim.state.reset(forget_connections=True)  # the same connections, back at the edge
        proxied = await asyncio.gather(*sdk_burst(proxy.url, pool))
        counters = sim.state.counters()

    assert direct.count(False) > 0
    assert direct_counters["refreshes"]["request"] > 1
    assert proxied.count(False) == 0
    assert counters["refreshes"]["request"] == 0
    assert counters["revocations"] == 0
    assert counters["validates"] == len(CONSUMERS)
    per = counters["per_connection"]
    assert sorted(v["validates"] for v in per.values()) == [1] * len(CONSUMERS)


@pytest.mark.slow
async def test_steady_load_across_token_lifetimes(sim_and_proxy: SimProxy) -> None:
    """Many workers over several token lifetimes: no failures, no refresh inside a request,
    validates only as the lifetimes require."""
    # Shrunk lifetimes, but with the slack between the proxy's margin (1 s) and Apideck's
    # window (0.2 s) kept well above what a loaded 2-core CI machine delays a request by.
    ttl, duration = 2.5, 8.0
    sim, proxy = await sim_and_proxy(
        sim={"mode": "strict", "window_s": 0.2, "token_ttl_s": ttl, "refresh_latency_s": 0.1},
        proxy={"refresh_margin_s": 1.0, "refresh_ahead_s": 0.3},
    )
    failures: list[int] = []
    count = 0
    deadline = time.monotonic() + duration

    async def worker(session: aiohttp.ClientSession, consumer: str) -> None:
        nonlocal count
        while time.monotonic() < deadline:
            async with session.get(proxy.url + "/crm/contacts", headers=headers(consumer)) as r:
                await r.read()
                count += 1
                if r.status != 200:
                    failures.append(r.status)

    async with aiohttp.ClientSession() as s:
        await asyncio.gather(*(worker(s, c) for c in ("a", "b") for _ in range(8)))
    counters = sim.state.counters()
    assert count > 200
    assert failures == []
    assert counters["refreshes"]["request"] == 0
    assert counters["revocations"] == 0
    # Each connection needs a new token every (ttl - margin - lead) at most: a handful, not
    # one per request.
    per_connection = [v["validates"] for v in counters["per_connection"].values()]
    assert all(duration / ttl <= n <= 3 * duration / ttl + 2 for n in per_connection)
