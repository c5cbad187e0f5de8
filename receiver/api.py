"""Client side: register sends, look up messages and their timelines, health."""

import base64
import dataclasses
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from receiver import accounts, cursors, instants, phones, privacy, queries, views
from receiver.db import Conn, connection, is_transient
from receiver.errors import ApiError, read_body
from receiver.ingest import queries as ingest_queries
from receiver.instants import Instant
from receiver.jsonio import model_response
from receiver.keys import JOURNAL, METRICS, POOL, PROJECTOR, SETTINGS
from receiver.openapi import Operation, documented
from receiver.providers import PROVIDERS
from receiver.providers.base import Provider, Registration, describe
from receiver.reports import InvalidReport, Receipt
from receiver.status import Status

log = structlog.get_logger()

_Q = TypeVar("_Q", bound=BaseModel)


class _RegistrationBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    response: Any = Field(description="the provider's send response, verbatim")
    request: Any | None = None
    reference: str | None = Field(default=None, max_length=500)
    channel: str | None = Field(default=None, pattern=r"^[A-Za-z][A-Za-z0-9_]{0,49}$")
    # The provider account the message was sent through: its polls use that account's API.
    account: str | None = Field(default=None, min_length=1, max_length=100)


def _provider(request: web.Request) -> Provider:
    provider = PROVIDERS.get(request.match_info["provider"])
    if provider is None:
        known = ", ".join(sorted(PROVIDERS))
        raise ApiError(404, "unknown_provider", f"unknown provider; known: {known}")
    return provider


_UNKNOWN_PROVIDER = {404: "unknown_provider"}


@documented(
    Operation(
        "Register a send: the provider's send response (and request), verbatim",
        {201: views.Registered, 202: views.Registered},
        {**_UNKNOWN_PROVIDER, 400: "invalid_body, invalid_send_response"},
        body=_RegistrationBody,
        description="201 once the messages are visible to lookups; 202 with visible false if "
        "the projector did not get there within RECEIVER_REGISTRATION_WAIT (journaled all "
        "the same: registering again is harmless).",
    )
)
async def register(request: web.Request) -> web.Response:
    provider = _provider(request)
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


class _ErasureBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phone: str = Field(max_length=64, description="the number, in any spelling")
    dry_run: bool = Field(default=False, description="count what would go, remove nothing")


@documented(
    Operation(
        "Erase everything stored about one phone number (or count it: dry_run)",
        {200: views.Erased},
        {400: "invalid_body"},
        body=_ErasureBody,
        description="Messages with their events, aliases, status changes and deliveries; "
        "the number redacted in raw receipts. The log line names the erasure id, never the "
        "number.",
    )
)
async def erase(request: web.Request) -> web.Response:
    """Everything stored about one phone number: counted (`dry_run`) or removed."""
    try:
        parsed = _ErasureBody.model_validate_json(await read_body(request))
        number = privacy.number_digits(parsed.phone)
    except ValidationError as exc:
        raise ApiError(400, "invalid_body", describe(exc)) from exc
    except privacy.InvalidNumberError as exc:
        raise ApiError(400, "invalid_body", f"phone: {exc}") from exc
    erasure, found = await privacy.erase(request.app[POOL], number, dry_run=parsed.dry_run)
    return model_response(
        views.Erased(erasure=erasure, dry_run=parsed.dry_run, **dataclasses.asdict(found))
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
    provider = _provider(request)
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
    query = _validated(params, _ProblemQuery)
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


@documented(Operation("The process is up", {200: views.Health}))
async def healthz(request: web.Request) -> web.Response:
    return model_response(views.Health(status="ok"))


@documented(
    Operation(
        "The database answers; how far behind projection is",
        {200: views.Ready},
        {503: "not_ready: the database is unreachable"},
    )
)
async def readyz(request: web.Request) -> web.Response:
    """Ready when the database answers; the body says how far behind the projection is."""
    try:
        async with connection(request.app[POOL]) as conn:
            rows, lag = await ingest_queries.backlog(conn)
    except Exception as exc:
        if not is_transient(exc):
            raise
        raise ApiError(503, "not_ready", "database unreachable") from exc
    return model_response(
        views.Ready(
            status="ready",
            projection=views.Backlog(backlog_rows=rows, lag_seconds=round(lag, 3)),
        )
    )


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


def _query(request: web.Request, model: type[_Q]) -> _Q:
    return _validated(request.query, model)


def _validated(params: Mapping[str, str], model: type[_Q]) -> _Q:
    try:
        return model.model_validate(dict(params))
    except ValidationError as exc:
        raise ApiError(400, "invalid_query", describe(exc)) from exc


@documented(
    Operation(
        "Search messages, newest first, keyset-paginated",
        {200: views.MessagePage},
        {400: "invalid_query, invalid_cursor"},
        query=_SearchQuery,
    )
)
async def search_messages(request: web.Request) -> web.Response:
    arguments = search_arguments(request.query)
    async with connection(request.app[POOL]) as conn:
        view = await search_view(conn, arguments)
    return model_response(view)


def search_arguments(params: Mapping[str, str]) -> dict[str, Any]:
    """GET /v1/messages's query as queries.search_messages's arguments (ApiError for a bad
    one): the console searches with the same."""
    query = _validated(params, _SearchQuery)
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
        "recipient": phones.spellings(query.recipient) if query.recipient else None,
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


class _GroupQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cursor: str | None = Field(default=None, max_length=1000)
    limit: int = Field(default=100, ge=1, le=1000)


@documented(
    Operation(
        "A group sent together (Infobip bulkId, Messente omnimessage, Mercury dispatch)",
        {200: views.Group},
        {400: "invalid_query, invalid_cursor", 404: "unknown_provider, group_not_found"},
        query=_GroupQuery,
    )
)
async def get_group(request: web.Request) -> web.Response:
    provider = _provider(request)
    group = request.match_info["id"]
    after, limit = group_query(request.query)
    async with connection(request.app[POOL]) as conn:
        view = await group_view(conn, provider.name, group, after, limit)
    if view is None:
        raise ApiError(404, "group_not_found", "no messages in this group")
    return model_response(view)


def group_query(params: Mapping[str, str]) -> tuple[str | None, int]:
    """GET /v1/groups/...'s `cursor` (decoded: the last key seen) and `limit`, checked."""
    query = _validated(params, _GroupQuery)
    return (_group_cursor(query.cursor) if query.cursor else None), query.limit


async def group_view(
    conn: Conn, provider: str, group: str, after: str | None, limit: int
) -> views.Group | None:
    """A group's counts per status and a page of its members; None when it has none."""
    counts = await queries.group_counts(conn, provider, group)
    if not counts:
        return None
    rows = await queries.group_members(conn, provider, group, after, limit)
    next_cursor = cursors.encode(rows[-1]["key"]) if len(rows) == limit else None
    return views.Group(
        provider=provider,
        id=group,
        total=sum(counts.values()),
        counts=counts,
        members=[listed(r) for r in rows],
        next_cursor=next_cursor,
    )


def _group_cursor(cursor: str) -> str:
    value = cursors.decode(cursor)
    # The array every cursor is now; a bare string is the form given out before that.
    key = value[0] if isinstance(value, list) and len(value) == 1 else value
    try:
        return cursors.text(key)
    except ValueError as exc:
        raise cursors.invalid() from exc


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


@documented(Operation("Prometheus text: counters, histograms, gauges", {200: "text/plain"}))
async def metrics(request: web.Request) -> web.Response:
    gauges: dict[str, tuple[str, float]] = {}
    try:
        async with connection(request.app[POOL]) as conn:
            pending = await conn.fetchval("select count(*) from deliveries where state = 'pending'")
            dead = await conn.fetchval("select count(*) from deliveries where state = 'dead'")
            rows, lag = await ingest_queries.backlog(conn)
        gauges["dlr_forward_pending"] = ("Deliveries waiting to be sent or retried.", pending)
        gauges["dlr_forward_dead"] = ("Dead-lettered deliveries (replayable).", dead)
        gauges["dlr_projection_backlog_rows"] = ("Journal rows not yet projected.", rows)
        gauges["dlr_projection_lag_seconds"] = (
            "Age of the oldest journal row not yet projected (0 when caught up).",
            lag,
        )
    except Exception as exc:
        if not is_transient(exc):
            raise
    body = request.app[METRICS].render(gauges)
    return web.Response(text=body, content_type="text/plain", charset="utf-8")
