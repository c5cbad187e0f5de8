"""The one path into the database: group commit of receipts and status updates from every source.

Concurrent requests hand their parsed updates to one Ingestor. It gathers whatever is waiting
into a single transaction of set-based statements and answers each request only after that
transaction commits: acknowledged means durable. While one batch commits, the next gathers, so
batches grow with load and a lone request waits for nobody.
"""

import asyncio
import hashlib
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import pydantic_core
import structlog

from receiver import queries
from receiver.db import Conn, DatabaseUnavailable, connection, is_transient
from receiver.metrics import Metrics
from receiver.providers.base import clean_json
from receiver.reports import Receipt, StatusUpdate
from receiver.status import Observation, Outcome, Status, compose

log = structlog.get_logger()

# Deadlocks, serialization failures and races on new messages are retried this many times,
# then answered 503 (the provider retries later).
_DEADLOCK_RETRIES = 5


@dataclass(frozen=True)
class StatusChange:
    """A message whose current status moved; what subscribers are told."""

    provider: str
    key: str
    previous: Status | None
    status: Status
    seq: int
    payload: dict[str, Any]

    @property
    def event_id(self) -> str:
        # Derived, not random: the same change always has the same webhook-id, across retries,
        # replays and subscriptions.
        name = f"{self.provider}\x00{self.key}\x00{self.seq}".encode()
        return "evt_" + hashlib.blake2b(name, digest_size=16).hexdigest()


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
    changes: list[StatusChange] = field(default_factory=list)


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
        self._slots = asyncio.Semaphore(max_inflight)
        self._pending: deque[_Submission] = deque()
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
        self._wakeup.set()
        return await future

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
            while self._pending:
                # Waiting for a free slot is what lets the next batch grow under load.
                await self._slots.acquire()
                batch = self._take()
                task = asyncio.create_task(self._flush(batch))
                self._flushes.add(task)
                task.add_done_callback(self._flushes.discard)

    def _take(self) -> list[_Submission]:
        batch = [self._pending.popleft()]
        size = len(batch[0].updates)
        while self._pending and size + len(self._pending[0].updates) <= self._max_batch:
            item = self._pending.popleft()
            size += len(item.updates)
            batch.append(item)
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
            self._slots.release()

    async def _store_with_retry(self, batch: list[_Submission]) -> None:
        for attempt in range(_DEADLOCK_RETRIES):
            for item in batch:  # counts from a rolled-back try do not carry over
                item.new_events = 0
                item.changes.clear()
            try:
                async with connection(self._pool) as conn, conn.transaction():
                    await store(conn, batch, self._polled_providers, self._first_poll_in)
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
            except (asyncpg.exceptions.TransactionRollbackError, Raced) as exc:
                if attempt == _DEADLOCK_RETRIES - 1:
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
    return Receipt(
        receipt.provider, receipt.source, receipt.body, receipt.content_type, problem, receipt.id
    )


def _set_exception(future: asyncio.Future[IngestResult], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)


def _resolve(batch: list[_Submission]) -> None:
    for item in batch:
        if not item.future.done():
            total = len(item.updates)
            item.future.set_result(IngestResult(item.new_events, total - item.new_events))


async def store(
    conn: Conn,
    batch: Sequence[_Submission],
    polled_providers: Sequence[str] = (),
    first_poll_in: float = 30.0,
) -> None:
    """One transaction's work, in three statements: lock the messages the batch touches, read
    them with their events, write receipts, messages, aliases, events and deliveries at once.

    Between the read and the write the status rules run here, in Python (receiver/status.py),
    on everything the message has: stored events and this batch's new ones.
    """
    pairs = [(item, update) for item in batch for update in item.updates]
    keys = sorted({(u.provider, u.message_key) for _, u in pairs})
    states: dict[tuple[str, str], _State] = {key: _State() for key in keys}
    if keys:
        await queries.lock_messages(conn, keys)
        for stored in await queries.read_messages(conn, keys):
            states[(stored["provider"], stored["key"])].load(stored)

    new_events: list[tuple[_Submission, StatusUpdate]] = []
    unmapped: Counter[tuple[str, str]] = Counter()
    for item, update in pairs:
        state = states[(update.provider, update.message_key)]
        state.merge_info(update)
        if update.dedup_key in state.dedup_keys:
            continue  # rule 2: seen before (retry, or pushed and polled), or twice in this batch
        state.dedup_keys.add(update.dedup_key)
        state.events.append(_Event.new(update, item.receipt.source, len(new_events)))
        new_events.append((item, update))
        item.new_events += 1
        if update.unmapped:
            unmapped[(update.provider, update.provider_status or "")] += 1

    message_rows: list[dict[str, Any]] = []
    changes: list[StatusChange] = []
    for key, state in states.items():
        row, change = state.settle(key, key[0] in polled_providers)
        if row is not None:
            message_rows.append(row)
        if change is not None:
            changes.append(change)

    inserted = await queries.write_batch(
        conn,
        receipts=[item.receipt for item in batch],
        messages=_columns(message_rows, (*queries.MESSAGE_COLUMNS, "existed")),
        aliases=sorted({(u.provider, a, u.message_key) for _, u in pairs for a in u.aliases}),
        events=_columns([_event_row(item, u) for item, u in new_events], queries.EVENT_COLUMNS),
        unmapped=dict(unmapped),
        deliveries=_columns([_delivery_row(c) for c in changes], queries.DELIVERY_COLUMNS),
        first_poll_in=first_poll_in,
    )
    expected = sum(1 for row in message_rows if not row["existed"])
    if inserted != expected:
        # A concurrent transaction created one of "our" new messages after we looked: what we
        # computed for it misses that transaction's events. Roll back and go again.
        raise Raced(f"{expected - inserted} new messages were created concurrently")
    for item in batch:
        touched = {(u.provider, u.message_key) for u in item.updates}
        item.changes.extend(c for c in changes if (c.provider, c.key) in touched)


class Raced(Exception):  # noqa: N818 - a condition to retry, not an error
    """Another transaction created a message this batch believed new; retry the batch."""


@dataclass
class _Event:
    """An event as the status rules and the forwarded payload need it."""

    order: int  # stored events by id, then this batch's in arrival order
    status: Status
    occurred_at: datetime | None
    channel: str | None
    attempt_id: str | None
    provider_status: str | None
    provider_code: str | None
    error_code: str | None
    error_text: str | None
    permanent: bool | None
    source: str

    @classmethod
    def new(cls, u: StatusUpdate, source: str, index: int) -> "_Event":
        return cls(
            1 << 62 | index,
            u.status,
            u.occurred_at,
            u.channel,
            u.attempt_id,
            u.provider_status,
            u.provider_code,
            u.error_code,
            u.error_text,
            u.permanent,
            source,
        )


@dataclass
class _State:
    """One message while its batch is processed: what is stored, and what the batch adds."""

    old: dict[str, Any] | None = None
    events: list[_Event] = field(default_factory=list)
    dedup_keys: set[str] = field(default_factory=set)
    info: dict[str, Any] = field(
        default_factory=lambda: (
            dict.fromkeys(("recipient", "group_key", "reference", "channel_order"), None)
            | {"registered": False}
        )
    )
    registered_reference: str | None = None

    def load(self, row: asyncpg.Record) -> None:
        if self.old is None:
            self.old = dict(row)
            order = row["channel_order"]
            self.info = {
                "recipient": row["recipient"],
                "group_key": row["group_key"],
                "reference": row["reference"],
                "channel_order": tuple(order) if order else None,
                "registered": row["registered"],
            }
        if row["event_id"] is not None:
            self.dedup_keys.add(row["dedup_key"])
            self.events.append(
                _Event(
                    row["event_id"],
                    Status(row["event_status"]),
                    row["occurred_at"],
                    row["event_channel"],
                    row["attempt_id"],
                    row["provider_status"],
                    row["provider_code"],
                    row["error_code"],
                    row["error_text"],
                    row["permanent"],
                    row["source"],
                )
            )

    def merge_info(self, u: StatusUpdate) -> None:
        """Rule 5: what reports and registrations say about the message adds up."""
        info = self.info
        info["recipient"] = info["recipient"] or u.recipient
        info["group_key"] = info["group_key"] or u.group_key
        if u.registered and u.reference:
            # A registered reference outranks one a report carried (Infobip callbackData).
            self.registered_reference = u.reference
        info["reference"] = self.registered_reference or info["reference"] or u.reference
        if u.channel_order:
            info["channel_order"] = tuple(u.channel_order)
        info["registered"] = info["registered"] or u.registered

    def settle(
        self, key: tuple[str, str], polled: bool
    ) -> tuple[dict[str, Any] | None, StatusChange | None]:
        """Rules 3 and 4 over every event; the row to write (None: unchanged) and the change."""
        observations = [Observation(e.status, e.occurred_at, e.channel) for e in self.events]
        outcome = compose(observations, self.info["channel_order"] or ())
        attempt_ids = {e.channel: e.attempt_id for e in self.events if e.channel and e.attempt_id}
        attempts = [
            {
                "channel": a.channel,
                "status": a.status.value,
                "occurred_at": a.occurred_at.isoformat() if a.occurred_at else None,
                "message_id": attempt_ids.get(a.channel),
            }
            for a in outcome.attempts
        ]
        old = self.old
        old_status = old["status"] if old else Status.UNKNOWN.value
        old_seq: int = old["seq"] if old else 0
        moved = outcome.status.value != old_status
        seq = old_seq + int(moved)
        row = {
            "provider": key[0],
            "key": key[1],
            **self.info,
            "channel_order": ",".join(self.info["channel_order"] or ()) or None,
            "status": outcome.status.value,
            "status_at": outcome.occurred_at,
            "channel": outcome.channel,
            "attempts": _json_text(attempts),
            "seq": seq,
            "poll": polled and old is None,
            "existed": old is not None,
        }
        unchanged = (
            old is not None
            and not moved
            and (
                old["attempts"] == attempts
                and old["status_at"] == outcome.occurred_at
                and old["channel"] == outcome.channel
                and old["recipient"] == self.info["recipient"]
                and old["group_key"] == self.info["group_key"]
                and old["reference"] == self.info["reference"]
                and (tuple(old["channel_order"]) if old["channel_order"] else None)
                == self.info["channel_order"]
                and old["registered"] == self.info["registered"]
            )
        )
        change = None
        if moved:
            # A message that never had a status before has no previous one to report.
            previous = Status(old_status) if old_seq > 0 else None
            payload = _payload(
                key, self.info, outcome, previous, seq, _deciding(self.events, outcome)
            )
            change = StatusChange(key[0], key[1], previous, outcome.status, seq, payload)
        return (None if unchanged else row), change


def _json_text(value: Any) -> str:
    """JSON for a jsonb column. Postgres refuses the NUL character, which providers' text may
    carry; it is rare, so it is looked for in the encoded bytes before any cleaning is done."""
    data = pydantic_core.to_json(value)
    if b"\\u0000" in data:
        data = pydantic_core.to_json(clean_json(value))
    return data.decode()


def _columns(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, list[Any]]:
    return {name: [row[name] for row in rows] for name in names}


def _event_row(item: _Submission, u: StatusUpdate) -> dict[str, Any]:
    return {
        "provider": u.provider,
        "message_key": u.message_key,
        "dedup_key": u.dedup_key,
        "status": u.status.value,
        "provider_status": u.provider_status,
        "provider_code": u.provider_code,
        "error_code": u.error_code,
        "error_text": u.error_text,
        "permanent": u.permanent,
        "channel": u.channel,
        "attempt_id": u.attempt_id,
        "occurred_at": u.occurred_at,
        "source": item.receipt.source,
        "receipt_id": item.receipt.id,
        "details": _json_text(u.details),
    }


def _delivery_row(change: StatusChange) -> dict[str, Any]:
    envelope = {"type": "message.status", "id": change.event_id, "data": change.payload}
    return {
        "provider": change.provider,
        "message_key": change.key,
        "seq": change.seq,
        "status": change.status.value,
        "event_id": change.event_id,
        "payload": _json_text(envelope),
    }


def _deciding(events: list[_Event], outcome: Outcome) -> _Event | None:
    """The event that gave the message its status; the newest event when the status is
    composed rather than reported (a failover in progress)."""
    matching = [
        e
        for e in events
        if e.status is outcome.status
        and e.channel == outcome.channel
        and e.occurred_at == outcome.occurred_at
    ]
    return max(matching or events, key=lambda e: e.order, default=None)


def _payload(
    key: tuple[str, str],
    info: dict[str, Any],
    outcome: Outcome,
    previous: Status | None,
    seq: int,
    event: _Event | None,
) -> dict[str, Any]:
    """The `data` of a forwarded status change (documented in the README)."""
    return {
        "provider": key[0],
        "message_id": key[1],
        "status": outcome.status.value,
        "previous_status": previous.value if previous else None,
        "seq": seq,
        "status_at": outcome.occurred_at.isoformat() if outcome.occurred_at else None,
        "channel": outcome.channel,
        "recipient": info["recipient"],
        "reference": info["reference"],
        "group": info["group_key"],
        "event": None
        if event is None
        else {
            "provider_status": event.provider_status,
            "provider_code": event.provider_code,
            "error_code": event.error_code,
            "error_text": event.error_text,
            "permanent": event.permanent,
            "channel": event.channel,
            "channel_message_id": event.attempt_id,
            "occurred_at": event.occurred_at.isoformat() if event.occurred_at else None,
            "source": event.source,
        },
    }
