"""Channels that reports do not name, end to end: from the registration, kept through reports."""

from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from tests.conftest import AUTH
from tests.integration.test_providers import get_json, post_comapi, post_infobip
from tests.payloads import raw

Client = TestClient[Any, Any]


async def test_a_whatsapp_report_keeps_the_channel_the_message_was_registered_with(
    client: Client,
) -> None:
    registration = {
        "response": {"messages": [{"messageId": "wa-msg-1", "to": "441134960000"}]},
        "channel": "whatsapp",
    }
    resp = await client.post("/v1/messages/infobip", json=registration, headers=AUTH)
    assert resp.status == 201, await resp.text()
    assert (await post_infobip(client, raw("infobip", "whatsapp_report.json"))).status == 200
    message = await get_json(client, "/v1/messages/infobip/wa-msg-1")
    assert (message["status"], message["channel"], message["group"]) == (
        "delivered",
        "whatsapp",
        None,
    )


async def test_an_unregistered_whatsapp_report_is_not_called_sms(client: Client) -> None:
    assert (await post_infobip(client, raw("infobip", "whatsapp_report.json"))).status == 200
    message = await get_json(client, "/v1/messages/infobip/wa-msg-1")
    assert (message["status"], message["channel"]) == ("delivered", None)


async def test_a_bad_registration_channel_is_a_clear_400(client: Client) -> None:
    for channel in ["", "wh\u0000ats", "x" * 51, 7]:
        registration = {"response": {"messages": [{"messageId": "m"}]}, "channel": channel}
        resp = await client.post("/v1/messages/infobip", json=registration, headers=AUTH)
        assert resp.status == 400, channel
        assert (await resp.json())["error"]["code"] == "invalid_body"


async def test_comapi_inbound_message_creates_no_message(
    client: Client, db: asyncpg.Connection
) -> None:
    resp = await post_comapi(client, raw("comapi", "inbound.json"))
    assert resp.status == 200
    await get_json(client, "/v1/messages?provider=comapi")  # waits for projection
    assert await db.fetchval("select count(*) from messages") == 0
    assert await db.fetchval("select count(*) from journal where provider = 'comapi'") == 1
