"""The connection pool, and which database errors are worth a retry (503) rather than a bug."""

import asyncio
import functools
import json
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypeAlias

import asyncpg
import structlog

from receiver import sched

# What query functions take: a plain connection or one borrowed from the pool. The classes
# are generic only in asyncpg-stubs, so the alias is spelled out for the type checker alone.
if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Conn: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
else:
    Conn = asyncpg.Connection

log = structlog.get_logger()


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb columns come back as Python values, not strings.
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


_LOOPBACK = {"127.0.0.1", "::1"}
# struct ucred: pid, uid, gid.
_UCRED = struct.Struct("iII")


def client_end(peer: object, own: object) -> tuple[bool, int | None]:
    """From a connection's peer and own socket addresses: whether the server is on this host,
    and our client port (None over a Unix socket, whose addresses are paths)."""
    if not isinstance(peer, tuple):  # a Unix socket: the same host
        return True, None
    port = own[1] if isinstance(own, tuple) else None
    return str(peer[0]) in _LOOPBACK, port


def peer_pid(sock: object) -> int | None:
    """The pid at the other end of a Unix socket (SO_PEERCRED: the process that listened, for
    a client's socket), or None."""
    getsockopt = getattr(sock, "getsockopt", None)  # asyncio's TransportSocket, or None
    if getsockopt is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        raw = getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    pid: int = _UCRED.unpack(raw)[0]
    return pid or None


async def _init_latency_sensitive(conn: asyncpg.Connection, slice_us: int) -> None:
    """A connection of the HTTP worker: its backend asked for short scheduler slices when on
    this host (receiver/sched.py says why)."""
    await _init_connection(conn)
    transport = conn._transport  # type: ignore[attr-defined]  # asyncpg keeps it private
    local, port = client_end(
        transport.get_extra_info("peername"), transport.get_extra_info("sockname")
    )
    if not local:
        return
    pid, nanoseconds = conn.get_server_pid(), slice_us * 1000
    if port is not None:
        changed = sched.shorten_backend_slice(pid, nanoseconds, client_port=port)
    else:
        server = peer_pid(transport.get_extra_info("socket"))
        changed = server is not None and sched.shorten_backend_slice(
            pid, nanoseconds, server=server
        )
    if not changed:
        log.debug("database.slice_unchanged", pid=pid)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What a connection needs on its way back to the pool: nothing beyond what asyncpg does
    anyway (roll back an open transaction).

    asyncpg's default reset (RESET ALL, UNLISTEN *, CLOSE ALL, unlock every advisory lock) is
    a round trip on every release: on ingest's path, one in every three. Pooled connections
    here carry no session state: nothing SETs, the forwarder LISTENs on a connection of its
    own, and the two session advisory locks (migrations, the Infobip drain) are released by
    their holders, who close the connection when that fails.
    """


# What this process's connections are called in pg_stat_activity: `dlr-receiver serve`,
# `dlr-receiver background`, ... (the command line sets it for the command it runs), so an
# operator, or the benchmark, can tell the HTTP workers' sessions from the projector's.
application_name = "dlr-receiver"


@asynccontextmanager
async def open_pool(url: str, size: int, *, slice_us: int = 0) -> AsyncIterator[asyncpg.Pool]:
    """`slice_us`: the scheduler slice asked for this pool's backends (0: left alone)."""
    # A name given in the URL is the operator's and stays.
    named = "application_name" in url
    init = _init_connection
    if slice_us > 0:
        init = functools.partial(_init_latency_sensitive, slice_us=slice_us)
    pool = await asyncpg.create_pool(
        url,
        min_size=1,
        max_size=size,
        init=init,
        reset=_keep_session,
        command_timeout=30,
        server_settings=None if named else {"application_name": application_name},
    )
    try:
        await pool.fetchval("select 1")
        yield pool
    finally:
        await pool.close()


class DatabaseUnavailable(Exception):  # noqa: N818 - a state, not a coding error
    """No connection could be had: whatever Postgres said, the request itself is not at fault."""


@asynccontextmanager
async def connection(pool: asyncpg.Pool) -> AsyncIterator[Conn]:
    """Borrow a connection; failing to get one (refused, not accepting, auth) is an outage."""
    try:
        conn = await pool.acquire(timeout=10)
    except Exception as exc:
        raise DatabaseUnavailable(f"{type(exc).__name__}: {exc}") from exc
    try:
        yield conn
    except asyncpg.exceptions._base.InternalClientError as exc:
        # Seen when the server ends an idle pooled connection (an outage, an admin's
        # terminate): asyncpg's protocol is left mid-operation and refuses the next one. The
        # connection is what broke, not the request: a fresh one is needed, and a retry works.
        conn.terminate()
        raise DatabaseUnavailable(f"connection lost: {exc}") from exc
    except BaseException as exc:
        lost = is_transient(exc) and not isinstance(exc, asyncpg.PostgresError)
        if lost or isinstance(exc, asyncio.CancelledError):
            # Lost mid-operation (the server went away, or we gave up waiting): the protocol
            # may be left thinking that operation still runs, and the next borrower would fail
            # with "another operation is in progress". Start afresh with a new connection.
            conn.terminate()
        raise
    finally:
        try:
            await pool.release(conn)
        except Exception as exc:
            # asyncpg has already terminated a connection it could not reset (one cancelled
            # mid-query, say); the pool opens a fresh one when next needed.
            log.warning("database.release_failed", error=f"{type(exc).__name__}: {exc}")


def is_transient(exc: BaseException) -> bool:
    """True when the database, not the request, is at fault: the caller should retry later.
    A client-side error of our own making (an argument of the wrong type or count, which
    asyncpg raises as InterfaceError too) is not: as a 503 it would be retried forever, with
    no traceback to say why."""
    if isinstance(exc, asyncpg.InterfaceError):
        # asyncpg gives no subclass for a connection or pool that is gone; its message does.
        return "closed" in str(exc) or "closing" in str(exc)
    return isinstance(
        exc,
        DatabaseUnavailable
        | OSError
        | TimeoutError
        | asyncio.TimeoutError
        | asyncpg.PostgresConnectionError
        # Class 57: shutdown, crash recovery, "the database system is starting up".
        | asyncpg.exceptions.OperatorInterventionError
        # Class 53: too many connections, out of disk or memory.
        | asyncpg.exceptions.InsufficientResourcesError
        # Class 40: deadlock or serialization failure; running again succeeds.
        | asyncpg.exceptions.TransactionRollbackError,
    )


def log_loop_failure(component: str, exc: Exception) -> None:
    """How a background loop (forwarder, poller) reports a failed round before it goes on."""
    if is_transient(exc):
        log.warning(f"{component}.database_unavailable", error=str(exc))
    else:
        log.exception(f"{component}.loop_failed")
