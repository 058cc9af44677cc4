"""The simulator's one settings object, built once and handed to everything else.

It knows nothing about HTTP or connection state; every duration carries its unit in its name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

RefreshMode = Literal["rotate", "strict"]

# Unified APIs whose paths the simulator answers; a consumer is "connected" to the services
# listed for it in SimConfig.services.
UNIFIED_APIS: frozenset[str] = frozenset(
    {
        "accounting",
        "ats",
        "crm",
        "customer-support",
        "ecommerce",
        "file-storage",
        "hris",
        "issue-tracking",
        "lead",
        "pos",
        "sms",
    }
)


def _default_services() -> dict[str, list[str]]:
    return {
        "crm": ["salesforce"],
        "accounting": ["xero"],
        "file-storage": ["box"],
        "hris": ["bamboohr"],
        "ats": ["greenhouse"],
        "issue-tracking": ["jira"],
        "ecommerce": ["shopify"],
        "customer-support": ["zendesk"],
        "lead": ["hubspot"],
        "pos": ["square"],
        "sms": ["twilio"],
    }


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    """Latencies, token lifetimes and the refresh-token policy of the simulated provider.

    `initial_token_expires_in_s` is the remaining life of the token a connection holds when the
    simulator first sees it: 0 (the default) puts it inside the refresh window so the very first
    burst races; None means a freshly issued token (`token_ttl_s`).
    `mode` is what the provider does with an overlapping refresh: "rotate" rejects the late one
    with invalid_grant, "strict" treats it as refresh-token reuse and revokes the whole family.
    """

    window_s: float = 30.0
    token_ttl_s: float = 3600.0
    service_token_ttl_s: Mapping[str, float] = field(default_factory=dict)
    initial_token_expires_in_s: float | None = 0.0
    refresh_latency_s: float = 0.3
    request_latency_s: float = 0.02
    mode: RefreshMode = "rotate"
    api_keys: frozenset[str] = frozenset({"sim-api-key"})
    app_id: str = "sim-app"
    services: Mapping[str, list[str]] = field(default_factory=_default_services)
    seed: int = 0

    def ttl_for(self, service_id: str) -> float:
        """Lifetime of an access token freshly issued for `service_id`."""
        return self.service_token_ttl_s.get(service_id, self.token_ttl_s)

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in ("window_s", "token_ttl_s", "refresh_latency_s", "request_latency_s"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        if self.mode not in ("rotate", "strict"):
            problems.append(f"mode must be 'rotate' or 'strict', not {self.mode!r}")
        if not self.api_keys:
            problems.append("api_keys must not be empty")
        for api in self.services:
            if api not in UNIFIED_APIS:
                problems.append(f"services: unknown unified api {api!r}")
        if problems:
            raise ValueError("invalid SimConfig: " + "; ".join(problems))
