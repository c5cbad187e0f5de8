"""Messages: register sends, read one with its timeline, search them."""

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from receiver import accounts, instants, phones
from receiver.db import Conn, connection
from receiver.http import cursors, queries, views
from receiver.http.errors import ApiError, read_body
from receiver.http.keys import JOURNAL, POOL, PROJECTOR, SETTINGS
from receiver.http.openapi import Operation, documented
from receiver.http.params import UNKNOWN_PROVIDER, provider_of, validated
from receiver.instants import Instant
from receiver.jsonio import model_response
from receiver.maintenance import privacy
from receiver.providers import PROVIDERS
from receiver.providers.base import Registration, describe
from receiver.reports import InvalidReport, Receipt
from receiver.status import Status

log = structlog.get_logger()


class _RegistrationBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    response: Any = Field(description="the provider's send response, verbatim")
    request: Any | None = None
    reference: str | None = Field(default=None, max_length=500)
    channel: str | None = Field(default=None, pattern=r"^[A-Za-z][A-Za-z0-9_]{0,49}$")
    # The provider account the message was sent through: its polls use that account's API.
    account: str | None = Field(default=None, min_length=1, max_length=100)


@documented(
    Operation(
        "Register a send: the provider's send response (and request), verbatim",
        {201: views.Registered, 202: views.Registered},
        {**UNKNOWN_PROVIDER, 400: "invalid_body, invalid_send_response"},
        body=_RegistrationBody,
        description="201 once the messages are visible to lookups; 202 with visible false if "
        "the projector did not get there within RECEIVER_REGISTRATION_WAIT (journaled all "
        "the same: registering again is harmless).",
    )
)
async def register(request: web.Request) -> web.Response:
    provider = provider_of(request)
    body = await read_body(request)
    try:
        parsed = _RegistrationBody.model_validate_json(body)
    except ValidationError as exc:
        raise ApiError(400, "invalid_body", describe(exc)) from exc
    if parsed.response is None:
        raise ApiError(400, "invalid_body", "response: the provider's send response is required")
    if provider.parse_registration is None:
        raise ApiError(404, "unknown_provider", "no send registration for this provider")
    settings = request.app[SETTINGS]
    if parsed.account is not None and not accounts.known(settings, provider.name, parsed.account):
        raise ApiError(400, "unknown_account", f"no {provider.name} account of that name")
    registration = Registration(
        parsed.response,
        parsed.request,
        parsed.reference,
        datetime.now(UTC),
        parsed.channel.lower() if parsed.channel else None,
    )
    try:
        updates = provider.parse_registration(registration)
    except InvalidReport as exc:
        raise ApiError(400, "invalid_send_response", str(exc)) from exc

    # Parsed from what came; stored without the credentials a send request may carry.
    stored = privacy.without_credentials(body)
    receipt = Receipt(
        provider.name, "send", stored, request.headers.get("Content-Type"), account=parsed.account
    )
    position = await request.app[JOURNAL].append(receipt, updates)
    keys = sorted({u.message_key for u in updates})
    # Read-your-writes: the answer lists the messages once the projector has applied them.
    visible = await request.app[PROJECTOR].wait_for(position, settings.registration_wait)
    if not visible:
        # Durable all the same (journaled); only not yet visible. Registering again is safe.
        log.warning("send.not_yet_visible", provider=provider.name, messages=len(keys))
        return model_response(
            views.Registered(receipt_id=str(receipt.id), messages=[], visible=False), status=202
        )
    async with connection(request.app[POOL]) as conn:
        rows = await queries.message_summaries(conn, provider.name, keys)
    log.info("send.registered", provider=provider.name, messages=len(keys))
    return model_response(
        views.Registered(
            receipt_id=str(receipt.id), messages=[_summary(r) for r in rows], visible=True
        ),
        status=201,
    )


@documented(
    Operation(
        "A message: its status, channel attempts and full timeline",
        {200: views.Message},
        {404: "unknown_provider, message_not_found"},
        description="`id` is the message key or any provider id of it (a channel message id).",
    )
)
async def get_message(request: web.Request) -> web.Response:
    provider = provider_of(request)
    async with connection(request.app[POOL]) as conn:
        view = await message_view(conn, provider.name, request.match_info["id"])
    if view is None:
        raise ApiError(404, "message_not_found", "no message with this id")
    return model_response(view)


async def message_view(conn: Conn, provider: str, id_: str) -> views.Message | None:
    """A message with its timeline, as GET /v1/messages/{provider}/{id} answers it (and the
    console shows it); None when there is no such message."""
    row = await queries.find_message(conn, provider, id_)
    if row is None:
        return None
    aliases = await queries.message_aliases(conn, provider, row["key"])
    events = await queries.message_events(conn, provider, row["key"])
    return views.Message(
        **_listed_fields(row),
        account=row["account"],
        aliases=aliases,
        channel_order=row["channel_order"],
        attempts=[_attempt(a) for a in row["attempts"]],
        seq=row["seq"],
        # Polling gave up on it (past RECEIVER_POLL_MAX_AGE): its status is the last known.
        stale=row["stale"],
        next_poll_at=row["next_poll_at"],
        registered_at=row["registered_at"],
        events=[_event(e) for e in events],
    )


def _attempt(stored: dict[str, Any]) -> views.Attempt:
    # Stored as the projector composed it, where the attempt's provider id is `message_id`:
    # the API names it channel_message_id, as the forwarded payload does.
    return views.Attempt(
        channel=stored.get("channel"),
        status=stored["status"],
        occurred_at=stored.get("occurred_at"),
        channel_message_id=stored.get("message_id"),
    )


class _SearchQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recipient: str | None = Field(default=None, max_length=200)
    reference: str | None = Field(default=None, max_length=500)
    account: str | None = Field(default=None, max_length=100)
    status: str | None = None
    provider: str | None = None
    since: Instant | None = None
    until: Instant | None = None
    cursor: str | None = Field(default=None, max_length=1000)
    limit: int = Field(default=50, ge=1, le=500)


@documented(
    Operation(
        "Search messages, newest first, keyset-paginated",
        {200: views.MessagePage},
        {400: "invalid_query, invalid_cursor"},
        query=_SearchQuery,
    )
)
async def search_messages(request: web.Request) -> web.Response:
    arguments = search_arguments(request.query, request.app[SETTINGS].phone_regions)
    async with connection(request.app[POOL]) as conn:
        view = await search_view(conn, arguments)
    return model_response(view)


def search_arguments(params: Mapping[str, str], regions: Sequence[str] = ()) -> dict[str, Any]:
    """GET /v1/messages's query as queries.search_messages's arguments (ApiError for a bad
    one): the console searches with the same. A recipient without its country code is also
    looked for as dialled in each of `regions` (RECEIVER_PHONE_REGIONS)."""
    query = validated(params, _SearchQuery)
    statuses = None
    if query.status:
        statuses = [s.strip() for s in query.status.split(",") if s.strip()]
        unknown = [s for s in statuses if s not in {m.value for m in Status}]
        if unknown:
            raise ApiError(400, "invalid_query", f"unknown status {unknown[0]!r}")
    if query.provider is not None and query.provider not in PROVIDERS:
        raise ApiError(400, "invalid_query", f"unknown provider {query.provider!r}")
    after = None
    if query.cursor:
        decoded = cursors.decode(query.cursor)
        try:
            created, provider, key = decoded
            after = (instants.parse(created), cursors.text(provider), cursors.text(key))
        except (TypeError, ValueError) as exc:
            raise cursors.invalid() from exc
    return {
        "recipient": phones.spellings(query.recipient, regions) if query.recipient else None,
        "account": query.account,
        "statuses": statuses,
        "provider": query.provider,
        "since": query.since,
        "until": query.until,
        "after": after,
        "limit": query.limit,
        "reference": query.reference,
    }


async def search_view(conn: Conn, arguments: dict[str, Any]) -> views.MessagePage:
    rows = await queries.search_messages(conn, **arguments)
    next_cursor = None
    if len(rows) == arguments["limit"]:
        last = rows[-1]
        next_cursor = cursors.encode(last["created_at"], last["provider"], last["key"])
    return views.MessagePage(messages=[listed(r) for r in rows], next_cursor=next_cursor)


def _summary(row: asyncpg.Record) -> views.MessageSummary:
    return views.MessageSummary(**_summary_fields(row))


def _summary_fields(row: asyncpg.Record) -> dict[str, Any]:
    return {"provider": row["provider"], "message_id": row["key"], "status": row["status"]}


def _event(row: asyncpg.Record) -> views.Event:
    return views.Event(
        id=row["id"],
        status=row["status"],
        provider_status=row["provider_status"],
        provider_code=row["provider_code"],
        error_code=row["error_code"],
        error_text=row["error_text"],
        permanent=row["permanent"],
        channel=row["channel"],
        channel_message_id=row["attempt_id"],
        occurred_at=row["occurred_at"],
        received_at=row["received_at"],
        source=row["source"],
        receipt_id=row["receipt_id"],  # GET /v1/receipts/{id}: the body it came in
        details=row["details"],
    )


def listed(row: asyncpg.Record) -> views.MessageListed:
    """A message as lists show it (search, groups): the console's lists too."""
    return views.MessageListed(**_listed_fields(row))


def _listed_fields(row: asyncpg.Record) -> dict[str, Any]:
    return {
        **_summary_fields(row),
        "status_at": row["status_at"],
        "channel": row["channel"],
        "recipient": row["recipient"],
        "reference": row["reference"],
        "group": row["group_key"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }
