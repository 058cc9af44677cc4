"""RedisCoordination against a real redis-server: the lock, the shared state, the fallback."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import redis.asyncio as aioredis

from proxy.coordination import SharedState
from proxy.coordination_redis import (
    CHANNEL,
    PREFIX,
    RELEASE_LUA,
    RENEW_LUA,
    RedisCoordination,
    lock_key,
    state_key,
)
from proxy.gate import (
    ConnectionKey,
    Credentials,
    Gate,
    GatePolicy,
    Outcome,
    ValidateResult,
)
from tests.fleet.conftest import RedisServer, free_port

KEY = ConnectionKey("app", "consumer", "crm", "salesforce", "fingerprint")
CREDENTIALS = Credentials("Bearer k", "app", "consumer")


class SlowValidator:
    """Counts validates across every gate that shares it, and how many ran at once."""

    def __init__(self, seen: Counter[str], duration_s: float) -> None:
        self.seen = seen
        self.duration_s = duration_s

    async def validate(self, key: ConnectionKey, credentials: Credentials) -> ValidateResult:
        self.seen["calls"] += 1
        self.seen["running"] += 1
        self.seen["max_running"] = max(self.seen["max_running"], self.seen["running"])
        try:
            await asyncio.sleep(self.duration_s)
        finally:
            self.seen["running"] -= 1
        return ValidateResult(Outcome.OK)


def policy() -> GatePolicy:
    return GatePolicy(ttl_for=lambda s: 30.0, margin_for=lambda s: 3.0, hold_timeout_s=5.0)


async def test_lease_is_renewed_while_a_slow_validate_runs(redis_server: RedisServer) -> None:
    """A validate outlasting the lease keeps the lock (renewal), so the other replica neither
    validates at the same time nor afterwards: it adopts the published state."""
    seen: Counter[str] = Counter()
    # The validate lasts two leases; renewals every third of a lease leave room for a busy CI.
    a = RedisCoordination(redis_server.url, lock_lease_s=0.9, timeout_s=0.5)
    b = RedisCoordination(redis_server.url, lock_lease_s=0.9, timeout_s=0.5)
    await a.start()
    await b.start()
    gate_a = Gate(policy(), SlowValidator(seen, 1.8), coordination=a)
    gate_b = Gate(policy(), SlowValidator(seen, 1.8), coordination=b)
    try:
        first = asyncio.create_task(gate_a.admit(KEY, CREDENTIALS))
        await asyncio.sleep(0.1)
        second = asyncio.create_task(gate_b.admit(KEY, CREDENTIALS))
        leases = await asyncio.gather(first, second)
        assert seen["calls"] == 1 and seen["max_running"] == 1
        assert [row["last_validate"] for row in gate_b.snapshot()] == ["adopted"]
        assert a.health()["leases_lost"] == 0
        for lease in leases:
            lease.release()
    finally:
        await gate_a.close()
        await gate_b.close()
        await a.close()
        await b.close()


async def test_stalled_holder_cannot_unlock_the_next_holder(redis_server: RedisServer) -> None:
    """A holder frozen past its lease loses the lock to the next replica, and its late release
    (or renewal) leaves the new holder's lock in place."""
    holding, resume, done = threading.Event(), threading.Event(), threading.Event()
    holder = RedisCoordination(redis_server.url, lock_lease_s=0.3, timeout_s=0.5)

    def stalled_replica() -> None:
        async def main() -> None:
            await holder.start()
            async with holder.exclusive(KEY.id, 1.0):
                holding.set()
                # Blocks this replica's whole event loop, as a GC pause or SIGSTOP would: the
                # renewal task cannot run, so the lease runs out.
                resume.wait(5.0)
            await holder.close()

        asyncio.run(main())
        done.set()

    # A daemon, so a replica that never resumes cannot keep the test run alive.
    thread = threading.Thread(target=stalled_replica, daemon=True)
    thread.start()
    r = aioredis.from_url(redis_server.url, decode_responses=True)
    nxt = RedisCoordination(redis_server.url, lock_lease_s=5.0, timeout_s=0.5)
    await nxt.start()
    try:
        assert await asyncio.to_thread(holding.wait, 5.0)
        first_owner = str(await r.get(lock_key(KEY.id)))
        started = time.monotonic()
        async with nxt.exclusive(KEY.id, 3.0):
            assert time.monotonic() - started >= 0.2  # only once the stalled lease ran out
            owner = await r.get(lock_key(KEY.id))
            assert owner is not None and owner != first_owner
            # The same checks the holder's scripts make, with the old owner value:
            assert await r.eval(RENEW_LUA, 1, lock_key(KEY.id), first_owner, 60_000) == 0
            assert await r.eval(RELEASE_LUA, 1, lock_key(KEY.id), first_owner, CHANNEL, "x") == 0
            resume.set()
            assert await asyncio.to_thread(done.wait, 10.0)
            assert await r.get(lock_key(KEY.id)) == owner
            assert 0 < await r.pttl(lock_key(KEY.id)) <= 5000
        assert await r.get(lock_key(KEY.id)) is None
        assert holder.health()["leases_lost"] == 1
    finally:
        resume.set()
        await asyncio.to_thread(thread.join, 5.0)
        await nxt.close()
        await r.aclose()


async def test_keys_are_namespaced_hashed_and_expire(redis_server: RedisServer) -> None:
    """Only `apideck-proxy:v1:` keys named by the connection hash exist, each with a TTL; an older
    good state never replaces a newer one, a failure always does."""
    c = RedisCoordination(redis_server.url, lock_lease_s=2.0, timeout_s=0.5)
    await c.start()
    r = aioredis.from_url(redis_server.url, decode_responses=True)
    try:
        now = time.time()
        await c.publish(KEY.id, SharedState(now, now + 30.0, None))
        await c.publish(KEY.id, SharedState(now - 10, now + 20.0, None))
        assert await c.read(KEY.id) == SharedState(now, now + 30.0, None)
        # Token life plus the grace, never forever.
        assert 80_000 < await r.pttl(state_key(KEY.id)) <= 90_000
        async with c.exclusive(KEY.id, 1.0):
            assert 0 < await r.pttl(lock_key(KEY.id)) <= 2000
            keys = sorted(str(k) for k in await r.keys("*"))
        assert keys == [lock_key(KEY.id), state_key(KEY.id)]
        assert all(k.startswith(PREFIX) and k.endswith(":" + KEY.id) for k in keys)
        assert "consumer" not in "".join(keys) and "fingerprint" not in "".join(keys)
        assert await r.keys("*") == [state_key(KEY.id)]  # the lock went with the release
        await c.publish(KEY.id, SharedState(None, None, now + 5.0))
        assert await c.read(KEY.id) == SharedState(None, None, now + 5.0)
        assert 60_000 < await r.pttl(state_key(KEY.id)) <= 65_000
    finally:
        await c.close()
        await r.aclose()


async def test_unreachable_redis_falls_back_at_once() -> None:
    """With no Redis to talk to, every call behaves like in-process coordination without
    waiting, and each fallback is counted and shown in health."""
    counted: list[int] = []
    c = RedisCoordination(f"redis://127.0.0.1:{free_port()}/0", lock_lease_s=2.0, timeout_s=0.3)
    c.count_fallbacks_with(lambda: counted.append(1))
    await c.start()
    try:
        started = time.monotonic()
        async with c.exclusive(KEY.id, 5.0):
            assert await c.read(KEY.id) is None
            await c.publish(KEY.id, SharedState(1.0, 2.0, None))
        assert time.monotonic() - started < 0.2
        health = c.health()
        assert health["ok"] is False and health["fallbacks"] == 3 and len(counted) == 3
        assert health["last_error"] == "ConnectionError"
        assert "127.0.0.1" not in str(health)
    finally:
        await c.close()
