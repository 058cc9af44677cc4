"""HTTP face of the simulator: Unify data paths, the Vault calls, fault acting and `/_sim/` control.

The only module that knows aiohttp; token rules live in `state`, error bodies in `errors`.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from proxy.sim import errors, resources
from proxy.sim.config import UNIFIED_APIS, SimConfig
from proxy.sim.errors import SimError
from proxy.sim.faults import FaultRule, parse_rule
from proxy.sim.state import Channel, Connection, Outcome, SimState

SIM_STATE = web.AppKey("sim_state", SimState)
# Set on shutdown so that injected hangs end and the runner does not wait out its timeout.
_CLOSING = web.AppKey("sim_closing", asyncio.Event)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_sim_app(config: SimConfig) -> web.Application:
    """The simulator as an aiohttp application; its state is `app[SIM_STATE]`."""
    app = web.Application(middlewares=[_middleware])
    app[SIM_STATE] = SimState(config)
    app[_CLOSING] = asyncio.Event()
    app.on_response_prepare.append(_stamp_request_id)
    app.on_shutdown.append(_wake_hangs)

    app.router.add_get("/_sim/counters", _counters)
    app.router.add_post("/_sim/reset", _reset)
    app.router.add_post("/_sim/connections/expire", _expire)
    app.router.add_post("/_sim/connections/reauthorize", _reauthorize)
    app.router.add_post("/_sim/connections/invalidate", _invalidate)
    app.router.add_get("/_sim/faults", _list_faults)
    app.router.add_post("/_sim/faults", _add_fault)
    app.router.add_delete("/_sim/faults", _clear_faults)

    app.router.add_get("/vault/connections", _vault_list)
    app.router.add_get("/vault/connections/{unified_api}/{service_id}", _vault_one)
    app.router.add_post("/vault/connections/{unified_api}/{service_id}/validate", _vault_validate)

    app.router.add_route("*", "/{unified_api}/{tail:.+}", _data)
    return app


async def start_sim(
    config: SimConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    keepalive_timeout_s: float = 75.0,
) -> tuple[web.AppRunner, int]:
    """Serve the simulator in the running loop; returns the runner (call `cleanup()`) and port.

    `keepalive_timeout_s` is how long an idle keep-alive connection stays open before the
    server closes it, for testing clients against servers that drop idle connections.
    """
    runner = web.AppRunner(
        create_sim_app(config), keepalive_timeout=keepalive_timeout_s, access_log=None
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, int(bound)


# -- plumbing ------------------------------------------------------------------------------


async def _stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("x-apideck-request-id", str(uuid.uuid4()))


async def _wake_hangs(app: web.Application) -> None:
    app[_CLOSING].set()


def _channel(path: str) -> Channel | None:
    if path.startswith("/vault/"):
        return "vault"
    first = path.lstrip("/").split("/", 1)[0]
    return "data" if first in UNIFIED_APIS else None


def _error_response(exc: SimError) -> web.Response:
    return web.json_response(exc.body(), status=exc.status, headers=exc.headers)


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except SimError as exc:
        return _error_response(exc)
    except web.HTTPNotFound:
        return _error_response(errors.route_not_found(request.path))
    except web.HTTPMethodNotAllowed as exc:
        return _error_response(
            SimError(405, "MethodNotAllowedError", "Method not allowed", exc.reason)
        )


@web.middleware
async def _middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    channel = _channel(request.path)
    if channel is None:
        return await _answer(request, handler)
    state = request.app[SIM_STATE]
    rule = state.faults.fire(request.method, request.path)
    if rule is None:
        response: web.StreamResponse | None = await _answer(request, handler)
    else:
        response = await _act_out(rule, request, handler)
    state.record(channel, None if response is None else response.status)
    if response is None:
        # The transport is already gone; aiohttp discards whatever we hand back.
        return web.Response(status=499)
    return response


async def _act_out(
    rule: FaultRule, request: web.Request, handler: Handler
) -> web.StreamResponse | None:
    """Play one fault; None means the client got no complete response."""
    if rule.delay_s > 0:
        closing = request.app[_CLOSING]
        try:
            await asyncio.wait_for(closing.wait(), timeout=rule.delay_s)
        except TimeoutError:
            pass
        else:
            return None
    if rule.kind == "delay":
        return await _answer(request, handler)
    if rule.kind == "cooldown":
        return _error_response(errors.refresh_cooldown(rule.cooldown_s))
    if rule.kind == "status":
        return _fault_status(rule)
    await request.read()
    transport = request.transport
    if rule.kind == "reset":
        if transport is not None:
            transport.abort()
        return None
    # "truncate": promise more bytes than we send, then hang up mid-body.
    full = json.dumps(resources.contacts_page("sim", str(request.url))).encode()
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    response.content_length = len(full)
    await response.prepare(request)
    await response.write(full[: len(full) // 2])
    if transport is not None:
        transport.close()
    return None


def _fault_status(rule: FaultRule) -> web.Response:
    headers: dict[str, str] = {}
    if rule.retry_after_s is not None:
        # "%g" keeps whole seconds as RFC 9110 delay-seconds and lets tests use fractions.
        headers["Retry-After"] = f"{rule.retry_after_s:g}"
    if rule.body is not None:
        text = rule.body if isinstance(rule.body, str) else json.dumps(rule.body)
        return web.Response(
            status=rule.status, text=text, content_type="application/json", headers=headers
        )
    type_name = {
        429: "ConnectorRateLimitError",
        502: "ConnectorExecutionError",
        503: "ServiceUnavailableError",
        504: "ConnectorExecutionError",
    }.get(rule.status, "UnexpectedError" if rule.status >= 500 else "RequestValidationError")
    exc = SimError(rule.status, type_name, "Injected fault", f"fault {rule.id}", headers=headers)
    return _error_response(exc)


# -- request checks ------------------------------------------------------------------------


def _consumer(request: web.Request, state: SimState) -> str:
    """Apideck's header checks in Apideck's order; returns the consumer id."""
    auth = request.headers.get("Authorization", "")
    scheme, _, key = auth.partition(" ")
    if not auth:
        raise errors.unauthorized("Unauthorized Request", "Missing authentication")
    if scheme.lower() != "bearer" or key.strip() not in state.config.api_keys:
        raise errors.unauthorized("Unauthorized Request", "Invalid API key")
    app_id = request.headers.get("x-apideck-app-id")
    if not app_id:
        raise errors.missing_header("x-apideck-app-id")
    if app_id != state.config.app_id:
        raise errors.unauthorized("Unauthorized Request", "Invalid application id")
    consumer_id = request.headers.get("x-apideck-consumer-id")
    if not consumer_id:
        raise errors.missing_header("x-apideck-consumer-id")
    return consumer_id


def _service(state: SimState, unified_api: str, requested: str | None) -> str:
    services = state.services_for(unified_api)
    if requested:
        if requested not in services:
            raise errors.connection_not_found(unified_api, requested)
        return requested
    if not services:
        raise errors.connection_not_found(unified_api, None)
    if len(services) > 1:
        raise errors.ambiguous_service(unified_api, services)
    return services[0]


async def _json_object(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError as exc:
        raise errors.invalid_body(f"Body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise errors.invalid_body("Body must be a JSON object")
    return body


# -- unified data paths --------------------------------------------------------------------


async def _data(request: web.Request) -> web.StreamResponse:
    state = request.app[SIM_STATE]
    unified_api = request.match_info["unified_api"]
    if unified_api not in UNIFIED_APIS:
        raise errors.route_not_found(request.path)
    consumer_id = _consumer(request, state)
    service_id = _service(state, unified_api, request.headers.get("x-apideck-service-id"))
    conn = state.connection(consumer_id, unified_api, service_id)
    try:
        if request.method in ("POST", "PUT", "PATCH"):
            await _json_object(request)
        outcome = await state.serve(conn)
        if outcome is not Outcome.OK:
            raise errors.for_outcome(outcome, conn.key)
        response = _data_body(request, state, unified_api, service_id)
    except SimError as exc:
        response = _error_response(exc)
    state.record_for(conn, response.status)
    return response


def _data_body(
    request: web.Request, state: SimState, unified_api: str, service_id: str
) -> web.Response:
    parts = request.match_info["tail"].strip("/").split("/")
    resource = parts[0]
    item_id = parts[1] if len(parts) > 1 else None
    url = str(request.url)
    method = request.method
    if unified_api == "crm" and resource == "contacts":
        if method == "GET" and item_id is None:
            return web.json_response(resources.contacts_page(service_id, url))
        if method == "GET" and item_id is not None:
            return web.json_response(resources.contact_one(service_id, item_id))
        if method == "POST" and item_id is None:
            new_id = state.next_id("contact")
            return web.json_response(resources.created(service_id, "contacts", new_id), status=201)
    if unified_api == "accounting" and resource == "invoices" and method == "GET" and not item_id:
        return web.json_response(resources.invoices_page(service_id, url))
    status, body = resources.generic(
        service_id, method, resource, item_id, url, state.next_id(resource)
    )
    return web.json_response(body, status=status)


# -- vault ---------------------------------------------------------------------------------


def _path_connection(request: web.Request) -> Connection:
    """The caller's connection named by a /vault/connections/{api}/{service} path."""
    state = request.app[SIM_STATE]
    consumer_id = _consumer(request, state)
    unified_api = request.match_info["unified_api"]
    service_id = request.match_info["service_id"]
    if service_id not in state.services_for(unified_api):
        raise errors.connection_not_found(unified_api, service_id)
    return state.connection(consumer_id, unified_api, service_id)


async def _vault_validate(request: web.Request) -> web.Response:
    conn = _path_connection(request)
    outcome = await request.app[SIM_STATE].validate(conn)
    if outcome is not Outcome.OK:
        raise errors.for_outcome(outcome, conn.key)
    key = conn.key
    return web.json_response(resources.validated(key.unified_api, key.service_id, conn.status))


async def _vault_list(request: web.Request) -> web.Response:
    state = request.app[SIM_STATE]
    consumer_id = _consumer(request, state)
    api = request.query.get("api")
    apis = [api] if api else sorted(state.config.services)
    items = [
        resources.connection(
            unified_api, service_id, state.connection(consumer_id, unified_api, service_id).status
        )
        for unified_api in apis
        for service_id in state.services_for(unified_api)
    ]
    return web.json_response(resources.connections_list(items))


async def _vault_one(request: web.Request) -> web.Response:
    conn = _path_connection(request)
    item = resources.connection(conn.key.unified_api, conn.key.service_id, conn.status)
    return web.json_response(resources.connection_one(item))


# -- /_sim control -------------------------------------------------------------------------


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise errors.invalid_body(f"{name} must be a string")
    return value


async def _counters(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIM_STATE].counters())


def _selection(body: dict[str, Any]) -> dict[str, str | None]:
    """Which connections a control call is about (any of the three may be omitted)."""
    return {
        name: _optional_str(body, name) for name in ("consumer_id", "unified_api", "service_id")
    }


async def _reset(request: web.Request) -> web.Response:
    body = await _json_object(request)
    forget = bool(body.get("forget_connections", False))
    request.app[SIM_STATE].reset(forget_connections=forget)
    return web.json_response({"ok": True, "forgot_connections": forget})


async def _expire(request: web.Request) -> web.Response:
    body = await _json_object(request)
    expires_in_s = body.get("expires_in_s")
    if isinstance(expires_in_s, bool) or not isinstance(expires_in_s, int | float):
        raise errors.invalid_body("expires_in_s must be a number")
    matched = request.app[SIM_STATE].expire(float(expires_in_s), **_selection(body))
    return web.json_response({"matched": matched})


async def _reauthorize(request: web.Request) -> web.Response:
    body = await _json_object(request)
    matched = request.app[SIM_STATE].reauthorize(**_selection(body))
    return web.json_response({"matched": matched})


async def _invalidate(request: web.Request) -> web.Response:
    body = await _json_object(request)
    matched = request.app[SIM_STATE].invalidate(**_selection(body))
    return web.json_response({"matched": matched})


async def _list_faults(request: web.Request) -> web.Response:
    rules = request.app[SIM_STATE].faults.rules()
    return web.json_response({"faults": [rule.to_json() for rule in rules]})


async def _add_fault(request: web.Request) -> web.Response:
    body = await _json_object(request)
    try:
        rule = parse_rule(body)
    except ValueError as exc:
        raise errors.invalid_body(str(exc)) from exc
    return web.json_response(request.app[SIM_STATE].add_fault(rule).to_json(), status=201)


async def _clear_faults(request: web.Request) -> web.Response:
    state = request.app[SIM_STATE]
    cleared = len(state.faults.rules())
    state.clear_faults()
    return web.json_response({"cleared": cleared})
