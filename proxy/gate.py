"""Per-connection token freshness and single-flight validation.

Requests ask `Gate.admit` for a lease before they are forwarded. A connection whose token is
unknown or inside the refresh margin gets exactly one validate, run in a task the gate owns;
requests arriving meanwhile wait for it and are then released together onto the fresh token.
Knows nothing about HTTP framing: validating is delegated to a `Validator`, sharing state
with other replicas to a `Coordination`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

import structlog

from proxy.coordination import Coordination, LocalCoordination, SharedState
from proxy.errors import HoldTimeout, Overloaded, ShuttingDown, ValidationFailed

log = structlog.get_logger("proxy.gate")


@dataclass(frozen=True, slots=True)
class ConnectionKey:
    """One Apideck connection as seen by one caller (the API key is only a fingerprint)."""

    app_id: str
    consumer_id: str
    unified_api: str
    service_id: str
    credential: str

    @property
    def id(self) -> str:
        """A stable one-way name for this caller's view: logs, metrics, admin views."""
        return _hash(
            self.app_id, self.consumer_id, self.unified_api, self.service_id, self.credential
        )

    @property
    def connection_id(self) -> str:
        """The Apideck connection itself, whoever calls it: what validates serialise on.

        Two API keys of one app (a key rotation) reach the same connection; their validates
        must never overlap, and one may adopt the other's fresh token.
        """
        return _hash(self.app_id, self.consumer_id, self.unified_api, self.service_id)


def _hash(*parts: str) -> str:
    raw = "\x1f".join(parts)
    return hashlib.sha256(raw.encode("utf-8", "surrogateescape")).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class Credentials:
    """The headers a validate is sent with: always those of the connection's own caller."""

    authorization: str
    app_id: str
    consumer_id: str


class Outcome(Enum):
    OK = "ok"
    TRANSIENT = "transient"
    FATAL = "fatal"


@dataclass(frozen=True, slots=True)
class ValidateResult:
    outcome: Outcome
    status: int = 0
    retry_after_s: float | None = None
    error: ValidationFailed | None = None


class Validator(Protocol):
    async def validate(self, key: ConnectionKey, credentials: Credentials) -> ValidateResult: ...


class GateObserver(Protocol):
    """What the gate reports; metrics implement it, tests may ignore it."""

    def validation(self, key: ConnectionKey, outcome: str, duration_s: float) -> None: ...
    def held(self, delta: int) -> None: ...
    def hold_finished(self, duration_s: float) -> None: ...
    def retried_validate(self) -> None: ...


class NullObserver:
    def validation(self, key: ConnectionKey, outcome: str, duration_s: float) -> None:
        pass

    def held(self, delta: int) -> None:
        pass

    def hold_finished(self, duration_s: float) -> None:
        pass

    def retried_validate(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class GatePolicy:
    ttl_for: Callable[[str], float]
    margin_for: Callable[[str], float]
    hold_timeout_s: float = 20.0
    drain_timeout_s: float = 5.0
    fatal_cooldown_s: float = 30.0
    backoff_base_s: float = 0.2
    backoff_cap_s: float = 5.0
    validate_timeout_s: float = 15.0
    max_waiters: int = 1000
    max_connections: int = 10_000
    idle_expiry_s: float = 3600.0
    refresh_ahead_s: float = 30.0
    refresh_ahead_active_s: float = 300.0
    # Apideck's own in-request refresh window: outside it a request cannot start a refresh, so
    # it may go ahead on the current token when Vault is briefly unreachable.
    upstream_window_s: float = 30.0


class _Mode(Enum):
    HOLD = "hold"  # token unknown or inside the margin: everyone waits
    AHEAD = "ahead"  # token still good: traffic flows, only unreplayable requests wait


@dataclass(eq=False)
class _Entry:
    key: ConnectionKey
    credentials: Credentials
    generation: int = 0
    expires_at: float | None = None  # wall clock estimate
    cooldown_until: float | None = None
    cooldown_error: ValidationFailed | None = None
    last_outcome: str = "none"
    inflight: int = 0
    inflight_unreplayable: int = 0
    waiters: int = 0
    task: asyncio.Task[None] | None = None
    wake: asyncio.Future[None] | None = None  # resolved when the running validate ends
    mode: _Mode = _Mode.HOLD
    last_used: float = field(default_factory=time.monotonic)
    ahead_not_before: float = 0.0
    transient_failures: int = 0  # consecutive validates that failed transiently
    next_validate_at: float = 0.0  # monotonic: no new validate before this after a failure
    replay_paused_until: float = 0.0  # monotonic: token 401s pass through without a validate
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.drained.set()


@dataclass(slots=True)
class Lease:
    """Proof a request was admitted; release it once the upstream answered."""

    entry: _Entry
    generation: int
    replayable: bool
    held_s: float = 0.0
    released: bool = False

    @property
    def key(self) -> ConnectionKey:
        return self.entry.key

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        e = self.entry
        e.inflight -= 1
        if not self.replayable:
            e.inflight_unreplayable -= 1
        if e.inflight == 0 or (e.mode is _Mode.AHEAD and e.inflight_unreplayable == 0):
            e.drained.set()


class _Siblings:
    """In-process twin of `Coordination`, always on: one validate at a time per Apideck
    connection across the gate's entries for different API keys, and their freshest state."""

    def __init__(self, max_states: int) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._states: OrderedDict[str, SharedState] = OrderedDict()
        self._max_states = max_states

    @contextlib.asynccontextmanager
    async def exclusive(self, connection_id: str, wait_s: float) -> AsyncIterator[bool]:
        lock, users = self._locks.get(connection_id, (asyncio.Lock(), 0))
        self._locks[connection_id] = (lock, users + 1)
        acquired = False
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lock.acquire(), wait_s)
                acquired = True
            yield acquired
        finally:
            if acquired:
                lock.release()
            lock, users = self._locks[connection_id]
            if users <= 1:
                del self._locks[connection_id]
            else:
                self._locks[connection_id] = (lock, users - 1)

    def read(self, connection_id: str) -> SharedState | None:
        return self._states.get(connection_id)

    def publish(self, connection_id: str, state: SharedState) -> None:
        if state.expires_at is None:
            return  # a failure is one caller's (its key may be the wrong one): never shared
        self._states[connection_id] = state
        self._states.move_to_end(connection_id)
        while len(self._states) > self._max_states:
            self._states.popitem(last=False)


def _fresher(a: SharedState | None, b: SharedState | None) -> SharedState | None:
    if a is None or a.expires_at is None:
        return b
    if b is None or b.expires_at is None:
        return a
    return a if a.expires_at >= b.expires_at else b


class Gate:
    def __init__(
        self,
        policy: GatePolicy,
        validator: Validator,
        coordination: Coordination | None = None,
        observer: GateObserver | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._policy = policy
        self._validator = validator
        self._coord = coordination or LocalCoordination()
        self._siblings = _Siblings(policy.max_connections)
        self._obs: GateObserver = observer or NullObserver()
        self._clock = clock
        self._entries: OrderedDict[ConnectionKey, _Entry] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._holding_stopped = False

    # -- admission -------------------------------------------------------------------------

    async def admit(
        self, key: ConnectionKey, credentials: Credentials, *, replayable: bool = True
    ) -> Lease:
        """Wait until the connection's token is fresh, then lease it to one request.

        Raises `ValidationFailed` (shared fatal outcome), `HoldTimeout` or `Overloaded`.
        """
        entry = self._entry(key, credentials)
        started = time.monotonic()
        deadline = started + self._policy.hold_timeout_s
        counted = False
        try:
            while True:
                self._raise_if_cooling(entry)
                if self._may_pass(entry, replayable):
                    return self._lease(entry, replayable, time.monotonic() - started)
                if not counted:
                    if entry.waiters >= self._policy.max_waiters:
                        raise Overloaded(
                            "too many requests are waiting for this connection's validate",
                            retry_after_s=1.0,
                        )
                    counted = True
                    entry.waiters += 1
                    self._obs.held(1)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._hold_timeout()
                if self._holding_stopped:
                    raise self._shutting_down()
                if entry.task is None:
                    pause = entry.next_validate_at - time.monotonic()
                    if pause > 0:
                        # Vault asked for (or failures earned) a pause: no validate before it.
                        if pause >= remaining:
                            raise self._hold_timeout(retry_after_s=pause)
                        await asyncio.sleep(pause)
                        continue
                    self._start_validate(entry, _Mode.HOLD, reason=self._why(entry))
                wake = entry.wake
                assert wake is not None
                # shield: a waiter that disconnects or times out must never cancel the wake-up
                # the other waiters share (nor the validate, which runs in its own task).
                try:
                    await asyncio.wait_for(asyncio.shield(wake), remaining)
                except TimeoutError:
                    raise self._hold_timeout() from None
                if self._holding_stopped and entry.task is not None:
                    raise self._shutting_down()
        finally:
            if counted:
                entry.waiters -= 1
                self._obs.held(-1)
                self._obs.hold_finished(time.monotonic() - started)

    async def readmit_after_unauthorized(self, lease: Lease, credentials: Credentials) -> Lease:
        """A request on `lease` got a token 401: make sure a newer token exists, then re-admit.

        Every 401 from the same token generation shares one validate; a 401 from a generation
        already replaced needs none.
        """
        lease.release()
        entry = self._entry(lease.key, credentials)
        if entry.generation == lease.generation and entry.task is None:
            self._start_validate(entry, _Mode.HOLD, reason="unauthorized")
        elif entry.task is not None and entry.generation == lease.generation:
            entry.mode = _Mode.HOLD
        return await self.admit(lease.key, credentials, replayable=lease.replayable)

    def replay_allowed(self, key: ConnectionKey) -> bool:
        """May a token 401 on this connection trigger a validate and a replay right now?"""
        entry = self._entries.get(key)
        return entry is None or time.monotonic() >= entry.replay_paused_until

    def replay_failed(self, key: ConnectionKey) -> None:
        """A replay on a freshly validated token got a token 401 again: the connection needs
        re-authorisation, not validates. Pause replays for a cooldown."""
        entry = self._entries.get(key)
        if entry is not None:
            entry.replay_paused_until = time.monotonic() + self._policy.fatal_cooldown_s

    def _may_pass(self, entry: _Entry, replayable: bool) -> bool:
        if entry.task is not None:
            # A background refresh leaves the current token usable; only a request that could
            # not be replayed after a mid-flight rotation waits for it.
            return entry.mode is _Mode.AHEAD and replayable and self._fresh(entry)
        if self._fresh(entry):
            return True
        # Vault failed transiently just now: while the token is still outside Apideck's own
        # refresh window no request can start a refresh, so traffic goes on (fail open) until
        # the next validate attempt is due, instead of every request waiting out the hold.
        return time.monotonic() < entry.next_validate_at and self._outside_window(entry)

    def _outside_window(self, entry: _Entry) -> bool:
        return (
            entry.expires_at is not None
            and self._clock() < entry.expires_at - self._policy.upstream_window_s
        )

    def _fresh(self, entry: _Entry) -> bool:
        if entry.expires_at is None:
            return False
        margin = self._policy.margin_for(entry.key.service_id)
        return self._clock() < entry.expires_at - margin

    def _why(self, entry: _Entry) -> str:
        return "unknown" if entry.expires_at is None else "expiring"

    def _lease(self, entry: _Entry, replayable: bool, held_s: float) -> Lease:
        entry.inflight += 1
        if not replayable:
            entry.inflight_unreplayable += 1
        entry.drained.clear()
        entry.last_used = time.monotonic()
        return Lease(entry, entry.generation, replayable, held_s)

    def _raise_if_cooling(self, entry: _Entry) -> None:
        if entry.cooldown_until is None or entry.cooldown_error is None:
            return
        remaining = entry.cooldown_until - self._clock()
        if remaining <= 0:
            # Failures are not remembered past their cooldown: the next request tries afresh.
            entry.cooldown_until = None
            entry.cooldown_error = None
            return
        err = entry.cooldown_error
        again = ValidationFailed(
            err.message, detail=err.detail, retry_after_s=remaining, status=err.status
        )
        again.upstream_body = err.upstream_body
        raise again

    def _shutting_down(self) -> ShuttingDown:
        return ShuttingDown(
            "the proxy is shutting down before the connection's validate finished",
            retry_after_s=1.0,
        )

    def _hold_timeout(self, retry_after_s: float = 1.0) -> HoldTimeout:
        return HoldTimeout(
            "timed out waiting for the connection's token to be validated",
            detail={"hold_timeout_s": self._policy.hold_timeout_s},
            retry_after_s=retry_after_s,
        )

    # -- the connection table --------------------------------------------------------------

    def _entry(self, key: ConnectionKey, credentials: Credentials) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            self._evict()
            entry = _Entry(key, credentials)
            self._entries[key] = entry
        else:
            self._entries.move_to_end(key)
            entry.credentials = credentials
        return entry

    def _evict(self) -> None:
        """Keep the table bounded: idle entries expire, the least recently used go first.

        The table is ordered by last use, so the scan stops at the first entry that is neither
        idle nor needed to make room: O(evicted), not O(table), per new connection.
        """
        now = time.monotonic()
        limit, idle_s = self._policy.max_connections, self._policy.idle_expiry_s
        size = len(self._entries)
        victims: list[ConnectionKey] = []
        for key, entry in self._entries.items():
            over = size - len(victims) >= limit
            if not over and now - entry.last_used <= idle_s:
                break
            if entry.task is not None or entry.inflight or entry.waiters:
                continue  # in use: never forget a connection someone is waiting on
            victims.append(key)
        for key in victims:
            del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)

    # -- validation ------------------------------------------------------------------------

    def _start_validate(self, entry: _Entry, mode: _Mode, *, reason: str) -> None:
        entry.mode = mode
        loop = asyncio.get_running_loop()
        entry.wake = loop.create_future()
        task = loop.create_task(self._validate(entry, reason), name=f"validate:{entry.key.id}")
        entry.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _validate(self, entry: _Entry, reason: str) -> None:
        key = entry.key
        started = time.monotonic()
        outcome = "error"
        try:
            await self._drain(entry)
            cid = key.connection_id
            # Longer than any holder keeps the right (no attempt starts after its hold deadline,
            # and one attempt lasts at most the validate timeout): running out means stuck.
            wait_s = self._policy.hold_timeout_s + self._policy.validate_timeout_s + 1.0
            async with self._siblings.exclusive(cid, wait_s) as local_ok:
                if not local_ok:
                    outcome = await self._adopt_or_validate(entry, started, may_validate=False)
                    return
                async with self._coord.exclusive(cid, wait_s) as fleet_ok:
                    outcome = await self._adopt_or_validate(entry, started, may_validate=fleet_ok)
        except Exception as exc:
            # A bug or an unexpected answer must not leave waiters spinning on new validates:
            # share a short-lived failure, like a fatal outcome with a brief cooldown.
            log.error("validate crashed", connection=key.id, error=type(exc).__name__)
            outcome = "error"
            entry.cooldown_until = self._clock() + 1.0
            entry.cooldown_error = ValidationFailed(
                "validating the connection failed unexpectedly", status=502
            )
        finally:
            entry.task = None
            entry.mode = _Mode.HOLD
            if entry.wake is not None and not entry.wake.done():
                entry.wake.set_result(None)
            entry.last_outcome = outcome
            duration = time.monotonic() - started
            self._obs.validation(key, outcome, duration)
            log.info(
                "validate",
                connection=key.id,
                connection_id=key.connection_id,
                unified_api=key.unified_api,
                service_id=key.service_id,
                reason=reason,
                outcome=outcome,
                generation=entry.generation,
                duration_ms=round(duration * 1000, 1),
            )

    async def _adopt_or_validate(self, entry: _Entry, started: float, *, may_validate: bool) -> str:
        cid = entry.key.connection_id
        shared = _fresher(self._siblings.read(cid), await self._coord.read(cid))
        if self._adopt(entry, shared):
            return "adopted"
        if not may_validate:
            # Someone else still holds the right to validate: never validate beside them.
            entry.next_validate_at = time.monotonic() + self._policy.backoff_cap_s
            return "busy"
        return await self._validate_with_retries(entry, started)

    async def _drain(self, entry: _Entry) -> None:
        """Let requests already on the old token finish before validate rotates it (bounded)."""
        busy = entry.inflight if entry.mode is _Mode.HOLD else entry.inflight_unreplayable
        if busy == 0:
            return
        entry.drained.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(entry.drained.wait(), self._policy.drain_timeout_s)

    def _adopt(self, entry: _Entry, shared: SharedState | None) -> bool:
        """Take another replica's fresher validate instead of sending our own."""
        if shared is None or shared.expires_at is None:
            return False
        expires_at = shared.expires_at
        if shared.validated_at is not None:
            # Never trust another replica's lifetime beyond ours (a rolling settings change,
            # a clock ahead): the token was issued at validated_at, our table says how long.
            expires_at = min(
                expires_at, shared.validated_at + self._policy.ttl_for(entry.key.service_id)
            )
        if entry.expires_at is not None and expires_at <= entry.expires_at:
            return False
        margin = self._policy.margin_for(entry.key.service_id)
        if self._clock() >= expires_at - margin:
            return False
        entry.generation += 1
        entry.expires_at = expires_at
        return True

    async def _validate_with_retries(self, entry: _Entry, started: float) -> str:
        key = entry.key
        deadline = started + self._policy.hold_timeout_s
        attempt = 0
        while True:
            sent_at = self._clock()
            result = await self._validator.validate(key, entry.credentials)
            if result.outcome is Outcome.OK:
                entry.transient_failures = 0
                # The new token was issued somewhere between sending and the answer: count its
                # life from the sending, the conservative end.
                entry.generation += 1
                entry.expires_at = sent_at + self._policy.ttl_for(key.service_id)
                entry.cooldown_until = entry.cooldown_error = None
                state = SharedState(sent_at, entry.expires_at, None)
                self._siblings.publish(key.connection_id, state)
                await self._coord.publish(key.connection_id, state)
                return "ok"
            if result.outcome is Outcome.FATAL:
                cooldown = result.retry_after_s
                if cooldown is None:
                    cooldown = self._policy.fatal_cooldown_s
                entry.cooldown_until = self._clock() + cooldown
                entry.cooldown_error = result.error or ValidationFailed("validate failed")
                # Not published: a failure may be this caller's own (a wrong key), and a late
                # one must never wipe the fresh token another replica published meanwhile.
                entry.expires_at = None
                return "fatal"
            attempt += 1
            # Exponential backoff with full jitter, never shorter than the server asked for.
            backoff = random.uniform(
                0, min(self._policy.backoff_cap_s, self._policy.backoff_base_s * 2**attempt)
            )
            delay = max(backoff, result.retry_after_s or 0.0)
            # No attempt starts after the deadline, so a holder keeps the validate right for at
            # most hold_timeout_s + validate_timeout_s: shorter than others wait for it.
            if self._outside_window(entry) or time.monotonic() + delay >= deadline:
                # Waiters go ahead on the current token when it is still outside Apideck's
                # window (see _may_pass); the next validate comes after a growing pause.
                entry.transient_failures += 1
                pause = min(
                    self._policy.backoff_cap_s * 6,
                    self._policy.backoff_base_s * 2 ** min(entry.transient_failures, 16),
                )
                entry.next_validate_at = time.monotonic() + max(pause, delay)
                return "transient"
            self._obs.retried_validate()
            await asyncio.sleep(delay)

    # -- refresh ahead ---------------------------------------------------------------------

    def refresh_ahead_due(self) -> list[ConnectionKey]:
        """Connections with recent traffic that will enter their margin within the lead time."""
        now, mono = self._clock(), time.monotonic()
        due = []
        for entry in self._entries.values():
            if entry.task is not None or entry.expires_at is None or entry.cooldown_until:
                continue
            if mono - entry.last_used > self._policy.refresh_ahead_active_s:
                continue  # idle connections are left alone
            if mono < max(entry.ahead_not_before, entry.next_validate_at):
                continue
            margin = self._policy.margin_for(entry.key.service_id)
            # The lead never exceeds half the token's usable life, so a lead configured longer
            # than a short-lived token cannot turn into back-to-back validates.
            usable = self._policy.ttl_for(entry.key.service_id) - margin
            lead = min(self._policy.refresh_ahead_s, usable / 2)
            if now >= entry.expires_at - margin - lead:
                due.append(entry.key)
        return due

    def refresh_ahead(self) -> int:
        started = 0
        for key in self.refresh_ahead_due():
            entry = self._entries[key]
            if self._fresh(entry):
                entry.ahead_not_before = time.monotonic() + self._policy.backoff_base_s
                self._start_validate(entry, _Mode.AHEAD, reason="ahead")
                started += 1
        return started

    async def run_refresh_ahead(self, interval_s: float) -> None:
        while True:
            self.refresh_ahead()
            await asyncio.sleep(interval_s)

    # -- views and lifecycle ---------------------------------------------------------------

    def stop_holding(self) -> None:
        """Shutdown is at its end: answer every held request now instead of dropping it."""
        self._holding_stopped = True
        for entry in self._entries.values():
            if entry.wake is not None and not entry.wake.done():
                entry.wake.set_result(None)

    def snapshot(self) -> list[dict[str, object]]:
        now = self._clock()
        rows: list[dict[str, object]] = []
        for entry in self._entries.values():
            state = "unknown"
            if entry.cooldown_until and entry.cooldown_until > now:
                state = "cooldown"
            elif entry.task is not None:
                state = "validating"
            elif self._fresh(entry):
                state = "fresh"
            elif entry.expires_at is not None:
                state = "expiring"
            rows.append(
                {
                    "connection": entry.key.id,
                    "unified_api": entry.key.unified_api,
                    "service_id": entry.key.service_id,
                    "state": state,
                    "generation": entry.generation,
                    "expires_in_s": None
                    if entry.expires_at is None
                    else round(entry.expires_at - now, 1),
                    "last_validate": entry.last_outcome,
                    "waiters": entry.waiters,
                    "in_flight": entry.inflight,
                }
            )
        return rows

    @property
    def validating(self) -> int:
        return sum(1 for t in self._tasks if not t.done())

    async def wait_validations(self, timeout_s: float) -> None:
        """Let running validates finish (a validate cut off mid-rotation helps nobody)."""
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)

    async def close(self) -> None:
        self.stop_holding()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
