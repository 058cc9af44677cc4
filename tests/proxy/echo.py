"""A real upstream for forwarding tests: echoes what it received and serves edge cases.

Also the small helpers the forwarding tests share: starting an echo, a raw HTTP/1.1 exchange
over a socket (for byte-exact targets and framing), and the hop-by-hop filter they compare with.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy.routing import HOP_BY_HOP
from proxy.server import make_runner

GZIP_PAYLOAD = b'{"data": "' + b"x" * 5000 + b'"}'
GZIP_BODY = gzip.compress(GZIP_PAYLOAD)
CHUNK = b"\xab" * (1024 * 1024)
SEEN = web.AppKey("seen", list)
ROOT = Path(__file__).resolve().parents[2]


def _peer_port(request: web.Request) -> int | None:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return int(peer[1]) if peer else None


def record_of(request: web.Request, body: bytes) -> dict[str, Any]:
    return {
        "method": request.method,
        "raw_path": request.raw_path,
        # Raw header lines as they arrived: case, order and repeats intact.
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
        "body_len": len(body),
        "body": body.decode("latin-1") if len(body) < 65536 else None,
        "host": request.host,
        "peer_port": _peer_port(request),
    }


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    record = record_of(request, body)
    request.app[SEEN].append(record)
    return web.Response(
        body=json.dumps(record).encode(),
        content_type="application/json",
        headers={"X-Echo": "1", "x-apideck-request-id": "req-echo"},
    )


async def download(request: web.Request) -> web.StreamResponse:
    """Streams N MiB (query `mib`) with a declared Content-Length, or chunked (`chunked=1`)."""
    mib = int(request.query.get("mib", "1"))
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    if request.query.get("chunked") == "1":
        resp.enable_chunked_encoding()
    else:
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
        {
            "received": total,
            "chunked": "chunked" in request.headers.get("Transfer-Encoding", ""),
            "content_length": request.headers.get("Content-Length"),
        }
    )


async def gzipped(request: web.Request) -> web.Response:
    request.app[SEEN].append(record_of(request, b""))
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
    """Answers with the status in the path; 304 only when If-None-Match matches the ETag."""
    code = int(request.match_info["code"])
    request.app[SEEN].append(record_of(request, await request.read()))
    if code == 304 and request.headers.get("If-None-Match") != '"v1"':
        code = 200
    if code in (204, 304):
        return web.Response(status=code, headers={"ETag": '"v1"', "X-Status": str(code)})
    body = json.dumps({"status_code": code, "message": f"status {code}"}).encode()
    return web.Response(
        status=code,
        body=body,
        content_type="application/json",
        headers={"ETag": '"v1"', "X-Status": str(code)},
    )


async def hop(request: web.Request) -> web.Response:
    return web.Response(
        text="ok",
        headers={
            "Connection": "keep-alive, X-Hop-Custom",
            "X-Hop-Custom": "must-not-pass",
            "Keep-Alive": "timeout=5",
            "Proxy-Authenticate": "Basic",
            "Trailer": "X-Checksum",
            "Upgrade": "h2c",
            "Proxy-Connection": "keep-alive",
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
    resp.headers.add("X-Multi", "three")
    return resp


async def cookie(request: web.Request) -> web.Response:
    request.app[SEEN].append(record_of(request, b""))
    resp = web.Response(text="cookie set")
    resp.headers.add("Set-Cookie", "session=caller-a; Path=/")
    return resp


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("s", "2")))
    return web.Response(text="late")


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
    app.router.add_get("/_echo/cookie", cookie)
    app.router.add_get("/_echo/slow", slow)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@dataclass
class Echo:
    """An echo upstream started on a free loopback port."""

    url: str
    port: int
    app: web.Application
    runner: web.AppRunner

    @property
    def seen(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = self.app[SEEN]
        return records

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_echo() -> Echo:
    app = create_echo_app()
    runner = make_runner(app, max_header_bytes=65536, shutdown_timeout_s=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return Echo(f"http://127.0.0.1:{port}", port, app, runner)


def end_to_end(headers: Iterable[Iterable[str]]) -> list[tuple[str, str]]:
    """Headers minus Host and hop-by-hop ones (including those `Connection` names)."""
    pairs = [(str(k), str(v)) for k, v in headers]
    named = {t.strip().lower() for k, v in pairs if k.lower() == "connection" for t in v.split(",")}
    drop = HOP_BY_HOP | named | {"host"}
    return [(k, v) for k, v in pairs if k.lower() not in drop]


@dataclass
class RawResponse:
    status: int
    status_line: bytes
    headers: list[tuple[str, str]]
    head: bytes  # status line and header block, as sent
    body: bytes  # as sent: chunked framing is not decoded

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


def parse_head(head: bytes) -> tuple[int, bytes, list[tuple[str, str]]]:
    lines = head.split(b"\r\n")
    status_line = lines[0]
    headers = []
    for line in lines[1:]:
        if line:
            k, _, v = line.decode("latin-1").partition(":")
            headers.append((k, v.strip()))
    return int(status_line.split(b" ")[1]), status_line, headers


async def raw_exchange(port: int, request: bytes, *, timeout_s: float = 5.0) -> RawResponse:
    """Send bytes as they are and read one response until the server closes or it is complete.

    Reads a Content-Length body exactly, a chunked body up to its last chunk, and otherwise
    until EOF; never decodes the framing, so tests can look at the raw wire format.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
        code, status_line, headers = parse_head(head[:-4])
        values = {k.lower(): v for k, v in headers}
        is_head = request.split(b" ", 1)[0] == b"HEAD"
        if is_head or code in (204, 304) or 100 <= code < 200:
            body = b""
        elif "content-length" in values:
            body = await asyncio.wait_for(
                reader.readexactly(int(values["content-length"])), timeout_s
            )
        elif "chunked" in values.get("transfer-encoding", ""):
            body = b""
            while not body.endswith(b"0\r\n\r\n"):
                more = await asyncio.wait_for(reader.read(65536), timeout_s)
                if not more:
                    break
                body += more
        else:
            body = await asyncio.wait_for(reader.read(), timeout_s)
        return RawResponse(code, status_line, headers, head, body)
    finally:
        writer.close()


async def connection_closed(port: int, request: bytes, timeout_s: float = 2.0) -> bool:
    """True when the server answers `request` and then closes the socket."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        await asyncio.wait_for(reader.read(), timeout_s)
        return True
    finally:
        writer.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn_proxy(
    env: dict[str, str], port: int, *, timeout_s: float = 15.0
) -> subprocess.Popen[bytes]:
    """Start `python -m proxy` in its own process and wait until /_proxy/healthz answers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"proxy exited with {proc.returncode}: {err[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"GET /_proxy/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if re.match(rb"HTTP/1\.1 200", s.recv(64)):
                    return proc
        except OSError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("proxy did not become healthy")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
