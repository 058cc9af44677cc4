"""Streams one request to an Apideck upstream and its response back to the client.

Knows nothing about tokens or connections: it is handed a target, headers and a body, and
translates the client library's errors into the proxy's own, once, where they enter.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy.errors import UpstreamTimeout, UpstreamUnavailable
from proxy.routing import Target, as_received, downstream_response_headers
from proxy.settings import Settings

CHUNK_BYTES = 64 * 1024


class UpstreamBodyError(Exception):
    """The upstream body broke off after the response had started: the client must see it."""


@dataclass(slots=True)
class Body:
    """A request body: bytes held in memory (replayable), a live stream (sent once), or none."""

    data: bytes | None = None
    stream: aiohttp.StreamReader | None = None

    @property
    def replayable(self) -> bool:
        return self.stream is None

    @classmethod
    async def from_request(cls, request: web.Request, buffer_limit: int) -> Body:
        """Buffer bodies up to `buffer_limit` bytes with a declared length; stream the rest.

        Only a buffered body can be sent twice (a replay after a refresh); a large upload is
        never held in memory.
        """
        if not request.body_exists:
            return cls()
        length = request.content_length
        if length is not None and length <= buffer_limit:
            return cls(data=await request.read())
        return cls(stream=request.content)

    def payload(self) -> bytes | aiohttp.StreamReader | None:
        return self.stream if self.stream is not None else self.data


class Upstreams:
    """One long-lived client session per upstream host, made inside the running loop."""

    def __init__(self, settings: Settings) -> None:
        self.unify_url = URL(str(settings.upstream_url).rstrip("/"))
        self.upload_url = URL(str(settings.upload_upstream_url).rstrip("/"))
        self._settings = settings
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def _session_for(self, base: URL) -> aiohttp.ClientSession:
        key = str(base.origin())
        session = self._sessions.get(key)
        if session is None:
            s = self._settings
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=s.pool_size, limit_per_host=s.pool_size, keepalive_timeout=30
                ),
                timeout=aiohttp.ClientTimeout(
                    total=s.total_timeout_s or None,
                    connect=s.connect_timeout_s,
                    sock_read=s.read_timeout_s,
                ),
                # Callers must never share cookies, and bodies pass as they are: decoding
                # gzip here would make the client decode it a second time.
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
            self._sessions[key] = session
        return session

    def base(self, upload: bool) -> URL:
        return self.upload_url if upload else self.unify_url

    def session(self, upload: bool = False) -> aiohttp.ClientSession:
        return self._session_for(self.base(upload))

    @property
    def open(self) -> bool:
        return all(not s.closed for s in self._sessions.values())

    async def start(self) -> None:
        self.session(False)
        self.session(True)

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self._sessions.values()))


def one_spelling(headers: CIMultiDict[str]) -> CIMultiDict[str]:
    """Spell every repeat of a field name like its first occurrence.

    aiohttp's client merges request headers by exact name: a second `x-multi` after `X-Multi`
    would replace the first value instead of adding to it. Names are case-insensitive
    (RFC 9110 §5.1), so respelling loses nothing.
    """
    first: dict[str, str] = {}
    for k, _ in headers.items():
        first.setdefault(k.lower(), k)
    if all(first[k.lower()] == k for k, _ in headers.items()):
        return headers
    return CIMultiDict((first[k.lower()], v) for k, v in headers.items())


def upstream_url(base: URL, target: Target) -> URL:
    # encoded=True keeps every escape, repeated key and empty value exactly as the client sent.
    return URL(str(base) + target.raw, encoded=True)


class Forwarder:
    def __init__(self, upstreams: Upstreams) -> None:
        self._upstreams = upstreams

    async def send(
        self,
        method: str,
        target: Target,
        headers: CIMultiDict[str],
        body: Body,
        *,
        upload: bool = False,
    ) -> aiohttp.ClientResponse:
        """Send the request and return once the upstream's status and headers arrived."""
        url = upstream_url(self._upstreams.base(upload), target)
        try:
            return await self._upstreams.session(upload).request(
                method,
                url,
                headers=one_spelling(headers),
                data=body.payload(),
                allow_redirects=False,
                # The client's Content-Length/Transfer-Encoding decide the framing upstream.
                compress=None,
                chunked=None,
            )
        except TimeoutError:
            raise UpstreamTimeout(
                "Apideck did not answer in time", detail=f"{method} {target.path}"
            ) from None
        except aiohttp.ClientError as exc:
            error = UpstreamUnavailable("could not reach Apideck", detail=type(exc).__name__)
            error.before_sending = isinstance(exc, aiohttp.ClientConnectorError)
            raise error from None

    async def relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse, *, prefix: bytes = b""
    ) -> web.StreamResponse:
        """Stream the upstream response to the client as it arrives.

        A body cut short upstream aborts the client's connection: a clean but short response
        would look like success to the client. `prefix` is body the caller already read.
        """
        headers = downstream_response_headers(as_received(upstream.raw_headers))
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=headers
        )
        length = upstream.headers.get("Content-Length")
        if (
            length is not None
            and "chunked" not in upstream.headers.get("Transfer-Encoding", "").lower()
        ):
            response.content_length = int(length)
        try:
            await response.prepare(request)
            if request.method == "HEAD" or upstream.status in (204, 304):
                return response
            if prefix:
                await response.write(prefix)
            async for chunk in _chunks(upstream):
                await response.write(chunk)
            await response.write_eof()
        except UpstreamBodyError:
            if request.transport is not None:
                request.transport.abort()
            raise
        finally:
            upstream.release()
        return response


async def _chunks(upstream: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for chunk in upstream.content.iter_chunked(CHUNK_BYTES):
            yield chunk
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
        raise UpstreamBodyError(type(exc).__name__) from None
