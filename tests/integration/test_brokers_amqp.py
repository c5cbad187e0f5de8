"""Broker subscriptions to a real RabbitMQ at RECEIVER_TEST_AMQP_URL: every change once per
subscription under load, an unroutable message dead-lettered and replayed, a missing exchange,
connections cut mid-load, and credentials that never show in the API, errors or logs.

RabbitMQ cannot be restarted by a test (it is the machine's); connections are cut between
the forwarder and it instead, by a proxy, as a broker restart does to its clients.
"""

import asyncio
import json
import os
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aio_pika.abc
import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from tests.brokers import CuttingProxy
from tests.conftest import AUTH, AiohttpClient, eventually, make_client, projected
from tests.integration.test_brokers_nats import event_ids, load, settled
from tests.integration.test_forwarding import forwarding_settings, report, subscribe

Client = TestClient[Any, Any]
AMQP_URL = os.environ.get("RECEIVER_TEST_AMQP_URL", "")

pytestmark = pytest.mark.skipif(
    not AMQP_URL,
    reason="RabbitMQ tests need RECEIVER_TEST_AMQP_URL (e.g. amqp://guest:guest@127.0.0.1:5672/)",
)


def target(exchange: str, base: str = AMQP_URL, **query: str) -> str:
    base = base if base.endswith("/") else base + "/"
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    return f"{base}?exchange={exchange}{extra}"


@pytest.fixture
async def amqp() -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """The reader's side: it owns the exchanges and queues (the service never makes any)."""
    conn = await aio_pika.connect(AMQP_URL)
    channel = await conn.channel()
    yield channel
    await conn.close()


async def exchange_with_queue(
    channel: aio_pika.abc.AbstractChannel, binding: str | None = "#"
) -> tuple[str, aio_pika.abc.AbstractQueue, aio_pika.abc.AbstractExchange]:
    name = f"dlr-test-{uuid.uuid4().hex[:8]}"
    exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, auto_delete=True)
    queue = await channel.declare_queue(exclusive=True)
    if binding is not None:
        await queue.bind(exchange, binding)
    return name, queue, exchange


async def drain(queue: aio_pika.abc.AbstractQueue) -> list[aio_pika.abc.AbstractIncomingMessage]:
    got = []
    while (msg := await queue.get(no_ack=True, fail=False)) is not None:
        got.append(msg)
    return got


@pytest.fixture
async def fclient(database_url: str, aiohttp_client: AiohttpClient) -> Client:
    settings = forwarding_settings(database_url, forward_retry_schedule=(0.3,) * 30)
    client: Client = await make_client(aiohttp_client, settings)
    return client


async def test_every_status_change_arrives_once_per_subscription_under_load(
    fclient: Client, db: asyncpg.Connection, amqp: aio_pika.abc.AbstractChannel
) -> None:
    name_a, queue_a, _ = await exchange_with_queue(amqp)
    name_b, queue_b, _ = await exchange_with_queue(amqp)
    sub_a = await subscribe(fclient, target(name_a))
    sub_b = await subscribe(fclient, target(name_b, routing_key="all.{status}"))
    await load(fclient, 150)
    await settled(fclient, db)

    got_a = await drain(queue_a)
    expected = await event_ids(db, sub_a)
    assert len(expected) >= 150
    assert Counter(m.message_id for m in got_a) == expected
    for msg in got_a[:20]:
        assert msg.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert msg.content_type == "application/json"
        body = json.loads(msg.body)
        assert msg.routing_key == f"messente.{body['data']['status']}"
        assert msg.headers["webhook-id"] == msg.message_id == body["id"]
        assert msg.headers["dlr-message-key"] == body["data"]["message_id"]
    got_b = await drain(queue_b)
    assert Counter(m.message_id for m in got_b) == await event_ids(db, sub_b)
    assert {m.routing_key for m in got_b} <= {"all.sent", "all.delivered"}


async def test_an_unroutable_message_is_dead_lettered_and_replayable(
    database_url: str,
    aiohttp_client: AiohttpClient,
    db: asyncpg.Connection,
    amqp: aio_pika.abc.AbstractChannel,
) -> None:
    settings = forwarding_settings(database_url, forward_retry_schedule=(0.1, 0.1))
    client: Client = await make_client(aiohttp_client, settings)
    name, queue, exchange = await exchange_with_queue(amqp, binding=None)  # no queue bound
    sub = await subscribe(client, target(name))
    await report(client, "nowhere-1", "DELIVRD")

    async def dead() -> bool:
        return bool(await db.fetchval("select state from deliveries") == "dead")

    await eventually(dead)
    resp = await client.get(f"/v1/subscriptions/{sub['id']}/deliveries", headers=AUTH)
    (delivery,) = (await resp.json())["deliveries"]
    assert delivery["attempts"] == 3
    assert "not routed" in delivery["last_error"]
    assert "messente.delivered" in delivery["last_error"]

    await queue.bind(exchange, "messente.*")
    resp = await client.post(
        f"/v1/subscriptions/{sub['id']}/deliveries/{delivery['id']}/replay", headers=AUTH
    )
    assert resp.status == 202

    async def delivered() -> bool:
        return bool(await db.fetchval("select state from deliveries") == "delivered")

    await eventually(delivered)
    (msg,) = await drain(queue)
    assert msg.message_id == delivery["event_id"]


async def test_a_missing_exchange_fails_its_own_deliveries_only(
    fclient: Client, db: asyncpg.Connection, amqp: aio_pika.abc.AbstractChannel
) -> None:
    name, queue, _ = await exchange_with_queue(amqp)
    good = await subscribe(fclient, target(name))
    missing = await subscribe(fclient, target(f"dlr-test-missing-{uuid.uuid4().hex[:8]}"))
    await load(fclient, 20)
    await projected(fclient.app)

    async def good_done() -> bool:
        return len(await event_ids(db, good)) >= 20

    await eventually(good_done)

    async def missing_failed() -> bool:
        errors = await db.fetch(
            "select last_error from deliveries where subscription_id = $1 "
            "and last_error is not null",
            uuid.UUID(missing["id"]),
        )
        return any("NOT_FOUND - no exchange" in r["last_error"] for r in errors)

    await eventually(missing_failed)
    assert not await event_ids(db, missing)
    # The missing exchange cost the other one nothing: not one failed attempt.
    failures = await db.fetchval(
        """
        select count(*) from delivery_attempts a join deliveries d on d.id = a.delivery_id
        where d.subscription_id = $1 and a.error is not null
        """,
        uuid.UUID(good["id"]),
    )
    assert failures == 0
    assert Counter(m.message_id for m in await drain(queue)) == await event_ids(db, good)


async def test_connections_cut_mid_load_lose_nothing(
    fclient: Client, db: asyncpg.Connection, amqp: aio_pika.abc.AbstractChannel
) -> None:
    broker = aio_pika.connection.make_url(AMQP_URL)
    proxy = CuttingProxy(broker.host or "127.0.0.1", broker.port or 5672)
    await proxy.start()
    try:
        name, queue, _ = await exchange_with_queue(amqp)
        via = str(broker.with_host("127.0.0.1").with_port(proxy.port))
        sub = await subscribe(fclient, target(name, base=via))
        running = asyncio.create_task(load(fclient, 120))
        cuts = 0
        for at_least in (10, 40, 80):  # cut three times while the load runs

            async def published(at_least: int = at_least) -> bool:
                declared = await queue.channel.declare_queue(queue.name, passive=True)
                return (declared.declaration_result.message_count or 0) >= at_least

            await eventually(published, 20)
            cuts += proxy.cut()
        await running
        await settled(fclient, db)
        assert cuts > 0
        expected = await event_ids(db, sub)
        got = Counter(m.message_id for m in await drain(queue))
        # At least once: a publish confirmed but whose confirm was lost in the cut is sent
        # again; readers drop repeats by message_id. Nothing is missing.
        assert set(got) == set(expected)
        assert len(expected) >= 120
    finally:
        await proxy.close()


async def test_credentials_never_show_in_errors_or_logs(
    fclient: Client, db: asyncpg.Connection, amqp: aio_pika.abc.AbstractChannel
) -> None:
    name, _, _ = await exchange_with_queue(amqp)
    broker = aio_pika.connection.make_url(AMQP_URL)
    secret = "wrong-Pa55word-never-shown"
    url = target(name, base=str(broker.with_password(secret)))
    with capture_logs() as logs:
        sub = await subscribe(fclient, url)
        await report(fclient, "secret-1", "DELIVRD")

        async def failed() -> bool:
            return bool(await db.fetchval("select count(*) from delivery_attempts"))

        await eventually(failed)
    assert secret not in sub["url"]
    resp = await fclient.get(f"/v1/subscriptions/{sub['id']}/deliveries", headers=AUTH)
    text = await resp.text()
    assert "cannot connect" in text
    assert secret not in text
    assert secret not in repr(logs)
    assert await db.fetchval("select url from subscriptions") == url  # kept, to connect with
