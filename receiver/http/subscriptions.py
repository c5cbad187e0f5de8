"""Subscriptions to status changes: create, list, read, change, delete, rotate the secret
(their deliveries and replays: receiver/http/deliveries.py)."""

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import yarl
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from receiver.db import Conn, connection
from receiver.forwarding import broker_url
from receiver.forwarding import queries as forward_queries
from receiver.forwarding.netguard import (
    BlockedAddress,
    GuardedResolver,
    check_literal,
    parse_networks,
)
from receiver.forwarding.payload import new_secret
from receiver.forwarding.target_url import check_target_url
from receiver.http import cursors, params, views
from receiver.http.errors import ApiError, read_body
from receiver.http.keys import POOL, SETTINGS
from receiver.http.openapi import Operation, documented
from receiver.jsonio import has_nul, model_response
from receiver.providers import PROVIDERS
from receiver.providers.base import describe
from receiver.status import Status

M = TypeVar("M", bound=BaseModel)


class _Fields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2000)
    description: str | None = Field(default=None, max_length=500)
    # None: every status / provider. An empty list would match nothing, so it is refused.
    statuses: list[Status] | None = Field(default=None, min_length=1)
    providers: list[str] | None = Field(default=None, min_length=1)
    enabled: bool = True

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return check_target_url(value)

    @field_validator("providers")
    @classmethod
    def _known(cls, value: list[str] | None) -> list[str] | None:
        unknown = sorted(set(value or ()) - set(PROVIDERS))
        if unknown:
            raise ValueError(f"unknown providers {unknown}; known: {sorted(PROVIDERS)}")
        return value


class _Patch(_Fields):
    url: str = Field(default="", max_length=2000)


class _Rotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # How long the old secret keeps signing beside the new one.
    grace_seconds: float = Field(default=86400, ge=0, le=30 * 86400)


# Old secrets that may sign at once. Each is another webhook-signature entry on every request;
# rather than drop one early (failing a receiver still on it), a rotation beyond is refused.
_MOST_OLD_SECRETS = 10


class _ListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=100, ge=1, le=500)
    cursor: str | None = Field(default=None, max_length=1000)


NOT_FOUND = {404: "subscription_not_found"}


async def json_body(request: web.Request, model: type[M]) -> M:
    raw = await read_body(request)
    try:
        body = model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise ApiError(400, "invalid_body", describe(exc)) from exc
    if b"\\u0000" in raw and has_nul(body.model_dump(mode="json")):
        raise ApiError(400, "invalid_body", "text may not contain NUL (\\u0000)")
    return body


def missing(kind: str) -> ApiError:
    """One error code per kind of thing not found: subscription_not_found, delivery_not_found
    (a route that does not exist at all is aiohttp's not_found)."""
    return ApiError(404, f"{kind}_not_found", f"no such {kind}")


def path_id(request: web.Request, name: str = "id") -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError as exc:
        raise missing("subscription" if name == "id" else "delivery") from exc


async def _check_target(request: web.Request, url: str) -> None:
    """Refuse internal targets up front; the forwarder checks again on every delivery."""
    allow = parse_networks(request.app[SETTINGS].forward_allow_networks)
    host = yarl.URL(url).host or ""
    resolver = GuardedResolver(allow)
    try:
        check_literal(host, allow)
        await asyncio.wait_for(resolver.resolve(host.strip("[]"), 0), timeout=5)
    except BlockedAddress as exc:
        raise ApiError(400, "url_not_allowed", f"url: {exc}") from exc
    except (OSError, TimeoutError):
        pass  # does not resolve now; it may later, and delivery will check again then
    finally:
        await resolver.close()


def _view(row: asyncpg.Record, secret: str | None = None) -> views.Subscription:
    view = views.Subscription(**_view_fields(row))
    if secret is not None:
        view.secret = secret  # shown once, at creation or rotation
    return view


def _expiries(row: asyncpg.Record) -> list[datetime]:
    now = datetime.now(UTC)
    return sorted(p["expires_at"] for p in row["previous_secrets"] if p["expires_at"] > now)


def _view_fields(row: asyncpg.Record) -> dict[str, Any]:
    expiries = _expiries(row)
    return {
        "id": str(row["id"]),
        # A broker URL's password is a secret: the API never shows it back.
        "url": broker_url.redact(row["url"]),
        "description": row["description"],
        "statuses": row["statuses"],
        "providers": row["providers"],
        "enabled": row["enabled"],
        "disabled_reason": row["disabled_reason"],
        "failing_since": row["failing_since"],
        # Until when each old secret signs beside the current one; the last of them alone,
        # under the name it had when only one old secret could sign.
        "previous_secrets_expire_at": expiries,
        "previous_secret_expires_at": expiries[-1] if expiries else None,
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


@documented(
    Operation(
        "Create a subscription; the answer carries its secret, shown only here",
        {201: views.Subscription},
        {400: "invalid_body, url_not_allowed"},
        body=_Fields,
    )
)
async def create(request: web.Request) -> web.Response:
    fields = await json_body(request, _Fields)
    await _check_target(request, fields.url)
    secret = new_secret()
    async with connection(request.app[POOL]) as conn:
        row = await forward_queries.create_subscription(
            conn,
            url=fields.url,
            description=fields.description,
            statuses=[s.value for s in fields.statuses] if fields.statuses else None,
            providers=list(fields.providers) if fields.providers else None,
            enabled=fields.enabled,
            secret=secret,
        )
    return model_response(_view(row, secret), status=201)


@documented(
    Operation(
        "Subscriptions, oldest first, keyset-paginated (no secrets)",
        {200: views.SubscriptionPage},
        {400: "invalid_query, invalid_cursor"},
        query=_ListQuery,
    )
)
async def list_all(request: web.Request) -> web.Response:
    query = params.query(request, _ListQuery)
    async with connection(request.app[POOL]) as conn:
        page = await subscription_page(conn, query.cursor, query.limit)
    return model_response(page)


async def subscription_page(conn: Conn, cursor: str | None, limit: int) -> views.SubscriptionPage:
    """A page of subscriptions, oldest first, after `cursor` (one this API gave out): the
    API's list and the console's."""
    after = cursors.moment_and_id(cursor) if cursor else None
    rows = await forward_queries.list_subscriptions(conn, after, limit)
    next_cursor = None
    if len(rows) == limit:
        next_cursor = cursors.encode(rows[-1]["created_at"], rows[-1]["id"])
    return views.SubscriptionPage(subscriptions=[_view(r) for r in rows], next_cursor=next_cursor)


@documented(Operation("One subscription (no secret)", {200: views.Subscription}, NOT_FOUND))
async def read(request: web.Request) -> web.Response:
    async with connection(request.app[POOL]) as conn:
        row = await forward_queries.get_subscription(conn, path_id(request))
    if row is None:
        raise missing("subscription")
    return model_response(_view(row))


@documented(
    Operation(
        "Change any field; enabled true re-enables a disabled one",
        {200: views.Subscription},
        {**NOT_FOUND, 400: "invalid_body, url_not_allowed"},
        body=_Patch,
    )
)
async def update(request: web.Request) -> web.Response:
    subscription_id = path_id(request)
    patch = await json_body(request, _Patch)
    changes: dict[str, Any] = {}
    for name in patch.model_fields_set:
        value = getattr(patch, name)
        if name == "statuses" and value is not None:
            value = [s.value for s in value]
        changes[name] = value
    if "url" in changes:
        async with connection(request.app[POOL]) as conn:
            current = await forward_queries.get_subscription(conn, subscription_id)
        if current is not None and changes["url"] == broker_url.redact(current["url"]):
            # The URL as the API showed it (password as ***) means "unchanged", not a new
            # password of three stars.
            del changes["url"]
        else:
            await _check_target(request, changes["url"])
    async with connection(request.app[POOL]) as conn, conn.transaction():
        row = await forward_queries.update_subscription(conn, subscription_id, changes)
    if row is None:
        raise missing("subscription")
    return model_response(_view(row))


@documented(Operation("Delete a subscription and its deliveries", {204: None}, NOT_FOUND))
async def delete(request: web.Request) -> web.Response:
    async with connection(request.app[POOL]) as conn:
        deleted = await forward_queries.delete_subscription(conn, path_id(request))
    if not deleted:
        raise missing("subscription")
    return web.Response(status=204)


@documented(
    Operation(
        "A new secret (shown once); replaced ones keep signing for their grace period",
        {200: views.Subscription},
        {**NOT_FOUND, 400: "invalid_body", 409: "too_many_secrets"},
        body=_Rotate,
    )
)
async def rotate_secret(request: web.Request) -> web.Response:
    rotate = await json_body(request, _Rotate)
    async with connection(request.app[POOL]) as conn:
        view = await rotated(conn, path_id(request), rotate.grace_seconds)
    return model_response(view)


async def rotated(
    conn: Conn, subscription_id: uuid.UUID, grace_seconds: float
) -> views.Subscription:
    """A new secret for a subscription (in its view, shown once): the API's and the console's
    rotation. ApiError 404 subscription_not_found, 409 with too many old secrets."""
    secret = new_secret()
    row = await forward_queries.rotate_secret(
        conn, subscription_id, secret, grace_seconds, _MOST_OLD_SECRETS
    )
    if row is None:
        current = await forward_queries.get_subscription(conn, subscription_id)
        if current is None:
            raise missing("subscription")
        expiries = _expiries(current)
        clears = f"; the first stops signing at {expiries[0].isoformat()}" if expiries else ""
        raise ApiError(
            409,
            "too_many_secrets",
            f"{_MOST_OLD_SECRETS} earlier secrets are still in their grace period{clears}",
        )
    return _view(row, secret)


def view(row: asyncpg.Record) -> views.Subscription:
    """A subscription as the API shows it (no secrets): what the console shows too."""
    return _view(row)
