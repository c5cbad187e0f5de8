"""The poller against fake provider APIs over real HTTP: statuses advance, Infobip reports are
fetched once and all stored, two pollers never drain one account at once, 429s and outages
back off without losing anything."""

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from itertools import pairwise
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr
from structlog.testing import capture_logs

from receiver.db import open_pool
from receiver.ingest.journal import journal_running
from receiver.ingest.projector import projector_running
from receiver.polling.poller import Poller, http_client
from receiver.providers import messente
from receiver.settings import Settings
from tests.conftest import (
    AUTH,
    MESSENTE_PASSWORD,
    AiohttpClient,
    eventually,
    make_client,
    make_settings,
    projected,
)
from tests.fakes import (
    COMAPI_AUTH,
    INFOBIP_KEY,
    MERCURY_AUTH,
    MESSENTE_AUTH,
    Failure,
    FakeProviders,
    infobip_messages_api_report,
    infobip_report,
)
from tests.payloads import load

Client = TestClient[Any, Any]


@pytest.fixture
async def fake(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> FakeProviders:
    providers = FakeProviders()
    server = await aiohttp_server(providers.app())
    providers.base = str(server.make_url("")).rstrip("/")  # type: ignore[attr-defined]
    return providers


def poll_settings(database_url: str, fake: FakeProviders, **overrides: Any) -> Settings:
    base: str = fake.base  # type: ignore[attr-defined]
    values: dict[str, Any] = {
        "forward_enabled": False,
        "poll_min_interval": 0.1,
        "poll_max_interval": 0.4,
        "infobip_poll_interval": 0.1,
        "poll_timeout": 2.0,
        "messente_api_username": MESSENTE_AUTH[0],
        "messente_api_password": SecretStr(MESSENTE_AUTH[1]),
        "infobip_api_key": SecretStr(INFOBIP_KEY),
        "comapi_api_username": COMAPI_AUTH[0],
        "comapi_api_password": SecretStr(COMAPI_AUTH[1]),
        "mercury_username": MERCURY_AUTH[0],
        "mercury_password": SecretStr(MERCURY_AUTH[1]),
        "messente_base_url": base,
        "infobip_base_url": base,
        "comapi_base_url": base,
        "mercury_base_url": base,
    }
    values.update(overrides)
    return make_settings(database_url, **values)


@pytest.fixture
async def pclient(database_url: str, fake: FakeProviders, aiohttp_client: AiohttpClient) -> Client:
    client: Client = await make_client(aiohttp_client, poll_settings(database_url, fake))
    return client


async def status_of(client: Client, provider: str, id_: str) -> str:
    resp = await client.get(f"/v1/messages/{provider}/{id_}", headers=AUTH)
    body = await resp.json()
    return str(body.get("status"))


def dlr(
    omni: str, message_id: str, channel: str, status: str, ts: str, err: int = 0
) -> dict[str, Any]:
    return {
        "omnimessage_id": omni,
        "message_id": message_id,
        "channel": channel,
        "status": status,
        "err": err,
        "timestamp": ts,
    }


async def register_messente(client: Client) -> None:
    body = {
        "response": load("messente", "send_response_viber_sms.json"),
        "request": load("messente", "send_request_viber_sms.json"),
    }
    resp = await client.post("/v1/messages/messente", json=body, headers=AUTH)
    assert resp.status == 201


OMNI = "d7248cda-6c1a-4436-acf5-aaf249bb67d3"
VIBER = "0b6a9c1e-7a1f-4d7e-9b0e-2f3c4d5e6f70"
SMS = "fr593ce7-1c2d-4e5f-5k2n-a1b2c3d4e5f6"


async def test_messente_message_is_polled_until_final_then_left_alone(
    pclient: Client, fake: FakeProviders
) -> None:
    fake.messente[OMNI] = [dlr(OMNI, VIBER, "viber", "ACK", "2024-05-02T10:00:00")]
    await register_messente(pclient)

    async def sent() -> bool:
        return await status_of(pclient, "messente", OMNI) == "sent"

    await eventually(sent)
    fake.messente[OMNI] = [
        dlr(OMNI, VIBER, "viber", "EXPIRED", "2024-05-02T10:05:00", err=2),
        dlr(OMNI, SMS, "sms", "DELIVRD", "2024-05-02T10:05:09"),
    ]

    async def delivered() -> bool:
        return await status_of(pclient, "messente", OMNI) == "delivered"

    await eventually(delivered)
    calls = fake.count("messente", OMNI)
    await asyncio.sleep(1.0)
    assert fake.count("messente", OMNI) == calls  # final: no more polls
    message = await (await pclient.get(f"/v1/messages/messente/{OMNI}", headers=AUTH)).json()
    assert {e["source"] for e in message["events"]} == {"send", "poll"}
    assert [(a["channel"], a["status"]) for a in message["attempts"]] == [
        ("viber", "expired"),
        ("sms", "delivered"),
    ]


async def test_a_report_both_pushed_and_polled_is_one_event(
    pclient: Client, fake: FakeProviders, db: asyncpg.Connection
) -> None:
    ack = dlr(OMNI, VIBER, "viber", "ACK", "2024-05-02T10:00:00")
    body = json.dumps(ack).encode()
    headers = {"X-Messente-Signature": messente.sign(MESSENTE_PASSWORD, body)}
    assert (await pclient.post("/webhooks/messente", data=body, headers=headers)).status == 200
    fake.messente[OMNI] = [ack]

    async def polled() -> bool:
        # The fake counts a poll when it answers; its journal row commits a moment later.
        journaled = await db.fetchval("select count(*) from journal where source = 'poll'")
        return fake.count("messente", OMNI) >= 2 and journaled >= 2

    await eventually(polled)
    await projected(pclient.app)
    assert await db.fetchval("select count(*) from events where provider_status = 'ACK'") == 1


async def test_infobip_reports_are_fetched_once_and_every_one_stored(
    pclient: Client, fake: FakeProviders, db: asyncpg.Connection
) -> None:
    for i in range(2500):
        fake.infobip["/sms/1/reports"].append(infobip_report(f"sms1-{i}"))
    for i in range(300):
        fake.infobip["/sms/3/reports"].append(infobip_report(f"sms3-{i}", 2, 9))
    for i in range(10):
        fake.infobip["/omni/1/reports"].append({**infobip_report(f"omni-{i}"), "channel": "VIBER"})
    for i in range(20):
        fake.infobip["/messages-api/1/reports"].append(infobip_messages_api_report(f"ma-{i}"))

    async def all_stored() -> bool:
        return bool(await db.fetchval("select count(*) from events") == 2830)

    await eventually(all_stored, within=30)
    assert len(fake.served) == 2830
    assert set(Counter(fake.served).values()) == {1}
    assert all(not q for q in fake.infobip.values())
    assert await db.fetchval("select count(*) from messages where status = 'failed'") == 300
    whatsapp = await db.fetch("select recipient, status from messages where channel = 'whatsapp'")
    assert len(whatsapp) == 20
    assert {(r["recipient"], r["status"]) for r in whatsapp} == {
        ("+385981178000", "delivered")
    }  # E.164
    # Each call's batch is kept raw: at most 1000 reports a call.
    sizes = await db.fetch(
        "select jsonb_array_length((convert_from(body, 'utf8')::jsonb)->'results') as n "
        "from journal where source = 'poll' and provider = 'infobip'"
    )
    assert max(r["n"] for r in sizes) == 1000


async def test_two_pollers_never_drain_one_infobip_account_at_once(
    database_url: str, fake: FakeProviders, db: asyncpg.Connection
) -> None:
    settings = poll_settings(database_url, fake)
    fake.delay["infobip"] = 0.05
    for i in range(3000):
        fake.infobip["/sms/1/reports"].append(infobip_report(f"two-{i}"))

    drained = asyncio.Event()

    async def poller() -> None:
        async with (
            open_pool(database_url, 4) as pool,
            http_client(settings) as session,
            journal_running(pool, settings) as journal,
            projector_running(pool, settings),
        ):
            instance = Poller(pool, journal, session, settings)
            task = asyncio.create_task(instance.run())
            await drained.wait()
            instance.stop()
            await task

    async def watch() -> None:
        async def all_stored() -> bool:
            return bool(await db.fetchval("select count(*) from events") == 3000)

        try:
            await eventually(all_stored, within=30)
            await asyncio.sleep(0.3)  # both keep trying a few more rounds
        finally:
            drained.set()

    await asyncio.gather(poller(), poller(), watch())
    assert fake.max_in_flight == 1
    assert set(Counter(fake.served).values()) == {1}
    assert await db.fetchval("select count(*) from events") == 3000


async def test_infobip_outage_and_429_back_off_and_lose_nothing(
    pclient: Client, fake: FakeProviders, db: asyncpg.Connection
) -> None:
    fake.failures["infobip"].extend(
        [Failure(503), Failure(500), Failure(429, retry_after="1"), Failure(502)]
    )
    for i in range(50):
        fake.infobip["/sms/1/reports"].append(infobip_report(f"out-{i}"))

    async def stored() -> bool:
        return bool(await db.fetchval("select count(*) from events") == 50)

    await eventually(stored, within=30)
    (limited_at,) = [t for p, status, t in fake.failed if p == "infobip" and status == 429]
    next_call = min(t for p, _, t in fake.calls if p == "infobip" and t > limited_at)
    # The call after the 429 waited for its Retry-After.
    assert next_call - limited_at >= 0.9
    assert set(Counter(fake.served).values()) == {1}


async def test_an_infobip_queue_the_account_cannot_read_does_not_hold_up_the_others(
    pclient: Client, fake: FakeProviders, db: asyncpg.Connection
) -> None:
    # An account without the Messages API: its queue answers 403 on every call. That queue
    # backs off on its own, doubling; the SMS queue keeps being drained every round.
    refused = "/messages-api/1/reports"
    fake.refused.add(refused)

    async def refused_five_times() -> bool:
        return fake.count("infobip", refused) >= 5

    await eventually(refused_five_times)
    # A pause shared by every queue would now be 3 s or more.
    fake.infobip["/sms/1/reports"].append(infobip_report("after"))

    async def stored() -> bool:
        return bool(await db.fetchval("select count(*) from events") == 1)

    await eventually(stored, within=1.5)
    times = [t for p, path, t in fake.calls if p == "infobip" and path == refused]
    gaps = [later - earlier for earlier, later in pairwise(times)]
    assert gaps[3] > 2 * gaps[0]


async def test_messente_429_and_slow_answers_back_off(
    database_url: str, fake: FakeProviders, aiohttp_client: AiohttpClient
) -> None:
    settings = poll_settings(database_url, fake, poll_timeout=0.3)
    client = await make_client(aiohttp_client, settings)
    fake.failures["messente"].extend([Failure(200, delay=1.0), Failure(429, retry_after="1")])
    fake.messente[OMNI] = [dlr(OMNI, SMS, "sms", "DELIVRD", "2024-05-02T10:05:09")]
    await register_messente(client)

    async def delivered() -> bool:
        return await status_of(client, "messente", OMNI) == "delivered"

    await eventually(delivered, within=20)
    (limited_at,) = [t for p, status, t in fake.failed if p == "messente" and status == 429]
    next_call = min(t for p, _, t in fake.calls if p == "messente" and t > limited_at)
    assert next_call - limited_at >= 0.9  # Retry-After honoured


async def test_comapi_poll_gives_channel_attempts(pclient: Client, fake: FakeProviders) -> None:
    body = {"response": load("comapi", "send_single_response.json")}
    assert (await pclient.post("/v1/messages/comapi", json=body, headers=AUTH)).status == 201
    key = "d8e296bb-97c4-4495-b98f-1e32e0b11628"
    fake.comapi[key] = {
        "messageId": key,
        "status": "delivered",
        "rules": ["fbMessenger", "sms"],
        "statusDetails": {
            "channel": "sms",
            "channelStatus": {
                "fbMessenger": {"status": "failed", "updatedOn": "2024-05-02T10:00:01.000Z"},
                "sms": {"status": "delivered", "updatedOn": "2024-05-02T10:00:09.000Z"},
            },
        },
        "to": {"phoneNumber": "447123123123"},
    }

    async def delivered() -> bool:
        return await status_of(pclient, "comapi", key) == "delivered"

    await eventually(delivered)
    message = await (await pclient.get(f"/v1/messages/comapi/{key}", headers=AUTH)).json()
    assert {(a["channel"], a["status"]) for a in message["attempts"]} == {
        ("fbMessenger", "failed"),
        ("sms", "delivered"),
    }


async def test_mercury_dispatch_is_polled_until_queued_and_applies_to_valid_recipients(
    pclient: Client, fake: FakeProviders
) -> None:
    body = {
        "response": load("mercury", "send_response.json"),
        "request": load("mercury", "send_request.json"),
    }
    assert (await pclient.post("/v1/messages/mercury", json=body, headers=AUTH)).status == 201
    fake.mercury["180249"] = {
        "dispatchId": 180249,
        "sendStatusId": 3,
        "messageTypeId": 1,
        "hasStartedQueuing": True,
        "hasFinishedQueuing": False,
    }

    async def polled() -> bool:
        return fake.count("mercury", "180249") >= 1

    await eventually(polled)
    assert await status_of(pclient, "mercury", "180249:CustomerIdA") == "accepted"
    fake.mercury["180249"] = {
        **fake.mercury["180249"],
        "hasFinishedQueuing": True,
        "finishedQueuingAt": "2024-05-02T10:00:00",
    }

    async def sent() -> bool:
        return await status_of(pclient, "mercury", "180249:CustomerIdA") == "sent"

    await eventually(sent)
    calls = fake.count("mercury", "180249")
    await asyncio.sleep(1.0)
    assert fake.count("mercury", "180249") == calls  # queuing finished: polling stopped
    assert await status_of(pclient, "mercury", "180249:CustomerIdB") == "rejected"
    message = await (
        await pclient.get("/v1/messages/mercury/180249:CustomerIdA", headers=AUTH)
    ).json()
    assert message["channel"] == "sms"


async def test_mercury_error_fails_the_dispatch(pclient: Client, fake: FakeProviders) -> None:
    body = {
        "response": load("mercury", "send_response.json"),
        "request": load("mercury", "send_request.json"),
    }
    await pclient.post("/v1/messages/mercury", json=body, headers=AUTH)
    fake.mercury["180249"] = {
        "dispatchId": 180249,
        "sendStatusId": 7,
        "errorMessage": "template missing",
    }

    async def failed() -> bool:
        return await status_of(pclient, "mercury", "180249:CustomerIdA") == "failed"

    await eventually(failed)


async def test_an_old_unfinished_message_is_marked_stale(
    pclient: Client, fake: FakeProviders, db: asyncpg.Connection
) -> None:
    await register_messente(pclient)  # Messente never answers for it (404)
    await db.execute("update messages set created_at = now() - interval '3 days'")

    async def stale() -> bool:
        return bool(await db.fetchval("select stale from messages"))

    await eventually(stale)
    message = await (await pclient.get(f"/v1/messages/messente/{OMNI}", headers=AUTH)).json()
    assert (message["stale"], message["status"], message["next_poll_at"]) == (
        True,
        "accepted",
        None,
    )


async def test_missing_credentials_mean_no_polling_and_one_log_line(
    database_url: str, fake: FakeProviders, db: asyncpg.Connection
) -> None:
    settings = poll_settings(
        database_url,
        fake,
        messente_api_password=None,
        infobip_api_key=None,
        comapi_api_username=None,
        mercury_username=None,
    )
    fake.infobip["/sms/1/reports"].append(infobip_report("never"))
    async with (
        open_pool(database_url, 2) as pool,
        http_client(settings) as session,
        journal_running(pool, settings) as journal,
    ):
        with capture_logs() as logs:
            poller = Poller(pool, journal, session, settings)
        task = asyncio.create_task(poller.run())
        await asyncio.sleep(0.5)
        poller.stop()
        await task
    not_configured = sorted(e["provider"] for e in logs if e["event"] == "poll.not_configured")
    assert not_configured == ["comapi", "infobip", "mercury", "messente"]
    assert fake.calls == []
