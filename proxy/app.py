"""`create_app(settings)`: the only place that wires the parts together.

Shared state lives on the application under typed keys; each long-lived resource has one
cleanup-context entry that opens it inside the running loop and closes it on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Handler

from proxy.coordination import Coordination, LocalCoordination
from proxy.errors import MethodNotAllowed, error_response, to_response
from proxy.forward import Forwarder, Upstreams
from proxy.gate import Gate, GatePolicy
from proxy.handler import ProxyHandler
from proxy.metrics import Metrics
from proxy.server import ON_REJECT
from proxy.settings import Settings
from proxy.vault import ServiceResolver, VaultClient

RESERVED_PREFIX = "/_proxy/"


@dataclass
class Lifecycle:
    """Readiness as the orchestrator sees it."""

    started: bool = False
    shutting_down: bool = False
    coordination: Coordination = field(default_factory=LocalCoordination)
    # monotonic time by which shutdown must be over (SIGTERM + the grace); None while serving
    stop_deadline: float | None = None


class _LateHandler:
    """Routes are fixed before start-up, the handler's resources exist only after it."""

    def __init__(self) -> None:
        self.target: ProxyHandler | None = None

    def bind(self, target: ProxyHandler) -> None:
        self.target = target

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        if self.target is None:
            return error_response(
                503, "ServiceUnavailableError", "the proxy is starting", retry_after_s=1
            )
        return await self.target(request)


SETTINGS = web.AppKey("settings", Settings)
UPSTREAMS = web.AppKey("upstreams", Upstreams)
GATE = web.AppKey("gate", Gate)
HANDLER = web.AppKey("handler", _LateHandler)
METRICS = web.AppKey("metrics", Metrics)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(data).encode(), content_type="application/json"
    )


async def healthz(request: web.Request) -> web.Response:
    # Liveness is only "the event loop answers": a Redis or Apideck outage must not get the
    # pod restarted.
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    life = app[LIFECYCLE]
    checks: dict[str, object] = {
        "started": life.started,
        "shutting_down": life.shutting_down,
        "upstream_session_open": UPSTREAMS in app and app[UPSTREAMS].open,
        "coordination": life.coordination.health(),
    }
    ready = life.started and not life.shutting_down and bool(checks["upstream_session_open"])
    return _json({"ready": ready, "checks": checks}, 200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


async def connections(request: web.Request) -> web.Response:
    if not request.app[SETTINGS].admin_enabled:
        return error_response(
            404,
            "EntityNotFoundError",
            "the connections view is disabled",
            "set APIDECK_PROXY_ADMIN_ENABLED=true to enable it",
        )
    rows = request.app[GATE].snapshot()
    return _json({"connections": rows, "count": len(rows)})


async def reserved_not_found(request: web.Request) -> web.Response:
    return error_response(
        404,
        "EntityNotFoundError",
        f"no proxy endpoint at {request.path}",
        "paths under /_proxy/ belong to the proxy and are never forwarded",
    )


@web.middleware
async def envelope_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Router refusals (a CONNECT's authority-form target matches no route) in the envelope."""
    if request.method == "CONNECT":
        refused = MethodNotAllowed(
            "CONNECT is not supported: this is not an open proxy", detail="method CONNECT"
        )
        # Never reaches the handler, so it is counted here (the handler counts the rest).
        m = request.app[METRICS]
        m.rejected.labels(refused.type_name).inc()
        m.requests.labels("CONNECT", f"{refused.status // 100}xx", "none").inc()
        return to_response(refused)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(
            exc.status, "RequestValidationError", exc.reason, f"{request.method} refused"
        )


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    life = app[LIFECYCLE]
    upstreams = Upstreams(settings)
    await upstreams.start()
    await life.coordination.start()
    m = app[METRICS]
    vault = VaultClient(upstreams.session(False), upstreams.unify_url, settings.validate_timeout_s)
    gate = Gate(
        GatePolicy(
            ttl_for=settings.ttl_for,
            margin_for=settings.margin_for,
            hold_timeout_s=settings.hold_timeout_s,
            drain_timeout_s=settings.drain_timeout_s,
            fatal_cooldown_s=settings.fatal_cooldown_s,
            validate_timeout_s=settings.validate_timeout_s,
            max_waiters=settings.max_waiters_per_connection,
            max_connections=settings.max_connections,
            idle_expiry_s=settings.connection_idle_expiry_s,
            refresh_ahead_s=settings.refresh_ahead_s,
            refresh_ahead_active_s=settings.refresh_ahead_active_s,
            upstream_window_s=settings.upstream_refresh_window_s,
        ),
        vault,
        coordination=life.coordination,
        observer=m,
    )
    resolver = ServiceResolver(
        upstreams.session(False),
        upstreams.unify_url,
        settings.validate_timeout_s,
        settings.service_cache_ttl_s,
    )
    app[UPSTREAMS] = upstreams
    app[GATE] = gate
    app[HANDLER].bind(ProxyHandler(settings, Forwarder(upstreams), gate, resolver, m))
    ahead = asyncio.get_running_loop().create_task(
        gate.run_refresh_ahead(_ahead_interval(settings))
    )
    life.started = True
    try:
        yield
    finally:
        life.started = False
        ahead.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ahead
        # A validate cut off mid-rotation helps nobody: let running ones finish first, within
        # what is left of the grace (the orchestrator kills the process after it).
        left = 5.0 if life.stop_deadline is None else life.stop_deadline - time.monotonic()
        await gate.wait_validations(max(0.0, min(left, settings.shutdown_grace_s)))
        await gate.close()
        await life.coordination.close()
        await upstreams.close()


def _ahead_interval(settings: Settings) -> float:
    # Often enough to start well inside the lead time, never busier than 10 times a second.
    return max(0.1, min(1.0, settings.refresh_ahead_s / 4 if settings.refresh_ahead_s else 1.0))


def create_app(settings: Settings, coordination: Coordination | None = None) -> web.Application:
    app = web.Application(client_max_size=0, middlewares=[envelope_errors])
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[LIFECYCLE] = Lifecycle(coordination=coordination or LocalCoordination())
    late = app[HANDLER] = _LateHandler()
    metrics_ = app[METRICS]
    app[ON_REJECT] = lambda reason: metrics_.rejected.labels(reason).inc()
    app.router.add_get(RESERVED_PREFIX + "healthz", healthz)
    app.router.add_get(RESERVED_PREFIX + "readyz", readyz)
    app.router.add_get(RESERVED_PREFIX + "metrics", metrics)
    app.router.add_get(RESERVED_PREFIX + "connections", connections)
    app.router.add_route("*", RESERVED_PREFIX + "{tail:.*}", reserved_not_found)
    app.router.add_route("*", "/{tail:.*}", late.__call__)
    app.cleanup_ctx.append(_resources)
    return app
