"""One batch's work: read the messages it touches with their events, apply the status rules,
and write receipts, messages, aliases, events and deliveries in one statement."""

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter
from typing import Any

import asyncpg

from receiver import queries
from receiver.db import Conn
from receiver.jsonio import jsonb_text
from receiver.reports import Receipt, StatusUpdate
from receiver.status import Observation, Outcome, Status, compose


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


async def store(
    conn: Conn,
    batch: Sequence[tuple[Receipt, Sequence[StatusUpdate]]],
    polled_providers: Sequence[str] = (),
    first_poll_in: float = 30.0,
) -> list[int]:
    """One batch in two statements: read the messages it touches with their events, then
    write receipts, messages, aliases, events and deliveries at once (its own transaction).

    Between the two the status rules run here, in Python (receiver/status.py), on everything
    the message has: stored events and this batch's new ones. Nothing is locked meanwhile: if
    another transaction changes one of these messages first, the write fails with a
    serialization failure and the caller runs the batch again. Returns, per receipt, how many
    of its updates were new events (the rest were duplicates).
    """
    new_counts = [0] * len(batch)
    pairs = [
        (index, receipt, update)
        for index, (receipt, updates) in enumerate(batch)
        for update in updates
    ]
    keys = sorted({(u.provider, u.message_key) for _, _, u in pairs})
    states: dict[tuple[str, str], _State] = {key: _State() for key in keys}
    if keys:
        for stored in await queries.read_messages(conn, keys):
            states[(stored["provider"], stored["key"])].load(stored)

    new_events: list[tuple[Receipt, StatusUpdate]] = []
    unmapped: Counter[tuple[str, str]] = Counter()
    for index, receipt, update in pairs:
        state = states[(update.provider, update.message_key)]
        state.merge_info(update)
        if update.dedup_key in state.dedup_keys:
            continue  # rule 2: seen before (retry, or pushed and polled), or twice in this batch
        state.dedup_keys.add(update.dedup_key)
        state.has_new_events = True
        state.events.append(_Event.new(update, receipt.source, len(new_events)))
        new_events.append((receipt, update))
        new_counts[index] += 1
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

    await queries.write_batch(
        conn,
        receipts=[receipt for receipt, _ in batch],
        messages=_columns(message_rows, (*queries.MESSAGE_COLUMNS, "existed", "version")),
        aliases=sorted({(u.provider, a, u.message_key) for _, _, u in pairs for a in u.aliases}),
        events=_event_columns(new_events),
        unmapped=dict(unmapped),
        deliveries=_columns([_delivery_row(c) for c in changes], queries.DELIVERY_COLUMNS),
        first_poll_in=first_poll_in,
    )
    return new_counts


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


_NO_INFO: dict[str, Any] = {
    "recipient": None,
    "group_key": None,
    "reference": None,
    "channel_order": None,
    "registered": False,
}


@dataclass
class _State:
    """One message while its batch is processed: what is stored, and what the batch adds."""

    old: dict[str, Any] | None = None
    events: list[_Event] = field(default_factory=list)
    dedup_keys: set[str] = field(default_factory=set)
    info: dict[str, Any] = field(default_factory=lambda: _NO_INFO.copy())
    registered_reference: str | None = None
    # A message with new events is written even when its row comes out the same: the write
    # bumps its version, which is how a concurrent batch that missed those events finds out.
    has_new_events: bool = False

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
            "attempts": jsonb_text(attempts),
            "seq": seq,
            "poll": polled and old is None,
            "existed": old is not None,
            "version": old["version"] if old else 0,
        }
        unchanged = (
            old is not None
            and not self.has_new_events
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


def _columns(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, list[Any]]:
    return {name: [row[name] for row in rows] for name in names}


# An update's own event columns, in queries.EVENT_COLUMNS order (its receipt adds the rest).
_EVENT_FIELDS = attrgetter(*queries.EVENT_COLUMNS[:12])


def _event_columns(new_events: Sequence[tuple[Receipt, StatusUpdate]]) -> dict[str, list[Any]]:
    """The events as one list per column, transposed in C: this runs for every report."""
    rows = [(*_EVENT_FIELDS(u), r.source, r.id, u.details_json) for r, u in new_events]
    columns = [list(column) for column in zip(*rows, strict=True)] if rows else None
    return {name: columns[i] if columns else [] for i, name in enumerate(queries.EVENT_COLUMNS)}


def _delivery_row(change: StatusChange) -> dict[str, Any]:
    envelope = {"type": "message.status", "id": change.event_id, "data": change.payload}
    return {
        "provider": change.provider,
        "message_key": change.key,
        "seq": change.seq,
        "status": change.status.value,
        "event_id": change.event_id,
        "payload": jsonb_text(envelope),
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
