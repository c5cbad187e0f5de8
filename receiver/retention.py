"""Retention (RECEIVER_RETENTION_DAYS): what nobody has touched for that long is deleted.

In this order, a batch per statement so no transaction runs long or locks much:
1. settled deliveries (delivered or dead) created before the cutoff, with their attempts;
2. messages created and last updated before the cutoff, with their events and aliases (the
   foreign keys cascade; events refuse any other delete);
3. raw receipts received before the cutoff that no remaining event refers to.

Pending deliveries are never deleted. A message still changing is kept, all of it, however old
it is. Several processes may prune at once: rows another is deleting are skipped, not waited
for. A report arriving for a message already deleted starts it afresh.
"""

import asyncio
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import structlog

from receiver.db import connection, log_loop_failure
from receiver.metrics import Metrics
from receiver.reports import first_id_at
from receiver.settings import Settings

log = structlog.get_logger()

# Rows per statement, and how often a pass runs.
BATCH = 1000
EVERY = 3600.0


@dataclass
class Pruned:
    deliveries: int = 0
    messages: int = 0
    receipts: int = 0


_DELIVERIES = """
    with doomed as (
        select d.id from subscriptions s
        cross join lateral (
            select id from deliveries d
            where d.subscription_id = s.id and d.created_at < $1 and d.state <> 'pending'
            order by d.created_at
            limit $2
            for update skip locked
        ) d
        limit $2
    ), gone as (
        delete from deliveries where id in (select id from doomed) returning 1
    )
    select count(*) from gone
"""

_MESSAGES = """
    with doomed as (
        select provider, key from messages
        where created_at < $1 and updated_at < $1
        order by created_at
        limit $2
        for update skip locked
    ), gone as (
        delete from messages m using doomed
        where m.provider = doomed.provider and m.key = doomed.key
        returning 1
    )
    select count(*) from gone
"""

# Receipts are walked by key, a window of `batch` at a time: old receipts that an event still
# refers to stay, and must not be looked at again and again.
_RECEIPTS = """
    with win as (
        select id from receipts where id > $3 and id < $4 order by id limit $2
    ), doomed as (
        select r.id from receipts r join win on win.id = r.id
        where r.received_at < $1
          and not exists (select 1 from events e where e.receipt_id = r.id)
        for update of r skip locked
    ), gone as (
        delete from receipts r using doomed where r.id = doomed.id returning 1
    )
    select (select count(*) from gone) as deleted,
           (select count(*) from win) as seen,
           (select id from win order by id desc limit 1) as last
"""


async def prune(
    pool: asyncpg.Pool,
    before: datetime,
    batch: int = BATCH,
    stopping: asyncio.Event | None = None,
) -> Pruned:
    """One pass: delete, batch after batch, everything older than `before` (or until
    `stopping` is set: what is left waits for the next pass)."""
    pruned = Pruned()

    def stop() -> bool:
        return stopping is not None and stopping.is_set()

    for name, sql in (("deliveries", _DELIVERIES), ("messages", _MESSAGES)):
        while not stop():
            async with connection(pool) as conn:
                deleted: int = await conn.fetchval(sql, before, batch)
            setattr(pruned, name, getattr(pruned, name) + deleted)
            if deleted < batch:
                break

    # Receipt ids are time-ordered: older ones sort below this bound. Older ids that are not
    # time-ordered (none are written any more) are left alone.
    bound = first_id_at(before.timestamp())
    after = uuid.UUID(int=0)
    while not stop():
        async with connection(pool) as conn:
            row = await conn.fetchrow(_RECEIPTS, before, batch, after, bound)
        assert row is not None
        pruned.receipts += row["deleted"]
        if row["seen"] < batch:
            break
        after = row["last"]
    return pruned


class Retention:
    """Prunes every EVERY seconds, from the start, until stop(); or once (`prune`)."""

    def __init__(
        self, pool: asyncpg.Pool, settings: Settings, metrics: Metrics | None = None
    ) -> None:
        assert settings.retention_days is not None
        self._pool = pool
        self._metrics = metrics or Metrics()
        self._keep = timedelta(days=settings.retention_days)
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.prune_once()
            except Exception as exc:
                # Retention must outlive any one failure (a database outage, say): next time.
                log_loop_failure("retention", exc)
            with suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), EVERY)

    async def prune_once(self) -> Pruned:
        started = time.monotonic()
        before = datetime.now(UTC) - self._keep
        pruned = await prune(self._pool, before, stopping=self._stopping)
        for kind, count in vars(pruned).items():
            self._metrics.inc("dlr_retention_deleted_total", count, kind=kind)
        log.info(
            "retention.pruned",
            before=before.isoformat(),
            deliveries=pruned.deliveries,
            messages=pruned.messages,
            receipts=pruned.receipts,
            seconds=round(time.monotonic() - started, 1),
        )
        return pruned
