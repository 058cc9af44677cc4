"""Every error the simulator answers, in Apideck's envelope.

`SimError` carries status, type_name, message and detail; `body()` renders
`{status_code, error, type_name, message, detail, ref}`. Knows nothing about aiohttp.
"""

from __future__ import annotations

import time
from http import HTTPStatus
from typing import Any

from proxy.sim.state import ConnectionKey, Outcome


class SimError(Exception):
    """An error response in Apideck's envelope."""

    def __init__(
        self,
        status: int,
        type_name: str,
        message: str,
        detail: str | dict[str, Any] | None = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type_name = type_name
        self.message = message
        self.detail = detail
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "status_code": self.status,
            "error": _reason(self.status),
            "type_name": self.type_name,
            "message": self.message,
            "detail": self.detail,
            "ref": f"https://developers.apideck.com/errors#{self.type_name.lower()}",
        }


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def unauthorized(message: str, detail: str) -> SimError:
    return SimError(401, "UnauthorizedError", message, detail)


def missing_header(name: str) -> SimError:
    return SimError(
        400,
        "RequestHeadersValidationError",
        "Invalid Params",
        f"Missing Header: {name}",
    )


def ambiguous_service(unified_api: str, services: list[str]) -> SimError:
    return SimError(
        400,
        "RequestHeadersValidationError",
        "Multiple connections found, specify the service",
        {
            "missing": [{"x-apideck-service-id": "required"}],
            "services": services,
            "unified_api": unified_api,
        },
    )


def connection_not_found(unified_api: str, service_id: str | None) -> SimError:
    target = f"{unified_api}+{service_id}" if service_id else unified_api
    return SimError(
        404,
        "ConnectionNotFoundError",
        "Connection not found",
        f"No connection found for {target}",
    )


def route_not_found(path: str) -> SimError:
    return SimError(404, "EntityNotFoundError", "Unknown route", f"No route matches {path}")


def invalid_body(detail: str) -> SimError:
    return SimError(400, "RequestValidationError", "Invalid request body", detail)


def _refresh_debug(error: str, description: str) -> dict[str, Any]:
    return {
        "response": {
            "statusCode": 400,
            "data": {"error": error, "error_description": description},
        },
    }


def for_outcome(outcome: Outcome, key: ConnectionKey) -> SimError:
    """The 401 Apideck answers when a request or validate meets a token problem."""
    target = f"{key.unified_api}+{key.service_id}"
    if outcome is Outcome.TOKEN_ROTATED:
        return SimError(
            401,
            "ConnectorCredentialsError",
            "The access token used for this request is no longer valid",
            {
                "type": "token_expired",
                "message": f"Access token for {target} was rotated while the request was in use",
                "debug": {"response": {"statusCode": 401, "data": {"error": "invalid_token"}}},
            },
        )
    if outcome is Outcome.INVALID_GRANT:
        return SimError(
            401,
            "ConnectorCredentialsError",
            "Token refresh failed with 400 error: invalid_grant",
            {
                "type": "refresh_token_connector_error",
                "message": f"Token refresh for {target} failed: invalid_grant",
                "debug": _refresh_debug("invalid_grant", "refresh token already used"),
            },
        )
    if outcome is Outcome.REVOKED:
        return SimError(
            401,
            "ConnectorCredentialsError",
            "Token refresh failed with 400 error: invalid_grant",
            {
                "type": "refresh_token_connector_error",
                "message": (
                    f"Token refresh for {target} failed: invalid_grant "
                    "(refresh token reuse detected, token family revoked)"
                ),
                "debug": _refresh_debug("invalid_grant", "token family revoked"),
            },
        )
    if outcome is Outcome.INVALID:
        return SimError(
            401,
            "ConnectorCredentialsError",
            "Connection is invalid and needs to be re-authorized",
            {
                "type": "refresh_token_connector_error",
                "message": f"Connection {target} is invalid: refresh token revoked",
                "debug": _refresh_debug("invalid_grant", "token family revoked"),
            },
        )
    raise ValueError(f"{outcome} is not an error")


def refresh_cooldown(cooldown_s: float) -> SimError:
    """Vault's fatal answer while a failed refresh is cooling down (vault.yml debug fields)."""
    cooldown_ms = round(cooldown_s * 1000)
    return SimError(
        401,
        "ConnectorCredentialsError",
        "Token refresh failed with 401 error",
        {
            "type": "refresh_token_connector_error",
            "message": "Token refresh is in cooldown after a failed attempt",
            "debug": {
                "response": {"statusCode": 401, "data": {"error": "invalid_grant"}},
                "retry_after_ms": round(time.time() * 1000) + cooldown_ms,
                "cooldown_remaining_ms": cooldown_ms,
            },
        },
    )
