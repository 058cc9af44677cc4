"""Fixtures for the operations tests: the simulator and a proxy in front of it, in-process, and
logging captured into a buffer through the production `configure_logging` chain."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web

from proxy.gate import ConnectionKey
from proxy.log import configure_logging
from proxy.routing import credential_fingerprint
from proxy.sim import SIM_STATE, SimConfig, SimState, start_sim
from tests.conftest import ProxyFactory, Running
from tests.simfixtures import headers

# Distinctive values: if any of them shows up in a label, a log line or an error body, it leaked.
API_KEY = "sk-SECRET-4f1d9c2be7a04e55"
CONSUMER = "consumer-SECRET-1234"
APP_ID = "ops-app"


def auth_headers(
    consumer: str = CONSUMER, service: str | None = "salesforce", api_key: str = API_KEY
) -> dict[str, str]:
    return headers(consumer, service, api_key, APP_ID)


def connection_id(consumer: str = CONSUMER, service: str = "salesforce") -> str:
    """The hash the proxy uses for this connection in logs and the admin view."""
    fp = credential_fingerprint(f"Bearer {API_KEY}")
    return ConnectionKey(APP_ID, consumer, "crm", service, fp).id


@dataclass
class Sim:
    url: str
    runner: web.AppRunner

    @property
    def state(self) -> SimState:
        assert self.runner.app is not None  # set once set up
        return self.runner.app[SIM_STATE]


SimProxy = Callable[..., Awaitable[tuple[Sim, Running]]]


@pytest.fixture
async def sim_proxy(start_proxy: ProxyFactory) -> AsyncIterator[SimProxy]:
    """A shrunk simulator (1 s refresh window, 30 s tokens) and a proxy matched to it."""
    runners: list[web.AppRunner] = []

    async def factory(**proxy: Any) -> tuple[Sim, Running]:
        runner, port = await start_sim(
            SimConfig(
                window_s=1.0,
                token_ttl_s=30.0,
                refresh_latency_s=0.2,
                request_latency_s=0.01,
                api_keys=frozenset({API_KEY}),
                app_id=APP_ID,
            )
        )
        runners.append(runner)
        sim = Sim(f"http://127.0.0.1:{port}", runner)
        settings: dict[str, Any] = {
            "upstream_refresh_window_s": 1.0,
            "token_ttl_s": 30.0,
            "service_token_ttl_s": {"salesforce": 30.0},
            "refresh_margin_s": 3.0,
            "service_refresh_margin_s": {},
            **proxy,
        }
        return sim, await start_proxy(sim.url, **settings)

    yield factory
    for runner in runners:
        await runner.cleanup()


@contextlib.contextmanager
def logging_restored() -> Iterator[None]:
    """Put back whatever logging set-up the session had (tests/conftest.py configures one)."""
    root = logging.getLogger()
    access = logging.getLogger("aiohttp.access")
    saved = root.handlers[:], root.level, access.disabled, structlog.get_config()
    try:
        yield
    finally:
        root.handlers[:], level, access.disabled, config = saved
        root.setLevel(level)
        logging.captureWarnings(False)
        structlog.configure(**config)


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """Everything the process logs, at debug, as the production chain renders it (JSON)."""
    buf = io.StringIO()
    with logging_restored():
        configure_logging("json", "debug", buf, secrets=[API_KEY])
        yield buf


async def fetch(
    session: aiohttp.ClientSession, method: str, url: str, **kw: Any
) -> tuple[int, bytes, Any]:
    async with session.request(method, url, **kw) as resp:
        return resp.status, await resp.read(), resp.headers
