"""Fleet coordination through Redis: one validate per connection across every replica.

A per-connection lock (random owner value, compare-and-delete release, a lease renewed while
held) elects the replica that validates; a per-connection hash tells the others what it found;
one pub/sub channel wakes the replicas waiting for the lock. Every Redis call is bounded by a
short timeout, and while Redis is unreachable the proxy coordinates in-process only, until a
background probe sees Redis again. Knows nothing about HTTP, Apideck or the gate's policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.coordination import Coordination, SharedState

log = structlog.get_logger("proxy.coordination")

T = TypeVar("T")

# Bump the version when the layout changes, so old and new replicas never misread each other.
PREFIX = "apideck-proxy:v1:"
CHANNEL = PREFIX + "events"

# State outlives the token by this much: enough for replicas with a skewed clock to still see
# it, short enough that nothing about a connection nobody uses stays behind.
STATE_GRACE_S = 60.0
# Pub/sub is the fast path for waiters; this poll only covers a lost message or a lock whose
# holder died (no release message, the lease just runs out).
POLL_S = 0.5
PROBE_INTERVAL_S = 1.0
RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 1.0
# One connection is the subscriber and one the probe; calls share the rest, queueing for a free
# one (a restart makes every connection validate at once) without that wait counting against
# redis_timeout_s: a queue on our side says nothing about Redis.
POOL_SIZE = 32
CALL_SLOTS = POOL_SIZE - 2
# One slow reply is a hiccup, not an outage: only this many failed calls in a row (or a failed
# probe) switch the whole replica to in-process coordination.
DEGRADE_AFTER = 3
# Best-effort clean-up and late publishes after a failed call; bounded in number and in tries.
BACKGROUND_MAX = 2 * POOL_SIZE
RELEASE_ATTEMPTS = 3

_ERRORS = (RedisError, OSError, TimeoutError)


class _Skipped(RedisError):
    """A call not sent because the replica went degraded while it queued for a connection."""


# Delete the lock only if we still own it: a holder whose lease ran out must never delete the
# next holder's lock. The release is announced in the same step so no waiter can miss it.
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
"""

# Extend the lease only if we still own it.
RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# A good outcome never replaces a later one (a holder that lost its lease and finished late
# cannot roll the fleet back to an older token); a state with no token (a cooldown) always does.
PUBLISH_LUA = """
local expires = tonumber(ARGV[2])
if expires then
  local held = tonumber(redis.call('HGET', KEYS[1], 'expires_at'))
  if held and held >= expires then
    return 0
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'validated_at', ARGV[1], 'expires_at', ARGV[2],
           'cooldown_until', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
"""


def state_key(connection_id: str) -> str:
    """Where a connection's shared state lives; the id is already a one-way hash."""
    return f"{PREFIX}state:{connection_id}"


def lock_key(connection_id: str) -> str:
    return f"{PREFIX}lock:{connection_id}"


def state_ttl_ms(state: SharedState, now: float) -> int:
    """Keep the state until its token (or cooldown) is over, plus a grace."""
    horizon = max(state.expires_at or now, state.cooldown_until or now)
    return max(1000, int((horizon - now + STATE_GRACE_S) * 1000))


def _encode(value: float | None) -> str:
    return "" if value is None else repr(value)


def _decode(value: str | None) -> float | None:
    return float(value) if value else None


@dataclass(slots=True)
class _Hold:
    connection_id: str
    owner: str
    # Monotonic time by which the lease surely ran out unless a renewal was confirmed: counted
    # from before the SET (or renewal) was sent, so it errs early.
    deadline: float = 0.0
    # The SET's outcome is unknown (no reply in time): the lock may exist on the server without
    # us knowing, so it is released, owner-checked, when the block ends.
    tentative: bool = False
    lost: bool = False


# `_acquire`'s answer when the wait ran out while another replica holds the lock.
_BUSY = _Hold("", "")


class RedisCoordination(Coordination):
    """Coordinates every replica that shares one Redis; degrades to in-process on errors."""

    def __init__(self, url: str, *, lock_lease_s: float, timeout_s: float) -> None:
        self._url = url
        self._lease_s = lock_lease_s
        self._timeout_s = timeout_s
        self._poll_s = min(POLL_S, lock_lease_s / 4)
        self._redis: Redis | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(CALL_SLOTS)
        self._background: set[asyncio.Task[None]] = set()
        # A late publish per connection, which a later release must not overtake.
        self._publishing: dict[str, asyncio.Task[None]] = {}
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._on_fallback: Callable[[], None] = lambda: None
        self._healthy = True
        self._failures = 0
        self._degraded_since: float | None = None
        self._last_error: str | None = None
        self._fallbacks = 0
        self._leases_lost = 0

    def count_fallbacks_with(self, on_fallback: Callable[[], None]) -> None:
        """Report every fallback to in-process coordination (the app's metrics counter)."""
        self._on_fallback = on_fallback

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            pool = BlockingConnectionPool.from_url(
                self._url,
                max_connections=POOL_SIZE,
                timeout=self._timeout_s,
                socket_connect_timeout=self._timeout_s,
                socket_timeout=self._timeout_s,
                # Our own fallback is the retry policy: a second attempt would only stall a
                # validate.
                retry=Retry(NoBackoff(), 0),
                # RESP2 is spoken by every Redis and redis-py release; nothing here needs RESP3,
                # whose connect handshake (maintenance notifications) only adds a round trip.
                protocol=2,
                decode_responses=True,
            )
        except ValueError as exc:
            # Settings validation should have caught this. Never a traceback: the message may
            # quote part of the URL, which may carry a password. Forwarding does not need Redis.
            self._degrade("start", exc, error="InvalidURL")
            log.error(
                "redis_url is not a valid Redis URL; fleet coordination is off",
                error=type(exc).__name__,
            )
            return
        self._redis = Redis.from_pool(pool)
        self._release = self._redis.register_script(RELEASE_LUA)
        self._renew_lease = self._redis.register_script(RENEW_LUA)
        self._publish = self._redis.register_script(PUBLISH_LUA)
        try:
            await self._probe(self._redis.ping())
            log.info("fleet coordination through redis", lock_lease_s=self._lease_s)
        except _ERRORS as exc:
            # Start anyway: forwarding does not need Redis, and the watcher keeps trying.
            self._degrade("start", exc)
        self._watcher = asyncio.get_running_loop().create_task(
            self._watch(), name="coordination-watch"
        )

    async def close(self) -> None:
        # Bounded: shutdown must never wait on Redis.
        if self._watcher is not None:
            self._watcher.cancel()
            _, pending = await asyncio.wait([self._watcher], timeout=self._timeout_s + 1.0)
            if pending:
                log.warning("coordination watcher did not stop in time")
            self._watcher = None
        if self._background:
            # A release still running frees a lock sooner than its lease: give it one timeout.
            _, pending = await asyncio.wait(list(self._background), timeout=self._timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if self._redis is not None:
            with contextlib.suppress(*_ERRORS):
                await self._probe(self._redis.aclose())
            self._redis = None

    def health(self) -> dict[str, object]:
        return {
            "backend": "redis",
            "ok": self._healthy,
            "degraded_for_s": None
            if self._degraded_since is None
            else round(time.monotonic() - self._degraded_since, 1),
            "last_error": self._last_error,
            "fallbacks": self._fallbacks,
            "leases_lost": self._leases_lost,
        }

    # -- the interface ---------------------------------------------------------------------

    def exclusive(
        self, connection_id: str, wait_s: float
    ) -> contextlib.AbstractAsyncContextManager[bool]:
        return self._exclusive(connection_id, wait_s)

    async def read(self, connection_id: str) -> SharedState | None:
        redis = self._available("read")
        if redis is None:
            return None
        try:
            raw = await self._call(lambda: redis.hgetall(state_key(connection_id)))
        except _ERRORS:
            self._fallback("read")
            return None
        if not raw:
            return None
        # decode_responses=True: every key and value arrives as str.
        data = {str(k): str(v) for k, v in raw.items()}
        return SharedState(
            _decode(data.get("validated_at")),
            _decode(data.get("expires_at")),
            _decode(data.get("cooldown_until")),
        )

    async def publish(self, connection_id: str, state: SharedState) -> None:
        args: list[str | int] = [
            _encode(state.validated_at),
            _encode(state.expires_at),
            _encode(state.cooldown_until),
            state_ttl_ms(state, time.time()),
            CHANNEL,
            connection_id,
        ]
        if self._available("publish") is None:
            if self._redis is not None:
                # Degraded is this replica's view; Redis may answer the others. One bounded try
                # in the background lets them adopt this validate instead of repeating it.
                task = self._spawn(
                    self._publish_late(connection_id, args), f"publish:{connection_id}"
                )
                if task is not None:
                    self._publishing[connection_id] = task
                    task.add_done_callback(lambda t: self._forget_publish(connection_id, t))
            return
        try:
            await self._call(lambda: self._publish(keys=[state_key(connection_id)], args=args))
        except _ERRORS:
            self._fallback("publish")

    # -- the lock --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _exclusive(self, connection_id: str, wait_s: float) -> AsyncIterator[bool]:
        hold = await self._acquire(connection_id, wait_s)
        if hold is None:
            yield True  # Redis unavailable: in-process coordination only
            return
        if hold is _BUSY:
            yield False  # another replica still holds it: do not validate beside it
            return
        if hold.tentative:
            # Validate without the lock (the call fell back), but if the SET did land, others
            # keep waiting for our outcome, and the lock goes when we are done, not at its lease.
            try:
                yield True
            finally:
                self._spawn(self._release_late(hold), f"release:{connection_id}")
            return
        renewing = self._spawn(self._keep(hold), f"lease:{connection_id}", tracked=False)
        try:
            yield True
        finally:
            if renewing is not None:
                renewing.cancel()
                # wait, not await: an outer cancellation must still reach the caller.
                await asyncio.wait([renewing], timeout=self._timeout_s)
            await self._let_go(hold)

    async def _acquire(self, connection_id: str, wait_s: float) -> _Hold | None:
        """The lock; None to go on without it (Redis unavailable); _BUSY when the wait ran out
        while another replica holds it; a tentative hold when the SET's outcome is unknown."""
        redis = self._available("exclusive")
        if redis is None:
            return None
        hold = _Hold(connection_id, secrets.token_hex(16))
        key, lease_ms = lock_key(connection_id), int(self._lease_s * 1000)
        deadline = time.monotonic() + wait_s
        woken = asyncio.Event()
        # Listen before the first try, so a release between the try and the wait is not missed.
        self._waiters.setdefault(connection_id, set()).add(woken)
        try:
            while True:
                woken.clear()
                sent = time.monotonic()
                try:
                    got = await self._call(lambda: redis.set(key, hold.owner, nx=True, px=lease_ms))
                except _ERRORS as exc:
                    self._fallback("exclusive")
                    if isinstance(exc, _Skipped):
                        return None  # never sent
                    # It may have run on the server all the same (a slow reply): an orphan
                    # would make every other replica wait out the whole lease.
                    hold.tentative = True
                    return hold
                if got:
                    hold.deadline = sent + self._lease_s
                    return hold
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning("lock wait ran out", connection=connection_id, wait_s=wait_s)
                    return _BUSY
                # Jitter keeps replicas that missed the same message from polling in step.
                poll = self._poll_s * random.uniform(0.5, 1.5)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, poll)):
                        await woken.wait()
        finally:
            waiting = self._waiters.get(connection_id)
            if waiting is not None:
                waiting.discard(woken)
                if not waiting:
                    del self._waiters[connection_id]

    async def _keep(self, hold: _Hold) -> None:
        """Renew the lease while the validate runs; stop once someone else owns the lock or the
        lease ran out unrenewed."""
        key, lease_ms = lock_key(hold.connection_id), int(self._lease_s * 1000)
        # After a failure, retry soon: waiting another third of the lease would let two
        # failures in a row (a blip of under half the lease) lose it.
        retry_s = min(1.0, self._lease_s / 10)
        pause = self._lease_s / 3
        while not hold.lost:
            await asyncio.sleep(max(0.0, min(pause, hold.deadline - time.monotonic())))
            left = hold.deadline - time.monotonic()
            if left <= 0:
                self._lost(hold)
                return
            sent = time.monotonic()
            try:
                # A renewal confirmed after the lease ran out proves nothing: bound it by that.
                async with asyncio.timeout(left):
                    kept = await self._call(
                        lambda: self._renew_lease(keys=[key], args=[hold.owner, lease_ms]),
                        degraded_too=True,
                    )
            except Exception as exc:  # any error must leave the loop running
                log.warning(
                    "lock renewal failed", connection=hold.connection_id, error=type(exc).__name__
                )
                pause = retry_s
                continue
            if not kept:
                self._lost(hold)
                return
            hold.deadline = sent + self._lease_s
            pause = self._lease_s / 3

    async def _let_go(self, hold: _Hold) -> None:
        if not self._healthy:
            # Not on the caller's time; after any late publish, so waiters find the state.
            self._spawn(self._release_late(hold), f"release:{hold.connection_id}")
            return
        try:
            released = await self._call(lambda: self._release_once(hold), degraded_too=True)
        except _ERRORS as exc:
            # It may not have run: try again in the background rather than leave the lock to
            # its lease, which keeps every other replica waiting.
            log.warning(
                "lock release failed", connection=hold.connection_id, error=type(exc).__name__
            )
            self._spawn(self._release_late(hold), f"release:{hold.connection_id}")
            return
        if not released:
            self._lost(hold)

    def _release_once(self, hold: _Hold) -> Awaitable[Any]:
        args = [hold.owner, CHANNEL, hold.connection_id]
        return self._release(keys=[lock_key(hold.connection_id)], args=args)

    async def _release_late(self, hold: _Hold) -> None:
        """Release a lock whose state is unknown, a few times; safe, as it checks the owner."""
        publishing = self._publishing.get(hold.connection_id)
        if publishing is not None:
            await asyncio.wait([publishing], timeout=self._timeout_s)
        for attempt in range(RELEASE_ATTEMPTS):
            if attempt:
                # A SET whose reply we gave up on may land a little later still.
                await asyncio.sleep(self._timeout_s)
            try:
                if await self._call(lambda: self._release_once(hold), degraded_too=True):
                    return
            except Exception as exc:  # background clean-up: log, never raise
                log.warning(
                    "late lock release failed",
                    connection=hold.connection_id,
                    error=type(exc).__name__,
                )

    async def _publish_late(self, connection_id: str, args: list[str | int]) -> None:
        try:
            await self._call(
                lambda: self._publish(keys=[state_key(connection_id)], args=args),
                degraded_too=True,
            )
        except Exception as exc:  # best effort while degraded
            log.debug("late publish failed", connection=connection_id, error=type(exc).__name__)

    def _forget_publish(self, connection_id: str, task: asyncio.Task[None]) -> None:
        if self._publishing.get(connection_id) is task:
            del self._publishing[connection_id]

    def _lost(self, hold: _Hold) -> None:
        if hold.lost:
            return
        hold.lost = True
        self._leases_lost += 1
        # The lease ran out while we held it (a stall longer than the lease): another replica
        # may have validated meanwhile. Worth an alert, not a crash.
        log.warning("lock lease lost", connection=hold.connection_id, lock_lease_s=self._lease_s)

    # -- background tasks ------------------------------------------------------------------

    def _spawn(
        self, coro: Coroutine[Any, Any, None], name: str, *, tracked: bool = True
    ) -> asyncio.Task[None] | None:
        """A task this object owns; its exception, if any, is logged (type only), never lost."""
        if tracked and len(self._background) >= BACKGROUND_MAX:
            coro.close()
            log.warning("coordination background work dropped", task=name.split(":")[0])
            return None
        task = asyncio.get_running_loop().create_task(coro, name=name)
        if tracked:
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        task.add_done_callback(_reap)
        return task

    # -- availability ----------------------------------------------------------------------

    async def _call(self, make: Callable[[], Awaitable[T]], *, degraded_too: bool = False) -> T:
        """One Redis call: the wait for a free connection is ours and is not timed; the call is
        bounded by redis_timeout_s and counts towards degrading the replica when it fails."""
        async with self._slots:
            if not (self._healthy or degraded_too):
                raise _Skipped("degraded while queued")
            try:
                # A timeout scope, not wait_for: no inner task whose late error nobody retrieves.
                async with asyncio.timeout(self._timeout_s):
                    result = await make()
            except _ERRORS as exc:
                self._failed(exc)
                raise
        self._failures = 0
        return result

    async def _probe(self, aw: Awaitable[T]) -> T:
        # Outside the call slots: the pool keeps a connection for the probe, so a queue of
        # calls cannot make Redis look down.
        async with asyncio.timeout(self._timeout_s):
            return await aw

    def _available(self, op: str) -> Redis | None:
        """The client, unless Redis is known to be down: then fall back without waiting."""
        if self._redis is None or not self._healthy:
            self._fallback(op)
            return None
        return self._redis

    def _fallback(self, op: str) -> None:
        self._fallbacks += 1
        self._on_fallback()
        log.debug("coordination fell back to in-process", op=op)

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        self._last_error = type(exc).__name__
        if self._failures >= DEGRADE_AFTER:
            self._degrade("calls", exc)

    def _degrade(self, op: str, exc: BaseException, *, error: str | None = None) -> None:
        # Only the exception's type: its text may name the host, and the URL may carry a password.
        self._last_error = error or type(exc).__name__
        if self._healthy:
            self._healthy = False
            self._degraded_since = time.monotonic()
            log.warning(
                "coordination degraded, falling back to in-process", op=op, error=self._last_error
            )

    def _recover(self) -> None:
        self._failures = 0
        if not self._healthy:
            log.info("coordination recovered", degraded_for_s=self.health()["degraded_for_s"])
            self._healthy = True
            self._degraded_since = None

    # -- the watcher -----------------------------------------------------------------------

    async def _watch(self) -> None:
        """Hold the subscription and probe Redis: the one place a degradation ends."""
        assert self._redis is not None
        backoff = RECONNECT_MIN_S
        while True:
            pubsub: PubSub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await self._probe(pubsub.subscribe(CHANNEL))
                await self._probe(self._redis.ping())
                self._recover()
                backoff = RECONNECT_MIN_S
                await self._listen(pubsub)
            except _ERRORS as exc:
                self._degrade("watch", exc)
            except Exception as exc:  # the watcher is the only way out of degraded
                log.error("coordination watcher error", error=type(exc).__name__)
            finally:
                with contextlib.suppress(Exception):
                    await self._probe(pubsub.aclose())  # type: ignore[no-untyped-call]  # redis-py leaves PubSub.aclose unannotated
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, RECONNECT_MAX_S)

    async def _listen(self, pubsub: PubSub) -> None:
        """Wake local waiters on every release or publish; returns only by raising."""
        assert self._redis is not None
        next_probe = time.monotonic() + PROBE_INTERVAL_S
        while True:
            message: dict[str, Any] | None = await pubsub.get_message(
                ignore_subscribe_messages=True, timeout=PROBE_INTERVAL_S
            )
            if message is not None and message.get("type") == "message":
                for woken in self._waiters.get(str(message["data"]), ()):
                    woken.set()
            if time.monotonic() >= next_probe:
                # A Redis that stops answering without closing the socket only shows here.
                await self._probe(self._redis.ping())
                self._recover()
                next_probe = time.monotonic() + PROBE_INTERVAL_S


def _reap(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error(
            "coordination task failed", task=task.get_name().split(":")[0], error=type(exc).__name__
        )
