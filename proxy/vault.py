"""The thin client for the two Vault calls the gate needs: validate a connection, and look up
which service a consumer has connected for a unified API.

These calls go straight to the upstream session, never back through the gate.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import quote

import aiohttp
import structlog
from yarl import URL

from proxy.errors import ValidationFailed
from proxy.gate import ConnectionKey, Credentials, Outcome, ValidateResult
from proxy.retry import parse_wait_hint

log = structlog.get_logger("proxy.vault")

# Fatal answers: repeating the validate cannot help until someone fixes the connection.
_FATAL = frozenset({400, 401, 402, 403, 404, 409, 422})


def cooldown_from_detail(body: Any, now_s: float) -> float | None:
    """Apideck's own refresh cooldown, from `detail.debug` of an error body.

    `retry_after_ms` is a Unix timestamp in ms; `cooldown_remaining_ms` a duration.
    """
    if not isinstance(body, dict):
        return None
    detail = body.get("detail")
    debug = detail.get("debug") if isinstance(detail, dict) else None
    if not isinstance(debug, dict):
        return None
    at = debug.get("retry_after_ms")
    if isinstance(at, int | float) and not isinstance(at, bool):
        return max(0.0, at / 1000.0 - now_s)
    remaining = debug.get("cooldown_remaining_ms")
    if isinstance(remaining, int | float) and not isinstance(remaining, bool):
        return max(0.0, remaining / 1000.0)
    return None


def _public_detail(body: Any) -> dict[str, Any]:
    """The parts of Vault's error worth showing the waiting clients (no debug payloads)."""
    if not isinstance(body, dict):
        return {}
    out: dict[str, Any] = {}
    for k in ("type_name", "message"):
        if isinstance(body.get(k), str):
            out[f"upstream_{k}"] = body[k]
    detail = body.get("detail")
    if isinstance(detail, str):
        out["upstream_detail"] = detail
    elif isinstance(detail, dict):
        out["upstream_detail"] = {
            k: detail[k] for k in ("type", "message") if isinstance(detail.get(k), str)
        }
    return out


def _headers(credentials: Credentials) -> dict[str, str]:
    return {
        "Authorization": credentials.authorization,
        "x-apideck-app-id": credentials.app_id,
        "x-apideck-consumer-id": credentials.consumer_id,
    }


async def _json(resp: aiohttp.ClientResponse) -> Any:
    raw = await resp.content.read(256 * 1024)
    try:
        return json.loads(raw)
    except ValueError:
        return None


class VaultClient:
    def __init__(self, session: aiohttp.ClientSession, base: URL, timeout_s: float) -> None:
        self._session = session
        self._base = base
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def validate(self, key: ConnectionKey, credentials: Credentials) -> ValidateResult:
        path = (
            f"/vault/connections/{quote(key.unified_api, safe='')}/"
            f"{quote(key.service_id, safe='')}/validate"
        )
        headers = _headers(credentials) | {"Content-Type": "application/json"}
        try:
            async with self._session.post(
                join(self._base, path), data=b"{}", headers=headers, timeout=self._timeout
            ) as resp:
                body = await _json(resp)
                return self._classify(resp.status, resp.headers.get("Retry-After"), body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("validate unreachable", connection=key.id, error=type(exc).__name__)
            return ValidateResult(Outcome.TRANSIENT)

    def _classify(self, status: int, retry_after: str | None, body: Any) -> ValidateResult:
        if status == 200:
            data = body.get("data") if isinstance(body, dict) else None
            state = data.get("state") if isinstance(data, dict) else None
            if state == "invalid":
                return ValidateResult(
                    Outcome.FATAL,
                    status,
                    None,
                    # 401, as Apideck itself answers data calls on an invalid connection.
                    ValidationFailed(
                        "the connection is invalid and needs to be re-authorised",
                        status=401,
                        detail={"connection_state": state},
                    ),
                )
            return ValidateResult(Outcome.OK, status)
        if status in (401, 403) and _about_the_api_key(body):
            # The caller's own key or app id is wrong: answer exactly as Apideck would have,
            # with its body. The short cooldown (per key fingerprint) only spares Vault.
            error = ValidationFailed("Apideck refused the API key", status=status)
            error.upstream_body = body
            return ValidateResult(Outcome.FATAL, status, None, error)
        if status in _FATAL:
            cooldown = cooldown_from_detail(body, time.time())
            message = "Apideck refused to validate the connection"
            if isinstance(body, dict) and isinstance(body.get("message"), str):
                message = f"{message}: {body['message']}"
            error = ValidationFailed(
                message, status=status, detail=_public_detail(body), retry_after_s=cooldown
            )
            return ValidateResult(Outcome.FATAL, status, cooldown, error)
        return ValidateResult(Outcome.TRANSIENT, status, parse_wait_hint(retry_after))


def join(base: URL, path: str) -> URL:
    """`base` + an absolute path, keeping any path prefix the base URL has (a gateway)."""
    return URL(str(base).rstrip("/") + path, encoded=True)


def _about_the_api_key(body: Any) -> bool:
    if not isinstance(body, dict):
        return False
    return body.get("type_name") in ("UnauthorizedError", "ForbiddenError", None) and not (
        isinstance(body.get("detail"), dict)
    )


class ServiceResolver:
    """Finds the one service a consumer connected for a unified API, cached per caller.

    Returns None when it cannot tell (several connections, none, or Vault unreachable): the
    request is then forwarded ungated and Apideck decides, as it would without the proxy.
    """

    def __init__(
        self, session: aiohttp.ClientSession, base: URL, timeout_s: float, ttl_s: float
    ) -> None:
        self._session = session
        self._base = base
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._ttl_s = ttl_s
        self._cache: dict[tuple[str, ...], tuple[float, str | None]] = {}
        # A lookup that failed for a passing reason is retried soon, not after the full TTL.
        self._retry_s = min(5.0, ttl_s)
        self._pending: dict[tuple[str, ...], asyncio.Future[str | None]] = {}
        self._max_entries = 10_000

    async def resolve(
        self, unified_api: str, credentials: Credentials, credential_tag: str
    ) -> str | None:
        key = (credentials.app_id, credentials.consumer_id, unified_api, credential_tag)
        hit = self._cache.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        try:
            service, definite = await self._lookup(unified_api, credentials)
            if len(self._cache) >= self._max_entries:
                self._cache.clear()
            ttl = self._ttl_s if definite else self._retry_s
            self._cache[key] = (time.monotonic() + ttl, service)
            fut.set_result(service)
            return service
        except BaseException:
            fut.set_result(None)
            raise
        finally:
            del self._pending[key]

    async def _lookup(self, unified_api: str, credentials: Credentials) -> tuple[str | None, bool]:
        """The service, and whether the answer is definite (worth caching for the full TTL)."""
        url = join(self._base, "/vault/connections").with_query(api=unified_api)
        try:
            async with self._session.get(
                url, headers=_headers(credentials), timeout=self._timeout
            ) as resp:
                if resp.status != 200:
                    return None, resp.status < 500 and resp.status != 429
                body = await _json(resp)
        except (aiohttp.ClientError, TimeoutError):
            return None, False
        rows = body.get("data") if isinstance(body, dict) else None
        if not isinstance(rows, list):
            return None, False
        candidates = [
            r.get("service_id")
            for r in rows
            if isinstance(r, dict)
            and r.get("unified_api", unified_api) == unified_api
            and r.get("enabled", True) is not False
            and r.get("state") in (None, "callable", "authorized")
        ]
        services = {c for c in candidates if isinstance(c, str) and c}
        return (services.pop() if len(services) == 1 else None), True


_TOKEN_WORDS = ("token", "refresh", "invalid_grant", "expired", "credentials")
_API_KEY_WORDS = ("api key", "apikey", "api-key", "missing authentication")


def is_token_failure(raw: bytes) -> bool:
    """Does this 401 say the connection's OAuth token (not the caller's API key) failed?

    Only then can a validate and one replay help; a wrong API key would fail again.
    """
    try:
        body = json.loads(raw)
    except ValueError:
        return False
    if not isinstance(body, dict):
        return False
    if body.get("type_name") == "ConnectorCredentialsError":
        return True
    detail = body.get("detail")
    if isinstance(detail, dict) and any(
        w in str(detail.get("type", "")).lower() for w in ("token", "refresh")
    ):
        return True
    text = " ".join(
        str(x)
        for x in (
            body.get("message"),
            detail
            if isinstance(detail, str)
            else detail.get("message")
            if isinstance(detail, dict)
            else None,
        )
        if x
    ).lower()
    if any(w in text for w in _API_KEY_WORDS):
        return False
    return any(w in text for w in _TOKEN_WORDS)
