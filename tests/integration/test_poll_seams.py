"""Polling and search seams (issue 11): finished or unpolled messages are not scheduled, a
dispatch is polled once, empty drains leave nothing, numbers are found by any spelling."""

import asyncio
import json
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from receiver.db import open_pool
from receiver.ingest.journal import journal_running
from receiver.polling.poller import Poller, http_client
from tests.conftest import AUTH, AiohttpClient, eventually, make_client
from tests.fakes import FakeProviders
from tests.integration.test_messente import post_report
from tests.integration.test_polling import (  # noqa: F401 - the fake fixture
    OMNI,
    SMS,
    dlr,
    fake,
    poll_settings,
    register_messente,
)
from tests.integration.test_providers import get_json, post_infobip
from tests.payloads import raw

Client = TestClient[Any, Any]


async def test_a_final_message_cannot_be_scheduled(db: asyncpg.Connection) -> None:
    await db.execute(
        "insert into messages (provider, key, status) values ('messente', 'm', 'sent')"
    )
    await db.execute("update messages set next_poll_at = now()")
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("update messages set status = 'delivered'")


async def test_a_message_that_becomes_final_leaves_the_poll_schedule(
    pclient: Client, db: asyncpg.Connection
) -> None:
    await register_messente(pclient)
    assert await db.fetchval("select next_poll_at is not null from messages") is True
    body = dlr(OMNI, SMS, "sms", "DELIVRD", "2024-05-02T10:15:03.004511")
    assert (await post_report(pclient, json.dumps(body).encode())).status == 200
    message = await get_json(pclient, f"/v1/messages/messente/{OMNI}")
    assert (message["status"], message["next_poll_at"]) == ("delivered", None)


@pytest.fixture
async def pclient(database_url: str, fake: FakeProviders, aiohttp_client: AiohttpClient) -> Client:  # noqa: F811
    client: Client = await make_client(
        aiohttp_client, poll_settings(database_url, fake, poll_min_interval=60.0)
    )
    return client


async def test_a_provider_no_account_polls_schedules_nothing(
    client: Client, db: asyncpg.Connection
) -> None:
    await register_messente(client)  # the default settings hold no Messente API user
    assert await db.fetchval("select count(*) from messages where next_poll_at is not null") == 0


async def test_infobip_delivered_to_operator_is_sent_and_never_stale(
    pclient: Client, db: asyncpg.Connection
) -> None:
    # Often the last report Infobip pushes: the operator has it, no handset report follows.
    assert (await post_infobip(pclient, raw("infobip", "sms_v3_report.json"))).status == 200
    message = await get_json(pclient, "/v1/messages/infobip/v3-msg-1")
    assert (message["status"], message["stale"], message["next_poll_at"]) == (
        "sent",
        False,
        None,
    )
    assert message["events"][-1]["provider_status"] == "DELIVERED_TO_OPERATOR"


async def test_a_mercury_dispatch_is_polled_once_for_all_its_recipients(
    database_url: str,
    fake: FakeProviders,  # noqa: F811
    db: asyncpg.Connection,
    aiohttp_client: AiohttpClient,
) -> None:
    settings = poll_settings(
        database_url, fake, poll_min_interval=60.0, poll_max_interval=120.0, poll_enabled=False
    )
    client: Client = await make_client(aiohttp_client, settings)
    recipients = [{"uniqueId": f"r{i}", "mobilePhone": f"69368622{i:02d}"} for i in range(250)]
    body = {"response": {"dispatch": 555}, "request": {"recipients": recipients}}
    assert (await client.post("/v1/messages/mercury", json=body, headers=AUTH)).status == 201
    fake.mercury["555"] = {"dispatchId": 555, "sendStatusId": 2, "messageTypeId": 1}
    await db.execute("update messages set next_poll_at = now() - interval '1 second'")
    async with (
        open_pool(database_url, 3) as pool,
        http_client(settings) as session,
        journal_running(pool, settings) as journal,
    ):
        poller = Poller(pool, journal, session, settings)
        task = asyncio.create_task(poller.run())

        async def nothing_due() -> bool:
            due = "select count(*) from messages where next_poll_at <= now()"
            return fake.count("mercury", "555") >= 1 and await db.fetchval(due) == 0

        await eventually(nothing_due)
        poller.stop()
        await task
    assert fake.count("mercury", "555") == 1


async def test_an_empty_infobip_drain_stores_nothing(
    database_url: str,
    fake: FakeProviders,  # noqa: F811
    db: asyncpg.Connection,
) -> None:
    settings = poll_settings(database_url, fake)
    async with (
        open_pool(database_url, 3) as pool,
        http_client(settings) as session,
        journal_running(pool, settings) as journal,
    ):
        poller = Poller(pool, journal, session, settings)
        task = asyncio.create_task(poller.run())

        async def drained_twice() -> bool:
            return fake.count("infobip") >= 8  # four queues, two rounds

        await eventually(drained_twice)
        poller.stop()
        await task
    assert await db.fetchval("select count(*) from journal") == 0


async def test_a_number_is_stored_as_e164_and_found_by_any_spelling(client: Client) -> None:
    # Infobip writes 41793026727; the search may say +41..., 0041..., or "+" lost to a space.
    assert (await post_infobip(client, raw("infobip", "sms_v3_report.json"))).status == 200
    message = await get_json(client, "/v1/messages/infobip/v3-msg-1")
    assert message["recipient"] == "+41793026727"
    for spelling in ["+41793026727", "%2B41 79 302 67 27", "0041793026727", "+41793026727"]:
        found = await get_json(client, f"/v1/messages?recipient={spelling}")
        assert [m["message_id"] for m in found["messages"]] == ["v3-msg-1"], spelling
    nothing = await get_json(client, "/v1/messages?recipient=%2B41793026728")
    assert nothing["messages"] == []
