"""Broker subscriptions to a real NATS JetStream (a nats-server the tests start themselves):
every status change once per subscription under load, a restart mid-load, a subject no stream
takes dead-lettered and replayed, a broker that is down delaying only its own deliveries."""

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
from aiohttp.test_utils import TestClient, TestServer
from nats.js import JetStreamContext
from standardwebhooks import Webhook

from tests.brokers import NatsServer
from tests.conftest import AUTH, AiohttpClient, eventually, make_client, projected
from tests.integration.test_forwarding import (
    Subscriber,
    forwarding_settings,
    report,
    subscribe,
)
from tests.integration.test_forwarding import subscriber as subscriber

Client = TestClient[Any, Any]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "jetstream")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def js(nats_server: NatsServer) -> AsyncIterator[JetStreamContext]:
    """The reader's side: a client of its own that makes the streams (the user's, in life)."""
    nc = await nats.connect(nats_server.url, allow_reconnect=True, reconnect_time_wait=0.2)
    yield nc.jetstream()
    await nc.close()


@pytest.fixture
async def fclient(database_url: str, aiohttp_client: AiohttpClient) -> Client:
    # Retries for ten seconds: enough to ride out the restart below, short enough to
    # dead-letter within a test.
    settings = forwarding_settings(database_url, forward_retry_schedule=(0.3,) * 30)
    client: Client = await make_client(aiohttp_client, settings)
    return client


async def load(client: Client, count: int, prefix: str = "m") -> None:
    """`count` messages, each accepted and then delivered, sent 20 at a time."""
    gate = asyncio.Semaphore(20)

    async def one(i: int) -> None:
        async with gate:
            await report(client, f"{prefix}-{i}", "ACK", "2024-05-02T10:00:00")
            await report(client, f"{prefix}-{i}", "DELIVRD", "2024-05-02T10:00:05")

    await asyncio.gather(*(one(i) for i in range(count)))


async def settled(client: Client, db: asyncpg.Connection, within: float = 25) -> None:
    await projected(client.app)

    async def nothing_pending() -> bool:
        return not await db.fetchval("select count(*) from deliveries where state = 'pending'")

    await eventually(nothing_pending, within)


async def event_ids(db: asyncpg.Connection, sub: dict[str, Any]) -> Counter[str]:
    rows = await db.fetch(
        "select event_id from deliveries where subscription_id = $1 and state = 'delivered'",
        uuid.UUID(sub["id"]),
    )
    return Counter(r["event_id"] for r in rows)


async def stream_messages(js: JetStreamContext, stream: str) -> list[Any]:
    info = await js.stream_info(stream)
    return [
        await js.get_msg(stream, seq)
        for seq in range(info.state.first_seq, info.state.last_seq + 1)
        if info.state.messages
    ]


def nats_url(server: NatsServer, subject: str) -> str:
    return f"{server.url}?subject={subject}"


async def test_every_status_change_arrives_once_per_subscription_under_load(
    fclient: Client,
    db: asyncpg.Connection,
    nats_server: NatsServer,
    js: JetStreamContext,
    subscriber: Subscriber,
) -> None:
    await js.add_stream(name="DLR", subjects=["dlr.>"])
    await js.add_stream(name="AUDIT", subjects=["audit.>"])
    main = await subscribe(fclient, nats_url(nats_server, "dlr.{provider}.{status}"))
    audit = await subscribe(fclient, nats_url(nats_server, "audit.all"), statuses=["delivered"])
    hook = await subscribe(fclient, subscriber.url)
    await load(fclient, 150)
    await settled(fclient, db)

    expected = await event_ids(db, main)
    assert len(expected) >= 150  # every message at least reached delivered
    got = await stream_messages(js, "DLR")
    ids = Counter(m.headers["Nats-Msg-Id"] for m in got)
    assert ids == expected  # each change once, none missing, none extra
    verifier = Webhook(main["secret"])
    for msg in got[:20]:
        body = json.loads(msg.data)
        data = body["data"]
        assert msg.subject == f"dlr.messente.{data['status']}"
        assert body["id"] == msg.headers["Nats-Msg-Id"]
        assert msg.headers["Dlr-Message-Key"] == data["message_id"]
        assert isinstance(data["seq"], int)
        verifier.verify(msg.data, dict(msg.headers))  # the same signature a webhook gets

    audit_ids = Counter(m.headers["Nats-Msg-Id"] for m in await stream_messages(js, "AUDIT"))
    assert audit_ids == await event_ids(db, audit)
    assert len(audit_ids) == 150  # the filter: delivered only
    # The webhook beside them got the same event ids.
    assert set(subscriber.ok_ids()) == set(expected)
    assert subscriber.ok_ids() == await event_ids(db, hook)
    # One connection per broker server, however many subscriptions use it.
    ours = [c for c in nats_server.connections() if c.get("name") == "dlr-receiver"]
    assert len(ours) == 1


async def test_a_nats_restart_mid_load_loses_nothing_and_repeats_nothing(
    fclient: Client, db: asyncpg.Connection, nats_server: NatsServer, js: JetStreamContext
) -> None:
    await js.add_stream(name="DLR", subjects=["dlr.>"])  # file storage: survives the restart
    sub = await subscribe(fclient, nats_url(nats_server, "dlr.{status}"))
    first = asyncio.create_task(load(fclient, 100, "a"))

    async def some_published() -> bool:
        return (await js.stream_info("DLR")).state.messages >= 20

    await eventually(some_published)
    nats_server.stop()
    await first
    await load(fclient, 50, "b")  # all while the broker is down
    await projected(fclient.app)
    await asyncio.sleep(0.5)  # deliveries fail meanwhile, and are retried
    nats_server.start()
    await settled(fclient, db)

    failed = await db.fetchval("select count(*) from delivery_attempts where error is not null")
    assert failed > 0  # the outage was felt
    expected = await event_ids(db, sub)
    assert len(expected) >= 150
    ids = Counter(m.headers["Nats-Msg-Id"] for m in await stream_messages(js, "DLR"))
    assert ids == expected  # nothing lost, and JetStream dropped any repeat by its id


async def test_a_subject_no_stream_takes_is_dead_lettered_and_replayable(
    database_url: str,
    aiohttp_client: AiohttpClient,
    db: asyncpg.Connection,
    nats_server: NatsServer,
    js: JetStreamContext,
) -> None:
    settings = forwarding_settings(database_url, forward_retry_schedule=(0.1, 0.1))
    client: Client = await make_client(aiohttp_client, settings)
    sub = await subscribe(client, nats_url(nats_server, "nowhere.{status}"))
    await report(client, "lost-1", "DELIVRD")

    async def dead() -> bool:
        return bool(await db.fetchval("select state from deliveries") == "dead")

    await eventually(dead)
    resp = await client.get(f"/v1/subscriptions/{sub['id']}/deliveries", headers=AUTH)
    (delivery,) = (await resp.json())["deliveries"]
    assert delivery["attempts"] == 3
    assert "no JetStream stream takes subject nowhere.delivered" in delivery["last_error"]

    await js.add_stream(name="LATE", subjects=["nowhere.>"])
    resp = await client.post(
        f"/v1/subscriptions/{sub['id']}/deliveries/{delivery['id']}/replay", headers=AUTH
    )
    assert resp.status == 202

    async def arrived() -> bool:
        return (await js.stream_info("LATE")).state.messages == 1

    await eventually(arrived)
    (msg,) = await stream_messages(js, "LATE")
    assert msg.headers["Nats-Msg-Id"] == delivery["event_id"]


async def test_a_broker_that_is_down_or_silent_delays_only_its_own_deliveries(
    fclient: Client,
    db: asyncpg.Connection,
    subscriber: Subscriber,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    done = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await done.wait()  # accepts, never speaks: a hung broker
        writer.close()

    hung = await asyncio.start_server(silent, "127.0.0.1", 0)
    hung_port = hung.sockets[0].getsockname()[1]
    closed = await asyncio.start_server(silent, "127.0.0.1", 0)
    closed_port = closed.sockets[0].getsockname()[1]
    closed.close()
    await closed.wait_closed()  # nothing listens there now: refused
    try:
        await subscribe(fclient, f"nats://127.0.0.1:{hung_port}?subject=a")
        await subscribe(fclient, f"nats://127.0.0.1:{closed_port}?subject=b")
        hook = await subscribe(fclient, subscriber.url)
        await load(fclient, 30)
        await projected(fclient.app)

        async def webhooks_done() -> bool:
            return len(await event_ids(db, hook)) >= 30

        # The webhooks all arrive while the brokers' first connects are still timing out.
        await eventually(webhooks_done, 15)

        async def both_brokers_failed() -> bool:
            errors = await db.fetch(
                """
                select s.url, d.last_error from deliveries d
                join subscriptions s on s.id = d.subscription_id
                where s.url like 'nats:%' and d.last_error is not null
                """
            )
            return len({r["url"] for r in errors}) == 2

        await eventually(both_brokers_failed, 15)
        states = await db.fetch(
            """
            select distinct d.state from deliveries d
            join subscriptions s on s.id = d.subscription_id where s.url like 'nats:%'
            """
        )
        assert [r["state"] for r in states] == ["pending"]  # retried, not lost, not dead
    finally:
        done.set()
        hung.close()
        await hung.wait_closed()


async def test_a_broker_password_is_never_shown_by_the_api(
    fclient: Client, db: asyncpg.Connection
) -> None:
    url = "amqp://dlr:Top-Secret-9@broker.example.com/prod?exchange=dlr"
    sub = await subscribe(fclient, url)
    shown = "amqp://dlr:***@broker.example.com/prod?exchange=dlr"
    assert sub["url"] == shown
    path = f"/v1/subscriptions/{sub['id']}"
    for resp in (
        await fclient.get(path, headers=AUTH),
        await fclient.get("/v1/subscriptions", headers=AUTH),
        await fclient.patch(path, json={"description": "orders"}, headers=AUTH),
        # The URL as the API shows it, sent back: no change, not a password of three stars.
        await fclient.patch(path, json={"url": shown}, headers=AUTH),
    ):
        assert resp.status == 200
        text = await resp.text()
        assert "Top-Secret-9" not in text
        assert shown in text
    assert await db.fetchval("select url from subscriptions") == url
    # A new password replaces the old one.
    new = "amqp://dlr:Other-Secret@broker.example.com/prod?exchange=dlr"
    resp = await fclient.patch(path, json={"url": new}, headers=AUTH)
    assert "Other-Secret" not in await resp.text()
    assert await db.fetchval("select url from subscriptions") == new


@pytest.mark.parametrize(
    "url",
    [
        "nats://127.0.0.1:4222?subject=a.*",  # a wildcard cannot be published to
        "nats://127.0.0.1:4222?subject=a\x00b",  # NUL
        "nats://127.0.0.1:4222?subject=" + "a" * 1990,  # huge
        "amqp://u:p@127.0.0.1/?routing_key=x",  # no exchange
    ],
)
async def test_a_bad_broker_url_is_a_clear_400(fclient: Client, url: str) -> None:
    resp = await fclient.post("/v1/subscriptions", json={"url": url}, headers=AUTH)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "invalid_body"


async def test_a_broker_at_an_internal_address_is_refused(
    database_url: str, aiohttp_client: AiohttpClient
) -> None:
    client: Client = await make_client(aiohttp_client, forwarding_settings(database_url,
        forward_allow_networks=()))  # fmt: skip
    for url in ("nats://127.0.0.1:4222?subject=a", "amqp://u:p@169.254.169.254/?exchange=x"):
        resp = await client.post("/v1/subscriptions", json={"url": url}, headers=AUTH)
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "url_not_allowed"
