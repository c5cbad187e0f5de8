"""The command line as a user runs it: `serve` on the embedded default, `migrate` on a URL."""

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from receiver import migrate
from receiver.providers import messente
from receiver.reports import new_id
from tests.conftest import clean_env, free_port


def wait_ready(base: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=1) as resp:  # noqa: S310
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{base} did not become ready")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """`python -m receiver serve` with no database URL: it must bring its own Postgres."""
    port = free_port()
    env = clean_env(
        RECEIVER_DATA_DIR=str(tmp_path / "data"),
        RECEIVER_PORT=str(port),
        RECEIVER_API_TOKENS="cli-token",
        RECEIVER_MESSENTE_API_PASSWORD="cli-password",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "receiver", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base)
        yield base
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, output.decode(errors="replace")[-2000:]


def test_serve_on_embedded_postgres_takes_a_signed_report_and_returns_its_timeline(
    served: str, tmp_path: Path
) -> None:
    body = json.dumps(
        {
            "omnimessage_id": "omni-cli",
            "message_id": "sms-cli",
            "channel": "sms",
            "status": "DELIVRD",
            "timestamp": "2024-05-02T10:00:00",
        }
    ).encode()
    post = urllib.request.Request(  # noqa: S310 - a fixed local URL
        f"{served}/webhooks/messente",
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-Messente-Signature": messente.sign("cli-password", body),
        },
    )
    with urllib.request.urlopen(post, timeout=10) as resp:  # noqa: S310
        assert resp.status == 200
    get = urllib.request.Request(  # noqa: S310
        f"{served}/v1/messages/messente/sms-cli", headers={"Authorization": "Bearer cli-token"}
    )
    # Acknowledged is journaled; the timeline shows it a moment later (the projection lag).
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(get, timeout=10) as resp:  # noqa: S310
                message = json.load(resp)
            break
        except urllib.error.HTTPError as exc:
            if exc.code != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    assert message["status"] == "delivered"
    assert message["events"][0]["provider_status"] == "DELIVRD"
    # The data lives where RECEIVER_DATA_DIR says.
    assert (tmp_path / "data" / "postgres" / "PG_VERSION").exists()


async def test_migrate_command_applies_every_migration_once(
    server_url: str, database_url: str
) -> None:
    # database_url is already migrated; a second run must apply nothing and exit 0.
    env = clean_env(RECEIVER_DATABASE_URL=database_url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "receiver", "migrate", env=env, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    lines = [json.loads(line) for line in out.decode().splitlines()]
    (done,) = [line for line in lines if line["event"] == "migrate.done"]
    assert done["applied"] == []


async def test_prune_command_deletes_what_is_old_enough_once(
    database_url: str, db: asyncpg.Connection
) -> None:
    old = new_id(at=time.time() - 10 * 86400)
    await db.execute("select journal_ensure_partitions(current_date - 10, current_date - 10)")
    await db.execute(
        "insert into journal (receipt_id, provider, source, body, updates, update_count,"
        " received_at)"
        " values ($1, 'messente', 'webhook', '', '', 0, now() - interval '10 days'),"
        " ($2, 'messente', 'webhook', '', '', 0, now())",
        old,
        new_id(),
    )
    # As if projected: retention drops only what the projector has passed.
    await db.execute(
        "update projection_progress set xid = pg_current_xact_id(),"
        " id = (select max(id) from journal)"
    )

    async def prune(**env: str) -> tuple[int | None, list[dict[str, Any]]]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "receiver",
            "prune",
            env=clean_env(RECEIVER_DATABASE_URL=database_url, **env),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await proc.communicate()
        return proc.returncode, [json.loads(line) for line in out.decode().splitlines()]

    code, _ = await prune()  # retention not configured: refuses, deletes nothing
    assert code != 0
    assert await db.fetchval("select count(*) from journal") == 2
    code, lines = await prune(RECEIVER_RETENTION_DAYS="7")
    assert code == 0
    (pruned,) = [line for line in lines if line["event"] == "retention.pruned"]
    assert pruned["journal_days"] == 1
    assert await db.fetchval("select count(*) from journal where receipt_id = $1", old) == 0
    assert await db.fetchval("select count(*) from journal") == 1


async def test_concurrent_migrations_apply_each_version_once(database_url: str) -> None:
    conns = [await asyncpg.connect(database_url) for _ in range(3)]
    try:
        # Start from an empty schema, then let three processes race to migrate it.
        await conns[0].execute("drop schema public cascade; create schema public")
        results = await asyncio.gather(*(migrate.apply(c) for c in conns))
        versions = sorted(v for applied in results for v in applied)
        assert versions == [m.version for m in migrate.load()]
        rows = await conns[0].fetch("select version from schema_migrations order by version")
        assert [r["version"] for r in rows] == versions
    finally:
        for conn in conns:
            await conn.close()


def test_serve_with_two_workers_shares_one_port(database_url: str) -> None:
    port = free_port()
    env = clean_env(
        RECEIVER_DATABASE_URL=database_url,
        RECEIVER_PORT=str(port),
        RECEIVER_WORKERS="2",
        RECEIVER_API_TOKENS="cli-token",
        RECEIVER_MESSENTE_API_PASSWORD="cli-password",
        RECEIVER_POLL_ENABLED="false",
        RECEIVER_FORWARD_ENABLED="false",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "receiver", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        for i in range(20):
            body = json.dumps({"omnimessage_id": f"w-{i}", "status": "DELIVRD"}).encode()
            post = urllib.request.Request(  # noqa: S310
                f"{base}/webhooks/messente",
                data=body,
                headers={"X-Messente-Signature": messente.sign("cli-password", body)},
            )
            with urllib.request.urlopen(post, timeout=10) as resp:  # noqa: S310
                assert resp.status == 200
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        commands = sorted(Path(f"/proc/{c}/cmdline").read_bytes().split(b"\0")[3] for c in children)
        # Two HTTP workers, and the background process (projector and the rest) beside them;
        # forwarding is off here, so no forwarder.
        assert commands == [b"background", b"serve", b"serve"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


@pytest.mark.parametrize(
    "moment",
    ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "2024-13-01", "2024-01-01\x01"],
)
async def test_reprocess_with_a_moment_outside_utc_is_a_usage_error_not_a_traceback(
    database_url: str, moment: str
) -> None:
    # Valid ISO 8601 outside years 1-9999 once in UTC reached the query and died there.
    env = clean_env(RECEIVER_DATABASE_URL=database_url)
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "receiver", "reprocess", "--dry-run", "--since", moment),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"Traceback" not in out + err
    assert b"argument --since" in err
