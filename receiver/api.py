"""Client side: register sends, look up messages and their timelines, health."""

import base64
import binascii
import dataclasses
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from receiver import accounts, instants, phones, privacy, queries
from receiver.db import Conn, connection, is_transient
from receiver.errors import ApiError, read_body
from receiver.ingest import queries as ingest_queries
from receiver.instants import Instant
from receiver.jsonio import dumps, has_nul, json_response, loads
from receiver.keys import JOURNAL, METRICS, POOL, PROJECTOR, SETTINGS
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
        return json_response(
            {"receipt_id": str(receipt.id), "messages": [], "visible": False}, status=202
        )
    async with connection(request.app[POOL]) as conn:
        rows = await queries.message_summaries(conn, provider.name, keys)
    log.info("send.registered", provider=provider.name, messages=len(keys))
    return json_response(
        {"receipt_id": str(receipt.id), "messages": [_summary(r) for r in rows], "visible": True},
        status=201,
    )


class _ErasureBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phone: str = Field(max_length=64)
    dry_run: bool = False


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
    return json_response(
        {"erasure": erasure, "dry_run": parsed.dry_run, **dataclasses.asdict(found)}
    )


async def get_message(request: web.Request) -> web.Response:
    provider = _provider(request)
    async with connection(request.app[POOL]) as conn:
        view = await message_view(conn, provider.name, request.match_info["id"])
    if view is None:
        raise ApiError(404, "message_not_found", "no message with this id")
    return json_response(view)


async def message_view(conn: Conn, provider: str, id_: str) -> dict[str, Any] | None:
    """A message with its timeline, as GET /v1/messages/{provider}/{id} answers it (and the
    console shows it); None when there is no such message."""
    row = await queries.find_message(conn, provider, id_)
    if row is None:
        return None
    aliases = await queries.message_aliases(conn, provider, row["key"])
    events = await queries.message_events(conn, provider, row["key"])
    return {
        **_summary(row),
        "status_at": row["status_at"],
        "channel": row["channel"],
        "recipient": row["recipient"],
        "reference": row["reference"],
        "group": row["group_key"],
        "account": row["account"],
        "aliases": aliases,
        "channel_order": row["channel_order"],
        "attempts": row["attempts"],
        "seq": row["seq"],
        # Polling gave up on it (past RECEIVER_POLL_MAX_AGE): its status is the last known.
        "stale": row["stale"],
        "next_poll_at": row["next_poll_at"],
        "registered_at": row["registered_at"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "events": [_event(e) for e in events],
    }


async def list_unmapped(request: web.Request) -> web.Response:
    async with connection(request.app[POOL]) as conn:
        rows = await queries.list_unmapped(conn)
    return json_response({"unmapped": [dict(r) for r in rows]})


class _ProblemQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: str | None = None
    since: Instant | None = None
    cursor: str | None = Field(default=None, max_length=1000)
    limit: int = Field(default=50, ge=1, le=500)


async def receipts_with_problems(request: web.Request) -> web.Response:
    """Request bodies that kept something unread: what `reprocess` would read again."""
    arguments = problems_arguments(request.query)
    async with connection(request.app[POOL]) as conn:
        view = await problems_view(conn, arguments)
    return json_response(view)


def problems_arguments(params: Mapping[str, str]) -> dict[str, Any]:
    """GET /v1/receipts/problems's query as queries.receipts_with_problems's arguments."""
    query = _validated(params, _ProblemQuery)
    if query.provider is not None and query.provider not in PROVIDERS:
        raise ApiError(400, "invalid_query", f"unknown provider {query.provider!r}")
    after = None
    if query.cursor:
        try:
            received, receipt_id = _decode_cursor(query.cursor)
            after = (instants.parse(received), uuid.UUID(receipt_id))
        except (TypeError, ValueError) as exc:
            raise ApiError(400, "invalid_cursor", "cursor is not one this API gave out") from exc
    return {"provider": query.provider, "since": query.since, "after": after, "limit": query.limit}


async def problems_view(conn: Conn, arguments: dict[str, Any]) -> dict[str, Any]:
    rows = await queries.receipts_with_problems(conn, **arguments)
    next_cursor = None
    if len(rows) == arguments["limit"]:
        next_cursor = _encode_cursor([rows[-1]["received_at"], rows[-1]["id"]])
    return {"receipts": [dict(r) for r in rows], "next_cursor": next_cursor}


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
    return json_response(view)


async def receipt_view(conn: Conn, receipt_id: uuid.UUID) -> dict[str, Any] | None:
    row = await queries.receipt(conn, receipt_id)
    if row is None:
        return None
    events = await queries.receipt_events(conn, receipt_id)
    body: bytes = row["body"]
    try:
        text: str | None = body.decode()
    except UnicodeDecodeError:
        text = None
    return {
        **{k: row[k] for k in ("id", "provider", "source", "received_at", "content_type")},
        "problem": row["problem"],
        "body": text,  # null when the bytes are not UTF-8: see body_base64
        "body_base64": base64.b64encode(body).decode(),
        "events": [
            {
                "message_id": e["message_key"],
                "status": e["status"],
                "provider_status": e["provider_status"],
                "channel": e["channel"],
                "occurred_at": e["occurred_at"],
            }
            for e in events
        ],
    }


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the database answers; the body says how far behind the projection is."""
    try:
        async with connection(request.app[POOL]) as conn:
            rows, lag = await ingest_queries.backlog(conn)
    except Exception as exc:
        if not is_transient(exc):
            raise
        raise ApiError(503, "not_ready", "database unreachable") from exc
    return json_response(
        {"status": "ready", "projection": {"backlog_rows": rows, "lag_seconds": round(lag, 3)}}
    )


def _summary(row: asyncpg.Record) -> dict[str, Any]:
    return {"provider": row["provider"], "id": row["key"], "status": row["status"]}


def _event(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "status": row["status"],
        "provider_status": row["provider_status"],
        "provider_code": row["provider_code"],
        "error_code": row["error_code"],
        "error_text": row["error_text"],
        "permanent": row["permanent"],
        "channel": row["channel"],
        "message_id": row["attempt_id"],
        "occurred_at": row["occurred_at"],
        "received_at": row["received_at"],
        "source": row["source"],
        "receipt_id": row["receipt_id"],  # GET /v1/receipts/{id}: the body it came in
        "details": row["details"],
    }


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


def _encode_cursor(value: list[Any]) -> str:
    return base64.urlsafe_b64encode(dumps(value).encode()).decode().rstrip("=")


def _cursor_text(value: object) -> str:
    # A cursor is ours, but it comes back from the client: NUL would reach Postgres text.
    if not isinstance(value, str) or "\x00" in value:
        raise ValueError("not a cursor string")
    return value


def _decode_cursor(cursor: str) -> Any:
    try:
        value = loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise ApiError(400, "invalid_cursor", "cursor is not one this API gave out") from exc
    # Ours never hold NUL; one that does would reach Postgres text (a 500) or a lenient parse.
    if has_nul(value):
        raise ApiError(400, "invalid_cursor", "cursor is not one this API gave out")
    return value


def _query(request: web.Request, model: type[_Q]) -> _Q:
    return _validated(request.query, model)


def _validated(params: Mapping[str, str], model: type[_Q]) -> _Q:
    try:
        return model.model_validate(dict(params))
    except ValidationError as exc:
        raise ApiError(400, "invalid_query", describe(exc)) from exc


async def search_messages(request: web.Request) -> web.Response:
    arguments = search_arguments(request.query)
    async with connection(request.app[POOL]) as conn:
        view = await search_view(conn, arguments)
    return json_response(view)


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
        decoded = _decode_cursor(query.cursor)
        try:
            created, provider, key = decoded
            after = (instants.parse(created), _cursor_text(provider), _cursor_text(key))
        except (TypeError, ValueError) as exc:
            raise ApiError(400, "invalid_cursor", "cursor is not one this API gave out") from exc
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


async def search_view(conn: Conn, arguments: dict[str, Any]) -> dict[str, Any]:
    rows = await queries.search_messages(conn, **arguments)
    next_cursor = None
    if len(rows) == arguments["limit"]:
        last = rows[-1]
        next_cursor = _encode_cursor([last["created_at"], last["provider"], last["key"]])
    return {"messages": [_listed(r) for r in rows], "next_cursor": next_cursor}


class _GroupQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cursor: str | None = Field(default=None, max_length=1000)
    limit: int = Field(default=100, ge=1, le=1000)


async def get_group(request: web.Request) -> web.Response:
    provider = _provider(request)
    group = request.match_info["id"]
    after, limit = group_query(request.query)
    async with connection(request.app[POOL]) as conn:
        view = await group_view(conn, provider.name, group, after, limit)
    if view is None:
        raise ApiError(404, "group_not_found", "no messages in this group")
    return json_response(view)


def group_query(params: Mapping[str, str]) -> tuple[str | None, int]:
    """GET /v1/groups/...'s `cursor` (decoded: the last key seen) and `limit`, checked."""
    query = _validated(params, _GroupQuery)
    return (str(_decode_cursor(query.cursor)) if query.cursor else None), query.limit


async def group_view(
    conn: Conn, provider: str, group: str, after: str | None, limit: int
) -> dict[str, Any] | None:
    """A group's counts per status and a page of its members; None when it has none."""
    counts = await queries.group_counts(conn, provider, group)
    if not counts:
        return None
    rows = await queries.group_members(conn, provider, group, after, limit)
    next_cursor = _encode_cursor(rows[-1]["key"]) if len(rows) == limit else None
    return {
        "provider": provider,
        "id": group,
        "total": sum(counts.values()),
        "counts": counts,
        "members": [_listed(r) for r in rows],
        "next_cursor": next_cursor,
    }


def _listed(row: asyncpg.Record) -> dict[str, Any]:
    return {
        **_summary(row),
        "status_at": row["status_at"],
        "channel": row["channel"],
        "recipient": row["recipient"],
        "reference": row["reference"],
        "group": row["group_key"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


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
