"""The two baselines the receiver is measured against, as one small aiohttp app each.

noop:  parse the JSON and answer 200: the framework's ceiling on this machine.
naive: verify the request (Messente's HMAC, Infobip's HTTP Basic), then one INSERT with its own
       commit per report: a batch of 100 Infobip reports is 100 INSERTs and 100 commits.

Both serve the same routes as the receiver, for every workload bench.run drives (Messente single
reports, Infobip single reports and Infobip batches).
"""

import argparse
import base64
import hashlib
import hmac
import json
import signal
import subprocess
import sys

import asyncpg
from aiohttp import web

from receiver.startup import use_uvloop

PASSWORD = b"bench-password"
INFOBIP_AUTH = "Basic " + base64.b64encode(b"bench:" + PASSWORD).decode()


async def noop(request: web.Request) -> web.Response:
    json.loads(await request.read())
    return web.json_response({"ok": True})


def naive_app(url: str) -> web.Application:
    pool_key = web.AppKey("pool", asyncpg.Pool)

    async def pool_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app[pool_key] = await asyncpg.create_pool(url, min_size=4, max_size=10)
        async with app[pool_key].acquire() as conn:
            await conn.execute(
                "create table if not exists naive_reports (id bigserial primary key, "
                "body jsonb not null, received_at timestamptz not null default now())"
            )
        yield
        await app[pool_key].close()

    async def messente(request: web.Request) -> web.Response:
        body = await request.read()
        expected = hmac.new(PASSWORD, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, request.headers.get("X-Messente-Signature", "")):
            return web.json_response({"error": "signature"}, status=401)
        json.loads(body)
        await request.app[pool_key].execute(
            "insert into naive_reports (body) values ($1::jsonb)", body.decode()
        )
        return web.json_response({"ok": True})

    async def infobip(request: web.Request) -> web.Response:
        body = await request.read()
        if not hmac.compare_digest(INFOBIP_AUTH, request.headers.get("Authorization", "")):
            return web.json_response({"error": "credentials"}, status=401)
        async with request.app[pool_key].acquire() as conn:
            for item in json.loads(body)["results"]:
                await conn.execute(
                    "insert into naive_reports (body) values ($1::jsonb)", json.dumps(item)
                )
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.cleanup_ctx.append(pool_ctx)
    app.router.add_post("/webhooks/messente", messente)
    app.router.add_post("/webhooks/infobip", infobip)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["noop", "naive"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    parser.add_argument("--reuse-port", action="store_true")
    args = parser.parse_args()
    if args.workers > 1:
        # The same shape as RECEIVER_WORKERS, so a comparison with workers is a fair one.
        child = [sys.executable, "-m", "bench.baselines", args.kind, "--port", str(args.port)]
        child += ["--database-url", args.database_url, "--reuse-port"]
        workers = [subprocess.Popen(child) for _ in range(args.workers)]

        def stop(*_: object) -> None:
            for worker in workers:
                worker.terminate()

        signal.signal(signal.SIGTERM, stop)
        for worker in workers:
            worker.wait()
        return
    # The receiver's own event loop (receiver/startup.py), so the comparison is of what runs
    # on it, not of two loops.
    use_uvloop()
    if args.kind == "noop":
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/webhooks/messente", noop)
        app.router.add_post("/webhooks/infobip", noop)
    else:
        app = naive_app(args.database_url)
    web.run_app(
        app,
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        reuse_port=args.reuse_port,
    )


if __name__ == "__main__":
    main()
