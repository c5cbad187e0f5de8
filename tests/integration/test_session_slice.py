"""The HTTP workers' Postgres backends ask for short scheduler slices (receiver/sched.py), and
nothing but our own connection's backend is ever touched."""

import os
from pathlib import Path

import asyncpg
import pytest

from receiver import sched
from receiver.db import client_end, open_pool, peer_pid

pytestmark = pytest.mark.skipif(
    sched.slice_ns(os.getpid()) is None, reason="no custom scheduler slices on this kernel"
)


def _allowed(pid: int) -> bool:
    """Whether this process may change `pid`'s scheduling (root, or its owner)."""
    return os.geteuid() == 0 or os.stat(f"/proc/{pid}").st_uid == os.geteuid()


async def test_a_latency_sensitive_pool_shortens_its_backends_slices(database_url: str) -> None:
    async with (
        open_pool(database_url, 2, slice_us=250) as sensitive,
        open_pool(database_url, 2) as plain,
        sensitive.acquire() as short,
        plain.acquire() as ordinary,
    ):
        short_pid, ordinary_pid = short.get_server_pid(), ordinary.get_server_pid()
        if not _allowed(short_pid):
            pytest.skip("Postgres runs as another user and this process may not renice it")
        assert sched.slice_ns(short_pid) == 250_000
        assert sched.slice_ns(ordinary_pid) != 250_000


def _children(pid: int, *, serving_clients: bool) -> list[int]:
    """`pid`'s child processes whose titles do or do not say they serve a `[local]` client."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or f"PPid:\t{pid}\n" not in (entry / "status").read_text():
                continue
            if (b"[local]" in (entry / "cmdline").read_bytes()) == serving_clients:
                found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile
    return found


async def test_only_our_own_backend_is_touched(database_url: str) -> None:
    """Over TCP the backend's title names our client port; over a Unix socket (the embedded
    server) it only says [local], and the backend must be a child of the process at our
    socket's other end. The test runs whichever way the test database is reached."""
    mine = await asyncpg.connect(database_url)
    other = await asyncpg.connect(database_url)
    try:
        pid, other_pid = mine.get_server_pid(), other.get_server_pid()
        if not _allowed(other_pid):
            pytest.skip("Postgres runs as another user and this process may not renice it")
        before = sched.slice_ns(other_pid)
        transport = mine._transport  # type: ignore[attr-defined]
        local, port = client_end(
            transport.get_extra_info("peername"), transport.get_extra_info("sockname")
        )
        assert local
        if port is not None:
            ours = {"client_port": port}
            # Another connection's backend, named with this connection's port: refused.
            assert not sched.shorten_backend_slice(other_pid, 300_000, client_port=port)
            assert sched.slice_ns(other_pid) == before
        else:
            server = peer_pid(transport.get_extra_info("socket"))
            assert server is not None
            assert server != pid
            ours = {"server": server}
            # Both sessions' backends are that server's children, and say [local].
            assert {pid, other_pid} <= set(_children(server, serving_clients=True))
            # A backend is only taken for one of the server at the other end of the socket.
            assert not sched.shorten_backend_slice(other_pid, 300_000, server=os.getppid())
            assert sched.slice_ns(other_pid) == before
            # The server's own helpers (checkpointer, walwriter) serve no client: refused.
            # Told apart here by their titles, not by the function under test.
            helpers = _children(server, serving_clients=False)
            assert helpers, "a Postgres server has helper processes"
            for helper in helpers:
                assert not sched.shorten_backend_slice(helper, 300_000, server=server)
        # Nor a process that is not Postgres at all (this one), nor a pid that is nobody's.
        assert not sched.is_backend_of(os.getpid(), **ours)
        assert not sched.is_backend_of(2**22 + 12345, **ours)
        # Neither way of naming the connection, or both at once: refused.
        assert not sched.is_backend_of(pid)
        assert not sched.is_backend_of(pid, client_port=1, server=1)
        # Its own backend, named the way its connection is: changed.
        assert sched.shorten_backend_slice(pid, 300_000, **ours)
        assert sched.slice_ns(pid) == 300_000
    finally:
        await mine.close()
        await other.close()


def test_a_server_elsewhere_is_left_alone() -> None:
    """A server on another host: its pids mean nothing here. Loopback addresses only."""
    assert client_end(("10.1.2.3", 5432), ("10.1.2.4", 40000)) == (False, 40000)
    assert client_end(("127.0.0.1", 5432), ("127.0.0.1", 40000)) == (True, 40000)
    assert client_end(("::1", 5432, 0, 0), ("::1", 40001, 0, 0)) == (True, 40001)
    assert client_end("/run/postgresql/.s.PGSQL.5432", "") == (True, None)


async def test_sessions_are_named_unless_the_url_names_them(database_url: str) -> None:
    """pg_stat_activity tells the HTTP workers' sessions from the projector's."""
    named = f"{database_url}{'&' if '?' in database_url else '?'}application_name=ops-choice"
    async with open_pool(database_url, 2) as ours, open_pool(named, 2) as theirs:
        assert await ours.fetchval("show application_name") == "dlr-receiver"
        assert await theirs.fetchval("show application_name") == "ops-choice"
