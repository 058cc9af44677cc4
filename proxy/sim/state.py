"""Simulated Vault: connections, their tokens, the refresh race, and the counters.

Pure logic plus `asyncio.sleep` for latencies; it knows nothing about HTTP. The app layer turns
an `Outcome` into a response.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from proxy.sim.config import SimConfig
from proxy.sim.faults import FaultBook, FaultRule

ConnectionStatus = Literal["callable", "invalid"]
RefreshCause = Literal["request", "validate"]
Channel = Literal["data", "vault"]


class Outcome(enum.Enum):
    OK = "ok"
    INVALID = "invalid"  # the connection was already invalid: needs re-authorisation
    INVALID_GRANT = "invalid_grant"  # a late, overlapping refresh (mode "rotate")
    REVOKED = "revoked"  # refresh-token reuse revoked the family (mode "strict")
    # The access token changed while a request used it. noqa: an outcome name, not a secret.
    TOKEN_ROTATED = "token_rotated"  # noqa: S105


@dataclass(frozen=True)
class ConnectionKey:
    app_id: str
    consumer_id: str
    unified_api: str
    service_id: str

    def label(self) -> str:
        return f"{self.consumer_id}/{self.unified_api}/{self.service_id}"


@dataclass
class ConnectionStats:
    requests: int = 0
    failures: int = 0
    refreshes: Counter[str] = field(default_factory=Counter)
    validates: int = 0
    revocations: int = 0
    overlaps: int = 0


@dataclass
class Connection:
    key: ConnectionKey
    version: int
    expires_at: float  # time.monotonic() seconds
    status: ConnectionStatus = "callable"
    family: int = 1
    refreshing: int = 0  # refreshes in flight, the doomed late ones included
    # A refresh spending the current refresh token is in flight; any refresh starting now
    # presents that same token and is the late one.
    spending: bool = False
    stats: ConnectionStats = field(default_factory=ConnectionStats)

    def expires_in_s(self) -> float:
        return self.expires_at - time.monotonic()

    def is_invalid(self) -> bool:
        # A method, not a field test, so the check is re-read after every await.
        return self.status == "invalid"


@dataclass
class _Totals:
    requests: int = 0
    vault_requests: int = 0
    data_failures: int = 0
    vault_failures: int = 0
    transport_failures: int = 0
    refreshes: Counter[str] = field(default_factory=Counter)
    refresh_failures: int = 0
    validates: int = 0
    revocations: int = 0
    overlaps: int = 0
    statuses: Counter[str] = field(default_factory=Counter)


class SimState:
    """Everything the simulator remembers; one per app, reachable through `SIM_STATE`."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.faults = FaultBook(config.seed)
        self._connections: dict[ConnectionKey, Connection] = {}
        self._totals = _Totals()
        self._ids = itertools.count(1)

    def next_id(self, prefix: str) -> str:
        """A fresh, deterministic id for a created record."""
        return f"{prefix}-{next(self._ids)}"

    # -- connections -----------------------------------------------------------------------

    def services_for(self, unified_api: str) -> list[str]:
        return list(self.config.services.get(unified_api, []))

    def connection(self, consumer_id: str, unified_api: str, service_id: str) -> Connection:
        """The connection for this consumer and service, created on first use."""
        key = ConnectionKey(self.config.app_id, consumer_id, unified_api, service_id)
        conn = self._connections.get(key)
        if conn is None:
            initial = self.config.initial_token_expires_in_s
            expires_in = self.config.ttl_for(service_id) if initial is None else initial
            conn = Connection(key=key, version=1, expires_at=time.monotonic() + expires_in)
            self._connections[key] = conn
        return conn

    def connections(self) -> list[Connection]:
        return list(self._connections.values())

    def _matching(
        self, consumer_id: str | None, unified_api: str | None, service_id: str | None
    ) -> list[Connection]:
        # A fully named consumer + unified api is materialised first, so a test can set up
        # a connection's token before its first request.
        if consumer_id is not None and unified_api is not None:
            for service in self.services_for(unified_api):
                if service_id is None or service == service_id:
                    self.connection(consumer_id, unified_api, service)
        return [
            conn
            for conn in self._connections.values()
            if (consumer_id is None or conn.key.consumer_id == consumer_id)
            and (unified_api is None or conn.key.unified_api == unified_api)
            and (service_id is None or conn.key.service_id == service_id)
        ]

    def expire(
        self,
        expires_in_s: float,
        *,
        consumer_id: str | None = None,
        unified_api: str | None = None,
        service_id: str | None = None,
    ) -> int:
        """Set the access-token expiry of matching connections; returns how many matched."""
        matched = self._matching(consumer_id, unified_api, service_id)
        for conn in matched:
            conn.expires_at = time.monotonic() + expires_in_s
        return len(matched)

    def reauthorize(
        self,
        *,
        consumer_id: str | None = None,
        unified_api: str | None = None,
        service_id: str | None = None,
    ) -> int:
        """Re-run the OAuth consent for matching connections: callable, new family, new token."""
        matched = self._matching(consumer_id, unified_api, service_id)
        for conn in matched:
            conn.status = "callable"
            conn.family += 1
            conn.version += 1
            conn.expires_at = time.monotonic() + self.config.ttl_for(conn.key.service_id)
        return len(matched)

    def invalidate(
        self,
        *,
        consumer_id: str | None = None,
        unified_api: str | None = None,
        service_id: str | None = None,
    ) -> int:
        """Revoke matching connections' token family, as the provider would; returns matches."""
        matched = self._matching(consumer_id, unified_api, service_id)
        for conn in matched:
            self._revoke(conn)
        return len(matched)

    # -- the race --------------------------------------------------------------------------

    async def refresh(self, conn: Connection, cause: RefreshCause) -> Outcome:
        """One refresh-token grant against the provider, with the provider's overlap rules."""
        self._totals.refreshes[cause] += 1
        conn.stats.refreshes[cause] += 1
        family = conn.family
        late = conn.spending
        conn.spending = True
        conn.refreshing += 1
        if late:
            self._totals.overlaps += 1
            conn.stats.overlaps += 1
            if self.config.mode == "strict":
                # Reuse detection fires as soon as the provider sees the already-used refresh
                # token, so the refresh still in flight loses its new token as well.
                self._revoke(conn)
        try:
            await asyncio.sleep(self.config.refresh_latency_s)
        finally:
            conn.refreshing -= 1
            if not late:
                conn.spending = False
        if late:
            outcome = Outcome.REVOKED if self.config.mode == "strict" else Outcome.INVALID_GRANT
        elif conn.status == "invalid" or conn.family != family:
            outcome = Outcome.REVOKED
        else:
            conn.version += 1
            conn.expires_at = time.monotonic() + self.config.ttl_for(conn.key.service_id)
            return Outcome.OK
        self._totals.refresh_failures += 1
        return outcome

    def _revoke(self, conn: Connection) -> None:
        if conn.status == "invalid":
            return
        conn.status = "invalid"
        self._totals.revocations += 1
        conn.stats.revocations += 1

    async def serve(self, conn: Connection) -> Outcome:
        """A unified data request: Apideck's own refresh inside the window, then the call."""
        if conn.is_invalid():
            return Outcome.INVALID
        if conn.expires_in_s() <= self.config.window_s:
            outcome = await self.refresh(conn, "request")
            if outcome is not Outcome.OK:
                return outcome
        version, family = conn.version, conn.family
        await asyncio.sleep(self.config.request_latency_s)
        if conn.is_invalid() or conn.family != family:
            return Outcome.REVOKED
        if conn.version != version:
            return Outcome.TOKEN_ROTATED
        return Outcome.OK

    async def validate(self, conn: Connection) -> Outcome:
        """Vault's validate: forces a refresh regardless of expiry."""
        self._totals.validates += 1
        conn.stats.validates += 1
        if conn.status == "invalid":
            return Outcome.INVALID
        return await self.refresh(conn, "validate")

    # -- counters --------------------------------------------------------------------------

    def record(self, channel: Channel, status: int | None) -> None:
        """Count one answered request; `status=None` is a transport fault (no full response)."""
        failed = status is None or status >= 400
        if channel == "data":
            self._totals.requests += 1
            self._totals.data_failures += failed
        else:
            self._totals.vault_requests += 1
            self._totals.vault_failures += failed
        self._totals.transport_failures += status is None
        self._totals.statuses["transport" if status is None else str(status)] += 1

    def record_for(self, conn: Connection, status: int) -> None:
        """Attribute one answered data request to its connection."""
        conn.stats.requests += 1
        conn.stats.failures += status >= 400

    def counters(self) -> dict[str, Any]:
        """A JSON-ready snapshot of every counter."""
        t = self._totals
        return {
            "requests": t.requests,
            "failures": t.data_failures + t.vault_failures,
            "data_failures": t.data_failures,
            "vault_requests": t.vault_requests,
            "vault_failures": t.vault_failures,
            "transport_failures": t.transport_failures,
            "refreshes": {"request": t.refreshes["request"], "validate": t.refreshes["validate"]},
            "refresh_failures": t.refresh_failures,
            "validates": t.validates,
            "revocations": t.revocations,
            "overlaps": t.overlaps,
            "statuses": dict(t.statuses),
            "faults_fired": self.faults.fired_total,
            "per_connection": {
                conn.key.label(): {
                    "state": conn.status,
                    "version": conn.version,
                    "family": conn.family,
                    "expires_in_s": round(conn.expires_in_s(), 3),
                    "refreshing": conn.refreshing,
                    "requests": conn.stats.requests,
                    "failures": conn.stats.failures,
                    "refreshes": {
                        "request": conn.stats.refreshes["request"],
                        "validate": conn.stats.refreshes["validate"],
                    },
                    "validates": conn.stats.validates,
                    "revocations": conn.stats.revocations,
                    "overlaps": conn.stats.overlaps,
                }
                for conn in self._connections.values()
            },
        }

    def reset(self, *, forget_connections: bool = False) -> None:
        """Zero every counter; optionally forget connections so they start over."""
        self._totals = _Totals()
        self.faults.fired_total = 0
        for conn in self._connections.values():
            conn.stats = ConnectionStats()
        if forget_connections:
            self._connections.clear()

    # -- faults ----------------------------------------------------------------------------

    def add_fault(self, rule: FaultRule) -> FaultRule:
        return self.faults.add(rule)

    def clear_faults(self) -> None:
        self.faults.clear()
