"""Refresh ahead under steady traffic: after the cold start no request waits for a validate."""

from __future__ import annotations

import pytest

from tests.loadgen import steady_load


@pytest.mark.slow
async def test_steady_traffic_never_waits_for_a_validate() -> None:
    """Ten token lifetimes of multi-worker load with a 300 ms refresh: 0 failures, 0 refreshes
    inside requests, no revocation, and after the cold start requests do not wait for validates
    (latency figures are printed by tests/bench_gate.py)."""
    result = await steady_load(lifetimes=10, ttl_s=1.5, refresh_latency_s=0.3, refresh_ahead=True)
    assert result.requests > 500
    assert result.failures == 0
    assert result.counters["refreshes"]["request"] == 0
    assert result.counters["revocations"] == 0
    # Only requests caught between Apideck rotating the token and the validate's answer
    # reaching the proxy wait (their 401 makes the gate hold until the answer): a handful,
    # against thousands that pass straight through.
    assert result.held_after_warmup <= result.requests // 200
    # One validate per (ttl - margin - lead) = 1.5 - 0.6 - 0.45 s over 15 s, plus the cold
    # one: at least one per lifetime, never one per request.
    per_connection = [c["validates"] for c in result.counters["per_connection"].values()]
    assert all(10 <= n <= 2 * 15 / 0.45 for n in per_connection)
