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
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import asyncpg
import asyncpg.exceptions._base as asyncpg_base
import structlog

from receiver import accounts
from receiver.accounts import DEFAULT as DEFAULT_ACCOUNT
from receiver.db import Conn, connection, log_loop_failure
from receiver.ingest import codec, queries
from receiver.ingest.apply import Entry, apply
from receiver.ingest.journal import Position
from receiver.loops import looping
from receiver.metrics import Metrics
from receiver.providers import PROVIDERS
from receiver.reports import InvalidReport, Parsed, StatusUpdate
from receiver.settings import Settings

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


# Journal rows read per batch at most (and updates: max_updates).
_READ_ROWS = 1000


@dataclass(frozen=True)
class _Row:
    position: tuple[int, int]
    entry: Entry
    provider: str
    updates: Sequence[StatusUpdate] | None  # None: the row could not be decoded
    problem: str | None = None
    # What the projector's parse of the body could not read: written to the receipt.
    noted: str | None = None
    # Written by reprocess: the receipt it read again takes this row's problem once projected.
    replays: bool = False


class Projector:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_updates: int = 5000,
        idle_poll: float = 0.5,
        gather: float = 0.0,
        # (provider, account) pairs whose new unfinished messages are scheduled for polls,
        # and the seconds to each one's first poll.
        polled: Mapping[tuple[str, str | None], float] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._pool = pool
        self._max_updates = max_updates
        self._idle_poll = idle_poll
        self._gather = gather
        self._polled = dict(polled or {})
        self._metrics = metrics or Metrics()
        self._wake = asyncio.Event()
        # Set by someone waiting for a row (a registration) or by stop: no gathering then.
        self._hurry = asyncio.Event()
        self._stopping = False
        # Whether the last batch left rows it could have taken waiting (it was full).
        self._more = False
        self._advanced = asyncio.Event()
        # The progress this process last saw committed (by itself or read from the database).
        self.progress = queries.Progress((0, 0))
        # The journal row being applied in parts, parsed once.
        self._large: _Row | None = None
        # Batches committed, for tests and /metrics.
        self.batches = 0

    def wake(self) -> None:
        """New journal rows are committed: look now rather than at the next idle poll."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._hurry.set()

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
                await self._pause(self._wake, min(0.2 * 2**failures, 10.0))
                continue
            if not projected:
                await self._pause(self._wake, self._idle_poll)
            elif not self._more and self._gather > 0:
                # Under load every look finds a few rows: gathering them for a moment makes
                # one batch of what would be many, each paying its statements and commit. A
                # full batch (a backlog) goes on at once, and so does one someone waits for.
                await self._pause(self._hurry, self._gather)
                self._hurry.clear()

    @staticmethod
    async def _pause(until: asyncio.Event, seconds: float) -> None:
        with suppress(TimeoutError):
            await asyncio.wait_for(until.wait(), seconds)

    async def project_once(self) -> int:
        """One batch: returns how many journal rows it applied, a part of a large one
        counting as one (0: nothing to do)."""
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
            before = await queries.lock_progress(conn)
            rows, after = await self._next(conn, before, await queries.writers_bound(conn))
            if not rows:
                self._seen(before)
                return 0
            if careful:
                await self._apply_carefully(conn, rows)
            else:
                if any(row.updates is None for row in rows):
                    raise _Undecodable("a journal row could not be decoded")
                self._count(rows, await self._apply(conn, rows))
                for row in rows:
                    if row.noted:
                        await queries.note_problem(conn, row.position, row.noted)
            for row in rows:
                if row.replays and after.covers(row.position):
                    await queries.settle_replay(conn, row.position)
            await queries.advance(conn, after)
        self.batches += 1
        self._metrics.inc("dlr_projection_batches_total")
        # A row in parts counts once, with its last part.
        self._metrics.inc("dlr_projected_rows_total", sum(after.covers(r.position) for r in rows))
        now = datetime.now(UTC)
        self._metrics.observe_many(
            "dlr_projection_delay_seconds",
            [(now - r.entry.received_at).total_seconds() for r in rows if after.covers(r.position)],
        )
        self._seen(after)
        return len(rows)

    async def _next(
        self, conn: Conn, at: queries.Progress, bound: int
    ) -> tuple[list[_Row], queries.Progress]:
        """What this transaction applies, and the progress once it has: at most max_updates
        updates. A row with more is applied in parts, each a transaction of its own (one
        transaction of 75,000 reports would hold its locks, and everything behind it, for
        its whole length); the rows after it go in beside its parts, up to half of each."""
        budget = self._max_updates
        if at.part is None:
            found = [
                _decode(r)
                for r in await queries.read_journal(conn, at.upto, bound, _READ_ROWS, budget)
            ]
            if not found:
                return [], at
            rows = _fitting(found, budget)
            self._more = len(found) == _READ_ROWS or len(rows) < len(found)
            if rows:
                return rows, queries.Progress(rows[-1].position)
            # The next row alone has more than a transaction may apply: its first part.
            self._large = found[0]
            return [self._part(0, budget)], queries.Progress(at.upto, self._large.position, budget)
        if self._large is None or self._large.position != at.part:
            # Another projector began it, or this one restarted: read it again.
            self._large = _decode(await queries.read_row(conn, at.part))
        behind = _fitting(
            [
                _decode(r)
                for r in await queries.read_journal(
                    conn, at.ahead or at.part, bound, _READ_ROWS, budget // 2, first_always=False
                )
            ],
            budget // 2,
        )
        self._more = True  # a row in parts: its next part waits
        room = budget - sum(len(row.updates or ()) for row in behind)
        part = self._part(at.part_done, room)
        ahead = behind[-1].position if behind else at.ahead
        done = at.part_done + room
        if done < len(self._large.updates or ()):
            return [part, *behind], queries.Progress(at.upto, at.part, done, ahead)
        self._large = None
        return [part, *behind], queries.Progress(ahead or at.part)

    def _part(self, start: int, size: int) -> _Row:
        """Updates [start, start + size) of the row being applied in parts; what its parse
        could not read is noted with the first."""
        assert self._large is not None
        large = self._large
        updates = None if large.updates is None else large.updates[start : start + size]
        return replace(large, updates=updates, noted=large.noted if start == 0 else None)

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
            self._polled,
        )

    async def _poisoned(self, conn: Conn, row: _Row, problem: str) -> None:
        log.error("project.poisoned", receipt_id=str(row.entry.receipt_id), problem=problem)
        self._metrics.inc("dlr_projection_poisoned_total", provider=row.provider)
        await queries.note_problem(conn, row.position, f"could not project: {problem}")

    def _count(self, rows: Sequence[_Row], counts: Sequence[int]) -> None:
        # Summed per series first: one increment per series and batch, not two per row (a
        # multiprocess counter writes to its file on every increment).
        sums: Counter[tuple[str, str, str]] = Counter()
        for row, new in zip(rows, counts, strict=True):
            total = len(row.updates or ())
            # No account on the row: the default one (or from before accounts existed).
            account = row.entry.account or DEFAULT_ACCOUNT
            sums[(row.provider, account, "new")] += new
            sums[(row.provider, account, "duplicate")] += total - new
        for (provider, account, outcome), value in sums.items():
            self._metrics.inc(
                "dlr_reports_total", value, provider=provider, account=account, outcome=outcome
            )

    @property
    def position(self) -> tuple[int, int]:
        """Every journal row at or below this is applied."""
        return self.progress.upto

    def _seen(self, progress: queries.Progress) -> None:
        if (progress.upto, progress.ahead or (0, 0), progress.part_done) > (
            self.progress.upto,
            self.progress.ahead or (0, 0),
            self.progress.part_done,
        ):
            self.progress = progress
            self._advanced.set()
            self._advanced = asyncio.Event()

    async def wait_for(self, target: Position, within: float) -> bool:
        """Until the journal row at `target` is projected, by this process's projector or
        another's; False if that took longer than `within` seconds."""
        want = (target.xid, target.id)
        deadline = asyncio.get_running_loop().time() + within
        self.wake()
        self._hurry.set()
        while not self.progress.covers(want):
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            # Another process may be the one projecting: look at the database now and then.
            with suppress(TimeoutError):
                await asyncio.wait_for(self._advanced.wait(), min(left, 0.05))
            if not self.progress.covers(want):
                async with connection(self._pool) as conn:
                    self._seen(await queries.progress(conn))
        return True


def _fitting(rows: list[_Row], budget: int) -> list[_Row]:
    """The leading rows whose updates fit the budget together (the journal's own count is
    the request path's; a parse may find more)."""
    taken, used = [], 0
    for row in rows:
        used += len(row.updates or ())
        if used > budget:
            break
        taken.append(row)
    return taken


def _decode(record: asyncpg.Record) -> _Row:
    entry = Entry(
        record["replays"] or record["receipt_id"],
        record["source"],
        record["received_at"],
        record["account"],
    )
    position = (record["xid"], record["id"])
    if record["updates"] is None:
        return _parse(record, position, entry)
    try:
        updates: list[StatusUpdate] | None = codec.decode(record["updates"])
        problem = None
    except (ValueError, TypeError, KeyError) as exc:
        updates, problem = None, f"journal row unreadable: {type(exc).__name__}: {exc}"
    return _Row(
        position, entry, record["provider"], updates, problem, replays=record["replays"] is not None
    )


def _parse(record: asyncpg.Record, position: tuple[int, int], entry: Entry) -> _Row:
    """A body journaled unparsed: read now, with the parser of its provider. What it cannot
    read is written to the receipt's problem, as the request path would have."""
    provider = PROVIDERS.get(record["provider"])
    parse = provider.report_parser() if provider is not None else None
    if parse is None:
        return _Row(position, entry, record["provider"], None, "no parser for this provider")
    try:
        parsed = parse(record["body"], record["content_type"], record["received_at"])
    except InvalidReport as exc:
        parsed = Parsed([], [str(exc)])
    except Exception as exc:
        # A parser bug must not stop projection for everyone behind this row: its reports
        # wait on the receipt (problem set, so reprocess reads them again after the fix).
        log.error("project.parser_failed", receipt_id=str(entry.receipt_id), exc_info=exc)
        parsed = Parsed([], [f"parser failed: {type(exc).__name__}: {exc}"])
    return _Row(position, entry, record["provider"], parsed.updates, noted=parsed.problem)


def make_projector(
    pool: asyncpg.Pool, settings: Settings, metrics: Metrics | None = None
) -> Projector:
    return Projector(
        pool,
        max_updates=settings.project_max_batch,
        idle_poll=settings.project_idle_poll,
        gather=settings.project_gather,
        # Only what a configured account polls is scheduled: a message nobody will poll
        # must not wait in the poll index (and become `stale`) for nothing.
        polled=polled_accounts(settings),
        metrics=metrics,
    )


def polled_accounts(settings: Settings) -> dict[tuple[str, str | None], float]:
    """The (provider, account) pairs whose messages are polled one by one, and when each one's
    new messages are first polled: its own poll_min_interval, else RECEIVER_POLL_MIN_INTERVAL.
    A message with no account (registered without naming one) is the default account's."""
    pairs: dict[tuple[str, str | None], float] = {}
    for provider, name, account in accounts.polled(settings):
        first = account.poll_min_interval or settings.poll_min_interval
        pairs[(provider.name, name)] = first
        if name == accounts.DEFAULT:
            pairs[(provider.name, None)] = first
    return pairs


@asynccontextmanager
async def projector_running(
    pool: asyncpg.Pool, settings: Settings, metrics: Metrics | None = None
) -> AsyncIterator[Projector]:
    async with looping(make_projector(pool, settings, metrics), "project") as projector:
        yield projector
