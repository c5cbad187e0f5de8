"""The SQL of forwarding: subscriptions, the delivery outbox, claims and attempts."""

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from receiver.db import Conn

# LISTEN/NOTIFY channel that wakes forwarders when deliveries are enqueued.
CHANNEL = "dlr_deliveries"


# Subscriptions


async def create_subscription(
    conn: Conn,
    *,
    url: str,
    description: str | None,
    statuses: list[str] | None,
    providers: list[str] | None,
    enabled: bool,
    secret: str,
) -> asyncpg.Record:
    row = await conn.fetchrow(
        """
        insert into subscriptions (id, url, description, statuses, providers, enabled, secret)
        values ($1, $2, $3, $4, $5, $6, $7)
        returning *
        """,
        uuid.uuid4(),
        url,
        description,
        statuses,
        providers,
        enabled,
        secret,
    )
    assert row is not None
    return row


async def list_subscriptions(
    conn: Conn, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[asyncpg.Record]:
    """Oldest first, by the (created_at, id) keyset."""
    return await conn.fetch(
        """
        select * from subscriptions
        where $1::timestamptz is null or (created_at, id) > ($1, $2::uuid)
        order by created_at, id
        limit $3
        """,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )


async def get_subscription(conn: Conn, id_: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("select * from subscriptions where id = $1", id_)


async def update_subscription(
    conn: Conn, id_: uuid.UUID, changes: dict[str, Any]
) -> asyncpg.Record | None:
    """Apply the given fields; enabling again clears the reason it was disabled."""
    current = await conn.fetchrow("select * from subscriptions where id = $1 for update", id_)
    if current is None:
        return None
    merged = {**dict(current), **changes}
    reenabled = changes.get("enabled") is True and not current["enabled"]
    return await conn.fetchrow(
        """
        update subscriptions set url = $2, description = $3, statuses = $4, providers = $5,
            enabled = $6,
            disabled_reason = case when $7 then null else disabled_reason end,
            failing_since = case when $7 then null else failing_since end,
            updated_at = now()
        where id = $1
        returning *
        """,
        id_,
        merged["url"],
        merged["description"],
        merged["statuses"],
        merged["providers"],
        merged["enabled"],
        reenabled,
    )


async def rotate_secret(
    conn: Conn, id_: uuid.UUID, secret: str, grace_seconds: float, most_old: int
) -> asyncpg.Record | None:
    """Make `secret` the signing secret; None if there is no such subscription, or if
    `most_old` replaced secrets are still in their grace period (nothing changes then)."""
    return await conn.fetchrow(
        """
        -- The secret replaced now, and every earlier one still in its grace period, keep
        -- signing; only those whose grace has ended are dropped.
        update subscriptions set secret = $2,
            previous_secrets =
                array[row(secret, now() + make_interval(secs => $3))::retired_secret]
                || array(select p from unnest(previous_secrets) p where p.expires_at > now()),
            updated_at = now()
        where id = $1
          and (select count(*) from unnest(previous_secrets) p where p.expires_at > now()) < $4
        returning *
        """,
        id_,
        secret,
        grace_seconds,
        most_old,
    )


async def delete_subscription(conn: Conn, id_: uuid.UUID) -> bool:
    deleted = await conn.fetchval("delete from subscriptions where id = $1 returning 1", id_)
    return deleted is not None


# The forwarder's side


async def claim(
    conn: Conn,
    *,
    room: Mapping[uuid.UUID, int],
    room_for_others: int,
    limit: int,
    lease_seconds: float,
) -> list[asyncpg.Record]:
    """Take due deliveries of enabled subscriptions, leasing them to this forwarder: from each
    subscription at most its room (its free slots; `room_for_others` for one not in `room`),
    at most `limit` in all, each subscription's first before anyone's second.

    Taking rows only where there is room means a slow subscriber's backlog is never claimed
    to wait behind its own requests while holding the forwarder's slots. SKIP LOCKED lets
    several forwarders claim side by side; the lease (next_attempt_at pushed out) hands a row
    back if its forwarder dies.
    """
    return await conn.fetch(
        """
        with room as (
            select s.id, coalesce(r.free, $3) as free
            from subscriptions s
            left join unnest($1::uuid[], $2::int[]) as r(id, free) on r.id = s.id
            where s.enabled
        ), due as (
            -- One index range per subscription (deliveries_due_by_subscription_idx).
            select d.id, d.next_attempt_at,
                   row_number() over (partition by room.id order by d.next_attempt_at) as turn
            from room
            cross join lateral (
                select id, next_attempt_at from deliveries
                where subscription_id = room.id and state = 'pending'
                  and next_attempt_at <= now()
                order by next_attempt_at
                limit least(room.free, $4)
            ) d
            where room.free > 0
        ), chosen as (
            -- Locked once chosen, not as candidates: with many subscriptions behind, that
            -- would lock far more rows than are taken. The conditions are checked again on
            -- the locked row, so one another forwarder has just leased is passed over.
            select id from deliveries
            where id in (select id from due order by turn, next_attempt_at limit $4)
              and state = 'pending' and next_attempt_at <= now()
            for update skip locked
        )
        update deliveries d
        set attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => $5)
        from chosen, subscriptions s
        where d.id = chosen.id and s.id = d.subscription_id
        returning d.id, d.subscription_id, d.event_id, d.payload, d.attempts, d.provider,
                  d.status, d.message_key, d.created_at, s.url, s.secret,
                  array(select p.secret from unnest(s.previous_secrets) p
                        where p.expires_at > now()) as previous_secrets
        """,
        list(room),
        list(room.values()),
        room_for_others,
        limit,
        lease_seconds,
    )


async def next_due_in(conn: Conn, full: Sequence[uuid.UUID]) -> float | None:
    """Seconds until the earliest pending delivery that could be claimed is due (None if there
    is none): of enabled subscriptions, and not of those in `full`, which have no room."""
    value = await conn.fetchval(
        """
        select extract(epoch from min(d.next_attempt_at) - now())::float8
        from subscriptions s
        cross join lateral (
            select next_attempt_at from deliveries
            where subscription_id = s.id and state = 'pending'
            order by next_attempt_at
            limit 1
        ) d
        where s.enabled and s.id <> all($1::uuid[])
        """,
        list(full),
    )
    return None if value is None else float(value)


async def record_attempt(
    conn: Conn,
    delivery_id: uuid.UUID,
    duration_ms: int,
    status_code: int | None,
    error: str | None,
) -> None:
    await conn.execute(
        """
        insert into delivery_attempts (delivery_id, duration_ms, status_code, error)
        values ($1, $2, $3, $4)
        """,
        delivery_id,
        duration_ms,
        status_code,
        error,
    )


@dataclass(frozen=True)
class Delivered:
    """A delivery its subscriber accepted, waiting to be recorded (no status code: a broker
    confirmed it)."""

    delivery_id: uuid.UUID
    subscription_id: uuid.UUID
    status_code: int | None
    duration_ms: int


async def settle_delivered(conn: Conn, settled: Sequence[Delivered]) -> None:
    """Record the successful attempts, close the deliveries, end their subscriptions' failing
    streaks: one statement for any number of deliveries, the common case of every one."""
    await conn.execute(
        """
        with done as (
            select * from unnest($1::uuid[], $2::uuid[], $3::int[], $4::int[])
                 as d(id, subscription_id, status_code, duration_ms)
        ), attempt as (
            insert into delivery_attempts (delivery_id, duration_ms, status_code)
            select id, duration_ms, status_code from done
        ), delivery as (
            update deliveries set state = 'delivered', delivered_at = now(),
                last_status = done.status_code, last_error = null
            from done
            where deliveries.id = done.id
        )
        update subscriptions set failing_since = null
        where id in (select subscription_id from done) and failing_since is not null
        """,
        [d.delivery_id for d in settled],
        [d.subscription_id for d in settled],
        [d.status_code for d in settled],
        [d.duration_ms for d in settled],
    )


async def mark_failed(
    conn: Conn,
    delivery_id: uuid.UUID,
    subscription_id: uuid.UUID,
    *,
    status_code: int | None,
    error: str,
    retry_in: float | None,
    disable_after_seconds: float,
) -> str | None:
    """Schedule the next try (or dead-letter when retry_in is None). Returns the reason the
    subscription was disabled, if this failure ended a run of failures lasting too long."""
    await conn.execute(
        """
        update deliveries set
            state = case when $4::float8 is null then 'dead' else 'pending' end,
            next_attempt_at = case when $4::float8 is null then next_attempt_at
                                   else now() + make_interval(secs => $4) end,
            last_status = $2, last_error = $3
        where id = $1
        """,
        delivery_id,
        status_code,
        error,
        retry_in,
    )
    reason: str | None = await conn.fetchval(
        """
        update subscriptions set
            failing_since = coalesce(failing_since, now()),
            enabled = case when failing_since < now() - make_interval(secs => $2) then false
                           else enabled end,
            disabled_reason = case when failing_since < now() - make_interval(secs => $2)
                                   then 'failing continuously since ' || failing_since::text
                                   else disabled_reason end
        where id = $1
        returning case when not enabled then disabled_reason end
        """,
        subscription_id,
        disable_after_seconds,
    )
    return reason


async def disable_subscription(conn: Conn, subscription_id: uuid.UUID, reason: str) -> None:
    await conn.execute(
        """
        update subscriptions set enabled = false, disabled_reason = $2, updated_at = now()
        where id = $1
        """,
        subscription_id,
        reason,
    )


# Deliveries, for the API


async def outbox_counts(conn: Conn) -> tuple[int, int]:
    """Deliveries pending (waiting to be sent or retried) and dead-lettered, for /metrics."""
    row = await conn.fetchrow(
        """
        select (select count(*) from deliveries where state = 'pending') as pending,
               (select count(*) from deliveries where state = 'dead') as dead
        """
    )
    assert row is not None
    return row["pending"], row["dead"]


async def list_deliveries(
    conn: Conn,
    subscription_id: uuid.UUID,
    state: str | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[asyncpg.Record]:
    return await conn.fetch(
        """
        select id, event_id, provider, message_key, seq, status, state, attempts,
               next_attempt_at, last_status, last_error, created_at, delivered_at
        from deliveries
        where subscription_id = $1 and ($2::text is null or state = $2)
          and ($3::timestamptz is null or (created_at, id) < ($3, $4))
        order by created_at desc, id desc
        limit $5
        """,
        subscription_id,
        state,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )


async def get_delivery(
    conn: Conn, subscription_id: uuid.UUID, delivery_id: uuid.UUID
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "select * from deliveries where subscription_id = $1 and id = $2",
        subscription_id,
        delivery_id,
    )


async def delivery_attempts(conn: Conn, delivery_id: uuid.UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        """
        select attempted_at, duration_ms, status_code, error
        from delivery_attempts where delivery_id = $1 order by id
        """,
        delivery_id,
    )


async def replay_one(conn: Conn, subscription_id: uuid.UUID, delivery_id: uuid.UUID) -> int:
    """Make one delivery due now with a fresh retry schedule; returns 1, or 0 if none."""
    count: int = await conn.fetchval(
        """
        with replayed as (
            update deliveries set state = 'pending', attempts = 0, next_attempt_at = now()
            where subscription_id = $1 and id = $2
            returning 1
        )
        select count(*) from replayed
        """,
        subscription_id,
        delivery_id,
    )
    if count:
        await conn.execute("select pg_notify($1, '')", CHANNEL)
    return count


async def replay_range(
    conn: Conn, subscription_id: uuid.UUID, since: datetime | None, until: datetime | None
) -> int:
    """Make due now, with a fresh retry schedule, every status change in [since, until) that
    matches the subscription's filters, queued for it or not, and every delivery of it
    created in that range; returns how many deliveries that is."""
    count: int = await conn.fetchval(
        """
        with wanted as (
            -- One row per change (a statement may not touch a delivery twice): a delivery
            -- already queued keeps its id and its payload, a change never queued (raised
            -- while the subscription was disabled, or before its filters took it) is queued
            -- now, with the payload every other subscriber was sent and the same webhook-id.
            select distinct on (event_id) * from (
                select d.event_id, d.provider, d.message_key, d.seq, d.status, d.payload
                from deliveries d
                where d.subscription_id = $1
                  and ($2::timestamptz is null or d.created_at >= $2)
                  and ($3::timestamptz is null or d.created_at < $3)
                union all
                select c.event_id, c.provider, c.message_key, c.seq, c.status, c.payload
                from status_changes c
                join subscriptions s on s.id = $1
                where ($2::timestamptz is null or c.changed_at >= $2)
                  and ($3::timestamptz is null or c.changed_at < $3)
                  and (s.statuses is null or c.status = any(s.statuses))
                  and (s.providers is null or c.provider = any(s.providers))
            ) as both_kinds
            order by event_id
        ), replayed as (
            insert into deliveries (id, subscription_id, event_id, provider, message_key, seq,
                                    status, payload)
            select gen_random_uuid(), $1, event_id, provider, message_key, seq, status, payload
            from wanted
            on conflict (subscription_id, event_id) do update
                set state = 'pending', attempts = 0, next_attempt_at = now()
            returning 1
        )
        select count(*) from replayed
        """,
        subscription_id,
        since,
        until,
    )
    if count:
        await conn.execute("select pg_notify($1, '')", CHANNEL)
    return count
