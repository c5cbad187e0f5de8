"""Retention (RECEIVER_RETENTION_DAYS): what nobody has touched for that long is deleted.

In this order, a batch per statement so no transaction runs long or locks much:
1. settled deliveries (delivered or dead) created before the cutoff, with their attempts;
2. messages created and last updated before the cutoff, with their events and aliases (the
   foreign keys cascade; events refuse any other delete);
3. the journal (raw receipts) a day at a time: each day partition that ended before the
   cutoff and that projection has passed is dropped whole, not deleted row by row.

Pending deliveries are never deleted. A message still changing is kept, all of it, however old
it is. Several processes may prune at once: rows another is deleting are skipped, not waited
for. A report arriving for a message already deleted starts it afresh.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import structlog

from receiver.db import connection, log_loop_failure
from receiver.loops import looping
from receiver.metrics import Metrics
from receiver.settings import Settings

log = structlog.get_logger()

# Rows per statement, and how often a pass runs.
BATCH = 1000
EVERY = 3600.0


@dataclass
class Pruned:
    deliveries: int = 0
    messages: int = 0
    journal_days: int = 0


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

# Dropping a partition takes a lock on the journal that inserts wait behind: never wait long
# for it (a long query on the journal, say); the next pass tries again.
_JOURNAL = "select journal_drop_partitions($1)"


async def prune(
    pool: asyncpg.Pool,
    before: datetime,
    batch: int = BATCH,
    stopping: asyncio.Event | None = None,
    progress: Callable[[int, int], None] | None = None,
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
            if progress is not None and deleted:
                # The total is not known ahead (counting would cost a pass of its own).
                total = pruned.deliveries + pruned.messages
                progress(total, total + (deleted == batch))
            if deleted < batch:
                break

    if not stop():
        async with connection(pool) as conn, conn.transaction():
            await conn.execute("set local lock_timeout = '2s'")
            pruned.journal_days = await conn.fetchval(_JOURNAL, before)
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

    async def prune_once(self, progress: Callable[[int, int], None] | None = None) -> Pruned:
        started = time.monotonic()
        before = datetime.now(UTC) - self._keep
        pruned = await prune(self._pool, before, stopping=self._stopping, progress=progress)
        for kind, count in vars(pruned).items():
            self._metrics.inc("dlr_retention_deleted_total", count, kind=kind)
        log.info(
            "retention.pruned",
            before=before.isoformat(),
            deliveries=pruned.deliveries,
            messages=pruned.messages,
            journal_days=pruned.journal_days,
            seconds=round(time.monotonic() - started, 1),
        )
        return pruned


@asynccontextmanager
async def retention_running(
    pool: asyncpg.Pool, settings: Settings, metrics: Metrics | None = None
) -> AsyncIterator[Retention]:
    async with looping(Retention(pool, settings, metrics), "retention") as retention:
        yield retention
