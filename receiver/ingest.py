"""The one path into the database: group commit of receipts and status updates from every source.

Concurrent requests hand their parsed updates to one Ingestor. It gathers whatever is waiting
into a single transaction of set-based statements and answers each request only after that
transaction commits: acknowledged means durable. While one batch commits, the next gathers, so
batches grow with load and a lone request waits for nobody.
"""

import asyncio
import json
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from receiver import forward_queries, queries
from receiver.db import Conn, connection, is_transient
from receiver.reports import Receipt, StatusUpdate
from receiver.status import Observation, Outcome, Status, compose

log = structlog.get_logger()

_DEADLOCK_RETRIES = 3


_EVENT_IDS = uuid.UUID("6f1c3a52-5d0e-4f4e-9a57-3c1f6d0b8e21")


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
        name = f"{self.provider}\x00{self.key}\x00{self.seq}"
        return "evt_" + uuid.uuid5(_EVENT_IDS, name).hex


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
    ) -> None:
        self._pool = pool
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
                return
            except asyncpg.exceptions.TransactionRollbackError:
                if attempt == _DEADLOCK_RETRIES - 1:
                    raise
                log.warning("ingest.retry", attempt=attempt + 1, requests=len(batch))

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
    """One transaction's work: receipts, messages, aliases, events, then derived statuses."""
    await queries.insert_receipts(conn, [item.receipt for item in batch])
    pairs = [(item, update) for item in batch for update in item.updates]
    if not pairs:
        return

    before = {
        (r["provider"], r["key"]): r
        for r in await queries.upsert_messages(
            conn, _message_rows([u for _, u in pairs]), polled_providers, first_poll_in
        )
    }
    aliases = sorted({(u.provider, alias, u.message_key) for _, u in pairs for alias in u.aliases})
    if aliases:
        await queries.insert_aliases(conn, aliases)

    inserted = await queries.insert_events(conn, _event_columns(pairs))
    new = {(r["provider"], r["message_key"], r["dedup_key"]) for r in inserted}
    unmapped: Counter[tuple[str, str]] = Counter()
    for item, update in pairs:
        key = (update.provider, update.message_key, update.dedup_key)
        if key in new:
            new.discard(key)  # a report twice in one batch counts once
            item.new_events += 1
            if update.unmapped:
                unmapped[(update.provider, update.provider_status or "")] += 1
    if unmapped:
        await queries.count_unmapped(conn, unmapped)

    changes = await _recompute(conn, before)
    if changes:
        await forward_queries.enqueue(conn, changes)
    for item in batch:
        keys = {(u.provider, u.message_key) for u in item.updates}
        item.changes.extend(c for c in changes if (c.provider, c.key) in keys)


def _message_rows(updates: Sequence[StatusUpdate]) -> list[dict[str, Any]]:
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for u in updates:
        row = merged.setdefault(
            (u.provider, u.message_key),
            {
                "provider": u.provider,
                "key": u.message_key,
                "recipient": None,
                "group_key": None,
                "reference": None,
                "channel_order": None,
                "registered": False,
            },
        )
        row["recipient"] = row["recipient"] or u.recipient
        row["group_key"] = row["group_key"] or u.group_key
        row["reference"] = row["reference"] or u.reference
        if u.channel_order:
            row["channel_order"] = ",".join(u.channel_order)
        row["registered"] = row["registered"] or u.registered
    # Sorted, so concurrent transactions lock shared messages in the same order.
    return [merged[k] for k in sorted(merged)]


def _event_columns(pairs: Sequence[tuple[_Submission, StatusUpdate]]) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {
        name: []
        for name in (
            "provider",
            "message_key",
            "dedup_key",
            "status",
            "provider_status",
            "provider_code",
            "error_code",
            "error_text",
            "permanent",
            "channel",
            "attempt_id",
            "occurred_at",
            "source",
            "receipt_id",
            "details",
        )
    }
    for item, u in pairs:
        columns["provider"].append(u.provider)
        columns["message_key"].append(u.message_key)
        columns["dedup_key"].append(u.dedup_key)
        columns["status"].append(u.status.value)
        columns["provider_status"].append(u.provider_status)
        columns["provider_code"].append(u.provider_code)
        columns["error_code"].append(u.error_code)
        columns["error_text"].append(u.error_text)
        columns["permanent"].append(u.permanent)
        columns["channel"].append(u.channel)
        columns["attempt_id"].append(u.attempt_id)
        columns["occurred_at"].append(u.occurred_at)
        columns["source"].append(item.receipt.source)
        columns["receipt_id"].append(item.receipt.id)
        columns["details"].append(json.dumps(u.details, default=str))
    return columns


async def _recompute(
    conn: Conn, before: dict[tuple[str, str], asyncpg.Record]
) -> list[StatusChange]:
    """Rules 3 and 4: derive each touched message's status from all of its stored events."""
    observations: dict[tuple[str, str], list[Observation]] = {key: [] for key in before}
    events: dict[tuple[str, str], list[asyncpg.Record]] = {key: [] for key in before}
    attempt_ids: dict[tuple[str, str, str], str] = {}
    for r in await queries.fetch_observations(conn, list(before)):
        key = (r["provider"], r["message_key"])
        observations[key].append(Observation(Status(r["status"]), r["occurred_at"], r["channel"]))
        events[key].append(r)
        if r["channel"] is not None and r["attempt_id"] is not None:
            attempt_ids[(*key, r["channel"])] = r["attempt_id"]

    rows, changes = [], []
    for key, old in before.items():
        outcome = compose(observations[key], old["channel_order"] or ())
        attempts = _attempts_json(outcome, attempt_ids, key)
        moved = outcome.status.value != old["status"]
        same_detail = (
            attempts == old["attempts"]
            and outcome.occurred_at == old["status_at"]
            and outcome.channel == old["channel"]
        )
        if not moved and same_detail:
            continue
        rows.append(
            {
                "provider": key[0],
                "key": key[1],
                "status": outcome.status.value,
                "status_at": outcome.occurred_at,
                "channel": outcome.channel,
                "attempts": json.dumps(attempts),
                "bump": int(moved),
            }
        )
        if moved:
            # A message that never had a status before has no previous one to report.
            previous = Status(old["status"]) if old["seq"] > 0 else None
            seq = old["seq"] + 1
            payload = _payload(old, outcome, previous, seq, _deciding(events[key], outcome))
            changes.append(StatusChange(key[0], key[1], previous, outcome.status, seq, payload))
    if rows:
        await queries.update_statuses(conn, rows)
    return changes


def _deciding(events: list[asyncpg.Record], outcome: Outcome) -> asyncpg.Record | None:
    """The event that gave the message its status; the newest event when the status is
    composed rather than reported (a failover in progress)."""
    matching = [
        e
        for e in events
        if e["status"] == outcome.status.value
        and e["channel"] == outcome.channel
        and e["occurred_at"] == outcome.occurred_at
    ]
    return max(matching or events, key=lambda e: e["id"], default=None)


def _payload(
    old: asyncpg.Record,
    outcome: Outcome,
    previous: Status | None,
    seq: int,
    event: asyncpg.Record | None,
) -> dict[str, Any]:
    """The `data` of a forwarded status change (documented in the README)."""
    return {
        "provider": old["provider"],
        "message_id": old["key"],
        "status": outcome.status.value,
        "previous_status": previous.value if previous else None,
        "seq": seq,
        "status_at": outcome.occurred_at.isoformat() if outcome.occurred_at else None,
        "channel": outcome.channel,
        "recipient": old["recipient"],
        "reference": old["reference"],
        "group": old["group_key"],
        "event": None
        if event is None
        else {
            "provider_status": event["provider_status"],
            "provider_code": event["provider_code"],
            "error_code": event["error_code"],
            "error_text": event["error_text"],
            "permanent": event["permanent"],
            "channel": event["channel"],
            "channel_message_id": event["attempt_id"],
            "occurred_at": event["occurred_at"].isoformat() if event["occurred_at"] else None,
            "source": event["source"],
        },
    }


def _attempts_json(
    outcome: Outcome, attempt_ids: dict[tuple[str, str, str], str], key: tuple[str, str]
) -> list[dict[str, Any]]:
    return [
        {
            "channel": a.channel,
            "status": a.status.value,
            "occurred_at": a.occurred_at.isoformat() if a.occurred_at else None,
            "message_id": attempt_ids.get((*key, a.channel)),
        }
        for a in outcome.attempts
    ]
