"""Runs the proxy app as a server process: builds it, serves it, shuts it down gracefully."""

from __future__ import annotations

import asyncio
import time

import structlog

from proxy.app import GATE, LIFECYCLE, METRICS, create_app
from proxy.coordination_redis import RedisCoordination
from proxy.server import run, serve
from proxy.settings import Settings

log = structlog.get_logger("proxy")

# Held requests get their 503 this long before the grace runs out, so they are answered
# rather than reset when the process exits.
_ANSWER_BEFORE_GRACE_S = 1.0


def fleet_coordination(settings: Settings) -> RedisCoordination | None:
    """Redis-backed coordination when a Redis URL is set; None keeps the in-process default."""
    if settings.redis_url is None:
        return None
    return RedisCoordination(
        settings.redis_url.get_secret_value(),
        lock_lease_s=settings.redis_lock_lease_s,
        timeout_s=settings.redis_timeout_s,
    )


async def serve_proxy(settings: Settings) -> None:
    coordination = fleet_coordination(settings)
    app = create_app(settings, coordination=coordination)
    if coordination is not None:
        # The metrics registry is born with the app; bound here, before the app starts.
        coordination.count_fallbacks_with(app[METRICS].coordination_fallbacks.inc)

    def stopping() -> None:
        life = app[LIFECYCLE]
        life.shutting_down = True
        life.stop_deadline = time.monotonic() + settings.shutdown_grace_s
        gate = app[GATE]
        asyncio.get_running_loop().call_later(
            max(0.0, settings.shutdown_grace_s - _ANSWER_BEFORE_GRACE_S), gate.stop_holding
        )

    def bound(port: int) -> None:
        log.info(
            "listening",
            url=f"http://{settings.host}:{port}",
            upstream=str(settings.upstream_url),
            api_key_injected=settings.api_key is not None,
        )

    await serve(
        app,
        settings.host,
        settings.port,
        max_header_bytes=settings.max_header_bytes,
        grace_s=settings.shutdown_grace_s,
        on_stopping=stopping,
        on_bound=bound,
    )


def run_proxy(settings: Settings) -> None:
    run(lambda: serve_proxy(settings))
