"""Shared helpers for the simulator tests: fast configs and the headers the SDK sends."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient

from proxy.sim import SimConfig

API_KEY = "sim-api-key"
APP_ID = "sim-app"

# The `sim_client` fixture: start a simulator with `fast(**overrides)`, get a test client.
SimClient = Callable[..., Awaitable[TestClient[Any, Any]]]


def headers(consumer_id: str = "consumer-1", **extra: str) -> dict[str, str]:
    """The headers Apideck's SDK sends on a unified call."""
    return {
        "Authorization": f"Bearer {API_KEY}",
        "x-apideck-app-id": APP_ID,
        "x-apideck-consumer-id": consumer_id,
        **extra,
    }


def fast(**overrides: Any) -> SimConfig:
    """A config whose latencies keep each test well under a second."""
    values: dict[str, Any] = {"refresh_latency_s": 0.05, "request_latency_s": 0.005}
    values.update(overrides)
    return SimConfig(**values)
