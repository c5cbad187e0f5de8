"""Reprocessing stored receipts: what an older parser could not read is recovered, and what
an older mapping read differently is corrected, once, with subscribers told."""

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from receiver.db import open_pool
from receiver.ingest import codec, queries
from receiver.ingest.journal import Journal, journal_running
from receiver.ingest.projector import Projector, projector_running
from receiver.maintenance.reprocess import reprocess, summary
from receiver.providers import messente
from receiver.reports import Receipt, new_id
from receiver.settings import Settings
from receiver.status import Status
from tests.conftest import clean_env, eventually, make_settings
from tests.payloads import raw


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with open_pool(database_url, 4) as pool:
        yield pool


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
async def ingest(
    pool: asyncpg.Pool, settings: Settings
) -> AsyncIterator[tuple[Journal, Projector]]:
    async with (
        journal_running(pool, settings) as journal,
        projector_running(pool, settings) as projector,
    ):
        journal.on_commit = projector.wake
        yield journal, projector


async def keep(
    db: asyncpg.Connection, provider: str, source: str, body: bytes, problem: str | None
) -> object:
    """A receipt as an older version left it: body kept, its reports not read."""
    return await db.fetchval(
        "insert into journal (receipt_id, provider, source, content_type, body, problem,"
        " updates, update_count)"
        " values ($1, $2, $3, 'application/json', $4, $5, $6, 0) returning receipt_id",
        new_id(),
        provider,
        source,
        body,
        problem,
        codec.encode([]),
    )


async def caught_up(pool: asyncpg.Pool) -> None:
    async def nothing_left() -> bool:
        async with pool.acquire() as conn:
            rows, _ = await queries.backlog(conn)
        return rows == 0

    await eventually(nothing_left)


async def test_receipts_an_older_parser_could_not_read_are_recovered_once(
    pool: asyncpg.Pool, db: asyncpg.Connection, ingest: tuple[Journal, Projector]
) -> None:
    journal, _ = ingest
    batch = raw("infobip", "sms_v2_batch.json")  # three reports
    pushed = await keep(db, "infobip", "webhook", batch, "results[0]: unknown shape")
    drained = await keep(
        db, "infobip", "poll", raw("infobip", "sms_v3_report.json"), "results: unknown shape"
    )
    unreadable = await keep(db, "comapi", "webhook", b"not json", "body is not JSON")
    fine = await keep(db, "infobip", "webhook", raw("infobip", "omni_report.json"), None)
    done = await reprocess(pool, journal, batch=2)
    await caught_up(pool)
    stored = await db.fetch("select receipt_id from events")
    again = await reprocess(pool, journal, everything=True)
    await caught_up(pool)

    # Only the receipts with a problem, in windows of two: the batch's three reports and the
    # v3 one are stored, their events pointing at the receipts they came in; the body that is
    # not JSON stays a problem.
    assert (done.receipts, done.new_events, done.still_problems) == (3, 4, 1)
    assert sorted(str(r["receipt_id"]) for r in stored) == sorted(
        [str(pushed)] * 3 + [str(drained)]
    )
    problems = {
        r["receipt_id"]: r["problem"]
        for r in await db.fetch("select receipt_id, problem from journal where replays is null")
    }
    assert problems[pushed] is None
    assert problems[drained] is None
    assert problems[unreadable].startswith("body is not JSON")
    assert len(problems) == 4
    statuses = await db.fetch("select key, status from messages where key <> 'MESSAGE-ID-123-xyz'")
    assert {r["key"]: r["status"] for r in statuses} == {
        "2034072219640523073": "failed",
        "2034072219640523074": "expired",
        "2034072219640523075": "delivered",
        "v3-msg-1": "sent",  # 3.2: delivered to the operator, not the handset
    }

    # Everything again, the one without a problem included: nothing is stored twice.
    assert (again.receipts, again.new_events, again.corrected) == (4, 1, 0)
    assert await db.fetchval("select count(*) from events where receipt_id = $1", fine) == 1
    assert await db.fetchval("select count(*) from events") == 5


def messente_report(status: str) -> bytes:
    return json.dumps(
        {
            "omnimessage_id": "omni-remap",
            "message_id": "sms-remap",
            "channel": "sms",
            "status": status,
            "to": "+3725555555",
            "timestamp": "2024-05-02T10:16:00.000000",
        }
    ).encode()


async def test_a_code_mapped_later_corrects_past_messages_and_is_forwarded_once(
    pool: asyncpg.Pool,
    db: asyncpg.Connection,
    ingest: tuple[Journal, Projector],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    journal, projector = ingest
    await db.execute(
        "insert into subscriptions (id, url, secret) values (gen_random_uuid(),"
        " 'http://127.0.0.1:9/', 'whsec_AAAA')"
    )
    body = messente_report("NEWCODE")
    # Received by an older version that could not map NEWCODE: stored, `unknown`.
    parsed = messente.parse_webhook(body, "application/json", datetime.now(UTC))
    assert parsed.updates[0].status is Status.UNKNOWN
    await journal.append(Receipt("messente", "webhook", body), parsed.updates)
    await caught_up(pool)
    assert await db.fetchval("select status from messages") == "unknown"
    assert await db.fetchval("select count(*) from deliveries") == 0

    # The upgrade: NEWCODE now reads as delivered.
    monkeypatch.setitem(messente.STATUS_MAP, "NEWCODE", Status.DELIVERED)
    dry = await reprocess(pool, None, everything=True, provider="messente")
    assert summary(dry) == ["messente: unknown -> delivered: 1"]
    assert await db.fetchval("select count(*) from events") == 1  # a dry run writes nothing

    done = await reprocess(pool, journal, everything=True, provider="messente")
    assert done.last is not None
    assert await projector.wait_for(done.last, 10)
    assert done.corrected == 1
    assert await db.fetchval("select status from messages") == "delivered"
    events = await db.fetch("select status, dedup_key, corrects from events order by id")
    # Append-only: the unknown event stays on the timeline, the correction names it.
    assert [e["status"] for e in events] == ["unknown", "delivered"]
    assert events[1]["corrects"] == events[0]["dedup_key"]
    deliveries = await db.fetch("select status, seq from deliveries")
    assert [(d["status"], d["seq"]) for d in deliveries] == [("delivered", 1)]

    # Once: a second run finds nothing to change, and subscribers hear nothing more.
    again = await reprocess(pool, journal, everything=True, provider="messente")
    assert (again.new_events, again.corrected) == (0, 0)
    await caught_up(pool)
    assert await db.fetchval("select count(*) from events") == 2
    assert await db.fetchval("select count(*) from deliveries") == 1


async def test_the_reprocess_command_reads_a_time_range(
    database_url: str, db: asyncpg.Connection
) -> None:
    await db.execute("select journal_ensure_partitions('2024-01-01', '2024-01-01')")
    old = await keep(db, "infobip", "webhook", raw("infobip", "sms_v3_report.json"), "x")
    await db.execute(
        "update journal set received_at = '2024-01-01T00:00:00Z' where receipt_id = $1", old
    )
    await keep(db, "infobip", "webhook", raw("infobip", "omni_report.json"), "y")
    env = clean_env(RECEIVER_DATABASE_URL=database_url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "receiver",
        "reprocess",
        "--until",
        datetime(2025, 1, 1, tzinfo=UTC).isoformat(),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0
    lines = out.decode().splitlines()
    (done,) = [e for e in map(json.loads, lines[1:]) if e["event"] == "reprocess.done"]
    assert (done["receipts"], done["new_events"], done["still_problems"]) == (1, 1, 0)
    # What changed, and the progress on the way.
    assert lines[0] == "changed infobip: (new) -> sent: 1"
    assert "reprocess: 1/1 receipts (100%)" in err.decode()
    assert await db.fetchval("select count(*) from events where receipt_id = $1", old) == 1
    assert await db.fetchval("select count(*) from journal where problem is not null") == 1


async def test_a_nul_poisoned_receipt_is_recovered_and_its_problem_cleared_with_the_recovery(
    pool: asyncpg.Pool, db: asyncpg.Connection, settings: Settings
) -> None:
    # As an older release left it: a NUL in the error text (today's parser drops it) poisoned
    # the report, which was kept raw with the reason.
    poisoned_body = json.dumps(
        {
            "omnimessage_id": "omni-nul",
            "message_id": "sms-nul",
            "channel": "sms",
            "status": "DELIVRD",
            "error": "bad\u0000text",
            "timestamp": "2024-05-02T10:16:00.000000",
        }
    ).encode()
    poisoned = await keep(
        db,
        "messente",
        "webhook",
        poisoned_body,
        "could not project: report 'sms-nul|DELIVRD|...' not stored: invalid byte sequence"
        ' for encoding "UTF8": 0x00',
    )
    # Today's parser still refuses a NUL in a message id: three of four stored, one a problem.
    results = [
        {"messageId": key, "status": {"groupId": 3, "id": 5}}
        for key in ("ib-1", "x\u0000y", "ib-2", "ib-3")
    ]
    refused_body = json.dumps({"results": results}).encode()
    async with journal_running(pool, settings) as journal:
        refused = Receipt("infobip", "webhook", refused_body, "application/json")
        await journal.append_unparsed(refused, 4)
        projector = Projector(pool)
        await eventually(lambda: settled(db))
        while await projector.project_once():
            pass
        assert await db.fetchval("select count(*) from events") == 3

        done = await reprocess(pool, journal)
        # Journaled, not yet projected: the receipt keeps its problem until its reports are
        # stored, so a run cut off here leaves it to the next.
        assert await problem_of(db, poisoned) is not None
        await eventually(lambda: settled(db))
        while await projector.project_once():
            pass

    assert (done.receipts, done.new_events, done.corrected, done.still_problems) == (2, 1, 0, 1)
    assert await problem_of(db, poisoned) is None
    event = await db.fetchrow(
        "select message_key, error_text from events where receipt_id = $1", poisoned
    )
    assert event is not None
    assert (event["message_key"], event["error_text"]) == ("omni-nul", "badtext")
    still = await problem_of(db, refused.id)
    assert still is not None
    assert "results[1]" in still
    assert "NUL" in still
    assert await db.fetchval("select count(*) from events") == 4

    # Again: only the receipt that still holds something unreadable, and nothing new.
    again = await reprocess(pool, None)
    assert (again.receipts, again.new_events, again.corrected, again.still_problems) == (1, 0, 0, 1)


async def problem_of(db: asyncpg.Connection, receipt_id: object) -> str | None:
    problem: str | None = await db.fetchval(
        "select problem from journal where receipt_id = $1 and replays is null", receipt_id
    )
    return problem


async def settled(db: asyncpg.Connection) -> bool:
    """Every journal row below the projection horizon (the oldest transaction on the server,
    which other tests' databases share)."""
    return bool(
        await db.fetchval(
            "select coalesce(max(xid) < pg_snapshot_xmin(pg_current_snapshot()), true) from journal"
        )
    )
