"""The ingest path itself: group commit, isolation of a poisoned request, database outages."""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from receiver.db import open_pool
from receiver.ingest import Ingestor
from receiver.keys import INGESTOR
from receiver.providers import messente
from receiver.reports import Receipt, StatusUpdate
from receiver.status import Status
from tests.conftest import AUTH, MESSENTE_PASSWORD

Client = TestClient[Any, Any]


def update(key: str, dedup: str = "d1", status: Status = Status.DELIVERED) -> StatusUpdate:
    return StatusUpdate(provider="messente", message_key=key, status=status, dedup_key=dedup)


@pytest.fixture
async def ingestor(database_url: str) -> AsyncIterator[Ingestor]:
    async with open_pool(database_url, 5) as pool:
        ing = Ingestor(pool, max_batch=500, max_inflight=1)
        ing.start()
        yield ing
        await ing.close()


async def test_concurrent_submissions_share_transactions(
    ingestor: Ingestor, db: asyncpg.Connection
) -> None:
    receipts = [Receipt("messente", "webhook", b"{}") for _ in range(50)]
    results = await asyncio.gather(
        *(ingestor.submit(r, [update(f"m{i}")]) for i, r in enumerate(receipts))
    )
    assert all(r.new_events == 1 for r in results)
    assert await db.fetchval("select count(*) from events") == 50
    # With one transaction in flight at a time, the other 49 requests gather behind it.
    assert ingestor.transactions < 50


async def test_a_request_whose_data_cannot_be_stored_does_not_fail_the_others(
    ingestor: Ingestor, db: asyncpg.Connection
) -> None:
    good = [Receipt("messente", "webhook", b"good") for _ in range(5)]
    bad = Receipt("messente", "webhook", b"bad")
    # Postgres refuses NUL in text; parsers strip it, this update skips the parser on purpose.
    poisoned = update("m-bad", dedup="nul\x00key")
    results = await asyncio.gather(
        *(ingestor.submit(r, [update(f"m{i}")]) for i, r in enumerate(good)),
        ingestor.submit(bad, [poisoned]),
    )
    assert [r.new_events for r in results[:5]] == [1] * 5
    assert results[5].problem is not None
    assert await db.fetchval("select count(*) from events") == 5
    row = await db.fetchrow("select body, problem from receipts where id = $1", bad.id)
    assert row is not None
    assert row["body"] == b"bad"
    assert "could not store" in row["problem"]


async def test_database_outage_answers_503_then_recovers_by_itself(
    client: Client, server_url: str, database_url: str
) -> None:
    name = urlsplit(database_url).path.lstrip("/")
    body = json.dumps({"omnimessage_id": "o1", "message_id": "m1", "status": "DELIVRD"}).encode()
    headers = {"X-Messente-Signature": messente.sign(MESSENTE_PASSWORD, body)}

    # Refuse new connections to the app's database and cut the ones it has.
    admin = await asyncpg.connect(server_url)
    await admin.execute(f'alter database "{name}" allow_connections false')
    others = "from pg_stat_activity where datname = $1"
    await admin.execute(f"select pg_terminate_backend(pid) {others}", name)
    for _ in range(100):  # termination is asynchronous
        if await admin.fetchval(f"select count(*) {others}", name) == 0:
            break
        await asyncio.sleep(0.02)
    resp = await client.post("/webhooks/messente", data=body, headers=headers)
    assert resp.status == 503
    assert resp.headers["Retry-After"]
    assert (await resp.json())["error"]["code"] == "database_unavailable"
    assert (await client.get("/readyz")).status == 503

    await admin.execute(f'alter database "{name}" allow_connections true')
    await admin.close()
    resp = await client.post("/webhooks/messente", data=body, headers=headers)
    assert resp.status == 200
    assert (await client.get("/readyz")).status == 200
    message = await client.get("/v1/messages/messente/m1", headers=AUTH)
    assert (await message.json())["status"] == "delivered"
    assert client.app[INGESTOR].transactions >= 1


async def test_two_writers_creating_the_same_new_messages_agree(
    database_url: str, db: asyncpg.Connection
) -> None:
    # Two processes' ingestors, each told about the same brand-new messages at the same time:
    # one creates each message, the other must notice, retry, and fold its event in.
    async with open_pool(database_url, 4) as pool_a, open_pool(database_url, 4) as pool_b:
        a, b = Ingestor(pool_a), Ingestor(pool_b)
        a.start()
        b.start()
        try:
            jobs = []
            for i in range(100):
                key = f"race-{i}"
                jobs.append(
                    a.submit(
                        Receipt("messente", "webhook", b"a"), [update(key, "sent", Status.SENT)]
                    )
                )
                jobs.append(
                    b.submit(
                        Receipt("messente", "webhook", b"b"),
                        [update(key, "delivered", Status.DELIVERED)],
                    )
                )
            with capture_logs() as logs:
                results = await asyncio.gather(*jobs)
        finally:
            await a.close()
            await b.close()
    assert all(r.new_events == 1 for r in results)
    # The race is real: at least one batch found its "new" message created under it.
    assert any(e["event"] == "ingest.retry" and "Raced" in e["reason"] for e in logs)
    assert await db.fetchval("select count(*) from events") == 200
    statuses = await db.fetch("select status, seq from messages")
    assert len(statuses) == 100
    assert {r["status"] for r in statuses} == {"delivered"}
