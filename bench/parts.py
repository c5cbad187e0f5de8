"""The receiver taken apart, to see where a single report's cost goes (README, "Where the
cost goes"). Three measurements on a fresh database each, Infobip single reports by wrk:

noop:    bench.baselines' noop under the same wrk, just before: the ceiling, for the ratio.
ack:     `serve` with its projector off (RECEIVER_PROJECT_ENABLED=false) under wrk -t1 -c64:
         acknowledged reports/s and CPU µs per request of the HTTP process, Postgres and wrk,
         and how many requests each group commit carried.
catchup: what `ack` journaled, then `python -m receiver project` alone draining it: projected
         reports/s and CPU µs per report of the projector process (less what it spends
         starting, measured before the load on the empty journal) and of Postgres.
together: `serve` as deployed (HTTP worker beside the background process that projects)
         under the same wrk, after a 2 s warm-up: for the HTTP process, the background
         process and each one's Postgres backends (told apart by application_name), the cores
         they ran on and the cores' worth of time they were runnable but waiting for a CPU
         (/proc/<pid>/schedstat), and the cores nobody used.

    RECEIVER_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test .venv/bin/python -m bench.parts

Needs a Postgres on this machine (its processes' CPU is read from /proc) and wrk
(bench/setup.sh).
"""

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg

from bench import run, wrk_load
from bench.wrk_load import WORKLOADS

# A drain that has not finished by then never will (a report that could not be stored).
DRAIN_LIMIT = 600.0


async def _fetch(database_url: str, query: str) -> Any:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


# serve's URL, its process, and the environment a projector of the same database runs with.
Serving = tuple[str, "subprocess.Popen[bytes]", dict[str, str]]


@contextlib.contextmanager
def acknowledging(database: str) -> Iterator[Serving]:
    """`serve` on `database` with its projector off, ready: its URL, its process, and the
    environment a projector of the same database runs with."""
    port = run.free_port()
    env = run.receiver_env(database, port, forward=False, workers=1)
    serve = subprocess.Popen(
        [sys.executable, "-m", "receiver", "serve"],
        env=dict(env, RECEIVER_PROJECT_ENABLED="false"),
        cwd=run.ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        run.wait_ready(url, "/healthz")
        yield url, serve, env
    finally:
        serve.terminate()
        serve.wait(timeout=30)


@contextlib.contextmanager
def projecting(env: dict[str, str]) -> Iterator["subprocess.Popen[bytes]"]:
    """`python -m receiver project` with `env`, stopped on the way out."""
    project = subprocess.Popen(
        [sys.executable, "-m", "receiver", "project"],
        env=env,
        cwd=run.ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield project
    finally:
        project.terminate()
        project.wait(timeout=30)


def until_projected(databases: list[str], total: int) -> None:
    """Until the databases hold `total` events together, looking every 50 ms on one connection
    each (a new connection per look would start a Postgres backend each time, beside the
    projectors being measured); SystemExit after DRAIN_LIMIT seconds."""

    async def watch() -> None:
        conns = [await asyncpg.connect(database) for database in databases]
        try:
            deadline = time.monotonic() + DRAIN_LIMIT
            while True:
                events = sum([await c.fetchval("select count(*) from events") for c in conns])
                if events >= total:
                    return
                if time.monotonic() > deadline:
                    raise SystemExit(f"not drained after {DRAIN_LIMIT:.0f} s: {events}/{total}")
                await asyncio.sleep(0.05)
        finally:
            for conn in conns:
                await conn.close()

    asyncio.run(watch())


def _infobip1(url: str, duration: int) -> tuple[list[str], dict[str, str]]:
    """wrk's command for Infobip single reports at 64 connections, and its environment."""
    return wrk_load.command(
        WORKLOADS["infobip1"],
        url,
        duration=duration,
        connections=64,
        threads=1,
        messente_file=None,
        nonce=wrk_load.new_nonce(),
    )


def noop(duration: int) -> dict[str, Any]:
    """The framework's ceiling in the same minute (bench.baselines noop), for the ratio."""
    with run.server("noop", "") as (url, pid):
        cmd, wrk_env = _infobip1(url, duration)
        pids = run._server_pids(pid)
        before = run._cpu_seconds(pids)
        ran = subprocess.run(cmd, env=wrk_env, capture_output=True, text=True, check=True)
        after = run._cpu_seconds(pids)
    stats = wrk_load.parse(ran.stdout)
    acked = stats["acked_reports"]
    return {
        "reports_per_s": round(acked / stats["duration_s"]),
        "cpu_us_http": round(run._used(before, after) / acked * 1e6, 1),
    }


def _projector_startup_cpu(env: dict[str, str]) -> float:
    """CPU seconds `python -m receiver project` spends starting (imports, pool) and idling for
    a moment, with nothing to project: taken off what catching up costs. Its imports alone
    were a sixth of a catch-up's samples under py-spy."""
    with projecting(env) as project:
        time.sleep(3)
        if project.poll() is not None:
            raise SystemExit(f"python -m receiver project exited ({project.returncode})")
        return run._cpu_seconds([str(project.pid)])[str(project.pid)]


def measure(server_url: str, postmaster: int, duration: int) -> dict[str, Any]:
    with run.scratch_database(server_url) as database:
        pg = run.PgScope(postmaster, database.rsplit("/", 1)[1])
        with acknowledging(database) as (url, serve, env):
            startup = _projector_startup_cpu(env)
            cmd, wrk_env = _infobip1(url, duration)
            before = run.cpu_now(serve.pid, pg)
            ran = subprocess.run(cmd, env=wrk_env, capture_output=True, text=True, check=True)
            after = run.cpu_now(serve.pid, pg)
        stats = wrk_load.parse(ran.stdout)
        acked = stats["acked_reports"]
        commits = asyncio.run(_fetch(database, "select count(distinct xid) from journal"))
        ack = {
            "reports_per_s": round(acked / stats["duration_s"]),
            "p99_ms": stats["p99_ms"],
            "cpu_us_http": round(run._used(before.server, after.server) / acked * 1e6, 1),
            "cpu_us_postgres": round(run._used(before.postgres, after.postgres) / acked * 1e6, 1),
            "cpu_us_wrk": round((after.children - before.children) / acked * 1e6, 1),
            "requests_per_commit": round(acked / commits, 1),
        }

        journaled = asyncio.run(_fetch(database, "select count(*) from journal"))
        started = time.monotonic()
        before = run.cpu_now(os.getpid(), pg)
        with projecting(env) as project:
            until_projected([database], journaled)
            took = time.monotonic() - started
            projector_cpu = run._cpu_seconds([str(project.pid)])[str(project.pid)]
            after = run.cpu_now(os.getpid(), pg)
        catchup = {
            "reports": journaled,
            "reports_per_s": round(journaled / took),
            # Less its start (imports, pool), measured on its own before the load.
            "cpu_us_projector": round((projector_cpu - startup) / journaled * 1e6, 1),
            "projector_startup_cpu_s": round(startup, 2),
            "cpu_us_postgres": round(
                run._used(before.postgres, after.postgres) / journaled * 1e6, 1
            ),
        }
    return {"ack": ack, "catchup": catchup}


def _schedstat(pid: str) -> tuple[float, float]:
    """Seconds on a CPU and seconds runnable but waiting for one (the run queue), so far."""
    try:
        on_cpu, waiting, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0, 0.0
    return int(on_cpu) / 1e9, int(waiting) / 1e9


async def _backends(database: str) -> dict[str, list[str]]:
    """This database's Postgres backends by application_name ('dlr-receiver serve', ...)."""
    conn = await asyncpg.connect(database)
    try:
        rows = await conn.fetch(
            "select pid, application_name from pg_stat_activity"
            " where datname = current_database() and pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    found: dict[str, list[str]] = {}
    for row in rows:
        found.setdefault(row["application_name"] or "?", []).append(str(row["pid"]))
    return found


def together(server_url: str, duration: int) -> dict[str, Any]:
    """`serve` as deployed (HTTP worker, background process with the projector) under the same
    wrk: for the HTTP process, the background process and each one's Postgres backends, the
    cores they ran on and the cores' worth of time they spent runnable but waiting for a CPU;
    and the cores nobody used. A warm-up of 2 s first, so the pools have their connections."""
    with run.scratch_database(server_url) as database:
        port = run.free_port()
        env = run.receiver_env(database, port, forward=False, workers=1)
        serve = subprocess.Popen(
            [sys.executable, "-m", "receiver", "serve"],
            env=env,
            cwd=run.ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            run.wait_ready(url, "/healthz")
            cmd, wrk_env = _infobip1(url, 2)
            subprocess.run(cmd, env=wrk_env, capture_output=True, check=True)
            children = run._server_pids(serve.pid)[1:]
            roles = {
                pid: "http" if "serve" in Path(f"/proc/{pid}/cmdline").read_text() else "background"
                for pid in children
            }
            groups = {pid: role for pid, role in roles.items()}
            for name, pids in asyncio.run(_backends(database)).items():
                role = "pg_http" if name.endswith(" serve") else "pg_background"
                groups.update({pid: role for pid in pids})
            cmd, wrk_env = _infobip1(url, duration)
            before = {pid: _schedstat(pid) for pid in groups}
            busy_before, started = run._machine_busy_seconds(), time.monotonic()
            ran = subprocess.run(cmd, env=wrk_env, capture_output=True, text=True, check=True)
            wall = time.monotonic() - started
            idle = 2 * wall - (run._machine_busy_seconds() - busy_before)
            after = {pid: _schedstat(pid) for pid in groups}
        finally:
            serve.terminate()
            serve.wait(timeout=30)
    stats = wrk_load.parse(ran.stdout)
    found: dict[str, Any] = {
        "reports_per_s": round(stats["acked_reports"] / stats["duration_s"]),
        "p99_ms": stats["p99_ms"],
        "idle_cores": round(idle / wall, 2),
    }
    for role in ("http", "pg_http", "background", "pg_background"):
        pids = [pid for pid, r in groups.items() if r == role]
        on_cpu = sum(after[p][0] - before[p][0] for p in pids)
        waiting = sum(after[p][1] - before[p][1] for p in pids)
        found[role] = {"cores": round(on_cpu / wall, 2), "waiting": round(waiting / wall, 2)}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk")
    parser.add_argument("--runs", type=int, default=3)
    run.add_set_option(parser)
    args = parser.parse_args()
    run.apply_set_option(parser, args.set)
    wrk_load.wrk_binary()
    with run.postgres() as server_url:
        postmaster = asyncio.run(run._postmaster(server_url))
        for number in range(1, args.runs + 1):
            ceiling = noop(args.duration)
            parts = measure(server_url, postmaster, args.duration)
            both = together(server_url, args.duration)
            ratio = parts["ack"]["reports_per_s"] / ceiling["reports_per_s"]
            print(
                json.dumps(
                    {
                        "run": number,
                        "noop": ceiling,
                        **parts,
                        "ack_of_noop": round(ratio, 2),
                        "together": both,
                    }
                )
            )


if __name__ == "__main__":
    main()
