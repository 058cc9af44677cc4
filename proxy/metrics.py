"""Prometheus metrics, one registry per app (no process globals).

Labels are bounded and never secret: no consumer id, API key or connection hash appears here.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from proxy.gate import ConnectionKey
from proxy.routing import DATA_APIS

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


# RFC 9110 methods plus PATCH. The parser also lets WebDAV and other registered methods
# (PROPFIND, LOCK, ...) through; those are "other" rather than a time series each.
_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)


def method_label(method: str) -> str:
    return method if method in _METHODS else "other"


def api_label(unified_api: str | None) -> str:
    """Only known API names become label values; anything a client invents is 'other'."""
    if unified_api in DATA_APIS or unified_api in ("vault", "webhook", "proxy", "connector"):
        return str(unified_api)
    return "other" if unified_api else "none"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "apideck_proxy_requests",
            "Requests answered, by method, status class and unified API.",
            ["method", "status_class", "unified_api"],
            registry=r,
        )
        self.upstream_duration = Histogram(
            "apideck_proxy_upstream_duration_seconds",
            "Time from sending upstream to the response headers.",
            ["unified_api"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.validations = Counter(
            "apideck_proxy_validations",
            "Validates run, by outcome.",
            ["unified_api", "service_id", "outcome"],
            registry=r,
        )
        self.validation_duration = Histogram(
            "apideck_proxy_validation_duration_seconds",
            "Validate duration including drain and retries.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.held_requests = Gauge(
            "apideck_proxy_held_requests",
            "Requests waiting for a validate right now.",
            registry=r,
        )
        self.hold_duration = Histogram(
            "apideck_proxy_hold_duration_seconds",
            "Time requests spent waiting for a validate.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "apideck_proxy_retries",
            "Upstream retries and replays, by kind.",
            ["kind"],
            registry=r,
        )
        self.rejected = Counter(
            "apideck_proxy_rejected",
            "Requests refused by the proxy itself, by reason.",
            ["reason"],
            registry=r,
        )
        self.ungated = Counter(
            "apideck_proxy_ungated",
            "Data requests forwarded without the gate, by reason.",
            ["reason"],
            registry=r,
        )
        self.coordination_fallbacks = Counter(
            "apideck_proxy_coordination_fallbacks",
            "Times shared coordination was unavailable and the proxy fell back to in-process.",
            registry=r,
        )

    # GateObserver
    def validation(self, key: ConnectionKey, outcome: str, duration_s: float) -> None:
        # Service ids come from the client: only one Vault accepted is a bounded label value.
        service = key.service_id if outcome in ("ok", "adopted") else "other"
        self.validations.labels(api_label(key.unified_api), service, outcome).inc()
        self.validation_duration.observe(duration_s)

    def held(self, delta: int) -> None:
        self.held_requests.inc(delta)

    def hold_finished(self, duration_s: float) -> None:
        self.hold_duration.observe(duration_s)

    def retried_validate(self) -> None:
        self.retries.labels("validate").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
