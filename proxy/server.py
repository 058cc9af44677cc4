"""Runs an app on a socket: uvloop, error envelopes for requests aiohttp cannot parse, and a
graceful shutdown on SIGTERM/SIGINT. Knows nothing about what the app does.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from proxy.errors import envelope

log = structlog.get_logger("proxy.server")


# What the app wants told when a request is refused before any handler ran (its metrics).
ON_REJECT: web.AppKey[Callable[[str], None]] = web.AppKey("on_reject")


class _EnvelopeRequestHandler(RequestHandler):
    """Requests aiohttp rejects before any handler runs still get Apideck's error envelope."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        if isinstance(exc, ConnectionResetError):
            # The client left mid-request: nothing to answer and nothing wrong with the proxy.
            log.debug("client closed the connection", status=499)
            resp = web.Response(status=499)
            resp.force_close()
            return resp
        if isinstance(exc, LineTooLong):
            status, type_name, text = (
                431,
                "RequestHeadersTooLargeError",
                "request line or header too large",
            )
            detail = "a request line or header field is longer than APIDECK_PROXY_MAX_HEADER_BYTES"
        elif isinstance(exc, BadHttpMessage):
            status, type_name, text = 400, "RequestValidationError", "malformed HTTP request"
            # Only the kind of defect: the parser's own message quotes the offending bytes,
            # which may be a credential.
            detail = f"{type(exc).__name__}: the request is not valid HTTP/1.1"
        elif status == 504:
            type_name, text, detail = "UpstreamTimeoutError", "request timed out", "timeout"
        else:
            type_name, text, detail = "ProxyInternalError", "internal error", "internal error"
        # Never a traceback, never request bytes.
        log.warning("rejected", status=status, reason=type(exc).__name__ if exc else None)
        on_reject = getattr(self._manager, "on_reject", None)
        if on_reject is not None:
            on_reject(type_name)
        body = envelope(status, type_name, text, detail)
        resp = web.Response(
            status=status, body=json.dumps(body).encode(), content_type="application/json"
        )
        resp.force_close()
        return resp


class _EnvelopeServer(Server):
    def __call__(self) -> RequestHandler:
        return _EnvelopeRequestHandler(self, loop=self._loop, **self._kwargs)


class ProxyRunner(web.AppRunner):
    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = _EnvelopeServer  # only __call__ differs
        server.on_reject = self.app.get(ON_REJECT)  # type: ignore[attr-defined]  # set on the swapped class's instance
        return server


def make_runner(
    app: web.Application, *, max_header_bytes: int, shutdown_timeout_s: float
) -> ProxyRunner:
    return ProxyRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=shutdown_timeout_s,
        max_line_size=max_header_bytes,
        max_field_size=max_header_bytes,
    )


async def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    max_header_bytes: int,
    grace_s: float,
    on_stopping: Callable[[], None] = lambda: None,
    on_bound: Callable[[int], None] = lambda port: None,
) -> None:
    """Serve until SIGTERM/SIGINT, then stop accepting, let work finish within `grace_s`."""
    runner = make_runner(app, max_header_bytes=max_header_bytes, shutdown_timeout_s=grace_s)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    bound = _bound_port(runner, port)
    on_bound(bound)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("stopping", grace_s=grace_s)
        on_stopping()
        await runner.cleanup()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")


def _bound_port(runner: web.AppRunner, default: int) -> int:
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            return int(addr[1])
    return default


def run(main: Callable[[], Any]) -> None:
    """Run a coroutine function on uvloop when it is there (it is on Linux and macOS)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        asyncio.run(main())
        return
    uvloop.run(main())
