"""The benchmark: one command, everything on this machine.

    .venv/bin/python -m bench.run [--duration 10] [--connections 64] [--rate 1000]

Starts Postgres (RECEIVER_DATABASE_URL, else an embedded one), then for each workload (Messente
single reports; Infobip batches of 100) runs the same load against a no-op aiohttp handler, a
naive one-INSERT-per-report receiver and dlr-receiver itself; then measures forwarding lag at a
steady rate. Prints a Markdown table (the one in the README comes from here).
"""

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from receiver.embedded import embedded_postgres

ROOT = Path(__file__).resolve().parent.parent


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


@contextlib.contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """A new database for one run, dropped after it with a checkpoint, so that no run pays
    for the one before it (autovacuum of its tables, a checkpoint of its WAL)."""
    name = f"bench_{uuid.uuid4().hex[:10]}"

    async def admin(*statements: str) -> None:
        conn = await asyncpg.connect(server_url)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(admin(f'create database "{name}"'))
    try:
        yield urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    finally:
        asyncio.run(admin(f'drop database "{name}" with (force)', "checkpoint"))


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


@contextlib.contextmanager
def server(
    kind: str, database_url: str, *, forward: bool = False, workers: int = 1
) -> Iterator[tuple[str, int]]:
    port = free_port()
    if kind == "receiver":
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
        env.update(
            RECEIVER_DATABASE_URL=database_url,
            RECEIVER_PORT=str(port),
            RECEIVER_API_TOKENS="bench-token",
            RECEIVER_MESSENTE_API_PASSWORD="bench-password",
            RECEIVER_INFOBIP_WEBHOOK_USERNAME="bench",
            RECEIVER_INFOBIP_WEBHOOK_PASSWORD="bench-password",
            RECEIVER_POLL_ENABLED="false",
            RECEIVER_FORWARD_ENABLED="true" if forward else "false",
            RECEIVER_FORWARD_ALLOW_NETWORKS="127.0.0.0/8",
            RECEIVER_WORKERS=str(workers),
        )
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


def _cpu_seconds(pids: list[str]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile
        total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def _server_pids(pid: int) -> list[str]:
    return [str(pid), *Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _postgres_pids() -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "postgres":
                    found.append(entry.name)
    return found


def load(server_pid: int, *args: str) -> dict[str, Any]:
    """Runs the load generator against a server; adds where the machine's CPU went meanwhile:
    seconds of CPU per second of wall time for the server, Postgres and the load generator."""
    before = time.monotonic()
    server0 = _cpu_seconds(_server_pids(server_pid))
    postgres0 = _cpu_seconds(_postgres_pids())
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [sys.executable, "-m", "bench.load", *args],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.monotonic() - before
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["cores_server"] = (_cpu_seconds(_server_pids(server_pid)) - server0) / wall
    result["cores_postgres"] = (_cpu_seconds(_postgres_pids()) - postgres0) / wall
    loadgen = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
    result["cores_load"] = loadgen / wall
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--only", choices=["ingest", "forward"], help="run just one part")
    parser.add_argument("--workers", type=int, default=1, help="RECEIVER_WORKERS for the receiver")
    args = parser.parse_args()

    rows: list[tuple[str, str, dict[str, Any]]] = []
    fwd: dict[str, Any] = {}
    with postgres() as server_url:
        for workload in ("messente", "infobip") if args.only != "forward" else ():
            for kind in ("noop", "naive", "receiver"):
                with (
                    scratch_database(server_url) as database,
                    server(kind, database, workers=args.workers) as (url, pid),
                ):
                    stats = load(
                        pid,
                        "ingest",
                        "--url",
                        url,
                        "--kind",
                        workload,
                        "--connections",
                        str(args.connections),
                        "--duration",
                        str(args.duration),
                    )
                    stats["peak_rss_mib"] = peak_rss_mib(pid)
                rows.append((workload, kind, stats))
                print(f"{workload:9} {kind:9} {json.dumps(stats)}", file=sys.stderr)
        if args.only != "ingest":
            with (
                scratch_database(server_url) as database,
                server("receiver", database, forward=True, workers=args.workers) as (url, pid),
            ):
                fwd = load(
                    pid,
                    "forward",
                    "--url",
                    url,
                    "--rate",
                    str(args.rate),
                    "--duration",
                    str(args.duration),
                )
                fwd["peak_rss_mib"] = peak_rss_mib(pid)
            print(f"forward {json.dumps(fwd)}", file=sys.stderr)

    print(
        f"\n{args.connections} connections, {args.duration:g} s per run, "
        f"{os.cpu_count()} CPUs, Postgres on the same machine.\n"
    )
    if rows:
        print_ingest(rows)
    if fwd:
        print(
            f"\nforwarding at {args.rate:g}/s offered ({fwd['achieved_rate']:,.0f}/s "
            f"acknowledged): {fwd['forwarded']}/{fwd['acked']} forwarded, lag p50 "
            f"{fwd['lag_p50_ms']:.0f} ms, p99 {fwd['lag_p99_ms']:.0f} ms, receiver peak RSS "
            f"{fwd['peak_rss_mib']:.0f} MiB; cores server / pg / load {fwd['cores_server']:.2f}"
            f" / {fwd['cores_postgres']:.2f} / {fwd['cores_load']:.2f}"
        )


def print_ingest(rows: list[tuple[str, str, dict[str, Any]]]) -> None:
    # Cores: CPU seconds per second used by the server, Postgres and the load generator while
    # the load ran (2 is all of this machine); CPU µs per report is the same per report.
    print(
        "| workload | server | reports/s | p50 ms | p99 ms | errors | peak RSS MiB "
        "| cores server / pg / load | CPU µs per report server / pg |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|---|")
    for workload, kind, s in rows:
        rate = s["reports_per_s"] or float("nan")
        print(
            f"| {workload} | {kind} | {s['reports_per_s']:,.0f} | {s['p50_ms']:.1f} | "
            f"{s['p99_ms']:.1f} | {s['errors']} | {s['peak_rss_mib']:.0f} | "
            f"{s['cores_server']:.2f} / {s['cores_postgres']:.2f} / {s['cores_load']:.2f} | "
            f"{s['cores_server'] / rate * 1e6:.0f} / {s['cores_postgres'] / rate * 1e6:.0f} |"
        )
    by = {(w, k): s for w, k, s in rows}
    for workload in ("messente", "infobip"):
        mine = by[(workload, "receiver")]["reports_per_s"]
        ceiling = by[(workload, "noop")]["reports_per_s"]
        naive = by[(workload, "naive")]["reports_per_s"]
        print(
            f"\n{workload}: receiver = {mine / ceiling:.0%} of the no-op ceiling, "
            f"{mine / naive:.1f}x naive"
        )


if __name__ == "__main__":
    main()
