"""Under load and faults, bounded in time and on loopback: a killed service, a database that
goes away, two service processes on one database. Whatever was acknowledged is stored."""

import asyncio
import json
import signal
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from receiver.ingest import codec
from receiver.providers import messente
from tests.conftest import (
    API_TOKEN,
    AUTH,
    MESSENTE_PASSWORD,
    clean_env,
    eventually,
    free_port,
    projected,
)

Client = TestClient[Any, Any]


def signed(omni: str, status: str = "DELIVRD") -> tuple[bytes, dict[str, str]]:
    body = json.dumps(
        {
            "omnimessage_id": omni,
            "message_id": f"{omni}-m",
            "channel": "sms",
            "status": status,
            "timestamp": "2024-05-02T10:00:00",
        }
    ).encode()
    return body, {
        "X-Messente-Signature": messente.sign(MESSENTE_PASSWORD, body),
        "Content-Type": "application/json",
    }


@asynccontextmanager
async def service(database_url: str, **env_extra: str) -> AsyncIterator[tuple[str, Any]]:
    """`python -m receiver serve` as its own process."""
    port = free_port()
    env = clean_env(
        RECEIVER_DATABASE_URL=database_url,
        RECEIVER_PORT=str(port),
        RECEIVER_API_TOKENS=API_TOKEN,
        RECEIVER_MESSENTE_API_PASSWORD=MESSENTE_PASSWORD,
        RECEIVER_POLL_ENABLED="false",
        RECEIVER_FORWARD_ENABLED="false",
    )
    env.update(env_extra)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "receiver",
        "serve",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            try:
                async with session.get(base + "/readyz") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        else:
            proc.kill()
            raise AssertionError("service did not start")
    try:
        yield base, proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


async def hammer(
    base: str, ids: list[str], acked: list[str], workers: int = 16
) -> Counter[int | str]:
    """Post one signed report per id; record the ids answered 200. Connection errors count."""
    outcomes: Counter[int | str] = Counter()
    queue = list(ids)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def worker() -> None:
            while queue:
                omni = queue.pop()
                body, headers = signed(omni)
                try:
                    async with session.post(
                        base + "/webhooks/messente", data=body, headers=headers
                    ) as resp:
                        outcomes[resp.status] += 1
                        if resp.status == 200:
                            acked.append(omni)
                except (aiohttp.ClientError, TimeoutError):
                    outcomes["connection error"] += 1

        await asyncio.gather(*(worker() for _ in range(workers)))
    return outcomes


async def until(condition: Callable[[], bool], within: float = 20.0) -> None:
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - polling a plain list another task fills
            await asyncio.sleep(0.01)


async def stored(db: asyncpg.Connection, ids: list[str]) -> set[str]:
    rows = await db.fetch("select message_key from events where message_key = any($1::text[])", ids)
    return {r["message_key"] for r in rows}


async def journaled(db: asyncpg.Connection) -> set[str]:
    """The omnimessage ids of every Messente report in the journal (committed, maybe not yet
    projected)."""
    rows = await db.fetch("select body, updates from journal where provider = 'messente'")
    # A Messente webhook is journaled unparsed (the projector parses it); a poll, parsed.
    return {
        key
        for r in rows
        for key in (
            [json.loads(r["body"])["omnimessage_id"]]
            if r["updates"] is None
            else [u.message_key for u in codec.decode(r["updates"])]
        )
    }


async def backlog(db: asyncpg.Connection) -> int:
    count: int = await db.fetchval(
        "select count(*) from journal j, projection_progress p where (j.xid, j.id) > (p.xid, p.id)"
    )
    return count


async def caught_up(db: asyncpg.Connection) -> bool:
    return await backlog(db) == 0


async def test_sigkill_under_load_loses_nothing_acknowledged(
    database_url: str, db: asyncpg.Connection
) -> None:
    ids = [f"kill-{uuid.uuid4().hex}" for _ in range(3000)]
    acked: list[str] = []
    # Journal only (no projector in the process): a kill between journal commit and projection.
    async with service(database_url, RECEIVER_PROJECT_ENABLED="false") as (base, proc):
        load = asyncio.create_task(hammer(base, ids, acked))
        await until(lambda: len(acked) >= 200)
        proc.send_signal(signal.SIGKILL)  # no shutdown, no flush: the process just stops
        await proc.wait()
        outcomes = await load
    assert outcomes["connection error"] > 0  # it really died mid-load
    assert set(acked) <= await journaled(db)
    assert await stored(db, ids) == set()  # acknowledged on the journal alone

    # Providers retry what was not acknowledged; after a restart everything is there, once.
    async with service(database_url) as (base, _):
        retry_acked: list[str] = []
        await hammer(base, [i for i in ids if i not in set(acked)], retry_acked)
        await eventually(lambda: caught_up(db), 30)
    assert await stored(db, ids) == set(ids)
    assert await db.fetchval(
        "select count(*) from events where message_key = any($1::text[])", ids
    ) == len(ids)


async def test_a_projector_killed_mid_batch_resumes_and_applies_everything_once(
    database_url: str, db: asyncpg.Connection
) -> None:
    ids = [f"proj-{i}" for i in range(2000)]
    acked: list[str] = []
    async with service(database_url, RECEIVER_PROJECT_ENABLED="false") as (base, _):
        await hammer(base, ids, acked)
    assert sorted(acked) == sorted(ids)

    def projector() -> Awaitable[asyncio.subprocess.Process]:
        env = clean_env(RECEIVER_DATABASE_URL=database_url, RECEIVER_PROJECT_MAX_BATCH="50")
        return asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "receiver",
            "project",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )

    async def part_way() -> bool:
        return bool(await db.fetchval("select count(*) from events") >= 200)

    first = await projector()
    try:
        await eventually(part_way, 30)
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    assert await backlog(db) > 0  # it died with work left
    second = await projector()
    try:
        await eventually(lambda: caught_up(db), 30)
    finally:
        second.terminate()
        assert await second.wait() == 0
    assert await stored(db, ids) == set(ids)
    assert await db.fetchval("select count(*) from events") == len(ids)
    assert await db.fetchval("select count(*) from messages where seq = 1") == len(ids)


async def test_database_outage_under_load_answers_503_and_keeps_every_ack(
    client: Client, server_url: str, database_url: str, db: asyncpg.Connection
) -> None:
    name = urlsplit(database_url).path.lstrip("/")
    base = str(client.make_url("")).rstrip("/")
    ids = [f"outage-{i}" for i in range(1500)]
    acked: list[str] = []
    load = asyncio.create_task(hammer(base, ids, acked, workers=8))
    await until(lambda: len(acked) >= 100)

    admin = await asyncpg.connect(server_url)
    await admin.execute(f'alter database "{name}" allow_connections false')
    await admin.execute(
        "select pg_terminate_backend(pid) from pg_stat_activity where datname = $1", name
    )
    await asyncio.sleep(0.5)
    await admin.execute(f'alter database "{name}" allow_connections true')
    await admin.close()
    outcomes = await load

    assert outcomes[503] > 0  # the outage was seen, and answered so providers retry
    assert outcomes[500] == 0
    db2 = await asyncpg.connect(database_url)
    try:
        await projected(client.app)
        assert set(acked) <= await stored(db2, ids)
        # And it recovered by itself: a report now is stored.
        body, headers = signed("after-outage")
        resp = await client.post("/webhooks/messente", data=body, headers=headers)
        assert resp.status == 200
    finally:
        await db2.close()


async def test_two_service_processes_lose_nothing_duplicate_nothing_forward_once(
    database_url: str,
    db: asyncpg.Connection,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    received: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(request.headers["webhook-id"])
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    subscriber = await aiohttp_server(app)
    forwarding = {
        "RECEIVER_FORWARD_ENABLED": "true",
        "RECEIVER_FORWARD_ALLOW_NETWORKS": "127.0.0.0/8",
        "RECEIVER_FORWARD_POLL_INTERVAL": "0.2",
    }
    async with (
        service(database_url, **forwarding) as (a, _),
        service(database_url, **forwarding) as (b, _),
    ):
        async with aiohttp.ClientSession() as session:
            resp = await session.post(
                a + "/v1/subscriptions",
                json={"url": str(subscriber.make_url("/hook"))},
                headers=AUTH,
            )
            assert resp.status == 201
        ids = [f"two-{i}" for i in range(600)]
        acked_a: list[str] = []
        acked_b: list[str] = []
        # Every report goes to both processes at once, as a provider retry might.
        await asyncio.gather(hammer(a, ids, acked_a), hammer(b, list(ids), acked_b))
        assert set(acked_a) == set(ids) == set(acked_b)

        await until(lambda: len(set(received)) >= len(ids))
        await asyncio.sleep(0.5)  # time for a duplicate to show up, were there one
    assert await db.fetchval("select count(*) from events") == len(ids)
    assert await db.fetchval("select count(*) from messages") == len(ids)
    counts = Counter(received)
    assert len(counts) == len(ids)
    assert set(counts.values()) == {1}
