"""Receipts: request bodies as they arrived, those that kept a problem, and the provider
statuses seen but not mapped."""

import base64
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from receiver.db import Conn, connection
from receiver.http import cursors, queries, views
from receiver.http.errors import ApiError
from receiver.http.keys import POOL
from receiver.http.openapi import Operation, documented
from receiver.http.params import validated
from receiver.instants import Instant
from receiver.jsonio import model_response
from receiver.providers import PROVIDERS


@documented(
    Operation("Provider status values seen but not mapped, with counts", {200: views.UnmappedList})
)
async def list_unmapped(request: web.Request) -> web.Response:
    async with connection(request.app[POOL]) as conn:
        rows = await queries.list_unmapped(conn)
    return model_response(views.UnmappedList(unmapped=[views.Unmapped(**r) for r in rows]))


class _ProblemQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: str | None = None
    since: Instant | None = None
    cursor: str | None = Field(default=None, max_length=1000)
    limit: int = Field(default=50, ge=1, le=500)


@documented(
    Operation(
        "Request bodies that kept something unread (what reprocess reads again)",
        {200: views.ReceiptPage},
        {400: "invalid_query, invalid_cursor"},
        query=_ProblemQuery,
    )
)
async def receipts_with_problems(request: web.Request) -> web.Response:
    """Request bodies that kept something unread: what `reprocess` would read again."""
    arguments = problems_arguments(request.query)
    async with connection(request.app[POOL]) as conn:
        view = await problems_view(conn, arguments)
    return model_response(view)


def problems_arguments(params: Mapping[str, str]) -> dict[str, Any]:
    """GET /v1/receipts/problems's query as queries.receipts_with_problems's arguments."""
    query = validated(params, _ProblemQuery)
    if query.provider is not None and query.provider not in PROVIDERS:
        raise ApiError(400, "invalid_query", f"unknown provider {query.provider!r}")
    after = cursors.moment_and_id(query.cursor) if query.cursor else None
    return {"provider": query.provider, "since": query.since, "after": after, "limit": query.limit}


async def problems_view(conn: Conn, arguments: dict[str, Any]) -> views.ReceiptPage:
    rows = await queries.receipts_with_problems(conn, **arguments)
    next_cursor = None
    if len(rows) == arguments["limit"]:
        next_cursor = cursors.encode(rows[-1]["received_at"], rows[-1]["id"])
    return views.ReceiptPage(
        receipts=[views.ReceiptListed(**r) for r in rows], next_cursor=next_cursor
    )


@documented(
    Operation(
        "One request body as it arrived, what could not be read from it, and its events",
        {200: views.Receipt},
        {404: "receipt_not_found"},
    )
)
async def get_receipt(request: web.Request) -> web.Response:
    """One request body as it arrived, what could not be read from it, and its events."""
    try:
        receipt_id = uuid.UUID(request.match_info["id"])
    except ValueError as exc:
        raise ApiError(404, "receipt_not_found", "no such receipt") from exc
    async with connection(request.app[POOL]) as conn:
        view = await receipt_view(conn, receipt_id)
    if view is None:
        raise ApiError(404, "receipt_not_found", "no such receipt")
    return model_response(view)


async def receipt_view(conn: Conn, receipt_id: uuid.UUID) -> views.Receipt | None:
    row = await queries.receipt(conn, receipt_id)
    if row is None:
        return None
    events = await queries.receipt_events(conn, receipt_id)
    body: bytes = row["body"]
    try:
        text: str | None = body.decode()
    except UnicodeDecodeError:
        text = None
    return views.Receipt(
        **{k: row[k] for k in ("id", "provider", "source", "received_at", "content_type")},
        problem=row["problem"],
        body=text,  # null when the bytes are not UTF-8: see body_base64
        body_base64=base64.b64encode(body).decode(),
        events=[
            views.ReceiptEvent(
                message_id=e["message_key"],
                status=e["status"],
                provider_status=e["provider_status"],
                channel=e["channel"],
                occurred_at=e["occurred_at"],
            )
            for e in events
        ],
    )
