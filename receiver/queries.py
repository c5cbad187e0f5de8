"""All SQL, as functions that take a connection so the caller owns the transaction."""

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from receiver.db import Conn
from receiver.reports import Receipt


async def insert_receipts(conn: Conn, receipts: Sequence[Receipt]) -> None:
    await conn.execute(
        """
        insert into receipts (id, provider, source, content_type, body, problem)
        select * from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[],
                             $6::text[])
        """,
        [r.id for r in receipts],
        [r.provider for r in receipts],
        [r.source for r in receipts],
        [r.content_type for r in receipts],
        [r.body for r in receipts],
        [r.problem for r in receipts],
    )


async def upsert_messages(
    conn: Conn,
    rows: Sequence[dict[str, Any]],
    polled_providers: Sequence[str] = (),
    first_poll_in: float = 30.0,
) -> list[asyncpg.Record]:
    """Create or enrich messages; returns each row with the status it had before this batch.

    Rule 5: a report may create a message before it is registered; registering merges into it.
    The DO UPDATE always runs, so every row this batch touches stays locked until commit: two
    batches touching one message take turns, and the status is always computed from all of its
    committed events. Callers pass rows sorted by key so those locks are taken in one order.
    A new message of a provider polled per message gets its first poll scheduled.
    """
    return await conn.fetch(
        """
        insert into messages as m (provider, key, recipient, group_key, reference, channel_order,
                                   registered_at, next_poll_at)
        select u.provider, u.key, u.recipient, u.group_key, u.reference,
               string_to_array(u.channel_order, ','),
               case when u.registered then now() end,
               case when u.provider = any($8::text[])
                    then now() + make_interval(secs => $9) end
        from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                    $7::bool[])
             as u(provider, key, recipient, group_key, reference, channel_order, registered)
        on conflict (provider, key) do update set
            recipient = coalesce(m.recipient, excluded.recipient),
            group_key = coalesce(m.group_key, excluded.group_key),
            -- A registered reference outranks one a report carried (Infobip callbackData).
            reference = case when excluded.registered_at is not null
                             then coalesce(excluded.reference, m.reference)
                             else coalesce(m.reference, excluded.reference) end,
            channel_order = coalesce(excluded.channel_order, m.channel_order),
            registered_at = coalesce(m.registered_at, excluded.registered_at),
            updated_at = now()
        returning provider, key, status, status_at, channel, attempts, seq, channel_order,
                  recipient, reference, group_key
        """,
        [r["provider"] for r in rows],
        [r["key"] for r in rows],
        [r["recipient"] for r in rows],
        [r["group_key"] for r in rows],
        [r["reference"] for r in rows],
        [r["channel_order"] for r in rows],
        [r["registered"] for r in rows],
        list(polled_providers),
        first_poll_in,
    )


async def insert_aliases(conn: Conn, rows: Sequence[tuple[str, str, str]]) -> None:
    # An alias already pointing at a message stays where it is: provider ids are never reused.
    await conn.execute(
        """
        insert into aliases (provider, alias, message_key)
        select * from unnest($1::text[], $2::text[], $3::text[])
        on conflict do nothing
        """,
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
    )


async def insert_events(conn: Conn, columns: dict[str, list[Any]]) -> list[asyncpg.Record]:
    """Append events; rule 2: a dedup key already stored for the message is skipped.

    Returns the (provider, message_key, dedup_key) of the events that are new.
    """
    return await conn.fetch(
        """
        insert into events (provider, message_key, dedup_key, status, provider_status,
                            provider_code, error_code, error_text, permanent, channel, attempt_id,
                            occurred_at, source, receipt_id, details)
        select provider, message_key, dedup_key, status, provider_status, provider_code,
               error_code, error_text, permanent, channel, attempt_id, occurred_at, source,
               receipt_id, details::jsonb
        from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                    $7::text[], $8::text[], $9::bool[], $10::text[], $11::text[],
                    $12::timestamptz[], $13::text[], $14::uuid[], $15::text[])
             as u(provider, message_key, dedup_key, status, provider_status, provider_code,
                  error_code, error_text, permanent, channel, attempt_id, occurred_at, source,
                  receipt_id, details)
        on conflict (provider, message_key, dedup_key) do nothing
        returning provider, message_key, dedup_key
        """,
        columns["provider"],
        columns["message_key"],
        columns["dedup_key"],
        columns["status"],
        columns["provider_status"],
        columns["provider_code"],
        columns["error_code"],
        columns["error_text"],
        columns["permanent"],
        columns["channel"],
        columns["attempt_id"],
        columns["occurred_at"],
        columns["source"],
        columns["receipt_id"],
        columns["details"],
    )


async def fetch_observations(conn: Conn, keys: Sequence[tuple[str, str]]) -> list[asyncpg.Record]:
    """Every event of these messages: what the status rules and the forwarded payload need."""
    return await conn.fetch(
        """
        select e.id, e.provider, e.message_key, e.status, e.occurred_at, e.channel, e.attempt_id,
               e.provider_status, e.provider_code, e.error_code, e.error_text, e.permanent,
               e.source
        from events e
        join unnest($1::text[], $2::text[]) as k(provider, key)
          on e.provider = k.provider and e.message_key = k.key
        """,
        [k[0] for k in keys],
        [k[1] for k in keys],
    )


async def update_statuses(conn: Conn, rows: Sequence[dict[str, Any]]) -> None:
    # seq counts status changes only; a new attempt detail alone does not bump it.
    await conn.execute(
        """
        update messages m set
            status = u.status, status_at = u.status_at, channel = u.channel,
            attempts = u.attempts::jsonb, seq = m.seq + u.bump, updated_at = now()
        from unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[],
                    $6::text[], $7::int[])
             as u(provider, key, status, status_at, channel, attempts, bump)
        where m.provider = u.provider and m.key = u.key
        """,
        [r["provider"] for r in rows],
        [r["key"] for r in rows],
        [r["status"] for r in rows],
        [r["status_at"] for r in rows],
        [r["channel"] for r in rows],
        [r["attempts"] for r in rows],
        [r["bump"] for r in rows],
    )


async def count_unmapped(conn: Conn, counts: dict[tuple[str, str], int]) -> None:
    await conn.execute(
        """
        insert into unmapped as um (provider, provider_status, count)
        select * from unnest($1::text[], $2::text[], $3::bigint[])
        on conflict (provider, provider_status) do update
            set count = um.count + excluded.count, last_seen = now()
        """,
        [k[0] for k in counts],
        [k[1] for k in counts],
        list(counts.values()),
    )


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
               channel, attempt_id, occurred_at, received_at, source, details
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


# Polling


async def claim_polls(
    conn: Conn,
    providers: Sequence[str],
    limit: int,
    *,
    min_interval: float,
    max_interval: float,
    max_age: float,
) -> list[asyncpg.Record]:
    """Take unfinished messages due for a poll and schedule their next one (doubling from
    min_interval up to max_interval). Past max_age a message is marked stale instead, and
    comes back with stale = true so the caller skips it."""
    return await conn.fetch(
        """
        with due as (
            select provider, key from messages
            where provider = any($1::text[]) and next_poll_at <= now() and not stale
              and status not in ('delivered', 'read', 'failed', 'expired', 'rejected',
                                 'cancelled')
            order by next_poll_at
            limit $2
            for update skip locked
        )
        update messages m set
            stale = m.created_at < now() - make_interval(secs => $5),
            next_poll_at = case
                when m.created_at < now() - make_interval(secs => $5) then null
                else now() + make_interval(
                    secs => least($4, $3 * power(2, least(m.poll_attempts, 30))))
            end,
            poll_attempts = m.poll_attempts + 1
        from due
        where m.provider = due.provider and m.key = due.key
        returning m.provider, m.key, m.group_key, m.stale
        """,
        list(providers),
        limit,
        min_interval,
        max_interval,
        max_age,
    )


async def poll_later(conn: Conn, provider: str, keys: Sequence[str], seconds: float) -> None:
    """Move these messages' next poll (a provider asked us to back off)."""
    await conn.execute(
        """
        update messages set next_poll_at = now() + make_interval(secs => $3)
        where provider = $1 and key = any($2::text[]) and next_poll_at is not null
        """,
        provider,
        list(keys),
        seconds,
    )


async def stop_polling(conn: Conn, provider: str, keys: Sequence[str]) -> None:
    await conn.execute(
        "update messages set next_poll_at = null where provider = $1 and key = any($2::text[])",
        provider,
        list(keys),
    )


async def group_keys(
    conn: Conn, provider: str, group: str, exclude_status: str | None = None
) -> list[str]:
    rows = await conn.fetch(
        """
        select key from messages
        where provider = $1 and group_key = $2 and ($3::text is null or status <> $3)
        order by key
        """,
        provider,
        group,
        exclude_status,
    )
    return [r["key"] for r in rows]
