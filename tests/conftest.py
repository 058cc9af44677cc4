"""Shared fixtures: real servers on loopback, started in-process (no mocks of the HTTP path)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from proxy.app import HANDLER, create_app
from proxy.coordination import Coordination
from proxy.server import make_runner
from proxy.settings import Settings, load_settings

pytest_plugins = ["tests.simfixtures"]


@pytest.fixture(autouse=True, scope="session")
def _quiet_logs() -> None:
    """Tests assert behaviour, not log lines: keep the default output to warnings and up.

    (Tests about logging configure their own stream.)"""
    from proxy.log import configure_logging

    configure_logging("console", "warning")


@dataclass
class Running:
    """A server started by a test: its base URL and, for the proxy, its app."""

    url: str
    port: int
    app: web.Application
    runner: web.AppRunner

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_app(
    app: web.Application, *, max_header_bytes: int = 16_384, grace_s: float = 2.0
) -> Running:
    runner = make_runner(app, max_header_bytes=max_header_bytes, shutdown_timeout_s=grace_s)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return Running(f"http://127.0.0.1:{port}", port, app, runner)


def proxy_settings(upstream: str, upload: str | None = None, **overrides: Any) -> Settings:
    """Settings for a proxy in front of a local upstream; lifetimes shrunk for the simulator."""
    base: dict[str, Any] = {
        "upstream_url": upstream,
        "upload_upstream_url": upload or upstream,
        "log_format": "console",
        "log_level": "warning",
    }
    base.update(overrides)
    return load_settings(None, **base)


ProxyFactory = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_proxy() -> AsyncIterator[ProxyFactory]:
    """Start proxies in front of given upstreams; all are stopped after the test."""
    started: list[Running] = []

    async def factory(
        upstream: str,
        upload: str | None = None,
        coordination: Coordination | None = None,
        **overrides: Any,
    ) -> Running:
        settings = proxy_settings(upstream, upload, **overrides)
        app = create_app(settings, coordination=coordination)
        running = await start_app(
            app, max_header_bytes=settings.max_header_bytes, grace_s=settings.shutdown_grace_s
        )
        started.append(running)
        return running

    yield factory
    for running in reversed(started):
        await running.stop()


def handler_of(running: Running) -> Any:
    return running.app[HANDLER].target
