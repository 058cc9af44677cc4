"""/_proxy/metrics under real traffic: simulator, proxy and client all on loopback sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from proxy.routing import credential_fingerprint
from tests.conftest import Running
from tests.ops.conftest import API_KEY, CONSUMER, SimProxy, auth_headers, connection_id, fetch

CONTACTS = "/crm/contacts"
BURST = 8

FAMILIES = {
    "apideck_proxy_requests": "counter",
    "apideck_proxy_upstream_duration_seconds": "histogram",
    "apideck_proxy_validations": "counter",
    "apideck_proxy_validation_duration_seconds": "histogram",
    "apideck_proxy_held_requests": "gauge",
    "apideck_proxy_hold_duration_seconds": "histogram",
    "apideck_proxy_retries": "counter",
    "apideck_proxy_rejected": "counter",
}


async def scrape(proxy: Running) -> dict[str, Metric]:
    async with aiohttp.ClientSession() as s, s.get(proxy.url + "/_proxy/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families: dict[str, Metric], sample: str, **labels: str) -> float:
    """The one sample named `sample` whose labels include `labels` (0 when absent)."""
    family = sample.removesuffix("_total").removesuffix("_count").removesuffix("_sum")
    found = [
        s.value
        for s in families[family].samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) <= 1, f"{sample}{labels} is ambiguous: {found}"
    return found[0] if found else 0.0


def label_values(families: dict[str, Metric], family: str, label: str) -> set[str]:
    return {s.labels[label] for s in families[family].samples if label in s.labels}


async def raw_exchange(proxy: Running, request: bytes) -> bytes:
    """Send bytes no HTTP client library would (a CONNECT line) and read the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    await writer.wait_closed()
    return answer


async def drive_traffic(proxy: Running) -> None:
    async with aiohttp.ClientSession() as s:
        # A burst at expiry: one validate, everyone else held on it.
        results = await asyncio.gather(
            *(fetch(s, "GET", proxy.url + CONTACTS, headers=auth_headers()) for _ in range(BURST))
        )
        assert [r[0] for r in results] == [200] * BURST
        # Absolute-form naming another host: refused, not forwarded (not an open proxy).
        status, _, _ = await fetch(s, "GET", "http://example.invalid/crm/contacts", proxy=proxy.url)
        assert status == 403
    answer = await raw_exchange(
        proxy, b"CONNECT example.invalid:443 HTTP/1.1\r\nHost: example.invalid:443\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 405")


async def test_metrics_after_burst_and_refusals(sim_proxy: SimProxy) -> None:
    """A burst at expiry shows as one ok validate, held requests back to 0 with a hold time
    each, 2xx requests by API, and both refusals counted by reason."""
    sim, proxy = await sim_proxy()
    await drive_traffic(proxy)
    fams = await scrape(proxy)

    for name, kind in FAMILIES.items():
        assert name in fams, name
        assert fams[name].type == kind, name
    assert (
        value(fams, "apideck_proxy_validations_total", outcome="ok", service_id="salesforce") == 1
    )
    assert int(sim.state.counters()["validates"]) == 1
    assert value(fams, "apideck_proxy_validation_duration_seconds_count") == 1
    assert value(fams, "apideck_proxy_held_requests") == 0
    assert value(fams, "apideck_proxy_hold_duration_seconds_count") >= BURST - 1
    assert value(fams, "apideck_proxy_hold_duration_seconds_sum") > 0
    assert (
        value(
            fams,
            "apideck_proxy_requests_total",
            method="GET",
            status_class="2xx",
            unified_api="crm",
        )
        == BURST
    )
    assert value(fams, "apideck_proxy_requests_total", status_class="4xx", method="GET") == 1
    assert value(fams, "apideck_proxy_upstream_duration_seconds_count", unified_api="crm") == BURST
    assert value(fams, "apideck_proxy_rejected_total", reason="ForbiddenTargetError") == 1
    assert value(fams, "apideck_proxy_rejected_total", reason="MethodNotAllowedError") == 1


async def test_no_secret_or_identity_in_any_label(sim_proxy: SimProxy) -> None:
    """No label value anywhere carries the consumer id, the API key, the bearer token, the
    key's fingerprint or the connection hash."""
    _, proxy = await sim_proxy()
    await drive_traffic(proxy)
    async with aiohttp.ClientSession() as s:
        await fetch(s, "GET", proxy.url + CONTACTS, headers=auth_headers(api_key="sk-SECRET-bad"))
    fams = await scrape(proxy)
    forbidden = {
        CONSUMER,
        "SECRET",  # part of every secret value used here
        API_KEY,
        f"Bearer {API_KEY}",
        credential_fingerprint(f"Bearer {API_KEY}"),
        connection_id(),
    }
    values: list[Any] = [
        v for f in fams.values() for sample in f.samples for v in sample.labels.values()
    ]
    assert values, "expected labelled samples"
    leaks = [v for v in values for bad in forbidden if bad in v]
    assert leaks == []


async def test_invented_service_ids_do_not_create_label_values(sim_proxy: SimProxy) -> None:
    """A flood of service ids Vault never accepted all count as service_id="other"."""
    _, proxy = await sim_proxy()
    async with aiohttp.ClientSession() as s:
        statuses = await asyncio.gather(
            *(
                fetch(s, "GET", proxy.url + CONTACTS, headers=auth_headers(service=f"svc-{i}"))
                for i in range(25)
            )
        )
    assert {st for st, _, _ in statuses} == {404}
    fams = await scrape(proxy)
    assert label_values(fams, "apideck_proxy_validations", "service_id") == {"other"}
    assert value(fams, "apideck_proxy_validations_total", service_id="other", outcome="fatal") == 25


async def test_invented_methods_and_paths_do_not_create_label_values(sim_proxy: SimProxy) -> None:
    """WebDAV-style methods the parser accepts and first path segments a client invents are
    bounded to "other"."""
    _, proxy = await sim_proxy()
    async with aiohttp.ClientSession() as s:
        for i, method in enumerate(("PROPFIND", "MKCOL", "LOCK", "UNLOCK", "SEARCH") * 2):
            await fetch(s, method, f"{proxy.url}/made-up-{i}/x")
    fams = await scrape(proxy)
    assert label_values(fams, "apideck_proxy_requests", "method") == {"other"}
    assert label_values(fams, "apideck_proxy_requests", "unified_api") == {"other"}


async def test_requests_refused_by_the_parser_are_counted(sim_proxy: Any) -> None:
    """A request aiohttp cannot parse (oversize header) is counted in rejected_total too."""
    _, proxy = await sim_proxy()
    port = int(proxy.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
    await writer.drain()
    await reader.read(65536)
    writer.close()
    async with aiohttp.ClientSession() as s, s.get(proxy.url + "/_proxy/metrics") as r:
        text = await r.text()
    assert 'apideck_proxy_rejected_total{reason="RequestHeadersTooLargeError"} 1.0' in text
