"""Simulator fixtures shared by every test package: the simulator in-process and a proxy in
front of it (registered for all tests through `pytest_plugins` in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.sim import SIM_STATE, SimConfig, SimState, start_sim
from tests.conftest import ProxyFactory, Running

API_KEY = "sim-api-key"
APP_ID = "sim-app"


@dataclass
class Sim:
    url: str
    runner: web.AppRunner

    @property
    def state(self) -> SimState:
        return self.runner.app[SIM_STATE]  # type: ignore[union-attr]  # set once set up


SimFactory = Callable[..., Awaitable[Sim]]


@pytest.fixture
async def start_simulator() -> AsyncIterator[SimFactory]:
    runners: list[web.AppRunner] = []

    async def factory(**config: Any) -> Sim:
        runner, port = await start_sim(SimConfig(**config))
        runners.append(runner)
        return Sim(f"http://127.0.0.1:{port}", runner)

    yield factory
    for runner in runners:
        await runner.cleanup()


def gated_settings(window_s: float, ttl_s: float, margin_s: float, **extra: Any) -> dict[str, Any]:
    """Proxy settings matching a shrunk simulator: same window, same lifetimes."""
    return {
        "upstream_refresh_window_s": window_s,
        "token_ttl_s": ttl_s,
        "service_token_ttl_s": {"salesforce": ttl_s, "xero": ttl_s, "hubspot": ttl_s},
        "refresh_margin_s": margin_s,
        "service_refresh_margin_s": {},
        **extra,
    }


@pytest.fixture
async def sim_and_proxy(
    start_simulator: SimFactory, start_proxy: ProxyFactory
) -> Callable[..., Awaitable[tuple[Sim, Running]]]:
    async def factory(
        sim: dict[str, Any] | None = None, proxy: dict[str, Any] | None = None
    ) -> tuple[Sim, Running]:
        sim_cfg = {
            "window_s": 1.0,
            "token_ttl_s": 30.0,
            "refresh_latency_s": 0.2,
            "request_latency_s": 0.02,
            **(sim or {}),
        }
        s = await start_simulator(**sim_cfg)
        proxy_cfg = gated_settings(sim_cfg["window_s"], sim_cfg["token_ttl_s"], 3.0)
        proxy_cfg.update(proxy or {})
        p = await start_proxy(s.url, **proxy_cfg)
        return s, p

    return factory


def headers(
    consumer: str = "c1",
    service: str | None = "salesforce",
    api_key: str = API_KEY,
    app_id: str = APP_ID,
) -> dict[str, str]:
    h = {
        "Authorization": f"Bearer {api_key}",
        "x-apideck-app-id": app_id,
        "x-apideck-consumer-id": consumer,
    }
    if service:
        h["x-apideck-service-id"] = service
    return h


async def get(
    session: aiohttp.ClientSession, url: str, **kw: Any
) -> tuple[int, dict[str, Any] | None, aiohttp.typedefs.LooseHeaders]:
    async with session.get(url, **kw) as resp:
        try:
            body = await resp.json(content_type=None)
        except ValueError:
            body = None
        return resp.status, body, resp.headers
