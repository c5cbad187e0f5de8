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
import contextlib
import subprocess
import time

from bench import parts, run, wrk_load


def _journal(database: str, duration: int) -> dict[str, str]:
    """Infobip single reports journaled for `duration` s; the projector's environment."""
    with parts.acknowledging(database) as (url, _, env):
        cmd, wrk_env = parts._infobip1(url, duration)
        subprocess.run(cmd, env=wrk_env, capture_output=True, check=True)
    return env


def _drain(lanes: list[tuple[dict[str, str], str]]) -> tuple[int, float]:
    """Reports drained and seconds, one projector per (environment, database), all at once."""
    databases = [database for _, database in lanes]
    total = sum(asyncio.run(parts._fetch(d, "select count(*) from journal")) for d in databases)
    started = time.monotonic()
    with contextlib.ExitStack() as projectors:
        for env, _ in lanes:
            projectors.enter_context(parts.projecting(env))
        parts.until_projected(databases, total)
        return total, time.monotonic() - started


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
