"""Dates at the edge of range, cursors that decode to what no page gave out, and random values
in every /v1 query parameter: a clear 400 JSON error, or an answer; never a 5xx."""

import base64
import json
import uuid
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.forwarding import queries as forward_queries
from tests.conftest import AUTH

Client = TestClient[Any, Any]

# Python can hold these, UTC cannot: 0001-01-01 east of Greenwich is still year 0 there, and
# 9999-12-31 west of it is already year 10000.
EARLIEST = "0001-01-01T00:00:00+14:00"
LATEST = "9999-12-31T23:59:59-14:00"
EDGES = [EARLIEST, LATEST]


def cursor(value: Any) -> str:
    """A cursor the way the API makes them: base64 of JSON, unpadded."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def search_cursor(created: str, provider: str = "messente", key: str = "k") -> str:
    return cursor([created, provider, key])


def receipts_cursor(received: str) -> str:
    return cursor([received, "00000000-0000-0000-0000-000000000000"])


async def subscription(db: asyncpg.Connection) -> uuid.UUID:
    row = await forward_queries.create_subscription(
        db,
        url="https://hooks.example.com/dlr",
        description=None,
        statuses=None,
        providers=None,
        enabled=True,
        secret="s",
    )
    subscription_id: uuid.UUID = row["id"]
    return subscription_id


def get_paths(sub: uuid.UUID) -> list[str]:
    """Every edge value in every place a /v1 GET reads a date, directly or in a cursor."""
    paths = []
    for edge in EDGES:
        q = quote(edge)
        paths += [
            f"/v1/messages?since={q}",
            f"/v1/messages?until={q}",
            f"/v1/messages?since={q}&until={q}",
            f"/v1/messages?cursor={search_cursor(edge)}",
            f"/v1/receipts/problems?since={q}",
            f"/v1/receipts/problems?cursor={receipts_cursor(edge)}",
            f"/v1/subscriptions/{sub}/deliveries?cursor={quote(edge + '|' + str(sub))}",
        ]
    return paths


async def test_dates_at_the_edge_of_range_are_a_400_or_an_answer(
    client: Client, db: asyncpg.Connection
) -> None:
    sub = await subscription(db)
    for path in get_paths(sub):
        resp = await client.get(path, headers=AUTH)
        assert resp.status in (200, 400), (path, await resp.text())
        if resp.status == 400:
            assert "error" in await resp.json(), path
    for window in [{"since": EARLIEST}, {"until": LATEST}, {"since": EARLIEST, "until": LATEST}]:
        resp = await client.post(f"/v1/subscriptions/{sub}/replay", json=window, headers=AUTH)
        assert resp.status in (202, 400), (window, await resp.text())


# NUL inside what a cursor decodes to: no %00 in the URL for the edge to refuse, and
# Postgres text refuses NUL.
NUL_CURSORS = [
    ("/v1/messages", search_cursor("2024-05-02T10:00:00+00:00", "mess\x00ente")),
    ("/v1/messages", search_cursor("2024-05-02T10:00:00+00:00", "messente", "k\x00")),
    ("/v1/messages", search_cursor("2024-05-02T10:00:00\x00+00:00")),
    ("/v1/groups/infobip/bulk-1", cursor("member\x00")),
    ("/v1/receipts/problems", receipts_cursor("2024-05-02T10:00:00+00:00\x00")),
    # Raw NUL bytes where the JSON goes, not an escape.
    ("/v1/messages", base64.urlsafe_b64encode(b'["2024-05-02", "a\x00", "b"]').decode()),
]


@pytest.mark.parametrize(("path", "value"), NUL_CURSORS)
async def test_a_cursor_carrying_nul_is_a_400(client: Client, path: str, value: str) -> None:
    await client.post(
        "/v1/messages/infobip",
        json={"response": {"bulkId": "bulk-1", "messages": [{"messageId": "m-1", "to": "1"}]}},
        headers=AUTH,
    )
    resp = await client.get(f"{path}?cursor={value}", headers=AUTH)
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"]["code"] == "invalid_cursor"


# Edge and random values for every /v1 query parameter, cursors included.
dates = st.sampled_from(EDGES) | st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat())
texts = st.text(max_size=30)
scalars = st.none() | st.integers() | texts | dates
cursors = st.one_of(
    texts,
    st.lists(scalars, max_size=4).map(cursor),
    st.tuples(dates, texts, texts).map(lambda t: cursor(list(t))),
    st.tuples(dates, st.uuids().map(str)).map(lambda t: cursor(list(t))),
    st.tuples(dates, st.uuids().map(str)).map(lambda t: f"{t[0]}|{t[1]}"),
    st.binary(max_size=40).map(lambda b: base64.urlsafe_b64encode(b).decode()),
)
values = st.one_of(
    texts, dates, cursors, st.integers().map(str), st.sampled_from(["", "0", "-1", "501"])
)
PARAMS = {
    "/v1/messages": [
        "recipient",
        "reference",
        "status",
        "provider",
        "since",
        "until",
        "cursor",
        "limit",
    ],
    "/v1/groups/infobip/bulk-1": ["cursor", "limit"],
    "/v1/receipts/problems": ["provider", "since", "cursor", "limit"],
    "/v1/subscriptions/{sub}/deliveries": ["state", "limit", "cursor"],
    "/v1/subscriptions": ["limit", "cursor"],
}
queries = st.sampled_from(sorted(PARAMS)).flatmap(
    lambda path: st.tuples(
        st.just(path), st.dictionaries(st.sampled_from(PARAMS[path]), values, min_size=1)
    )
)


@pytest.fixture
async def sub(db: asyncpg.Connection) -> uuid.UUID:
    return await subscription(db)


# The client and the subscription are shared by every example: the property holds whatever
# earlier examples did.
@settings(
    max_examples=300,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(query=queries)
async def test_random_and_edge_query_values_are_never_a_5xx(
    client: Client, sub: uuid.UUID, query: tuple[str, dict[str, str]]
) -> None:
    path, params = query
    url = path.format(sub=sub)
    resp = await client.get(url, params=params, headers=AUTH)
    assert resp.status < 500, (url, params, await resp.text())
    if resp.status >= 400:
        assert "error" in await resp.json(), (url, params)
