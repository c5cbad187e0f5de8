"""The command line: `python -m receiver serve | migrate`."""

import argparse
import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
import structlog
from aiohttp import web
from pydantic import SecretStr

from receiver import logs, migrate
from receiver.app import create_app
from receiver.embedded import embedded_postgres
from receiver.settings import Settings

log = structlog.get_logger()


@contextmanager
def database(settings: Settings) -> Iterator[Settings]:
    """Settings with a database URL: the configured one, or an embedded server started here."""
    if settings.database_url is not None:
        yield settings
        return
    with embedded_postgres(settings.data_dir) as url:
        yield settings.model_copy(update={"database_url": SecretStr(url)})


async def _migrate(settings: Settings) -> None:
    assert settings.database_url is not None
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        applied = await migrate.apply(conn)
        log.info("migrate.done", applied=applied)
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="receiver", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the HTTP service (migrates first)")
    commands.add_parser("migrate", help="apply pending database migrations and exit")
    args = parser.parse_args(argv)

    settings = Settings()
    logs.configure(settings.log_level)
    with database(settings) as settings:
        if args.command == "migrate":
            asyncio.run(_migrate(settings))
        else:
            log.info("serve.start", host=settings.host, port=settings.port)
            web.run_app(
                create_app(settings),
                host=settings.host,
                port=settings.port,
                access_log=None,
                print=None,
            )


if __name__ == "__main__":
    main()
