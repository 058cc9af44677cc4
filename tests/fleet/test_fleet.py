"""Several proxy replicas sharing one Redis in front of the simulator, HTTP all the way."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from proxy.app import GATE
from proxy.coordination_redis import PREFIX, RedisCoordination
from tests.conftest import ProxyFactory
from tests.fleet.conftest import ProxyProcess, ProxyProcessFactory, RedisServer
from tests.simfixtures import Sim, SimFactory, gated_settings, get, headers

CONTACTS = "/crm/contacts"


def counters(sim: Sim) -> dict[str, Any]:
    return sim.state.counters()


async def readyz(s: aiohttp.ClientSession, p: ProxyProcess) -> tuple[int, dict[str, Any]]:
    async with s.get(p.url + "/_proxy/readyz") as resp:
        return resp.status, await resp.json()


async def wait_coordination_ok(
    s: aiohttp.ClientSession, p: ProxyProcess, ok: bool, timeout_s: float = 5.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        status, body = await readyz(s, p)
        coordination: dict[str, Any] = body["checks"]["coordination"]
        if coordination["ok"] is ok:
            assert status == 200 and body["ready"] is True  # readiness never follows Redis
            return coordination
        assert time.monotonic() < deadline, f"coordination never became ok={ok}: {body}"
        await asyncio.sleep(0.05)


async def fallbacks(s: aiohttp.ClientSession, p: ProxyProcess) -> float:
    async with s.get(p.url + "/_proxy/metrics") as resp:
        text = await resp.text()
    m = re.search(r"^apideck_proxy_coordination_fallbacks_total (\S+)$", text, re.M)
    assert m is not None
    return float(m.group(1))


async def burst(
    s: aiohttp.ClientSession, replicas: list[ProxyProcess], per_replica: int
) -> list[int]:
    calls = [
        get(s, p.url + CONTACTS, headers=headers()) for p in replicas for _ in range(per_replica)
    ]
    return [status for status, _, _ in await asyncio.gather(*calls)]


async def test_three_replicas_validate_once_per_expiry(
    redis_server: RedisServer, start_simulator: SimFactory, proxy_processes: ProxyProcessFactory
) -> None:
    """Three proxy processes hit by one burst at token expiry, twice, send exactly one validate
    per expiry between them: no revocation, no in-request refresh, no client failure."""
    sim = await start_simulator(
        mode="strict", window_s=1.0, token_ttl_s=4.0, refresh_latency_s=0.3, request_latency_s=0.02
    )
    # No refresh-ahead: every replica must hold its burst and race for the validate.
    replicas = await proxy_processes(3, sim.url, redis_server.url, refresh_ahead_s=0)
    async with aiohttp.ClientSession() as s:
        first = await burst(s, replicas, 10)
        assert counters(sim)["validates"] == 1
        # Into every replica's refresh margin (ttl 4 - margin 2), still short of Apideck's window.
        await asyncio.sleep(2.3)
        second = await burst(s, replicas, 10)
        # Every replica coordinated through Redis the whole time, never on its own.
        assert [await fallbacks(s, p) for p in replicas] == [0, 0, 0]
    assert not any("degraded" in p.log() for p in replicas)
    c = counters(sim)
    assert first + second == [200] * 60
    assert c["validates"] == 2
    assert c["revocations"] == 0 and c["overlaps"] == 0
    assert c["refreshes"]["request"] == 0
    assert c["failures"] == 0


async def test_redis_outage_keeps_forwarding_and_recovers(
    redis_server: RedisServer, start_simulator: SimFactory, proxy_processes: ProxyProcessFactory
) -> None:
    """Redis dying mid-run leaves requests succeeding, readiness up and the outage visible (health
    detail, fallback counter); Redis returning on the same port is picked up by itself."""
    sim = await start_simulator(window_s=1.0, token_ttl_s=30.0, refresh_latency_s=0.05)
    (proxy,) = await proxy_processes(1, sim.url, redis_server.url, **gated_settings(1.0, 30.0, 3.0))
    r = aioredis.from_url(redis_server.url, decode_responses=True)
    url = proxy.url + CONTACTS
    async with aiohttp.ClientSession() as s:
        try:
            assert (await get(s, url, headers=headers("c1")))[0] == 200
            assert (await wait_coordination_ok(s, proxy, True))["backend"] == "redis"
            assert await fallbacks(s, proxy) == 0

            redis_server.stop()
            down = await wait_coordination_ok(s, proxy, False)
            assert down["last_error"] is not None
            # A known connection and a new one (whose validate needs the lock) both get through.
            assert (await get(s, url, headers=headers("c1")))[0] == 200
            assert (await get(s, url, headers=headers("c2")))[0] == 200
            assert await fallbacks(s, proxy) >= 1

            redis_server.start()
            await wait_coordination_ok(s, proxy, True)
            assert (await get(s, url, headers=headers("c3")))[0] == 200
            # The restarted Redis is empty: this state can only come from the recovered proxy.
            assert len(await r.keys(PREFIX + "state:*")) == 1
        finally:
            await r.aclose()
    assert counters(sim)["validates"] == 3 and counters(sim)["failures"] == 0


async def test_replica_that_missed_the_refresh_adopts_it(
    redis_server: RedisServer, start_simulator: SimFactory, start_proxy: ProxyFactory
) -> None:
    """A replica seeing a connection for the first time after another one validated it takes
    the shared state from Redis instead of validating again."""
    sim = await start_simulator(
        mode="strict", window_s=1.0, token_ttl_s=30.0, refresh_latency_s=0.1
    )
    settings = gated_settings(1.0, 30.0, 3.0)
    a = await start_proxy(
        sim.url,
        coordination=RedisCoordination(redis_server.url, lock_lease_s=20.0, timeout_s=0.5),
        **settings,
    )
    b = await start_proxy(
        sim.url,
        coordination=RedisCoordination(redis_server.url, lock_lease_s=20.0, timeout_s=0.5),
        **settings,
    )
    async with aiohttp.ClientSession() as s:
        assert (await get(s, a.url + CONTACTS, headers=headers()))[0] == 200
        assert counters(sim)["validates"] == 1
        assert (await get(s, b.url + CONTACTS, headers=headers()))[0] == 200
    assert counters(sim)["validates"] == 1
    assert counters(sim)["revocations"] == 0
    assert [row["last_validate"] for row in b.app[GATE].snapshot()] == ["adopted"]
