"""Retrying upstream sends: which failures may be retried, how long to wait, and a global budget
so retries never multiply the load on an upstream that is already refusing it.

Knows nothing about tokens or aiohttp servers: it is handed a `send` callable and a response.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from proxy.errors import UpstreamUnavailable


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3
    max_elapsed_s: float = 10.0
    methods: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS"})
    statuses: frozenset[int] = frozenset({429, 502, 503, 504})
    backoff_base_s: float = 0.2
    backoff_cap_s: float = 5.0


class RetryBudget:
    """A token bucket: each request earns `ratio` of a retry, each retry spends one, and a small
    floor (`min_per_s`) keeps rare retries possible when traffic is light.

    Under a wave of 429s or 503s retries stay a bounded fraction of requests instead of
    multiplying them (the Finagle / gRPC retry-budget idea).
    """

    def __init__(self, ratio: float, min_per_s: float, clock: Callable[[], float] = time.monotonic):
        self._ratio = ratio
        self._min_per_s = min_per_s
        self._cap = max(1.0, min_per_s * 10)
        self._clock = clock
        self._tokens = self._cap
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._cap, self._tokens + (now - self._at) * self._min_per_s)
        self._at = now

    def on_request(self) -> None:
        self._refill()
        self._tokens = min(self._cap, self._tokens + self._ratio)

    def try_spend(self) -> bool:
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def parse_wait_hint(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from Retry-After or x-downstream-ratelimit-reset.

    Accepts delay-seconds, an HTTP-date (RFC 9110 §10.2.3), or a Unix timestamp in seconds or
    milliseconds (rate-limit reset headers use either, depending on the provider).
    """
    if not value:
        return None
    value = value.strip()
    wall = time.time() if now is None else now
    try:
        number = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        return max(0.0, when.timestamp() - wall)
    if number != number or number < 0:  # NaN or negative
        return None
    if number > 1e12:  # Unix milliseconds
        return max(0.0, number / 1000 - wall)
    if number > 1e9:  # Unix seconds
        return max(0.0, number - wall)
    return number


def wait_hint(response: aiohttp.ClientResponse) -> float | None:
    hints = [
        parse_wait_hint(response.headers.get(name))
        for name in ("Retry-After", "x-downstream-ratelimit-reset")
    ]
    known = [h for h in hints if h is not None]
    return max(known) if known else None


class Retrier:
    def __init__(
        self,
        policy: RetryPolicy,
        budget: RetryBudget,
        on_retry: Callable[[str], None] = lambda kind: None,
    ) -> None:
        self._policy = policy
        self._budget = budget
        self._on_retry = on_retry

    async def send(
        self,
        send: Callable[[], Awaitable[aiohttp.ClientResponse]],
        *,
        method: str,
        replayable: bool,
    ) -> aiohttp.ClientResponse:
        """Send, retrying what is safe to retry; the last answer or error is the caller's.

        Only requests whose body can be sent again are retried after reaching upstream, and only
        idempotent ones; a connect failure never reached upstream, so any request may retry it.
        A response whose body started reaching the client is never retried: this runs before.
        """
        p = self._policy
        idempotent = method.upper() in p.methods
        self._budget.on_request()
        started = time.monotonic()
        attempt = 1
        while True:
            try:
                response = await send()
            except UpstreamUnavailable as exc:
                safe = exc.before_sending or (idempotent and replayable)
                if not safe or not self._may_retry(attempt, started, 0.0):
                    raise
                kind = "connect" if exc.before_sending else "connection"
                await self._pause(attempt, started, None, kind)
                attempt += 1
                continue
            if response.status not in p.statuses or not (idempotent and replayable):
                return response
            hint = wait_hint(response)
            if not self._may_retry(attempt, started, hint or 0.0):
                return response
            response.release()
            await self._pause(attempt, started, hint, f"status_{response.status}")
            attempt += 1

    def _may_retry(self, attempt: int, started: float, at_least_s: float) -> bool:
        p = self._policy
        if attempt >= p.max_attempts:
            return False
        if time.monotonic() - started + at_least_s > p.max_elapsed_s:
            return False  # the server asked us to wait longer than we may: answer now
        return self._budget.try_spend()

    async def _pause(self, attempt: int, started: float, hint: float | None, kind: str) -> None:
        p = self._policy
        # Exponential backoff with full jitter, never shorter than the server asked for.
        backoff = random.uniform(0, min(p.backoff_cap_s, p.backoff_base_s * 2 ** (attempt - 1)))
        delay = max(backoff, hint or 0.0)
        delay = min(delay, max(0.0, p.max_elapsed_s - (time.monotonic() - started)))
        self._on_retry(kind)
        await asyncio.sleep(delay)
