"""The retry rules on their own: hints, the budget, and which failures may be retried."""

from __future__ import annotations

import email.utils
import time

import aiohttp
import pytest
from aiohttp import web

from proxy.errors import UpstreamUnavailable
from proxy.retry import Retrier, RetryBudget, RetryPolicy, parse_wait_hint


def test_wait_hint_formats() -> None:
    """Retry-After seconds, HTTP-dates and Unix reset timestamps (s or ms) all give a wait."""
    now = 1_700_000_000.0
    assert parse_wait_hint("7", now) == 7
    assert parse_wait_hint(email.utils.formatdate(now + 30, usegmt=True), now) == pytest.approx(30)
    assert parse_wait_hint(str(int(now + 12)), now) == pytest.approx(12)
    assert parse_wait_hint(str(int((now + 3) * 1000)), now) == pytest.approx(3)
    assert parse_wait_hint(str(int(now - 50)), now) == 0
    for junk in ("", "soon", "-1", "nan"):
        assert parse_wait_hint(junk, now) is None


def test_budget_bounds_retries_to_a_fraction_of_requests() -> None:
    """Under a wave of failures, retries stay near ratio x requests plus a small floor."""
    clock = [0.0]
    budget = RetryBudget(ratio=0.1, min_per_s=1.0, clock=lambda: clock[0])
    spent = 0
    for _ in range(1000):
        budget.on_request()
        spent += budget.try_spend()
        clock[0] += 0.001  # 1000 requests in one second
    assert spent <= 0.1 * 1000 + 10 + 1  # ratio share + the initial reserve + 1 s of floor


class _Upstream:
    """A real upstream answering from a script of statuses and counting what arrives."""

    def __init__(self, statuses: list[int], headers: dict[str, str] | None = None) -> None:
        self.statuses = statuses
        self.headers = headers or {}
        self.seen = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.seen += 1
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, headers=self.headers if status != 200 else {})


def _retrier(**policy: float) -> Retrier:
    p = RetryPolicy(
        max_attempts=int(policy.pop("max_attempts", 3)),
        max_elapsed_s=policy.pop("max_elapsed_s", 5.0),
        backoff_base_s=0.01,
        backoff_cap_s=0.02,
    )
    return Retrier(p, RetryBudget(1.0, 100.0))


async def _serve(aiohttp_server: object, upstream: _Upstream) -> tuple[str, aiohttp.ClientSession]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream.handle)
    server = await aiohttp_server(app)  # type: ignore[operator]  # pytest-aiohttp fixture
    return str(server.make_url("/x")), aiohttp.ClientSession()


async def test_idempotent_503_is_retried_honouring_retry_after(aiohttp_server: object) -> None:
    """A GET answered 503 with Retry-After is retried after at least that long."""
    upstream = _Upstream([503], {"Retry-After": "1"})
    url, session = await _serve(aiohttp_server, upstream)
    started = time.monotonic()
    async with session:
        resp = await _retrier().send(lambda: session.get(url), method="GET", replayable=True)
        resp.release()
    assert resp.status == 200
    assert upstream.seen == 2
    assert time.monotonic() - started >= 1.0


async def test_non_idempotent_is_not_retried(aiohttp_server: object) -> None:
    """A POST that reached upstream is answered as it is: it may have had an effect."""
    upstream = _Upstream([503])
    url, session = await _serve(aiohttp_server, upstream)
    async with session:
        resp = await _retrier().send(lambda: session.post(url), method="POST", replayable=True)
        resp.release()
    assert resp.status == 503
    assert upstream.seen == 1


async def test_streamed_body_is_not_retried(aiohttp_server: object) -> None:
    """A GET whose body was streamed (not buffered) cannot be sent again."""
    upstream = _Upstream([502])
    url, session = await _serve(aiohttp_server, upstream)
    async with session:
        resp = await _retrier().send(lambda: session.get(url), method="GET", replayable=False)
        resp.release()
    assert resp.status == 502 and upstream.seen == 1


async def test_attempts_are_capped(aiohttp_server: object) -> None:
    """A persistent 503 is tried max_attempts times, then answered."""
    upstream = _Upstream([503] * 10)
    url, session = await _serve(aiohttp_server, upstream)
    async with session:
        resp = await _retrier(max_attempts=3).send(
            lambda: session.get(url), method="GET", replayable=True
        )
        resp.release()
    assert resp.status == 503 and upstream.seen == 3


async def test_retry_after_beyond_elapsed_cap_is_answered_at_once(aiohttp_server: object) -> None:
    """When the server asks for a longer wait than the retry time allows, answer right away."""
    upstream = _Upstream([429], {"Retry-After": "60"})
    url, session = await _serve(aiohttp_server, upstream)
    started = time.monotonic()
    async with session:
        resp = await _retrier(max_elapsed_s=2).send(
            lambda: session.get(url), method="GET", replayable=True
        )
        resp.release()
    assert resp.status == 429 and upstream.seen == 1
    assert time.monotonic() - started < 1.0


async def test_connect_failure_is_retried_even_for_post() -> None:
    """A connection that was never made carried nothing: any method may retry it."""
    calls = 0

    async def send() -> aiohttp.ClientResponse:
        nonlocal calls
        calls += 1
        err = UpstreamUnavailable("could not reach Apideck")
        err.before_sending = True
        raise err

    with pytest.raises(UpstreamUnavailable):
        await _retrier(max_attempts=3).send(send, method="POST", replayable=False)
    assert calls == 3


async def test_connection_lost_after_sending_is_retried_only_if_idempotent() -> None:
    """A connection dropped mid-request is retried for GET, not for POST."""
    calls = {"GET": 0, "POST": 0}

    def sender(method: str) -> object:
        async def send() -> aiohttp.ClientResponse:
            calls[method] += 1
            raise UpstreamUnavailable("could not reach Apideck")

        return send

    for method in ("GET", "POST"):
        with pytest.raises(UpstreamUnavailable):
            await _retrier().send(sender(method), method=method, replayable=True)  # type: ignore[arg-type]
    assert calls == {"GET": 3, "POST": 1}
