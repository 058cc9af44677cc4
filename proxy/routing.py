"""Pure functions on request targets and headers: which upstream, which unified API, which
headers cross the proxy. No I/O, no state; knows nothing about tokens or the event loop.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.errors import BadRequest, ForbiddenTarget

# RFC 9110 §7.6.1: connection-specific fields a proxy must not forward, plus the legacy
# Keep-Alive / Proxy-Connection that clients still send.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# Unified APIs whose requests run on a customer connection's OAuth token: the gated ones.
DATA_APIS = frozenset(
    {
        "accounting",
        "ats",
        "crm",
        "customer-support",
        "ecommerce",
        "file-storage",
        "hris",
        "issue-tracking",
        "lead",
        "pos",
        "sms",
    }
)

# Endpoints the published specs serve from the upload host (method, path pattern).
_UPLOAD_ROUTES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (method, re.compile(pattern))
    for method, pattern in (
        ("POST", r"/accounting/attachments/[^/]+/[^/]+"),
        ("POST", r"/file-storage/files"),
        ("POST", r"/file-storage/upload-sessions"),
        ("GET", r"/file-storage/upload-sessions/[^/]+"),
        ("PUT", r"/file-storage/upload-sessions/[^/]+"),
        ("POST", r"/file-storage/upload-sessions/[^/]+/finish"),
    )
)

CONSUMER_HEADER = "x-apideck-consumer-id"
APP_HEADER = "x-apideck-app-id"
SERVICE_HEADER = "x-apideck-service-id"
AUTH_HEADER = "authorization"


@dataclass(frozen=True, slots=True)
class Target:
    """An origin-form request target: the path (still percent-encoded) and the raw query."""

    path: str
    query: str  # without the "?"; "" when absent

    @property
    def raw(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path


def parse_target(raw_target: str, own_authorities: Iterable[str]) -> Target:
    """Split the request target byte-for-byte; refuse absolute-form naming any other host.

    RFC 9112 §3.2.2 asks servers to accept absolute-form, so a target naming this proxy
    itself is served; one naming anywhere else would make this an open proxy.
    """
    if raw_target.startswith("/"):
        path, sep, query = raw_target.partition("?")
        return Target(path, query if sep else "")
    if raw_target == "*" or not raw_target:
        raise BadRequest(f"unsupported request target {raw_target[:64]!r}")
    try:
        parts = urlsplit(raw_target)
    except ValueError:
        raise BadRequest("malformed request target") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BadRequest("malformed request target")
    if parts.netloc.lower() not in {a.lower() for a in own_authorities}:
        raise ForbiddenTarget(
            "this proxy only forwards to the configured Apideck upstreams",
            detail="absolute-form request targets naming another host are refused",
        )
    rest = raw_target[len(parts.scheme) + 3 + len(parts.netloc) :] or "/"
    path, sep, query = rest.partition("?")
    return Target(path or "/", query if sep else "")


def first_segment(path: str) -> str:
    return path.lstrip("/").split("/", 1)[0]


def is_upload_route(method: str, path: str) -> bool:
    return any(method == m and p.fullmatch(path) for m, p in _UPLOAD_ROUTES)


def as_received(raw_headers: Iterable[tuple[bytes, bytes]]) -> CIMultiDictProxy[str]:
    """Header lines as the peer wrote them.

    aiohttp's parser respells well-known names (`user-agent` becomes `User-Agent`, `ETag`
    becomes `Etag`) in `.headers`; the raw lines keep the sender's spelling. Decoded the way
    aiohttp decodes them, so values are the same strings `.headers` would give.
    """
    return CIMultiDictProxy(
        CIMultiDict(
            (k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
            for k, v in raw_headers
        )
    )


def connection_header_names(headers: Mapping[str, str] | CIMultiDictProxy[str]) -> set[str]:
    """Names a `Connection` header lists: hop-by-hop for this hop only (RFC 9110 §7.6.1)."""
    names: set[str] = set()
    getall = getattr(headers, "getall", None)
    values = getall("Connection", []) if getall else [headers.get("Connection", "")]
    for value in values:
        names.update(t.strip().lower() for t in value.split(",") if t.strip())
    return names


def upstream_request_headers(
    incoming: CIMultiDictProxy[str],
    *,
    api_key: str | None,
    app_id: str | None,
) -> CIMultiDict[str]:
    """Client headers as they go upstream: hop-by-hop and Host dropped, defaults filled in.

    Repeated headers keep their order. The configured API key and app id are added only when
    the client sent none, so a caller's own credentials always win.
    """
    drop = HOP_BY_HOP | connection_header_names(incoming) | {"host"}
    out: CIMultiDict[str] = CIMultiDict(
        (k, v) for k, v in incoming.items() if k.lower() not in drop
    )
    if api_key and AUTH_HEADER not in out:
        out["Authorization"] = f"Bearer {api_key}"
    if app_id and APP_HEADER not in out:
        out[APP_HEADER] = app_id
    return out


def downstream_response_headers(incoming: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """Upstream response headers as they go to the client: hop-by-hop and framing dropped.

    Content-Length is re-set by the caller from the upstream's own value, so a response never
    carries both it and Transfer-Encoding.
    """
    drop = HOP_BY_HOP | connection_header_names(incoming) | {"content-length"}
    return CIMultiDict((k, v) for k, v in incoming.items() if k.lower() not in drop)


def credential_fingerprint(authorization: str | None) -> str:
    """A short, one-way tag of the API key: distinguishes callers without storing the key."""
    if not authorization:
        return "none"
    return hashlib.sha256(authorization.encode("utf-8", "surrogateescape")).hexdigest()[:16]
