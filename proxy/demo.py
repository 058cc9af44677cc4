"""`apideck-proxy demo`: the refresh race, once straight at the simulator and once through the
proxy, with the same burst, printed side by side. Offline, a few seconds, exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from proxy.app import create_app
from proxy.server import make_runner, run
from proxy.settings import load_settings
from proxy.sim import SIM_STATE, SimConfig, start_sim

API_KEY = "sim-api-key"
APP_ID = "sim-app"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connections", type=int, default=4, help="simulated connections")
    parser.add_argument(
        "--concurrency", type=int, default=25, help="concurrent requests per connection"
    )
    parser.add_argument("--mode", choices=("rotate", "strict"), default="strict")
    parser.add_argument("--refresh-latency-s", type=float, default=0.3)
    parser.add_argument("--request-latency-s", type=float, default=0.05)


@dataclass
class BurstResult:
    requests: int
    failures: int
    latencies_s: list[float]
    counters: dict[str, Any]

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_s)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def burst(
    session: aiohttp.ClientSession, base: str, connections: int, concurrency: int
) -> tuple[int, int, list[float]]:
    """Every worker sends one request at the same moment; counts non-2xx as failures."""

    async def one(consumer: str) -> tuple[bool, float]:
        started = time.monotonic()
        headers = {
            "Authorization": f"Bearer {API_KEY}",
            "x-apideck-app-id": APP_ID,
            "x-apideck-consumer-id": consumer,
            "x-apideck-service-id": "salesforce",
        }
        try:
            async with session.get(f"{base}/crm/contacts", headers=headers) as resp:
                await resp.read()
                ok = resp.status < 400
        except aiohttp.ClientError:
            ok = False
        return ok, time.monotonic() - started

    jobs = [one(f"demo-consumer-{c}") for c in range(connections) for _ in range(concurrency)]
    results = await asyncio.gather(*jobs)
    return len(results), sum(1 for ok, _ in results if not ok), [t for _, t in results]


async def _run(args: argparse.Namespace) -> int:
    config = SimConfig(
        window_s=2.0,
        token_ttl_s=60.0,
        initial_token_expires_in_s=0.0,
        refresh_latency_s=args.refresh_latency_s,
        request_latency_s=args.request_latency_s,
        mode=args.mode,
    )
    sim_runner, sim_port = await start_sim(config)
    sim_url = f"http://127.0.0.1:{sim_port}"
    state = sim_runner.app[SIM_STATE]
    settings = load_settings(
        None,
        upstream_url=sim_url,
        upload_upstream_url=sim_url,
        upstream_refresh_window_s=config.window_s,
        refresh_margin_s=5.0,
        token_ttl_s=config.token_ttl_s,
        service_token_ttl_s={"salesforce": config.token_ttl_s},
        log_level="error",
        log_format="console",
    )
    proxy_runner = make_runner(create_app(settings), max_header_bytes=16_384, shutdown_timeout_s=1)
    await proxy_runner.setup()
    site = web.TCPSite(proxy_runner, "127.0.0.1", 0)
    await site.start()
    proxy_url = f"http://127.0.0.1:{proxy_runner.addresses[0][1]}"
    print(
        f"simulator: {sim_url} (mode {config.mode}, tokens at the refresh edge, "
        f"refresh {config.refresh_latency_s * 1000:.0f} ms)\nproxy:     {proxy_url}\n"
        f"burst:     {args.connections} connections x {args.concurrency} concurrent requests\n"
    )
    results: dict[str, BurstResult] = {}
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            runs = [
                ("direct", sim_url, True),
                ("via proxy", proxy_url, True),
                # A second burst through the proxy, tokens now known and fresh: nothing held.
                ("proxy, warm", proxy_url, False),
            ]
            for label, base, at_the_edge in runs:
                # at the edge: every connection forgotten, its token about to expire again
                state.reset(forget_connections=at_the_edge)
                n, failed, lat = await burst(session, base, args.connections, args.concurrency)
                results[label] = BurstResult(n, failed, lat, state.counters())
    finally:
        await proxy_runner.cleanup()
        await sim_runner.cleanup()
    print(render_table(results))
    direct, proxied = results["direct"], results["via proxy"]
    summary = (
        f"Straight at the simulated Apideck, {direct.failures} of {direct.requests} requests "
        f"failed and {_refreshes(direct.counters)} refreshes raced; through the proxy, "
        f"{proxied.failures} failed, with {proxied.counters['validates']} validate(s) for "
        f"{args.connections} connection(s). Held requests waited one validate; once tokens "
        "are known, requests pass straight through."
    )
    print("\n" + textwrap.fill(summary, 88))
    return 0


def _refreshes(counters: dict[str, Any]) -> int:
    refreshes = counters.get("refreshes", {})
    return int(sum(refreshes.values())) if isinstance(refreshes, dict) else 0


def render_table(results: dict[str, BurstResult]) -> str:
    rows: list[tuple[str, Callable[[BurstResult], str]]] = [
        ("requests", lambda r: str(r.requests)),
        ("client-visible failures", lambda r: str(r.failures)),
        ("refreshes inside requests", lambda r: str(r.counters["refreshes"].get("request", 0))),
        ("validates", lambda r: str(r.counters["validates"])),
        ("revoked connections", lambda r: str(r.counters["revocations"])),
        ("p50 latency (ms)", lambda r: f"{r.pct(0.50):.0f}"),
        ("p99 latency (ms)", lambda r: f"{r.pct(0.99):.0f}"),
    ]
    names = list(results)
    width = max(len(n) for n, _ in rows)
    lines = [f"{'':<{width}}  " + "  ".join(f"{n:>11}" for n in names)]
    for name, cell in rows:
        lines.append(f"{name:<{width}}  " + "  ".join(f"{cell(results[k]):>11}" for k in names))
    return "\n".join(lines)


def run_demo(args: argparse.Namespace) -> int:
    from proxy.log import configure_logging

    configure_logging("console", "warning")
    code = 1

    async def main() -> None:
        nonlocal code
        code = await _run(args)

    run(main)
    return code
