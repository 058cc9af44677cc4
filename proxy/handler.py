"""The request path: parse the target, work out the connection, admit it through the gate,
forward, and replay once when a token 401 says the request started on a rotated token.

It is the seam between the forwarder (which knows nothing of tokens) and the gate (which
knows nothing of HTTP); it owns the one access-log line per request.
"""

from __future__ import annotations

import re
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict

from proxy.errors import BadRequest, MethodNotAllowed, Overloaded, ProxyError, to_response
from proxy.forward import Body, Forwarder, UpstreamBodyError
from proxy.gate import ConnectionKey, Credentials, Gate, Lease
from proxy.metrics import Metrics, api_label, method_label
from proxy.retry import Retrier, RetryBudget, RetryPolicy
from proxy.routing import (
    APP_HEADER,
    AUTH_HEADER,
    CONSUMER_HEADER,
    DATA_APIS,
    SERVICE_HEADER,
    Target,
    as_received,
    credential_fingerprint,
    first_segment,
    is_upload_route,
    parse_target,
    upstream_request_headers,
)
from proxy.settings import Settings
from proxy.vault import ServiceResolver, is_token_failure

log = structlog.get_logger("proxy.access")

_ID_LIKE = re.compile(r"\d|^[A-Za-z0-9_-]{20,}$|%")


def path_template(path: str) -> str:
    """Collapse ids so the log shows the endpoint, not a customer's record ids."""
    parts = path.split("/")
    return "/".join("{id}" if i > 2 and _ID_LIKE.search(p) else p for i, p in enumerate(parts))


@dataclass
class _Ctx:
    method: str
    path: str = "-"
    unified_api: str | None = None
    service_id: str | None = None
    connection: str | None = None
    gated: bool = False
    ungated_reason: str | None = None
    held_s: float = 0.0
    replayed: bool = False
    upstream_request_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Outgoing:
    """One client request as it will be sent upstream (possibly twice: retry or replay)."""

    request: web.Request
    target: Target
    headers: CIMultiDict[str]
    body: Body
    upload: bool


class ProxyHandler:
    def __init__(
        self,
        settings: Settings,
        forwarder: Forwarder,
        gate: Gate,
        resolver: ServiceResolver,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._forwarder = forwarder
        self._gate = gate
        self._resolver = resolver
        self._metrics = metrics
        self._api_key = settings.api_key.get_secret_value() if settings.api_key else None
        self._in_flight = 0
        self._buffered_bytes = 0
        self._retrier = Retrier(
            RetryPolicy(
                max_attempts=settings.retry_max_attempts,
                max_elapsed_s=settings.retry_max_elapsed_s,
                methods=settings.retry_methods,
                statuses=settings.retry_statuses,
                backoff_base_s=settings.retry_backoff_base_s,
                backoff_cap_s=settings.retry_backoff_cap_s,
            ),
            RetryBudget(settings.retry_budget_ratio, settings.retry_budget_min_per_s),
            on_retry=lambda kind: metrics.retries.labels(kind).inc(),
        )

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        ctx = _Ctx(request.method)
        status = 0
        try:
            if self._in_flight >= self._settings.max_in_flight:
                raise Overloaded("too many requests in flight", retry_after_s=1.0)
            self._in_flight += 1
            try:
                response = await self._handle(request, ctx)
            finally:
                self._in_flight -= 1
            status = response.status
            return response
        except ProxyError as exc:
            if _client_gone(request):
                # Nobody to answer: the failure is the client's leaving, not the upstream's.
                status = 499
                ctx.extra["client_closed"] = True
                return to_response(exc)
            self._metrics.rejected.labels(exc.type_name).inc()
            status = exc.status
            return to_response(exc)
        except UpstreamBodyError:
            status = 502
            ctx.extra["aborted"] = "upstream body cut short"
            raise
        except ClientGone:
            status = 499
            ctx.extra["client_closed"] = True
            return web.Response(status=499)  # written nowhere: the transport is closed
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            status = 499  # the client went away mid-response
            raise
        finally:
            duration = time.monotonic() - started
            self._metrics.requests.labels(
                method_label(ctx.method),
                f"{status // 100}xx" if status else "none",
                api_label(ctx.unified_api),
            ).inc()
            log.info(
                "request",
                method=ctx.method,
                path=ctx.path,
                status=status,
                duration_ms=round(duration * 1000, 1),
                held_ms=round(ctx.held_s * 1000, 1),
                unified_api=ctx.unified_api,
                service_id=ctx.service_id,
                connection=ctx.connection,
                gated=ctx.gated,
                ungated_reason=ctx.ungated_reason,
                replayed=ctx.replayed,
                request_id=request.headers.get("x-request-id"),
                apideck_request_id=ctx.upstream_request_id,
                **ctx.extra,
            )

    async def _handle(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        if request.method == "CONNECT":
            raise MethodNotAllowed(
                "CONNECT is not supported: this is not an open proxy", detail="method CONNECT"
            )
        raw = request.raw_path
        # Only an absolute-form target needs the proxy's own names (rare; off the hot path).
        own = () if raw.startswith("/") else _own_authorities(request, self._settings)
        target = parse_target(raw, own)
        ctx.path = path_template(target.path)
        api = first_segment(target.path)
        ctx.unified_api = api or None
        # Raw lines, not `.headers`: aiohttp respells well-known names, a proxy must not.
        headers = upstream_request_headers(
            as_received(request.raw_headers), api_key=self._api_key, app_id=self._settings.app_id
        )
        body = await self._read_body(request)
        out = _Outgoing(
            request, target, headers, body, is_upload_route(request.method, target.path)
        )
        try:
            return await self._forward(out, api, ctx)
        finally:
            self._buffered_bytes -= len(body.data or b"")

    async def _read_body(self, request: web.Request) -> Body:
        """Buffer small bodies (replayable) while the total buffered stays bounded; the rest,
        and everything beyond the budget, streams."""
        s = self._settings
        length = request.content_length or 0
        room = self._buffered_bytes + length <= s.max_buffered_bytes
        body = await Body.from_request(request, s.replay_max_body_bytes if room else -1)
        self._buffered_bytes += len(body.data or b"")
        return body

    async def _forward(self, out: _Outgoing, api: str, ctx: _Ctx) -> web.StreamResponse:
        found = await self._connection(api, out.headers, ctx)
        if found is None:
            return await self._forwarder.relay(out.request, await self._send(out, ctx))

        key, credentials = found
        lease = await self._gate.admit(key, credentials, replayable=out.body.replayable)
        ctx.held_s += lease.held_s
        upstream = await self._send_leased(lease, out, ctx)
        if upstream.status != 401 or not out.body.replayable:
            return await self._forwarder.relay(out.request, upstream)
        if not self._gate.replay_allowed(key):
            return await self._forwarder.relay(out.request, upstream)

        prefix, complete = await _peek(upstream)
        if not (complete and is_token_failure(_decoded(prefix, upstream))):
            return await self._forwarder.relay(out.request, upstream, prefix=prefix)
        upstream.release()
        # Started on a token that was rotated (or failed to refresh) under it: one coalesced
        # validate, one replay, never a loop.
        self._metrics.retries.labels("replay").inc()
        lease = await self._gate.readmit_after_unauthorized(lease, credentials)
        ctx.held_s += lease.held_s
        ctx.replayed = True
        upstream = await self._send_leased(lease, out, ctx)
        if upstream.status == 401:
            prefix, complete = await _peek(upstream)
            if complete and is_token_failure(_decoded(prefix, upstream)):
                # A fresh token did not help: the connection itself is broken. Stop paying a
                # validate per request for it for a while.
                self._gate.replay_failed(key)
            return await self._forwarder.relay(out.request, upstream, prefix=prefix)
        return await self._forwarder.relay(out.request, upstream)

    async def _send_leased(self, lease: Lease, out: _Outgoing, ctx: _Ctx) -> aiohttp.ClientResponse:
        # The token is "in use" until Apideck answers; the body may stream on after that.
        try:
            if _client_gone(out.request):
                # Held long enough for the client to give up: sending now could create a
                # record the client will create again when it retries.
                raise ClientGone
            return await self._send(out, ctx)
        finally:
            lease.release()

    async def _send(self, out: _Outgoing, ctx: _Ctx) -> aiohttp.ClientResponse:
        started = time.monotonic()
        method = out.request.method
        upstream = await self._retrier.send(
            lambda: self._forwarder.send(
                method, out.target, out.headers, out.body, upload=out.upload
            ),
            method=method,
            replayable=out.body.replayable,
        )
        self._metrics.upstream_duration.labels(api_label(ctx.unified_api)).observe(
            time.monotonic() - started
        )
        ctx.upstream_request_id = upstream.headers.get("x-apideck-request-id")
        return upstream

    async def _connection(
        self, api: str, headers: CIMultiDict[str], ctx: _Ctx
    ) -> tuple[ConnectionKey, Credentials] | None:
        """The connection this request runs on, or None to forward it ungated."""
        if api not in DATA_APIS:
            return None  # vault, webhook, proxy, unknown paths: no connection token involved
        for name in (CONSUMER_HEADER, AUTH_HEADER, APP_HEADER, SERVICE_HEADER):
            if len(set(headers.getall(name, []))) > 1:
                # The gate would key on one value while Apideck might act on another.
                raise BadRequest(
                    f"conflicting {name} headers",
                    detail=f"send {name} once: it selects the connection",
                )
        consumer = headers.get(CONSUMER_HEADER)
        authorization = headers.get(AUTH_HEADER)
        app_id = headers.get(APP_HEADER)
        if not (consumer and authorization and app_id):
            # Apideck answers these itself (400/401); holding them would only add delay.
            missing = (
                "consumer_id" if not consumer else "credentials" if not authorization else "app_id"
            )
            self._ungated(ctx, f"no_{missing}")
            return None
        credentials = Credentials(authorization, app_id, consumer)
        fingerprint = credential_fingerprint(authorization)
        service = headers.get(SERVICE_HEADER)
        if not service:
            service = await self._resolver.resolve(api, credentials, fingerprint)
            if service is None:
                self._ungated(ctx, "service_unresolved")
                return None
        key = ConnectionKey(app_id, consumer, api, service, fingerprint)
        ctx.gated, ctx.service_id, ctx.connection = True, service, key.id
        return key, credentials

    def _ungated(self, ctx: _Ctx, reason: str) -> None:
        ctx.ungated_reason = reason
        self._metrics.ungated.labels(reason).inc()


class ClientGone(Exception):
    """The client closed its connection while its request waited."""


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _decoded(prefix: bytes, upstream: aiohttp.ClientResponse) -> bytes:
    """The body as text for classification only; what is relayed stays byte for byte."""
    encoding = upstream.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate"):
        try:
            wbits = 47 if encoding != "deflate" else 15  # 47: gzip or zlib header, auto-detected
            return zlib.decompressobj(wbits).decompress(prefix, 256 * 1024)
        except zlib.error:
            return b""
    return prefix if encoding in ("", "identity") else b""


async def _peek(upstream: aiohttp.ClientResponse, limit: int = 64 * 1024) -> tuple[bytes, bool]:
    """Read the start of a body to inspect it; True when that was all of it."""
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= limit and not upstream.content.at_eof():
            chunk = await upstream.content.readany()
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError):
        upstream.release()
        raise UpstreamBodyError("body cut short") from None
    return b"".join(chunks), upstream.content.at_eof()


def _own_authorities(request: web.Request, settings: Settings) -> set[str]:
    names = {f"{settings.host}:{settings.port}", f"localhost:{settings.port}"}
    if request.transport is not None:
        sock = request.transport.get_extra_info("sockname")
        if sock:
            names.add(f"{sock[0]}:{sock[1]}")
            names.add(f"localhost:{sock[1]}")
    return names
