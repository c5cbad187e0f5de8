"""The ingest path itself: group commit, isolation of a poisoned request, database outages."""

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
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
from receiver.store import store
from tests.conftest import AUTH, MESSENTE_PASSWORD, eventually, someone_waits_on

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


async def sent_while_another_writer_delivers(
    database_url: str, db: asyncpg.Connection, ingestor: Ingestor, keys: Sequence[str]
) -> None:
    """Submit "sent" for each key to the ingestor while another writer (a second process) has
    stored "delivered" for them and not yet committed. The ingestor reads the messages as they
    were before, its write then waits on the other's rows, and finds them changed (or created)
    once it commits: it must retry, and each report is still one new event."""
    other = [
        (Receipt("messente", "webhook", b"b"), [update(k, "dlr", Status.DELIVERED) for k in keys])
    ]
    conn = await asyncpg.connect(database_url)
    try:
        writing = conn.transaction()
        await writing.start()
        await store(conn, other)
        with capture_logs() as logs:
            ours = asyncio.gather(
                *(
                    ingestor.submit(
                        Receipt("messente", "webhook", b"a"), [update(k, "sent", Status.SENT)]
                    )
                    for k in keys
                )
            )
            await eventually(lambda: someone_waits_on(db, conn))
            await writing.commit()
            results = await ours
    finally:
        await conn.close()
    assert all(r.new_events == 1 for r in results)
    assert any(e["event"] == "ingest.retry" and "SerializationError" in e["reason"] for e in logs)


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


async def test_a_message_created_under_a_batch_is_retried_not_lost(
    ingestor: Ingestor, database_url: str, db: asyncpg.Connection
) -> None:
    # Brand-new messages to the ingestor, created by another writer after the ingestor read
    # them as absent: its insert must not silently do nothing, it must retry and fold in.
    keys = [f"race-{i}" for i in range(50)]
    await sent_while_another_writer_delivers(database_url, db, ingestor, keys)
    assert await db.fetchval("select count(*) from events") == 2 * 50
    rows = await db.fetch("select status, version from messages")
    assert len(rows) == 50
    # Created by the other writer (version 0), then updated once by the ingestor's retry.
    assert {(r["status"], r["version"]) for r in rows} == {("delivered", 1)}


async def test_a_message_changed_under_a_batch_is_retried_not_overwritten(
    ingestor: Ingestor, database_url: str, db: asyncpg.Connection
) -> None:
    # Stored messages; another writer reports them delivered while the ingestor computes
    # "sent" from what it read before. Written as computed, "sent" would overwrite
    # "delivered": the version check must turn that into a retry from the new state.
    keys = [f"stored-{i}" for i in range(50)]
    seed = [update(k, "accepted", Status.ACCEPTED) for k in keys]
    await ingestor.submit(Receipt("messente", "webhook", b"seed"), seed)
    await sent_while_another_writer_delivers(database_url, db, ingestor, keys)
    assert await db.fetchval("select count(*) from events") == 3 * 50
    rows = await db.fetch("select status, version from messages")
    # Seeded (version 0), updated by the other writer, then once by the ingestor's retry.
    assert {(r["status"], r["version"]) for r in rows} == {("delivered", 2)}


async def test_a_few_reports_arriving_during_a_write_wait_and_go_together(
    database_url: str, db: asyncpg.Connection
) -> None:
    # Two transactions may run at once, but a second one is not worth its cost for a handful
    # of single reports: those arriving while a write is under way go together after it.
    async with open_pool(database_url, 4) as pool:
        ingestor = Ingestor(pool, max_inflight=2)
        ingestor.start()
        try:
            await ingestor.submit(Receipt("messente", "webhook", b"seed"), [update("first", "s")])
            # The next write to "first" waits on this row lock for as long as the test wants.
            async with db.transaction():
                await db.execute("select 1 from messages where key = 'first' for update")
                first = asyncio.create_task(
                    ingestor.submit(Receipt("messente", "webhook", b"0"), [update("first")])
                )
                await eventually(lambda: someone_waits_on(db, db))
                rest = []
                for i in range(20):
                    receipt = Receipt("messente", "webhook", f"{i}".encode())
                    rest.append(asyncio.create_task(ingestor.submit(receipt, [update(f"m{i}")])))
                    await asyncio.sleep(0)  # each arrives on its own, as requests do
                await asyncio.sleep(0.1)  # and nothing starts beside the blocked write
                assert ingestor.inflight == 1
            await asyncio.gather(first, *rest)
        finally:
            await ingestor.close()
    # The seed, the blocked write, and the twenty together.
    assert ingestor.transactions == 3
    assert await db.fetchval("select count(*) from events") == 22
