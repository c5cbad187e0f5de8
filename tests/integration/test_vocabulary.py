"""One vocabulary in the JSON: message_id is the message key and channel_message_id an attempt's
provider id wherever they appear; one not-found code per kind; /v1/subscriptions paged; one
cursor format, with the forms given out before still read."""

import asyncio
import base64
import json
import uuid
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from receiver.db import Conn
from receiver.forwarding import queries as forward_queries
from receiver.http import cursors
from receiver.providers import messente
from tests.conftest import AUTH, MESSENTE_PASSWORD, projected

Client = TestClient[Any, Any]


async def _report(client: Client, omni: str, channel_id: str) -> dict[str, Any]:
    body = json.dumps(
        {
            "omnimessage_id": omni,
            "message_id": channel_id,
            "channel": "sms",
            "status": "DELIVRD",
            "timestamp": "2024-05-02T10:00:00",
        }
    ).encode()
    headers = {"X-Messente-Signature": messente.sign(MESSENTE_PASSWORD, body)}
    resp = await client.post("/webhooks/messente", data=body, headers=headers)
    assert resp.status == 200
    answer: dict[str, Any] = await resp.json()
    return answer


async def test_the_message_key_and_the_attempt_id_have_one_name_each(client: Client) -> None:
    answer = await _report(client, "omni-v", "sms-v")
    await projected(client.app)
    message = await (await client.get("/v1/messages/messente/sms-v", headers=AUTH)).json()
    assert message["message_id"] == "omni-v"
    assert "id" not in message
    assert message["attempts"][0]["channel_message_id"] == "sms-v"
    assert message["events"][0]["channel_message_id"] == "sms-v"
    assert "message_id" not in message["events"][0]
    found = await (await client.get("/v1/messages", headers=AUTH)).json()
    assert [m["message_id"] for m in found["messages"]] == ["omni-v"]
    receipt = await (await client.get(f"/v1/receipts/{answer['receipt_id']}", headers=AUTH)).json()
    assert [e["message_id"] for e in receipt["events"]] == ["omni-v"]


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v1/messages/messente/nobody", "message_not_found"),
        ("/v1/messages/nosuch/x", "unknown_provider"),
        ("/v1/groups/infobip/no-bulk", "group_not_found"),
        (f"/v1/receipts/{uuid.uuid4()}", "receipt_not_found"),
        ("/v1/receipts/not-a-uuid", "receipt_not_found"),
        (f"/v1/subscriptions/{uuid.uuid4()}", "subscription_not_found"),
        ("/v1/subscriptions/not-a-uuid", "subscription_not_found"),
        (f"/v1/subscriptions/{uuid.uuid4()}/deliveries", "subscription_not_found"),
        # A route that does not exist at all is the generic one.
        ("/v1/nothing-here", "not_found"),
    ],
)
async def test_each_kind_of_missing_thing_has_its_own_code(
    client: Client, path: str, code: str
) -> None:
    resp = await client.get(path, headers=AUTH)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == code


async def test_a_missing_delivery_is_not_a_missing_subscription(
    client: Client, db: asyncpg.Connection
) -> None:
    sub = await _subscription(db)
    for path in (f"/deliveries/{uuid.uuid4()}", "/deliveries/x", f"/deliveries/{uuid.uuid4()}"):
        resp = await client.get(f"/v1/subscriptions/{sub}{path}", headers=AUTH)
        assert (resp.status, (await resp.json())["error"]["code"]) == (404, "delivery_not_found")
    resp = await client.post(
        f"/v1/subscriptions/{sub}/deliveries/{uuid.uuid4()}/replay", headers=AUTH
    )
    assert (await resp.json())["error"]["code"] == "delivery_not_found"


async def _subscription(db: Conn) -> uuid.UUID:
    row = await forward_queries.create_subscription(
        db,
        url="https://hooks.example.com/dlr",
        description=None,
        statuses=None,
        providers=None,
        enabled=True,
        secret="s",
    )
    created: uuid.UUID = row["id"]
    return created


async def test_subscriptions_page_through_everything_once(
    client: Client, db: asyncpg.Connection
) -> None:
    made = {str(await _subscription(db)) for _ in range(7)}
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        page = await (await client.get("/v1/subscriptions", params=params, headers=AUTH)).json()
        seen += [s["id"] for s in page["subscriptions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(made)
    assert len(seen) == len(made)


async def test_subscriptions_created_at_once_page_without_loss(
    client: Client, database_url: str
) -> None:
    # Two writers at once: rows committed in the same instant still page by (created_at, id).
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=4)
    try:

        async def one() -> uuid.UUID:
            async with pool.acquire() as conn:
                return await _subscription(conn)

        made = {str(s) for s in await asyncio.gather(*(one() for _ in range(10)))}
    finally:
        await pool.close()
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "1", **({"cursor": cursor} if cursor else {})}
        page = await (await client.get("/v1/subscriptions", params=params, headers=AUTH)).json()
        seen += [s["id"] for s in page["subscriptions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen.count(seen[0]) == 1
    assert sorted(seen) == sorted(made)


def _b64(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},  # below the range
        {"limit": "501"},  # above it
        {"limit": "x"},
        {"cursor": "not-base64!"},
        {"cursor": _b64(["2024-01-01T00:00:00+00:00"])},  # one part of two
        {"cursor": _b64(["2024-01-01T00:00:00+00:00", "not-a-uuid"])},
        {"cursor": _b64(["2024-01-01T00:00:00\x00", str(uuid.uuid4())])},  # NUL
        {"cursor": _b64(["0001-01-01T00:00:00+14:00", str(uuid.uuid4())])},  # before year 1
        {"cursor": "A" * 1001},  # longer than any cursor we give
        {"unknown": "1"},
    ],
)
async def test_bad_subscription_list_queries_are_400(
    client: Client, params: dict[str, str]
) -> None:
    resp = await client.get("/v1/subscriptions", params=params, headers=AUTH)
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"]["code"] in {"invalid_query", "invalid_cursor"}


async def test_every_cursor_is_the_one_format_and_old_forms_are_still_read(
    client: Client, db: asyncpg.Connection
) -> None:
    sub = await _subscription(db)
    for i in range(3):
        await _report(client, f"omni-c{i}", f"sms-c{i}")
    await projected(client.app)
    messages = await (await client.get("/v1/messages?limit=1", headers=AUTH)).json()
    assert isinstance(cursors.decode(messages["next_cursor"]), list)
    # A delivery cursor as it was given out before: `{created_at}|{id}`.
    old = f"2999-01-01T00:00:00+00:00|{uuid.uuid4()}"
    resp = await client.get(
        f"/v1/subscriptions/{sub}/deliveries", params={"cursor": old}, headers=AUTH
    )
    assert resp.status == 200
    # A group cursor as it was: a bare JSON string, and as it is now: an array.
    for cursor in (_b64("a"), _b64(["a"])):
        resp = await client.get(
            "/v1/groups/messente/omni-c0", params={"cursor": cursor}, headers=AUTH
        )
        assert resp.status == 200, await resp.text()
    for bad in (_b64(["a\x00"]), _b64([1]), _b64(["a", "b"])):
        resp = await client.get("/v1/groups/messente/omni-c0", params={"cursor": bad}, headers=AUTH)
        assert (resp.status, (await resp.json())["error"]["code"]) == (400, "invalid_cursor")
