"""The console's own SQL: what no API route answers (subscription health, the dashboard).
Lookups go through the API's queries (receiver/http/queries.py), so both show the same."""

import uuid
from datetime import datetime

import asyncpg

from receiver.db import Conn


async def subscription_health(
    conn: Conn, since: datetime, only: uuid.UUID | None = None
) -> dict[uuid.UUID, asyncpg.Record]:
    """Per subscription (or only one): attempts since `since` and how many succeeded, its
    last failed attempt, and its pending and dead deliveries."""
    rows = await conn.fetch(
        """
        with recent as (
            select d.subscription_id, count(*) as attempts,
                   count(*) filter (where a.status_code between 200 and 299) as succeeded
            from delivery_attempts a join deliveries d on d.id = a.delivery_id
            where a.attempted_at >= $1 and ($2::uuid is null or d.subscription_id = $2)
            group by d.subscription_id
        )
        select s.id, coalesce(r.attempts, 0) as attempts, coalesce(r.succeeded, 0) as succeeded,
               last_failure.attempted_at as last_error_at,
               last_failure.status_code as last_error_status,
               last_failure.error as last_error,
               (select count(*) from deliveries d
                where d.subscription_id = s.id and d.state = 'pending') as pending,
               (select count(*) from deliveries d
                where d.subscription_id = s.id and d.state = 'dead') as dead
        from subscriptions s
        left join recent r on r.subscription_id = s.id
        left join lateral (
            -- The newest attempt that did not succeed, among the newest deliveries (by the
            -- subscription's index), so a long history is not read for one line.
            select a.attempted_at, a.status_code, a.error
            from (select id from deliveries d where d.subscription_id = s.id
                  order by created_at desc, id desc limit 500) d
            join delivery_attempts a on a.delivery_id = d.id
            where a.status_code is null or a.status_code not between 200 and 299
            order by a.attempted_at desc limit 1
        ) last_failure on true
        where $2::uuid is null or s.id = $2
        """,
        since,
        only,
    )
    return {r["id"]: r for r in rows}


async def reports_per_minute(conn: Conn, minutes: int) -> list[asyncpg.Record]:
    """Reports (webhook and polled events, not send registrations) stored per provider and
    minute over the last `minutes` (`ago` 0 is this one)."""
    return await conn.fetch(
        """
        select provider,
               floor(extract(epoch from now() - received_at) / 60)::int as ago,
               count(*) as n
        from events
        where received_at >= now() - make_interval(mins => $1) and source <> 'send'
        group by 1, 2
        """,
        minutes,
    )


async def delivery_stats(conn: Conn, since: datetime) -> list[asyncpg.Record]:
    """Messages first seen since `since`, per provider and channel attempt (a failover counts
    once for viber, failed, and once for sms, delivered; a message without attempts under its
    channel): how many, how many were delivered (or read) and failed, and the median seconds
    from the send (or first sight) to that channel's delivery."""
    return await conn.fetch(
        """
        select m.provider, coalesce(a->>'channel', m.channel, '') as channel,
               count(*) as total,
               count(*) filter (where coalesce(a->>'status', m.status) in ('delivered', 'read'))
                   as delivered,
               count(*) filter (
                   where coalesce(a->>'status', m.status) in ('failed', 'expired', 'rejected')
               ) as failed,
               percentile_cont(0.5) within group (order by greatest(0, extract(epoch from
                   d.at - coalesce(m.registered_at, m.created_at))))::float8 as median_seconds
        from messages m
        -- One row per attempt; `[null]` gives a message without attempts one row too.
        cross join lateral jsonb_array_elements(
            case when jsonb_array_length(m.attempts) > 0 then m.attempts else '[null]' end
        ) a
        left join lateral (
            select min(coalesce(e.occurred_at, e.received_at)) as at from events e
            where e.provider = m.provider and e.message_key = m.key
              and e.status in ('delivered', 'read')
              and (a->>'channel' is null or e.channel = a->>'channel')
        ) d on true
        where m.created_at >= $1
        group by 1, 2
        order by 1, 2
        """,
        since,
    )


async def message_deliveries(conn: Conn, provider: str, key: str) -> list[asyncpg.Record]:
    """Every delivery of a message's status changes, to any subscription, newest first."""
    return await conn.fetch(
        """
        select d.id, d.subscription_id, s.url, s.description, d.seq, d.status, d.state,
               d.attempts, d.last_status, d.last_error, d.created_at, d.delivered_at
        from deliveries d join subscriptions s on s.id = d.subscription_id
        where d.provider = $1 and d.message_key = $2
        order by d.created_at desc, d.id desc
        limit 200
        """,
        provider,
        key,
    )
