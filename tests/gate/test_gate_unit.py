"""The gate on its own, with a scripted validator: single flight, holding, outcomes, bounds."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest

from proxy.coordination import LocalCoordination, SharedState
from proxy.errors import HoldTimeout, Overloaded, ShuttingDown, ValidationFailed
from proxy.gate import (
    ConnectionKey,
    Credentials,
    Gate,
    GatePolicy,
    Outcome,
    ValidateResult,
)

CREDS = Credentials("Bearer k", "app", "c1")


def key(consumer: str = "c1", service: str = "xero", cred: str = "k") -> ConnectionKey:
    return ConnectionKey("app", consumer, "accounting", service, cred)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class ScriptedValidator:
    """Answers validates from a script, recording calls and overlaps."""

    def __init__(self, outcomes: Iterable[ValidateResult] = (), delay_s: float = 0.05) -> None:
        self.script = list(outcomes)
        self.delay_s = delay_s
        self.calls: list[ConnectionKey] = []
        self.active: dict[ConnectionKey, int] = {}
        self.max_overlap = 0
        self.release = asyncio.Event()
        self.release.set()

    async def validate(self, key: ConnectionKey, credentials: Credentials) -> ValidateResult:
        self.calls.append(key)
        self.active[key] = self.active.get(key, 0) + 1
        self.max_overlap = max(self.max_overlap, self.active[key])
        try:
            await asyncio.sleep(self.delay_s)
            await self.release.wait()
            return self.script.pop(0) if self.script else ValidateResult(Outcome.OK, 200)
        finally:
            self.active[key] -= 1


def make_gate(validator: ScriptedValidator, clock: Clock | None = None, **policy: float) -> Gate:
    p = GatePolicy(
        ttl_for=lambda s: 100.0,
        margin_for=lambda s: 10.0,
        hold_timeout_s=policy.pop("hold_timeout_s", 2.0),
        drain_timeout_s=policy.pop("drain_timeout_s", 1.0),
        fatal_cooldown_s=policy.pop("fatal_cooldown_s", 30.0),
        backoff_base_s=0.01,
        backoff_cap_s=0.05,
        max_waiters=int(policy.pop("max_waiters", 1000)),
        max_connections=int(policy.pop("max_connections", 10_000)),
        refresh_ahead_s=policy.pop("refresh_ahead_s", 5.0),
    )
    return Gate(p, validator, clock=clock or Clock())


async def admit_and_release(gate: Gate, k: ConnectionKey) -> int:
    lease = await gate.admit(k, CREDS)
    lease.release()
    return lease.generation


async def test_unknown_token_gets_one_validate_for_a_burst() -> None:
    """A burst on a never-validated connection sends exactly one validate; all are released."""
    v = ScriptedValidator()
    gate = make_gate(v)
    gens = await asyncio.gather(*(admit_and_release(gate, key()) for _ in range(50)))
    assert len(v.calls) == 1
    assert set(gens) == {1}


async def test_fresh_token_passes_without_validate() -> None:
    """Once validated, requests pass straight through until the margin."""
    v = ScriptedValidator()
    clock = Clock()
    gate = make_gate(v, clock)
    await admit_and_release(gate, key())
    clock.now += 89  # ttl 100, margin 10: still fresh
    await admit_and_release(gate, key())
    assert len(v.calls) == 1
    clock.now += 2  # inside the margin
    assert await admit_and_release(gate, key()) == 2
    assert len(v.calls) == 2


async def test_expiry_counts_from_when_validate_was_sent() -> None:
    """The estimate starts at the sending of the validate, not its answer (conservative)."""
    v = ScriptedValidator(delay_s=0.0)
    clock = Clock()
    gate = make_gate(v, clock)

    async def slow_validate(k: ConnectionKey, c: Credentials) -> ValidateResult:
        clock.now += 5  # the answer arrives 5 s after sending
        return ValidateResult(Outcome.OK, 200)

    v.validate = slow_validate  # type: ignore[method-assign]  # per-test behaviour
    sent_at = clock.now
    await admit_and_release(gate, key())
    row = gate.snapshot()[0]
    assert row["expires_in_s"] == pytest.approx(sent_at + 100 - clock.now)


async def test_validates_for_one_connection_never_overlap() -> None:
    """Even with 401-triggered revalidations racing, one connection has one validate at a time."""
    v = ScriptedValidator(delay_s=0.02)
    gate = make_gate(v)

    async def worker() -> None:
        for _ in range(5):
            lease = await gate.admit(key(), CREDS)
            lease2 = await gate.readmit_after_unauthorized(lease, CREDS)
            lease2.release()

    await asyncio.gather(*(worker() for _ in range(10)))
    assert v.max_overlap == 1


async def test_connections_do_not_wait_on_each_other() -> None:
    """A stuck validate on one connection does not delay another connection's requests."""
    v = ScriptedValidator(delay_s=0.0)
    gate = make_gate(v, hold_timeout_s=5.0)
    blocked = asyncio.Event()

    async def per_key(k: ConnectionKey, c: Credentials) -> ValidateResult:
        if k.consumer_id == "stuck":
            await blocked.wait()
        return ValidateResult(Outcome.OK, 200)

    v.validate = per_key  # type: ignore[method-assign]  # per-test behaviour
    stuck = asyncio.create_task(admit_and_release(gate, key("stuck")))
    await asyncio.sleep(0.01)
    await asyncio.wait_for(admit_and_release(gate, key("other")), 0.5)
    assert not stuck.done()
    blocked.set()
    await stuck


async def test_cancelled_waiter_does_not_cancel_validate() -> None:
    """A waiter that goes away mid-validate leaves the validate running for the others."""
    v = ScriptedValidator(delay_s=0.1)
    gate = make_gate(v)
    first = asyncio.create_task(admit_and_release(gate, key()))
    others = [asyncio.create_task(admit_and_release(gate, key())) for _ in range(5)]
    await asyncio.sleep(0.02)
    first.cancel()
    late = asyncio.create_task(admit_and_release(gate, key()))  # joins the same validate
    assert await asyncio.gather(*others, late) == [1] * 6
    assert len(v.calls) == 1


async def test_waiter_with_short_timeout_leaves_others_unharmed() -> None:
    """A caller's own timeout shorter than the validate fails only that caller."""
    v = ScriptedValidator(delay_s=0.2)
    gate = make_gate(v)
    impatient = asyncio.create_task(asyncio.wait_for(admit_and_release(gate, key()), 0.05))
    patient = [asyncio.create_task(admit_and_release(gate, key())) for _ in range(3)]
    with pytest.raises(TimeoutError):
        await impatient
    assert await asyncio.gather(*patient) == [1, 1, 1]
    assert len(v.calls) == 1


async def test_transient_failure_is_retried_inside_the_hold() -> None:
    """A 500 then a 200: waiters are released on the retry, nothing is stuck."""
    v = ScriptedValidator([ValidateResult(Outcome.TRANSIENT, 500)], delay_s=0.01)
    gate = make_gate(v)
    assert await asyncio.gather(*(admit_and_release(gate, key()) for _ in range(5))) == [1] * 5
    assert len(v.calls) == 2


async def test_retry_after_from_validate_is_honoured() -> None:
    """A 429 with Retry-After delays the next validate attempt by at least that long."""
    v = ScriptedValidator([ValidateResult(Outcome.TRANSIENT, 429, retry_after_s=0.3)], 0.0)
    gate = make_gate(v)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await admit_and_release(gate, key())
    assert loop.time() - started >= 0.3
    assert len(v.calls) == 2


async def test_fatal_failure_is_shared_and_cooled_down() -> None:
    """Every waiter gets the same error; no new validate until the cooldown passes."""
    err = ValidationFailed("refused: Connection invalid", status=401, detail={"x": 1})
    v = ScriptedValidator([ValidateResult(Outcome.FATAL, 401, 30.0, err)])
    clock = Clock()
    gate = make_gate(v, clock)
    results = await asyncio.gather(
        *(admit_and_release(gate, key()) for _ in range(4)), return_exceptions=True
    )
    assert all(isinstance(r, ValidationFailed) for r in results)
    assert {(r.status, r.message) for r in results if isinstance(r, ValidationFailed)} == {
        (401, "refused: Connection invalid")
    }
    with pytest.raises(ValidationFailed) as later:
        await admit_and_release(gate, key())
    assert later.value.retry_after_s == pytest.approx(30.0)
    assert len(v.calls) == 1
    clock.now += 31  # cooldown over: forgotten, the next request validates afresh
    assert await admit_and_release(gate, key()) == 1
    assert len(v.calls) == 2


async def test_wrong_api_key_cooldown_does_not_lock_out_the_right_one() -> None:
    """A fatal outcome for one API key leaves the same connection under another key alone."""
    v = ScriptedValidator(delay_s=0.0)

    async def by_key(k: ConnectionKey, c: Credentials) -> ValidateResult:
        if k.credential == "wrong":
            return ValidateResult(Outcome.FATAL, 401, None, ValidationFailed("bad key", status=401))
        return ValidateResult(Outcome.OK, 200)

    v.validate = by_key  # type: ignore[method-assign]  # per-test behaviour
    gate = make_gate(v)
    with pytest.raises(ValidationFailed):
        await admit_and_release(gate, key(cred="wrong"))
    assert await admit_and_release(gate, key(cred="right")) == 1


async def test_hold_timeout_gives_503_and_validate_keeps_running() -> None:
    """A validate slower than the hold timeout answers waiters with HoldTimeout (503)."""
    v = ScriptedValidator(delay_s=0.0)
    v.release.clear()
    gate = make_gate(v, hold_timeout_s=0.1)
    with pytest.raises(HoldTimeout) as exc:
        await admit_and_release(gate, key())
    assert exc.value.status == 503
    assert exc.value.retry_after_s
    v.release.set()
    await gate.wait_validations(1.0)


async def test_drain_waits_for_in_flight_requests_before_validating() -> None:
    """A validate for an expiring token starts only after requests on the old token finish."""
    v = ScriptedValidator(delay_s=0.0)
    clock = Clock()
    gate = make_gate(v, clock, drain_timeout_s=2.0)
    await admit_and_release(gate, key())
    in_flight = await gate.admit(key(), CREDS)
    clock.now += 95  # now inside the margin
    waiter = asyncio.create_task(admit_and_release(gate, key()))
    await asyncio.sleep(0.05)
    assert len(v.calls) == 1  # still draining
    in_flight.release()
    assert await waiter == 2
    assert len(v.calls) == 2


async def test_drain_is_bounded() -> None:
    """A request that never finishes delays the validate by the drain timeout, no more."""
    v = ScriptedValidator(delay_s=0.0)
    clock = Clock()
    gate = make_gate(v, clock, drain_timeout_s=0.1)
    await admit_and_release(gate, key())
    stuck = await gate.admit(key(), CREDS)
    clock.now += 95
    assert await asyncio.wait_for(admit_and_release(gate, key()), 1.0) == 2
    stuck.release()


async def test_unauthorized_from_old_generation_needs_no_new_validate() -> None:
    """A 401 on a token already replaced re-admits onto the new one without validating."""
    v = ScriptedValidator(delay_s=0.0)
    clock = Clock()
    gate = make_gate(v, clock)
    old = await gate.admit(key(), CREDS)
    old_generation = old.generation
    old.release()
    clock.now += 95
    await admit_and_release(gate, key())  # generation 2
    old.released = False  # the request was still in flight on generation 1
    old.entry.inflight += 1
    again = await gate.readmit_after_unauthorized(old, CREDS)
    assert again.generation == old_generation + 1
    assert len(v.calls) == 2


async def test_waiter_bound_rejects_with_overloaded() -> None:
    """More waiters than allowed on one connection get 503 Overloaded, not an unbounded queue."""
    v = ScriptedValidator(delay_s=0.2)
    gate = make_gate(v, max_waiters=3)
    results = await asyncio.gather(
        *(admit_and_release(gate, key()) for _ in range(6)), return_exceptions=True
    )
    assert sum(isinstance(r, Overloaded) for r in results) == 3
    assert sum(r == 1 for r in results) == 3


async def test_connection_table_is_bounded() -> None:
    """Distinct connections beyond the cap evict the least recently used idle ones."""
    v = ScriptedValidator(delay_s=0.0)
    gate = make_gate(v, max_connections=100)
    for i in range(1000):
        await admit_and_release(gate, key(f"c{i}"))
    assert len(gate) <= 100


async def test_three_refresh_cycles_keep_bookkeeping() -> None:
    """Generation, validate count and expiry stay right across consecutive refresh cycles."""
    v = ScriptedValidator(delay_s=0.0)
    clock = Clock()
    gate = make_gate(v, clock)
    for cycle in range(1, 4):
        gens = await asyncio.gather(*(admit_and_release(gate, key()) for _ in range(10)))
        assert set(gens) == {cycle}
        assert len(v.calls) == cycle
        row = gate.snapshot()[0]
        assert row["state"] == "fresh" and row["in_flight"] == 0 and row["waiters"] == 0
        clock.now += 95


async def test_refresh_ahead_validates_without_holding() -> None:
    """A busy connection near its margin is validated in the background; requests never wait."""
    v = ScriptedValidator(delay_s=0.2)
    clock = Clock()
    gate = make_gate(v, clock, refresh_ahead_s=5.0)
    await admit_and_release(gate, key())
    clock.now += 86  # 4 s before the margin, inside the 5 s lead
    assert gate.refresh_ahead() == 1
    lease = await asyncio.wait_for(gate.admit(key(), CREDS), 0.05)  # not held
    assert lease.generation == 1
    lease.release()
    await gate.wait_validations(1.0)
    assert await admit_and_release(gate, key()) == 2


async def test_refresh_ahead_leaves_idle_connections_alone() -> None:
    """A connection with no recent traffic is not validated ahead of time."""
    v = ScriptedValidator(delay_s=0.0)
    clock = Clock()
    gate = Gate(
        GatePolicy(
            ttl_for=lambda s: 100.0,
            margin_for=lambda s: 10.0,
            refresh_ahead_s=5.0,
            refresh_ahead_active_s=0.01,
        ),
        v,
        clock=clock,
    )
    await admit_and_release(gate, key())
    await asyncio.sleep(0.05)
    clock.now += 86
    assert gate.refresh_ahead() == 0


async def test_unreplayable_request_waits_for_background_validate() -> None:
    """A streamed-body request never starts on a token a running validate is about to rotate."""
    v = ScriptedValidator(delay_s=0.2)
    clock = Clock()
    gate = make_gate(v, clock, refresh_ahead_s=5.0)
    await admit_and_release(gate, key())
    clock.now += 86
    gate.refresh_ahead()
    lease = await gate.admit(key(), CREDS, replayable=False)
    assert lease.generation == 2
    lease.release()


async def test_stop_holding_answers_waiters() -> None:
    """At the end of the shutdown grace, held requests get ShuttingDown (503), not silence."""
    v = ScriptedValidator(delay_s=0.0)
    v.release.clear()
    gate = make_gate(v, hold_timeout_s=5.0)
    waiter = asyncio.create_task(admit_and_release(gate, key()))
    await asyncio.sleep(0.02)
    gate.stop_holding()
    with pytest.raises(ShuttingDown):
        await waiter
    v.release.set()
    await gate.close()


async def test_vault_blip_outside_apideck_window_fails_open() -> None:
    """A transient validate failure while the token is still outside Apideck's own refresh
    window lets requests go ahead on it, and the next validate waits for a pause."""
    v = ScriptedValidator(delay_s=0.0)
    clock = Clock()
    gate = Gate(
        GatePolicy(
            ttl_for=lambda s: 100.0,
            margin_for=lambda s: 10.0,
            upstream_window_s=3.0,
            backoff_base_s=0.5,
            hold_timeout_s=5.0,
        ),
        v,
        clock=clock,
    )
    await admit_and_release(gate, key())
    clock.now += 92  # inside the margin (90), outside Apideck's window (97)
    v.script = [ValidateResult(Outcome.TRANSIENT, 503)] * 5
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await admit_and_release(gate, key()) == 1  # degraded: the current token
    assert loop.time() - started < 0.5  # no full hold
    assert await admit_and_release(gate, key()) == 1
    assert len(v.calls) == 2  # one failed validate, no new one during the pause


async def test_vault_blip_inside_apideck_window_keeps_holding() -> None:
    """Inside Apideck's window a failing validate is retried and requests wait: letting them
    through would start the very race the gate prevents."""
    v = ScriptedValidator(delay_s=0.0)
    clock = Clock()
    gate = Gate(
        GatePolicy(
            ttl_for=lambda s: 100.0,
            margin_for=lambda s: 10.0,
            upstream_window_s=3.0,
            backoff_base_s=0.01,
            backoff_cap_s=0.02,
            hold_timeout_s=2.0,
        ),
        v,
        clock=clock,
    )
    await admit_and_release(gate, key())
    clock.now += 98
    v.script = [ValidateResult(Outcome.TRANSIENT, 503)] * 2
    assert await admit_and_release(gate, key()) == 2  # retried until the 200
    assert len(v.calls) == 4


async def test_a_slow_holder_is_waited_for_not_overlapped() -> None:
    """A validate slower than the hold timeout keeps the connection's validate right: a second
    API key for the same connection waits for it and adopts, never validating beside it."""
    active: dict[str, int] = {}
    overlap = 0
    calls = 0

    class Slow:
        async def validate(self, k: ConnectionKey, c: Credentials) -> ValidateResult:
            nonlocal overlap, calls
            calls += 1
            active[k.connection_id] = active.get(k.connection_id, 0) + 1
            overlap = max(overlap, active[k.connection_id])
            await asyncio.sleep(0.6)
            active[k.connection_id] -= 1
            return ValidateResult(Outcome.OK, 200)

    gate = Gate(
        GatePolicy(
            ttl_for=lambda s: 100.0,
            margin_for=lambda s: 10.0,
            hold_timeout_s=0.3,
            validate_timeout_s=1.0,
        ),
        Slow(),
    )
    results = await asyncio.gather(
        admit_and_release(gate, key(cred="a")),
        admit_and_release(gate, key(cred="b")),
        return_exceptions=True,
    )
    assert all(isinstance(r, HoldTimeout) for r in results)  # both waited past their hold
    await gate.wait_validations(3.0)
    assert overlap == 1
    assert calls == 1  # the second key adopted the first one's token
    assert await admit_and_release(gate, key(cred="b")) == 1


async def test_adopted_lifetime_never_exceeds_our_own() -> None:
    """A state published by a replica with a longer lifetime (or a clock ahead) is capped at
    validated_at + our own lifetime for the service."""
    clock = Clock()

    class Generous(LocalCoordination):
        async def read(self, connection_id: str) -> SharedState | None:
            return SharedState(clock.now, clock.now + 3600, None)

    v = ScriptedValidator(delay_s=0.0)
    gate = Gate(
        GatePolicy(ttl_for=lambda s: 100.0, margin_for=lambda s: 10.0), v, Generous(), clock=clock
    )
    assert await admit_and_release(gate, key()) == 1  # adopted, no validate
    assert v.calls == []
    assert gate.snapshot()[0]["expires_in_s"] == pytest.approx(100.0)
