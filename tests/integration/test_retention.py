"""Retention: what nobody has touched for RECEIVER_RETENTION_DAYS goes, everything else stays."""

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from receiver.db import open_pool
from receiver.ingest.journal import Journal
from receiver.ingest.projector import Projector
from receiver.maintenance.retention import prune
from receiver.reports import Receipt, StatusUpdate, new_id
from receiver.status import Status
from tests.conftest import (
    AiohttpClient,
    Store,
    eventually,
    make_client,
    make_settings,
    someone_waits_on,
)

DAY = 86400.0


def update(key: str, dedup: str, status: Status, *aliases: str) -> StatusUpdate:
    return StatusUpdate(
        provider="messente", message_key=key, status=status, dedup_key=dedup, aliases=aliases
    )


def receipt(days_ago: float = 0) -> Receipt:
    # An old receipt has an old id as well: ids are time-ordered.
    return Receipt("messente", "webhook", b"{}", id=new_id(at=time.time() - days_ago * DAY))


async def backdate(db: asyncpg.Connection, days: int, receipts: list[Receipt]) -> None:
    """Move journal rows to `days` ago (into that day's partition, made here)."""
    await db.execute(
        "select journal_ensure_partitions(current_date - $1::int, current_date - $1::int)", days
    )
    await db.execute(
        "update journal set received_at = now() - make_interval(days => $1)"
        " where receipt_id = any($2)",
        days,
        [r.id for r in receipts],
    )


async def test_old_messages_go_with_their_events_and_everything_younger_stays(
    store: Store, database_url: str, db: asyncpg.Connection
) -> None:
    subscription = uuid.uuid4()
    await db.execute(
        "insert into subscriptions (id, url, secret) values ($1, 'http://127.0.0.1:9/', 'whsec_x')",
        subscription,
    )
    old_sent, old_done, busy_sent = receipt(40), receipt(40), receipt(40)
    await store(old_sent, [update("old", "s", Status.SENT, "old-alias")])
    await store(old_done, [update("old", "d", Status.DELIVERED)])
    # Created as long ago, but a report came in today: kept, all of it.
    await store(busy_sent, [update("busy", "s", Status.SENT, "busy-alias")])
    busy_done = receipt()
    await store(busy_done, [update("busy", "d", Status.DELIVERED)])
    young = receipt()
    await store(young, [update("young", "s", Status.SENT)])
    # A request that gave no event (a duplicate here), as old: only its receipt exists.
    orphan = receipt(40)
    await store(orphan, [update("young", "s", Status.SENT)])

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

    assert (pruned.deliveries, pruned.messages, pruned.journal_days) == (2, 1, 1)
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
    receipts = {r["receipt_id"] for r in await db.fetch("select receipt_id from journal")}
    # The journal goes a day at a time, busy_sent's day too: its event stays, and keeps its
    # receipt_id, but the raw body of that day is gone.
    assert receipts == {busy_done.id, young.id}
    deliveries = {r["id"] for r in await db.fetch("select id from deliveries")}
    assert pending in deliveries
    assert not deliveries & {r["id"] for r in delivered_old}
    attempts = await db.fetchval(
        "select count(*) from delivery_attempts where delivery_id = any($1)",
        [r["id"] for r in delivered_old],
    )
    assert attempts == 0


async def test_events_are_still_append_only(store: Store, db: asyncpg.Connection) -> None:
    await store(receipt(), [update("m", "s", Status.SENT)])
    for statement in ("delete from events", "update events set status = 'failed'"):
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await db.execute(statement)
    # Only deleting the message takes its events along.
    await db.execute("delete from messages where key = 'm'")
    assert await db.fetchval("select count(*) from events") == 0


async def test_the_service_prunes_when_retention_is_set(
    store: Store, database_url: str, db: asyncpg.Connection, aiohttp_client: AiohttpClient
) -> None:
    old = receipt(5)
    await store(old, [update("old", "s", Status.SENT)])
    await store(receipt(), [update("young", "s", Status.SENT)])
    await backdate(db, 5, [old])
    await db.execute(
        "update messages set created_at = now() - interval '5 days',"
        " updated_at = now() - interval '5 days' where key = 'old'"
    )

    settings = make_settings(database_url, retention_days=2)
    client = await make_client(aiohttp_client, settings)

    async def pruned() -> bool:
        metrics = await (await client.get("/metrics")).text()
        return 'dlr_retention_deleted_total{kind="journal_days"} 1.0' in metrics

    await eventually(pruned)
    metrics = await (await client.get("/metrics")).text()
    assert 'dlr_retention_deleted_total{kind="messages"} 1.0' in metrics
    assert [r["key"] for r in await db.fetch("select key from messages")] == ["young"]
    assert await db.fetchval("select count(*) from journal") == 1


async def test_a_report_for_a_message_deleted_under_its_batch_starts_it_afresh(
    store: Store, database_url: str, db: asyncpg.Connection
) -> None:
    # Retention deletes a message after the projector read it and before its write lands:
    # the write must notice (the version check), read again and create the message anew.
    await store(receipt(), [update("m", "s", Status.SENT)])
    async with open_pool(database_url, 3) as pool:
        journal = Journal(pool)
        journal.start()
        await journal.append(receipt(), [update("m", "d", Status.DELIVERED)])
        await journal.close()
        pruning = await asyncpg.connect(database_url)
        try:
            deleting = pruning.transaction()
            await deleting.start()
            await pruning.execute("delete from messages where key = 'm'")
            late = asyncio.ensure_future(Projector(pool).project_once())
            await eventually(lambda: someone_waits_on(db, pruning))
            await deleting.commit()
            assert await late == 1
        finally:
            await pruning.close()
    rows = await db.fetch("select status, version from messages where key = 'm'")
    assert [(r["status"], r["version"]) for r in rows] == [("delivered", 0)]
    events = await db.fetch("select dedup_key from events where message_key = 'm'")
    assert [e["dedup_key"] for e in events] == ["d"]
