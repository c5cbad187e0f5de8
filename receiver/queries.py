"""All SQL, as functions that take a connection so the caller owns the transaction."""

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from receiver.db import Conn
from receiver.forward_queries import CHANNEL as NOTIFY_CHANNEL
from receiver.reports import Receipt


async def insert_receipts(conn: Conn, receipts: Sequence[Receipt]) -> None:
    """Receipts alone (their updates could not be stored); one read again keeps its row and
    takes the new problem."""
    await conn.execute(
        """
        insert into receipts (id, provider, source, content_type, body, problem)
        select * from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[],
                             $6::text[])
        on conflict (id) do update set problem = excluded.problem
        """,
        *_receipt_columns(receipts),
    )


def _receipt_columns(receipts: Sequence[Receipt]) -> list[list[Any]]:
    return [
        [r.id for r in receipts],
        [r.provider for r in receipts],
        [r.source for r in receipts],
        [r.content_type for r in receipts],
        [r.body for r in receipts],
        [r.problem for r in receipts],
    ]


async def read_messages(conn: Conn, keys: Sequence[tuple[str, str]]) -> list[asyncpg.Record]:
    """The stored messages among these keys, one row per event (event columns null if none).

    One statement, so one snapshot: a message and its events agree. Nothing is locked; each
    message's version lets write_batch find out whether it changed since.
    """
    return await conn.fetch(
        """
        select m.provider, m.key, m.version, m.status, m.status_at, m.channel, m.attempts, m.seq,
               m.channel_order, m.recipient, m.reference, m.group_key,
               m.registered_at is not null as registered,
               e.id as event_id, e.dedup_key, e.status as event_status, e.occurred_at,
               e.channel as event_channel, e.attempt_id, e.provider_status, e.provider_code,
               e.error_code, e.error_text, e.permanent, e.source
        from unnest($1::text[], $2::text[]) as k(provider, key)
        join messages m on m.provider = k.provider and m.key = k.key
        left join events e on e.provider = m.provider and e.message_key = m.key
        order by m.provider, m.key, e.id
        """,
        [k[0] for k in keys],
        [k[1] for k in keys],
    )


async def write_batch(
    conn: Conn,
    *,
    receipts: Sequence[Receipt],
    messages: dict[str, list[Any]],
    aliases: Sequence[tuple[str, str, str]],
    events: dict[str, list[Any]],
    unmapped: dict[tuple[str, str], int],
    deliveries: dict[str, list[Any]],
    first_poll_in: float,
) -> None:
    """Everything a batch changes, in one statement: one round trip, and its own transaction,
    committed when it returns. If a message changed or was created by another transaction
    since read_messages, the statement fails with a serialization failure and changes
    nothing; the caller reads again and retries.

    Rules that live here: a stored message is updated only at the version it was read at, a
    new one inserted only if still absent; events are only ever inserted, and a dedup key
    already stored for a message is skipped (rule 2); an alias already pointing at a message
    stays; each status change queues one delivery per matching enabled subscription, and the
    NOTIFY that wakes the forwarders is delivered only if this commits. Foreign keys are
    checked at the end of the statement, so events may reference messages inserted by it.
    """
    await conn.execute(
        """
        with receipts_in as (
            insert into receipts (id, provider, source, content_type, body, problem)
            select id, provider, source, content_type, body, problem
            from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[],
                        $6::text[], $51::bool[])
                 as r(id, provider, source, content_type, body, problem, kept)
            where not kept
        ), receipts_read_again as (
            -- Receipts already stored (reprocess): only what could not be read is new.
            update receipts set problem = r.problem
            from unnest($1::uuid[], $6::text[], $51::bool[]) as r(id, problem, kept)
            where r.kept and receipts.id = r.id
        ), u as (
            select * from unnest($7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
                                 $12::text[], $13::bool[], $14::text[], $15::timestamptz[],
                                 $16::text[], $17::text[], $18::int[], $19::bool[],
                                 $49::bool[], $50::bigint[])
                 as u(provider, key, recipient, group_key, reference, channel_order,
                      registered, status, status_at, channel, attempts, seq, poll, existed,
                      version)
        ), messages_updated as (
            -- Stored messages, only at the version the batch computed them from.
            update messages m set
                recipient = u.recipient, group_key = u.group_key, reference = u.reference,
                channel_order = string_to_array(u.channel_order, ','),
                registered_at = coalesce(m.registered_at, case when u.registered then now() end),
                status = u.status, status_at = u.status_at, channel = u.channel,
                attempts = u.attempts::jsonb, seq = u.seq, updated_at = now(),
                version = m.version + 1
            from u
            where u.existed and m.provider = u.provider and m.key = u.key
              and m.version = u.version
            returning 1
        ), messages_inserted as (
            -- New messages: inserted only if nobody else has meanwhile (never overwritten).
            insert into messages (provider, key, recipient, group_key, reference,
                                  channel_order, registered_at, status, status_at, channel,
                                  attempts, seq, next_poll_at)
            select u.provider, u.key, u.recipient, u.group_key, u.reference,
                   string_to_array(u.channel_order, ','),
                   case when u.registered then now() end,
                   u.status, u.status_at, u.channel, u.attempts::jsonb, u.seq,
                   case when u.poll then now() + make_interval(secs => $20) end
            from u
            where not u.existed
            on conflict (provider, key) do nothing
            returning 1
        ), aliases_in as (
            insert into aliases (provider, alias, message_key)
            select * from unnest($21::text[], $22::text[], $23::text[])
            on conflict do nothing
        ), events_in as (
            insert into events (provider, message_key, dedup_key, status, provider_status,
                                provider_code, error_code, error_text, permanent, channel,
                                attempt_id, occurred_at, source, receipt_id, details)
            select provider, message_key, dedup_key, status, provider_status, provider_code,
                   error_code, error_text, permanent, channel, attempt_id, occurred_at,
                   source, receipt_id, details::jsonb
            from unnest($24::text[], $25::text[], $26::text[], $27::text[], $28::text[],
                        $29::text[], $30::text[], $31::text[], $32::bool[], $33::text[],
                        $34::text[], $35::timestamptz[], $36::text[], $37::uuid[], $38::text[])
                 as e(provider, message_key, dedup_key, status, provider_status,
                      provider_code, error_code, error_text, permanent, channel, attempt_id,
                      occurred_at, source, receipt_id, details)
            on conflict (provider, message_key, dedup_key) do nothing
        ), unmapped_in as (
            insert into unmapped as um (provider, provider_status, count)
            select * from unnest($39::text[], $40::text[], $41::bigint[])
            on conflict (provider, provider_status) do update
                set count = um.count + excluded.count, last_seen = now()
        ), deliveries_in as (
            insert into deliveries (id, subscription_id, event_id, provider, message_key, seq,
                                    status, payload)
            select gen_random_uuid(), s.id, c.event_id, c.provider, c.message_key, c.seq,
                   c.status, c.payload::jsonb
            from unnest($42::text[], $43::text[], $44::int[], $45::text[], $46::text[],
                        $47::text[])
                 as c(provider, message_key, seq, status, event_id, payload)
            join subscriptions s
              on s.enabled
             and (s.statuses is null or c.status = any(s.statuses))
             and (s.providers is null or c.provider = any(s.providers))
            on conflict (subscription_id, event_id) do nothing
            returning 1
        ), notified as (
            -- Wakes the forwarders, once, and only when this commits with something queued.
            select pg_notify($48, '') from (select 1 from deliveries_in limit 1) as queued
        )
        select ingest_check_written(
                   cardinality($7::text[]),
                   (select count(*) from messages_updated)
                   + (select count(*) from messages_inserted)),
               (select count(*) from notified) as notified
        """,
        *_receipt_columns(receipts),
        *(messages[c] for c in MESSAGE_COLUMNS),
        first_poll_in,
        [a[0] for a in aliases],
        [a[1] for a in aliases],
        [a[2] for a in aliases],
        *(events[c] for c in EVENT_COLUMNS),
        [k[0] for k in unmapped],
        [k[1] for k in unmapped],
        list(unmapped.values()),
        *(deliveries[c] for c in DELIVERY_COLUMNS),
        NOTIFY_CHANNEL,
        messages["existed"],
        messages["version"],
        [r.kept for r in receipts],
    )


# The column order of write_batch's arrays.
MESSAGE_COLUMNS = (
    "provider",
    "key",
    "recipient",
    "group_key",
    "reference",
    "channel_order",
    "registered",
    "status",
    "status_at",
    "channel",
    "attempts",
    "seq",
    "poll",
)
# The first twelve are StatusUpdate attributes of the same name.
EVENT_COLUMNS = (
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
DELIVERY_COLUMNS = ("provider", "message_key", "seq", "status", "event_id", "payload")


async def find_message(conn: Conn, provider: str, id_: str) -> asyncpg.Record | None:
    """A message by its key or by any alias (a channel message id)."""
    return await conn.fetchrow(
        """
        select * from messages
        where provider = $1
          and key = coalesce(
              (select message_key from aliases where provider = $1 and alias = $2), $2)
        """,
        provider,
        id_,
    )


async def message_aliases(conn: Conn, provider: str, key: str) -> list[str]:
    rows = await conn.fetch(
        "select alias from aliases where provider = $1 and message_key = $2 order by alias",
        provider,
        key,
    )
    return [r["alias"] for r in rows]


async def message_events(conn: Conn, provider: str, key: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        """
        select id, status, provider_status, provider_code, error_code, error_text, permanent,
               channel, attempt_id, occurred_at, received_at, source, receipt_id, details
        from events
        where provider = $1 and message_key = $2
        order by occurred_at nulls first, received_at, id
        """,
        provider,
        key,
    )


async def list_unmapped(conn: Conn) -> list[asyncpg.Record]:
    return await conn.fetch(
        """
        select provider, provider_status, count, first_seen, last_seen
        from unmapped order by last_seen desc
        """
    )


async def receipts_with_problems(
    conn: Conn,
    *,
    provider: str | None,
    since: datetime | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[asyncpg.Record]:
    """Receipts that kept a problem, newest first, by (received_at, id) keyset."""
    return await conn.fetch(
        """
        select id, provider, source, received_at, content_type, length(body) as size, problem
        from receipts
        where problem is not null
          and ($1::text is null or provider = $1)
          and ($2::timestamptz is null or received_at >= $2)
          and ($3::timestamptz is null or (received_at, id) < ($3, $4::uuid))
        order by received_at desc, id desc
        limit $5
        """,
        provider,
        since,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )


async def receipt(conn: Conn, receipt_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """
        select id, provider, source, received_at, content_type, body, problem
        from receipts where id = $1
        """,
        receipt_id,
    )


async def receipt_events(conn: Conn, receipt_id: uuid.UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        """
        select message_key, status, provider_status, channel, occurred_at
        from events where receipt_id = $1 order by id
        """,
        receipt_id,
    )


async def message_summaries(conn: Conn, provider: str, keys: Sequence[str]) -> list[asyncpg.Record]:
    return await conn.fetch(
        """
        select provider, key, status from messages
        where provider = $1 and key = any($2::text[])
        order by key
        """,
        provider,
        keys,
    )


async def search_messages(
    conn: Conn,
    *,
    recipient: str | None,
    statuses: Sequence[str] | None,
    provider: str | None,
    since: datetime | None,
    until: datetime | None,
    after: tuple[datetime, str, str] | None,
    limit: int,
    reference: str | None = None,
) -> list[asyncpg.Record]:
    """Newest first; `after` is the (created_at, provider, key) of the last row already seen."""
    return await conn.fetch(
        """
        select provider, key, status, status_at, channel, recipient, reference, group_key,
               created_at, updated_at
        from messages
        where ($1::text is null or recipient = $1)
          and ($2::text[] is null or status = any($2::text[]))
          and ($3::text is null or provider = $3)
          and ($4::timestamptz is null or created_at >= $4)
          and ($5::timestamptz is null or created_at < $5)
          and ($6::timestamptz is null or (created_at, provider, key) < ($6, $7, $8))
          and ($10::text is null or reference = $10)
        order by created_at desc, provider desc, key desc
        limit $9
        """,
        recipient,
        statuses,
        provider,
        since,
        until,
        after[0] if after else None,
        after[1] if after else None,
        after[2] if after else None,
        limit,
        reference,
    )


async def group_counts(conn: Conn, provider: str, group: str) -> dict[str, int]:
    rows = await conn.fetch(
        """
        select status, count(*) as n from messages
        where provider = $1 and group_key = $2
        group by status order by status
        """,
        provider,
        group,
    )
    return {r["status"]: r["n"] for r in rows}


async def group_members(
    conn: Conn, provider: str, group: str, after: str | None, limit: int
) -> list[asyncpg.Record]:
    return await conn.fetch(
        """
        select provider, key, status, status_at, channel, recipient, reference, group_key,
               created_at, updated_at
        from messages
        where provider = $1 and group_key = $2 and ($3::text is null or key > $3)
        order by key
        limit $4
        """,
        provider,
        group,
        after,
        limit,
    )
