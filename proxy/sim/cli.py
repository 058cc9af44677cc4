"""`apideck-proxy sim`: a thin mirror of SimConfig that serves the simulator until a signal.

It parses and runs; it knows nothing about tokens or handlers.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from proxy.sim.app import start_sim
from proxy.sim.config import SimConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SimConfig()
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=4010, help="port to bind (0: any free)")
    parser.add_argument(
        "--window-s",
        type=float,
        default=defaults.window_s,
        help="a request refreshes the token itself when it expires within this many seconds",
    )
    parser.add_argument(
        "--token-ttl-s",
        type=float,
        default=defaults.token_ttl_s,
        help="lifetime of a freshly issued access token",
    )
    parser.add_argument(
        "--initial-token-expires-in-s",
        type=float,
        default=defaults.initial_token_expires_in_s,
        help="remaining life of a connection's token when first seen (0: the first burst races)",
    )
    parser.add_argument("--refresh-latency-s", type=float, default=defaults.refresh_latency_s)
    parser.add_argument("--request-latency-s", type=float, default=defaults.request_latency_s)
    parser.add_argument(
        "--mode",
        choices=["rotate", "strict"],
        default=defaults.mode,
        help="overlapping refresh: rotate=late one gets invalid_grant; strict=family revoked",
    )
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help="accepted Bearer key (repeatable; default: sim-api-key)",
    )
    parser.add_argument("--app-id", default=defaults.app_id)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--keepalive-timeout-s",
        type=float,
        default=75.0,
        help="close idle keep-alive connections after this many seconds",
    )


def config_from_args(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        window_s=args.window_s,
        token_ttl_s=args.token_ttl_s,
        initial_token_expires_in_s=args.initial_token_expires_in_s,
        refresh_latency_s=args.refresh_latency_s,
        request_latency_s=args.request_latency_s,
        mode=args.mode,
        api_keys=frozenset(args.api_keys or ["sim-api-key"]),
        app_id=args.app_id,
        seed=args.seed,
    )


async def _serve(config: SimConfig, host: str, port: int, keepalive_timeout_s: float) -> None:
    runner, bound = await start_sim(config, host, port, keepalive_timeout_s=keepalive_timeout_s)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"apideck simulator listening on http://{host}:{bound}", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    asyncio.run(_serve(config, args.host, args.port, args.keepalive_timeout_s))
    return 0
