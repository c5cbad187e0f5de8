"""The forwarder under uneven subscribers: a hung one delays only itself, a fast one is given
room, a NOTIFY is never missed, and a backlog it cannot take never makes it spin. Real
subscriber servers on loopback, real Postgres."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestServer

from receiver.db import open_pool
from receiver.forwarding import queries as forward_queries
from receiver.forwarding.forwarder import Forwarder, http_client
from receiver.forwarding.payload import new_secret
from receiver.settings import Settings
from tests.integration.test_forwarding import forwarding_settings

Server = Callable[..., Awaitable[TestServer]]


@dataclass
class Endpoint:
    """A subscriber that answers after `delay`, or not until `release` is set when it hangs;
    it counts what it got and the most requests it had open at once."""

    delay: float = 0.0
    hangs: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)
    received: list[str] = field(default_factory=list)
    arrival: asyncio.Event = field(default_factory=asyncio.Event)
    open: int = 0
    most_open: int = 0
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            if self.hangs:
                # Bounded, so a failing test still ends; the test server cancels this handler
                # when the forwarder gives up on the request, which is what `open` counts.
                with suppress(TimeoutError):
                    await asyncio.wait_for(self.release.wait(), 30)
            elif self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.open -= 1
        self.received.append(request.headers["webhook-id"])
        self.arrival.set()
        return web.Response(status=204)

    async def has(self, count: int, within: float) -> None:
        """Wait until `count` deliveries have arrived; fail the test if not within `within`."""
        try:
            async with asyncio.timeout(within):
                while True:
                    self.arrival.clear()
                    if len(self.received) >= count:
                        return
                    await self.arrival.wait()
        except TimeoutError:
            raise AssertionError(f"{len(self.received)} of {count} arrived in {within}s") from None


async def endpoint(aiohttp_server: Server, **fields: Any) -> Endpoint:
    point = Endpoint(**fields)
    app = web.Application()
    app.router.add_post("/hook", point.handle)
    server = await aiohttp_server(app)
    point.url = str(server.make_url("/hook"))
    return point


async def subscription(db: asyncpg.Connection, url: str) -> uuid.UUID:
    row = await forward_queries.create_subscription(
        db,
        url=url,
        description=None,
        statuses=None,
        providers=None,
        enabled=True,
        secret=new_secret(),
    )
    subscription_id: uuid.UUID = row["id"]
    return subscription_id


async def enqueue(db: asyncpg.Connection, subscription_id: uuid.UUID, count: int) -> None:
    """Queue `count` deliveries and wake the forwarders, in one commit, as ingest does."""
    async with db.transaction():
        await db.execute(
            """
            insert into deliveries (id, subscription_id, event_id, provider, message_key, seq,
                                    status, payload)
            select gen_random_uuid(), $1, e.id, 'messente', e.id, 1, 'delivered',
                   jsonb_build_object('type', 'message.status', 'id', e.id,
                                      'data', jsonb_build_object('message_id', e.id))
            from (select 'evt_' || gen_random_uuid()::text as id
                  from generate_series(1, $2)) as e
            """,
            subscription_id,
            count,
        )
        await db.execute("select pg_notify($1, '')", forward_queries.CHANNEL)


@asynccontextmanager
async def forwarding(database_url: str, settings: Settings) -> AsyncIterator[Forwarder]:
    async with open_pool(database_url, 4) as pool, http_client(settings) as session:
        fwd = Forwarder(pool, session, settings)
        task = asyncio.create_task(fwd.run())
        try:
            yield fwd
        finally:
            fwd.stop()
            await task


async def test_a_hung_subscriber_delays_only_itself(
    database_url: str, aiohttp_server: Server, db: asyncpg.Connection
) -> None:
    hung = await endpoint(aiohttp_server, hangs=True)
    healthy = await endpoint(aiohttp_server)
    # The hung subscriber's backlog is older, so a claim in due order would take it first.
    await enqueue(db, await subscription(db, hung.url), 40)
    await enqueue(db, await subscription(db, healthy.url), 20)
    settings = forwarding_settings(
        database_url,
        forward_concurrency=8,
        forward_per_subscription=4,
        # Longer than the test: the hung subscriber's requests never time out meanwhile.
        forward_timeout=30.0,
        forward_lease=60.0,
    )
    async with forwarding(database_url, settings):
        try:
            await healthy.has(20, within=5)
            # The hung one was tried all along, but never with more than its share.
            assert 1 <= hung.most_open <= 4
        finally:
            hung.release.set()  # before the forwarder stops: it waits for requests under way


async def test_a_notify_while_the_forwarder_looks_for_work_is_not_missed(
    database_url: str, aiohttp_server: Server, db: asyncpg.Connection
) -> None:
    # The fallback poll is far longer than a trial, so only a NOTIFY can deliver in time. Each
    # trial queues a second delivery a moment after a first, sweeping the gap across the few
    # milliseconds the forwarder spends looking for more work after taking the first.
    point = await endpoint(aiohttp_server)
    subscription_id = await subscription(db, point.url)
    settings = forwarding_settings(database_url, forward_poll_interval=60.0)
    async with forwarding(database_url, settings):
        for trial in range(200):
            await enqueue(db, subscription_id, 1)
            await asyncio.sleep((trial % 25) * 0.0002)
            await enqueue(db, subscription_id, 1)
            await point.has(2 * (trial + 1), within=2)


async def commits_while_forwarding(database_url: str, db: asyncpg.Connection) -> int:
    """Transactions the database saw in 2.5 s of a forwarder running (and the test's own)."""
    settings = forwarding_settings(database_url, forward_poll_interval=0.5)
    commits = "select xact_commit from pg_stat_database where datname = current_database()"
    async with forwarding(database_url, settings):
        await asyncio.sleep(0.5)
        await db.execute("select pg_stat_clear_snapshot()")
        before: int = await db.fetchval(commits)
        # Backends report their counts about once a second while busy.
        await asyncio.sleep(2.5)
        await db.execute("select pg_stat_clear_snapshot()")
        after: int = await db.fetchval(commits)
    return after - before


async def test_a_disabled_subscriptions_backlog_does_not_keep_the_forwarder_busy(
    database_url: str, aiohttp_server: Server, db: asyncpg.Connection
) -> None:
    # Pending deliveries of a disabled subscription (left by a 410, say) can never be claimed;
    # if they count as due, the forwarder never waits and queries the database in a loop.
    point = await endpoint(aiohttp_server)
    await enqueue(db, await subscription(db, point.url), 3)
    await db.execute("update subscriptions set enabled = false")
    # Idle: two statements per fallback poll.
    assert await commits_while_forwarding(database_url, db) < 100
    assert point.received == []


async def test_a_delivery_locked_elsewhere_does_not_keep_the_forwarder_busy(
    database_url: str, aiohttp_server: Server, db: asyncpg.Connection
) -> None:
    # Due, but held by another transaction: every claim passes it over (SKIP LOCKED) while it
    # still counts as due. The forwarder pauses between tries instead of spinning.
    point = await endpoint(aiohttp_server)
    await enqueue(db, await subscription(db, point.url), 1)
    holder = await asyncpg.connect(database_url)
    try:
        async with holder.transaction():
            await holder.execute("select 1 from deliveries for update")
            assert await commits_while_forwarding(database_url, db) < 300
    finally:
        await holder.close()
    assert point.received == []


async def test_a_fast_subscriber_gets_more_than_sixteen_requests_at_once(
    database_url: str, aiohttp_server: Server, db: asyncpg.Connection
) -> None:
    # 200 ms per answer, however many at once: sixteen at a time (the old fixed limit) is 80
    # deliveries/s. With the shipped defaults a subscriber that answers well is given more.
    fast = await endpoint(aiohttp_server, delay=0.2)
    await enqueue(db, await subscription(db, fast.url), 600)
    settings = forwarding_settings(database_url, forward_timeout=10.0, forward_lease=60.0)
    assert not {"forward_per_subscription", "forward_concurrency"} & settings.model_fields_set
    began = time.monotonic()
    async with forwarding(database_url, settings):
        await fast.has(600, within=20)
    elapsed = time.monotonic() - began
    assert fast.most_open > 16
    assert elapsed < 5.0, elapsed  # sixteen at once would take 7.5 s


async def test_a_subscriber_that_times_out_is_left_one_request_at_a_time(
    database_url: str, aiohttp_server: Server, db: asyncpg.Connection
) -> None:
    hung = await endpoint(aiohttp_server, hangs=True)
    await enqueue(db, await subscription(db, hung.url), 40)
    settings = forwarding_settings(
        database_url,
        forward_per_subscription=8,
        forward_timeout=0.3,
        forward_retry_schedule=(0.1,) * 20,
        forward_lease=60.0,
    )
    async with forwarding(database_url, settings):
        try:
            # A few timeouts teach the forwarder; from then on it holds one request open.
            await asyncio.sleep(1.5)
            hung.most_open = hung.open
            await asyncio.sleep(1.0)
            assert hung.most_open <= 1
        finally:
            hung.release.set()
