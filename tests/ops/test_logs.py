"""Logs: the production chain (structlog + stdlib) renders one line per request and per
validate, picks its format from the terminal, and never prints a secret at any level."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web

from proxy.log import (
    MASK,
    SecretScrubber,
    configure_logging,
    resolve_format,
    scrub_secrets,
    scrub_text,
)
from proxy.settings import load_settings
from tests.conftest import ProxyFactory, start_app
from tests.ops.conftest import (
    API_KEY,
    CONSUMER,
    SimProxy,
    auth_headers,
    fetch,
    logging_restored,
)

ACCESS_TOKEN = "at-SECRET-q9z8y7"
QUERY_KEY = "sk-SECRET-query-55aa"
REFRESH_TOKEN = "rt-SECRET-r3fr3sh"
WRONG_KEY = "sk-SECRET-wrong-0000"
REDIS_PASSWORD = "pw-SECRET-redis"
SECRETS = (API_KEY, ACCESS_TOKEN, QUERY_KEY, REFRESH_TOKEN, WRONG_KEY, REDIS_PASSWORD)


def lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


# -- the scrubber on its own ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secret", "kept"),
    [
        ("upstream said: Bearer sk-abc.DEF/ghi+= went stale", "sk-abc.DEF/ghi+=", "went stale"),
        ("GET /crm/contacts?limit=5&access_token=tok123&api_key=key456", "tok123", "limit=5"),
        ("GET /crm/contacts?limit=5&access_token=tok123&api_key=key456", "key456", "limit=5"),
        ('{"refresh_token": "rt 1 2", "status_code": 401}', "rt 1 2", '"status_code": 401'),
        ('{"access_token":"at-9","expires_in":3600}', "at-9", '"expires_in":3600'),
        ("{'client_secret': 'cs-7', 'grant_type': 'refresh_token'}", "cs-7", "grant_type"),
        ('payload="{\\"refresh_token\\": \\"rt-esc\\"}"', "rt-esc", "payload="),
        ("redis://:pw123456@redis:6379/0 unreachable", "pw123456", "@redis:6379/0"),
        ("redis://:p/w-raw@redis:6379", "w-raw", "@redis:6379"),
        ("https://user:hunter22@example.com/x", "hunter22", "example.com/x"),
        ("x-api-key: key-789 retrying", "key-789", "retrying"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA== rejected", "dXNlcjpwYXNzd29yZA==", "rejected"),
        ("callback?code=oauth-code-1&state=s1", "oauth-code-1", "state=s1"),
        ('"password":"a\\"b-tail"', "b-tail", '"password":'),
    ],
)
def test_scrub_text_masks_inline_credentials(text: str, secret: str, kept: str) -> None:
    """Credentials embedded in free text are masked while the surrounding context survives."""
    out = scrub_text(text)
    assert secret not in out
    assert MASK in out
    assert kept in out


def test_scrub_text_leaves_ordinary_text_alone() -> None:
    """Words that merely resemble secret names (status codes, token counts) stay readable."""
    text = "status_code=502 error_code=7 max_tokens=5 token_ttl_s=30 a basic check"
    assert scrub_text(text) == text


def test_scrub_secrets_masks_fields_nested_values_and_objects() -> None:
    """Secret-named fields, nested headers, exceptions passed as fields and bytes bodies are
    masked; flags named after a secret are kept."""
    event = scrub_secrets(
        None,
        "info",
        {
            "event": "calling Bearer tok-1 now",
            "api_key": "k-1",
            "api_key_injected": True,
            "headers": {"Authorization": "Bearer tok-2", "x-request-id": "r-1"},
            "error": ValueError("token=tok-3 rejected"),
            "body": b'{"refresh_token": "tok-4"}',
            "items": [{"password": "tok-5"}],
        },
    )
    rendered = json.dumps(event)
    for secret in ("tok-1", "k-1", "tok-2", "tok-3", "tok-4", "tok-5"):
        assert secret not in rendered
    assert event["api_key_injected"] is True
    assert event["headers"]["x-request-id"] == "r-1"


def test_known_secret_masked_even_without_a_pattern() -> None:
    """The proxy's own API key is masked literally, even with no 'Bearer' or 'key=' beside it."""
    scrub = SecretScrubber([API_KEY])
    event = scrub(None, "error", {"event": f"weird error mentioning {API_KEY} bare"})
    assert API_KEY not in event["event"]


# -- end to end ----------------------------------------------------------------------------


async def test_no_secret_reaches_any_log_line(
    sim_proxy: SimProxy, captured_logs: io.StringIO
) -> None:
    """With logging at debug, traffic carrying secrets in headers, query, body, a refused
    validate, a logged exception, stdlib and warnings output leaves no secret in the output."""
    _, proxy = await sim_proxy()
    query = f"?access_token={ACCESS_TOKEN}&api_key={QUERY_KEY}&limit=5"
    async with aiohttp.ClientSession() as s:
        burst = await asyncio.gather(
            *(
                fetch(s, "GET", proxy.url + "/crm/contacts" + query, headers=auth_headers())
                for _ in range(5)
            )
        )
        assert {st for st, _, _ in burst} == {200}
        status, _, _ = await fetch(
            s,
            "POST",
            proxy.url + "/crm/contacts" + query,
            headers=auth_headers(),
            json={"first_name": "Ada", "refresh_token": REFRESH_TOKEN},
        )
        assert status == 201
        status, _, _ = await fetch(
            s, "GET", proxy.url + "/crm/contacts" + query, headers=auth_headers(api_key=WRONG_KEY)
        )
        assert status == 401  # Vault refused the validate: ValidationFailed
        # An ungated path (Vault) and an upstream answer with the wrong key.
        status, _, _ = await fetch(
            s, "GET", proxy.url + "/vault/connections" + query, headers=auth_headers(WRONG_KEY)
        )
    # Application code logging an exception that quotes the token.
    log = structlog.get_logger("proxy.test")
    try:
        raise RuntimeError(f"upstream rejected Authorization: Bearer {API_KEY} ({API_KEY})")
    except RuntimeError:
        log.exception("boom", url=f"{proxy.url}/crm/contacts{query}")
    log.debug("coordination", redis_url=f"redis://:{REDIS_PASSWORD}@redis:6379/0")
    log.debug("dump", headers={"Authorization": f"Bearer {WRONG_KEY}"}, note=f"token={QUERY_KEY}")
    # The stdlib loggers aiohttp and asyncio use, with arguments and a traceback.
    try:
        raise ValueError(f"refresh_token={REFRESH_TOKEN}")
    except ValueError:
        logging.getLogger("aiohttp.server").exception(
            "Error handling request to %s", f"/crm?access_token={ACCESS_TOKEN}"
        )
    logging.getLogger("aiohttp.client").debug("sent Bearer %s", WRONG_KEY)
    logging.getLogger("asyncio").warning("redis://:%s@host lost", REDIS_PASSWORD)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(f"unclosed response for ?api_key={QUERY_KEY}", ResourceWarning, stacklevel=1)

    output = captured_logs.getvalue()
    assert output.count('"event": "request"') >= 8  # the traffic really was logged
    assert "Error handling request" in output and "Traceback" in output
    assert "unclosed response" in output
    leaked = [secret for secret in SECRETS if secret in output]
    assert leaked == [], output
    assert CONSUMER not in output  # logs name connections by hash, not by consumer


async def test_one_access_line_and_one_validate_line(
    sim_proxy: SimProxy, captured_logs: io.StringIO
) -> None:
    """Each request logs one JSON line with method, path template, status, durations, API,
    service and both request ids; each validate logs one line with its outcome."""
    _, proxy = await sim_proxy()
    async with aiohttp.ClientSession() as s:
        results = await asyncio.gather(
            *(
                fetch(
                    s,
                    "GET",
                    proxy.url + "/crm/contacts/c_123456?limit=1",
                    headers={**auth_headers(), "x-request-id": f"client-{i}"},
                )
                for i in range(3)
            )
        )
    assert [r[0] for r in results] == [200] * 3
    upstream_ids = {r[2]["x-apideck-request-id"] for r in results}
    logged = lines(captured_logs)
    access = [e for e in logged if e["event"] == "request"]
    assert len(access) == 3
    assert {e["request_id"] for e in access} == {"client-0", "client-1", "client-2"}
    assert {e["apideck_request_id"] for e in access} == upstream_ids
    for e in access:
        assert e["logger"] == "proxy.access"
        assert e["level"] == "info"
        assert e["method"] == "GET"
        assert e["path"] == "/crm/contacts/{id}"  # the template: no record id, no query
        assert e["status"] == 200
        assert e["unified_api"] == "crm" and e["service_id"] == "salesforce"
        assert e["duration_ms"] >= e["held_ms"] > 0
        assert list(e)[:4] == ["timestamp", "level", "logger", "event"]
    validates = [e for e in logged if e["event"] == "validate"]
    assert len(validates) == 1
    assert validates[0]["outcome"] == "ok"
    assert validates[0]["logger"] == "proxy.gate"


async def test_client_request_id_forwarded_upstream_unchanged(
    start_proxy: ProxyFactory, captured_logs: io.StringIO
) -> None:
    """The client's x-request-id reaches Apideck byte for byte, and the access line carries it
    next to the request id Apideck answered with."""
    seen: list[bytes] = []

    async def upstream(request: web.Request) -> web.Response:
        seen.extend(v for k, v in request.raw_headers if k.lower() == b"x-request-id")
        return web.json_response({}, headers={"x-apideck-request-id": "apideck-req-42"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream)
    echo = await start_app(app)
    try:
        proxy = await start_proxy(echo.url)
        rid = "Req-ID_01/ünï  spaced=="
        async with aiohttp.ClientSession() as s:
            status, _, _ = await fetch(
                s, "GET", proxy.url + "/vault/connections", headers={"x-request-id": rid}
            )
    finally:
        await echo.stop()
    assert status == 200
    assert seen == [rid.encode()]  # exactly once, the bytes the client sent
    [line] = [e for e in lines(captured_logs) if e["event"] == "request"]
    assert line["apideck_request_id"] == "apideck-req-42"
    assert line["request_id"] == rid


# -- format selection ----------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    with logging_restored():
        yield


def test_log_format_defaults_to_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset (or 'auto') APIDECK_PROXY_LOG_FORMAT means auto; json and console are kept."""
    monkeypatch.delenv("APIDECK_PROXY_LOG_FORMAT", raising=False)
    assert load_settings().log_format is None
    for raw, expected in (("auto", None), ("JSON", "json"), ("console", "console")):
        monkeypatch.setenv("APIDECK_PROXY_LOG_FORMAT", raw)
        assert load_settings().log_format == expected


def test_auto_format_is_json_off_terminal_console_on_one(restore_logging: None) -> None:
    """With no explicit format, a pipe gets JSON lines and a terminal gets console lines."""
    buf = io.StringIO()
    assert resolve_format(None, buf) == "json"
    configure_logging(None, "info", buf)
    structlog.get_logger("proxy").info("hello", n=1)
    assert json.loads(buf.getvalue())["event"] == "hello"

    main, secondary = os.openpty()
    try:
        with open(secondary, "w", closefd=True) as tty, open(main, "rb", closefd=False) as reader:
            assert resolve_format(None, tty) == "console"
            configure_logging(None, "info", tty)
            structlog.get_logger("proxy").info("hello", n=1)
            tty.flush()
            text = os.read(reader.fileno(), 4096).decode()
    finally:
        os.close(main)
    assert "hello" in text
    assert not text.lstrip().startswith("{")
    assert resolve_format("json", io.StringIO()) == "json"
