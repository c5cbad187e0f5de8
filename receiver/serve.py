"""`serve`: the HTTP service on its socket, or a supervisor of RECEIVER_WORKERS HTTP processes
beside one background process and one forwarder."""

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
from collections.abc import Iterator
from contextlib import contextmanager

import structlog
from aiohttp import web

from receiver.http.app import create_app
from receiver.loops import until_signalled
from receiver.metrics import MULTIPROC_ENV
from receiver.settings import Settings

log = structlog.get_logger()


async def _freeze_the_heap(app: web.Application) -> None:
    """Everything imported and built at start-up lives as long as the process. Frozen, the
    cyclic collector stops walking it on every full collection: those walks were pauses of
    20-35 ms under load, enough to set the p99 of acknowledgements."""
    gc.freeze()


def supervises(settings: Settings) -> tuple[bool, bool]:
    """Whether serve runs processes of its own, and whether one of them is the background."""
    background = (
        settings.project_enabled
        or settings.forward_enabled
        or settings.poll_enabled
        or settings.retention_days is not None
    )
    background = background and settings.background_process
    return settings.workers > 1 or background, background


def serve(settings: Settings, sock: socket.socket) -> None:
    supervising, background = supervises(settings)
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
        await until_signalled()
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
