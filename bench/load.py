"""The Python side of the load: the report bodies, and the forwarding run.

    python -m bench.load forward --url URL --rate 1000 --duration 10 [--subscribers 1]
                                 [--slow-subscriber]

The ingest workloads are driven by wrk (bench/wrk/, bench.wrk_load), which costs far less CPU
than a Python client. The forwarding run stays here: it sends at a steady rate, one Infobip
report per request, and times each report from its 2xx to its arrival at the subscribers (aiohttp
servers in this process). Prints one JSON object with what it measured.
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import aiohttp
from aiohttp import web

from receiver.startup import use_uvloop

PASSWORD = "bench-password"
INFOBIP_AUTH = "Basic " + base64.b64encode(b"bench:bench-password").decode()
TOKEN = "bench-token"
# How long the slow subscriber takes to answer (the receiver's forward timeout is shorter).
SLOW_ANSWER_S = 30.0


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


def infobip_report(bulk: str, message_id: str) -> dict[str, Any]:
    """One Infobip delivery report, as in a `{"results": [...]}` webhook body."""
    return {
        "bulkId": bulk,
        "messageId": message_id,
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


def infobip_batch(size: int = 100) -> tuple[bytes, dict[str, str], str]:
    """`size` reports in one body, each for a new message; returns the bulkId too."""
    bulk = str(uuid.uuid4())
    results = [infobip_report(bulk, f"{bulk}-{i}") for i in range(size)]
    body = json.dumps({"results": results}).encode()
    headers = {"Content-Type": "application/json", "Authorization": INFOBIP_AUTH}
    return body, headers, bulk


def percentile(samples: list[float], p: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def forward(
    url: str, rate: float, duration: float, subscribers: int, slow: bool
) -> dict[str, Any]:
    """Steady `rate` Infobip reports/s, one per request; lag = a subscriber received it minus
    its 2xx arrived. `subscribers` fast subscribers (the lag is theirs), and with `slow` one more
    that answers after SLOW_ANSWER_S, so the lag shows whether it holds the others up."""
    acked: dict[str, float] = {}
    received: list[dict[str, float]] = [{} for _ in range(subscribers)]
    slow_started = 0

    async def hook(request: web.Request) -> web.Response:
        payload = await request.json()
        seen = received[int(request.match_info["n"])]
        seen.setdefault(payload["data"]["message_id"], time.perf_counter())
        return web.Response(status=204)

    async def slow_hook(request: web.Request) -> web.Response:
        nonlocal slow_started
        slow_started += 1
        await request.read()
        await asyncio.sleep(SLOW_ANSWER_S)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook/{n}", hook)
    app.router.add_post("/slow", slow_hook)
    # The slow subscriber's requests still waiting at the end are cut, not waited for.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    hooks = [f"http://127.0.0.1:{port}/hook/{n}" for n in range(subscribers)]
    if slow:
        hooks.append(f"http://127.0.0.1:{port}/slow")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    nonce = uuid.uuid4().hex[:12]
    headers = {"Content-Type": "application/json", "Authorization": INFOBIP_AUTH}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:
        for hook_url in hooks:
            async with session.post(
                url + "/v1/subscriptions",
                json={"url": hook_url, "statuses": ["delivered"]},
                headers=auth,
            ) as resp:
                assert resp.status == 201, await resp.text()

        async def send(n: int) -> None:
            bulk = f"{nonce}-fwd-b{n // 100}"  # bulks of 100, as in the ingest workloads
            message_id = f"{bulk}-{n % 100}"
            body = json.dumps({"results": [infobip_report(bulk, message_id)]})
            async with session.post(url + "/webhooks/infobip", data=body, headers=headers) as r:
                await r.read()
                if 200 <= r.status < 300:
                    acked[message_id] = time.perf_counter()

        # Set up: bench.run measures CPU from here (its process CPU so far is not load).
        print(json.dumps({"started": True, "cpu_s": time.process_time()}), flush=True)
        tasks = []
        began = time.perf_counter()
        sent = 0
        while (now := time.perf_counter()) < began + duration:
            due = int((now - began) * rate)
            while sent < due:
                tasks.append(asyncio.create_task(send(sent)))
                sent += 1
            await asyncio.sleep(0.001)
        await asyncio.gather(*tasks)
        sending = time.perf_counter() - began
        settle = time.perf_counter() + 30
        while any(len(seen) < len(acked) for seen in received) and time.perf_counter() < settle:
            await asyncio.sleep(0.05)
    await runner.cleanup()
    lags = [seen[k] - acked[k] for seen in received for k in acked if k in seen]
    return {
        "offered_rate": rate,
        "sent": sent,
        "acked": len(acked),
        # Acknowledged per second of sending (the last answers included).
        "achieved_rate": len(acked) / sending,
        "subscribers": subscribers,
        "slow_subscriber": slow,
        "slow_requests_started": slow_started,
        "forwarded": len(lags),
        "expected": len(acked) * subscribers,
        "lag_p50_ms": percentile(lags, 50) * 1000,
        "lag_p99_ms": percentile(lags, 99) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["forward"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--subscribers", type=int, default=1, help="fast subscribers")
    parser.add_argument(
        "--slow-subscriber",
        action="store_true",
        help=f"one more subscriber, answering after {SLOW_ANSWER_S:g} s",
    )
    args = parser.parse_args()
    use_uvloop()  # the sender and subscribers cost the machine less on it, as the server does
    result = asyncio.run(
        forward(args.url, args.rate, args.duration, args.subscribers, args.slow_subscriber)
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
