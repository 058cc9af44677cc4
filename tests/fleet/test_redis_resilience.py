"""RedisCoordination when the network to Redis is slow or flaky, and when its own code fails:
real redis-server, a fault-injecting loopback proxy between one replica and it."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from proxy.coordination import SharedState
from proxy.coordination_redis import RENEW_LUA, RedisCoordination, lock_key
from proxy.gate import ConnectionKey, Credentials, Gate, GatePolicy
from tests.fleet.conftest import RedisServer
from tests.fleet.faultproxy import FaultProxy
from tests.fleet.test_redis_coordination import SlowValidator

KEY = ConnectionKey("app", "consumer", "crm", "salesforce", "fingerprint")
CREDENTIALS = Credentials("Bearer k", "app", "consumer")
# How the renewal script's call shows on the wire (EVALSHA <sha>).
RENEW_SHA = hashlib.sha1(RENEW_LUA.encode()).hexdigest().encode()


def policy(hold_timeout_s: float = 5.0) -> GatePolicy:
    return GatePolicy(
        ttl_for=lambda s: 30.0, margin_for=lambda s: 3.0, hold_timeout_s=hold_timeout_s
    )


@pytest.fixture
async def fault_proxy(redis_server: RedisServer) -> AsyncIterator[FaultProxy]:
    proxy = FaultProxy(redis_server.port)
    await proxy.start()
    yield proxy
    await proxy.stop()


@pytest.fixture
async def coordinations() -> AsyncIterator[Callable[..., Awaitable[RedisCoordination]]]:
    """Started RedisCoordinations, closed afterwards."""
    started: list[RedisCoordination] = []

    async def factory(url: str, **kwargs: Any) -> RedisCoordination:
        c = RedisCoordination(url, **kwargs)
        await c.start()
        started.append(c)
        return c

    yield factory
    for c in started:
        await c.close()


async def holds_in_turn(
    a: RedisCoordination, b: RedisCoordination, a_holds_s: float
) -> tuple[float, float]:
    """a takes the lock for a_holds_s, b asks for it meanwhile; when a was done with it and
    when b got it."""
    a_in = asyncio.Event()

    async def first() -> float:
        async with a.exclusive(KEY.id, 1.0) as ok:
            assert ok
            a_in.set()
            await asyncio.sleep(a_holds_s)
            return time.monotonic()

    async def second() -> float:
        await a_in.wait()
        async with b.exclusive(KEY.id, 5.0) as ok:
            assert ok
            return time.monotonic()

    a_done, b_got = await asyncio.gather(first(), second())
    return a_done, b_got


async def test_lock_whose_set_reply_was_too_slow_is_released_after_the_validate(
    redis_server: RedisServer, fault_proxy: FaultProxy, coordinations: Any
) -> None:
    """A lock SET that ran on Redis but answered after redis_timeout_s is released when that
    replica's validate ends, so the next replica adopts at once instead of waiting the lease."""
    a = await coordinations(fault_proxy.url, lock_lease_s=5.0, timeout_s=0.3)
    b = await coordinations(redis_server.url, lock_lease_s=5.0, timeout_s=0.3)
    seen: Counter[str] = Counter()
    gate_a = Gate(policy(), SlowValidator(seen, 0.1), coordination=a)
    gate_b = Gate(policy(), SlowValidator(seen, 0.1), coordination=b)
    r = aioredis.from_url(redis_server.url, decode_responses=True)
    try:
        fault_proxy.delay_next(b"\r\nSET\r\n", 0.6)
        (await gate_a.admit(KEY, CREDENTIALS)).release()
        assert a.health()["fallbacks"] == 1 and a.health()["ok"] is True
        started = time.monotonic()
        (await gate_b.admit(KEY, CREDENTIALS)).release()
        assert time.monotonic() - started < 2.0
        assert seen["calls"] == 1
        assert [row["last_validate"] for row in gate_b.snapshot()] == ["adopted"]
        assert await r.keys("apideck-proxy:v1:lock:*") == []  # released, none orphaned
        assert await r.get(lock_key(KEY.connection_id)) is None
    finally:
        await gate_a.close()
        await gate_b.close()
        await r.aclose()


async def test_connection_storm_over_a_slow_link_keeps_coordinating(
    fault_proxy: FaultProxy, coordinations: Any
) -> None:
    """Hundreds of connections validating at once on two replicas over a 30 ms link queue for
    Redis connections without timing out: no fallback, one validate per connection."""
    n = 300
    fault_proxy.delay_s = 0.03
    # 1 s per call is 30x the link: a call times out only if waiting for a slot counted.
    cs = [await coordinations(fault_proxy.url, lock_lease_s=5.0, timeout_s=1.0) for _ in "ab"]
    seen: Counter[str] = Counter()
    gates = [Gate(policy(), SlowValidator(seen, 0.01), coordination=c) for c in cs]
    keys = [ConnectionKey("app", f"c{i}", "crm", "salesforce", "fp") for i in range(n)]
    try:
        leases = await asyncio.gather(*(g.admit(k, CREDENTIALS) for k in keys for g in gates))
        for lease in leases:
            lease.release()
        assert [c.health()["fallbacks"] for c in cs] == [0, 0]
        assert all(c.health()["ok"] for c in cs)
        assert seen["calls"] == n
    finally:
        for g in gates:
            await g.close()


async def test_one_slow_reply_falls_back_for_that_call_only(
    fault_proxy: FaultProxy, coordinations: Any
) -> None:
    """One reply slower than redis_timeout_s makes that call fall back but leaves the replica
    coordinating through Redis."""
    c = await coordinations(fault_proxy.url, lock_lease_s=5.0, timeout_s=0.3)
    now = time.time()
    await c.publish(KEY.id, SharedState(now, now + 30.0, None))
    fault_proxy.delay_next(b"HGETALL", 0.6)
    assert await c.read(KEY.id) is None
    health = c.health()
    assert health["ok"] is True and health["fallbacks"] == 1
    assert health["last_error"] == "TimeoutError"
    assert await c.read(KEY.id) == SharedState(now, now + 30.0, None)
    async with c.exclusive(KEY.id, 1.0) as ok:
        assert ok
    assert c.health()["fallbacks"] == 1


async def test_failed_renewals_are_retried_soon_enough_to_keep_the_lease(
    redis_server: RedisServer, fault_proxy: FaultProxy, coordinations: Any
) -> None:
    """Three renewals in a row failing on the holder's side are retried within the lease, so it
    keeps the lock and the other replica gets it only after the holder let go."""
    a = await coordinations(fault_proxy.url, lock_lease_s=1.5, timeout_s=0.3)
    b = await coordinations(redis_server.url, lock_lease_s=1.5, timeout_s=0.3)
    # Every third of a lease these would have been: one full lease without a renewal.
    fault_proxy.cut_next(RENEW_SHA, times=3)
    a_done, b_got = await holds_in_turn(a, b, 2.4)
    assert b_got >= a_done
    assert a.health()["leases_lost"] == 0


async def test_renewal_survives_an_unexpected_error(
    redis_server: RedisServer, coordinations: Any
) -> None:
    """An error of no expected kind in a renewal is logged and the next renewal still runs, so
    the lease is kept."""
    a = await coordinations(redis_server.url, lock_lease_s=0.9, timeout_s=0.3)
    b = await coordinations(redis_server.url, lock_lease_s=0.9, timeout_s=0.3)
    renew = a._renew_lease  # the fault goes where no fake can reach
    failed: list[int] = []

    def flaky(**kwargs: Any) -> Any:
        if not failed:
            failed.append(1)
            raise RuntimeError("unexpected")
        return renew(**kwargs)

    a._renew_lease = flaky  # type: ignore[assignment]  # see above
    with capture_logs() as logs:
        a_done, b_got = await holds_in_turn(a, b, 1.5)
    assert failed and b_got >= a_done
    assert a.health()["leases_lost"] == 0
    assert any(e.get("error") == "RuntimeError" for e in logs)


async def test_watcher_survives_an_unexpected_error(
    redis_server: RedisServer, coordinations: Any
) -> None:
    """An error of no expected kind in the watcher is logged and it keeps probing Redis, the
    only way a degraded replica recovers."""
    c = await coordinations(redis_server.url, lock_lease_s=2.0, timeout_s=0.3)
    assert c._redis is not None  # the fault goes where no fake can reach
    ping = c._redis.ping
    probes: list[int] = []

    def flaky() -> Any:
        probes.append(1)
        if len(probes) == 1:
            raise RuntimeError("unexpected")
        return ping()

    c._redis.ping = flaky  # type: ignore[method-assign]  # see above
    deadline = time.monotonic() + 4.0
    while len(probes) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert len(probes) >= 2
    assert c.health()["ok"] is True


async def test_malformed_url_falls_back_without_a_traceback_or_the_password() -> None:
    """A REDIS_URL redis-py cannot parse leaves the proxy running on in-process coordination,
    reported without the password."""
    c = RedisCoordination("redis://u:hunter2@h:notaport/0", lock_lease_s=2.0, timeout_s=0.3)
    with capture_logs() as logs:
        await c.start()
        async with c.exclusive(KEY.id, 1.0) as ok:
            assert ok
        await c.close()
    health = c.health()
    assert health["ok"] is False and health["last_error"] == "InvalidURL"
    assert "hunter2" not in repr(logs) + repr(health)
