"""Forwarding overhead: the same load straight at an upstream stand-in and through the proxy.

    python tests/bench_forwarding.py [--requests N] [--concurrency C]

The upstream stand-in (a minimal aiohttp app answering a small JSON body) and the proxy each
run in their own process, so the load generator (uvloop + aiohttp) does not share their event
loop. On a small machine the three processes still share the cores: read the ratios, not the
absolute figures. Prints a markdown table; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
BODY = (
    b'{"status_code":200,"status":"OK","service":"salesforce","resource":"contacts",'
    b'"operation":"all","data":[{"id":"12345","name":"Elon Musk","first_name":"Elon"}]}'
)
PATH = "/crm/contacts?limit=20&cursor=abc%3D%3D"
WARM_UP = 500


def serve_upstream(port: int) -> None:
    async def contacts(request: web.Request) -> web.Response:
        return web.Response(
            body=BODY,
            content_type="application/json",
            headers={"x-apideck-request-id": "bench"},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", contacts)
    import uvloop

    web.run_app(
        app, host="127.0.0.1", port=port, access_log=None, print=None, loop=uvloop.new_event_loop()
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(port: int, path: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"process for port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                if s.recv(12).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"nothing answered on port {port}")


@dataclass
class Result:
    name: str
    requests: int
    seconds: float
    latencies: list[float]
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


async def load(name: str, url: str, requests: int, concurrency: int) -> Result:
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    async with aiohttp.ClientSession(connector=connector) as client:

        async def worker(todo: list[int], latencies: list[float], errors: list[int]) -> None:
            while todo:
                todo.pop()
                started = time.perf_counter()
                try:
                    async with client.get(url) as resp:
                        body = await resp.read()
                        if resp.status != 200 or body != BODY:
                            errors.append(resp.status)
                except aiohttp.ClientError:
                    errors.append(0)
                latencies.append(time.perf_counter() - started)

        warm: list[float] = []
        await asyncio.gather(
            *(worker(list(range(WARM_UP // concurrency + 1)), warm, []) for _ in range(concurrency))
        )
        todo = list(range(requests))
        latencies: list[float] = []
        errors: list[int] = []
        started = time.perf_counter()
        await asyncio.gather(*(worker(todo, latencies, errors) for _ in range(concurrency)))
        return Result(name, requests, time.perf_counter() - started, latencies, len(errors))


def table(direct: Result, proxied: Result, concurrency: int) -> str:
    rows = [
        "| path | requests | concurrency | req/s | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in (direct, proxied):
        rows.append(
            f"| {r.name} | {r.requests} | {concurrency} | {r.rps:,.0f} | "
            f"{r.percentile(50):.2f} | {r.percentile(99):.2f} | {r.errors} |"
        )
    rows.append(
        f"| proxy / direct | | | {proxied.rps / direct.rps:.2f}x | "
        f"{proxied.percentile(50) / direct.percentile(50):.2f}x | "
        f"{proxied.percentile(99) / direct.percentile(99):.2f}x | |"
    )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000, help="measured requests per path")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent client workers")
    parser.add_argument("--log-level", default="info", help="the proxy's APIDECK_PROXY_LOG_LEVEL")
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return
    if args.requests < 1 or args.concurrency < 1:
        parser.error("--requests and --concurrency must be at least 1")

    upstream_port, proxy_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIDECK_PROXY_")}
    env.update(
        APIDECK_PROXY_UPSTREAM_URL=f"http://127.0.0.1:{upstream_port}",
        APIDECK_PROXY_UPLOAD_UPSTREAM_URL=f"http://127.0.0.1:{upstream_port}",
        APIDECK_PROXY_HOST="127.0.0.1",
        APIDECK_PROXY_PORT=str(proxy_port),
        APIDECK_PROXY_LOG_LEVEL=args.log_level,
        APIDECK_PROXY_LOG_FORMAT="json",
    )
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    upstream = subprocess.Popen(
        [sys.executable, __file__, "--serve-upstream", str(upstream_port)], cwd=ROOT, **quiet
    )
    proxy = subprocess.Popen([sys.executable, "-m", "proxy"], cwd=ROOT, env=env, **quiet)
    try:
        wait_until_up(upstream_port, "/", upstream)
        wait_until_up(proxy_port, "/_proxy/healthz", proxy)
        import uvloop

        direct = uvloop.run(
            load(
                "direct", f"http://127.0.0.1:{upstream_port}{PATH}", args.requests, args.concurrency
            )
        )
        proxied = uvloop.run(
            load(
                "via proxy", f"http://127.0.0.1:{proxy_port}{PATH}", args.requests, args.concurrency
            )
        )
    finally:
        for proc in (proxy, upstream):
            proc.terminate()
        for proc in (proxy, upstream):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(
        f"GET {PATH} ({len(BODY)} B JSON), {os.cpu_count()} CPUs, proxy log level "
        f"{args.log_level}; upstream, proxy and load generator in separate processes\n"
    )
    print(table(direct, proxied, args.concurrency))


if __name__ == "__main__":
    main()
