"""The SQL of polling: which messages are due, and moving or ending their schedules."""

from collections.abc import Sequence
from typing import NamedTuple

import asyncpg

from receiver.db import Conn


class Schedule(NamedTuple):
    """One polled (provider, account) pair and its own schedule, in seconds."""

    provider: str
    account: str
    min_interval: float
    max_interval: float
    max_age: float


async def claim_polls(
    conn: Conn, polled: Sequence[Schedule], default_account: str, limit: int
) -> list[asyncpg.Record]:
    """Take unfinished messages of these (provider, account) pairs due for a poll and schedule
    their next one by their own account's schedule (doubling from its min_interval up to its
    max_interval). A message without an account is the default account's. Past its account's
    max_age a message is marked stale instead, and comes back with stale = true so the caller
    skips it."""
    return await conn.fetch(
        """
        with polled as (
            select * from unnest($1::text[], $3::text[], $5::float8[], $6::float8[],
                                 $7::float8[])
                as p(provider, account, min_interval, max_interval, max_age)
        ), due as (
            select m.provider, m.key, p.min_interval, p.max_interval, p.max_age
            from messages m
            -- Only through an account this poller holds: its credentials, its base URL.
            join polled p on p.provider = m.provider and p.account = coalesce(m.account, $4)
            where m.provider = any($1::text[]) and m.next_poll_at <= now() and not m.stale
              and m.status not in ('delivered', 'read', 'failed', 'expired', 'rejected',
                                   'cancelled')
            order by m.next_poll_at
            limit $2
            for update of m skip locked
        )
        update messages m set
            stale = m.created_at < now() - make_interval(secs => due.max_age),
            next_poll_at = case
                when m.created_at < now() - make_interval(secs => due.max_age) then null
                else now() + make_interval(secs => least(
                    due.max_interval, due.min_interval * power(2, least(m.poll_attempts, 30))))
            end,
            poll_attempts = m.poll_attempts + 1
        from due
        where m.provider = due.provider and m.key = due.key
        returning m.provider, m.key, m.account, m.group_key, m.stale, m.next_poll_at,
                  m.poll_attempts
        """,
        [s.provider for s in polled],
        limit,
        [s.account for s in polled],
        default_account,
        [s.min_interval for s in polled],
        [s.max_interval for s in polled],
        [s.max_age for s in polled],
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


async def schedule_group(
    conn: Conn, provider: str, group: str, next_poll_at: object, attempts: int
) -> None:
    """Give every scheduled member of a group (a Mercury dispatch) the schedule of the one
    claimed: the group is polled once for all of them, not once per claim batch of them."""
    await conn.execute(
        """
        update messages set next_poll_at = $3, poll_attempts = $4
        where provider = $1 and group_key = $2 and next_poll_at is not null and not stale
        """,
        provider,
        group,
        next_poll_at,
        attempts,
    )
