"""A short scheduler slice for the HTTP worker's own Postgres sessions, when Postgres runs on
this host (the embedded server, or one beside the service).

Why. With the projector busy, both cores run something when a group commit is handed to its
Postgres backend, and the backend, woken for a fraction of a millisecond of work, waited in
the run queue for the running task's slice to end (Linux's default is 0.7-3 ms): measured
with `python -m bench.parts`, the journal's backends spent three to four times as long
waiting for a CPU as running, every acknowledgement waited with them, and the HTTP process
idled a quarter of the time. Linux 6.12 and later (EEVDF) let a task ask for a shorter slice
(sched_setattr's sched_runtime, 0.1-100 ms); a task with a short slice that wakes up runs
at once. Its share of the CPU is unchanged: only when it runs.

Changing another process's scheduling needs the same user (the embedded Postgres) or
CAP_SYS_NICE; without either, or on an older kernel, or where the server is on another host,
nothing is changed. A pid is only touched once it is known to be this connection's backend:
over TCP, a postgres process whose title names this connection's own client port; over a Unix
socket, where titles only say `[local]`, a postgres process forked by the process at the
other end of this connection's socket (its SO_PEERCRED pid: the postmaster that accepted it).
The pid itself is the one the server announced on this connection (BackendKeyData); the checks
are there for what may sit between (a pooler announces pids of its own, which are nobody's
backends here).
"""

import ctypes
import os
import platform
import struct
from pathlib import Path

# sched_setattr and sched_getattr, by machine (Linux's syscall tables).
_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}
# struct sched_attr as of Linux 4.13 (SCHED_ATTR_SIZE_VER1): size, policy, flags, nice,
# priority, runtime, deadline, period, util_min, util_max.
_ATTR = struct.Struct("IIQiIQQQII")
_SCHED_OTHER = 0


def _libc() -> ctypes.CDLL | None:
    if not Path("/proc/self").exists() or platform.machine() not in _SYSCALLS:
        return None
    return ctypes.CDLL(None, use_errno=True)


_LIBC = _libc()


def slice_ns(pid: int) -> int | None:
    """The slice `pid` runs with, in ns (EEVDF reports it as sched_runtime); None if unknown."""
    if _LIBC is None:
        return None
    buffer = ctypes.create_string_buffer(_ATTR.size)
    if _LIBC.syscall(_SYSCALLS[platform.machine()][1], pid, buffer, _ATTR.size, 0) != 0:
        return None
    runtime: int = _ATTR.unpack(buffer.raw)[5]
    return runtime or None  # 0: a kernel without custom slices


def set_slice(pid: int, nanoseconds: int) -> bool:
    """Ask for `nanoseconds` slices for `pid`, keeping its policy (ordinary tasks only) and
    niceness; False where that is not possible or not allowed."""
    if _LIBC is None or slice_ns(pid) is None:
        return False
    setattr_call, getattr_call = _SYSCALLS[platform.machine()]
    buffer = ctypes.create_string_buffer(_ATTR.size)
    if _LIBC.syscall(getattr_call, pid, buffer, _ATTR.size, 0) != 0:
        return False
    _, policy, _, nice, _, _, _, _, _, _ = _ATTR.unpack(buffer.raw)
    if policy != _SCHED_OTHER:
        return False  # someone chose this process's policy: theirs to keep
    wanted = ctypes.create_string_buffer(
        _ATTR.pack(_ATTR.size, policy, 0, nice, 0, nanoseconds, 0, 0, 0, 0), _ATTR.size
    )
    result: int = _LIBC.syscall(setattr_call, pid, wanted, 0)
    return result == 0


def _backend_title(pid: int) -> str | None:
    """The process title of `pid` if it is a Postgres process, else None."""
    try:
        if Path(f"/proc/{pid}/comm").read_text().strip() != "postgres":
            return None
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, UnicodeDecodeError):
        return None
    return title if title.startswith("postgres:") else None


def _parent(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    return None


def is_backend_of(pid: int, *, client_port: int | None = None, server: int | None = None) -> bool:
    """Whether `pid` is, on this host, the Postgres backend serving our connection: over TCP
    from `client_port` (its title reads `postgres: 15/main: user db 127.0.0.1(52438) idle`),
    over a Unix socket one forked by `server`, the pid at the socket's other end (its title
    reads `... [local] idle`). Exactly one of the two is given."""
    title = _backend_title(pid)
    if title is None or (client_port is None) == (server is None):
        return False
    if client_port is not None:
        return f"({client_port})" in title
    return "[local]" in title and _parent(pid) == server


def shorten_backend_slice(
    pid: int, nanoseconds: int, *, client_port: int | None = None, server: int | None = None
) -> bool:
    """`set_slice` for our connection's backend, checked to be it first (`is_backend_of`)."""
    return (
        os.getpid() != pid
        and is_backend_of(pid, client_port=client_port, server=server)
        and set_slice(pid, nanoseconds)
    )
