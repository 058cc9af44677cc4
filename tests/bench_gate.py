"""Benchmark: what a held request costs, what refresh-ahead saves, and what a flood of
distinct consumers costs in memory.

    python tests/bench_gate.py [--lifetimes 10] [--ttl-s 1.5] [--refresh-latency-s 0.3]

Runs the same multi-worker load against the simulator through the proxy, with refresh-ahead
off and on, and prints a markdown table (figures, no assertions: machines here are noisy, so
compare the two rows of one run); then admits 100,000 distinct consumers through a gate capped
at 10,000 connections and prints the process's memory growth.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.log import configure_logging  # after the path set-up above
from tests.loadgen import steady_load


async def main(args: argparse.Namespace) -> None:
    configure_logging("console", "warning")
    print(
        f"{args.lifetimes} token lifetimes of {args.ttl_s:g} s, refresh latency "
        f"{args.refresh_latency_s * 1000:.0f} ms, 2 connections x 6 workers, strict mode\n"
    )
    print("| refresh-ahead | requests | failures | held, warm | validates | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for ahead in (False, True):
        r = await steady_load(
            lifetimes=args.lifetimes,
            ttl_s=args.ttl_s,
            refresh_latency_s=args.refresh_latency_s,
            refresh_ahead=ahead,
        )
        print(
            f"| {'on' if ahead else 'off'} | {r.requests} | {r.failures} | "
            f"{r.held_after_warmup} | {r.counters['validates']} | {r.pct_ms(0.5):.1f} | "
            f"{r.pct_ms(0.99):.1f} |"
        )


async def flood(consumers: int = 100_000, cap: int = 10_000) -> None:
    import time

    import psutil

    from proxy.gate import ConnectionKey, Credentials, Gate, GatePolicy, Outcome, ValidateResult

    class Instant:
        async def validate(self, key: ConnectionKey, c: Credentials) -> ValidateResult:
            return ValidateResult(Outcome.OK, 200)

    gate = Gate(
        GatePolicy(ttl_for=lambda s: 100.0, margin_for=lambda s: 10.0, max_connections=cap),
        Instant(),
    )
    creds = Credentials("Bearer k", "app", "c")

    async def one(i: int) -> None:
        lease = await gate.admit(ConnectionKey("app", f"flood-{i}", "crm", "x", "k"), creds)
        lease.release()

    rss = psutil.Process().memory_info
    before, started = rss().rss, time.monotonic()
    marks = []
    for start in range(0, consumers, 1000):
        await asyncio.gather(*(one(i) for i in range(start, start + 1000)))
        if start + 1000 in (cap, consumers):
            marks.append((start + 1000, rss().rss - before))
    elapsed = time.monotonic() - started
    await gate.close()
    print(f"\nflood: {consumers:,} distinct consumers, table capped at {cap:,}\n")
    print("| consumers admitted | table size | RSS growth MiB |")
    print("|---:|---:|---:|")
    for n, growth in marks:
        print(f"| {n:,} | {min(n, cap):,} | {growth / 2**20:.1f} |")
    print(f"\n{consumers / elapsed:,.0f} admissions/s, each with its own validate")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lifetimes", type=int, default=10)
    parser.add_argument("--ttl-s", type=float, default=1.5)
    parser.add_argument("--refresh-latency-s", type=float, default=0.3)
    import uvloop

    uvloop.run(main(parser.parse_args()))
    uvloop.run(flood())
