"""SimState on its own: tokens, the refresh race and the counters, without HTTP."""

from __future__ import annotations

import asyncio

from sim_helpers import fast

from proxy.sim import SimState
from proxy.sim.state import Outcome


async def test_first_seen_token_sits_inside_the_window_by_default() -> None:
    """A connection seen for the first time holds version 1 expiring now, so it must refresh."""
    state = SimState(fast())
    conn = state.connection("c", "crm", "salesforce")
    assert conn.version == 1
    assert conn.status == "callable"
    assert conn.expires_in_s() <= state.config.window_s


async def test_initial_expiry_none_means_a_fresh_token() -> None:
    """initial_token_expires_in_s=None gives a first token with the full (per-service) ttl."""
    state = SimState(fast(initial_token_expires_in_s=None, service_token_ttl_s={"xero": 1800.0}))
    assert state.connection("c", "crm", "salesforce").expires_in_s() > 3590
    assert 1790 < state.connection("c", "accounting", "xero").expires_in_s() <= 1800


async def test_refresh_issues_next_version_with_the_service_ttl() -> None:
    """A successful refresh bumps the version and sets expiry to the service's ttl."""
    state = SimState(fast(service_token_ttl_s={"salesforce": 120.0}))
    conn = state.connection("c", "crm", "salesforce")
    assert await state.refresh(conn, "validate") is Outcome.OK
    assert conn.version == 2
    assert 119 < conn.expires_in_s() <= 120


async def test_overlapping_refresh_loses_with_invalid_grant_in_rotate_mode() -> None:
    """Two overlapping refreshes: the first wins, the late one gets invalid_grant."""
    state = SimState(fast(mode="rotate"))
    conn = state.connection("c", "crm", "salesforce")
    first, late = await asyncio.gather(
        state.refresh(conn, "request"), state.refresh(conn, "request")
    )
    assert (first, late) == (Outcome.OK, Outcome.INVALID_GRANT)
    assert conn.version == 2
    counters = state.counters()
    assert counters["overlaps"] == 1
    assert counters["refresh_failures"] == 1
    assert counters["revocations"] == 0


async def test_refresh_after_the_winner_uses_the_new_refresh_token() -> None:
    """A refresh starting once the winner finished succeeds, even while a late one still fails."""
    state = SimState(fast(mode="rotate", refresh_latency_s=0.1))
    conn = state.connection("c", "crm", "salesforce")
    winner = asyncio.ensure_future(state.refresh(conn, "request"))
    await asyncio.sleep(0.05)
    late = asyncio.ensure_future(state.refresh(conn, "request"))
    assert await winner is Outcome.OK
    third = asyncio.ensure_future(state.refresh(conn, "validate"))
    assert await late is Outcome.INVALID_GRANT
    assert await third is Outcome.OK
    assert conn.version == 3
    assert state.counters()["overlaps"] == 1


async def test_overlapping_refresh_revokes_the_family_in_strict_mode() -> None:
    """In strict mode an overlap revokes the family: both refreshes fail, connection invalid."""
    state = SimState(fast(mode="strict"))
    conn = state.connection("c", "crm", "salesforce")
    outcomes = await asyncio.gather(state.refresh(conn, "request"), state.refresh(conn, "request"))
    assert list(outcomes) == [Outcome.REVOKED, Outcome.REVOKED]
    assert conn.is_invalid()
    assert state.counters()["revocations"] == 1
    assert await state.serve(conn) is Outcome.INVALID
    assert state.reauthorize(consumer_id="c", unified_api="crm") == 1
    assert not conn.is_invalid()
    assert conn.family == 2
    assert await state.serve(conn) is Outcome.OK


async def test_expire_materialises_and_moves_matching_connections() -> None:
    """expire() creates a named consumer's connections and sets their remaining token life."""
    state = SimState(fast(initial_token_expires_in_s=None))
    assert state.expire(5.0, consumer_id="c", unified_api="crm") == 1
    assert 4 < state.connection("c", "crm", "salesforce").expires_in_s() <= 5
    assert state.expire(100.0) == 1


async def test_reset_zeroes_counters_and_can_forget_connections() -> None:
    """reset() zeroes totals and per-connection stats; forget_connections drops connections."""
    state = SimState(fast())
    conn = state.connection("c", "crm", "salesforce")
    await state.validate(conn)
    state.record("vault", 200)
    state.reset()
    counters = state.counters()
    assert counters["validates"] == 0
    assert counters["per_connection"]["c/crm/salesforce"]["validates"] == 0
    assert counters["per_connection"]["c/crm/salesforce"]["version"] == 2
    state.reset(forget_connections=True)
    assert state.counters()["per_connection"] == {}
