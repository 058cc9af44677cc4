"""Fixtures for the simulator tests."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

# The bare `pytest` entry point does not put the repo root on sys.path unless the package is
# installed; this keeps `tests/sim` runnable on its own either way.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from sim_helpers import SimClient, fast  # noqa: E402  (needs the path above)

from proxy.sim import create_sim_app  # noqa: E402  (needs the path above)


@pytest.fixture
def sim_client(aiohttp_client: Any) -> SimClient:
    """Start a simulator with `fast(**overrides)` and return a test client for it."""

    async def start(**overrides: Any) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = await aiohttp_client(create_sim_app(fast(**overrides)))
        return client

    return start
