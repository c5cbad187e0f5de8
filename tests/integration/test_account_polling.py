"""Named accounts poll too: each through its own API credentials, base URL, time zone and
pace, and every message through the account it came by. Two fake provider servers, one per
account, speak the providers' wire formats over real HTTP."""

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from receiver.db import open_pool
from receiver.ingest.journal import journal_running
from receiver.ingest.projector import projector_running
from receiver.polling.poller import Poller, _lock_key, _polling, http_client
from receiver.providers import infobip, messente
from receiver.settings import Account, Settings
from tests.conftest import AUTH, MESSENTE_PASSWORD, AiohttpClient, eventually, make_client
from tests.fakes import Failure, FakeProviders, infobip_report
from tests.integration.test_polling import dlr, poll_settings, status_of
from tests.payloads import load

Client = TestClient[Any, Any]
Servers = Callable[..., Awaitable[TestServer]]

BRAND2_PASSWORD = "brand2-api-password"
BRAND2 = ("brand2-user", BRAND2_PASSWORD)
ATHENS = ("athens-user", "athens-pass")
EE_KEY = "infobip-ee-key"


async def serve(aiohttp_server: Servers, fake: FakeProviders) -> str:
    server = await aiohttp_server(fake.app())
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def second() -> FakeProviders:
    """The second account's provider API: other credentials, another host."""
    return FakeProviders(
        messente_auth=BRAND2, mercury_auth=ATHENS, infobip_key=EE_KEY, comapi_auth=("c2", "p2")
    )


@pytest.fixture
async def two(
    database_url: str,
    aiohttp_server: Servers,
    aiohttp_client: AiohttpClient,
    second: FakeProviders,
) -> tuple[Client, FakeProviders, FakeProviders]:
    first = FakeProviders()
    first.base = await serve(aiohttp_server, first)  # type: ignore[attr-defined]
    other = await serve(aiohttp_server, second)
    settings: Settings = poll_settings(
        database_url,
        first,
        mercury_time_zone="UTC",
        accounts={
            # Messente polls with the API key whose password signs the reports: `secret`.
            "messente": {
                "brand2": Account(
                    secret=SecretStr(BRAND2_PASSWORD), api_username=BRAND2[0], base_url=other
                ),
                # Verifies its reports, never polled.
                "quiet": Account(
                    secret=SecretStr("quiet-password"),
                    api_username="quiet-user",
                    base_url=other,
                    poll=False,
                ),
            },
            "mercury": {
                "athens": Account(
                    api_username=ATHENS[0],
                    api_password=SecretStr(ATHENS[1]),
                    base_url=other,
                    time_zone="Europe/Athens",
                )
            },
            "infobip": {"ee": Account(api_key=SecretStr(EE_KEY), base_url=other)},
        },
    )
    client: Client = await make_client(aiohttp_client, settings)
    return client, first, second


async def push_messente(client: Client, omni: str, password: str) -> None:
    body = json.dumps(dlr(omni, omni + "-sms", "sms", "ACK", "2024-05-02T10:00:00")).encode()
    headers = {"X-Messente-Signature": messente.sign(password, body)}
    resp = await client.post("/webhooks/messente", data=body, headers=headers)
    assert resp.status == 200, await resp.text()


async def message(client: Client, provider: str, id_: str) -> Any:
    resp = await client.get(f"/v1/messages/{provider}/{id_}", headers=AUTH)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_each_messente_message_is_polled_through_the_account_it_came_by(
    two: tuple[Client, FakeProviders, FakeProviders],
) -> None:
    client, first, second = two
    # Each server knows only its own account's message: polled at the wrong one, a message
    # would be refused (other credentials) and never delivered.
    at = "2024-05-02T10:05:00"
    first.messente["o-default"] = [dlr("o-default", "o-default-sms", "sms", "DELIVRD", at)]
    second.messente["o-brand2"] = [dlr("o-brand2", "o-brand2-sms", "sms", "DELIVRD", at)]
    await push_messente(client, "o-default", MESSENTE_PASSWORD)
    await push_messente(client, "o-brand2", BRAND2_PASSWORD)

    async def both_delivered() -> bool:
        return (
            await status_of(client, "messente", "o-default") == "delivered"
            and await status_of(client, "messente", "o-brand2") == "delivered"
        )

    await eventually(both_delivered)
    assert (await message(client, "messente", "o-brand2"))["account"] == "brand2"
    assert first.count("messente", "o-brand2") == 0
    assert second.count("messente", "o-default") == 0
    assert first.unauthorized == second.unauthorized == []


async def test_one_account_down_does_not_hold_up_the_other(
    two: tuple[Client, FakeProviders, FakeProviders],
) -> None:
    client, first, second = two
    # The default account's API answers 503 to its first four polls (backing off 3 s in all).
    first.failures["messente"].extend(Failure(503) for _ in range(4))
    first.messente["o-slow"] = [dlr("o-slow", "o-slow-sms", "sms", "DELIVRD", "2024-05-02T10:05")]
    second.messente["o-fast"] = [dlr("o-fast", "o-fast-sms", "sms", "DELIVRD", "2024-05-02T10:05")]
    await push_messente(client, "o-slow", MESSENTE_PASSWORD)
    await push_messente(client, "o-fast", BRAND2_PASSWORD)

    async def fast_delivered() -> bool:
        return await status_of(client, "messente", "o-fast") == "delivered"

    await eventually(fast_delivered)
    # The brand2 account is not paused by the default account's outage...
    assert await status_of(client, "messente", "o-slow") == "sent"

    async def slow_delivered() -> bool:
        return await status_of(client, "messente", "o-slow") == "delivered"

    # ... and the default account recovers by itself once its API does.
    await eventually(slow_delivered, within=30)
    assert second.failed == []


async def test_an_account_with_polling_off_or_without_api_credentials_schedules_nothing(
    two: tuple[Client, FakeProviders, FakeProviders],
) -> None:
    client, _, _ = two
    await push_messente(client, "o-quiet", "quiet-password")
    await push_messente(client, "o-brand2", BRAND2_PASSWORD)
    quiet = await message(client, "messente", "o-quiet")
    assert quiet["account"] == "quiet"
    assert quiet["next_poll_at"] is None
    assert (await message(client, "messente", "o-brand2"))["next_poll_at"] is not None


async def test_mercury_times_are_read_in_each_accounts_own_zone(
    two: tuple[Client, FakeProviders, FakeProviders],
) -> None:
    client, first, second = two
    response, request = load("mercury", "send_response.json"), load("mercury", "send_request.json")
    other = {**response, "dispatch": 180250}
    body = {"response": response, "request": request}
    assert (await client.post("/v1/messages/mercury", json=body, headers=AUTH)).status == 201
    body = {"response": other, "request": request, "account": "athens"}
    assert (await client.post("/v1/messages/mercury", json=body, headers=AUTH)).status == 201
    queued = {
        "sendStatusId": 3,
        "messageTypeId": 1,
        "hasStartedQueuing": True,
        "hasFinishedQueuing": True,
        # The same wall-clock time, without a zone: the account's local time.
        "finishedQueuingAt": "2016-05-12T10:00:00",
    }
    first.mercury["180249"] = {**queued, "dispatchId": 180249}
    second.mercury["180250"] = {**queued, "dispatchId": 180250}

    async def both_sent() -> bool:
        return (
            await status_of(client, "mercury", "180249:CustomerIdA") == "sent"
            and await status_of(client, "mercury", "180250:CustomerIdA") == "sent"
        )

    await eventually(both_sent)
    for key, account, moment in [
        # Registered naming no account: the default one's (RECEIVER_MERCURY_TIME_ZONE=UTC).
        ("180249:CustomerIdA", "default", "2016-05-12T10:00:00Z"),
        ("180250:CustomerIdA", "athens", "2016-05-12T07:00:00Z"),  # Europe/Athens, +03:00
    ]:
        found = await message(client, "mercury", key)
        assert found["account"] == account
        polled = [e for e in found["events"] if e["source"] == "poll"]
        assert [e["occurred_at"].replace("+00:00", "Z") for e in polled] == [moment]
    assert first.count("mercury", "180250") == 0
    assert second.count("mercury", "180249") == 0


async def test_each_infobip_account_drains_its_own_queues(
    two: tuple[Client, FakeProviders, FakeProviders],
) -> None:
    client, first, second = two
    first.infobip["/sms/1/reports"].extend(infobip_report(f"d-{i}") for i in range(3))
    second.infobip["/sms/1/reports"].extend(infobip_report(f"ee-{i}") for i in range(3))
    # The ee account is rate-limited meanwhile: the default one drains regardless.
    second.failures["infobip"].extend(Failure(429, retry_after="1") for _ in range(2))

    async def all_delivered() -> bool:
        for id_ in [*(f"d-{i}" for i in range(3)), *(f"ee-{i}" for i in range(3))]:
            if await status_of(client, "infobip", id_) != "delivered":
                return False
        return True

    await eventually(all_delivered, within=20)
    assert (await message(client, "infobip", "ee-0"))["account"] == "ee"
    assert (await message(client, "infobip", "d-0"))["account"] == "default"
    assert sorted(first.served) == ["d-0", "d-1", "d-2"]
    assert sorted(second.served) == ["ee-0", "ee-1", "ee-2"]
    assert first.unauthorized == second.unauthorized == []


async def test_two_pollers_drain_each_account_once_and_never_one_account_at_once(
    database_url: str, aiohttp_server: Servers, db: asyncpg.Connection
) -> None:
    first, second = FakeProviders(), FakeProviders(infobip_key=EE_KEY)
    first.base = await serve(aiohttp_server, first)  # type: ignore[attr-defined]
    other = await serve(aiohttp_server, second)
    settings = poll_settings(
        database_url,
        first,
        accounts={"infobip": {"ee": Account(api_key=SecretStr(EE_KEY), base_url=other)}},
    )
    for fake, prefix in [(first, "d"), (second, "ee")]:
        fake.delay["infobip"] = 0.02
        fake.infobip["/sms/1/reports"].extend(infobip_report(f"{prefix}-{i}") for i in range(800))
    done = asyncio.Event()

    async def poller() -> None:
        async with (
            open_pool(database_url, 4) as pool,
            http_client(settings) as session,
            journal_running(pool, settings) as journal,
            projector_running(pool, settings),
        ):
            instance = Poller(pool, journal, session, settings)
            task = asyncio.create_task(instance.run())
            await done.wait()
            instance.stop()
            await task

    async def watch() -> None:
        async def all_stored() -> bool:
            return bool(await db.fetchval("select count(*) from events") == 1600)

        try:
            await eventually(all_stored, within=30)
        finally:
            done.set()

    await asyncio.gather(poller(), poller(), watch())
    for fake in (first, second):
        assert fake.max_in_flight == 1  # one drainer per account at a time
        assert set(Counter(fake.served).values()) == {1}  # each report handed out once
    counts = await db.fetch("select account, count(*) from messages group by account")
    assert {r["account"]: r["count"] for r in counts} == {"default": 800, "ee": 800}


def test_each_drained_account_has_its_own_lock_and_one_account_named_twice_has_one() -> None:
    def key(name: str, api_key: str, base: str = "https://api.infobip.com") -> int:
        account = Account(api_key=SecretStr(api_key), base_url=base)
        return _lock_key(_polling(infobip.PROVIDER, name, account, Settings()))

    assert key("default", "k1") != key("ee", "k2")
    assert key("default", "k1") != key("default", "k1", "https://other.api.infobip.com")
    # Two names for one account (two instances configured apart) must not both drain it.
    assert key("default", "k1") == key("alias", "k1")


@pytest.mark.parametrize(
    ("account", "code"),
    [
        ("nobody", "unknown_account"),  # no such account: its polls would go nowhere
        ("brand2\x00", "unknown_account"),  # a NUL cannot name an account
        ("", "invalid_body"),  # empty
        ("x" * 101, "invalid_body"),  # longer than any account name we keep
    ],
)
async def test_a_registration_naming_an_unknown_account_is_refused(
    two: tuple[Client, FakeProviders, FakeProviders], account: str, code: str
) -> None:
    client, _, _ = two
    body = {
        "response": load("messente", "send_response_viber_sms.json"),
        "account": account,
    }
    resp = await client.post("/v1/messages/messente", json=body, headers=AUTH)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == code


async def test_a_message_registered_through_a_named_account_is_polled_through_it(
    two: tuple[Client, FakeProviders, FakeProviders], db: asyncpg.Connection
) -> None:
    client, first, second = two
    response = load("messente", "send_response_viber_sms.json")
    omni = response["omnimessage_id"]
    second.messente[omni] = [dlr(omni, "x-sms", "sms", "DELIVRD", "2024-05-02T10:05:00")]
    body = {"response": response, "account": "brand2"}
    assert (await client.post("/v1/messages/messente", json=body, headers=AUTH)).status == 201

    async def delivered() -> bool:
        return await status_of(client, "messente", omni) == "delivered"

    await eventually(delivered)
    assert first.count("messente", omni) == 0
    assert await db.fetchval("select account from messages where key = $1", omni) == "brand2"
