"""The acknowledgement path: group commit of journal rows, one per request, from every source.

Concurrent requests hand their receipt (raw body) and parsed updates to one Journal. It gathers
whatever is waiting into a single INSERT of many rows, and answers each request only after
that commits: acknowledged means durable. Nothing else is written here; the projector applies
the journal to the timeline behind it. While one batch commits the next gathers, so batches
grow with load and a lone request waits for nobody.
"""

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import structlog

from receiver.db import DatabaseUnavailable, connection, is_transient, log_loop_failure
from receiver.ingest import codec, queries
from receiver.ingest.queries import JournalRow
from receiver.metrics import Metrics
from receiver.reports import Receipt, StatusUpdate
from receiver.settings import Settings

log = structlog.get_logger()

# A second transaction beside a running one pays only when this many requests wait: each
# commit costs Postgres a fixed amount whatever it carries, so a few single reports are better
# off riding the next batch together, and a flood is better off with two commits at once.
_OVERLAP_AT = 32


@dataclass(frozen=True)
class Position:
    """Where a committed journal row sits in projection order."""

    xid: int
    id: int


@dataclass(slots=True)
class _Submission:
    row: JournalRow
    future: asyncio.Future[Position]
    since: float  # loop time when it was handed in


class Journal:
    def __init__(
        self,
        pool: asyncpg.Pool,
        max_batch: int = 2000,
        max_inflight: int = 2,
        *,
        ack_timeout: float | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._pool = pool
        self._ack_timeout = ack_timeout
        self._metrics = metrics or Metrics()
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._inflight = 0
        self._pending: deque[_Submission] = deque()
        self._wakeup = asyncio.Event()
        self._flushes: set[asyncio.Task[None]] = set()
        self._writing: list[list[_Submission]] = []  # the batches of the flushes under way
        self._runner: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._closing = False
        # Called after each commit: the projector in this process starts at once.
        self.on_commit: Callable[[], None] = lambda: None
        # Committed transactions, for /metrics and for tests that check batching happens.
        self.transactions = 0

    async def append(self, receipt: Receipt, updates: Sequence[StatusUpdate]) -> Position:
        """Store a receipt and its updates; returns once they are committed."""
        return await self._append(JournalRow.of(receipt, codec.encode(list(updates)), len(updates)))

    async def append_unparsed(self, receipt: Receipt, reports: int) -> Position:
        """Store a receipt whose body the projector parses (a batch provider's webhook)."""
        return await self._append(JournalRow.of(receipt, None, reports))

    async def _append(self, row: JournalRow) -> Position:
        if self._runner is None or self._closing:
            raise RuntimeError("the journal is not running")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Position] = loop.create_future()
        self._pending.append(_Submission(row, future, loop.time()))
        self._wakeup.set()
        # The ack timeout is kept by one watchdog for all, not a timer per request: a timer
        # each (asyncio.wait_for) was a twentieth of a single report's request path.
        return await future

    async def _watch(self, limit: float) -> None:
        """A stalled database (a frozen server, a network dropping packets) would hold the
        provider until its own timeout, then it retries anyway: better told at once. Every
        request waiting longer than `limit` seconds is answered 503. One still waiting its turn is
        then not written; one whose batch is being written and commits after all leaves a
        duplicate for the provider's retry, which the projector's dedup keys collapse."""
        loop = asyncio.get_running_loop()
        failure = f"no commit within {limit} s"
        while True:
            await asyncio.sleep(min(max(limit / 8, 0.01), 0.5))
            late = loop.time() - limit
            # Oldest first in both: stop at the first that is not late yet.
            for waiting in (self._pending, *self._writing):
                for item in waiting:
                    if item.since > late:
                        break
                    if not item.future.done():
                        item.future.set_exception(DatabaseUnavailable(failure))

    @property
    def inflight(self) -> int:
        """Transactions being written right now."""
        return self._inflight

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name="journal")
        if self._ack_timeout is not None:
            self._watchdog = asyncio.create_task(
                self._watch(self._ack_timeout), name="journal-watchdog"
            )

    async def close(self) -> None:
        """Finish everything already submitted, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._runner is not None:
            await self._runner
        await asyncio.gather(*self._flushes, return_exceptions=True)
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog

    async def _run(self) -> None:
        while not self._closing or self._pending:
            await self._wakeup.wait()
            self._wakeup.clear()
            # Not starting while the database is busy is what lets the next batch grow.
            while self._pending and self._may_start():
                batch: list[_Submission] = []
                while self._pending and len(batch) < self._max_batch:
                    item = self._pending.popleft()
                    if not item.future.done():  # else its request gave up waiting
                        batch.append(item)
                if not batch:
                    continue
                self._inflight += 1
                task = asyncio.create_task(self._flush(batch))
                self._flushes.add(task)
                task.add_done_callback(self._flushes.discard)

    def _may_start(self) -> bool:
        if self._inflight == 0:
            return True
        return self._inflight < self._max_inflight and len(self._pending) >= _OVERLAP_AT

    async def _flush(self, batch: list[_Submission]) -> None:
        self._writing.append(batch)
        try:
            async with connection(self._pool) as conn:
                xid, last = await queries.append(conn, [item.row for item in batch])
        except Exception as exc:
            if not is_transient(exc):
                log.exception("journal.write_failed", requests=len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
        else:
            self.transactions += 1
            self._metrics.inc("dlr_ingest_transactions_total")
            # One position for the whole batch, its last row: one transaction, so a projector
            # that has applied that row has applied all of them.
            position = Position(xid, last)
            for item in batch:
                if not item.future.done():
                    item.future.set_result(position)
            self.on_commit()
        finally:
            self._writing.remove(batch)
            self._inflight -= 1
            self._wakeup.set()  # room for the next batch


def make_journal(pool: asyncpg.Pool, settings: Settings, metrics: Metrics | None = None) -> Journal:
    return Journal(
        pool,
        settings.ingest_max_batch,
        settings.ingest_max_inflight,
        ack_timeout=settings.ack_timeout,
        metrics=metrics,
    )


@asynccontextmanager
async def journal_running(
    pool: asyncpg.Pool, settings: Settings, metrics: Metrics | None = None
) -> AsyncIterator[Journal]:
    """The journal writer, and its day partitions made ahead (at start, then hourly)."""
    journal = make_journal(pool, settings, metrics)
    journal.start()
    partitions = asyncio.create_task(_keep_partitions(pool), name="journal-partitions")
    try:
        yield journal
    finally:
        partitions.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await partitions
        await journal.close()


async def _keep_partitions(pool: asyncpg.Pool) -> None:
    while True:
        try:
            async with connection(pool) as conn:
                await queries.ensure_partitions(conn, days_ahead=7)
        except Exception as exc:
            # Not urgent: a week is made ahead, and the default partition takes any overflow.
            log_loop_failure("journal.partitions", exc)
        await asyncio.sleep(3600)
