"""Forwarding fidelity: a real echo upstream behind a real proxy, compared on the wire."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from yarl import URL

from tests.proxy.echo import (
    GZIP_BODY,
    GZIP_PAYLOAD,
    Echo,
    RawResponse,
    end_to_end,
    free_port,
    parse_head,
    raw_exchange,
    start_echo,
)

ENVELOPE_KEYS = {"status_code", "error", "type_name", "message", "detail"}
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    running = await start_echo()
    yield running
    await running.stop()


@pytest.fixture
async def upload_echo() -> AsyncIterator[Echo]:
    running = await start_echo()
    yield running
    await running.stop()


@pytest.fixture
async def proxy(start_proxy: Any, echo: Echo) -> Any:
    return await start_proxy(echo.url)


def request_bytes(
    method: str, target: str, headers: list[tuple[str, str]] | None = None, body: bytes = b""
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: client.example"]
    lines += [f"{k}: {v}" for k, v in headers or []]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def without_date(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers minus Date, grouped by name: the order of different names carries no meaning
    (RFC 9110 §5.3) but the order of one name's values does, and the sort is stable."""
    return sorted(((k, v) for k, v in headers if k.lower() != "date"), key=lambda h: h[0].lower())


def assert_envelope(resp: RawResponse, status: int, type_name: str | None = None) -> dict[str, Any]:
    assert resp.status == status, resp.body
    body: dict[str, Any] = resp.json()
    assert set(body) >= ENVELOPE_KEYS
    assert body["status_code"] == status
    if type_name is not None:
        assert body["type_name"] == type_name
    return body


async def assert_still_serving(port: int, echo: Echo) -> None:
    before = len(echo.seen)
    resp = await raw_exchange(port, request_bytes("GET", "/after?ok=1"))
    assert resp.status == 200
    assert len(echo.seen) == before + 1
    assert echo.seen[-1]["raw_path"] == "/after?ok=1"


# --- targets, methods, headers, bodies ------------------------------------------------------

TARGETS = [
    "/crm/contacts?a=1&a=2&a=1",
    "/file-storage/files/a%2Fb/c%20d?q=%2F%20+%25&x=",
    "/x?flag&empty=&=novalue&k==v&&",
    "/x?name=%E2%9C%93&u=%u00e9&caf%C3%A9=%C3%A9",
    "/a//b/./c/../d;p=1?z=%7E~%2b",
    "/vault/connections?filter[unified_api]=crm&fields=id,name",
]


@pytest.mark.parametrize("target", TARGETS)
async def test_target_reaches_upstream_byte_for_byte(proxy: Any, echo: Echo, target: str) -> None:
    """Path and query (repeats, escapes, empty values, bare keys) reach upstream unchanged."""
    resp = await raw_exchange(proxy.port, request_bytes("GET", target))
    assert resp.status == 200
    assert [r["raw_path"] for r in echo.seen] == [target]


@pytest.mark.parametrize("method", METHODS)
async def test_every_method_passes_with_headers_and_body(
    proxy: Any, echo: Echo, method: str
) -> None:
    """Each method, its target, end-to-end headers (case, order, repeats) and body pass as sent."""
    target = "/crm/contacts/c%2F1?a=1&a=2&b=&c"
    body = b"" if method in ("GET", "HEAD", "OPTIONS") else b'{"name":"\xc3\xa9 & %2F"}'
    headers = [
        ("X-Multi", "one"),
        ("Accept", "application/json"),
        ("X-Multi", "two"),
        ("X-Custom-CASE", "Value With  Spaces"),
        ("Cookie", "a=1; b=2"),
        ("Content-Type", "application/json; charset=utf-8"),
        ("Authorization", "Bearer client-key"),
    ]
    raw = request_bytes(method, target, headers, body)
    resp = await raw_exchange(proxy.port, raw)
    assert resp.status == 200
    [record] = echo.seen
    assert record["method"] == method
    assert record["raw_path"] == target
    assert record["body"].encode("latin-1") == body
    sent = [*headers] + (
        [("Content-Length", str(len(body)))] if body or method in ("POST", "PUT", "PATCH") else []
    )
    assert without_date(end_to_end(record["headers"])) == without_date(sent)
    assert record["host"] == f"127.0.0.1:{echo.port}"


async def test_repeated_request_headers_keep_every_value_in_order(proxy: Any, echo: Echo) -> None:
    """Repeated request headers, even spelled in different case, all reach upstream in order."""
    headers = [("X-Multi", "one"), ("Accept", "a"), ("x-multi", "two"), ("X-MULTI", "three")]
    headers += [("Cookie", "a=1"), ("Cookie", "b=2")]
    await raw_exchange(proxy.port, request_bytes("GET", "/x", headers))
    got = [(k.lower(), v) for k, v in end_to_end(echo.seen[0]["headers"])]
    assert got == [(k.lower(), v) for k, v in headers]


async def test_response_header_names_keep_upstream_spelling(proxy: Any, echo: Echo) -> None:
    """Response field names reach the client spelled as upstream wrote them (ETag, not Etag)."""
    resp = await raw_exchange(proxy.port, request_bytes("GET", "/_echo/status/201"))
    assert "ETag" in [k for k, _ in resp.headers]


async def test_request_header_names_keep_client_spelling(proxy: Any, echo: Echo) -> None:
    """Request field names reach upstream spelled as the client wrote them (user-agent stays)."""
    headers = [("user-agent", "sdk/1"), ("content-type", "application/json"), ("ETAG", "x")]
    await raw_exchange(proxy.port, request_bytes("POST", "/x", headers, b"{}"))
    assert end_to_end(echo.seen[0]["headers"])[:3] == headers


async def test_hop_by_hop_request_headers_are_dropped(proxy: Any, echo: Echo) -> None:
    """RFC 9110 §7.6.1 fields, names listed in Connection, and Host never reach upstream."""
    headers = [
        ("Connection", "keep-alive, X-Drop-Me"),
        ("X-Drop-Me", "secret-for-this-hop"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("Upgrade", "h2c"),
        ("Proxy-Authorization", "Basic cHJveHk6cGFzcw=="),
        ("Proxy-Authenticate", "Basic"),
        ("X-Keep", "kept"),
    ]
    resp = await raw_exchange(proxy.port, request_bytes("POST", "/x", headers, b"hi"))
    assert resp.status == 200
    [record] = echo.seen
    names = [k.lower() for k, _ in record["headers"]]
    assert names == ["host", "x-keep", "content-length"]
    assert record["host"] == f"127.0.0.1:{echo.port}"
    assert record["body"] == "hi"


async def test_response_headers_pass_except_hop_by_hop(proxy: Any, echo: Echo) -> None:
    """Upstream's end-to-end response headers reach the client; hop-by-hop ones never do."""
    direct = await raw_exchange(echo.port, request_bytes("GET", "/_echo/hop"))
    via = await raw_exchange(proxy.port, request_bytes("GET", "/_echo/hop"))
    names = {k.lower() for k, _ in via.headers}
    for hop in ("x-hop-custom", "keep-alive", "proxy-authenticate", "trailer", "upgrade"):
        assert hop not in names
    assert "proxy-connection" not in names
    assert via.header("X-End-To-End") == "passes"
    assert via.all("Set-Cookie") == ["a=1"]
    assert end_to_end(without_date(via.headers)) == end_to_end(without_date(direct.headers))
    assert via.body == direct.body == b"ok"


async def test_repeated_response_headers_keep_every_value_in_order(proxy: Any, echo: Echo) -> None:
    """Two X-Multi and two Set-Cookie (interleaved) come back with every value, in order."""
    direct = await raw_exchange(echo.port, request_bytes("GET", "/_echo/repeated"))
    via = await raw_exchange(proxy.port, request_bytes("GET", "/_echo/repeated"))
    assert via.all("X-Multi") == ["one", "two", "three"]
    assert via.all("Set-Cookie") == ["a=1", "b=2"]
    assert without_date(via.headers) == without_date(direct.headers)


@pytest.mark.parametrize("code", [200, 201, 400, 401, 403, 404, 409, 422, 429, 500, 502, 503])
async def test_status_headers_and_body_match_upstream(proxy: Any, echo: Echo, code: int) -> None:
    """Success and 4xx/5xx responses carry upstream's status, headers and body unchanged."""
    raw = request_bytes("POST", f"/_echo/status/{code}", [("Content-Type", "text/plain")], b"x")
    direct = await raw_exchange(echo.port, raw)
    via = await raw_exchange(proxy.port, raw)
    assert via.status_line == direct.status_line
    assert via.status == code
    assert without_date(via.headers) == without_date(direct.headers)
    assert via.body == direct.body


async def test_no_content_passes_without_body(proxy: Any, echo: Echo) -> None:
    """A 204 arrives as 204 with upstream's headers and neither a body nor framing headers."""
    raw = request_bytes("DELETE", "/_echo/status/204")
    direct = await raw_exchange(echo.port, raw)
    via = await raw_exchange(proxy.port, raw)
    assert via.status == 204
    assert via.header("ETag") == '"v1"'
    assert without_date(via.headers) == without_date(direct.headers)
    assert via.header("Transfer-Encoding") is None


async def test_conditional_get_304_passes_with_etag(proxy: Any, echo: Echo) -> None:
    """If-None-Match reaches upstream and its 304 with ETag comes back without a body."""
    fresh = await raw_exchange(proxy.port, request_bytes("GET", "/_echo/status/304"))
    assert fresh.status == 200
    etag = fresh.header("ETag")
    assert etag == '"v1"'
    raw = request_bytes("GET", "/_echo/status/304", [("If-None-Match", etag)])
    direct = await raw_exchange(echo.port, raw)
    via = await raw_exchange(proxy.port, raw)
    assert via.status == 304
    assert via.header("ETag") == etag
    assert without_date(via.headers) == without_date(direct.headers)
    assert via.header("Transfer-Encoding") is None
    assert ("If-None-Match", etag) in end_to_end(echo.seen[-1]["headers"])


async def test_head_keeps_content_length_and_sends_no_body(proxy: Any, echo: Echo) -> None:
    """HEAD gets the would-be body's Content-Length and no body bytes on the connection."""
    get = await raw_exchange(proxy.port, request_bytes("GET", "/_echo/status/201"))
    assert get.body
    wire = await _pipelined(
        proxy.port,
        request_bytes("HEAD", "/_echo/status/201")
        + request_bytes("GET", "/_echo/status/201", [("Connection", "close")]),
    )
    head_block, _, rest = wire.partition(b"\r\n\r\n")
    code, _, headers = parse_head(head_block)
    assert code == 201
    assert dict((k.lower(), v) for k, v in headers)["content-length"] == str(len(get.body))
    assert "transfer-encoding" not in {k.lower() for k, _ in headers}
    # The very next bytes are the second response: the HEAD sent no body.
    assert rest.startswith(b"HTTP/1.1 201 ")
    assert rest.endswith(get.body)
    assert [r["method"] for r in echo.seen] == ["GET", "HEAD", "GET"]


async def _pipelined(port: int, data: bytes) -> bytes:
    """Send several requests on one connection and read everything until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


# --- framing and encodings ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "framing"),
    [
        ("GET", "/_echo/status/201", "length"),
        ("GET", "/_echo/download?mib=1&chunked=1", "chunked"),
        ("HEAD", "/_echo/status/201", "length"),
        ("HEAD", "/_echo/download?mib=1&chunked=1", "none"),
    ],
)
async def test_never_both_content_length_and_transfer_encoding(
    proxy: Any, method: str, target: str, framing: str
) -> None:
    """A response carries Content-Length or Transfer-Encoding (or, for HEAD, at most one)."""
    resp = await raw_exchange(proxy.port, request_bytes(method, target))
    head = resp.head.lower()
    has_length = b"\r\ncontent-length:" in head
    has_chunked = b"\r\ntransfer-encoding:" in head
    assert not (has_length and has_chunked), resp.head
    if framing == "length":
        assert has_length
    if framing == "chunked":
        assert has_chunked
        assert resp.body.endswith(b"0\r\n\r\n")
    if method == "HEAD":
        assert resp.body == b""


async def test_gzip_response_passes_encoded_and_accept_encoding_unchanged(
    proxy: Any, echo: Echo
) -> None:
    """A gzip body arrives byte-identical with Content-Encoding intact; Accept-Encoding passes."""
    accept = "gzip;q=1.0, br;q=0.5, identity;q=0.1"
    async with (
        aiohttp.ClientSession(auto_decompress=False) as client,
        client.get(f"{proxy.url}/_echo/gzip", headers={"Accept-Encoding": accept}) as resp,
    ):
        assert resp.headers["Content-Encoding"] == "gzip"
        assert resp.headers["Content-Length"] == str(len(GZIP_BODY))
        assert await resp.read() == GZIP_BODY
    async with aiohttp.ClientSession() as client, client.get(f"{proxy.url}/_echo/gzip") as resp:
        # Decoded exactly once, by the client: the proxy never touched it.
        assert await resp.read() == GZIP_PAYLOAD
    assert dict((k.lower(), v) for k, v in echo.seen[0]["headers"])["accept-encoding"] == accept


async def test_upstream_body_cut_short_aborts_the_client(proxy: Any) -> None:
    """An upstream body that breaks off mid-way fails the client's read, never a short 200."""
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"{proxy.url}/_echo/truncated") as resp,
    ):
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    raw = await _pipelined(proxy.port, request_bytes("GET", "/_echo/truncated"))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-length: 100000" in head.lower()
    assert len(body) < 100_000


# --- sessions and cookies -------------------------------------------------------------------


async def test_sequential_requests_reuse_one_upstream_connection(
    start_proxy: Any, echo: Echo, upload_echo: Echo
) -> None:
    """Sequential requests share one upstream TCP connection per upstream (one long session)."""
    proxy = await start_proxy(echo.url, upload_echo.url)
    for target in ("/crm/contacts", "/vault/connections", "/crm/leads?x=1"):
        async with (
            aiohttp.ClientSession() as client,  # a new client connection each time
            client.get(f"{proxy.url}{target}") as resp,
        ):
            assert resp.status == 200
    for _ in range(2):
        async with (
            aiohttp.ClientSession() as client,
            client.post(f"{proxy.url}/file-storage/files", data=b"f") as resp,
        ):
            assert resp.status == 200
    assert len({r["peer_port"] for r in echo.seen}) == 1
    assert len(echo.seen) == 3
    assert len({r["peer_port"] for r in upload_echo.seen}) == 1
    assert len(upload_echo.seen) == 2


async def test_upstream_cookies_never_reach_another_caller(proxy: Any, echo: Echo) -> None:
    """A Set-Cookie from upstream goes to its caller only; the proxy keeps no cookie jar."""
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as a,
        a.get(f"{proxy.url}/_echo/cookie") as resp,
    ):
        assert resp.headers.getall("Set-Cookie") == ["session=caller-a; Path=/"]
    async with aiohttp.ClientSession() as b:
        async with b.get(f"{proxy.url}/_echo/cookie") as resp:
            assert resp.status == 200
        async with b.get(f"{proxy.url}/crm/contacts") as resp:
            assert "Set-Cookie" not in resp.headers
    for record in echo.seen:
        assert "cookie" not in {k.lower() for k, _ in record["headers"]}


# --- the proxy's own surface ----------------------------------------------------------------


async def test_unknown_reserved_path_is_404_envelope_and_not_forwarded(
    proxy: Any, echo: Echo
) -> None:
    """/_proxy/… belongs to the proxy: unknown paths there get a 404 envelope, never upstream."""
    for method in ("GET", "POST", "DELETE"):
        resp = await raw_exchange(proxy.port, request_bytes(method, "/_proxy/x?y=1"))
        assert_envelope(resp, 404)
    healthz = await raw_exchange(proxy.port, request_bytes("GET", "/_proxy/healthz"))
    assert healthz.status == 200
    assert echo.seen == []


async def test_absolute_form_to_another_host_is_refused(proxy: Any, echo: Echo) -> None:
    """An absolute-form target naming another host gets a 403 envelope and nothing goes out."""
    raw = b"GET http://evil.example/x HTTP/1.1\r\nHost: evil.example\r\n\r\n"
    assert_envelope(await raw_exchange(proxy.port, raw), 403, "ForbiddenTargetError")
    raw = f"GET http://127.0.0.1:{free_port()}/x HTTP/1.1\r\nHost: a\r\n\r\n".encode()
    assert_envelope(await raw_exchange(proxy.port, raw), 403)
    assert echo.seen == []


async def test_connect_is_refused(proxy: Any, echo: Echo) -> None:
    """CONNECT gets a 405 envelope: this is not a tunnel."""
    raw = b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n"
    assert_envelope(await raw_exchange(proxy.port, raw), 405, "MethodNotAllowedError")
    assert echo.seen == []
    await assert_still_serving(proxy.port, echo)


@pytest.mark.parametrize("authority", ["127.0.0.1:{port}", "localhost:{port}"])
async def test_absolute_form_naming_the_proxy_is_served(
    proxy: Any, echo: Echo, authority: str
) -> None:
    """An absolute-form target naming the proxy itself is forwarded as its origin-form."""
    own = authority.format(port=proxy.port)
    raw = f"GET http://{own}/crm/x%2Fy?a=1&a=2 HTTP/1.1\r\nHost: {own}\r\n\r\n".encode()
    resp = await raw_exchange(proxy.port, raw)
    assert resp.status == 200
    assert [r["raw_path"] for r in echo.seen] == ["/crm/x%2Fy?a=1&a=2"]


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\nthis is not a header\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n", 400),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /a b c HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 400),
        # Both framings at once is the request-smuggling shape (RFC 9112 §6.3): refused.
        (
            b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
    ],
)
async def test_malformed_requests_get_envelope_and_proxy_keeps_serving(
    proxy: Any, echo: Echo, raw: bytes, status: int
) -> None:
    """Malformed header lines, request lines and framing get a 400 envelope; then it serves."""
    body = assert_envelope(await raw_exchange(proxy.port, raw), status)
    assert "Traceback" not in json.dumps(body)
    assert echo.seen == []
    await assert_still_serving(proxy.port, echo)


@pytest.mark.parametrize("where", ["header", "target"])
async def test_oversize_headers_get_431_envelope(start_proxy: Any, echo: Echo, where: str) -> None:
    """A header (or request line) above APIDECK_PROXY_MAX_HEADER_BYTES gets a 431 envelope."""
    proxy = await start_proxy(echo.url, max_header_bytes=2048)
    if where == "header":
        raw = request_bytes("GET", "/x", [("X-Big", "v" * 4096)])
    else:
        raw = request_bytes("GET", "/x?" + "q" * 4096)
    assert_envelope(await raw_exchange(proxy.port, raw), 431, "RequestHeadersTooLargeError")
    fits = await raw_exchange(proxy.port, request_bytes("GET", "/x", [("X-Big", "v" * 1500)]))
    assert fits.status == 200
    assert [r["raw_path"] for r in echo.seen] == ["/x"]
    await assert_still_serving(proxy.port, echo)


async def test_unreachable_upstream_is_502_envelope(start_proxy: Any) -> None:
    """A connection refused upstream answers 502 in the envelope."""
    proxy = await start_proxy(f"http://127.0.0.1:{free_port()}", connect_timeout_s=2)
    resp = await raw_exchange(proxy.port, request_bytes("GET", "/crm/contacts"))
    assert_envelope(resp, 502, "UpstreamConnectionError")


async def test_slow_upstream_is_504_envelope(start_proxy: Any, echo: Echo) -> None:
    """An upstream that does not answer within the read timeout gives a 504 envelope."""
    proxy = await start_proxy(echo.url, read_timeout_s=0.3)
    resp = await raw_exchange(proxy.port, request_bytes("GET", "/_echo/slow?s=3"))
    assert_envelope(resp, 504, "UpstreamTimeoutError")
    await assert_still_serving(proxy.port, echo)


# --- configured credentials ------------------------------------------------------------------


async def test_configured_key_and_app_id_fill_in_only_when_missing(
    start_proxy: Any, echo: Echo
) -> None:
    """APIDECK_PROXY_API_KEY/APP_ID are added when absent; a client's own values win."""
    proxy = await start_proxy(echo.url, api_key="sk-configured", app_id="app-configured")
    await raw_exchange(proxy.port, request_bytes("GET", "/vault/connections"))
    own = [("Authorization", "Bearer client-own"), ("x-apideck-app-id", "client-app")]
    await raw_exchange(proxy.port, request_bytes("GET", "/vault/connections", own))
    filled, kept = (dict((k.lower(), v) for k, v in r["headers"]) for r in echo.seen)
    assert filled["authorization"] == "Bearer sk-configured"
    assert filled["x-apideck-app-id"] == "app-configured"
    assert end_to_end(echo.seen[1]["headers"]) == own
    assert kept["authorization"] == "Bearer client-own"


# --- upload host ----------------------------------------------------------------------------

UPLOAD_CALLS = [
    ("POST", "/file-storage/files?x=1"),
    ("POST", "/file-storage/upload-sessions"),
    ("GET", "/file-storage/upload-sessions/s%2F1"),
    ("PUT", "/file-storage/upload-sessions/s1?part_number=2"),
    ("POST", "/file-storage/upload-sessions/s1/finish"),
    ("POST", "/accounting/attachments/invoice/inv-1"),
]
UNIFY_CALLS = [
    ("GET", "/file-storage/files"),
    ("DELETE", "/file-storage/upload-sessions/s1"),
    ("GET", "/file-storage/files/f1/download"),
    ("GET", "/accounting/attachments/invoice/inv-1"),
    ("POST", "/crm/contacts"),
]


async def test_upload_endpoints_go_to_the_upload_upstream(
    start_proxy: Any, echo: Echo, upload_echo: Echo
) -> None:
    """Endpoints the spec serves from the upload host reach the upload upstream, others unify."""
    proxy = await start_proxy(echo.url, upload_echo.url)
    for method, target in UPLOAD_CALLS + UNIFY_CALLS:
        resp = await raw_exchange(proxy.port, request_bytes(method, target, body=b"part"))
        assert resp.status == 200
    assert [(r["method"], r["raw_path"]) for r in upload_echo.seen] == UPLOAD_CALLS
    assert [(r["method"], r["raw_path"]) for r in echo.seen] == UNIFY_CALLS
    assert {r["host"] for r in upload_echo.seen} == {f"127.0.0.1:{upload_echo.port}"}


async def test_encoded_url_client_reaches_upstream_unchanged(proxy: Any, echo: Echo) -> None:
    """An ordinary HTTP client's encoded URL (yarl encoded=True) is what upstream receives."""
    target = "/crm/contacts?cursor=a%2Bb%3D&filter%5Bname%5D=J%C3%B6rg&sort"
    async with (
        aiohttp.ClientSession() as client,
        client.get(URL(proxy.url + target, encoded=True)) as resp,
    ):
        assert resp.status == 200
    assert echo.seen[0]["raw_path"] == target
