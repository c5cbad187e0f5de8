"""The SQL of lookups: messages, their timelines, groups, search, receipts (journal rows)."""

import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from receiver.db import Conn


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
        select receipt_id as id, provider, source, received_at, content_type,
               length(body) as size, problem
        from journal
        where problem is not null
          and ($1::text is null or provider = $1)
          and ($2::timestamptz is null or received_at >= $2)
          and ($3::timestamptz is null or (received_at, receipt_id) < ($3, $4::uuid))
        order by received_at desc, receipt_id desc
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
        select receipt_id as id, provider, source, received_at, content_type, body, problem,
               replays
        from journal where receipt_id = $1
        order by id limit 1
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
    recipient: Sequence[str] | None,
    statuses: Sequence[str] | None,
    provider: str | None,
    since: datetime | None,
    until: datetime | None,
    after: tuple[datetime, str, str] | None,
    limit: int,
    reference: str | None = None,
    account: str | None = None,
) -> list[asyncpg.Record]:
    """Newest first; `after` is the (created_at, provider, key) of the last row already seen."""
    return await conn.fetch(
        """
        select provider, key, status, status_at, channel, recipient, reference, group_key,
               created_at, updated_at
        from messages
        -- Any of the spellings a number may be stored under (receiver/phones.py).
        where ($1::text[] is null or recipient = any($1::text[]))
          and ($2::text[] is null or status = any($2::text[]))
          and ($3::text is null or provider = $3)
          and ($4::timestamptz is null or created_at >= $4)
          and ($5::timestamptz is null or created_at < $5)
          and ($6::timestamptz is null or (created_at, provider, key) < ($6, $7, $8))
          and ($10::text is null or reference = $10)
          and ($11::text is null or account = $11)
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
        account,
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
