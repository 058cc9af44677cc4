"""A real upstream for forwarding tests: echoes what it received and serves edge cases."""

from __future__ import annotations

import asyncio
import gzip
import json

from aiohttp import web

GZIP_PAYLOAD = b'{"data": "' + b"x" * 5000 + b'"}'
GZIP_BODY = gzip.compress(GZIP_PAYLOAD)
CHUNK = b"\xab" * (1024 * 1024)
SEEN = web.AppKey("seen", list)


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    record = {
        "method": request.method,
        "raw_path": request.raw_path,
        "headers": [[k, v] for k, v in request.headers.items()],
        "body_len": len(body),
        "body": body.decode("latin-1") if len(body) < 65536 else None,
        "host": request.host,
    }
    request.app[SEEN].append(record)
    return web.Response(
        body=json.dumps(record).encode(),
        content_type="application/json",
        headers={"X-Echo": "1", "x-apideck-request-id": "req-echo"},
    )


async def download(request: web.Request) -> web.StreamResponse:
    """Streams N MiB (query `mib`) with a declared Content-Length."""
    mib = int(request.query.get("mib", "1"))
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.content_length = mib * len(CHUNK)
    await resp.prepare(request)
    for _ in range(mib):
        await resp.write(CHUNK)
    await resp.write_eof()
    return resp


async def upload_sink(request: web.Request) -> web.Response:
    total = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        total += len(chunk)
    return web.json_response(
        {"received": total, "chunked": "chunked" in request.headers.get("Transfer-Encoding", "")}
    )


async def gzipped(request: web.Request) -> web.Response:
    return web.Response(
        body=GZIP_BODY,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )


async def truncated(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    resp.content_length = 100_000
    await resp.prepare(request)
    await resp.write(b"y" * 1000)
    await asyncio.sleep(0.05)
    assert request.transport is not None
    request.transport.close()
    return resp


async def status(request: web.Request) -> web.StreamResponse:
    code = int(request.match_info["code"])
    if code in (204, 304):
        return web.Response(status=code, headers={"ETag": '"v1"', "X-Status": str(code)})
    return web.Response(status=code, text=f"status {code}")


async def hop(request: web.Request) -> web.Response:
    return web.Response(
        text="ok",
        headers={
            "Connection": "keep-alive, X-Hop-Custom",
            "X-Hop-Custom": "must-not-pass",
            "Keep-Alive": "timeout=5",
            "X-End-To-End": "passes",
            "Set-Cookie": "a=1",
        },
    )


async def repeated(request: web.Request) -> web.Response:
    resp = web.Response(text="ok")
    resp.headers.add("X-Multi", "one")
    resp.headers.add("X-Multi", "two")
    resp.headers.add("Set-Cookie", "a=1")
    resp.headers.add("Set-Cookie", "b=2")
    return resp


def create_echo_app() -> web.Application:
    app = web.Application(client_max_size=0)
    app[SEEN] = []
    app.router.add_get("/_echo/download", download)
    app.router.add_post("/_echo/upload", upload_sink)
    app.router.add_put("/_echo/upload", upload_sink)
    app.router.add_get("/_echo/gzip", gzipped)
    app.router.add_get("/_echo/truncated", truncated)
    app.router.add_route("*", "/_echo/status/{code}", status)
    app.router.add_get("/_echo/hop", hop)
    app.router.add_get("/_echo/repeated", repeated)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app
