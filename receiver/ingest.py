"""The one path into the database: group commit of receipts and status updates from every source.

Concurrent requests hand their parsed updates to one Ingestor. It gathers whatever is waiting
into a single transaction of set-based statements and answers each request only after that
transaction commits: acknowledged means durable. While one batch commits, the next gathers, so
batches grow with load and a lone request waits for nobody.
"""

import asyncio
import dataclasses
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import structlog

from receiver import queries
from receiver.db import DatabaseUnavailable, connection, is_transient
from receiver.metrics import Metrics
from receiver.reports import Receipt, StatusUpdate
from receiver.store import store

log = structlog.get_logger()

# Serialization failures (another batch changed one of this batch's messages first) and
# deadlocks are retried this many times, then answered 503 (the provider retries later).
_CONFLICT_RETRIES = 5


# A second transaction beside a running one pays only when this many updates wait. Each
# transaction costs Postgres about as much CPU as 40 reports do before it writes any: a few
# single reports are better off riding the next batch together (a fifth less Postgres CPU per
# report, measured), a flood of batches is better off with two being written at once.
_OVERLAP_AT = 100


@dataclass(frozen=True)
class IngestResult:
    new_events: int
    duplicates: int
    # Set when the updates could not be stored and only the raw receipt was kept.
    problem: str | None = None


@dataclass
class _Submission:
    receipt: Receipt
    updates: Sequence[StatusUpdate]
    future: asyncio.Future[IngestResult]
    new_events: int = 0


class Ingestor:
    def __init__(
        self,
        pool: asyncpg.Pool,
        max_batch: int = 2000,
        max_inflight: int = 2,
        *,
        polled_providers: Sequence[str] = (),
        first_poll_in: float = 30.0,
        metrics: Metrics | None = None,
    ) -> None:
        self._pool = pool
        self._metrics = metrics or Metrics()
        # New messages of these providers get a first poll scheduled.
        self._polled_providers = tuple(polled_providers)
        self._first_poll_in = first_poll_in
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._inflight = 0
        self._pending: deque[_Submission] = deque()
        self._pending_updates = 0
        self._wakeup = asyncio.Event()
        self._flushes: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        # Committed transactions, for /metrics and for tests that check batching happens.
        self.transactions = 0

    async def submit(self, receipt: Receipt, updates: Sequence[StatusUpdate]) -> IngestResult:
        """Store a receipt and its updates; returns once they are committed."""
        if self._runner is None or self._closing:
            raise RuntimeError("the ingestor is not running")
        future: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        self._pending.append(_Submission(receipt, updates, future))
        self._pending_updates += len(updates)
        self._wakeup.set()
        return await future

    @property
    def inflight(self) -> int:
        """Transactions being written right now."""
        return self._inflight

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name="ingest")

    async def close(self) -> None:
        """Finish everything already submitted, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._runner is not None:
            await self._runner
        await asyncio.gather(*self._flushes, return_exceptions=True)

    async def _run(self) -> None:
        while not self._closing or self._pending:
            await self._wakeup.wait()
            self._wakeup.clear()
            # Not starting while the database is busy is what lets the next batch grow.
            while self._pending and self._may_start():
                batch = self._take()
                self._inflight += 1
                task = asyncio.create_task(self._flush(batch))
                self._flushes.add(task)
                task.add_done_callback(self._flushes.discard)

    def _may_start(self) -> bool:
        if self._inflight == 0:
            return True
        return self._inflight < self._max_inflight and self._pending_updates >= _OVERLAP_AT

    def _take(self) -> list[_Submission]:
        batch = [self._pending.popleft()]
        size = len(batch[0].updates)
        while self._pending and size + len(self._pending[0].updates) <= self._max_batch:
            item = self._pending.popleft()
            size += len(item.updates)
            batch.append(item)
        self._pending_updates -= size
        return batch

    async def _flush(self, batch: list[_Submission]) -> None:
        try:
            await self._store_with_retry(batch)
        except Exception as exc:
            if is_transient(exc) or len(batch) == 1:
                await self._fail(batch, exc)
            else:
                # One request's data broke the batch: store each on its own so only that one
                # is affected, and the others are not failed for it.
                for one in batch:
                    try:
                        await self._store_with_retry([one])
                    except Exception as one_exc:
                        await self._fail([one], one_exc)
                    else:
                        _resolve([one])
        else:
            _resolve(batch)
        finally:
            self._inflight -= 1
            self._wakeup.set()  # room for the next batch

    async def _store_with_retry(self, batch: list[_Submission]) -> None:
        for attempt in range(_CONFLICT_RETRIES):
            try:
                # No explicit transaction: store() reads, then writes in one statement.
                async with connection(self._pool) as conn:
                    counts = await store(
                        conn,
                        [(item.receipt, item.updates) for item in batch],
                        self._polled_providers,
                        self._first_poll_in,
                    )
                for item, count in zip(batch, counts, strict=True):
                    item.new_events = count
                self.transactions += 1
                self._metrics.inc("dlr_ingest_transactions_total")
                for item in batch:
                    provider = item.receipt.provider
                    self._metrics.inc(
                        "dlr_reports_total", item.new_events, provider=provider, outcome="new"
                    )
                    self._metrics.inc(
                        "dlr_reports_total",
                        len(item.updates) - item.new_events,
                        provider=provider,
                        outcome="duplicate",
                    )
                return
            except asyncpg.exceptions.TransactionRollbackError as exc:
                if attempt == _CONFLICT_RETRIES - 1:
                    raise DatabaseUnavailable(f"gave up after {attempt + 1} tries: {exc}") from exc
                log.warning(
                    "ingest.retry", attempt=attempt + 1, requests=len(batch), reason=repr(exc)
                )

    async def _fail(self, batch: list[_Submission], exc: Exception) -> None:
        if is_transient(exc):
            for item in batch:
                _set_exception(item.future, exc)
            return
        # Not the database's fault and not transient: the updates can never be stored as they
        # are. Keep the raw body with the reason, so nothing authenticated is silently lost.
        item = batch[0]
        problem = f"could not store updates: {type(exc).__name__}: {exc}"
        log.error("ingest.poisoned", provider=item.receipt.provider, error=problem)
        try:
            async with connection(self._pool) as conn:
                await queries.insert_receipts(conn, [_with_problem(item.receipt, problem)])
        except Exception as store_exc:
            _set_exception(item.future, store_exc)
            return
        if not item.future.done():
            item.future.set_result(IngestResult(0, 0, problem))


def _with_problem(receipt: Receipt, problem: str) -> Receipt:
    return dataclasses.replace(receipt, problem=problem)


def _set_exception(future: asyncio.Future[IngestResult], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)


def _resolve(batch: list[_Submission]) -> None:
    for item in batch:
        if not item.future.done():
            total = len(item.updates)
            item.future.set_result(IngestResult(item.new_events, total - item.new_events))
