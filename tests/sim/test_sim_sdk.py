"""The official apideck_unify SDK parses the simulator's answers, errors included."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from apideck_unify import Apideck, models
from sim_helpers import API_KEY, APP_ID, fast

from proxy.sim import SIM_STATE, create_sim_app


@pytest.fixture
async def sdk(aiohttp_server: Any) -> AsyncIterator[Apideck]:
    server = await aiohttp_server(create_sim_app(fast(mode="rotate")))
    async with Apideck(
        api_key=API_KEY,
        app_id=APP_ID,
        consumer_id="sdk-consumer",
        server_url=f"http://127.0.0.1:{server.port}",
    ) as client:
        yield client


async def test_sdk_parses_contacts_list_get_and_create(sdk: Apideck) -> None:
    """contacts.list/get/create deserialise into the SDK's typed responses."""
    page = await sdk.crm.contacts.list_async(service_id="salesforce")
    assert page is not None
    contacts = page.get_contacts_response
    assert contacts is not None
    assert contacts.service == "salesforce"
    assert [c.id for c in contacts.data] == ["contact-1", "contact-2", "contact-3"]
    assert page.headers["x-apideck-request-id"]

    one = await sdk.crm.contacts.get_async(id="contact-2")
    assert one.get_contact_response is not None
    assert one.get_contact_response.data.id == "contact-2"

    made = await sdk.crm.contacts.create_async(first_name="Ada", last_name="Lovelace")
    assert made.create_contact_response is not None
    assert made.create_contact_response.data.id.startswith("contact-")


async def test_sdk_parses_invoices_list(sdk: Apideck) -> None:
    """accounting.invoices.list deserialises into GetInvoicesResponse."""
    page = await sdk.accounting.invoices.list_async()
    assert page is not None
    assert page.get_invoices_response is not None
    assert page.get_invoices_response.data[0].status == models.InvoiceStatus.AUTHORISED


async def test_sdk_parses_vault_connections_and_validate(sdk: Apideck) -> None:
    """vault.connections.list and vault.validate_connection.state deserialise."""
    listed = await sdk.vault.connections.list_async(api="crm")
    assert listed.get_connections_response is not None
    [conn] = listed.get_connections_response.data
    assert (conn.service_id, conn.unified_api, conn.state) == ("salesforce", "crm", "callable")

    validated = await sdk.vault.validate_connection.state_async(
        unified_api="crm", service_id="salesforce"
    )
    assert validated.validate_connection_state_response is not None
    assert validated.validate_connection_state_response.data.state == "callable"


async def test_sdk_parses_the_401_detail_object(aiohttp_server: Any) -> None:
    """The SDK raises UnauthorizedResponse with the detail object for a revoked connection."""
    server = await aiohttp_server(create_sim_app(fast(mode="strict")))
    url = f"http://127.0.0.1:{server.port}"
    assert server.app[SIM_STATE].invalidate(consumer_id="c", unified_api="crm") == 1
    async with Apideck(api_key=API_KEY, app_id=APP_ID, consumer_id="c", server_url=url) as sdk:
        with pytest.raises(models.UnauthorizedResponse) as caught:
            await sdk.crm.contacts.list_async()
    detail = caught.value.data.detail
    assert isinstance(detail, models.DetailUnauthorizedResponse2)
    assert detail.type == "refresh_token_connector_error"
    assert detail.debug is not None
