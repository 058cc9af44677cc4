"""Bodies stream both ways: 1 GiB through a proxy running in its own process, memory bounded.

The proxy is a separate `python -m proxy` process so its RSS can be sampled on its own; the
echo upstream and the counting client share the test's event loop and never hold a body.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import aiohttp
import psutil
import pytest

from tests.proxy.echo import CHUNK, Echo, free_port, spawn_proxy, start_echo, stop_process

GIB = 1024 * 1024 * 1024
MIB_IN_GIB = GIB // len(CHUNK)
MAX_RSS_GROWTH = 100 * 1024 * 1024

pytestmark = pytest.mark.slow


@dataclass
class ProxyProcess:
    url: str
    proc: subprocess.Popen[bytes]
    samples: list[int] = field(default_factory=list)

    def rss(self) -> int:
        return int(psutil.Process(self.proc.pid).memory_info().rss)


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    running = await start_echo()
    yield running
    await running.stop()


@pytest.fixture
async def proxy_process(echo: Echo) -> AsyncIterator[ProxyProcess]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIDECK_PROXY_")}
    env.update(
        APIDECK_PROXY_UPSTREAM_URL=echo.url,
        APIDECK_PROXY_UPLOAD_UPSTREAM_URL=echo.url,
        APIDECK_PROXY_HOST="127.0.0.1",
        APIDECK_PROXY_PORT=str(port),
        APIDECK_PROXY_LOG_LEVEL="warning",
    )
    proc = await asyncio.to_thread(spawn_proxy, env, port)
    try:
        yield ProxyProcess(f"http://127.0.0.1:{port}", proc)
    finally:
        await asyncio.to_thread(stop_process, proc)


@contextlib.asynccontextmanager
async def sampling(proxy: ProxyProcess) -> AsyncIterator[None]:
    """Sample the proxy's RSS every 20 ms while the body is in flight."""

    async def sample() -> None:
        while True:
            proxy.samples.append(proxy.rss())
            await asyncio.sleep(0.02)

    task = asyncio.create_task(sample())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        proxy.samples.append(proxy.rss())


async def warm_up(client: aiohttp.ClientSession, proxy: ProxyProcess) -> int:
    """One small request each way so lazily allocated buffers exist before the baseline."""
    async with client.get(f"{proxy.url}/_echo/download?mib=4") as resp:
        await resp.read()
    async with client.post(f"{proxy.url}/_echo/upload", data=CHUNK * 4) as resp:
        await resp.read()
    return proxy.rss()


def gib_of_chunks() -> Iterator[bytes]:
    for _ in range(MIB_IN_GIB):
        yield CHUNK


async def body() -> AsyncIterator[bytes]:
    for chunk in gib_of_chunks():
        yield chunk


def assert_bounded(proxy: ProxyProcess, baseline: int) -> None:
    assert len(proxy.samples) > 10
    growth = max(proxy.samples) - baseline
    assert growth < MAX_RSS_GROWTH, f"proxy RSS grew by {growth / 2**20:.0f} MiB"


async def test_one_gib_download_streams_with_bounded_memory(
    proxy_process: ProxyProcess,
) -> None:
    """A 1 GiB download arrives complete and exact while the proxy's RSS stays bounded."""
    async with aiohttp.ClientSession() as client:
        baseline = await warm_up(client, proxy_process)
        received = 0
        async with sampling(proxy_process):
            url = f"{proxy_process.url}/_echo/download?mib={MIB_IN_GIB}"
            async with client.get(url) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Length"] == str(GIB)
                async for chunk in resp.content.iter_any():
                    received += len(chunk)
    assert received == GIB
    assert_bounded(proxy_process, baseline)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_one_gib_upload_streams_with_bounded_memory(
    proxy_process: ProxyProcess, framing: str
) -> None:
    """A 1 GiB upload (declared length or chunked) reaches upstream exact and keeps framing."""
    headers = {"Content-Type": "application/octet-stream"}
    if framing == "content-length":
        headers["Content-Length"] = str(GIB)
    async with aiohttp.ClientSession() as client:
        baseline = await warm_up(client, proxy_process)
        async with (
            sampling(proxy_process),
            client.put(f"{proxy_process.url}/_echo/upload", data=body(), headers=headers) as resp,
        ):
            assert resp.status == 200
            result = await resp.json()
    assert result["received"] == GIB
    if framing == "content-length":
        assert result == {"received": GIB, "chunked": False, "content_length": str(GIB)}
    else:
        assert result == {"received": GIB, "chunked": True, "content_length": None}
    assert_bounded(proxy_process, baseline)
