"""The SQL of ingest: appending to the journal, and projecting it onto the timeline.

Rows of many columns travel as typed rows: a named tuple per row, mirrored by a composite type
in SQL, sent as one array of that type and read back by column name.
"""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import asyncpg

from receiver.db import Conn
from receiver.forwarding.queries import CHANNEL as NOTIFY_CHANNEL
from receiver.reports import Receipt, StatusUpdate

# The journal


class JournalRow(NamedTuple):
    """One request's journal row. A named tuple: built once per request on the acknowledgement
    path, where a frozen dataclass's field-by-field __init__ showed in profiles."""

    receipt_id: uuid.UUID
    provider: str
    source: str
    content_type: str | None
    body: bytes
    problem: str | None
    updates: bytes | None  # None: the projector parses the body
    update_count: int
    replays: uuid.UUID | None
    account: str | None

    @classmethod
    def of(cls, receipt: Receipt, updates: bytes | None, count: int) -> "JournalRow":
        return cls(
            receipt.id,
            receipt.provider,
            receipt.source,
            _text(receipt.content_type),
            receipt.body,
            # A problem may quote the input, NUL included, which text columns refuse.
            _text(receipt.problem),
            updates,
            count,
            receipt.replays,
            _text(receipt.account),
        )


def _text(value: str | None) -> str | None:
    """Fit for a text column: no NUL, and UTF-8 (aiohttp hands over a header's stray bytes
    as lone surrogates, which would fail the whole group commit the row rides in)."""
    if not value:
        return value
    value = value.replace("\x00", "\\x00")
    try:
        value.encode()
    except UnicodeEncodeError:
        value = value.encode(errors="replace").decode()
    return value


async def append(conn: Conn, rows: Sequence[JournalRow]) -> tuple[int, int]:
    """Many requests' rows in one statement, its own transaction: the group commit. Returns
    the (xid, id) of the last row, the place in projection order by which all are applied."""
    # Arrays of one column each: the acknowledgement path's only statement, and binary
    # arrays are the cheapest way in for asyncpg and Postgres alike. One row comes back, not
    # one per request: decoding those was a tenth of what the statement cost this process.
    found = await conn.fetchrow(
        """
        with added as (
            insert into journal (receipt_id, provider, source, content_type, body, problem,
                                 updates, update_count, replays, account)
            select * from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[],
                                 $6::text[], $7::bytea[], $8::int[], $9::uuid[], $10::text[])
            returning id
        )
        select pg_current_xact_id()::text::bigint as xid, max(id) as last from added
        """,
        [r.receipt_id for r in rows],
        [r.provider for r in rows],
        [r.source for r in rows],
        [r.content_type for r in rows],
        [r.body for r in rows],
        [r.problem for r in rows],
        [r.updates for r in rows],
        [r.update_count for r in rows],
        [r.replays for r in rows],
        [r.account for r in rows],
    )
    assert found is not None
    return found["xid"], found["last"]


async def ensure_partitions(conn: Conn, days_ahead: int) -> int:
    """Day partitions from today to `days_ahead` days on; returns how many were created."""
    created: int = await conn.fetchval(
        "select journal_ensure_partitions(current_date, current_date + $1::int)", days_ahead
    )
    return created


# Projection


Position = tuple[int, int]  # (xid, id): a journal row's place in projection order


@dataclass(frozen=True)
class Progress:
    """How far projection has got (projection_progress, see migration 0009): every row at or
    below `upto`; of the row after it, when that one is applied in parts, its first
    `part_done` updates, and the rows after it up to `ahead` (None: none yet)."""

    upto: Position
    part: Position | None = None
    part_done: int = 0
    ahead: Position | None = None

    def covers(self, at: Position) -> bool:
        """Whether the journal row at `at` is applied in full."""
        if at <= self.upto:
            return True
        return self.part is not None and self.ahead is not None and self.part < at <= self.ahead


_PROGRESS = """
    select xid::text::bigint, id, part_xid::text::bigint, part_id, part_done,
           ahead_xid::text::bigint, ahead_id
    from projection_progress where lane = 0
"""


def _progress(row: asyncpg.Record | None) -> Progress:
    assert row is not None, "projection_progress is seeded by migration 0007"
    part = None if row["part_id"] is None else (row["part_xid"], row["part_id"])
    ahead = None if row["ahead_id"] is None else (row["ahead_xid"], row["ahead_id"])
    return Progress((row["xid"], row["id"]), part, row["part_done"], ahead)


async def lock_progress(conn: Conn) -> Progress:
    """Take the projection turn (inside a transaction): other projectors wait for it."""
    return _progress(await conn.fetchrow(_PROGRESS + " for update"))


async def progress(conn: Conn) -> Progress:
    """How far projection has got, without waiting for a projector's turn."""
    return _progress(await conn.fetchrow(_PROGRESS))


_JOURNAL_COLUMNS = """
    j.xid::text::bigint as xid, j.id, j.receipt_id, j.provider, j.source, j.received_at,
    j.updates, j.replays, j.update_count, j.content_type, j.account,
    -- The body only where the projector is to parse it.
    case when j.updates is null then j.body end as body
"""


# The oldest transaction of this database still running, as an xid8, or the next xid to be
# given if none is. pg_stat_activity and pg_prepared_xacts give 32-bit xids: each is widened
# with the epoch of the next xid (running ones are within 2^31 of it).
_WRITERS_BOUND = """
    with next as (select pg_snapshot_xmax(pg_current_snapshot())::text::bigint as x)
    select least(
        next.x,
        (select min(next.x - ((next.x % 4294967296) - a.backend_xid::text::bigint
                              + 4294967296) % 4294967296)
         from pg_stat_activity a
         where a.datname = current_database() and a.backend_xid is not null
           and a.pid <> pg_backend_pid()),
        (select min(next.x - ((next.x % 4294967296) - p.transaction::text::bigint
                              + 4294967296) % 4294967296)
         from pg_prepared_xacts p
         where p.database = current_database())
    )
    from next
"""


async def writers_bound(conn: Conn) -> int:
    """The xid below which every transaction that could write this journal has ended: only
    rows below it may be projected. A transaction still open may yet commit rows with lower
    ids than rows already visible, and the watermark must never pass them.

    Only this database's transactions can write its journal. The cluster-wide bound
    (pg_snapshot_xmin) would let a write left open in another database of the same server
    (an idle-in-transaction session of some other application) halt projection here.

    Why this is safe: the snapshot the statement starts with comes before its read of
    pg_stat_activity, which a transaction reads once and keeps (so call this once per
    transaction, before anything else there reads it). A transaction of this database with
    an xid below the bound got that xid before the snapshot; had it still been running at the
    read, it would have been listed, and the bound would be at most its xid. So it has ended,
    and a later statement's snapshot sees all it committed.
    """
    bound: int = await conn.fetchval(_WRITERS_BOUND)
    return bound


async def read_journal(
    conn: Conn,
    after: Position,
    bound: int,
    max_rows: int,
    max_updates: int,
    *,
    first_always: bool = True,
) -> list[asyncpg.Record]:
    """The next journal rows in (xid, id) order, below the xid `bound` (writers_bound), up to
    max_updates updates; with `first_always`, at least one row however many updates it has
    (the rows after it stop before max_updates is passed, but the last may pass it)."""
    return await conn.fetch(
        f"""
        select * from (
            select {_JOURNAL_COLUMNS},
                   sum(j.update_count) over (order by j.xid, j.id) as upto
            from journal j
            where (j.xid, j.id) > ($1::text::xid8, $2)
              and j.xid < $6::text::xid8
            order by j.xid, j.id
            limit $3
        ) next
        where case when $5 then upto - update_count < $4 else upto <= $4 end
        order by xid, id
        """,  # noqa: S608 - constant column list
        str(after[0]),
        after[1],
        max_rows,
        max_updates,
        first_always,
        str(bound),
    )


async def read_row(conn: Conn, at: Position) -> asyncpg.Record:
    """One journal row, the one being applied in parts."""
    row = await conn.fetchrow(
        f"select {_JOURNAL_COLUMNS} from journal j where j.xid = $1::text::xid8 and j.id = $2",  # noqa: S608
        str(at[0]),
        at[1],
    )
    assert row is not None, "a row in parts is not dropped before it is applied (retention)"
    return row


async def advance(conn: Conn, to: Progress) -> None:
    await conn.execute(
        """
        update projection_progress
        set xid = $1::text::xid8, id = $2, part_xid = $3::text::xid8, part_id = $4,
            part_done = $5, ahead_xid = $6::text::xid8, ahead_id = $7, updated_at = now()
        where lane = 0
        """,
        str(to.upto[0]),
        to.upto[1],
        None if to.part is None else str(to.part[0]),
        None if to.part is None else to.part[1],
        to.part_done,
        None if to.ahead is None else str(to.ahead[0]),
        None if to.ahead is None else to.ahead[1],
    )


async def note_problem(conn: Conn, at: tuple[int, int], problem: str) -> None:
    """A journal row the projector could not apply in full: the reason joins its problem."""
    await conn.execute(
        """
        update journal set problem = concat_ws('; ', problem, $3::text)
        where xid = $1::text::xid8 and id = $2
        """,
        str(at[0]),
        at[1],
        _text(problem),
    )


async def settle_replay(conn: Conn, at: Position) -> None:
    """A reprocess row projected: the receipt it read again takes its problem (what is still
    unread, and anything the projection could not store), in the projection's transaction."""
    await conn.execute(
        """
        update journal o set problem = r.problem
        from journal r
        where r.xid = $1::text::xid8 and r.id = $2
          and o.receipt_id = r.replays and o.replays is null
        """,
        str(at[0]),
        at[1],
    )


async def backlog(conn: Conn) -> tuple[int, float]:
    """Journal rows not yet projected, and how long the oldest of them has waited (s)."""
    row = await conn.fetchrow(
        """
        select count(*) as rows,
               coalesce(extract(epoch from now() - min(j.received_at)), 0)::float8 as lag
        from journal j, projection_progress p
        where p.lane = 0 and (j.xid, j.id) > (p.xid, p.id)
        """
    )
    assert row is not None
    return row["rows"], row["lag"]


async def read_messages(conn: Conn, keys: Sequence[tuple[str, str]]) -> list[asyncpg.Record]:
    """The stored messages among these keys, one row per event (event columns null if none).

    One statement, so one snapshot: a message and its events agree.
    """
    return await conn.fetch(
        """
        select m.provider, m.key, m.version, m.status, m.status_at, m.channel, m.attempts, m.seq,
               m.channel_order, m.recipient, m.reference, m.group_key, m.account,
               m.registered_at is not null as registered,
               e.id as event_id, e.dedup_key, e.status as event_status, e.occurred_at,
               e.channel as event_channel, e.attempt_id, e.provider_status, e.provider_code,
               e.error_code, e.error_text, e.permanent, e.source, e.corrects
        from unnest($1::text[], $2::text[]) as k(provider, key)
        join messages m on m.provider = k.provider and m.key = k.key
        left join events e on e.provider = m.provider and e.message_key = m.key
        order by m.provider, m.key, e.id
        """,
        [k[0] for k in keys],
        [k[1] for k in keys],
    )


async def any_subscription(conn: Conn) -> bool:
    """Whether any subscription exists, enabled or not."""
    return bool(await conn.fetchval("select exists (select 1 from subscriptions)"))


# The rows a projection batch writes. Each mirrors a composite type of the same shape in
# sql/migrations/0007_journal.sql (projected_event, ...; projected_message_v2 in 0013): a list
# of them goes to Postgres as one typed array, read back by column name, and the order of
# fields is said twice, here and there, never again. Named tuples: one is built for every
# report projected.


class MessageRow(NamedTuple):
    """Mirrors projected_message_v2 (sql/migrations/0013_first_poll_per_account.sql)."""

    provider: str
    key: str
    recipient: str | None
    group_key: str | None
    reference: str | None
    channel_order: list[str] | None
    registered: bool
    status: str
    status_at: datetime | None
    channel: str | None
    attempts: str  # jsonb text
    seq: int
    existed: bool
    version: int  # the version it was read at
    account: str | None  # the provider account its first report came by (0011)
    # A new message of a polled account: its first poll this many seconds on (0013).
    poll_in: float | None


class EventRow(NamedTuple):
    """Mirrors projected_event."""

    provider: str
    message_key: str
    dedup_key: str
    status: str
    provider_status: str | None
    provider_code: str | None
    error_code: str | None
    error_text: str | None
    permanent: bool | None
    channel: str | None
    attempt_id: str | None
    occurred_at: datetime | None
    received_at: datetime
    source: str
    receipt_id: uuid.UUID
    details: str  # jsonb text
    corrects: str | None

    @classmethod
    def of(
        cls, u: StatusUpdate, source: str, receipt_id: uuid.UUID, received_at: datetime
    ) -> "EventRow":
        return cls(
            u.provider,
            u.message_key,
            u.dedup_key,
            u.status.value,
            u.provider_status,
            u.provider_code,
            u.error_code,
            u.error_text,
            u.permanent,
            u.channel,
            u.attempt_id,
            u.occurred_at,
            received_at,
            source,
            receipt_id,
            u.details_json,
            u.corrects,
        )


class UnmappedRow(NamedTuple):
    """Mirrors projected_unmapped."""

    provider: str
    provider_status: str
    seen: int  # reports, added to the count


class DeliveryRow(NamedTuple):
    """Mirrors projected_delivery."""

    provider: str
    message_key: str
    seq: int
    status: str
    event_id: str
    payload: str  # jsonb text


async def write_batch(
    conn: Conn,
    *,
    messages: Sequence[MessageRow],
    aliases: Sequence[tuple[str, str, str]],
    events: Sequence[EventRow],
    unmapped: Sequence[UnmappedRow],
    deliveries: Sequence[DeliveryRow],
) -> None:
    """Everything a projection batch changes, in one statement.

    Rules that live here: a stored message is updated only at the version it was read at, a
    new one inserted only if still absent (else ingest_check_written raises a serialization
    failure and the batch runs again); events are only ever inserted, and a dedup key already
    stored for a message is skipped (rule 2); an alias already pointing at a message stays;
    each status change is kept (status_changes) and queues one delivery per matching enabled
    subscription, and the NOTIFY
    that wakes the forwarders is delivered only if this commits. Foreign keys are checked at
    the end of the statement, so events may reference messages inserted by it.
    """
    await conn.execute(
        """
        with u as (
            select (m).* from unnest($1::projected_message_v2[]) as m
        ), messages_updated as (
            -- Stored messages, only at the version the batch computed them from.
            update messages m set
                recipient = u.recipient, group_key = u.group_key, reference = u.reference,
                channel_order = u.channel_order,
                registered_at = coalesce(m.registered_at, case when u.registered then now() end),
                status = u.status, status_at = u.status_at, channel = u.channel,
                attempts = u.attempts::jsonb, seq = u.seq, updated_at = now(),
                version = m.version + 1,
                -- A final message is not polled again (messages_final_not_scheduled).
                next_poll_at = case when u.status in ('delivered', 'read', 'failed', 'expired',
                                                      'rejected', 'cancelled')
                                    then null else m.next_poll_at end,
                account = coalesce(m.account, u.account)
            from u
            where u.existed and m.provider = u.provider and m.key = u.key
              and m.version = u.version
            returning 1
        ), messages_inserted as (
            -- New messages: inserted only if nobody else has meanwhile (never overwritten).
            insert into messages (provider, key, recipient, group_key, reference,
                                  channel_order, registered_at, status, status_at, channel,
                                  attempts, seq, next_poll_at, account)
            select u.provider, u.key, u.recipient, u.group_key, u.reference, u.channel_order,
                   case when u.registered then now() end,
                   u.status, u.status_at, u.channel, u.attempts::jsonb, u.seq,
                   -- Only an unfinished message of a polled account is scheduled.
                   case when u.poll_in is not null
                         and u.status not in ('delivered', 'read', 'failed', 'expired',
                                              'rejected', 'cancelled')
                        then now() + make_interval(secs => u.poll_in) end,
                   u.account
            from u
            where not u.existed
            on conflict (provider, key) do nothing
            returning 1
        ), aliases_in as (
            insert into aliases (provider, alias, message_key)
            select * from unnest($2::text[], $3::text[], $4::text[])
            on conflict do nothing
        ), events_in as (
            insert into events (provider, message_key, dedup_key, status, provider_status,
                                provider_code, error_code, error_text, permanent, channel,
                                attempt_id, occurred_at, received_at, projected_at, source,
                                receipt_id, details, corrects)
            select provider, message_key, dedup_key, status, provider_status, provider_code,
                   error_code, error_text, permanent, channel, attempt_id, occurred_at,
                   received_at, clock_timestamp(), source, receipt_id, details::jsonb, corrects
            from (select (e).* from unnest($5::projected_event[]) as e) as e
            on conflict (provider, message_key, dedup_key) do nothing
        ), unmapped_in as (
            insert into unmapped as um (provider, provider_status, count)
            select (x).* from unnest($6::projected_unmapped[]) as x
            on conflict (provider, provider_status) do update
                set count = um.count + excluded.count, last_seen = now()
        ), changes_in as (
            -- Every status change, queued or not: what a replay of a time range re-sends
            -- (to a subscription disabled at the time, too). A change is made once per seq.
            insert into status_changes (provider, message_key, seq, status, event_id, payload)
            select c.provider, c.message_key, c.seq, c.status, c.event_id, c.payload::jsonb
            from (select (c).* from unnest($7::projected_delivery[]) as c) as c
            on conflict (provider, message_key, seq) do nothing
        ), deliveries_in as (
            insert into deliveries (id, subscription_id, event_id, provider, message_key, seq,
                                    status, payload)
            select gen_random_uuid(), s.id, c.event_id, c.provider, c.message_key, c.seq,
                   c.status, c.payload::jsonb
            from (select (c).* from unnest($7::projected_delivery[]) as c) as c
            join subscriptions s
              on s.enabled
             and (s.statuses is null or c.status = any(s.statuses))
             and (s.providers is null or c.provider = any(s.providers))
            on conflict (subscription_id, event_id) do nothing
            returning 1
        ), notified as (
            -- Wakes the forwarders, once, and only when this commits with something queued.
            select pg_notify($8, '') from (select 1 from deliveries_in limit 1) as queued
        )
        select ingest_check_written(
                   (select count(*) from u),
                   (select count(*) from messages_updated)
                   + (select count(*) from messages_inserted)),
               (select count(*) from notified) as notified
        """,
        messages,
        [a[0] for a in aliases],
        [a[1] for a in aliases],
        [a[2] for a in aliases],
        events,
        unmapped,
        deliveries,
        NOTIFY_CHANNEL,
    )
