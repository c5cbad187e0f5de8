"""Moments at the edge of the calendar, in every /v1 parameter and cursor that carries one:
a clear 400 or an answer, never a 500. 0001-01-01T00:00:00+14:00 is before year 1 in UTC and
9999-12-31T23:59:59-14:00 after year 9999: Python cannot convert either to UTC."""

import base64
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import AUTH, AiohttpClient, make_client
from tests.integration.test_forwarding import forwarding_settings, subscribe

Client = TestClient[Any, Any]

EDGES = [
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "0001-01-01T00:00:00",
    "9999-12-31T23:59:59.999999+00:00",
]


def cursor(value: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.fixture
async def fclient(database_url: str, aiohttp_client: AiohttpClient) -> Client:
    client: Client = await make_client(aiohttp_client, forwarding_settings(database_url))
    return client


async def test_edge_dates_in_queries_and_cursors_are_never_a_500(fclient: Client) -> None:
    sub = await subscribe(fclient, "http://127.0.0.1:9/hook")
    deliveries = f"/v1/subscriptions/{sub['id']}/deliveries"
    for moment in EDGES:
        gets = [
            ("/v1/messages", {"since": moment}),
            ("/v1/messages", {"until": moment}),
            ("/v1/messages", {"cursor": cursor([moment, "infobip", "k"])}),
            ("/v1/receipts/problems", {"since": moment}),
            ("/v1/receipts/problems", {"cursor": cursor([moment, str(sub["id"])])}),
            (deliveries, {"cursor": f"{moment}|{sub['id']}"}),
        ]
        for path, params in gets:
            resp = await fclient.get(path, params=params, headers=AUTH)
            assert resp.status < 500, (path, params, await resp.text())
            if resp.status >= 400:
                assert (await resp.json())["error"]["code"] in ("invalid_query", "invalid_cursor")
        for window in ({"since": moment}, {"until": moment}):
            resp = await fclient.post(
                f"/v1/subscriptions/{sub['id']}/replay", json=window, headers=AUTH
            )
            assert resp.status < 500, (window, await resp.text())


async def test_a_nul_inside_a_cursor_is_a_400(fclient: Client) -> None:
    for path, value in [
        ("/v1/messages", ["2026-01-01T00:00:00+00:00", "infobip", "a\u0000b"]),
        ("/v1/messages", ["2026-01-01T00:00:00+00:00", "info\u0000bip", "k"]),
        ("/v1/receipts/problems", ["2026-01-01T00:00:00\u0000+00:00", "x"]),
    ]:
        resp = await fclient.get(path, params={"cursor": cursor(value)}, headers=AUTH)
        assert resp.status == 400, (path, value, await resp.text())
        assert (await resp.json())["error"]["code"] == "invalid_cursor"
