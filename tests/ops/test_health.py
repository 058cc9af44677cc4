"""Liveness and readiness: what an orchestrator polls, against a real proxy on a socket."""

from __future__ import annotations

import aiohttp

from proxy.app import LIFECYCLE, UPSTREAMS
from tests.conftest import ProxyFactory
from tests.ops.conftest import fetch


async def test_healthz_answers_while_upstream_is_down(start_proxy: ProxyFactory) -> None:
    """Liveness is only 'the event loop answers': an unreachable Apideck does not fail it."""
    proxy = await start_proxy("http://127.0.0.1:9")  # discard port: nothing listens
    async with aiohttp.ClientSession() as s:
        status, body, _ = await fetch(s, "GET", proxy.url + "/_proxy/healthz")
    assert status == 200
    assert body == b'{"status": "ok"}'


async def test_readyz_ready_with_check_detail(start_proxy: ProxyFactory) -> None:
    """A started proxy with an open upstream session is ready and says why, coordination too."""
    proxy = await start_proxy("http://127.0.0.1:9")
    async with aiohttp.ClientSession() as s, s.get(proxy.url + "/_proxy/readyz") as resp:
        status, body = resp.status, await resp.json()
    assert status == 200
    assert body == {
        "ready": True,
        "checks": {
            "started": True,
            "shutting_down": False,
            "upstream_session_open": True,
            "coordination": {"backend": "local", "ok": True},
        },
    }


async def test_readyz_503_when_shutting_down(start_proxy: ProxyFactory) -> None:
    """Once the lifecycle says shutting down, readiness turns 503 so the pod leaves rotation,
    while liveness stays 200 (a draining pod must not be restarted)."""
    proxy = await start_proxy("http://127.0.0.1:9")
    # What the SIGTERM handler in proxy.service does first.
    proxy.app[LIFECYCLE].shutting_down = True
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.url + "/_proxy/readyz") as resp:
            status, body = resp.status, await resp.json()
        live, _, _ = await fetch(s, "GET", proxy.url + "/_proxy/healthz")
    assert status == 503
    assert body["ready"] is False
    assert body["checks"]["shutting_down"] is True
    assert live == 200


async def test_readyz_503_when_upstream_session_closed(start_proxy: ProxyFactory) -> None:
    """A proxy whose upstream session is closed cannot forward, so it is not ready."""
    proxy = await start_proxy("http://127.0.0.1:9")
    await proxy.app[UPSTREAMS].close()
    async with aiohttp.ClientSession() as s, s.get(proxy.url + "/_proxy/readyz") as resp:
        status, body = resp.status, await resp.json()
    assert status == 503
    assert body["checks"]["upstream_session_open"] is False
