"""The command line: `python -m receiver serve | migrate | project | forward | poll | prune |
reprocess | erase`."""

import argparse
import asyncio
import ctypes
import gc
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from importlib.metadata import version

import asyncpg
import structlog
from aiohttp import web
from pydantic import SecretStr

from receiver import instants, logs, migrate, privacy, startup
from receiver.app import background_running, create_app, journal_running, projector_running
from receiver.db import open_pool
from receiver.embedded import embedded_postgres
from receiver.forward import Forwarder, http_client
from receiver.metrics import MULTIPROC_ENV
from receiver.poll import Poller
from receiver.poll import http_client as poll_client
from receiver.providers import PROVIDERS
from receiver.reprocess import print_progress, reprocess, summary
from receiver.retention import Retention
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


@asynccontextmanager
async def _migrated_pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    assert settings.database_url is not None
    async with open_pool(settings.database_url.get_secret_value(), settings.db_pool_size) as pool:
        async with pool.acquire() as conn:
            await migrate.apply(conn)
        yield pool


def _stop_on_signals(stop: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)


async def _forward(settings: Settings) -> None:
    """The forwarder alone, for running it apart from the HTTP service."""
    async with _migrated_pool(settings) as pool, http_client(settings) as session:
        forwarder = Forwarder(pool, session, settings)
        _stop_on_signals(forwarder.stop)
        log.info("forward.start")
        await forwarder.run()


async def _poll(settings: Settings) -> None:
    """The poller alone, for running it apart from the HTTP service."""
    async with (
        _migrated_pool(settings) as pool,
        poll_client(settings) as session,
        journal_running(pool, settings) as journal,
    ):
        poller = Poller(pool, journal, session, settings)
        _stop_on_signals(poller.stop)
        log.info("poll.start")
        await poller.run()


async def _background(settings: Settings) -> None:
    """The projector, forwarder, poller and retention that the settings enable: what serve
    runs beside its HTTP workers."""
    stopped = asyncio.Event()
    os.nice(settings.background_nice)
    async with _migrated_pool(settings) as pool, background_running(pool, settings):
        _stop_on_signals(stopped.set)
        log.info("background.start", nice=settings.background_nice)
        await stopped.wait()


async def _project(settings: Settings) -> None:
    """The projector alone: any number of them take turns with those inside serve."""
    stopped = asyncio.Event()
    async with _migrated_pool(settings) as pool, projector_running(pool, settings):
        _stop_on_signals(stopped.set)
        log.info("project.start")
        await stopped.wait()


async def _prune(settings: Settings) -> None:
    """One retention pass now, for a scheduled job (serve runs one hourly when configured)."""
    if settings.retention_days is None:
        raise SystemExit("prune: set RECEIVER_RETENTION_DAYS to say what is old enough to go")
    async with _migrated_pool(settings) as pool:
        await Retention(pool, settings).prune_once(progress=_on_terminal("prune: rows deleted"))


async def _erase(settings: Settings, args: argparse.Namespace) -> None:
    """Everything stored about one phone number; the number is never logged."""
    number = sys.stdin.readline().strip() if args.phone == "-" else args.phone
    try:
        privacy.number_digits(number)
    except privacy.InvalidNumberError as exc:
        raise startup.StartupError(f"erase: {exc}", startup.CONFIG) from None
    async with _migrated_pool(settings) as pool:
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
    async with _migrated_pool(settings) as pool:
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


async def _freeze_the_heap(app: web.Application) -> None:
    """Everything imported and built at start-up lives as long as the process. Frozen, the
    cyclic collector stops walking it on every full collection: those walks were pauses of
    20-35 ms under load, enough to set the p99 of acknowledgements."""
    gc.freeze()


def _supervises(settings: Settings) -> tuple[bool, bool]:
    """Whether serve runs processes of its own, and whether one of them is the background."""
    background = (
        settings.project_enabled
        or settings.forward_enabled
        or settings.poll_enabled
        or settings.retention_days is not None
    )
    background = background and settings.background_process
    return settings.workers > 1 or background, background


def _serve(settings: Settings, sock: socket.socket) -> None:
    supervising, background = _supervises(settings)
    if supervising:
        sock.close()  # it proved the port free; the workers bind it themselves (SO_REUSEPORT)
        with _metrics_dir(make=True):
            _supervise(settings, background)
        return
    if settings.reuse_port:
        # A worker of serve (or one of several run on one port): the folder is shared with
        # the others, and whoever started them emptied it.
        _serve_one(settings, sock)
        return
    with _metrics_dir(make=False):
        _serve_one(settings, sock)


@contextmanager
def _metrics_dir(*, make: bool) -> Iterator[None]:
    """Where every process of this run writes its metrics (prometheus-client's multiprocess
    mode), so a scrape of any worker covers all. A configured PROMETHEUS_MULTIPROC_DIR is
    emptied first: the files of an earlier run would be added to this one's. Otherwise, when
    several processes run, a folder of this run's own, removed at exit."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        os.makedirs(given, exist_ok=True)
        for name in os.listdir(given):
            if name.endswith(".db"):
                os.remove(os.path.join(given, name))
        yield
        return
    if not make:
        yield
        return
    path = tempfile.mkdtemp(prefix="dlr-metrics-")
    os.environ[MULTIPROC_ENV] = path  # inherited by every process _supervise starts
    try:
        yield
    finally:
        del os.environ[MULTIPROC_ENV]
        shutil.rmtree(path, ignore_errors=True)


def _serve_one(settings: Settings, sock: socket.socket) -> None:
    app = create_app(settings)
    app.on_startup.append(_freeze_the_heap)  # runs after the pool, journal and loops are up
    asyncio.run(_run_http(app, sock))


async def _run_http(app: web.Application, sock: socket.socket) -> None:
    """The app on its socket until SIGTERM or SIGINT; then stop accepting, let the requests
    under way finish (their journal commits too), and close the rest in order: projector
    batch, deliveries in flight, pool."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        host, port = sock.getsockname()[:2]
        log.info("serve.listening", url=f"http://{host}:{port}", pid=os.getpid())
        stopped = asyncio.Event()
        _stop_on_signals(stopped.set)
        await stopped.wait()
        log.info("serve.stopping", pid=os.getpid())
    finally:
        await runner.cleanup()
    log.info("serve.stopped", pid=os.getpid())


# What an HTTP worker leaves to the background process.
_BACKGROUND_OFF = {
    "RECEIVER_PROJECT_ENABLED": "false",
    "RECEIVER_FORWARD_ENABLED": "false",
    "RECEIVER_POLL_ENABLED": "false",
}


def _spawn(command: str, env: dict[str, str]) -> "subprocess.Popen[bytes]":
    # Our own interpreter running our own module: nothing in the command comes from outside.
    return subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "receiver", command], env=env, preexec_fn=_die_with_parent
    )


def _die_with_parent() -> None:
    """In a child, before it runs: SIGKILL it when serve dies, however serve dies (SIGKILL,
    the OOM killer), so no worker outlives it holding the port. Linux only; elsewhere a no-op."""
    if sys.platform == "linux":
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_PR_SET_PDEATHSIG = 1


def _supervise(settings: Settings, background: bool) -> None:
    """RECEIVER_WORKERS HTTP processes on one port (SO_REUSEPORT), one background process for
    the projector, poller and retention, and one forwarder. The processes answering providers
    have their cores to themselves: projection is the expensive part, and it may fall behind
    a burst and catch up after it, where answers must not. The forwarder has its own too, as
    a projection batch would hold its event loop for as long as the batch takes. They share
    nothing but the database, which is all they ever share across hosts too. If one exits,
    all stop."""
    assert settings.database_url is not None
    env = {
        **os.environ,
        "RECEIVER_DATABASE_URL": settings.database_url.get_secret_value(),
        "RECEIVER_WORKERS": "1",
        "RECEIVER_REUSE_PORT": "true",
    }
    http_env = {**env, **(_BACKGROUND_OFF if background else {})}
    if background:
        http_env.pop("RECEIVER_RETENTION_DAYS", None)
    children = [_spawn("serve", http_env) for _ in range(settings.workers)]
    if background:
        children.append(_spawn("background", {**env, "RECEIVER_FORWARD_ENABLED": "false"}))
        if settings.forward_enabled:
            children.append(_spawn("forward", env))

    def stop(*_: object) -> None:
        for child in children:
            if child.poll() is None:
                child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("serve.processes", http=settings.workers, background=background)
    code = 0
    running = list(children)
    while running:
        # Polled rather than os.wait(): stop() reaps through poll() too, and a child reaped
        # there would never be reported to os.wait().
        time.sleep(0.2)
        for child in [c for c in running if c.poll() is not None]:
            running.remove(child)
            if child.returncode not in (0, -signal.SIGTERM) and not code:
                log.error("serve.child_exited", pid=child.pid, code=child.returncode)
                code = 1
            stop()  # one gone: the service is not whole, so it stops (and is restarted whole)
    log.info("serve.stopped", code=code)
    if code:
        raise SystemExit(code)


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
    sock = None
    if args.command == "serve":
        # Before Postgres starts or migrations run: a taken port says so in a second.
        supervising, _ = _supervises(settings)
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
            _serve(settings, sock)


if __name__ == "__main__":
    main()
