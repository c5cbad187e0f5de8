"""One very large Infobip batch, and a single report right behind it (issue 10).

    .venv/bin/python -m bench.big_batch [--reports 75000] [--max-batch 5000]

Starts `python -m receiver serve` on a fresh database (RECEIVER_DATABASE_URL, else an embedded
Postgres), posts one `{"results": [...]}` batch of --reports minimal reports (75,000 is about
3.5 MB, inside the 4 MiB body limit), then a single report. Prints one JSON object: how long
each took to be acknowledged, how long until the single report was visible by lookup and until
the whole batch was projected, and how many events each projection transaction wrote (events
of one transaction share their xmin).
"""

import argparse
import asyncio
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import asyncpg

from bench.load import INFOBIP_AUTH, TOKEN
from bench.run import postgres, scratch_database, server


def batch_body(reports: int) -> bytes:
    # As small as a report may be, so that 75,000 fit the default body limit.
    results = [{"messageId": f"big-{i}", "status": {"groupId": 3, "id": 5}} for i in range(reports)]
    return json.dumps({"results": results}, separators=(",", ":")).encode()


def post(url: str, body: bytes) -> tuple[int, float]:
    request = urllib.request.Request(  # noqa: S310 - a local URL
        url + "/webhooks/infobip",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": INFOBIP_AUTH},
    )
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=60) as resp:  # noqa: S310
        resp.read()
        return resp.status, time.monotonic() - started


def visible(url: str, key: str) -> bool:
    request = urllib.request.Request(  # noqa: S310
        f"{url}/v1/messages/infobip/{key}", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5):  # noqa: S310
            return True
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise


def backlog(url: str) -> int:
    with urllib.request.urlopen(url + "/readyz", timeout=5) as resp:  # noqa: S310
        rows: int = json.loads(resp.read())["projection"]["backlog_rows"]
        return rows


async def transactions(database_url: str) -> list[int]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "select count(*) as n from events group by xmin::text order by min(id)"
        )
        return [r["n"] for r in rows]
    finally:
        await conn.close()


def run(reports: int, max_batch: int) -> dict[str, Any]:
    body = batch_body(reports)
    single = json.dumps(
        {"results": [{"messageId": "single-1", "status": {"groupId": 3, "id": 5}}]}
    ).encode()
    with postgres() as server_url, scratch_database(server_url) as database_url:
        os.environ["RECEIVER_PROJECT_MAX_BATCH"] = str(max_batch)
        with server("receiver", database_url) as (url, _pid):
            started = time.monotonic()
            status, batch_ack = post(url, body)
            assert status == 200, status
            status, single_ack = post(url, single)
            assert status == 200, status
            single_sent = time.monotonic()
            single_visible = None
            while True:
                now = time.monotonic()
                if single_visible is None and visible(url, "single-1"):
                    single_visible = now - single_sent
                if backlog(url) == 0 and visible(url, f"big-{reports - 1}"):
                    break
                if now - started > 600:
                    raise RuntimeError("not projected within 10 minutes")
                time.sleep(0.05)
            all_projected = time.monotonic() - started
        per_transaction = asyncio.run(transactions(database_url))
    return {
        "reports": reports,
        "body_bytes": len(body),
        "project_max_batch": max_batch,
        "batch_ack_s": round(batch_ack, 3),
        "single_ack_s": round(single_ack, 3),
        "single_visible_after_s": round(single_visible or 0.0, 3),
        "all_projected_after_s": round(all_projected, 2),
        "projection_transactions": len(per_transaction),
        "max_events_per_transaction": max(per_transaction),
        "events": sum(per_transaction),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reports", type=int, default=75_000)
    parser.add_argument("--max-batch", type=int, default=5000)
    args = parser.parse_args()
    print(json.dumps(run(args.reports, args.max_batch)), file=sys.stdout)


if __name__ == "__main__":
    main()
