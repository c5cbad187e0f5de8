"""Migrations over data, not only over an empty schema: what an older version stored survives
the journal's arrival (0007) and reads as before."""

import uuid

import asyncpg

from receiver import migrate
from receiver.ingest import queries as ingest_queries


async def test_receipts_stored_before_the_journal_become_its_projected_history(
    database_url: str,
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("drop schema public cascade; create schema public")
        before = [m for m in migrate.load() if m.version < 7]
        await migrate.apply(conn, before)
        receipt = uuid.uuid4()
        # As version 0006 left it: a receipt, its message and event, and one kept raw only.
        await conn.execute(
            "insert into receipts (id, provider, source, body, problem, received_at)"
            " values ($1, 'messente', 'webhook', 'body-1', null, now() - interval '3 days'),"
            " ($2, 'messente', 'webhook', 'body-2', 'unreadable', now())",
            receipt,
            uuid.uuid4(),
        )
        await conn.execute(
            "insert into messages (provider, key, status) values ('messente', 'm1', 'delivered')"
        )
        await conn.execute(
            "insert into events (provider, message_key, dedup_key, status, source, receipt_id)"
            " values ('messente', 'm1', 'd1', 'delivered', 'webhook', $1)",
            receipt,
        )

        applied = await migrate.apply(conn)
        assert applied == [m.version for m in migrate.load() if m.version >= 7]

        rows = await conn.fetch(
            "select receipt_id, body, problem, received_at from journal order by id"
        )
        assert [(r["body"], r["problem"]) for r in rows] == [
            (b"body-1", None),
            (b"body-2", "unreadable"),
        ]
        assert rows[0]["receipt_id"] == receipt
        # Already projected: the projector must not apply history a second time.
        assert await ingest_queries.backlog(conn) == (0, 0.0)
        # The event keeps pointing at its receipt, and the old day has a partition of its own.
        assert await conn.fetchval("select receipt_id from events") == receipt
        assert await conn.fetchval("select count(*) from journal_default") == 0
        assert await conn.fetchval("select to_regclass('receipts')") is None
    finally:
        await conn.close()


async def test_deliveries_queued_before_0010_become_its_recorded_status_changes(
    database_url: str,
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("drop schema public cascade; create schema public")
        await migrate.apply(conn, [m for m in migrate.load() if m.version < 10])
        await conn.execute(
            "insert into messages (provider, key, status, seq) values"
            " ('messente', 'm1', 'delivered', 2)"
        )
        subscriptions = [uuid.uuid4(), uuid.uuid4()]
        for sub in subscriptions:
            await conn.execute(
                "insert into subscriptions (id, url, secret) values ($1, 'https://x.test/', 's')",
                sub,
            )
        # One change queued for two subscriptions, another for one; a third is of a message
        # retention has since deleted (deliveries outlive their messages).
        queued = [
            (subscriptions[0], "evt_1", "m1", 1, "sent"),
            (subscriptions[1], "evt_1", "m1", 1, "sent"),
            (subscriptions[0], "evt_2", "m1", 2, "delivered"),
            (subscriptions[0], "evt_x", "gone", 1, "sent"),
        ]
        for sub, event_id, key, seq, status in queued:
            await conn.execute(
                "insert into deliveries (id, subscription_id, event_id, provider, message_key,"
                " seq, status, payload) values ($1, $2, $3, 'messente', $4, $5, $6, $7::jsonb)",
                uuid.uuid4(),
                sub,
                event_id,
                key,
                seq,
                status,
                f'{{"id": "{event_id}"}}',
            )

        assert await migrate.apply(conn) == [m.version for m in migrate.load() if m.version >= 10]

        rows = await conn.fetch(
            "select message_key, seq, status, event_id, payload from status_changes order by seq"
        )
        assert [(r["message_key"], r["seq"], r["status"], r["event_id"]) for r in rows] == [
            ("m1", 1, "sent", "evt_1"),
            ("m1", 2, "delivered", "evt_2"),
        ]
    finally:
        await conn.close()


async def test_the_previous_releases_projection_rows_still_fit_after_0013(
    database_url: str,
) -> None:
    """Upgrades migrate first and the previous release projects on meanwhile (README): its
    rows, laid out as 0011 left projected_message (`poll` a boolean before `existed`), must
    still go in. 0013 altered that type in place at first, and they no longer did."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("drop schema public cascade; create schema public")
        await migrate.apply(conn)
        previous_release_row = (
            "messente", "m1", "+3725555555", None, None, None, False, "sent", None, "sms",
            "[]", 1, True, False, 0, None,
        )  # fmt: skip
        found = await conn.fetchrow(
            "select (m).seq, (m).poll, (m).existed, (m).version"
            " from unnest($1::projected_message[]) as m",
            [previous_release_row],
        )
        assert found is not None
        assert tuple(found) == (1, True, False, 0)
    finally:
        await conn.close()
