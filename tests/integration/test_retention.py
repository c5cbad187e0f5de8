"""Retention: what nobody has touched for RECEIVER_RETENTION_DAYS goes, everything else stays."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from receiver.app import create_app
from receiver.db import open_pool
from receiver.ingest import Ingestor
from receiver.reports import Receipt, StatusUpdate, new_id
from receiver.retention import prune
from receiver.status import Status
from tests.conftest import AiohttpClient, eventually, make_settings, someone_waits_on

DAY = 86400.0


def update(key: str, dedup: str, status: Status, *aliases: str) -> StatusUpdate:
    return StatusUpdate(
        provider="messente", message_key=key, status=status, dedup_key=dedup, aliases=aliases
    )


def receipt(days_ago: float = 0) -> Receipt:
    # An old receipt has an old id as well: ids are time-ordered.
    return Receipt("messente", "webhook", b"{}", id=new_id(at=time.time() - days_ago * DAY))


@pytest.fixture
async def ingestor(database_url: str) -> AsyncIterator[Ingestor]:
    async with open_pool(database_url, 3) as pool:
        ingestor = Ingestor(pool)
        ingestor.start()
        yield ingestor
        await ingestor.close()


async def backdate(db: asyncpg.Connection, days: float, receipts: list[Receipt]) -> None:
    await db.execute(
        "update receipts set received_at = now() - make_interval(days => $1) where id = any($2)",
        days,
        [r.id for r in receipts],
    )


async def test_old_messages_go_with_their_events_and_everything_younger_stays(
    ingestor: Ingestor, database_url: str, db: asyncpg.Connection
) -> None:
    subscription = uuid.uuid4()
    await db.execute(
        "insert into subscriptions (id, url, secret) values ($1, 'http://127.0.0.1:9/', 'whsec_x')",
        subscription,
    )
    old_sent, old_done, busy_sent = receipt(40), receipt(40), receipt(40)
    await ingestor.submit(old_sent, [update("old", "s", Status.SENT, "old-alias")])
    await ingestor.submit(old_done, [update("old", "d", Status.DELIVERED)])
    # Created as long ago, but a report came in today: kept, all of it.
    await ingestor.submit(busy_sent, [update("busy", "s", Status.SENT, "busy-alias")])
    busy_done = receipt()
    await ingestor.submit(busy_done, [update("busy", "d", Status.DELIVERED)])
    young = receipt()
    await ingestor.submit(young, [update("young", "s", Status.SENT)])
    # A request that gave no event (a duplicate here), as old: only its receipt exists.
    orphan = receipt(40)
    await ingestor.submit(orphan, [update("young", "s", Status.SENT)])

    await backdate(db, 40, [old_sent, old_done, busy_sent, orphan])
    await db.execute(
        "update messages set created_at = now() - interval '40 days',"
        " updated_at = case when key = 'old' then now() - interval '40 days' else updated_at end"
        " where key in ('old', 'busy')"
    )
    # The status changes queued deliveries: the old ones settled (or dead) and one pending.
    await db.execute(
        "update deliveries set created_at = now() - interval '40 days',"
        " state = case when seq = 1 then 'dead' else 'delivered' end"
        " where message_key = 'old'"
    )
    pending = await db.fetchval(
        "update deliveries set created_at = now() - interval '40 days'"
        " where message_key = 'busy' and seq = 1 returning id"
    )
    delivered_old = await db.fetch("select id from deliveries where message_key = 'old'")
    assert len(delivered_old) == 2
    await db.execute(
        "insert into delivery_attempts (delivery_id, status_code) select id, 200 from deliveries"
    )

    async with open_pool(database_url, 2) as pool:
        # Small batches, so each kind takes several statements.
        pruned = await prune(pool, datetime.now(UTC) - timedelta(days=30), batch=1)

    assert (pruned.deliveries, pruned.messages, pruned.receipts) == (2, 1, 3)
    keys = {r["key"] for r in await db.fetch("select key from messages")}
    assert keys == {"busy", "young"}
    events = await db.fetch("select message_key, receipt_id from events order by id")
    assert [(e["message_key"], e["receipt_id"]) for e in events] == [
        ("busy", busy_sent.id),
        ("busy", busy_done.id),
        ("young", young.id),
    ]
    aliases = {r["alias"] for r in await db.fetch("select alias from aliases")}
    assert aliases == {"busy-alias"}
    receipts = {r["id"] for r in await db.fetch("select id from receipts")}
    # busy_sent is as old as the ones that went, but an event still refers to it.
    assert receipts == {busy_sent.id, busy_done.id, young.id}
    deliveries = {r["id"] for r in await db.fetch("select id from deliveries")}
    assert pending in deliveries
    assert not deliveries & {r["id"] for r in delivered_old}
    attempts = await db.fetchval(
        "select count(*) from delivery_attempts where delivery_id = any($1)",
        [r["id"] for r in delivered_old],
    )
    assert attempts == 0


async def test_events_are_still_append_only(ingestor: Ingestor, db: asyncpg.Connection) -> None:
    await ingestor.submit(receipt(), [update("m", "s", Status.SENT)])
    for statement in ("delete from events", "update events set status = 'failed'"):
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await db.execute(statement)
    # Only deleting the message takes its events along.
    await db.execute("delete from messages where key = 'm'")
    assert await db.fetchval("select count(*) from events") == 0


async def test_the_service_prunes_when_retention_is_set(
    database_url: str, db: asyncpg.Connection, aiohttp_client: AiohttpClient
) -> None:
    async with open_pool(database_url, 2) as pool:
        ingestor = Ingestor(pool)
        ingestor.start()
        old = receipt(5)
        await ingestor.submit(old, [update("old", "s", Status.SENT)])
        await ingestor.submit(receipt(), [update("young", "s", Status.SENT)])
        await ingestor.close()
    await backdate(db, 5, [old])
    await db.execute(
        "update messages set created_at = now() - interval '5 days',"
        " updated_at = now() - interval '5 days' where key = 'old'"
    )

    settings = make_settings(database_url, retention_days=2)
    client = await aiohttp_client(create_app(settings))

    async def pruned() -> bool:
        metrics = await (await client.get("/metrics")).text()
        return 'dlr_retention_deleted_total{kind="receipts"} 1' in metrics

    await eventually(pruned)
    metrics = await (await client.get("/metrics")).text()
    assert 'dlr_retention_deleted_total{kind="messages"} 1' in metrics
    assert [r["key"] for r in await db.fetch("select key from messages")] == ["young"]
    assert await db.fetchval("select count(*) from receipts") == 1


async def test_a_report_for_a_message_deleted_under_its_batch_starts_it_afresh(
    ingestor: Ingestor, database_url: str, db: asyncpg.Connection
) -> None:
    # Retention deletes a message after the ingestor read it and before its write lands: the
    # write must notice (the version check), read again and create the message anew.
    await ingestor.submit(receipt(), [update("m", "s", Status.SENT)])
    pruning = await asyncpg.connect(database_url)
    try:
        deleting = pruning.transaction()
        await deleting.start()
        await pruning.execute("delete from messages where key = 'm'")
        late = asyncio.ensure_future(
            ingestor.submit(receipt(), [update("m", "d", Status.DELIVERED)])
        )
        await eventually(lambda: someone_waits_on(db, pruning))
        await deleting.commit()
        result = await late
    finally:
        await pruning.close()
    assert result.new_events == 1
    rows = await db.fetch("select status, version from messages where key = 'm'")
    assert [(r["status"], r["version"]) for r in rows] == [("delivered", 0)]
    events = await db.fetch("select dedup_key from events where message_key = 'm'")
    assert [e["dedup_key"] for e in events] == ["d"]
