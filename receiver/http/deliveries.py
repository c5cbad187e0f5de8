"""A subscription's deliveries: listed, read with every attempt, and sent again (one, or every
status change of a time range)."""

import uuid
from datetime import datetime
from typing import Any, Literal

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from receiver import instants
from receiver.db import Conn, connection
from receiver.forwarding import queries as forward_queries
from receiver.http import cursors, params, views
from receiver.http.keys import POOL
from receiver.http.openapi import Operation, documented
from receiver.http.subscriptions import NOT_FOUND, json_body, missing, path_id
from receiver.instants import Instant
from receiver.jsonio import model_response


class _ReplayRange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: Instant | None = None
    until: Instant | None = None


class _DeliveryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: Literal["pending", "delivered", "dead"] | None = None
    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = Field(default=None, max_length=200)


@documented(
    Operation(
        "A subscription's deliveries, newest first",
        {200: views.DeliveryPage},
        {**NOT_FOUND, 400: "invalid_query, invalid_cursor"},
        query=_DeliveryQuery,
    )
)
async def list_deliveries(request: web.Request) -> web.Response:
    subscription_id = path_id(request)
    query = params.query(request, _DeliveryQuery)
    async with connection(request.app[POOL]) as conn:
        if await forward_queries.get_subscription(conn, subscription_id) is None:
            raise missing("subscription")
        page = await delivery_page(conn, subscription_id, query.state, query.cursor, query.limit)
    return model_response(page)


async def delivery_page(
    conn: Conn, subscription_id: uuid.UUID, state: str | None, cursor: str | None, limit: int
) -> views.DeliveryPage:
    """A page of a subscription's deliveries, newest first: the API's list and the console's."""
    after = _delivery_cursor(cursor) if cursor else None
    rows = await forward_queries.list_deliveries(conn, subscription_id, state, after, limit)
    next_cursor = None
    if len(rows) == limit:
        next_cursor = cursors.encode(rows[-1]["created_at"], rows[-1]["id"])
    return views.DeliveryPage(deliveries=[_delivery(r) for r in rows], next_cursor=next_cursor)


def _delivery_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    if "|" not in cursor:
        return cursors.moment_and_id(cursor)
    # `{created_at}|{id}`: the form given out before every cursor was one format.
    created, _, last_id = cursor.partition("|")
    try:
        return instants.parse(created), uuid.UUID(last_id)
    except ValueError as exc:
        raise cursors.invalid() from exc


@documented(
    Operation(
        "One delivery with its payload and every attempt",
        {200: views.DeliveryDetail},
        {404: "subscription_not_found, delivery_not_found"},
    )
)
async def read_delivery(request: web.Request) -> web.Response:
    subscription_id, delivery_id = path_id(request), path_id(request, "delivery_id")
    async with connection(request.app[POOL]) as conn:
        row = await forward_queries.get_delivery(conn, subscription_id, delivery_id)
        if row is None:
            raise missing("delivery")
        attempts = await forward_queries.delivery_attempts(conn, delivery_id)
    return model_response(
        views.DeliveryDetail(
            **_delivery_fields(row),
            payload=row["payload"],
            attempts=[views.DeliveryAttempt(**a) for a in attempts],
        )
    )


@documented(
    Operation(
        "Send one delivery again now, with a fresh retry schedule",
        {202: views.Replayed},
        {404: "subscription_not_found, delivery_not_found"},
    )
)
async def replay_one(request: web.Request) -> web.Response:
    subscription_id, delivery_id = path_id(request), path_id(request, "delivery_id")
    async with connection(request.app[POOL]) as conn:
        count = await forward_queries.replay_one(conn, subscription_id, delivery_id)
    if count == 0:
        raise missing("delivery")
    return model_response(views.Replayed(replayed=count), status=202)


@documented(
    Operation(
        "Send again every status change in [since, until) the subscription's filters match",
        {202: views.Replayed},
        {**NOT_FOUND, 400: "invalid_body"},
        body=_ReplayRange,
    )
)
async def replay_range(request: web.Request) -> web.Response:
    subscription_id = path_id(request)
    window = await json_body(request, _ReplayRange)
    async with connection(request.app[POOL]) as conn:
        count = await replay(conn, subscription_id, window.since, window.until)
    return model_response(views.Replayed(replayed=count), status=202)


async def replay(
    conn: Conn, subscription_id: uuid.UUID, since: datetime | None, until: datetime | None
) -> int:
    """Replay a subscription's range [since, until): the API's and the console's."""
    if await forward_queries.get_subscription(conn, subscription_id) is None:
        raise missing("subscription")
    return await forward_queries.replay_range(conn, subscription_id, since, until)


def delivery_view(row: asyncpg.Record) -> views.Delivery:
    """A delivery as the API lists it: what the console shows too."""
    return _delivery(row)


def _delivery(row: asyncpg.Record) -> views.Delivery:
    return views.Delivery(**_delivery_fields(row), attempts=row["attempts"])


def _delivery_fields(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "event_id": row["event_id"],
        "provider": row["provider"],
        "message_id": row["message_key"],
        "seq": row["seq"],
        "status": row["status"],
        "state": row["state"],
        "next_attempt_at": row["next_attempt_at"] if row["state"] == "pending" else None,
        "last_status": row["last_status"],
        "last_error": row["last_error"],
        "created_at": row["created_at"],
        "delivered_at": row["delivered_at"],
    }
