"""Each account polls by its own schedule (RECEIVER_ACCOUNTS poll_min_interval,
poll_max_interval, poll_max_age; unset: the RECEIVER_POLL_* defaults): a message is
scheduled, backed off and given up by its own account's. Two fake provider servers, one per
account, over real HTTP."""

from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr, ValidationError

from receiver.settings import Account, Settings
from tests.conftest import MESSENTE_PASSWORD, AiohttpClient, eventually, make_client
from tests.fakes import FakeProviders
from tests.integration.test_account_polling import (
    BRAND2,
    BRAND2_PASSWORD,
    Servers,
    push_messente,
    serve,
)
from tests.integration.test_polling import poll_settings

Client = TestClient[Any, Any]


async def start(
    database_url: str, aiohttp_server: Servers, aiohttp_client: AiohttpClient, brand2: Account
) -> tuple[Client, FakeProviders, FakeProviders]:
    first = FakeProviders()
    first.base = await serve(aiohttp_server, first)  # type: ignore[attr-defined]
    second = FakeProviders(messente_auth=BRAND2)
    other = await serve(aiohttp_server, second)
    account = brand2.model_copy(update={"base_url": other})
    settings: Settings = poll_settings(
        database_url, first, accounts={"messente": {"brand2": account}}
    )
    return await make_client(aiohttp_client, settings), first, second


def brand2(**schedule: float) -> Account:
    return Account(secret=SecretStr(BRAND2_PASSWORD), api_username=BRAND2[0], **schedule)


async def test_a_message_backs_off_by_its_own_accounts_intervals(
    database_url: str,
    aiohttp_server: Servers,
    aiohttp_client: AiohttpClient,
    db: asyncpg.Connection,
) -> None:
    # Neither server knows the messages (404): both stay unfinished and keep being polled.
    client, first, second = await start(
        database_url,
        aiohttp_server,
        aiohttp_client,
        brand2(poll_min_interval=600, poll_max_interval=900),
    )
    await push_messente(client, "o-default", MESSENTE_PASSWORD)
    await push_messente(client, "o-brand2", BRAND2_PASSWORD)
    # Its first poll is the account's own too: 600 s from when it was first seen, while the
    # default account's message is polled every 0.1-0.4 s meanwhile.
    await eventually(lambda: _true(first.count("messente", "o-default") >= 3))
    assert 590 < await _gap(db, "o-brand2") <= 600
    assert second.count("messente", "o-brand2") == 0
    # Due now (as if the 600 s had passed): polled once, and 600 s out again, by its own.
    await db.execute("update messages set next_poll_at = now() where key = 'o-brand2'")
    await eventually(lambda: _true(second.count("messente", "o-brand2") >= 1))
    await eventually(lambda: _true(first.count("messente", "o-default") >= 6))
    assert 500 < await _gap(db, "o-brand2") <= 600
    assert second.count("messente", "o-brand2") == 1
    assert await _gap(db, "o-default") <= 0.4


async def _gap(db: asyncpg.Connection, key: str) -> float:
    """Seconds from now to the message's next poll."""
    gap = await db.fetchval(
        "select extract(epoch from next_poll_at - now()) from messages where key = $1", key
    )
    return float(gap)


async def test_a_message_is_given_up_by_its_own_accounts_max_age(
    database_url: str,
    aiohttp_server: Servers,
    aiohttp_client: AiohttpClient,
    db: asyncpg.Connection,
) -> None:
    client, first, _ = await start(
        database_url, aiohttp_server, aiohttp_client, brand2(poll_max_age=3600)
    )
    await push_messente(client, "o-default", MESSENTE_PASSWORD)
    await push_messente(client, "o-brand2", BRAND2_PASSWORD)

    async def both_seen() -> bool:
        return bool(await db.fetchval("select count(*) from messages") == 2)

    await eventually(both_seen)  # the projector writes them after the webhook answered
    # Two hours old: past brand2's hour, well within the default account's two days.
    await db.execute("update messages set created_at = now() - interval '2 hours'")

    async def brand2_stale() -> bool:
        return bool(await db.fetchval("select stale from messages where key = 'o-brand2'"))

    await eventually(brand2_stale)
    polled = first.count("messente", "o-default")
    await eventually(lambda: _true(first.count("messente", "o-default") > polled))
    row = await db.fetchrow("select stale, next_poll_at from messages where key = 'o-default'")
    assert row is not None
    assert (row["stale"], row["next_poll_at"] is None) == (False, False)
    stale = await db.fetchrow("select next_poll_at from messages where key = 'o-brand2'")
    assert stale is not None
    assert stale["next_poll_at"] is None


async def _true(value: bool) -> bool:
    return value


@pytest.mark.parametrize(
    "schedule",
    [
        {"poll_min_interval": 0},
        {"poll_max_interval": -1},
        {"poll_max_age": 0},
        {"poll_max_interval": 1e12},  # past any date Postgres holds
        {"poll_min_interval": float("inf")},
        {"poll_max_age": 1e15},
    ],
)
def test_a_zero_negative_or_huge_schedule_is_refused(schedule: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        brand2(**schedule)
