"""Typed settings read from `APIDECK_PROXY_*` variables (and an optional env file).

Built once at start-up and handed to everything; knows nothing about HTTP or the gate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AnyHttpUrl,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

# Access-token lifetimes the providers document, in seconds. Where a provider lets the customer
# shorten it (Salesforce session timeout), the shortest setting is used: estimating too long
# means sending requests on a token Apideck is about to refresh, which is the race itself.
# `config/service-token-ttl.json` mirrors this table for readers (a test keeps them equal).
SHIPPED_SERVICE_TOKEN_TTL_S: dict[str, float] = {
    "box": 3600.0,
    "dropbox": 14400.0,
    "exact-online": 600.0,
    "freshbooks": 43200.0,
    "google-drive": 3600.0,
    "hubspot": 1800.0,
    "microsoft-dynamics": 3600.0,
    "myob": 1200.0,
    "netsuite": 3600.0,
    "onedrive": 3600.0,
    "pipedrive": 3600.0,
    "quickbooks": 3600.0,
    "sage-business-cloud-accounting": 300.0,
    "salesforce": 900.0,
    "sharepoint": 3600.0,
    "xero": 1800.0,
    "zoho-crm": 3600.0,
}

# Services whose token is shorter than the default margin need a margin of their own.
SHIPPED_SERVICE_REFRESH_MARGIN_S: dict[str, float] = {
    "sage-business-cloud-accounting": 120.0,
}


class Settings(BaseSettings):
    """Every setting the proxy reads. Field names map to `APIDECK_PROXY_<NAME>`."""

    model_config = SettingsConfigDict(
        env_prefix="APIDECK_PROXY_",
        extra="ignore",
        frozen=True,
        validate_default=True,
    )

    host: str = "127.0.0.1"
    port: int = Field(8475, ge=0, le=65535)
    upstream_url: AnyHttpUrl = AnyHttpUrl("https://unify.apideck.com")
    upload_upstream_url: AnyHttpUrl = AnyHttpUrl("https://upload.apideck.com")

    # Token lifetime estimate: validated-at + TTL. The default is deliberately short (the
    # shortest common provider lifetime) because guessing long means serving an expired token.
    token_ttl_s: float = Field(1800.0, gt=0)
    # User entries are merged over the shipped tables, so naming one service keeps the others.
    service_token_ttl_s: dict[str, float] = Field(default_factory=dict)
    refresh_margin_s: float = 300.0
    # Apideck refreshes inside a request when the token expires within this window; a margin at
    # or below it would let requests reach Apideck while it refreshes on its own. Only the
    # simulator (where every lifetime is shrunk) has a reason to change it.
    upstream_refresh_window_s: float = Field(30.0, gt=0)
    service_refresh_margin_s: dict[str, float] = Field(default_factory=dict)

    hold_timeout_s: float = Field(20.0, gt=0)
    drain_timeout_s: float = Field(5.0, ge=0)
    validate_timeout_s: float = Field(15.0, gt=0)
    fatal_cooldown_s: float = Field(30.0, ge=0)
    replay_max_body_bytes: int = Field(1_048_576, ge=0)
    service_cache_ttl_s: float = Field(300.0, gt=0)
    refresh_ahead_s: float = Field(30.0, ge=0)
    refresh_ahead_active_s: float = Field(300.0, gt=0)

    max_in_flight: int = Field(2048, ge=1)
    max_waiters_per_connection: int = Field(1000, ge=1)
    max_connections: int = Field(10_000, ge=1)
    connection_idle_expiry_s: float = Field(3600.0, gt=0)

    api_key: SecretStr | None = None
    app_id: str | None = None

    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(60.0, gt=0)
    total_timeout_s: float = Field(300.0, gt=0)
    pool_size: int = Field(256, ge=1)
    max_header_bytes: int = Field(16_384, ge=1024)

    redis_url: SecretStr | None = None

    shutdown_grace_s: float = Field(20.0, ge=0)
    admin_enabled: bool = False

    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, v: object) -> object:
        return v.lower() if isinstance(v, str) else v

    @field_validator("service_token_ttl_s", "service_refresh_margin_s")
    @classmethod
    def _positive_values(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k, s in v.items() if s <= 0]
        if bad:
            raise ValueError(f"values must be > 0 (services: {', '.join(sorted(bad))})")
        return v

    @field_validator("service_token_ttl_s")
    @classmethod
    def _merge_ttls(cls, v: dict[str, float]) -> dict[str, float]:
        return {**SHIPPED_SERVICE_TOKEN_TTL_S, **v}

    @field_validator("service_refresh_margin_s")
    @classmethod
    def _merge_margins(cls, v: dict[str, float]) -> dict[str, float]:
        return {**SHIPPED_SERVICE_REFRESH_MARGIN_S, **v}

    @model_validator(mode="after")
    def _margins_fit(self) -> Settings:
        problems: list[str] = []
        services = set(self.service_token_ttl_s) | set(self.service_refresh_margin_s)
        checks = [("default", self.refresh_margin_s, self.token_ttl_s)]
        checks += [(s, self.margin_for(s), self.ttl_for(s)) for s in sorted(services)]
        for name, margin, ttl in checks:
            if margin <= self.upstream_refresh_window_s:
                problems.append(
                    f"refresh margin for {name} is {margin:g}s; it must be above Apideck's "
                    f"{self.upstream_refresh_window_s:g}s refresh window"
                )
            if margin >= ttl:
                problems.append(
                    f"refresh margin for {name} is {margin:g}s; it must be below its "
                    f"token lifetime of {ttl:g}s"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def ttl_for(self, service_id: str) -> float:
        return self.service_token_ttl_s.get(service_id, self.token_ttl_s)

    def margin_for(self, service_id: str) -> float:
        return self.service_refresh_margin_s.get(service_id, self.refresh_margin_s)

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain data, secrets replaced by a mask."""
        data = self.model_dump(mode="json")
        for name in SECRET_FIELDS:
            if data.get(name) is not None:
                data[name] = "********"
        return data


SECRET_FIELDS = ("api_key", "redis_url")


class SettingsError(Exception):
    """All invalid settings at once, one readable line each."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def load_settings(env_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings from the environment (and `env_file`), reporting every error at once."""
    if env_file is not None and not Path(env_file).is_file():
        raise SettingsError([f"env file {env_file}: not found"])
    try:
        return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]  # pydantic-settings init kwarg not in the generated signature
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            name = f"APIDECK_PROXY_{loc.upper()}" if loc else "settings"
            # Never echo the offending value: it may be a secret.
            lines.append(f"{name}: {err['msg']}")
        raise SettingsError(lines) from None
