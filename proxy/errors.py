"""The proxy's own errors and the one place that turns them into Apideck's error envelope.

Tree (each carries its HTTP status and Apideck-style `type_name`)::

    ProxyError
    ├── BadRequest               400  malformed input the proxy itself rejects
    │   └── HeadersTooLarge      431
    ├── ForbiddenTarget          403  absolute-form target naming another host (not an open proxy)
    ├── MethodNotAllowed         405  CONNECT
    ├── ValidationFailed         4xx  Vault refused the validate (fatal, shared with all waiters)
    ├── UpstreamUnavailable      502  could not reach Apideck
    ├── Unavailable              503  with Retry-After
    │   ├── HoldTimeout               the validate did not finish within the hold timeout
    │   ├── Overloaded                a bound on waiters or in-flight requests was hit
    │   └── ShuttingDown              held past the shutdown grace
    └── UpstreamTimeout          504  Apideck did not answer in time

Nothing here knows about the gate or forwarding; messages never contain secrets.
"""

from __future__ import annotations

import json
import math
from http import HTTPStatus
from typing import Any

from aiohttp import web

JSON_CONTENT_TYPE = "application/json"


class ProxyError(Exception):
    status = 500
    type_name = "ProxyInternalError"

    def __init__(
        self,
        message: str,
        *,
        detail: str | dict[str, Any] | None = None,
        retry_after_s: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.retry_after_s = retry_after_s
        if status is not None:
            self.status = status


class BadRequest(ProxyError):
    status = 400
    type_name = "RequestValidationError"


class HeadersTooLarge(BadRequest):
    status = 431
    type_name = "RequestHeadersTooLargeError"


class ForbiddenTarget(ProxyError):
    status = 403
    type_name = "ForbiddenTargetError"


class MethodNotAllowed(ProxyError):
    status = 405
    type_name = "MethodNotAllowedError"


class ValidationFailed(ProxyError):
    """Vault answered the validate with a non-retryable error; status mirrors Vault's."""

    status = 401
    type_name = "ConnectionValidationError"
    # Apideck's own error body, passed on unchanged when the caller's API key was refused.
    upstream_body: Any = None


class UpstreamUnavailable(ProxyError):
    status = 502
    type_name = "UpstreamConnectionError"
    # True when the connection failed before any byte of the request left: always safe to retry.
    before_sending = False


class Unavailable(ProxyError):
    status = 503
    type_name = "ServiceUnavailableError"


class HoldTimeout(Unavailable):
    type_name = "ConnectionValidationTimeoutError"


class Overloaded(Unavailable):
    type_name = "ProxyOverloadedError"


class ShuttingDown(Unavailable):
    type_name = "ProxyShuttingDownError"


class UpstreamTimeout(ProxyError):
    status = 504
    type_name = "UpstreamTimeoutError"


def envelope(
    status: int, type_name: str, message: str, detail: str | dict[str, Any] | None = None
) -> dict[str, Any]:
    """Apideck's error body: the shape its SDKs already parse."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return {
        "status_code": status,
        "error": phrase,
        "type_name": type_name,
        "message": message,
        "detail": detail if detail is not None else message,
    }


def error_response(
    status: int,
    type_name: str,
    message: str,
    detail: str | dict[str, Any] | None = None,
    *,
    retry_after_s: float | None = None,
    close: bool = False,
) -> web.Response:
    headers = {}
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    resp = web.Response(
        status=status,
        body=json.dumps(envelope(status, type_name, message, detail)).encode(),
        content_type=JSON_CONTENT_TYPE,
        headers=headers,
    )
    if close:
        resp.force_close()
    return resp


def to_response(exc: ProxyError) -> web.Response:
    upstream = getattr(exc, "upstream_body", None)
    if isinstance(upstream, dict):
        return web.Response(
            status=exc.status, body=json.dumps(upstream).encode(), content_type=JSON_CONTENT_TYPE
        )
    retry = exc.retry_after_s
    if retry is None and isinstance(exc, Unavailable):
        retry = 1.0
    return error_response(exc.status, exc.type_name, exc.message, exc.detail, retry_after_s=retry)
