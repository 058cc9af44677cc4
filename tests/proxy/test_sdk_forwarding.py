"""The official Apideck SDK through the proxy: upstream sees exactly what it sees without it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from apideck_unify import Apideck

from tests.conftest import ProxyFactory
from tests.proxy.echo import Echo, end_to_end, start_echo

API_KEY = "sk_test_sdk"
APP_ID = "sdk-app"
CONSUMER = "sdk-consumer"


@pytest.fixture
async def unify() -> AsyncIterator[Echo]:
    running = await start_echo()
    yield running
    await running.stop()


@pytest.fixture
async def upload() -> AsyncIterator[Echo]:
    running = await start_echo()
    yield running
    await running.stop()


def sdk_calls(sdk: Apideck, upload_url: str) -> list[str]:
    """A few operations on both hosts; the echo's JSON may not parse as the SDK's models."""
    calls: list[Callable[[], Any]] = [
        lambda: sdk.crm.contacts.list(limit=20, cursor="c/1 +=", fields="id,name"),
        lambda: sdk.crm.contacts.create(
            first_name="Ada", last_name="Lovelace", emails=[{"email": "ada@example.com"}]
        ),
        lambda: sdk.vault.connections.list(api="crm", configured=True),
        lambda: sdk.file_storage.upload_sessions.create(
            name="report.pdf", parent_folder_id="root", size=11, server_url=upload_url
        ),
        lambda: sdk.file_storage.upload_sessions.upload(
            id="session-1", part_number=0, request_body=b"hello world", server_url=upload_url
        ),
        lambda: sdk.accounting.attachments.upload(
            reference_type="invoice",
            reference_id="inv-1",
            request_body=b"%PDF-1.4 \x00\xff",
            x_apideck_metadata='{"name":"a.pdf"}',
            server_url=upload_url,
        ),
        lambda: sdk.file_storage.files.list(),
    ]
    outcomes = []
    for call in calls:
        try:
            outcomes.append(type(call()).__name__)
        except Exception as exc:  # the SDK may reject the echo's body; the request went out
            outcomes.append(type(exc).__name__)
    return outcomes


def comparable(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    # Names compared case-insensitively (RFC 9110 §5.1): the proxy respells a few well-known
    # ones today, pinned separately by test_request_header_names_keep_client_spelling.
    return [
        (
            r["method"],
            r["raw_path"],
            [(k.lower(), v) for k, v in end_to_end(r["headers"])],
            r["body"],
        )
        for r in records
    ]


def from_sdk(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The SDK's requests; the proxy's own Vault look-ups carry no User-Agent."""
    return [r for r in records if any(k.lower() == "user-agent" for k, _ in r["headers"])]


async def test_sdk_requests_reach_upstream_identically(
    start_proxy: ProxyFactory, unify: Echo, upload: Echo
) -> None:
    """Method, raw path, end-to-end headers and body of each SDK call match with and without."""
    proxy = await start_proxy(unify.url, upload.url)

    def sdk(server_url: str) -> Apideck:
        return Apideck(api_key=API_KEY, app_id=APP_ID, consumer_id=CONSUMER, server_url=server_url)

    direct_outcomes = await asyncio.to_thread(sdk_calls, sdk(unify.url), upload.url)
    direct_unify, direct_upload = list(unify.seen), list(upload.seen)
    unify.seen.clear()
    upload.seen.clear()
    via_outcomes = await asyncio.to_thread(sdk_calls, sdk(proxy.url), proxy.url)

    assert len(direct_unify) == 4
    assert len(direct_upload) == 3
    assert comparable(from_sdk(unify.seen)) == comparable(direct_unify)
    assert comparable(from_sdk(upload.seen)) == comparable(direct_upload)
    assert via_outcomes == direct_outcomes
    # Anything else upstream saw is the proxy's own service look-up on the unify host.
    extra = [r for r in unify.seen + upload.seen if r not in from_sdk(unify.seen + upload.seen)]
    assert {(r["method"], r["raw_path"].split("?")[0]) for r in extra} <= {
        ("GET", "/vault/connections")
    }
    assert all(r["host"] == f"127.0.0.1:{upload.port}" for r in upload.seen)
