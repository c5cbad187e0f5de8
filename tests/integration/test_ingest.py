"""The ingest path itself: the journal's group commit, the projector behind it (order,
isolation of what cannot be stored, several projectors at once), database outages."""

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from receiver.db import open_pool
from receiver.http.keys import JOURNAL
from receiver.ingest import codec
from receiver.ingest.apply import Entry, apply
from receiver.ingest.journal import Journal, Position
from receiver.ingest.projector import Projector
from receiver.providers import messente
from receiver.reports import Receipt, StatusUpdate, new_id
from receiver.status import Status
from tests.conftest import (
    AUTH,
    MESSENTE_PASSWORD,
    eventually,
    someone_waits_on,
    with_database,
)

Client = TestClient[Any, Any]


def update(key: str, dedup: str = "d1", status: Status = Status.DELIVERED) -> StatusUpdate:
    return StatusUpdate(provider="messente", message_key=key, status=status, dedup_key=dedup)


def receipt(body: bytes = b"{}") -> Receipt:
    return Receipt("messente", "webhook", body)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with open_pool(database_url, 6) as pool:
        yield pool


@pytest.fixture
async def journal(pool: asyncpg.Pool) -> AsyncIterator[Journal]:
    journal = Journal(pool, max_batch=500, max_inflight=1)
    journal.start()
    yield journal
    await journal.close()


async def project_all(projector: Projector) -> int:
    """Run the projector until it finds nothing more; returns the rows it applied."""
    total = 0
    while done := await projector.project_once():
        total += done
    return total


async def test_concurrent_appends_share_transactions(
    journal: Journal, pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    positions = await asyncio.gather(
        *(journal.append(receipt(), [update(f"m{i}")]) for i in range(50))
    )
    # With one transaction in flight at a time, the other 49 requests gather behind it.
    assert journal.transactions < 50
    assert await db.fetchval("select count(*) from journal") == 50
    # Each request is told its transaction's last row: applied, it means all of them are.
    last_rows = await db.fetch("select xid::text::bigint, max(id) from journal group by xid")
    assert set(positions) == {Position(xid, last) for xid, last in last_rows}
    assert len(last_rows) == journal.transactions
    # Acknowledged is journaled, not yet projected: the timeline is written behind.
    assert await db.fetchval("select count(*) from events") == 0
    assert await project_all(Projector(pool)) == 50
    assert await db.fetchval("select count(*) from events") == 50


async def test_a_report_that_cannot_be_stored_costs_only_itself(
    journal: Journal, pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    # Postgres refuses NUL in text; parsers strip it, these updates skip the parser on purpose.
    good = [journal.append(receipt(b"good"), [update(f"m{i}")]) for i in range(5)]
    bad = receipt(b"bad batch")
    batch = [update("b0"), update("b1", dedup="nul\x00key"), update("b2"), update("b3")]
    positions = await asyncio.gather(*good, journal.append(bad, batch))
    projector = Projector(pool)
    with capture_logs() as logs:
        assert await project_all(projector) == 6
    # The five requests around it and the three good reports beside it are all stored.
    keys = {r["message_key"] for r in await db.fetch("select message_key from events")}
    assert keys == {"m0", "m1", "m2", "m3", "m4", "b0", "b2", "b3"}
    row = await db.fetchrow("select body, problem from journal where receipt_id = $1", bad.id)
    assert row is not None
    assert row["body"] == b"bad batch"  # kept, so a later fix can recover it
    assert "could not project" in row["problem"]
    assert "nul" in row["problem"]
    assert [e["event"] for e in logs].count("project.poisoned") == 1
    # And the projector has moved past it: what comes next is projected as usual.
    assert projector.position == (positions[-1].xid, positions[-1].id)
    await journal.append(receipt(), [update("after")])
    assert await project_all(projector) == 1


async def test_a_row_committed_late_with_a_lower_id_is_not_skipped(
    journal: Journal, pool: asyncpg.Pool, database_url: str, db: asyncpg.Connection
) -> None:
    # Ids are taken at insert, rows become visible at commit: a transaction that took its id
    # first may commit last. The watermark must not pass it while it is open.
    slow = await asyncpg.connect(database_url)
    try:
        writing = slow.transaction()
        await writing.start()
        await slow.execute(
            "insert into journal (receipt_id, provider, source, body, updates, update_count)"
            " values ($1, 'messente', 'webhook', '', $2, 1)",
            new_id(),
            codec.encode([update("late")]),
        )
        await journal.append(receipt(), [update("early")])
        projector = Projector(pool)
        assert await project_all(projector) == 0  # "early" waits: "late" may still commit
        await writing.commit()
    finally:
        await slow.close()
    assert await project_all(projector) == 2
    keys = {r["message_key"] for r in await db.fetch("select message_key from events")}
    assert keys == {"late", "early"}


async def test_a_write_left_open_in_another_database_does_not_hold_projection_back(
    journal: Journal, pool: asyncpg.Pool, server_url: str, db: asyncpg.Connection
) -> None:
    # Another application on the same Postgres server leaves a transaction open after a
    # write (idle in transaction). The cluster's oldest running xid is then older than
    # every journal row from now on; only this database's transactions can write here.
    name = f"dlr_elsewhere_{new_id().hex[:12]}"
    admin = await asyncpg.connect(server_url)
    await admin.execute(f'create database "{name}"')
    elsewhere = await asyncpg.connect(with_database(server_url, name))
    try:
        idle = elsewhere.transaction()
        await idle.start()
        await elsewhere.fetchval("select pg_current_xact_id()")  # it holds an xid now
        await journal.append(receipt(), [update("after-the-open-write")])
        assert await project_all(Projector(pool)) == 1
        assert await db.fetchval("select count(*) from events") == 1
        await idle.rollback()
    finally:
        await elsewhere.close()
        await admin.execute(f'drop database "{name}" with (force)')
        await admin.close()


async def test_two_projectors_apply_everything_once_and_in_rule_order(
    journal: Journal, pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    await db.execute(
        "insert into subscriptions (id, url, secret) values (gen_random_uuid(), "
        "'http://127.0.0.1:9/', 'whsec_AAAA')"
    )
    first, second = Projector(pool, max_updates=20), Projector(pool, max_updates=20)
    runs = [asyncio.create_task(p.run()) for p in (first, second)]

    def wake_both() -> None:
        first.wake()
        second.wake()

    journal.on_commit = wake_both
    try:
        # Ten messages, each reported accepted, sent, delivered and read, in mixed order and
        # twice over (retries), from many concurrent requests.
        statuses = [Status.READ, Status.ACCEPTED, Status.DELIVERED, Status.SENT]
        await asyncio.gather(
            *(
                journal.append(receipt(), [update(f"m{i}", status.value, status)])
                for _ in range(2)
                for status in statuses
                for i in range(10)
            )
        )

        async def caught_up() -> bool:
            backlog = "select count(*) from journal j, projection_progress p"
            backlog += " where (j.xid, j.id) > (p.xid, p.id)"
            return bool(await db.fetchval(backlog) == 0)

        await eventually(caught_up)
    finally:
        first.stop()
        second.stop()
        await asyncio.gather(*runs)
    assert first.batches > 0
    assert second.batches > 0
    assert await db.fetchval("select count(*) from events") == 40
    rows = await db.fetch("select status, seq from messages")
    assert {r["status"] for r in rows} == {"read"}
    # Each status change announced once: the seqs of a message's deliveries are 1..n.
    seqs = await db.fetch(
        "select message_key, array_agg(seq order by seq) as seqs from deliveries group by 1"
    )
    for r in seqs:
        assert r["seqs"] == list(range(1, len(r["seqs"]) + 1))
    assert {r["seq"] for r in rows} == {len(r["seqs"]) for r in seqs}


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
    assert client.app[JOURNAL].transactions >= 1


async def delivered_while_projecting(
    database_url: str, db: asyncpg.Connection, projector: Projector, keys: Sequence[str]
) -> int:
    """Project "sent" for each key while another writer has written "delivered" for them and
    not yet committed. The projector reads the messages as they were, its write then waits on
    the other's rows and finds them changed once it commits: it must run the batch again."""
    other = [(Entry(new_id(), "webhook", datetime.now(UTC)), [update(k, "dlr") for k in keys])]
    conn = await asyncpg.connect(database_url)
    try:
        writing = conn.transaction()
        await writing.start()
        await apply(conn, other)
        with capture_logs() as logs:
            projecting = asyncio.create_task(project_all(projector))
            await eventually(lambda: someone_waits_on(db, conn))
            await writing.commit()
            projected = await projecting
    finally:
        await conn.close()
    assert any(e["event"] == "project.retry" and "SerializationError" in e["reason"] for e in logs)
    return projected


async def test_a_message_changed_under_a_batch_is_retried_not_overwritten(
    journal: Journal, pool: asyncpg.Pool, database_url: str, db: asyncpg.Connection
) -> None:
    # Projection takes turns, but other writers touch messages too (retention, say): a batch
    # computed from what it read must not land over a change made since.
    keys = [f"stored-{i}" for i in range(50)]
    projector = Projector(pool)
    await journal.append(receipt(), [update(k, "accepted", Status.ACCEPTED) for k in keys])
    await project_all(projector)
    await journal.append(receipt(), [update(k, "sent", Status.SENT) for k in keys])
    assert await delivered_while_projecting(database_url, db, projector, keys) == 1
    assert await db.fetchval("select count(*) from events") == 3 * 50
    rows = await db.fetch("select status, version from messages")
    # Seeded (version 0), updated by the other writer, then once by the projector's retry.
    assert {(r["status"], r["version"]) for r in rows} == {("delivered", 2)}


async def test_a_few_requests_arriving_during_a_commit_wait_and_go_together(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    # Two transactions may run at once, but a second one is not worth its cost for a handful
    # of single reports: those arriving while a write is under way go together after it.
    journal = Journal(pool, max_inflight=2)
    journal.start()
    try:
        await journal.append(receipt(b"seed"), [update("first", "s")])
        # The next insert waits on this table lock for as long as the test wants.
        async with db.transaction():
            await db.execute("lock table journal in share mode")
            first = asyncio.create_task(journal.append(receipt(b"0"), [update("first")]))
            await eventually(lambda: someone_waits_on(db, db))
            rest = []
            for i in range(20):
                each = receipt(f"{i}".encode())
                rest.append(asyncio.create_task(journal.append(each, [update(f"m{i}")])))
                await asyncio.sleep(0)  # each arrives on its own, as requests do
            await asyncio.sleep(0.1)  # and nothing starts beside the blocked write
            assert journal.inflight == 1
        await asyncio.gather(first, *rest)
    finally:
        await journal.close()
    # The seed, the blocked write, and the twenty together.
    assert journal.transactions == 3
    assert await db.fetchval("select count(*) from journal") == 22


async def test_a_journal_row_this_release_cannot_read_is_kept_with_its_problem_and_passed(
    journal: Journal, pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    # Written by a later release (format 99), then read by this one: not a reason to stop.
    unreadable = new_id()
    await db.execute(
        "insert into journal (receipt_id, provider, source, body, updates, update_count)"
        " values ($1, 'messente', 'webhook', 'kept', $2, 1)",
        unreadable,
        b'{"v": 99, "u": []}',
    )
    await journal.append(receipt(), [update("after")])
    assert await project_all(Projector(pool)) == 2
    problem = await db.fetchval("select problem from journal where receipt_id = $1", unreadable)
    assert "unreadable" in problem
    assert "unknown format" in problem
    assert await db.fetchval("select count(*) from events where message_key = 'after'") == 1


async def test_under_load_the_projector_gathers_many_commits_into_one_batch(
    journal: Journal, pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    projector = Projector(pool, idle_poll=0.01, gather=1.0)
    task = asyncio.create_task(projector.run())

    async def events() -> int:
        found: int = await db.fetchval("select count(*) from events")
        return found

    try:
        await journal.append(receipt(), [update("first")])
        await eventually(lambda: _holds(projector.batches == 1))
        # Twenty commits of their own, 10 ms apart, while the projector gathers: without
        # gathering, each finds the projector looking and becomes a batch of its own.
        for i in range(20):
            await journal.append(receipt(), [update(f"m{i}")])
            await asyncio.sleep(0.01)
        assert journal.transactions == 21
        await eventually(lambda: _equals(events(), 21))
        assert projector.batches == 2
    finally:
        projector.stop()
        await task


async def test_a_registration_waiting_for_its_row_does_not_wait_for_the_gathering(
    journal: Journal, pool: asyncpg.Pool
) -> None:
    projector = Projector(pool, idle_poll=0.01, gather=30.0)
    task = asyncio.create_task(projector.run())
    try:
        await projector.wait_for(await journal.append(receipt(), [update("a")]), within=5)
        # The projector now gathers for 30 s; whoever waits for a row cuts that short.
        started = asyncio.get_running_loop().time()
        position = await journal.append(receipt(), [update("b")])
        assert await projector.wait_for(position, within=5)
        assert asyncio.get_running_loop().time() - started < 5
    finally:
        projector.stop()
        await task


async def _holds(value: bool) -> bool:
    return value


async def _equals(count: Awaitable[int], expected: int) -> bool:
    return await count == expected
