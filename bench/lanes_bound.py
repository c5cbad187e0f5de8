"""An upper bound of projection in two lanes: two databases on one Postgres server, each with
its own journal of Infobip single reports (journaled by `serve` with its projector off, under
wrk), drained at the same time by one `python -m receiver project` each; then one database
with a journal twice as long drained by one projector, for comparison. Both include the
projectors' start.

    RECEIVER_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \
        .venv/bin/python -m bench.lanes_bound

README, "Where the cost goes": what a second core could add to a drain after a burst.
"""

import argparse
import asyncio
import subprocess
import sys
import time

import asyncpg

from bench import parts, run, wrk_load

# A drain that has not finished by then never will (a report that could not be stored).
_DRAIN_LIMIT = 600.0


async def _count(database: str, table: str) -> int:
    conn = await asyncpg.connect(database)
    try:
        found: int = await conn.fetchval(f"select count(*) from {table}")  # noqa: S608 - ours
        return found
    finally:
        await conn.close()


async def _until_projected(databases: list[str], total: int) -> None:
    """Until the databases hold `total` events, looking every 0.1 s on one connection each
    (a new connection per look would start a Postgres backend each time, beside the
    projectors being measured)."""
    conns = [await asyncpg.connect(database) for database in databases]
    try:
        deadline = time.monotonic() + _DRAIN_LIMIT
        while True:
            events = [await c.fetchval("select count(*) from events") for c in conns]
            if sum(events) >= total:
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"not drained after {_DRAIN_LIMIT:.0f} s: {sum(events)}/{total}")
            await asyncio.sleep(0.1)
    finally:
        for conn in conns:
            await conn.close()


def _journal(database: str, duration: int) -> dict[str, str]:
    """Infobip single reports journaled for `duration` s; the projector's environment."""
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
        cmd, wrk_env = parts._infobip1(url, duration)
        subprocess.run(cmd, env=wrk_env, capture_output=True, check=True)
    finally:
        serve.terminate()
        serve.wait(timeout=30)
    return env


def _drain(lanes: list[tuple[dict[str, str], str]]) -> tuple[int, float]:
    """Reports drained and seconds, one projector per (environment, database), all at once."""
    total = sum(asyncio.run(_count(database, "journal")) for _, database in lanes)
    started = time.monotonic()
    projectors = [
        subprocess.Popen(
            [sys.executable, "-m", "receiver", "project"],
            env=env,
            cwd=run.ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for env, _ in lanes
    ]
    try:
        asyncio.run(_until_projected([database for _, database in lanes], total))
        return total, time.monotonic() - started
    finally:
        for projector in projectors:
            projector.terminate()
            projector.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds of wrk per journal")
    args = parser.parse_args()
    wrk_load.wrk_binary()
    with run.postgres() as server_url:
        with run.scratch_database(server_url) as a, run.scratch_database(server_url) as b:
            lanes = [(_journal(a, args.duration), a), (_journal(b, args.duration), b)]
            reports, took = _drain(lanes)
        print(f"two projectors, two journals: {reports} reports in {took:.2f} s", end="")
        print(f" = {reports / took:,.0f}/s")
        with run.scratch_database(server_url) as a:
            # As many reports as the two journals together: twice as long under wrk.
            reports, took = _drain([(_journal(a, 2 * args.duration), a)])
        print(f"one projector, one journal: {reports} reports in {took:.2f} s", end="")
        print(f" = {reports / took:,.0f}/s")


if __name__ == "__main__":
    main()
