"""Forward-only plain-SQL migrations from sql/migrations, applied once under an advisory lock."""

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

import asyncpg
import structlog

from receiver.db import Conn, open_pool
from receiver.settings import Settings

log = structlog.get_logger()

# The top-level sql/ folder, mapped into the package as receiver.sql at build time (see
# pyproject.toml): the same files from a wheel, an editable install or a source checkout.
MIGRATIONS_DIR: Traversable = resources.files("receiver.sql") / "migrations"
# Any constant works; it only has to be the same in every process migrating this database.
_LOCK_ID = 0x646C725F6D6967  # "dlr_mig"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load(directory: Traversable = MIGRATIONS_DIR) -> list[Migration]:
    if not directory.is_dir():
        raise FileNotFoundError(f"no migrations at {directory}: the package is incomplete")
    found = []
    for path in sorted(directory.iterdir(), key=lambda p: p.name):
        match = _NAME.match(path.name)
        if match is None:
            raise ValueError(f"migration file {path.name} is not named NNNN_description.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise ValueError(f"migration versions must run 1..n without gaps, found {versions}")
    return found


async def apply(
    conn: Conn,
    migrations: list[Migration] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[int]:
    """Apply what is missing, each in its own transaction; returns the versions applied.
    `progress` hears (applied, pending) after each."""
    pending = load() if migrations is None else migrations
    # A session lock, so two processes starting at once take turns instead of both migrating.
    await conn.execute("select pg_advisory_lock($1)", _LOCK_ID)
    try:
        await conn.execute(
            """
            create table if not exists schema_migrations (
                version integer primary key,
                name text not null,
                applied_at timestamptz not null default now()
            )
            """
        )
        done = {r["version"] for r in await conn.fetch("select version from schema_migrations")}
        applied = []
        todo = [m for m in pending if m.version not in done]
        for migration in todo:
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "insert into schema_migrations (version, name) values ($1, $2)",
                    migration.version,
                    migration.name,
                )
            log.info("migration.applied", version=migration.version, name=migration.name)
            applied.append(migration.version)
            if progress is not None:
                progress(len(applied), len(todo))
        return applied
    finally:
        await conn.execute("select pg_advisory_unlock($1)", _LOCK_ID)


@asynccontextmanager
async def migrated_pool(
    settings: Settings, *, latency_sensitive: bool = False
) -> AsyncIterator[asyncpg.Pool]:
    """The database pool every command and the app use: opened, pinged, and the schema
    migrated before anyone borrows from it. `latency_sensitive` (the HTTP workers'): its
    backends ask for short scheduler slices (RECEIVER_DB_SESSION_SLICE_US)."""
    if settings.database_url is None:
        raise ValueError("a pool needs settings.database_url (start the embedded one first)")
    async with open_pool(
        settings.database_url.get_secret_value(),
        settings.db_pool_size,
        slice_us=settings.db_session_slice_us if latency_sensitive else 0,
    ) as pool:
        async with pool.acquire() as conn:
            await apply(conn)
        yield pool
