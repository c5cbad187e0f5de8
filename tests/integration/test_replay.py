"""Replay of a time range re-sends every matching status change in it: the queued ones, and
the ones raised while the subscription was disabled, which were never queued for it."""

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.conftest import AUTH, AiohttpClient, eventually, make_client, projected
from tests.integration.test_forwarding import (
    Subscriber,
    forwarding_settings,
    report,
    serve_subscriber,
    subscribe,
)

Client = TestClient[Any, Any]


@pytest.fixture
async def hook(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Subscriber:
    return await serve_subscriber(aiohttp_server)


@pytest.fixture
async def fclient(database_url: str, aiohttp_client: AiohttpClient) -> Client:
    client: Client = await make_client(aiohttp_client, forwarding_settings(database_url))
    return client


def received(hook: Subscriber) -> dict[str, dict[str, Any]]:
    """What the subscriber accepted, by webhook-id: the `data` of each."""
    return {
        h["webhook-id"]: json.loads(body)["data"]
        for h, body, status in hook.received
        if 200 <= status < 300
    }


async def replay(client: Client, sub: dict[str, Any], **window: str) -> int:
    resp = await client.post(f"/v1/subscriptions/{sub['id']}/replay", json=window, headers=AUTH)
    assert resp.status == 202, await resp.text()
    count: int = (await resp.json())["replayed"]
    return count


async def enable(client: Client, sub: dict[str, Any]) -> None:
    resp = await client.patch(
        f"/v1/subscriptions/{sub['id']}", json={"enabled": True}, headers=AUTH
    )
    assert resp.status == 200


async def settled(client: Client, db: asyncpg.Connection) -> None:
    """Until every report so far is projected and every delivery queued is settled."""
    await projected(client.app)

    async def nothing_pending() -> bool:
        pending = "select count(*) from deliveries where state = 'pending'"
        return bool(await db.fetchval(pending) == 0)

    await eventually(nothing_pending)


async def test_changes_missed_while_disabled_after_a_410_come_back_with_a_replay(
    fclient: Client, hook: Subscriber, db: asyncpg.Connection
) -> None:
    since = datetime.now(UTC).isoformat()
    hook.plan.append(410)
    sub = await subscribe(fclient, hook.url)
    await report(fclient, "omni-a", "DELIVRD")

    async def disabled() -> bool:
        return bool(await db.fetchval("select not enabled from subscriptions"))

    await eventually(disabled)
    # While it is disabled, a change is raised: nothing is queued for it.
    await report(fclient, "omni-b", "ACK")
    await projected(fclient.app)  # two changes, not one: projected one at a time
    await report(fclient, "omni-b", "DELIVRD", "2024-05-02T10:00:05")
    await projected(fclient.app)
    assert await db.fetchval("select count(*) from deliveries") == 1
    await enable(fclient, sub)

    assert await replay(fclient, sub, since=since) == 3  # omni-a's dead one, omni-b's two

    async def all_three() -> bool:
        return len(received(hook)) == 3

    await eventually(all_three)
    got = sorted((d["message_id"], d["seq"], d["status"]) for d in received(hook).values())
    assert got == [("omni-a", 1, "delivered"), ("omni-b", 1, "sent"), ("omni-b", 2, "delivered")]


async def test_a_replayed_change_is_the_one_an_enabled_subscription_was_sent(
    fclient: Client, hook: Subscriber, db: asyncpg.Connection
) -> None:
    since = datetime.now(UTC).isoformat()
    paused = await subscribe(fclient, hook.url, enabled=False)
    await subscribe(fclient, hook.url + "?always")  # enabled all along
    await report(fclient, "omni-same", "DELIVRD")
    await settled(fclient, db)
    ((sent_id, sent_data),) = received(hook).items()
    hook.received.clear()

    await enable(fclient, paused)
    assert await replay(fclient, paused, since=since) == 1

    async def one() -> bool:
        return len(received(hook)) == 1

    await eventually(one)
    # The same webhook-id (receivers drop repeats by it) and the same payload.
    assert received(hook) == {sent_id: sent_data}


async def test_changes_missed_after_five_days_of_failures_come_back_with_a_replay(
    fclient: Client, hook: Subscriber, db: asyncpg.Connection
) -> None:
    since = datetime.now(UTC).isoformat()
    hook.plan.extend([500] * 10)
    sub = await subscribe(fclient, hook.url)
    # It has been failing, without one success, for six days already.
    await db.execute("update subscriptions set failing_since = now() - interval '6 days'")
    await report(fclient, "omni-old", "DELIVRD")

    async def disabled() -> bool:
        return bool(await db.fetchval("select not enabled from subscriptions"))

    await eventually(disabled)
    await report(fclient, "omni-missed", "DELIVRD")
    await projected(fclient.app)  # while it was disabled (omni-old's retry waits for it)
    assert await db.fetchval("select count(*) from deliveries") == 1
    hook.plan.clear()
    await enable(fclient, sub)
    await replay(fclient, sub, since=since)

    async def missed_arrived() -> bool:
        return "omni-missed" in {d["message_id"] for d in received(hook).values()}

    await eventually(missed_arrived)


async def test_a_replay_sends_only_what_matches_the_subscriptions_filters(
    fclient: Client, hook: Subscriber, db: asyncpg.Connection
) -> None:
    since = datetime.now(UTC).isoformat()
    sub = await subscribe(fclient, hook.url, statuses=["delivered"], enabled=False)
    await subscribe(fclient, hook.url + "?other", enabled=False)  # wants everything
    await report(fclient, "omni-f", "ACK")
    await report(fclient, "omni-f", "DELIVRD", "2024-05-02T10:00:05")
    await report(fclient, "omni-f2", "REJECTD")
    await settled(fclient, db)  # projected while both were disabled
    await enable(fclient, sub)
    assert await replay(fclient, sub, since=since) == 1

    async def one() -> bool:
        return len(received(hook)) == 1

    await eventually(one)
    await settled(fclient, db)
    ((data),) = received(hook).values()
    assert (data["message_id"], data["status"]) == ("omni-f", "delivered")


async def test_replaying_a_range_again_queues_nothing_twice(
    fclient: Client, hook: Subscriber, db: asyncpg.Connection
) -> None:
    since = datetime.now(UTC).isoformat()
    sub = await subscribe(fclient, hook.url, enabled=False)
    for i in range(3):
        await report(fclient, f"omni-i{i}", "DELIVRD")
    await settled(fclient, db)  # projected while it was disabled
    await enable(fclient, sub)
    assert await replay(fclient, sub, since=since) == 3
    await settled(fclient, db)
    assert await replay(fclient, sub, since=since) == 3
    await settled(fclient, db)
    assert await db.fetchval("select count(*) from deliveries") == 3
    assert sorted(hook.ok_ids().values()) == [2, 2, 2]


async def test_a_replay_keeps_to_its_range(
    fclient: Client, hook: Subscriber, db: asyncpg.Connection
) -> None:
    sub = await subscribe(fclient, hook.url, enabled=False)
    # The range is of when changes were projected: each report is projected before the clock
    # is read.
    await report(fclient, "omni-before", "DELIVRD")
    await settled(fclient, db)
    since = datetime.now(UTC).isoformat()
    await report(fclient, "omni-inside", "DELIVRD")
    await settled(fclient, db)
    until = datetime.now(UTC).isoformat()
    await report(fclient, "omni-after", "DELIVRD")
    await settled(fclient, db)
    await enable(fclient, sub)
    assert await replay(fclient, sub, since=since, until=until) == 1
    await settled(fclient, db)
    assert [d["message_id"] for d in received(hook).values()] == ["omni-inside"]


async def test_two_replays_of_one_range_at_once_queue_each_change_once(
    fclient: Client, hook: Subscriber, db: asyncpg.Connection
) -> None:
    since = datetime.now(UTC).isoformat()
    sub = await subscribe(fclient, hook.url, enabled=False)
    for i in range(20):
        await report(fclient, f"omni-c{i}", "DELIVRD")
    await settled(fclient, db)  # projected while it was disabled
    await enable(fclient, sub)
    counts = await asyncio.gather(*(replay(fclient, sub, since=since) for _ in range(2)))
    assert counts == [20, 20]  # each saw all twenty, queued by it or by the other
    await settled(fclient, db)
    assert await db.fetchval("select count(*) from deliveries") == 20
    assert set(hook.ok_ids()) == set(
        await db.fetchval("select array_agg(event_id) from status_changes")
    )
