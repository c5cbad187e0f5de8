"""Reprocessing kept receipts: what an older parser could not read is recovered, once."""

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from receiver.db import open_pool
from receiver.ingest import Ingestor
from receiver.reports import new_id
from receiver.reprocess import reprocess
from tests.conftest import clean_env
from tests.payloads import raw


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with open_pool(database_url, 3) as pool:
        yield pool


async def keep(
    db: asyncpg.Connection, provider: str, source: str, body: bytes, problem: str | None
) -> object:
    """A receipt as an older version left it: body kept, its reports not read."""
    return await db.fetchval(
        "insert into receipts (id, provider, source, content_type, body, problem)"
        " values ($1, $2, $3, 'application/json', $4, $5) returning id",
        new_id(),
        provider,
        source,
        body,
        problem,
    )


async def test_receipts_an_older_parser_could_not_read_are_recovered_once(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    batch = raw("infobip", "sms_v2_batch.json")  # three reports
    pushed = await keep(db, "infobip", "webhook", batch, "results[0]: unknown shape")
    drained = await keep(
        db, "infobip", "poll", raw("infobip", "sms_v3_report.json"), "results: unknown shape"
    )
    unreadable = await keep(db, "comapi", "webhook", b"not json", "body is not JSON")
    fine = await keep(db, "infobip", "webhook", raw("infobip", "omni_report.json"), None)
    ingestor = Ingestor(pool)
    ingestor.start()
    try:
        done = await reprocess(pool, ingestor, batch=2)
        stored = await db.fetch("select receipt_id from events")
        again = await reprocess(pool, ingestor, everything=True)
    finally:
        await ingestor.close()

    # Only the receipts with a problem, in windows of two: the batch's three reports and the
    # v3 one are stored; the body that is not JSON stays a problem.
    assert (done.receipts, done.new_events, done.still_problems) == (3, 4, 1)
    assert sorted(str(r["receipt_id"]) for r in stored) == sorted(
        [str(pushed)] * 3 + [str(drained)]
    )
    problems = {r["id"]: r["problem"] for r in await db.fetch("select id, problem from receipts")}
    assert problems[pushed] is None
    assert problems[drained] is None
    assert problems[unreadable].startswith("body is not JSON")
    assert await db.fetchval("select count(*) from receipts") == 4
    statuses = await db.fetch("select key, status from messages where key <> 'MESSAGE-ID-123-xyz'")
    assert {r["key"]: r["status"] for r in statuses} == {
        "2034072219640523073": "failed",
        "2034072219640523074": "expired",
        "2034072219640523075": "delivered",
        "v3-msg-1": "sent",  # 3.2: delivered to the operator, not the handset
    }

    # Everything again, the one without a problem included: nothing is stored twice.
    assert (again.receipts, again.new_events) == (4, 1)
    assert await db.fetchval("select count(*) from events where receipt_id = $1", fine) == 1
    assert await db.fetchval("select count(*) from events") == 5


async def test_the_reprocess_command_reads_a_time_range(
    database_url: str, db: asyncpg.Connection
) -> None:
    old = await keep(db, "infobip", "webhook", raw("infobip", "sms_v3_report.json"), "x")
    await db.execute("update receipts set received_at = '2024-01-01T00:00:00Z' where id = $1", old)
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
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    (done,) = [
        e for e in map(json.loads, out.decode().splitlines()) if e["event"] == "reprocess.done"
    ]
    assert (done["receipts"], done["new_events"], done["still_problems"]) == (1, 1, 0)
    assert await db.fetchval("select count(*) from events where receipt_id = $1", old) == 1
    assert await db.fetchval("select count(*) from receipts where problem is not null") == 1
