"""Benchmark: what a held request costs, and what refresh-ahead saves.

    python tests/bench_gate.py [--lifetimes 10] [--ttl-s 1.5] [--refresh-latency-s 0.3]

Runs the same multi-worker load against the simulator through the proxy, with refresh-ahead
off and on, and prints a markdown table (figures, no assertions: machines here are noisy, so
compare the two rows of one run).
"""

from __future__ import annotations

import argparse
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lifetimes", type=int, default=10)
    parser.add_argument("--ttl-s", type=float, default=1.5)
    parser.add_argument("--refresh-latency-s", type=float, default=0.3)
    import uvloop

    uvloop.run(main(parser.parse_args()))
