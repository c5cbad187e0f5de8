"""One projection batch: read the messages it touches with their events, apply the status
rules, and write messages, aliases, events and deliveries in one statement."""

import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from receiver import phones
from receiver.db import Conn
from receiver.forwarding import payload
from receiver.forwarding.payload import StatusChange
from receiver.ingest import queries
from receiver.jsonio import jsonb_text
from receiver.reports import StatusUpdate
from receiver.status import Observation, Outcome, Status, compose


@dataclass(frozen=True)
class Entry:
    """A journal row as projection needs it: where its events point, and when it arrived."""

    receipt_id: uuid.UUID
    source: str
    received_at: datetime
    # The provider account the request came by (None: the default account, or from before).
    account: str | None = None


async def apply(
    conn: Conn,
    batch: Sequence[tuple[Entry, Sequence[StatusUpdate]]],
    polled: Mapping[tuple[str, str | None], float] | None = None,
) -> list[int]:
    """Apply journal entries to the timeline: read the messages they touch with their events,
    run the status rules, then write messages, aliases, events and deliveries in one statement.

    The status rules run here, in Python (receiver/status.py), on everything the message has:
    stored events and this batch's new ones. The write is checked against what was read: if
    another transaction changed one of these messages meanwhile (retention deleting it, say),
    it fails with a serialization failure and the caller runs the batch again. Returns, per
    entry, how many of its updates were new events (the rest were duplicates).
    """
    new_counts = [0] * len(batch)
    pairs = [
        (index, entry, update) for index, (entry, updates) in enumerate(batch) for update in updates
    ]
    keys = sorted({(u.provider, u.message_key) for _, _, u in pairs})
    states: dict[tuple[str, str], _State] = {key: _State() for key in keys}
    if keys:
        for stored in await queries.read_messages(conn, keys):
            states[(stored["provider"], stored["key"])].load(stored)

    events: list[queries.EventRow] = []
    unmapped: Counter[tuple[str, str]] = Counter()
    for index, entry, update in pairs:
        state = states[(update.provider, update.message_key)]
        state.merge_info(update)
        # A message belongs to the account its first report came by.
        state.info["account"] = state.info["account"] or entry.account
        if update.dedup_key in state.dedup_keys:
            continue  # rule 2: seen before (retry, or pushed and polled), or twice in this batch
        state.dedup_keys.add(update.dedup_key)
        state.has_new_events = True
        state.events.append(_Event.new(update, entry.source, len(events)))
        events.append(
            queries.EventRow.of(update, entry.source, entry.receipt_id, entry.received_at)
        )
        new_counts[index] += 1
        if update.unmapped:
            unmapped[(update.provider, update.provider_status or "")] += 1

    # Payloads are built only once some subscription exists: most of the work of a status
    # change, and with no subscribers, all of it wasted. Then every change is built and kept,
    # whatever the filters, since a replay of its time range re-sends it to any subscription
    # that matches it then (enabled, or disabled at the time). A subscription created while
    # this batch runs takes effect from the next batch.
    recording = await queries.any_subscription(conn)

    messages: list[queries.MessageRow] = []
    changes: list[StatusChange] = []
    for key, state in states.items():
        # Scheduled only if the account the message came by polls it (None: registered
        # without naming an account, the default account's), after that account's interval.
        poll_in = (polled or {}).get((key[0], state.info["account"]))
        row, change = state.settle(key, poll_in, recording)
        if row is not None:
            messages.append(row)
        if change is not None:
            changes.append(change)

    await queries.write_batch(
        conn,
        messages=messages,
        aliases=sorted({(u.provider, a, u.message_key) for _, _, u in pairs for a in u.aliases}),
        events=events,
        unmapped=[
            queries.UnmappedRow(provider, status, count)
            for (provider, status), count in sorted(unmapped.items())
        ],
        deliveries=[_delivery_row(c) for c in changes],
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
    # The dedup key this event speaks for: its own, or the one it corrects (re-mapping).
    root: str
    correction: bool = False

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
            u.corrects or u.dedup_key,
            u.corrects is not None,
        )


_NO_INFO: dict[str, Any] = {
    "recipient": None,
    "group_key": None,
    "reference": None,
    "channel_order": None,
    "registered": False,
    "account": None,
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
                "account": row["account"],
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
                    row["corrects"] or row["dedup_key"],
                    row["corrects"] is not None,
                )
            )

    def merge_info(self, u: StatusUpdate) -> None:
        """Rule 5: what reports and registrations say about the message adds up."""
        info = self.info
        # Stored as E.164 where it is an international number, so one search finds it
        # whichever provider wrote it (computed only while the message has none).
        info["recipient"] = info["recipient"] or phones.stored(u.recipient)
        info["group_key"] = info["group_key"] or u.group_key
        if u.registered and u.reference:
            # A registered reference outranks one a report carried (Infobip callbackData).
            self.registered_reference = u.reference
        info["reference"] = self.registered_reference or info["reference"] or u.reference
        if u.channel_order:
            info["channel_order"] = tuple(u.channel_order)
        info["registered"] = info["registered"] or u.registered

    def settle(
        self, key: tuple[str, str], poll_in: float | None, recording: bool
    ) -> tuple[queries.MessageRow | None, StatusChange | None]:
        """Rules 3 and 4 over every event; the row to write (None: unchanged) and, when
        `recording`, the change. `poll_in`: seconds to a new message's first poll, if any."""
        events = _effective(self.events)
        # A report that names no channel (Infobip's WhatsApp and Viber reports) is about the
        # one channel the message is known by, from its registration or an earlier report.
        channels = {e.channel for e in events if e.channel}
        only = next(iter(channels)) if len(channels) == 1 else None
        observations = [Observation(e.status, e.occurred_at, e.channel or only) for e in events]
        outcome = compose(observations, self.info["channel_order"] or ())
        attempt_ids = {e.channel: e.attempt_id for e in events if e.channel and e.attempt_id}
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
        info = self.info
        unchanged = (
            old is not None
            and not self.has_new_events
            and not moved
            and (
                old["attempts"] == attempts
                and old["status_at"] == outcome.occurred_at
                and old["channel"] == outcome.channel
                and old["recipient"] == info["recipient"]
                and old["group_key"] == info["group_key"]
                and old["reference"] == info["reference"]
                and (tuple(old["channel_order"]) if old["channel_order"] else None)
                == info["channel_order"]
                and old["registered"] == info["registered"]
                and old["account"] == info["account"]
            )
        )
        change = None
        if moved and recording:
            # A message that never had a status before has no previous one to report.
            previous = Status(old_status) if old_seq > 0 else None
            data = payload.data(
                key,
                status=outcome.status,
                previous=previous,
                seq=seq,
                status_at=outcome.occurred_at,
                channel=outcome.channel,
                recipient=info["recipient"],
                reference=info["reference"],
                group=info["group_key"],
                account=info["account"],
                event=_deciding(events, outcome),
            )
            change = StatusChange(key[0], key[1], previous, outcome.status, seq, data)
        if unchanged:
            return None, change
        row = queries.MessageRow(
            provider=key[0],
            key=key[1],
            recipient=info["recipient"],
            group_key=info["group_key"],
            reference=info["reference"],
            channel_order=list(info["channel_order"]) if info["channel_order"] else None,
            registered=info["registered"],
            status=outcome.status.value,
            status_at=outcome.occurred_at,
            channel=outcome.channel,
            attempts=jsonb_text(attempts),
            seq=seq,
            existed=old is not None,
            version=old["version"] if old else 0,
            account=info["account"],
            poll_in=poll_in if old is None else None,
        )
        return row, change


def _effective(events: list[_Event]) -> list[_Event]:
    """The events the status rules see: for each dedup key, the newest correction of it, or
    the event itself when nothing corrected it (almost always: no copy is made then)."""
    if not any(e.correction for e in events):
        return events
    newest: dict[str, _Event] = {}
    for e in events:
        if e.root not in newest or e.order > newest[e.root].order:
            newest[e.root] = e
    return sorted(newest.values(), key=lambda e: e.order)


def _delivery_row(change: StatusChange) -> queries.DeliveryRow:
    return queries.DeliveryRow(
        provider=change.provider,
        message_key=change.key,
        seq=change.seq,
        status=change.status.value,
        event_id=change.event_id,
        payload=jsonb_text(change.envelope()),
    )


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
