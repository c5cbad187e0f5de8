"""The command line: `python -m receiver serve | migrate | forward`."""

import argparse
import asyncio
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
import structlog
from aiohttp import web
from pydantic import SecretStr

from receiver import logs, migrate
from receiver.app import create_app
from receiver.db import open_pool
from receiver.embedded import embedded_postgres
from receiver.forward import Forwarder, http_client
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


async def _forward(settings: Settings) -> None:
    """The forwarder alone, for running it apart from the HTTP service."""
    assert settings.database_url is not None
    async with (
        open_pool(settings.database_url.get_secret_value(), settings.db_pool_size) as pool,
        http_client(settings) as session,
    ):
        async with pool.acquire() as conn:
            await migrate.apply(conn)
        forwarder = Forwarder(pool, session, settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, forwarder.stop)
        log.info("forward.start")
        await forwarder.run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="receiver", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the HTTP service (migrates first)")
    commands.add_parser("migrate", help="apply pending database migrations and exit")
    commands.add_parser("forward", help="run only the forwarder (serve runs one too)")
    args = parser.parse_args(argv)

    settings = Settings()
    logs.configure(settings.log_level)
    with database(settings) as settings:
        if args.command == "migrate":
            asyncio.run(_migrate(settings))
        elif args.command == "forward":
            asyncio.run(_forward(settings))
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
