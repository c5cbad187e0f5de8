"""The console's subscription pages (admin): health, deliveries and their attempts, dead
letters, and the buttons: replay one or a range, enable, disable, rotate the secret. Each
button does what its API route does, through the same functions."""

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from receiver.console import queries as console_queries
from receiver.console.render import render
from receiver.db import connection
from receiver.forwarding import queries as forward_queries
from receiver.http import deliveries, subscriptions
from receiver.http.errors import ApiError
from receiver.http.keys import POOL
from receiver.instants import in_utc

# "Recent" in a subscription's success rate: about the span of its retry schedule.
_RECENT = timedelta(hours=24)
_PAGE = 50


def _id(request: web.Request, name: str = "id") -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError as exc:
        raise ApiError(404, "not_found", f"no such {name.replace('_', ' ')}") from exc


def _back(request: web.Request, notice: str) -> web.Response:
    """Back to the subscription's page after a button, saying what it did (post, redirect,
    get: reloading the page does not press the button again)."""
    url = request.app.router["console_subscription"].url_for(id=request.match_info["id"])
    return web.Response(status=303, headers={"Location": str(url.with_query(done=notice))})


# What the buttons say they did. Only these are shown: a link with any other `done` would
# let someone else's page put words of its choosing into ours.
_NOTICES = re.compile(r"(enabled|disabled|replayed [0-9]{1,9} deliver(y|ies))")


def _notice(given: str) -> str:
    return given if _NOTICES.fullmatch(given) else ""


async def index(request: web.Request) -> web.Response:
    cursor = request.query.get("cursor") or None
    if cursor is not None and len(cursor) > 1000:
        raise ApiError(400, "invalid_cursor", "cursor is not one this page gave out")
    async with connection(request.app[POOL]) as conn:
        page = await subscriptions.subscription_page(conn, cursor, _PAGE)
        health = await console_queries.subscription_health(conn, datetime.now(UTC) - _RECENT)
    listed = [
        {**s.model_dump(), "health": _health(health.get(uuid.UUID(s.id)))}
        for s in page.subscriptions
    ]
    return render(
        request,
        "subscriptions.html",
        {"subscriptions": listed, "next_cursor": page.next_cursor},
    )


def _health(row: Any) -> dict[str, Any]:
    if row is None:
        return {"attempts": 0, "rate": None, "pending": 0, "dead": 0, "last_error": None}
    rate = row["succeeded"] / row["attempts"] if row["attempts"] else None
    last_error = None
    if row["last_error_at"] is not None:
        # The forwarder's error names the HTTP answer when there was one; else the status.
        text = row["last_error"] or f"HTTP {row['last_error_status']}"
        last_error = {"at": row["last_error_at"], "text": text}
    return {
        "attempts": row["attempts"],
        "rate": rate,
        "pending": row["pending"],
        "dead": row["dead"],
        "last_error": last_error,
    }


async def detail(request: web.Request) -> web.Response:
    subscription_id = _id(request)
    state = request.query.get("state") or None
    if state not in (None, "pending", "delivered", "dead"):
        raise ApiError(400, "invalid_query", "state: pending, delivered or dead")
    cursor = request.query.get("cursor") or None
    if cursor is not None and len(cursor) > 200:
        raise ApiError(400, "invalid_cursor", "cursor is not one this page gave out")
    async with connection(request.app[POOL]) as conn:
        row = await forward_queries.get_subscription(conn, subscription_id)
        if row is None:
            raise ApiError(404, "subscription_not_found", "no such subscription")
        health = await console_queries.subscription_health(
            conn, datetime.now(UTC) - _RECENT, subscription_id
        )
        page = await deliveries.delivery_page(conn, subscription_id, state, cursor, _PAGE)
    return render(
        request,
        "subscription.html",
        {
            "s": subscriptions.view(row).model_dump(),
            "health": _health(health.get(subscription_id)),
            "deliveries": [d.model_dump() for d in page.deliveries],
            "state": state,
            "next_cursor": page.next_cursor,
            "done": _notice(request.query.get("done", "")),
        },
    )


async def delivery(request: web.Request) -> web.Response:
    subscription_id, delivery_id = _id(request), _id(request, "delivery_id")
    async with connection(request.app[POOL]) as conn:
        row = await forward_queries.get_delivery(conn, subscription_id, delivery_id)
        if row is None:
            raise ApiError(404, "not_found", "no such delivery")
        attempts = await forward_queries.delivery_attempts(conn, delivery_id)
    return render(
        request,
        "delivery.html",
        {
            "subscription_id": str(subscription_id),
            "d": {**deliveries.delivery_view(row).model_dump(), "payload": row["payload"]},
            "attempts": attempts,
        },
    )


async def set_enabled(request: web.Request) -> web.Response:
    form = await request.post()
    enabled = form.get("enabled") == "true"
    async with connection(request.app[POOL]) as conn, conn.transaction():
        row = await forward_queries.update_subscription(conn, _id(request), {"enabled": enabled})
    if row is None:
        raise ApiError(404, "not_found", "no such subscription")
    return _back(request, "enabled" if enabled else "disabled")


async def rotate_secret(request: web.Request) -> web.Response:
    # The API's default grace: the old secret keeps signing for a day beside the new one.
    async with connection(request.app[POOL]) as conn:
        view = await subscriptions.rotated(conn, _id(request), 86400)
    # Shown once, here, like the API's answer; never kept in a URL or a cookie.
    return render(request, "secret.html", {"s": view.model_dump()})


async def replay_range(request: web.Request) -> web.Response:
    form = await request.post()
    window: dict[str, datetime | None] = {}
    for name in ("since", "until"):
        value = form.get(name)
        window[name] = None
        if isinstance(value, str) and value.strip():
            try:
                # The form's datetime-local has no zone: the page says it is UTC.
                window[name] = in_utc(datetime.fromisoformat(value.strip()))
            except ValueError as exc:
                raise ApiError(400, "invalid_body", f"{name}: not a date and time") from exc
    async with connection(request.app[POOL]) as conn:
        count = await deliveries.replay(conn, _id(request), window["since"], window["until"])
    return _back(request, f"replayed {count} deliver{'y' if count == 1 else 'ies'}")


async def replay_one(request: web.Request) -> web.Response:
    subscription_id, delivery_id = _id(request), _id(request, "delivery_id")
    async with connection(request.app[POOL]) as conn:
        count = await forward_queries.replay_one(conn, subscription_id, delivery_id)
    if count == 0:
        raise ApiError(404, "not_found", "no such delivery")
    return _back(request, "replayed 1 delivery")
