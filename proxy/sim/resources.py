"""Canned success bodies shaped like Unify's published responses, so the official SDK parses them.

Stateless builders only; they know nothing about tokens, connections or HTTP.
"""

from __future__ import annotations

from typing import Any

_CREATED_AT = "2024-05-01T12:00:00.000Z"
_UPDATED_AT = "2024-06-01T12:00:00.000Z"

_SERVICE_NAMES = {
    "salesforce": "Salesforce",
    "hubspot": "HubSpot",
    "pipedrive": "Pipedrive",
    "xero": "Xero",
    "quickbooks": "QuickBooks",
    "box": "Box",
    "google-drive": "Google Drive",
    "bamboohr": "BambooHR",
    "greenhouse": "Greenhouse",
    "jira": "Jira",
    "shopify": "Shopify",
    "zendesk": "Zendesk",
    "square": "Square",
    "twilio": "Twilio",
}


def _envelope(
    service: str, resource: str, operation: str, data: Any, *, status: int = 200
) -> dict[str, Any]:
    return {
        "status_code": status,
        "status": "OK" if status == 200 else "Created",
        "service": service,
        "resource": resource,
        "operation": operation,
        "data": data,
    }


def _page(service: str, resource: str, items: list[dict[str, Any]], url: str) -> dict[str, Any]:
    body = _envelope(service, resource, "all", items)
    body["meta"] = {
        "items_on_page": len(items),
        "cursors": {"previous": None, "current": None, "next": None},
    }
    body["links"] = {"previous": None, "current": url, "next": None}
    return body


def contact(contact_id: str) -> dict[str, Any]:
    n = sum(map(ord, contact_id)) % 97
    return {
        "id": contact_id,
        "name": f"Sim Contact {n}",
        "first_name": "Sim",
        "last_name": f"Contact {n}",
        "type": "customer",
        "company_name": "Simulated Inc.",
        "title": "Tester",
        "emails": [{"email": f"contact{n}@example.com", "type": "primary"}],
        "phone_numbers": [{"number": f"+1 555 01{n:02d}", "type": "primary"}],
        "tags": ["sim"],
        "updated_at": _UPDATED_AT,
        "created_at": _CREATED_AT,
    }


def contacts_page(service: str, url: str) -> dict[str, Any]:
    return _page(service, "contacts", [contact(f"contact-{i}") for i in (1, 2, 3)], url)


def contact_one(service: str, contact_id: str) -> dict[str, Any]:
    return _envelope(service, "contacts", "one", contact(contact_id))


def created(service: str, resource: str, new_id: str) -> dict[str, Any]:
    return _envelope(service, resource, "add", {"id": new_id}, status=201)


def invoice(invoice_id: str) -> dict[str, Any]:
    return {
        "id": invoice_id,
        "number": f"INV-{invoice_id}",
        "type": "standard",
        "customer": {"id": "customer-1", "display_name": "Simulated Customer"},
        "invoice_date": "2024-05-01",
        "due_date": "2024-05-31",
        "currency": "USD",
        "status": "authorised",
        "sub_total": 100.0,
        "total_tax": 21.0,
        "total": 121.0,
        "balance": 121.0,
        "updated_at": _UPDATED_AT,
        "created_at": _CREATED_AT,
    }


def invoices_page(service: str, url: str) -> dict[str, Any]:
    return _page(service, "invoices", [invoice(f"invoice-{i}") for i in (1, 2)], url)


def generic(
    service: str, method: str, resource: str, item_id: str | None, url: str, new_id: str
) -> tuple[int, dict[str, Any]]:
    """A plausible answer for any other unified path: list, one, add, update or delete."""
    if method == "POST":
        return 201, created(service, resource, new_id)
    if item_id is None:
        return 200, _page(service, resource, [{"id": f"{resource}-1"}], url)
    operation = {"GET": "one", "PATCH": "update", "PUT": "update", "DELETE": "delete"}
    return 200, _envelope(service, resource, operation.get(method, "one"), {"id": item_id})


def connection(unified_api: str, service_id: str, state: str) -> dict[str, Any]:
    """A Vault Connection object (vault.yml `Connection`)."""
    return {
        "id": f"{unified_api}+{service_id}",
        "service_id": service_id,
        "name": _SERVICE_NAMES.get(service_id, service_id.replace("-", " ").title()),
        "unified_api": unified_api,
        "state": state,
        "integration_state": "configured",
        "auth_type": "oauth2",
        "oauth_grant_type": "authorization_code",
        "status": "live",
        "enabled": True,
        "has_guide": False,
        "validation_support": True,
        "created_at": 1714564800000,
        "updated_at": 1717243200000,
    }


def connections_list(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"status_code": 200, "status": "OK", "data": items}


def connection_one(item: dict[str, Any]) -> dict[str, Any]:
    return {"status_code": 200, "status": "OK", "data": item}


def validated(unified_api: str, service_id: str, state: str) -> dict[str, Any]:
    """vault.yml `ValidateConnectionStateResponse`."""
    return {
        "status_code": 200,
        "status": "OK",
        "data": {"id": f"{unified_api}+{service_id}", "state": state},
    }
