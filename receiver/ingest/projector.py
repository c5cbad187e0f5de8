"""The projector: applies the journal, in order and in large batches, to messages, events,
aliases and the outbox, and records how far it got in the same transaction.

Any number of projectors may run against one database (one per `serve` process, or
`python -m receiver project`): they take turns on the progress row, so nothing is applied twice
or out of rule order, and a crash anywhere replays from the last committed batch (dedup keys
make that safe). A journal row that can never be applied (a NUL in an id, say) is isolated to
the reports in it that fail, kept with its problem, counted and skipped: it never blocks the
rows behind it.
"""

import asyncio
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass

import asyncpg
import asyncpg.exceptions._base as asyncpg_base
import structlog

from receiver.db import Conn, connection, log_loop_failure
from receiver.ingest import codec, queries
from receiver.ingest.apply import Entry, apply
from receiver.ingest.journal import Position
from receiver.metrics import Metrics
from receiver.providers import PROVIDERS
from receiver.reports import InvalidReport, Parsed, StatusUpdate

log = structlog.get_logger()


class _Undecodable(Exception):  # noqa: N818 - a state of a journal row
    """A journal row whose updates this release cannot read."""


# What makes one report unstorable rather than the database unavailable or the code wrong:
# Postgres refusing a value (class 22: NUL in text, a number out of range; class 23: a check),
# a value asyncpg cannot encode, or a journal row this release cannot decode. Anything else
# is a bug or an outage: the batch is not skipped, it is tried again.
_POISON = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.IntegrityConstraintViolationError,
    asyncpg_base.DataError,
    _Undecodable,
)


@dataclass(frozen=True)
class _Row:
    position: tuple[int, int]
    entry: Entry
    provider: str
    updates: Sequence[StatusUpdate] | None  # None: the row could not be decoded
    problem: str | None = None
    # What the projector's parse of the body could not read: written to the receipt.
    noted: str | None = None


class Projector:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_updates: int = 5000,
        idle_poll: float = 0.5,
        polled_providers: Sequence[str] = (),
        first_poll_in: float = 30.0,
        metrics: Metrics | None = None,
    ) -> None:
        self._pool = pool
        self._max_updates = max_updates
        self._idle_poll = idle_poll
        self._polled_providers = tuple(polled_providers)
        self._first_poll_in = first_poll_in
        self._metrics = metrics or Metrics()
        self._wake = asyncio.Event()
        self._stopping = False
        self._advanced = asyncio.Event()
        # The progress this process last saw committed (by itself or read from the database).
        self.position: tuple[int, int] = (0, 0)
        # Batches committed, for tests and /metrics.
        self.batches = 0

    def wake(self) -> None:
        """New journal rows are committed: look now rather than at the next idle poll."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        failures = 0
        while not self._stopping:
            self._wake.clear()
            try:
                projected = await self.project_once()
                failures = 0
            except Exception as exc:
                # The projector must outlive any one failure: nothing is lost (the journal
                # keeps it all), it is only late. Back off, go on.
                log_loop_failure("project", exc)
                failures += 1
                await self._pause(min(0.2 * 2**failures, 10.0))
                continue
            if not projected:
                await self._pause(self._idle_poll)

    async def _pause(self, seconds: float) -> None:
        with suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def project_once(self) -> int:
        """One batch: returns how many journal rows it applied (0: nothing to do)."""
        for attempt in range(5):
            try:
                return await self._batch(careful=False)
            except asyncpg.exceptions.TransactionRollbackError as exc:
                # Another writer changed a message between read and write (retention, say).
                log.warning("project.retry", attempt=attempt + 1, reason=repr(exc))
            except _POISON as exc:
                log.warning("project.isolating", error=f"{type(exc).__name__}: {exc}")
                return await self._batch(careful=True)
        return await self._batch(careful=True)

    async def _batch(self, *, careful: bool) -> int:
        async with connection(self._pool) as conn, conn.transaction():
            after = await queries.lock_progress(conn)
            records = await queries.read_journal(conn, after, 1000, self._max_updates)
            if not records:
                self._seen(after)
                return 0
            rows = [_decode(r) for r in records]
            if careful:
                await self._apply_carefully(conn, rows)
            else:
                if any(row.updates is None for row in rows):
                    raise _Undecodable("a journal row could not be decoded")
                self._count(rows, await self._apply(conn, rows))
                for row in rows:
                    if row.noted:
                        await queries.note_problem(conn, row.position, row.noted)
            last = rows[-1].position
            await queries.advance(conn, last)
        self.batches += 1
        self._metrics.inc("dlr_projection_batches_total")
        self._metrics.inc("dlr_projected_rows_total", len(rows))
        self._seen(last)
        return len(rows)

    async def _apply_carefully(self, conn: Conn, rows: list[_Row]) -> None:
        """Row by row, and within a row that fails, report by report, each in a savepoint:
        what can be stored is, and only what cannot is left out, with its reason."""
        for row in rows:
            if row.updates is None:
                await self._poisoned(conn, row, row.problem or "unreadable")
                continue
            if row.noted:
                await queries.note_problem(conn, row.position, row.noted)
            try:
                async with conn.transaction():
                    counts = await self._apply(conn, [row])
                self._count([row], counts)
                continue
            except _POISON:
                pass
            failed: list[str] = []
            for update in row.updates:
                one = _Row(row.position, row.entry, row.provider, [update])
                try:
                    async with conn.transaction():
                        self._count([one], await self._apply(conn, [one]))
                except _POISON as exc:
                    failed.append(f"report {update.dedup_key!r} not stored: {exc}")
            if failed:
                await self._poisoned(conn, row, "; ".join(failed))

    async def _apply(self, conn: Conn, rows: list[_Row]) -> list[int]:
        return await apply(
            conn,
            [(row.entry, row.updates or ()) for row in rows],
            self._polled_providers,
            self._first_poll_in,
        )

    async def _poisoned(self, conn: Conn, row: _Row, problem: str) -> None:
        log.error("project.poisoned", receipt_id=str(row.entry.receipt_id), problem=problem)
        self._metrics.inc("dlr_projection_poisoned_total", provider=row.provider)
        await queries.note_problem(conn, row.position, f"could not project: {problem}")

    def _count(self, rows: Sequence[_Row], counts: Sequence[int]) -> None:
        for row, new in zip(rows, counts, strict=True):
            total = len(row.updates or ())
            self._metrics.inc("dlr_reports_total", new, provider=row.provider, outcome="new")
            self._metrics.inc(
                "dlr_reports_total", total - new, provider=row.provider, outcome="duplicate"
            )

    def _seen(self, position: tuple[int, int]) -> None:
        if position > self.position:
            self.position = position
            self._advanced.set()
            self._advanced = asyncio.Event()

    async def wait_for(self, target: Position, within: float) -> bool:
        """Until the journal row at `target` is projected, by this process's projector or
        another's; False if that took longer than `within` seconds."""
        want = (target.xid, target.id)
        deadline = asyncio.get_running_loop().time() + within
        self.wake()
        while self.position < want:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            # Another process may be the one projecting: look at the database now and then.
            with suppress(TimeoutError):
                await asyncio.wait_for(self._advanced.wait(), min(left, 0.05))
            if self.position < want:
                async with connection(self._pool) as conn:
                    self._seen(await queries.progress(conn))
        return True


def _decode(record: asyncpg.Record) -> _Row:
    entry = Entry(
        record["replays"] or record["receipt_id"], record["source"], record["received_at"]
    )
    position = (record["xid"], record["id"])
    if record["updates"] is None:
        return _parse(record, position, entry)
    try:
        updates: list[StatusUpdate] | None = codec.decode(record["updates"])
        problem = None
    except (ValueError, TypeError, KeyError) as exc:
        updates, problem = None, f"journal row unreadable: {type(exc).__name__}: {exc}"
    return _Row(position, entry, record["provider"], updates, problem)


def _parse(record: asyncpg.Record, position: tuple[int, int], entry: Entry) -> _Row:
    """A body journaled unparsed: read now, with the parser of its provider. What it cannot
    read is written to the receipt's problem, as the request path would have."""
    provider = PROVIDERS.get(record["provider"])
    if provider is None or provider.parse_webhook is None:
        return _Row(position, entry, record["provider"], None, "no parser for this provider")
    try:
        parsed = provider.parse_webhook(
            record["body"], record["content_type"], record["received_at"]
        )
    except InvalidReport as exc:
        parsed = Parsed([], [str(exc)])
    except Exception as exc:
        # A parser bug must not stop projection for everyone behind this row: its reports
        # wait on the receipt (problem set, so reprocess reads them again after the fix).
        log.error("project.parser_failed", receipt_id=str(entry.receipt_id), exc_info=exc)
        parsed = Parsed([], [f"parser failed: {type(exc).__name__}: {exc}"])
    return _Row(position, entry, record["provider"], parsed.updates, noted=parsed.problem)
