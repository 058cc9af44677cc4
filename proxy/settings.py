"""Typed settings read from `APIDECK_PROXY_*` variables (and an optional env file).

Built once at start-up and handed to everything; knows nothing about HTTP or the gate.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AnyHttpUrl,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError
from redis.connection import parse_url

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
    service_token_ttl_s: Annotated[dict[str, float], NoDecode] = Field(default_factory=dict)
    refresh_margin_s: float = 300.0
    # Apideck refreshes inside a request when the token expires within this window; a margin at
    # or below it would let requests reach Apideck while it refreshes on its own. Only the
    # simulator (where every lifetime is shrunk) has a reason to change it.
    upstream_refresh_window_s: float = Field(30.0, gt=0)
    service_refresh_margin_s: Annotated[dict[str, float], NoDecode] = Field(default_factory=dict)

    hold_timeout_s: float = Field(20.0, gt=0)
    drain_timeout_s: float = Field(5.0, ge=0)
    validate_timeout_s: float = Field(15.0, gt=0)
    fatal_cooldown_s: float = Field(30.0, ge=0)
    replay_max_body_bytes: int = Field(1_048_576, ge=0)
    # All buffered bodies together stay below this; beyond it bodies stream (not replayable).
    max_buffered_bytes: int = Field(64 * 1_048_576, ge=0)
    service_cache_ttl_s: float = Field(300.0, gt=0)
    refresh_ahead_s: float = Field(30.0, ge=0)
    refresh_ahead_active_s: float = Field(300.0, gt=0)

    # Retries (Apideck's advice: exponential backoff). Comma lists are accepted for the sets.
    retry_max_attempts: int = Field(3, ge=1)
    retry_max_elapsed_s: float = Field(10.0, ge=0)
    retry_methods: Annotated[frozenset[str], NoDecode] = frozenset({"GET", "HEAD", "OPTIONS"})
    retry_statuses: Annotated[frozenset[int], NoDecode] = frozenset({429, 502, 503, 504})
    retry_backoff_base_s: float = Field(0.2, gt=0)
    retry_backoff_cap_s: float = Field(5.0, gt=0)
    retry_budget_ratio: float = Field(0.2, ge=0, le=10)
    retry_budget_min_per_s: float = Field(5.0, ge=0)

    max_in_flight: int = Field(2048, ge=1)
    max_waiters_per_connection: int = Field(1000, ge=1)
    max_connections: int = Field(10_000, ge=1)
    connection_idle_expiry_s: float = Field(3600.0, gt=0)

    api_key: SecretStr | None = None
    app_id: str | None = None

    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(60.0, gt=0)
    # 0 = no limit on the whole exchange: a large download must not be cut at an arbitrary
    # length; connect_timeout_s and read_timeout_s (per read) still catch a dead upstream.
    total_timeout_s: float = Field(0.0, ge=0)
    pool_size: int = Field(256, ge=1)
    max_header_bytes: int = Field(16_384, ge=1024)

    redis_url: SecretStr | None = None
    # Fleet mode, read only when redis_url is set. The lock lease must outlive one validate call
    # (it is also renewed every third of itself while the validate runs); a replica that dies
    # holding the lock delays the others by at most one lease. Each Redis call gives up after
    # redis_timeout_s and the proxy then coordinates in-process until Redis answers again.
    redis_lock_lease_s: float = Field(20.0, gt=0)
    redis_timeout_s: float = Field(0.5, gt=0)

    shutdown_grace_s: float = Field(20.0, ge=0)
    admin_enabled: bool = False

    log_format: Literal["json", "console"] | None = Field(
        None,
        description=(
            "json (one object per line, for collectors) or console (for people). Unset, empty "
            "or 'auto': console when stderr is a terminal, json otherwise (containers)."
        ),
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            scheme = v.get_secret_value().partition("://")[0].lower()
            if scheme not in ("redis", "rediss", "unix"):
                # Never the value itself: it may carry a password.
                raise ValueError("must be a redis://, rediss:// or unix:// URL")
            try:
                parse_url(v.get_secret_value())  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            except ValueError as exc:
                # redis-py's own reason (a bad port, db or option); it quotes no credentials.
                raise ValueError(f"not a valid Redis URL ({_scrubbed(str(exc))})") from None
        return v

    @field_validator("redis_lock_lease_s")
    @classmethod
    def _lease_outlives_validate(cls, v: float, info: ValidationInfo) -> float:
        validate_s = info.data.get("validate_timeout_s")
        if info.data.get("redis_url") is not None and validate_s is not None and v <= validate_s:
            raise ValueError(
                f"must be longer than the validate timeout ({validate_s:g}s) so that one lease "
                "covers a whole validate call"
            )
        return v

    @field_validator("log_format", mode="before")
    @classmethod
    def _auto_format(cls, v: object) -> object:
        if isinstance(v, str):
            v = v.strip().lower()
            return None if v in ("", "auto") else v
        return v

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, v: object) -> object:
        return v.lower() if isinstance(v, str) else v

    @field_validator("service_token_ttl_s", "service_refresh_margin_s", mode="before")
    @classmethod
    def _json_object(cls, v: object) -> object:
        # Decoded here rather than by pydantic-settings, so a typo is one line in the error
        # list instead of an exception that hides every other problem.
        if isinstance(v, str):
            try:
                v = json.loads(v) if v.strip() else {}
            except ValueError:
                raise ValueError('not valid JSON (expected e.g. {"xero": 1800})') from None
        return v

    @field_validator("retry_methods", mode="before")
    @classmethod
    def _split_methods(cls, v: object) -> object:
        items = v.split(",") if isinstance(v, str) else v
        if isinstance(items, list | tuple | set | frozenset):
            return frozenset(str(m).strip().upper() for m in items if str(m).strip())
        return v

    @field_validator("retry_statuses", mode="before")
    @classmethod
    def _split_statuses(cls, v: object) -> object:
        items = v.split(",") if isinstance(v, str) else v
        if isinstance(items, list | tuple | set | frozenset):
            return frozenset(str(c).strip() for c in items if str(c).strip())
        return v

    @field_validator("retry_statuses")
    @classmethod
    def _statuses_range(cls, v: frozenset[int]) -> frozenset[int]:
        bad = sorted(c for c in v if not 400 <= c <= 599)
        if bad:
            raise ValueError(f"only 4xx/5xx statuses can be retried, not {bad}")
        return v

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
        problems = self.margin_problems()
        if problems:
            raise ValueError(_PROBLEM_SEPARATOR.join(problems))
        return self

    def margin_problems(self) -> list[str]:
        """Every margin that is not strictly between Apideck's window and its token lifetime,
        one line each, named by the setting to change."""
        window = self.upstream_refresh_window_s
        problems: list[str] = []
        if self.refresh_margin_s <= window:
            problems.append(
                f"APIDECK_PROXY_REFRESH_MARGIN_S: {self.refresh_margin_s:g}s must be above "
                f"Apideck's {window:g}s refresh window"
            )
        if self.refresh_margin_s >= self.token_ttl_s:
            problems.append(
                f"APIDECK_PROXY_REFRESH_MARGIN_S: {self.refresh_margin_s:g}s must be below "
                f"APIDECK_PROXY_TOKEN_TTL_S ({self.token_ttl_s:g}s)"
            )
        for service, margin in sorted(self.service_refresh_margin_s.items()):
            if margin <= window:
                problems.append(
                    f"APIDECK_PROXY_SERVICE_REFRESH_MARGIN_S[{service}]: {margin:g}s must be "
                    f"above Apideck's {window:g}s refresh window"
                )
        for service in sorted(set(self.service_token_ttl_s) | set(self.service_refresh_margin_s)):
            margin, ttl = self.margin_for(service), self.ttl_for(service)
            if margin >= ttl:
                problems.append(
                    f"{service}: refresh margin {margin:g}s must be below its token lifetime "
                    f"{ttl:g}s (set APIDECK_PROXY_SERVICE_REFRESH_MARGIN_S or "
                    f"APIDECK_PROXY_SERVICE_TOKEN_TTL_S for it)"
                )
        return problems

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
        for name, value in data.items():
            if isinstance(value, str) and "://" in value:
                data[name] = _URL_USERINFO.sub(r"\1********@", value)
            elif isinstance(value, list):
                data[name] = sorted(value)  # sets print in a stable order
        return data


def _scrubbed(text: str) -> str:
    return _URL_USERINFO_ANYWHERE.sub(r"\1********@", text)


SECRET_FIELDS = ("api_key", "redis_url")
# user:password@ in a URL (a gateway in front of Apideck may take basic auth)
_URL_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*://)[^/@]*@", re.I)
_URL_USERINFO_ANYWHERE = re.compile(r"([a-z][a-z0-9+.-]*://)[^/@\s]*@", re.I)
_PROBLEM_SEPARATOR = "\n"


class SettingsError(Exception):
    """All invalid settings at once, one readable line each."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def load_settings(env_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings from the environment (and `env_file`), reporting every error at once.

    Pydantic stops at a value that is not even JSON and skips cross-field checks once a field
    failed; so each failed field is retried with its default until every problem is listed.
    """
    if env_file is not None and not Path(env_file).is_file():
        raise SettingsError([f"env file {env_file}: not found"])
    lines: list[str] = []
    forced: dict[str, Any] = {}
    for _ in range(len(Settings.model_fields) + 1):
        try:
            settings = _build(env_file, {**overrides, **forced})
        except PydanticSettingsError as exc:
            match = re.search(r'field "([a-z0-9_]+)"', str(exc))
            if match is None or match.group(1) in forced:
                lines.append(f"settings: {str(exc).split(' from source')[0]}")
                break
            field = match.group(1)
            lines.append(f"APIDECK_PROXY_{field.upper()}: not valid JSON")
            forced[field] = Settings.model_fields[field].get_default(call_default_factory=True)
            continue
        except ValidationError as exc:
            new = [line for line in _lines(exc) if line not in lines]
            lines += new
            failed = {str(e["loc"][0]) for e in exc.errors() if e["loc"]} - set(forced)
            if not failed:
                break  # only cross-field problems left: all reported
            forced.update(
                {
                    name: Settings.model_fields[name].get_default(call_default_factory=True)
                    for name in failed
                    if name in Settings.model_fields
                }
            )
            continue
        if not lines:
            return settings
        break
    raise SettingsError(lines)


def _build(env_file: str | Path | None, values: dict[str, Any]) -> Settings:
    return Settings(_env_file=env_file, **values)  # type: ignore[call-arg]  # pydantic-settings init kwarg not in the generated signature


def _lines(exc: ValidationError) -> list[str]:
    lines: list[str] = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if not loc:  # a cross-field check: its own lines already name the settings
            message = str(err["msg"]).removeprefix("Value error, ")
            lines.extend(message.split(_PROBLEM_SEPARATOR))
            continue
        # Never echo the offending value: it may be a secret.
        message = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"APIDECK_PROXY_{loc.upper()}: {message}")
    return lines
