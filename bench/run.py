"""The benchmark: one command, everything on this machine.

    .venv/bin/python -m bench.run [--duration 10] [--connections 64] [--rate 1000]
        [--workloads messente,infobip1,infobip100] [--workers 1] [--only ingest|forward]
        [--subscribers 1] [--slow-subscriber]

Starts Postgres (RECEIVER_DATABASE_URL, else an embedded one). Then, for each ingest workload
(Messente single reports; Infobip single reports; Infobip batches of 100), drives wrk against a
no-op aiohttp handler, a naive one-INSERT-per-report receiver and dlr-receiver itself, each on a
fresh database; for the receiver it also waits until the last acknowledged report is projected
(end to end). Then it measures forwarding lag at a steady rate. Prints Markdown tables (the
README's come from here). wrk must be installed: bench/setup.sh.
"""

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from bench import wrk_load
from bench.load import INFOBIP_AUTH, TOKEN, infobip_report, messente_report
from bench.wrk_load import WORKLOADS, Workload
from receiver.embedded import embedded_postgres

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ("noop", "naive", "receiver")
# Polling /readyz and the lookup while the receiver drains: the resolution of end to end.
POLL_S = 0.01
# Cores busy outside the server, Postgres and the load generator above which a run is suspect.
OTHER_CORES_WARNING = 0.25

warnings: list[str] = []


def warn(message: str) -> None:
    warnings.append(message)
    print(f"WARNING: {message}", file=sys.stderr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    given = os.environ.get("RECEIVER_DATABASE_URL")
    if given:
        yield given
        return
    with tempfile.TemporaryDirectory() as tmp, embedded_postgres(Path(tmp)) as url:
        yield url


async def _admin(server_url: str, *statements: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _server_version(server_url: str) -> str:
    conn = await asyncpg.connect(server_url)
    try:
        version: str = await conn.fetchval("show server_version")
        return version.split()[0]
    finally:
        await conn.close()


@contextlib.contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """A new database for one run, dropped after it with a checkpoint, so that no run pays
    for the one before it (autovacuum of its tables, a checkpoint of its WAL)."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(server_url, f'create database "{name}"'))
    try:
        yield urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    finally:
        asyncio.run(_admin(server_url, f'drop database "{name}" with (force)', "checkpoint"))


def wait_ready(url: str, path: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + path, timeout=1):  # noqa: S310 - local URL
                return
        except OSError as exc:
            if getattr(exc, "code", None):  # an HTTP error status: the server is up
                return
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


def receiver_env(database_url: str, port: int, *, forward: bool, workers: int) -> dict[str, str]:
    """The receiver's environment in a benchmark: this one's, without any RECEIVER_ setting of
    the shell, and the bench's credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
    env.update(
        RECEIVER_DATABASE_URL=database_url,
        RECEIVER_PORT=str(port),
        RECEIVER_API_TOKENS=TOKEN,
        RECEIVER_MESSENTE_API_PASSWORD="bench-password",
        RECEIVER_INFOBIP_WEBHOOK_USERNAME="bench",
        RECEIVER_INFOBIP_WEBHOOK_PASSWORD="bench-password",
        RECEIVER_POLL_ENABLED="false",
        RECEIVER_FORWARD_ENABLED="true" if forward else "false",
        RECEIVER_FORWARD_ALLOW_NETWORKS="127.0.0.0/8",
        RECEIVER_WORKERS=str(workers),
    )
    env.update(RECEIVER_SETTINGS)
    return env


# --set RECEIVER_X=value: the receiver's settings for an experiment, over the bench's own.
RECEIVER_SETTINGS: dict[str, str] = {}


def add_set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="RECEIVER_NAME=VALUE",
        help="a receiver setting for this run (repeatable), over the benchmark's own",
    )


def apply_set_option(parser: argparse.ArgumentParser, given: list[str]) -> None:
    for pair in given:
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith("RECEIVER_"):
            parser.error(f"--set takes RECEIVER_NAME=VALUE, not {pair!r}")
        RECEIVER_SETTINGS[key] = value


@contextlib.contextmanager
def server(
    kind: str, database_url: str, *, forward: bool = False, workers: int = 1
) -> Iterator[tuple[str, int]]:
    port = free_port()
    if kind == "receiver":
        env = receiver_env(database_url, port, forward=forward, workers=workers)
        cmd = [sys.executable, "-m", "receiver", "serve"]
        probe = "/healthz"
    else:
        env = dict(os.environ)
        cmd = [
            sys.executable,
            "-m",
            "bench.baselines",
            kind,
            "--port",
            str(port),
            "--database-url",
            database_url,
            "--workers",
            str(workers),
        ]
        probe = "/"
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", probe)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory of the server: the process and its workers, added up."""
    total = 0.0
    for each in _server_pids(pid):
        with open(f"/proc/{each}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
    return total


def _cpu_seconds(pids: list[str]) -> dict[str, float]:
    """CPU seconds used so far by each of `pids` that is still there."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile
        found[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    return found


def _used(before: dict[str, float], after: dict[str, float]) -> float:
    """CPU used between two readings by the processes alive at the second. One that exited in
    between is left out: subtracting what it had used would make the difference negative."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def _server_pids(pid: int) -> list[str]:
    return [str(pid), *Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@dataclass(frozen=True)
class PgScope:
    """Which Postgres processes a run is charged for: the postmaster serving the run's
    database and its background processes, and the backends and autovacuum workers of that one
    database, not those of other databases (someone else's tests may share the server), nor
    any other Postgres on the machine."""

    postmaster: int
    database: str


# A process title naming a database: a client backend ("user db host(port) state") or an
# autovacuum worker ("autovacuum worker db").
_PER_DATABASE = re.compile(r"\(\d+\)|\[local\]|autovacuum worker")


def _postgres_pids(pg: PgScope) -> list[str]:
    found = [str(pg.postmaster)]
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{pg.postmaster}/task/{pg.postmaster}/children").read_text()
        for pid in children.split():
            with contextlib.suppress(OSError):
                title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                if not _PER_DATABASE.search(title) or f" {pg.database} " in f"{title} ":
                    found.append(pid)
    return found


def _parent(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise RuntimeError(f"no parent for {pid}")


async def _postmaster(server_url: str) -> int:
    """The pid of the postmaster behind `server_url`: the parent of this connection's backend
    (which must be on this machine, for its CPU to be measured)."""
    conn = await asyncpg.connect(server_url)
    try:
        backend: int = await conn.fetchval("select pg_backend_pid()")
        return _parent(backend)
    finally:
        await conn.close()


def _machine_busy_seconds() -> float:
    """CPU seconds all of this machine's CPUs have been busy (user, nice, system, irq,
    softirq), whoever for: the server, Postgres, the load, or anything else running."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Cpu:
    """CPU seconds used so far by each server process, by each Postgres process, and by this
    process's finished children (the load generator), and by the whole machine, at monotonic
    time `at`."""

    at: float
    server: dict[str, float]
    postgres: dict[str, float]
    children: float
    machine: float


def cpu_now(server_pid: int, pg: PgScope) -> Cpu:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return Cpu(
        at=time.monotonic(),
        server=_cpu_seconds(_server_pids(server_pid)),
        postgres=_cpu_seconds(_postgres_pids(pg)),
        children=children.ru_utime + children.ru_stime,
        machine=_machine_busy_seconds(),
    )


def cores(before: Cpu, after: Cpu) -> dict[str, float]:
    """Seconds of CPU per second of wall time (2.00 is all of a 2-core machine)."""
    wall = after.at - before.at
    return {
        "cores_server": _used(before.server, after.server) / wall,
        "cores_postgres": _used(before.postgres, after.postgres) / wall,
        "cores_load": (after.children - before.children) / wall,
    }


def load(
    server_pid: int,
    pg: PgScope,
    cmd: list[str],
    env: dict[str, str],
    timeout: float,
    starts: int = 1,
) -> dict[str, Any]:
    """Runs a load generator (wrk, or bench.load's forwarding run) against a server, as a child
    of this process, so its CPU shows in RUSAGE_CHILDREN once it has exited. Returns its
    stdout, and where the machine's CPU went meanwhile: seconds of CPU per second for the
    server, Postgres and the load generator. The window opens when the load generator says it
    is about to send (`starts` lines {"started": true, "cpu_s": ...}, one per wrk thread): what
    it did before (wrk reading pre-signed requests, Python importing) counts for no one."""
    with tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        assert proc.stdout is not None
        before_start, seen, setup_cpu = [], 0, 0.0
        while seen < starts and (line := proc.stdout.readline()):
            if line.startswith('{"started"'):
                seen += 1
                setup_cpu = json.loads(line)["cpu_s"]  # the process's CPU so far
            else:
                before_start.append(line)
        before = cpu_now(server_pid, pg)
        try:
            rest, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        after = cpu_now(server_pid, pg)
        stderr.seek(0)
        if proc.returncode != 0 or seen < starts:
            raise RuntimeError(
                f"{cmd[0]} exited with {proc.returncode}:\n{stderr.read()}"
                f"{''.join(before_start)}{rest}"
            )
    used = cores(before, after)
    wall = after.at - before.at
    used["cores_load"] = (after.children - before.children - setup_cpu) / wall
    # The rest of the machine's busy time: other programs (a shared machine spoils the run),
    # and kernel work no process is charged for (some of the loopback traffic's).
    used["cores_other"] = (after.machine - before.machine) / wall - sum(used.values())
    return {"stdout": "".join(before_start) + rest, "before": before, "after": after, **used}


def _http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - local URL
            status: int = resp.status
            return status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def projection_status(url: str) -> dict[str, Any] | None:
    """`projection` of GET /readyz ({"backlog_rows", "lag_seconds"}), whatever its status, or
    None if the receiver does not report one (before the journal-first receiver)."""
    try:
        _, body = _http("GET", url + "/readyz")
    except OSError:
        return None
    with contextlib.suppress(ValueError, AttributeError):
        projection = json.loads(body).get("projection")
        if isinstance(projection, dict):
            return projection
    return None


def send_last_report(url: str, workload: Workload, nonce: str) -> tuple[str, str]:
    """One more report after wrk's, for a message of its own: once it can be looked up (and the
    backlog is empty), every report acknowledged before it has been projected too, since the
    projector follows the journal in order. Returns (provider, message id)."""
    if workload.provider == "messente":
        body, headers, message_id = messente_report()
    else:
        message_id = f"{nonce}-last"
        body = json.dumps({"results": [infobip_report(message_id, message_id)]}).encode()
        headers = {"Content-Type": "application/json", "Authorization": INFOBIP_AUTH}
    status, answer = _http("POST", f"{url}/webhooks/{workload.provider}", body, headers)
    if not 200 <= status < 300:
        raise RuntimeError(f"the last report was answered {status}: {answer!r}")
    return workload.provider, message_id


def drain(url: str, workload: Workload, nonce: str, timeout: float) -> dict[str, Any]:
    """After wrk has stopped: how long until the last acknowledged report is projected."""
    began = time.monotonic()
    at_stop = projection_status(url)
    provider, message_id = send_last_report(url, workload, nonce)
    lookup = f"{url}/v1/messages/{provider}/{quote(message_id, safe='')}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    result: dict[str, Any] = {
        "readyz_projection": at_stop is not None,
        "backlog_at_stop": at_stop.get("backlog_rows") if at_stop else None,
        "lag_s_at_stop": at_stop.get("lag_seconds") if at_stop else None,
        "drain_s": None,
    }
    while time.monotonic() < began + timeout:
        projection = projection_status(url)
        if (projection is None or projection.get("backlog_rows") == 0) and _http(
            "GET", lookup, headers=auth
        )[0] == 200:
            result["drain_s"] = time.monotonic() - began
            return result
        time.sleep(POLL_S)
    warn(f"{workload.name}: the last report was not projected within {timeout:g} s")
    return result


def wait_backlog_empty(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        projection = projection_status(url)
        if projection is None or projection.get("backlog_rows") == 0:
            return
        time.sleep(0.1)
    warn(f"the projection backlog was not empty within {timeout:g} s")


async def database_facts(database_url: str, kind: str) -> dict[str, Any]:
    """What the server stored, read from its scratch database after the run: rows stored, and
    for the receiver the projection's throughput and lag, from events.projected_at (absent
    before the journal-first receiver: then None)."""
    facts: dict[str, Any] = {
        "stored": None,
        "journal_rows": None,
        "projected": None,
        "projected_per_s": None,
        "projection_lag_p50_ms": None,
        "projection_lag_p99_ms": None,
    }
    if kind == "noop":
        return facts
    conn = await asyncpg.connect(database_url)
    try:
        if kind == "naive":
            facts["stored"] = await conn.fetchval("select count(*) from naive_reports")
            return facts
        facts["stored"] = await conn.fetchval("select count(*) from events")
        if await conn.fetchval("select to_regclass('journal') is not null"):
            facts["journal_rows"] = await conn.fetchval("select count(*) from journal")
        has_projected_at = await conn.fetchval(
            "select exists (select from information_schema.columns where table_schema = "
            "current_schema() and table_name = 'events' and column_name = 'projected_at')"
        )
        if not has_projected_at:
            return facts
        row = await conn.fetchrow(
            """
            select count(*) as projected,
                   extract(epoch from max(projected_at) - min(projected_at)) as span_s,
                   percentile_cont(array[0.5, 0.99]) within group (
                       order by extract(epoch from projected_at - received_at)) as lag_s
            from events where projected_at is not null
            """
        )
        assert row is not None
        facts["projected"] = row["projected"]
        span = float(row["span_s"] or 0)
        if span > 0:
            facts["projected_per_s"] = row["projected"] / span
        if row["lag_s"] is not None:
            facts["projection_lag_p50_ms"] = row["lag_s"][0] * 1000
            facts["projection_lag_p99_ms"] = row["lag_s"][1] * 1000
        return facts
    finally:
        await conn.close()


def ingest_run(
    workload: Workload,
    kind: str,
    server_url: str,
    postmaster: int,
    args: argparse.Namespace,
    messente_file: Path | None,
) -> dict[str, Any]:
    nonce = wrk_load.new_nonce()
    with (
        scratch_database(server_url) as database,
        server(kind, database, workers=args.workers) as (url, pid),
    ):
        pg = PgScope(postmaster, urlsplit(database).path.lstrip("/"))
        cmd, env = wrk_load.command(
            workload,
            url,
            duration=args.duration,
            connections=args.connections,
            threads=args.wrk_threads,
            messente_file=messente_file,
            nonce=nonce,
        )
        ran = load(pid, pg, cmd, env, timeout=args.duration + 300, starts=args.wrk_threads)
        stats = wrk_load.parse(ran["stdout"])
        stats.update({k: v for k, v in ran.items() if k.startswith("cores_")})
        begin, end = ran["before"], ran["after"]
        if kind == "receiver":
            stats.update(drain(url, workload, nonce, timeout=max(120.0, 20.0 * args.duration)))
            if stats["drain_s"] is not None:
                stats["end_to_end_s"] = stats["duration_s"] + stats["drain_s"]
                stats["end_to_end_reports_per_s"] = stats["acked_reports"] / stats["end_to_end_s"]
            end = cpu_now(pid, pg)  # the projection behind the load is part of each report's cost
        elif kind == "naive":
            # Acknowledged after its INSERTs: what it acknowledged is already stored.
            stats["end_to_end_reports_per_s"] = stats["reports_per_s"]
        reports = stats["acked_reports"] or math.nan
        stats["cpu_us_server"] = _used(begin.server, end.server) / reports * 1e6
        stats["cpu_us_postgres"] = _used(begin.postgres, end.postgres) / reports * 1e6
        stats["peak_rss_mib"] = peak_rss_mib(pid)
        stats.update(asyncio.run(database_facts(database, kind)))
    check_ingest(workload, kind, stats)
    return stats


def check_quiet(label: str, stats: dict[str, Any]) -> None:
    if stats["cores_other"] > OTHER_CORES_WARNING:
        warn(
            f"{label}: the rest of the machine was busy ({stats['cores_other']:.2f} cores) "
            f"during the run: other programs compete for the CPU, so its numbers are low"
        )


def check_ingest(workload: Workload, kind: str, stats: dict[str, Any]) -> None:
    label = f"{workload.name}/{kind}"
    check_quiet(label, stats)
    if stats["wraps"]:
        warn(f"{label}: wrk sent the pre-signed Messente requests again (duplicates)")
    if stats["non_2xx"] or stats["socket_errors"]:
        warn(f"{label}: {stats['non_2xx']} non-2xx answers, {stats['socket_errors']} socket errors")
    # Everything acknowledged is stored (the receiver's last report included).
    expected = stats["acked_reports"] + (1 if kind == "receiver" else 0)
    if stats["stored"] is not None and not stats["wraps"] and stats["stored"] < expected:
        warn(f"{label}: {stats['stored']} stored, but {expected} reports were acknowledged")


def forward_run(server_url: str, postmaster: int, args: argparse.Namespace) -> dict[str, Any]:
    with (
        scratch_database(server_url) as database,
        server("receiver", database, forward=True, workers=args.workers) as (url, pid),
    ):
        pg = PgScope(postmaster, urlsplit(database).path.lstrip("/"))
        cmd = [sys.executable, "-m", "bench.load", "forward", "--url", url]
        cmd += ["--rate", str(args.rate), "--duration", str(args.duration)]
        cmd += ["--subscribers", str(args.subscribers)]
        if args.slow_subscriber:
            cmd.append("--slow-subscriber")
        ran = load(pid, pg, cmd, dict(os.environ), timeout=args.duration + 300)
        fwd: dict[str, Any] = json.loads(ran["stdout"].strip().splitlines()[-1])
        fwd.update({k: v for k, v in ran.items() if k.startswith("cores_")})
        wait_backlog_empty(url, timeout=120)
        fwd["peak_rss_mib"] = peak_rss_mib(pid)
        fwd.update(asyncio.run(database_facts(database, "receiver")))
    check_quiet("forward", fwd)
    if fwd["forwarded"] < fwd["expected"]:
        warn(f"forward: {fwd['forwarded']} of {fwd['expected']} forwarded to the fast subscribers")
    return fwd


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per run")
    parser.add_argument("--connections", type=int, default=64, help="wrk's -c")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk's -t")
    parser.add_argument("--rate", type=float, default=1000.0, help="forwarding: reports/s")
    parser.add_argument("--only", choices=["ingest", "forward"], help="run just one part")
    parser.add_argument(
        "--workers", type=int, default=1, help="processes per server (RECEIVER_WORKERS)"
    )
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma list of ingest workloads, of {', '.join(WORKLOADS)}",
    )
    parser.add_argument(
        "--servers", default=",".join(SERVERS), help=f"comma list, of {', '.join(SERVERS)}"
    )
    parser.add_argument("--subscribers", type=int, default=1, help="forwarding: fast subscribers")
    parser.add_argument(
        "--forward-runs",
        type=int,
        default=3,
        help="forwarding: runs, each on a fresh database (one run's lag varies several-fold)",
    )
    parser.add_argument(
        "--slow-subscriber",
        action="store_true",
        help="forwarding: one more subscriber, answering after 30 s",
    )
    add_set_option(parser)
    args = parser.parse_args()
    apply_set_option(parser, args.set)
    workloads = [WORKLOADS[w] for w in _comma_list(parser, args.workloads, WORKLOADS)]
    kinds = _comma_list(parser, args.servers, SERVERS)
    if args.connections < args.wrk_threads:
        parser.error("--connections must be at least --wrk-threads")
    if args.only != "forward" and workloads:
        wrk_load.wrk_binary()  # exits, saying how to install it, if wrk is missing

    rows: list[tuple[Workload, str, dict[str, Any]]] = []
    forwards: list[dict[str, Any]] = []
    with postgres() as server_url, tempfile.TemporaryDirectory() as tmp:
        version = asyncio.run(_server_version(server_url))
        postmaster = asyncio.run(_postmaster(server_url))
        messente_file = None
        if args.only != "forward" and any(w.provider == "messente" for w in workloads):
            messente_file = Path(tmp) / "messente.requests"
            count = wrk_load.messente_requests_needed(args.duration, args.wrk_threads)
            print(f"signing {count:,} Messente requests for wrk ...", file=sys.stderr)
            wrk_load.write_messente_requests(messente_file, count)
        for workload in workloads if args.only != "forward" else ():
            for kind in kinds:
                stats = ingest_run(workload, kind, server_url, postmaster, args, messente_file)
                rows.append((workload, kind, stats))
                print(f"{workload.name:10} {kind:9} {json.dumps(stats)}", file=sys.stderr)
        for _ in range(args.forward_runs if args.only != "ingest" else 0):
            fwd = forward_run(server_url, postmaster, args)
            forwards.append(fwd)
            print(f"forward {json.dumps(fwd)}", file=sys.stderr)

    print(
        f"\n{os.cpu_count()} CPUs; Postgres {version} on the same machine; "
        f"{args.workers} process(es) per server; {args.duration} s per run, each on a fresh "
        f"database.\n"
    )
    if rows:
        print(
            f"Ingest, wrk -t{args.wrk_threads} -c{args.connections}. Reports/s counts only "
            f"reports acknowledged with a 2xx. Cores: CPU seconds per second while wrk ran, in "
            f"the server, Postgres, wrk and the rest of the machine (other programs, and "
            f"kernel work charged to no process). CPU per report: the server's and Postgres's from "
            f"wrk's start until the last report is stored (for the receiver, projected).\n"
        )
        print_ingest(rows)
        print_end_to_end(rows)
    if forwards:
        print_forward(forwards, args)
    for message in warnings:
        print(f"\nWARNING: {message}")


def _comma_list(parser: argparse.ArgumentParser, given: str, known: Any) -> list[str]:
    names = [name.strip() for name in given.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        parser.error(f"unknown: {', '.join(unknown)} (known: {', '.join(known)})")
    return names


def _num(value: float | None, spec: str = ",.0f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)


def _cores(s: dict[str, Any]) -> str:
    return " / ".join(
        f"{s[k]:.2f}" for k in ("cores_server", "cores_postgres", "cores_load", "cores_other")
    )


def print_ingest(rows: list[tuple[Workload, str, dict[str, Any]]]) -> None:
    # Cores: CPU seconds per second used by the server, Postgres and wrk while the load ran
    # (2 is all of this machine). CPU µs per report: the server's and Postgres's CPU from the
    # start of the load until the last report is stored (for the receiver: projected).
    print(
        "| workload | server | reports/s | p50 ms | p99 ms | non-2xx / socket errors "
        "| peak RSS MiB | cores server / pg / load / other | CPU µs per report server / pg |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|---|")
    for workload, kind, s in rows:
        print(
            f"| {workload.name} | {kind} | {_num(s['reports_per_s'])} | {s['p50_ms']:.1f} | "
            f"{s['p99_ms']:.1f} | {s['non_2xx']} / {s['socket_errors']} | "
            f"{s['peak_rss_mib']:.0f} | "
            f"{_cores(s)} | {_num(s['cpu_us_server'])} / {_num(s['cpu_us_postgres'])} |"
        )
    by = {(w.name, k): s for w, k, s in rows}
    for workload in dict.fromkeys(w for w, _, _ in rows):
        if not workload.single:
            continue
        mine = by.get((workload.name, "receiver"))
        ceiling = by.get((workload.name, "noop"))
        naive = by.get((workload.name, "naive"))
        if mine is None or ceiling is None or naive is None:
            continue
        print(
            f"\n{workload.name}: receiver = "
            f"{mine['reports_per_s'] / ceiling['reports_per_s']:.0%} of the no-op ceiling, "
            f"{mine['reports_per_s'] / naive['reports_per_s']:.2f}x naive"
        )


def print_end_to_end(rows: list[tuple[Workload, str, dict[str, Any]]]) -> None:
    by = {(w.name, k): s for w, k, s in rows}
    workloads = [w for w, k, _ in rows if k == "receiver"]
    if not workloads:
        return
    print(
        "\nEnd to end: from wrk's start until the last acknowledged report can be looked up "
        "(and /readyz reports no projection backlog). The naive receiver stores before it "
        "answers, so its end to end is its throughput. Projection: from events.projected_at "
        "in the receiver's database.\n"
    )
    print(
        "| workload | receiver reports/s | backlog at stop, rows | drained in s "
        "| end to end reports/s: receiver | naive | receiver / naive "
        "| projected reports/s | projection lag p50 / p99 ms |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for workload in workloads:
        s = by[(workload.name, "receiver")]
        naive = by.get((workload.name, "naive"), {}).get("end_to_end_reports_per_s")
        mine = s.get("end_to_end_reports_per_s")
        ratio = mine / naive if mine is not None and naive else None
        print(
            f"| {workload.name} | {_num(s['reports_per_s'])} | {_num(s['backlog_at_stop'])} | "
            f"{_num(s['drain_s'], '.2f')} | {_num(mine)} | {_num(naive)} | "
            f"{_num(ratio, '.2f')}{'' if ratio is None else 'x'} | {_num(s['projected_per_s'])} | "
            f"{_num(s['projection_lag_p50_ms'], '.1f')} / "
            f"{_num(s['projection_lag_p99_ms'], '.1f')} |"
        )


def print_forward(runs: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\nForwarding: Infobip single reports (HTTP Basic) sent at a steady rate by a Python "
        f"client for {args.duration} s, one subscription per subscriber; acknowledged "
        f"reports/s is per second from the first send to the last answer; forwarding lag = a "
        f"fast subscriber received the status change minus the report's 2xx arrived; "
        f"projection lag from the database. {len(runs)} run(s), each on a fresh database: on "
        f"a saturated 2-core machine one run's lag can be several times another's.\n"
    )
    print(
        "| run | offered reports/s | acknowledged reports/s | acknowledged / sent "
        "| subscribers | forwarded "
        "| forwarding lag p50 / p99 ms | projection lag p50 / p99 ms | peak RSS MiB "
        "| cores server / pg / load / other |"
    )
    print("|---:|---:|---:|---:|---|---:|---|---|---:|---|")
    for number, fwd in enumerate(runs, 1):
        subscribers = str(fwd["subscribers"])
        if fwd["slow_subscriber"]:
            subscribers += " + 1 slow"
        print(
            f"| {number} | {fwd['offered_rate']:,.0f} | {fwd['achieved_rate']:,.0f} | "
            f"{fwd['acked']:,} / {fwd['sent']:,} | {subscribers} | "
            f"{fwd['forwarded']:,} / {fwd['expected']:,} | "
            f"{_num(fwd['lag_p50_ms'], '.0f')} / {_num(fwd['lag_p99_ms'], '.0f')} | "
            f"{_num(fwd['projection_lag_p50_ms'], '.1f')} / "
            f"{_num(fwd['projection_lag_p99_ms'], '.1f')} | {fwd['peak_rss_mib']:.0f} | "
            f"{_cores(fwd)} |"
        )
    if len(runs) > 1:
        p99s = [fwd["lag_p99_ms"] for fwd in runs if fwd["lag_p99_ms"] is not None]
        if p99s:
            print(
                f"\nForwarding lag p99 over the runs: median {statistics.median(p99s):,.0f} ms, "
                f"lowest {min(p99s):,.0f}, highest {max(p99s):,.0f}."
            )
    for number, fwd in enumerate(runs, 1):
        if fwd["slow_subscriber"]:
            print(
                f"\nRun {number}: the slow subscriber (answers after 30 s) was sent "
                f"{fwd['slow_requests_started']:,} requests during the run."
            )


if __name__ == "__main__":
    main()
