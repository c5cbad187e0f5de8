"""The command line: `python -m receiver serve | migrate | project | forward | poll | background |
prune | reprocess | erase`. Each command composes the context managers that the app's cleanup
contexts use (pool, journal, projector, forwarder, poller, retention); serve: receiver/serve.py."""

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from importlib.metadata import version

import asyncpg
import structlog
from pydantic import SecretStr

from receiver import db, instants, logs, migrate, serve, startup
from receiver.embedded import embedded_postgres
from receiver.forwarding.forwarder import forwarder_running
from receiver.http.app import background_running
from receiver.ingest.journal import journal_running
from receiver.ingest.projector import projector_running
from receiver.loops import until_signalled
from receiver.maintenance import privacy
from receiver.maintenance.reprocess import print_progress, reprocess, summary
from receiver.maintenance.retention import Retention
from receiver.migrate import migrated_pool
from receiver.polling.poller import poller_running
from receiver.providers import PROVIDERS
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


def _on_terminal(label: str) -> Callable[[int, int], None] | None:
    """Progress rewritten in place on stderr when it is a terminal; elsewhere (a log
    collector) the command's summary line says it all."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        end = "\n" if done >= total else ""
        print(f"\r{label}: {done}/{total}", end=end, file=sys.stderr, flush=True)

    return show


async def _migrate(settings: Settings) -> None:
    assert settings.database_url is not None
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        applied = await migrate.apply(conn, progress=_on_terminal("migrate: migrations"))
        log.info("migrate.done", applied=applied)
    finally:
        await conn.close()


async def _forward(settings: Settings) -> None:
    """The forwarder alone, for running it apart from the HTTP service."""
    async with migrated_pool(settings) as pool, forwarder_running(pool, settings):
        log.info("forward.start")
        await until_signalled()


async def _poll(settings: Settings) -> None:
    """The poller alone, for running it apart from the HTTP service."""
    async with (
        migrated_pool(settings) as pool,
        journal_running(pool, settings) as journal,
        poller_running(pool, journal, settings),
    ):
        log.info("poll.start")
        await until_signalled()


async def _project(settings: Settings) -> None:
    """The projector alone: any number of them take turns with those inside serve."""
    async with migrated_pool(settings) as pool, projector_running(pool, settings):
        log.info("project.start")
        await until_signalled()


async def _background(settings: Settings) -> None:
    """The projector, forwarder, poller and retention that the settings enable: what serve
    runs beside its HTTP workers."""
    os.nice(settings.background_nice)
    async with migrated_pool(settings) as pool, background_running(pool, settings):
        log.info("background.start", nice=settings.background_nice)
        await until_signalled()


async def _prune(settings: Settings) -> None:
    """One retention pass now, for a scheduled job (serve runs one hourly when configured)."""
    if settings.retention_days is None:
        raise SystemExit("prune: set RECEIVER_RETENTION_DAYS to say what is old enough to go")
    async with migrated_pool(settings) as pool:
        await Retention(pool, settings).prune_once(progress=_on_terminal("prune: rows deleted"))


async def _erase(settings: Settings, args: argparse.Namespace) -> None:
    """Everything stored about one phone number; the number is never logged."""
    number = sys.stdin.readline().strip() if args.phone == "-" else args.phone
    try:
        privacy.number_digits(number)
    except privacy.InvalidNumberError as exc:
        raise startup.StartupError(f"erase: {exc}", startup.CONFIG) from None
    async with migrated_pool(settings) as pool:
        _, found = await privacy.erase(
            pool, number, dry_run=args.dry_run, progress=_on_terminal("erase: receipts read")
        )
    verb = "would erase" if args.dry_run else "erased"
    print(f"{verb}: " + ", ".join(f"{count} {name}" for name, count in vars(found).items()))


async def _reprocess(settings: Settings, args: argparse.Namespace) -> None:
    """Stored receipts through today's parsers and mappings, what changed into the journal."""
    options = {
        "everything": args.all,
        "since": args.since,
        "until": args.until,
        "provider": args.provider,
        "progress": print_progress,
    }
    async with migrated_pool(settings) as pool:
        if args.dry_run:
            done = await reprocess(pool, None, **options)
        else:
            async with (
                journal_running(pool, settings) as journal,
                projector_running(pool, settings) as projector,
            ):
                done = await reprocess(pool, journal, **options)
                # Done means visible: wait until this run's corrections are projected.
                if done.last is not None:
                    while not await projector.wait_for(done.last, 60):
                        log.info("reprocess.waiting_for_projection")
    for line in summary(done):
        print(("would change " if args.dry_run else "changed ") + line)
    log.info(
        "reprocess.done",
        dry_run=args.dry_run,
        receipts=done.receipts,
        new_events=done.new_events,
        corrected=done.corrected,
        still_problems=done.still_problems,
    )


def _moment(text: str) -> datetime:
    """An ISO 8601 time; one without a zone is UTC. A moment outside years 1-9999 in UTC
    (`9999-12-31T23:59:59-14:00`) is a usage error, not a traceback from the query."""
    try:
        return instants.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time: {exc}") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="receiver", description=__doc__)
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {version('dlr-receiver')}"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the HTTP service (migrates first)")
    commands.add_parser("migrate", help="apply pending database migrations and exit")
    commands.add_parser("project", help="run only the projector (serve runs one too)")
    commands.add_parser(
        "background", help="projector, forwarder, poller, retention: what serve runs beside HTTP"
    )
    commands.add_parser("forward", help="run only the forwarder (serve runs one too)")
    commands.add_parser("poll", help="run only the poller (serve runs one too)")
    commands.add_parser("prune", help="delete what RECEIVER_RETENTION_DAYS says is old, once")
    again = commands.add_parser(
        "reprocess",
        help="read stored receipts again with today's parsers and mappings; apply what changed",
    )
    again.add_argument(
        "--all", action="store_true", help="every receipt, not only those that kept a problem"
    )
    again.add_argument("--provider", choices=sorted(PROVIDERS), help="only this provider's")
    again.add_argument(
        "--dry-run", action="store_true", help="count what would change; write nothing"
    )
    again.add_argument("--since", type=_moment, help="received at or after (ISO 8601)")
    again.add_argument("--until", type=_moment, help="received before (ISO 8601)")
    erase = commands.add_parser(
        "erase", help="erase everything stored about one phone number (--dry-run to count)"
    )
    erase.add_argument("phone", help="the number (+372..., 00372... or 372...); - reads stdin")
    erase.add_argument("--dry-run", action="store_true", help="count what would go; erase none")
    args = parser.parse_args(argv)

    try:
        _run(args)
    except startup.StartupError as exc:
        logs.flush()
        print(f"receiver: {exc}", file=sys.stderr)
        raise SystemExit(exc.code) from None


def _run(args: argparse.Namespace) -> None:
    startup.use_uvloop()
    settings = startup.load_settings()
    logs.configure(settings.log_level)
    db.application_name = f"dlr-receiver {args.command}"
    sock = None
    if args.command == "serve":
        # Before Postgres starts or migrations run: a taken port says so in a second.
        supervising, _ = serve.supervises(settings)
        sock = startup.listening_socket(
            settings.host, settings.port, settings.reuse_port or supervising
        )
    with database(settings) as settings:
        assert settings.database_url is not None
        asyncio.run(
            startup.wait_for_database(
                settings.database_url.get_secret_value(), settings.database_wait
            )
        )
        if args.command == "migrate":
            asyncio.run(_migrate(settings))
        elif args.command == "forward":
            asyncio.run(_forward(settings))
        elif args.command == "poll":
            asyncio.run(_poll(settings))
        elif args.command == "prune":
            asyncio.run(_prune(settings))
        elif args.command == "project":
            asyncio.run(_project(settings))
        elif args.command == "background":
            asyncio.run(_background(settings))
        elif args.command == "reprocess":
            asyncio.run(_reprocess(settings, args))
        elif args.command == "erase":
            asyncio.run(_erase(settings, args))
        else:
            assert sock is not None
            log.info("serve.start", host=settings.host, port=settings.port)
            serve.serve(settings, sock)


if __name__ == "__main__":
    main()
