"""Fleet fixtures: a real redis-server on a free loopback port, and proxies run as processes.

redis-server must be on PATH (`python3 dev.py test` installs it); without it these tests fail
rather than skip, so a green run always means fleet mode was exercised.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.simfixtures import gated_settings

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process on a fixed loopback port, stoppable and restartable in place."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        # Loopback only, nothing persisted: a restart on the same port starts empty.
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
        args += ["no", "--dir", str(self.workdir), "--loglevel", "warning"]
        self.proc = subprocess.Popen(
            [self.binary, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"redis-server exited with {self.proc.returncode} on port {self.port}")
            if self.ping():
                return
            time.sleep(0.02)
        pytest.fail(f"redis-server did not answer PING on port {self.port} within 5s")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5.0)
        self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private Redis for one test, on a free port; stopped afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not on PATH; the fleet-mode tests need a real Redis. `python3 dev.py "
            "test` installs it, or: apt-get install redis-server / brew install redis"
        )
    server = RedisServer(binary, tmp_path)
    server.start()
    yield server
    server.stop()


@dataclass
class ProxyProcess:
    """`python -m proxy` started by a test; `url` is where it listens."""

    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def proxy_env(upstream: str, redis_url: str | None, port: int, **extra: Any) -> dict[str, str]:
    """The environment of one proxy replica in front of the shrunk simulator."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIDECK_PROXY_")}
    settings: dict[str, Any] = {
        "upstream_url": upstream,
        "upload_upstream_url": upstream,
        "host": "127.0.0.1",
        "port": port,
        "log_format": "json",
        "log_level": "info",
        "shutdown_grace_s": 1.0,
        "admin_enabled": True,
        # Roomier than the default: a CI box starved enough to stall loopback Redis for 0.5s
        # must not turn into a fallback and a flaky double validate.
        "redis_timeout_s": 2.0,
        **gated_settings(1.0, 4.0, 2.0),
        **extra,
    }
    if redis_url is not None:
        settings["redis_url"] = redis_url
    for name, value in settings.items():
        env[f"APIDECK_PROXY_{name.upper()}"] = (
            json.dumps(value) if isinstance(value, dict) else str(value)
        )
    return env


ProxyProcessFactory = Callable[..., Awaitable[list[ProxyProcess]]]


@pytest.fixture
async def proxy_processes(tmp_path: Path) -> AsyncIterator[ProxyProcessFactory]:
    """Start proxy replicas as processes (in parallel) and wait until each is ready."""
    started: list[ProxyProcess] = []

    async def factory(
        count: int, upstream: str, redis_url: str | None, **extra: Any
    ) -> list[ProxyProcess]:
        batch = []
        for _ in range(count):
            port = free_port()
            log_path = tmp_path / f"proxy-{port}.log"
            with log_path.open("wb") as log_file:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "proxy"],
                    cwd=ROOT,
                    env=proxy_env(upstream, redis_url, port, **extra),
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            p = ProxyProcess(f"http://127.0.0.1:{port}", proc, log_path)
            started.append(p)
            batch.append(p)
        async with aiohttp.ClientSession() as s:
            for p in batch:
                await wait_ready(s, p)
        return batch

    yield factory
    for p in started:
        if p.proc.poll() is None:
            p.proc.send_signal(signal.SIGTERM)
    for p in started:
        try:
            p.proc.wait(5.0)
        except subprocess.TimeoutExpired:
            p.proc.kill()
            p.proc.wait(5.0)


async def wait_ready(
    session: aiohttp.ClientSession, p: ProxyProcess, timeout_s: float = 15.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if p.proc.poll() is not None:
            pytest.fail(f"proxy exited with {p.proc.returncode}:\n{p.log()}")
        try:
            async with session.get(p.url + "/_proxy/readyz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    pytest.fail(f"proxy at {p.url} not ready within {timeout_s}s:\n{p.log()}")
