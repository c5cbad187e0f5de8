"""The load generator, run as its own process so it has a core of its own.

    python -m bench.load ingest --url URL --kind messente|infobip --connections 64 --duration 10
    python -m bench.load forward --url URL --rate 1000 --duration 10

Prints one JSON object with what it measured.
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import statistics
import time
import uuid
from typing import Any

import aiohttp
from aiohttp import web

PASSWORD = "bench-password"
INFOBIP_AUTH = "Basic " + base64.b64encode(b"bench:bench-password").decode()
TOKEN = "bench-token"


def messente_report() -> tuple[bytes, dict[str, str], str]:
    omni = str(uuid.uuid4())
    body = json.dumps(
        {
            "omnimessage_id": omni,
            "message_id": str(uuid.uuid4()),
            "channel": "sms",
            "status": "DELIVRD",
            "to": "+3725555555",
            "sender": "Bench",
            "err": 0,
            "error": None,
            "timestamp": "2024-05-02T10:15:03.004511",
        }
    ).encode()
    signature = hmac.new(PASSWORD.encode(), body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "X-Messente-Signature": signature}
    return body, headers, omni


def infobip_batch(size: int = 100) -> tuple[bytes, dict[str, str], str]:
    bulk = str(uuid.uuid4())
    results = [
        {
            "bulkId": bulk,
            "messageId": f"{bulk}-{i}",
            "to": "385981178000",
            "sentAt": "2024-03-01T09:00:01.104+0000",
            "doneAt": "2024-03-01T09:00:07.880+0000",
            "smsCount": 1,
            "mccMnc": "21901",
            "price": {"pricePerMessage": 0.01, "currency": "EUR"},
            "status": {
                "groupId": 3,
                "groupName": "DELIVERED",
                "id": 5,
                "name": "DELIVERED_TO_HANDSET",
                "description": "delivered",
            },
            "error": {
                "groupId": 0,
                "groupName": "OK",
                "id": 0,
                "name": "NO_ERROR",
                "description": "No Error",
                "permanent": False,
            },
        }
        for i in range(size)
    ]
    body = json.dumps({"results": results}).encode()
    headers = {"Content-Type": "application/json", "Authorization": INFOBIP_AUTH}
    return body, headers, bulk


def percentile(samples: list[float], p: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def ingest(url: str, kind: str, connections: int, duration: float) -> dict[str, Any]:
    make = messente_report if kind == "messente" else infobip_batch
    per_request = 1 if kind == "messente" else 100
    path = f"/webhooks/{kind}"
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm up: connections open, caches filled.
        for _ in range(20):
            body, headers, _ = make()
            async with session.post(url + path, data=body, headers=headers) as resp:
                await resp.read()
        deadline = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                body, headers, _ = make()
                started = time.perf_counter()
                async with session.post(url + path, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                        continue
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - began
    return {
        "requests": len(latencies),
        "errors": errors,
        "reports_per_s": len(latencies) * per_request / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else float("nan"),
    }


async def forward(url: str, rate: float, duration: float) -> dict[str, Any]:
    """Steady `rate` reports/s; lag = subscriber received - report acknowledged."""
    acked: dict[str, float] = {}
    received: dict[str, float] = {}

    async def hook(request: web.Request) -> web.Response:
        payload = await request.json()
        received.setdefault(payload["data"]["message_id"], time.perf_counter())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:
        async with session.post(
            url + "/v1/subscriptions",
            json={"url": f"http://127.0.0.1:{port}/hook", "statuses": ["delivered"]},
            headers=auth,
        ) as resp:
            assert resp.status == 201, await resp.text()

        async def send() -> None:
            body, headers, omni = messente_report()
            async with session.post(url + "/webhooks/messente", data=body, headers=headers) as r:
                await r.read()
                if r.status == 200:
                    acked[omni] = time.perf_counter()

        tasks = []
        began = time.perf_counter()
        sent = 0
        while (now := time.perf_counter()) < began + duration:
            due = int((now - began) * rate)
            while sent < due:
                tasks.append(asyncio.create_task(send()))
                sent += 1
            await asyncio.sleep(0.001)
        await asyncio.gather(*tasks)
        settle = time.perf_counter() + 30
        while len(received) < len(acked) and time.perf_counter() < settle:
            await asyncio.sleep(0.05)
    await runner.cleanup()
    lags = [received[k] - acked[k] for k in acked if k in received]
    return {
        "sent": sent,
        "acked": len(acked),
        "forwarded": len(lags),
        "achieved_rate": len(acked) / duration,
        "lag_p50_ms": percentile(lags, 50) * 1000,
        "lag_p99_ms": percentile(lags, 99) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["ingest", "forward"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--kind", default="messente", choices=["messente", "infobip"])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    args = parser.parse_args()
    if args.mode == "ingest":
        result = asyncio.run(ingest(args.url, args.kind, args.connections, args.duration))
    else:
        result = asyncio.run(forward(args.url, args.rate, args.duration))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
