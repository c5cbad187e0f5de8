"""Forwarding to real HTTP subscribers: signatures, retries, leases, two forwarders, filters,
410, dead letters, replay, SSRF refusals."""

import asyncio
import json
import signal
import subprocess
import sys
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from standardwebhooks import Webhook

from receiver.db import open_pool
from receiver.forwarding.forwarder import Forwarder, http_client
from receiver.http.app import create_app
from receiver.providers import messente
from receiver.settings import Settings
from tests.conftest import (
    AUTH,
    MESSENTE_PASSWORD,
    AiohttpClient,
    clean_env,
    eventually,
    make_client,
    make_settings,
    projected,
)

Client = TestClient[Any, Any]
LOOPBACK = ("127.0.0.0/8", "::1/128")


@dataclass
class Subscriber:
    """A real HTTP endpoint that records what it gets and answers from a plan."""

    received: list[tuple[dict[str, str], bytes, int]] = field(default_factory=list)
    plan: deque[int] = field(default_factory=deque)
    hang_first: bool = False
    extra_headers: dict[str, str] = field(default_factory=dict)
    seen: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""
    moved_url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.hang_first:
            self.hang_first = False
            self.seen.set()
            await asyncio.sleep(60)
        status = self.plan.popleft() if self.plan else 200
        self.received.append((dict(request.headers), body, status))
        self.seen.set()
        return web.Response(status=status, headers=self.extra_headers)

    def ok_ids(self) -> Counter[str]:
        return Counter(h["webhook-id"] for h, _, s in self.received if 200 <= s < 300)


async def moved(request: web.Request) -> web.Response:
    raise web.HTTPFound("/hook")


async def serve_subscriber(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Subscriber:
    """A subscriber on a real HTTP server: `url` takes deliveries, `moved_url` redirects."""
    sub = Subscriber()
    app = web.Application()
    app.router.add_post("/hook", sub.handle)
    app.router.add_post("/moved", moved)
    server = await aiohttp_server(app)
    sub.url = str(server.make_url("/hook"))
    sub.moved_url = str(server.make_url("/moved"))
    return sub


@pytest.fixture
async def subscriber(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Subscriber:
    return await serve_subscriber(aiohttp_server)


def forwarding_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "forward_allow_networks": LOOPBACK,
        "forward_retry_schedule": (0.2, 0.2, 0.2),
        "forward_poll_interval": 0.2,
        "forward_timeout": 2.0,
        "forward_lease": 2.0,
    }
    values.update(overrides)
    return make_settings(database_url, **values)


@pytest.fixture
async def fclient(database_url: str, aiohttp_client: AiohttpClient) -> Client:
    client: Client = await make_client(aiohttp_client, forwarding_settings(database_url))
    return client


async def subscribe(client: Client, url: str, **fields: Any) -> dict[str, Any]:
    resp = await client.post("/v1/subscriptions", json={"url": url, **fields}, headers=AUTH)
    assert resp.status == 201, await resp.text()
    result: dict[str, Any] = await resp.json()
    return result


async def report(client: Client, omni: str, status: str, ts: str = "2024-05-02T10:00:00") -> None:
    body = json.dumps(
        {
            "omnimessage_id": omni,
            "message_id": f"{omni}-sms",
            "channel": "sms",
            "status": status,
            "to": "+3725555555",
            "timestamp": ts,
        }
    ).encode()
    headers = {"X-Messente-Signature": messente.sign(MESSENTE_PASSWORD, body)}
    resp = await client.post("/webhooks/messente", data=body, headers=headers)
    assert resp.status == 200


async def test_status_change_arrives_signed_per_standard_webhooks(
    fclient: Client, subscriber: Subscriber
) -> None:
    sub = await subscribe(fclient, subscriber.url)
    assert sub["secret"].startswith("whsec_")
    await report(fclient, "omni-1", "ACK", "2024-05-02T10:00:00")
    # Two changes only if projected apart: on a loaded machine both rows could fall in one
    # batch, which is one change (straight to delivered), and the test waited for a second.
    await projected(fclient.app)
    await report(fclient, "omni-1", "DELIVRD", "2024-05-02T10:00:05")

    async def two() -> bool:
        return len(subscriber.received) >= 2

    await eventually(two)
    verifier = Webhook(sub["secret"])
    payloads = []
    for headers, body, _ in subscriber.received:
        verified = verifier.verify(body, {k.lower(): v for k, v in headers.items()})
        assert verified["id"] == headers["webhook-id"]
        payloads.append(verified["data"])
    payloads.sort(key=lambda p: p["seq"])
    sent, delivered = payloads
    assert (sent["status"], sent["previous_status"], sent["seq"]) == ("sent", None, 1)
    assert (delivered["status"], delivered["previous_status"], delivered["seq"]) == (
        "delivered",
        "sent",
        2,
    )
    assert delivered["provider"] == "messente"
    assert delivered["message_id"] == "omni-1"
    assert delivered["recipient"] == "+3725555555"
    assert delivered["channel"] == "sms"
    assert delivered["event"]["provider_status"] == "DELIVRD"
    assert delivered["event"]["channel_message_id"] == "omni-1-sms"


async def test_a_tampered_delivery_fails_verification(
    fclient: Client, subscriber: Subscriber
) -> None:
    from standardwebhooks.webhooks import WebhookVerificationError

    sub = await subscribe(fclient, subscriber.url)
    await report(fclient, "omni-t", "DELIVRD")

    async def one() -> bool:
        return len(subscriber.received) >= 1

    await eventually(one)
    headers, body, _ = subscriber.received[0]
    with pytest.raises(WebhookVerificationError):
        Webhook(sub["secret"]).verify(
            body.replace(b"delivered", b"failed"), {k.lower(): v for k, v in headers.items()}
        )


async def test_subscriber_down_then_up_gets_every_event_once(
    fclient: Client, subscriber: Subscriber, db: asyncpg.Connection
) -> None:
    subscriber.plan.extend([503, 500, 502, 500, 503, 500])  # down for the first six requests
    await subscribe(fclient, subscriber.url)
    for i in range(4):
        await report(fclient, f"omni-{i}", "DELIVRD")

    async def all_delivered() -> bool:
        count: int = await db.fetchval("select count(*) from deliveries where state='delivered'")
        return count == 4

    await eventually(all_delivered, within=20)
    ok = subscriber.ok_ids()
    assert len(ok) == 4
    assert set(ok.values()) == {1}
    # Failed tries were retried with the same webhook-id, not new ones.
    assert {h["webhook-id"] for h, _, _ in subscriber.received} == set(ok)


async def test_filters_choose_statuses_and_providers(
    fclient: Client, subscriber: Subscriber, db: asyncpg.Connection
) -> None:
    await subscribe(fclient, subscriber.url, statuses=["delivered"], providers=["messente"])
    await subscribe(fclient, subscriber.url, providers=["infobip"])
    await report(fclient, "omni-f", "ACK", "2024-05-02T10:00:00")
    await report(fclient, "omni-f", "DELIVRD", "2024-05-02T10:00:05")

    async def settled() -> bool:
        count: int = await db.fetchval("select count(*) from deliveries where state='delivered'")
        return count == 1

    await eventually(settled)
    assert await db.fetchval("select count(*) from deliveries") == 1
    (_headers, body, _) = subscriber.received[0]
    assert json.loads(body)["data"]["status"] == "delivered"


async def test_410_disables_the_subscription(
    fclient: Client, subscriber: Subscriber, db: asyncpg.Connection
) -> None:
    subscriber.plan.append(410)
    sub = await subscribe(fclient, subscriber.url)
    await report(fclient, "omni-g", "DELIVRD")

    async def disabled() -> bool:
        row = await db.fetchrow("select enabled from subscriptions")
        return row is not None and row["enabled"] is False

    await eventually(disabled)
    view = await (await fclient.get(f"/v1/subscriptions/{sub['id']}", headers=AUTH)).json()
    assert view["disabled_reason"] == "endpoint answered 410 Gone"
    assert await db.fetchval("select state from deliveries") == "dead"
    # Further changes are not queued for a disabled subscription.
    await report(fclient, "omni-h", "DELIVRD")
    assert await db.fetchval("select count(*) from deliveries") == 1


async def test_last_failed_attempt_dead_letters_and_replay_delivers(
    fclient: Client, subscriber: Subscriber, db: asyncpg.Connection
) -> None:
    subscriber.plan.extend([500] * 4)  # one try plus three retries, all failing
    sub = await subscribe(fclient, subscriber.url)
    await report(fclient, "omni-d", "DELIVRD")

    async def dead() -> bool:
        return bool(await db.fetchval("select state from deliveries") == "dead")

    await eventually(dead)
    listing = await (
        await fclient.get(f"/v1/subscriptions/{sub['id']}/deliveries?state=dead", headers=AUTH)
    ).json()
    (delivery,) = listing["deliveries"]
    assert delivery["attempts"] == 4
    assert delivery["last_status"] == 500
    detail = await (
        await fclient.get(
            f"/v1/subscriptions/{sub['id']}/deliveries/{delivery['id']}", headers=AUTH
        )
    ).json()
    assert [a["status_code"] for a in detail["attempts"]] == [500, 500, 500, 500]

    resp = await fclient.post(
        f"/v1/subscriptions/{sub['id']}/deliveries/{delivery['id']}/replay", headers=AUTH
    )
    assert resp.status == 202

    async def delivered() -> bool:
        return bool(await db.fetchval("select state from deliveries") == "delivered")

    await eventually(delivered)
    assert len(subscriber.ok_ids()) == 1


async def test_replay_of_a_time_range_sends_again_with_the_same_ids(
    fclient: Client, subscriber: Subscriber, db: asyncpg.Connection
) -> None:
    sub = await subscribe(fclient, subscriber.url)
    for i in range(3):
        await report(fclient, f"omni-r{i}", "DELIVRD")

    async def count_ok(n: int) -> bool:
        return sum(subscriber.ok_ids().values()) == n

    async def settled() -> bool:
        delivered = "select count(*) from deliveries where state = 'delivered'"
        return bool(await db.fetchval(delivered) == 3)

    await eventually(lambda: count_ok(3))
    # Received is not yet settled: a replay racing a delivery's settling would be undone by
    # it (the subscriber has it already), so the replay waits for all three to be recorded.
    await eventually(settled)
    resp = await fclient.post(
        f"/v1/subscriptions/{sub['id']}/replay",
        json={"since": "2000-01-01T00:00:00Z"},
        headers=AUTH,
    )
    assert (await resp.json())["replayed"] == 3
    await eventually(lambda: count_ok(6))
    assert set(subscriber.ok_ids().values()) == {2}


async def test_retry_after_is_honoured_on_429(
    fclient: Client, subscriber: Subscriber, db: asyncpg.Connection
) -> None:
    subscriber.plan.append(429)
    subscriber.extra_headers = {"Retry-After": "30"}
    await subscribe(fclient, subscriber.url)
    await report(fclient, "omni-429", "DELIVRD")

    async def failed_once() -> bool:
        return bool(await db.fetchval("select last_status from deliveries") == 429)

    await eventually(failed_once)
    wait = await db.fetchval("select extract(epoch from next_attempt_at - now()) from deliveries")
    # The schedule says 0.2 s; the subscriber asked for 30.
    assert 25 < float(wait) <= 30


async def test_redirects_are_not_followed(
    fclient: Client, subscriber: Subscriber, db: asyncpg.Connection
) -> None:
    await subscribe(fclient, subscriber.moved_url)
    await report(fclient, "omni-302", "DELIVRD")

    async def failed() -> bool:
        return bool(await db.fetchval("select last_status from deliveries") == 302)

    await eventually(failed)
    assert subscriber.received == []


async def test_rotated_secret_signs_beside_the_old_one(
    fclient: Client, subscriber: Subscriber
) -> None:
    sub = await subscribe(fclient, subscriber.url)
    resp = await fclient.post(
        f"/v1/subscriptions/{sub['id']}/rotate-secret", json={"grace_seconds": 3600}, headers=AUTH
    )
    rotated = await resp.json()
    assert rotated["secret"] != sub["secret"]
    await report(fclient, "omni-rot", "DELIVRD")

    async def one() -> bool:
        return len(subscriber.received) == 1

    await eventually(one)
    headers, body, _ = subscriber.received[0]
    lowered = {k.lower(): v for k, v in headers.items()}
    assert len(lowered["webhook-signature"].split(" ")) == 2
    Webhook(sub["secret"]).verify(body, lowered)
    Webhook(rotated["secret"]).verify(body, lowered)


async def rotate(client: Client, subscription_id: str, grace_seconds: float) -> Any:
    return await client.post(
        f"/v1/subscriptions/{subscription_id}/rotate-secret",
        json={"grace_seconds": grace_seconds},
        headers=AUTH,
    )


async def test_every_secret_in_its_grace_period_keeps_signing(
    fclient: Client, subscriber: Subscriber
) -> None:
    sub = await subscribe(fclient, subscriber.url)
    first = sub["secret"]
    # The first rotation's grace ends at once; the second's and third's last an hour, so the
    # secrets they replaced (the second and the third) sign, the first does not.
    second = (await (await rotate(fclient, sub["id"], 0)).json())["secret"]
    third = (await (await rotate(fclient, sub["id"], 3600)).json())["secret"]
    resp = await rotate(fclient, sub["id"], 3600)
    assert resp.status == 200
    current = (await resp.json())["secret"]
    await report(fclient, "omni-rot2", "DELIVRD")

    async def one() -> bool:
        return len(subscriber.received) == 1

    await eventually(one)
    headers, body, _ = subscriber.received[0]
    lowered = {k.lower(): v for k, v in headers.items()}
    assert len(lowered["webhook-signature"].split(" ")) == 3
    for secret in (current, third, second):
        Webhook(secret).verify(body, lowered)
    from standardwebhooks.webhooks import WebhookVerificationError

    with pytest.raises(WebhookVerificationError):
        Webhook(first).verify(body, lowered)
    # The view says until when each old secret signs (not the secrets themselves).
    view = await (await fclient.get(f"/v1/subscriptions/{sub['id']}", headers=AUTH)).json()
    assert len(view["previous_secrets_expire_at"]) == 2
    assert view["previous_secret_expires_at"] == max(view["previous_secrets_expire_at"])


async def test_rotating_while_ten_old_secrets_still_sign_is_refused(client: Client) -> None:
    sub = await subscribe(client, "https://hooks.example.com/dlr")
    for _ in range(10):
        assert (await rotate(client, sub["id"], 3600)).status == 200
    # An eleventh would make twelve signatures on every request; dropping one early instead
    # would break a receiver still on it. Refused, with when the way clears.
    resp = await rotate(client, sub["id"], 3600)
    assert resp.status == 409
    error = (await resp.json())["error"]
    assert error["code"] == "too_many_secrets"
    # A rotation with no grace adds no signing secret, but it still has to wait.
    assert (await rotate(client, sub["id"], 0)).status == 409
    assert (await rotate(client, "00000000-0000-0000-0000-000000000000", 0)).status == 404


async def test_two_forwarders_on_one_database_deliver_each_event_once(
    database_url: str, aiohttp_client: AiohttpClient, subscriber: Subscriber, db: asyncpg.Connection
) -> None:
    # The app only ingests here; two separate forwarders, each with its own pool, deliver.
    settings = forwarding_settings(database_url, forward_enabled=False)
    client = await make_client(aiohttp_client, settings)
    await subscribe(client, subscriber.url)
    for i in range(40):
        await report(client, f"omni-two-{i}", "DELIVRD")

    async def forwarder() -> None:
        async with open_pool(database_url, 4) as pool, http_client(settings) as session:
            fwd = Forwarder(pool, session, settings)
            task = asyncio.create_task(fwd.run())

            async def done() -> bool:
                return sum(subscriber.ok_ids().values()) >= 40

            await eventually(done, within=20)
            fwd.stop()
            await task

    await asyncio.gather(forwarder(), forwarder())
    ok = subscriber.ok_ids()
    assert len(ok) == 40
    assert set(ok.values()) == {1}


async def test_deliveries_that_finish_together_are_settled_together(
    database_url: str, aiohttp_client: AiohttpClient, db: asyncpg.Connection
) -> None:
    # A subscriber that answers nobody until 10 requests are waiting (fewer than the 16 the
    # forwarder sends a new subscription at once), then everyone at once: deliveries that
    # finish in the same moment should not cost a statement each.
    arrived: list[str] = []
    release = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        arrived.append(request.headers["webhook-id"])
        if len(arrived) >= 10:
            release.set()
        await release.wait()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    server = TestServer(app)
    await server.start_server()
    settings = forwarding_settings(database_url, forward_enabled=False)
    client = await make_client(aiohttp_client, settings)
    try:
        await subscribe(client, str(server.make_url("/hook")))
        for i in range(20):
            await report(client, f"omni-together-{i}", "DELIVRD")
        async with open_pool(database_url, 4) as pool, http_client(settings) as session:
            fwd = Forwarder(pool, session, settings)
            task = asyncio.create_task(fwd.run())

            async def settled() -> bool:
                done: int = await db.fetchval(
                    "select count(*) from deliveries where state = 'delivered'"
                )
                return done == 20

            await eventually(settled, within=20)
            fwd.stop()
            await task
    finally:
        await server.close()
    assert await db.fetchval("select count(*) from delivery_attempts") == 20
    assert fwd.delivered.statements < 20


async def test_a_forwarder_killed_mid_delivery_loses_nothing(
    database_url: str, aiohttp_client: AiohttpClient, subscriber: Subscriber, db: asyncpg.Connection
) -> None:
    settings = forwarding_settings(database_url, forward_enabled=False)
    client = await make_client(aiohttp_client, settings)
    await subscribe(client, subscriber.url)
    await report(client, "omni-kill", "DELIVRD")

    subscriber.hang_first = True  # the first request never gets an answer
    env = clean_env(
        RECEIVER_DATABASE_URL=database_url,
        RECEIVER_FORWARD_ALLOW_NETWORKS=",".join(LOOPBACK),
        RECEIVER_FORWARD_LEASE="1",
        RECEIVER_FORWARD_TIMEOUT="30",
        RECEIVER_FORWARD_POLL_INTERVAL="0.2",
    )
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once; the test then awaits the subscriber
        [sys.executable, "-m", "receiver", "forward"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await asyncio.wait_for(subscriber.seen.wait(), timeout=20)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert await db.fetchval("select state from deliveries") == "pending"

    # A new forwarder takes the delivery over once the dead one's lease has run out.
    async with open_pool(database_url, 4) as pool, http_client(settings) as session:
        fwd = Forwarder(pool, session, settings)
        task = asyncio.create_task(fwd.run())

        async def delivered() -> bool:
            return bool(await db.fetchval("select state from deliveries") == "delivered")

        await eventually(delivered, within=20)
        fwd.stop()
        await task
    assert len(subscriber.ok_ids()) == 1


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3/hook",  # private
        "http://127.0.0.1:9/hook",  # loopback
        "http://169.254.169.254/latest/meta-data",  # link-local: cloud metadata
        "http://[::1]/hook",  # IPv6 loopback
        "http://[::ffff:192.168.0.1]/hook",  # IPv4-mapped private
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data",  # cloud metadata behind NAT64
        "http://[2002:7f00:1::]/hook",  # loopback inside 6to4
        "http://0.0.0.0/hook",  # unspecified
        "http://localhost/hook",  # a name that resolves to loopback
    ],
)
async def test_internal_targets_are_refused(client: Client, url: str) -> None:
    resp = await client.post("/v1/subscriptions", json={"url": url}, headers=AUTH)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "url_not_allowed"


async def test_delivery_time_guard_refuses_a_target_no_longer_allowed(
    database_url: str, aiohttp_client: AiohttpClient, subscriber: Subscriber, db: asyncpg.Connection
) -> None:
    # Subscribed while loopback was allowed; the forwarder runs without the allowance.
    allowing = await aiohttp_client(
        create_app(forwarding_settings(database_url, forward_enabled=False))
    )
    await subscribe(allowing, subscriber.url)
    await report(allowing, "omni-ssrf", "DELIVRD")
    strict = forwarding_settings(database_url, forward_allow_networks=())
    async with open_pool(database_url, 4) as pool, http_client(strict) as session:
        fwd = Forwarder(pool, session, strict)
        task = asyncio.create_task(fwd.run())

        async def refused() -> bool:
            error = await db.fetchval("select last_error from deliveries")
            return error is not None and error.startswith("refused")

        await eventually(refused)
        fwd.stop()
        await task
    assert subscriber.received == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"url": "ftp://example.com/x"}, "not http"),
        ({"url": "/relative"}, "not absolute"),
        ({"url": "https://example.com", "statuses": ["teleported"]}, "unknown status"),
        ({"url": "https://example.com", "providers": ["acme"]}, "unknown provider"),
        ({"url": "https://example.com", "statuses": []}, "empty filter"),
        ({}, "no url"),
        ({"url": "https://example.com", "secret": "mine"}, "unknown field"),
    ],
)
async def test_bad_subscriptions_are_400(client: Client, body: dict[str, Any], reason: str) -> None:
    resp = await client.post("/v1/subscriptions", json=body, headers=AUTH)
    assert resp.status == 400, reason


async def test_subscription_crud(client: Client) -> None:
    created = await subscribe(client, "https://hooks.example.com/dlr", statuses=["failed"])
    path = f"/v1/subscriptions/{created['id']}"
    read = await (await client.get(path, headers=AUTH)).json()
    assert "secret" not in read
    assert read["statuses"] == ["failed"]
    listed = await (await client.get("/v1/subscriptions", headers=AUTH)).json()
    assert [s["id"] for s in listed["subscriptions"]] == [created["id"]]

    resp = await client.patch(path, json={"enabled": False, "statuses": None}, headers=AUTH)
    patched = await resp.json()
    assert (patched["enabled"], patched["statuses"], patched["url"]) == (
        False,
        None,
        "https://hooks.example.com/dlr",
    )
    assert (await client.delete(path, headers=AUTH)).status == 204
    assert (await client.get(path, headers=AUTH)).status == 404
    assert (await client.get("/v1/subscriptions/not-a-uuid", headers=AUTH)).status == 404


async def test_a_subscription_failing_for_days_is_disabled_with_a_reason(
    fclient: Client, subscriber: Subscriber, db: asyncpg.Connection
) -> None:
    subscriber.plan.extend([500] * 10)
    sub = await subscribe(fclient, subscriber.url)
    # It has been failing, without one success, for six days already.
    await db.execute("update subscriptions set failing_since = now() - interval '6 days'")
    await report(fclient, "omni-days", "DELIVRD")

    async def disabled() -> bool:
        return bool(await db.fetchval("select not enabled from subscriptions"))

    await eventually(disabled)
    view = await (await fclient.get(f"/v1/subscriptions/{sub['id']}", headers=AUTH)).json()
    assert view["disabled_reason"].startswith("failing continuously since")
    # Enabling it again starts afresh.
    resp = await fclient.patch(
        f"/v1/subscriptions/{sub['id']}", json={"enabled": True}, headers=AUTH
    )
    again = await resp.json()
    assert (again["enabled"], again["disabled_reason"], again["failing_since"]) == (
        True,
        None,
        None,
    )


async def test_a_success_ends_a_failing_streak(
    fclient: Client, subscriber: Subscriber, db: asyncpg.Connection
) -> None:
    subscriber.plan.append(500)
    await subscribe(fclient, subscriber.url)
    await report(fclient, "omni-streak", "DELIVRD")

    async def delivered() -> bool:
        return bool(await db.fetchval("select state from deliveries") == "delivered")

    await eventually(delivered)
    assert await db.fetchval("select failing_since from subscriptions") is None
