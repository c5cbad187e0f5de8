"""What can stop the service at start, each said in one line: a bad setting, a port already
taken, a database that is not there (waited for, within bounds, when it may be coming up)."""

import asyncio
import socket
from urllib.parse import urlsplit

import asyncpg
import structlog
from pydantic import ValidationError
from pydantic_settings import SettingsError

from receiver.settings import Settings

log = structlog.get_logger()

# Exit codes: a setting to fix is 2 (as argparse uses for bad arguments); anything else 1.
CONFIG = 2
UNAVAILABLE = 1


class StartupError(Exception):
    """Why the program cannot start, as the one line the operator reads, and its exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def use_uvloop() -> None:
    """Every command runs on uvloop where it is installed (not on Windows): its transports and
    callbacks are C, and asyncio's own machinery was a fifth of a webhook request's CPU."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a platform without uvloop runs on asyncio's loop
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def load_settings() -> Settings:
    """Settings from the environment; a bad value is a StartupError naming its variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            problems.append(f"RECEIVER_{field.upper()}: {error['msg']}")
        # Inputs are not repeated (hide_input_in_errors): a bad value may be a secret.
        raise StartupError(f"bad setting {'; '.join(problems)} (fix or unset it)", CONFIG) from None
    except SettingsError as exc:
        raise StartupError(f"bad setting: {exc} (fix or unset it)", CONFIG) from None


def listening_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """The socket serve will listen on, bound before anything else starts: a port already
    taken must not cost an embedded Postgres start and a migration run first."""
    where = f"{host}:{port} (RECEIVER_HOST, RECEIVER_PORT)"
    if not 0 < port < 65536:
        raise StartupError(f"cannot listen on {where}: the port must be 1-65535", CONFIG)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (OSError, UnicodeError) as exc:
        raise StartupError(f"cannot listen on {where}: {exc}; set another host", CONFIG) from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise StartupError(
            f"cannot listen on {where}: {exc.strerror or exc}; stop what holds it or choose"
            " another port",
            CONFIG,
        ) from None
    sock.setblocking(False)
    return sock


def _where(url: str) -> str:
    """Host, port and database of a URL, never its user or password."""
    try:
        parts = urlsplit(url)
        return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"
    except ValueError:
        return "an unreadable URL"


# Errors that waiting does not cure: the URL or its credentials are wrong.
_WRONG = (
    asyncpg.InvalidAuthorizationSpecificationError,  # bad password, unknown role (28xxx)
    asyncpg.InvalidCatalogNameError,  # no such database
)


async def wait_for_database(url: str, within: float) -> None:
    """Return once Postgres at `url` takes a connection. While it is still coming up (refused,
    starting, not resolving yet) retry with a log line, for at most `within` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    delay = 0.5
    attempt = 0
    while True:
        attempt += 1
        try:
            conn = await asyncpg.connect(url, timeout=min(10.0, max(within, 1.0)))
        except _WRONG as exc:
            raise StartupError(
                f"the database at {_where(url)} refused us: {exc}; check RECEIVER_DATABASE_URL",
                CONFIG,
            ) from None
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise StartupError(
                    f"cannot reach the database at {_where(url)} (RECEIVER_DATABASE_URL) after"
                    f" {attempt} attempts in {within:g} s: {error}; check that Postgres runs"
                    " there, or wait longer with RECEIVER_DATABASE_WAIT",
                    UNAVAILABLE,
                ) from None
            log.warning(
                "database.waiting", at=_where(url), attempt=attempt, error=error, retry_in=delay
            )
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)
            continue
        except ValueError as exc:  # asyncpg's reading of a malformed URL
            raise StartupError(f"RECEIVER_DATABASE_URL cannot be read: {exc}", CONFIG) from None
        await conn.close()
        return
