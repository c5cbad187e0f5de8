"""Starting and stopping the program as an operator meets it: one clear line for what stops
it at start, JSON lines only on stdout, and a SIGTERM under load that loses nothing."""

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from receiver.settings import Settings
from tests.conftest import (
    API_TOKEN,
    AUTH,
    MESSENTE_PASSWORD,
    AiohttpClient,
    clean_env,
    free_port,
    make_client,
    with_database,
)
from tests.integration.test_resilience import hammer, journaled, until
from tests.proxy import StallingProxy


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "receiver", *args],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_version_is_printed_under_the_program_name() -> None:
    done = run("--version")
    assert done.returncode == 0
    assert done.stdout.startswith("receiver 0.")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RECEIVER_PORT", "eighty"),  # not a number
        ("RECEIVER_WORKERS", "0"),  # below its range
        ("RECEIVER_FORWARD_ALLOW_NETWORKS", "10.0.0.0/33"),  # not a network
        ("RECEIVER_API_TOKENS", "s3cr3t-value:reed"),  # a typo in a scope, beside a secret
    ],
)
def test_a_bad_setting_is_one_line_naming_its_variable_and_exit_2(
    variable: str, value: str, tmp_path: Path
) -> None:
    done = run("migrate", **{variable: value, "RECEIVER_DATA_DIR": str(tmp_path)})
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert variable in lines[0]
    assert "s3cr3t" not in lines[0]
    # Nothing was started for a program that could not read its settings.
    assert not (tmp_path / "postgres").exists()


def test_a_taken_port_fails_before_postgres_starts(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = run("serve", RECEIVER_PORT=str(port), RECEIVER_DATA_DIR=str(tmp_path))
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert f"127.0.0.1:{port}" in line
    assert "RECEIVER_PORT" in line
    assert not (tmp_path / "postgres").exists()  # the embedded database never started


def test_an_unreachable_database_is_retried_then_one_line_without_the_password() -> None:
    closed = free_port()
    done = run(
        "migrate",
        RECEIVER_DATABASE_URL=f"postgresql://someone:hunter2@127.0.0.1:{closed}/db",
        RECEIVER_DATABASE_WAIT="1",
    )
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert "RECEIVER_DATABASE_URL" in line
    assert f"127.0.0.1:{closed}" in line
    waits = [json.loads(x) for x in done.stdout.splitlines()]
    assert waits
    assert {w["event"] for w in waits} == {"database.waiting"}
    assert "hunter2" not in done.stdout + done.stderr


def test_a_wrong_database_name_is_a_configuration_error_at_once(server_url: str) -> None:
    done = run(
        "migrate",
        RECEIVER_DATABASE_URL=with_database(server_url, "no_such_database_here"),
        RECEIVER_DATABASE_WAIT="600",  # not waited for: waiting cannot make it exist
    )
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert "RECEIVER_DATABASE_URL" in line


async def test_a_database_coming_up_late_is_waited_for(database_url: str) -> None:
    """Postgres that refuses connections at first (as beside us in a compose file): migrate
    logs that it waits, and succeeds once the database is there."""
    parts = urlsplit(database_url)
    # The embedded Postgres is reached by a Unix socket, named in the query (?host=/dir).
    socket_dir = parse_qs(parts.query).get("host", [None])[0]
    upstream = StallingProxy(socket_dir or parts.hostname or "127.0.0.1", parts.port or 5432)
    port = free_port()
    user = f"{parts.username}@" if parts.username else ""
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "host"])
    url = urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}", query=query))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "receiver",
        "migrate",
        env=clean_env(RECEIVER_DATABASE_URL=url, RECEIVER_DATABASE_WAIT="60"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
    assert first["event"] == "database.waiting"
    # Now the database "comes up" on the port migrate keeps trying.
    await upstream.start(port)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await upstream.close()
    assert proc.returncode == 0, err.decode()
    events = [json.loads(line)["event"] for line in out.decode().splitlines()]
    assert "migrate.done" in events


def _serve(tmp_path: Path, database_url: str, **env: str) -> tuple["subprocess.Popen[bytes]", str]:
    port = free_port()
    # The child has its own copies of the files; ours close once it is started.
    with (tmp_path / "stdout").open("wb") as out, (tmp_path / "stderr").open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "receiver", "serve"],
            env=clean_env(
                RECEIVER_DATABASE_URL=database_url,
                RECEIVER_PORT=str(port),
                RECEIVER_API_TOKENS=API_TOKEN,
                RECEIVER_MESSENTE_API_PASSWORD=MESSENTE_PASSWORD,
                RECEIVER_POLL_ENABLED="false",
                **env,
            ),
            stdout=out,
            stderr=err,
        )
    return proc, f"http://127.0.0.1:{port}"


async def _ready(base: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(600):
            try:
                async with session.get(base + "/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("service did not start")


def _lines(path: Path) -> list[dict[str, Any]]:
    # Every line on stdout is a JSON object: json.loads raises on anything else.
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_broken_clients_and_aiohttp_errors_are_json_lines_on_stdout(
    tmp_path: Path, database_url: str
) -> None:
    proc, base = _serve(tmp_path, database_url, RECEIVER_BACKGROUND_PROCESS="false")
    try:
        await _ready(base)
        port = int(base.rsplit(":", 1)[1])
        hostile = [
            b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # request line too long
            b"\x00\x01\x02 garbage\r\n\r\n",  # not HTTP at all
            b"POST /webhooks/messente HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 70000 + b"\r\n\r\n",
        ]
        for data in hostile:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(data)
            await writer.drain()
            if not data.endswith(b"{"):
                # aiohttp's own 400, before any handler of ours.
                status_line = await asyncio.wait_for(reader.readline(), 5)
                assert status_line.split()[1:2] == [b"400"], status_line
            writer.close()  # and vanish, mid-request for the unfinished body
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        async with aiohttp.ClientSession() as session, session.get(base + "/healthz") as resp:
            assert resp.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
    assert code == 0
    lines = _lines(tmp_path / "stdout")
    events = [line["event"] for line in lines]
    (listening,) = [line for line in lines if line["event"] == "serve.listening"]
    assert listening["url"] == base
    assert events[-1] == "serve.stopped"
    assert "Traceback" not in (tmp_path / "stderr").read_text()


async def test_sigterm_under_load_finishes_what_is_under_way_and_exits_0(
    tmp_path: Path,
    database_url: str,
    db: asyncpg.Connection,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    answered: set[str] = set()

    async def hook(request: web.Request) -> web.Response:
        await asyncio.sleep(0.2)  # a subscriber slow enough that deliveries are in flight
        answered.add(request.headers["webhook-id"])
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    subscriber = await aiohttp_server(app)
    proc, base = _serve(
        tmp_path,
        database_url,
        RECEIVER_FORWARD_ALLOW_NETWORKS="127.0.0.0/8",
        RECEIVER_FORWARD_POLL_INTERVAL="0.2",
    )
    try:
        await _ready(base)
        async with aiohttp.ClientSession() as session:
            created = await session.post(
                base + "/v1/subscriptions",
                json={"url": str(subscriber.make_url("/hook"))},
                headers=AUTH,
            )
            assert created.status == 201
        ids = [f"term-{uuid.uuid4().hex}" for _ in range(4000)]
        acked: list[str] = []
        load = asyncio.create_task(hammer(base, ids, acked))
        await until(lambda: len(acked) >= 300 and len(answered) >= 5, 60)
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 60)
        outcomes = await load
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0
    assert outcomes["connection error"] > 0  # it stopped mid-load
    # Nothing acknowledged is lost.
    assert set(acked) <= await journaled(db)
    # Nothing half-sent: every delivery a subscriber answered is recorded as delivered.
    rows = await db.fetch(
        "select event_id, state from deliveries where event_id = any($1)", [*answered]
    )
    assert {r["event_id"] for r in rows} == answered
    assert {r["state"] for r in rows} == {"delivered"}
    lines = _lines(tmp_path / "stdout")
    stopping = [line for line in lines if line["event"] == "serve.stopping"]
    assert stopping  # each HTTP worker said it was stopping
    assert lines[-1]["event"] == "serve.stopped"
    assert lines[-1]["code"] == 0


async def test_behind_a_proxy_the_access_line_names_the_forwarded_client(
    aiohttp_client: AiohttpClient, settings: Settings
) -> None:
    client = await make_client(aiohttp_client, settings)
    with capture_logs() as logged:
        await client.get("/healthz", headers={"X-Forwarded-For": "203.0.113.7, 10.0.0.2"})
        await client.get("/healthz", headers={"X-Forwarded-For": "x" * 5000})
        await client.get("/healthz")
    lines = [e for e in logged if e["event"] == "http.request"]
    assert [e.get("forwarded_for") for e in lines] == ["203.0.113.7, 10.0.0.2", "x" * 200, None]
