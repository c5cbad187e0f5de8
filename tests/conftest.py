"""Shared fixtures: a real Postgres (RECEIVER_TEST_DATABASE_URL, else embedded), a fresh
database per test cloned from a migrated template, and the app behind a real HTTP client."""

import asyncio
import os
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from receiver import migrate
from receiver.db import open_pool
from receiver.embedded import embedded_postgres
from receiver.http.app import create_app
from receiver.http.keys import POOL
from receiver.ingest import queries as ingest_queries
from receiver.ingest.journal import Journal
from receiver.ingest.projector import Projector
from receiver.reports import Receipt, StatusUpdate
from receiver.settings import Settings

API_TOKEN = "test-token"
MESSENTE_PASSWORD = "messente-api-password"
INFOBIP_USER, INFOBIP_PASSWORD = "infobip-hook", "infobip-hook-password"
COMAPI_SECRET = "comapi-webhook-secret-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}

AiohttpClient = Callable[..., Any]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    """Wait until an asynchronous check holds; fail the test if it does not in time."""
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def someone_waits_on(db: asyncpg.Connection, holder: asyncpg.Connection) -> bool:
    """Whether a session is waiting for a lock that `holder` has."""
    waiting = "select count(*) > 0 from pg_stat_activity where $1 = any(pg_blocking_pids(pid))"
    return bool(await db.fetchval(waiting, holder.get_server_pid()))


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any RECEIVER_ setting, plus `extra`: what a
    service started by a test sees."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
    env.update(extra)
    return env


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """The Postgres server the tests use: the given one, or an embedded one started here."""
    given = os.environ.get("RECEIVER_TEST_DATABASE_URL")
    if given:
        yield given
        return
    # Not under pytest's own temporary root: every pytest session that starts on this
    # machine sets that root back to mode 0700, and the embedded server (its own user when
    # run as root) then loses its data directory mid-run (PANIC: pg_control: permission
    # denied), failing everything after it.
    with (
        tempfile.TemporaryDirectory(prefix="dlr-test-pg-") as scratch,
        embedded_postgres(Path(scratch)) as url,
    ):
        yield url


@pytest.fixture(scope="session")
def template_name(server_url: str) -> Iterator[str]:
    name = f"dlr_template_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f'create database "{name}"')
        finally:
            await admin.close()
        conn = await asyncpg.connect(with_database(server_url, name))
        try:
            await migrate.apply(conn)
        finally:
            await conn.close()

    asyncio.run(create())
    yield name
    asyncio.run(_drop(server_url, name))


async def _drop(server_url: str, name: str) -> None:
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await admin.close()


@pytest.fixture
async def database_url(server_url: str, template_name: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test."""
    name = f"dlr_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'create database "{name}" template "{template_name}"')
    finally:
        await admin.close()
    yield with_database(server_url, name)
    await _drop(server_url, name)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection for assertions on what was stored."""
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


Store = Callable[[Receipt, Sequence[StatusUpdate]], Awaitable[None]]


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """Journal a receipt and its updates, then project them: stored, as ingest does it,
    without an app around it."""
    async with open_pool(database_url, 4) as pool:
        journal = Journal(pool)
        journal.start()
        projector = Projector(pool)

        async def journal_and_project(receipt: Receipt, updates: Sequence[StatusUpdate]) -> None:
            await journal.append(receipt, updates)
            while await projector.project_once():
                pass

        yield journal_and_project
        await journal.close()


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": SecretStr(database_url),
        "api_tokens": (SecretStr(API_TOKEN),),
        "messente_api_password": SecretStr(MESSENTE_PASSWORD),
        "infobip_webhook_username": INFOBIP_USER,
        "infobip_webhook_password": SecretStr(INFOBIP_PASSWORD),
        "comapi_webhook_secret": SecretStr(COMAPI_SECRET),
        "data_dir": Path("unused"),
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


async def projected(app: web.Application, within: float = 10.0) -> None:
    """Until the projector has applied every journal row committed so far."""

    async def caught_up() -> bool:
        async with app[POOL].acquire() as conn:
            rows, _ = await ingest_queries.backlog(conn)
        return rows == 0

    await eventually(caught_up, within)


async def make_client(aiohttp_client: AiohttpClient, settings: Settings) -> TestClient[Any, Any]:
    """The app behind a real HTTP client. Reads of /v1 see every report acknowledged before
    them: each first waits for the projector to catch up (tests of the visibility delay
    itself use `raw_client`)."""
    result: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    request = result._request

    async def read_your_writes(method: str, path: Any, **kwargs: Any) -> Any:
        if method == "GET" and str(path).startswith("/v1/"):
            await projected(result.app)
        return await request(method, path, **kwargs)

    result._request = read_your_writes  # type: ignore[method-assign]
    return result


@pytest.fixture
async def client(settings: Settings, aiohttp_client: AiohttpClient) -> TestClient[Any, Any]:
    # settings (and so the database) first: fixtures tear down in reverse, and the app must
    # stop before its database is dropped.
    return await make_client(aiohttp_client, settings)


@pytest.fixture
async def raw_client(settings: Settings, aiohttp_client: AiohttpClient) -> TestClient[Any, Any]:
    """The app behind a real HTTP client, reads not waiting for projection."""
    result: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    return result
