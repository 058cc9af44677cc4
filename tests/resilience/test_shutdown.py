"""Graceful shutdown of the real process: SIGTERM lets accepted requests finish, refuses new
connections, answers held requests before the grace runs out, and exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from proxy.sim import FaultRule
from tests.simfixtures import Sim, SimFactory, headers

ROOT = Path(__file__).resolve().parents[2]
CONTACTS = "/crm/contacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            assert proc.poll() is None, "proxy exited during start-up"
            try:
                async with s.get(url + "/_proxy/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("proxy never became healthy")


ProxyProcess = Callable[..., Awaitable[tuple[str, subprocess.Popen[bytes]]]]


@pytest.fixture
async def proxy_process() -> AsyncIterator[ProxyProcess]:
    """Start `python -m proxy` as its own process; killed after the test if still running."""
    procs: list[subprocess.Popen[bytes]] = []

    async def start(upstream: str, **settings: str) -> tuple[str, subprocess.Popen[bytes]]:
        port = free_port()
        env = dict(
            os.environ,
            APIDECK_PROXY_PORT=str(port),
            APIDECK_PROXY_UPSTREAM_URL=upstream,
            APIDECK_PROXY_UPLOAD_UPSTREAM_URL=upstream,
            APIDECK_PROXY_UPSTREAM_REFRESH_WINDOW_S="1",
            APIDECK_PROXY_TOKEN_TTL_S="30",
            APIDECK_PROXY_SERVICE_TOKEN_TTL_S=json.dumps({"salesforce": 30}),
            APIDECK_PROXY_REFRESH_MARGIN_S="3",
            APIDECK_PROXY_SERVICE_REFRESH_MARGIN_S="{}",
            APIDECK_PROXY_LOG_FORMAT="json",
            **{f"APIDECK_PROXY_{k.upper()}": v for k, v in settings.items()},
        )
        # A file, not a pipe: a pipe nobody reads would block a chatty process.
        log = tempfile.TemporaryFile()  # noqa: SIM115  # closed with the process below
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy"], cwd=ROOT, env=env, stdout=log, stderr=log
        )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        await wait_healthy(url, proc)
        return url, proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def wait_exit(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None:
        assert time.monotonic() < deadline, "proxy did not exit within its grace"
        await asyncio.sleep(0.05)
    return proc.returncode


async def test_sigterm_finishes_in_flight_requests_and_exits_zero(
    start_simulator: SimFactory, proxy_process: ProxyProcess
) -> None:
    """Requests in flight at SIGTERM complete with 200, new connections are refused, exit 0."""
    sim: Sim = await start_simulator(window_s=1.0, token_ttl_s=30.0, refresh_latency_s=0.05)
    url, proc = await proxy_process(sim.url, shutdown_grace_s="5")
    async with aiohttp.ClientSession() as s:
        async with s.get(url + CONTACTS, headers=headers()) as r:
            assert r.status == 200  # token known: the next requests are not held
        sim.state.add_fault(FaultRule(kind="delay", delay_s=1.0, path_prefix=CONTACTS))
        in_flight = [
            asyncio.create_task(s.get(url + CONTACTS, headers=headers())) for _ in range(5)
        ]
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as fresh:
                await fresh.get(url + "/_proxy/readyz")
        responses = await asyncio.gather(*in_flight)
        statuses = [r.status for r in responses]
        for r in responses:
            r.release()
    assert statuses == [200] * 5
    assert await wait_exit(proc, 6) == 0


async def test_request_held_past_the_grace_gets_a_clear_503(
    start_simulator: SimFactory, proxy_process: ProxyProcess
) -> None:
    """A request still waiting for a validate when the grace ends gets 503, not a reset."""
    sim: Sim = await start_simulator(window_s=1.0, token_ttl_s=30.0, refresh_latency_s=0.05)
    sim.state.add_fault(FaultRule(kind="delay", delay_s=30.0, path_prefix="/vault/"))
    url, proc = await proxy_process(sim.url, shutdown_grace_s="2", hold_timeout_s="20")
    async with aiohttp.ClientSession() as s:
        held = asyncio.create_task(s.get(url + CONTACTS, headers=headers()))
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        resp = await held
        body = await resp.json()
        waited = time.monotonic() - started
    assert resp.status == 503
    assert body["type_name"] == "ProxyShuttingDownError"
    assert "Retry-After" in resp.headers
    assert waited < 2.0  # answered inside the grace
    assert await wait_exit(proc, 8) == 0
