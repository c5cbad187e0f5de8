"""The console's reading pages: sign-in, dashboard, search, a message, a group, a receipt and
the problems. Each page asks the API's own functions (receiver/http/), so what the console
shows is what /v1 answers: the same view models (receiver/http/views.py), as dicts for the
templates (datetimes kept, for the charts and the `when` filter)."""

import secrets
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from receiver.console import charts, session
from receiver.console import queries as console_queries
from receiver.console.render import SESSION, render
from receiver.db import connection
from receiver.forwarding import broker_url
from receiver.http import groups, messages, queries, receipts
from receiver.http.errors import ApiError
from receiver.http.keys import POOL, SETTINGS
from receiver.providers import PROVIDERS

# Search form fields passed on to the API's search as they are; the rest are the console's.
_SEARCH_FIELDS = (
    "recipient",
    "reference",
    "account",
    "status",
    "provider",
    "since",
    "until",
    "cursor",
)
_PAGE = 50


# --- Sign-in ---------------------------------------------------------------------------------


def _next_page(value: object) -> str:
    """Where to go after signing in: only a console page of ours, never another site
    (`//evil.example` and `/console\\..` are refused)."""
    ours = isinstance(value, str) and value.startswith("/console") and len(value) < 2000
    if ours and isinstance(value, str) and "\\" not in value:
        return value
    return "/console"


async def login_form(request: web.Request) -> web.Response:
    return _login_page(request, request.query.get("next", ""), None, 200)


def _login_page(
    request: web.Request, next_page: str, error: str | None, status: int
) -> web.Response:
    nonce = secrets.token_urlsafe(16)
    response = render(
        request,
        "login.html",
        {
            "login_csrf": session.login_csrf(request.app[SETTINGS], nonce),
            "next": _next_page(next_page),
            "error": error,
        },
        status,
    )
    session.set_cookie(request, response, session.LOGIN_COOKIE, nonce, 3600)
    return response


async def login(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    form = await request.post()
    nonce = request.cookies.get(session.LOGIN_COOKIE, "")
    given_csrf = form.get("csrf")
    next_page = _next_page(form.get("next"))
    if (
        not nonce
        or not isinstance(given_csrf, str)
        or not secrets.compare_digest(
            given_csrf.encode(), session.login_csrf(settings, nonce).encode()
        )
    ):
        return _login_page(request, next_page, "The form expired: please sign in again.", 403)
    token = form.get("token")
    scopes = None
    if isinstance(token, str) and 0 < len(token) <= 500:
        scopes = session.token_scopes(settings, token.strip())
    if scopes is None:
        return _login_page(request, next_page, "That token is not one of ours.", 401)
    if "read" not in scopes:
        return _login_page(request, next_page, "That token lacks the read scope.", 403)
    assert isinstance(token, str)
    response = web.Response(status=303, headers={"Location": next_page})
    session.set_cookie(
        request,
        response,
        session.COOKIE,
        session.issue(settings, token.strip()),
        settings.console_session_seconds,
    )
    session.clear_cookie(response, session.LOGIN_COOKIE)
    return response


async def logout(request: web.Request) -> web.Response:
    response = web.Response(status=303, headers={"Location": "/console/login"})
    session.clear_cookie(response, session.COOKIE)
    return response


# --- Dashboard -------------------------------------------------------------------------------


async def dashboard(request: web.Request) -> web.Response:
    now = datetime.now(UTC)
    async with connection(request.app[POOL]) as conn:
        minutes = await console_queries.reports_per_minute(conn, 60)
        windows = {
            "the last 24 hours": await console_queries.delivery_stats(conn, now - timedelta(1)),
            "the last 7 days": await console_queries.delivery_stats(conn, now - timedelta(7)),
        }
    series: dict[str, list[int]] = {}
    for row in minutes:
        per = series.setdefault(row["provider"], [0] * 60)
        if 0 <= row["ago"] < 60:
            per[59 - row["ago"]] += row["n"]
    sections = []
    for name, rows in windows.items():
        named = [(f"{r['provider']} {r['channel'] or '?'}", r) for r in rows]
        rates = [
            (
                label,
                r["delivered"] / r["total"],
                f"{100 * r['delivered'] / r['total']:.1f}% of {r['total']}",
            )
            for label, r in named
        ]
        medians = [
            (label, r["median_seconds"], _duration(r["median_seconds"]))
            for label, r in named
            if r["median_seconds"] is not None
        ]
        sections.append(
            {
                "name": name,
                "rows": rows,
                "rate_chart": charts.hbars(rates, 1.0, f"Delivery rate, {name}"),
                "median_chart": charts.hbars(
                    medians,
                    max((m[1] for m in medians), default=1.0),
                    f"Median time to delivery, {name}",
                ),
                "has_medians": bool(medians),
            }
        )
    return render(
        request,
        "dashboard.html",
        {
            "per_minute": charts.lines(
                series, "Reports per minute per provider, last hour", "last 60 minutes"
            ),
            "any_reports": bool(series),
            "sections": sections,
        },
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# --- Search ----------------------------------------------------------------------------------


async def search(request: web.Request) -> web.Response:
    # An empty field of the form means "any", not "the empty string".
    form = {k: v.strip() for k, v in request.query.items() if k in _SEARCH_FIELDS and v.strip()}
    message_id = request.query.get("id", "").strip()
    if message_id:
        return await _find_by_id(request, message_id, form.get("provider"))
    results = None
    error = None
    if form:
        try:
            arguments = messages.search_arguments(
                {**form, "limit": str(_PAGE)}, request.app[SETTINGS].phone_regions
            )
        except ApiError as exc:
            error = exc.message
        else:
            async with connection(request.app[POOL]) as conn:
                results = (await messages.search_view(conn, arguments)).model_dump()
    next_query = None
    if results and results["next_cursor"]:
        next_query = {**form, "cursor": results["next_cursor"]}
    return render(
        request,
        "search.html",
        {"form": form, "results": results, "error": error, "next_query": next_query},
        400 if error else 200,
    )


async def _find_by_id(request: web.Request, message_id: str, provider: str | None) -> web.Response:
    """A message by any provider id of it: one provider, or each in turn when none is given."""
    if provider is not None and provider not in PROVIDERS:
        raise ApiError(400, "invalid_query", f"unknown provider {provider!r}")
    if len(message_id) > 500:
        raise ApiError(400, "invalid_query", "id: at most 500 characters")
    found = []
    async with connection(request.app[POOL]) as conn:
        for name in [provider] if provider else sorted(PROVIDERS):
            row = await queries.find_message(conn, name, message_id)
            if row is not None:
                found.append(row)
    if len(found) == 1:
        url = request.app.router["console_message"].url_for(
            provider=found[0]["provider"], id=found[0]["key"]
        )
        return web.Response(status=303, headers={"Location": str(url)})
    results = {"messages": [messages.listed(r).model_dump() for r in found], "next_cursor": None}
    form = {"id": message_id, **({"provider": provider} if provider else {})}
    return render(
        request,
        "search.html",
        {"form": form, "results": results, "error": None, "next_query": None},
    )


# --- A message, a group, a receipt -----------------------------------------------------------


async def message(request: web.Request) -> web.Response:
    provider = _provider(request)
    current = request[SESSION]
    async with connection(request.app[POOL]) as conn:
        found = await messages.message_view(conn, provider, request.match_info["id"])
        if found is None:
            raise ApiError(404, "message_not_found", "no message with this id")
        view = found.model_dump()
        deliveries = None
        if "admin" in current.scopes:  # deliveries carry what subscribers were sent: admin
            deliveries = [
                {**dict(d), "url": broker_url.redact(d["url"])}
                for d in await console_queries.message_deliveries(
                    conn, provider, view["message_id"]
                )
            ]
    lanes = _lanes(view["events"])
    drawn = [
        (
            name,
            [
                charts.Point(
                    e["occurred_at"] or e["received_at"],
                    e["status"],
                    f"{e['status']} ({e['provider_status'] or '-'})",
                )
                for e in events
            ],
        )
        for name, events in lanes
    ]
    return render(
        request,
        "message.html",
        {
            "m": view,
            "lanes": lanes,
            "timeline": charts.timeline(drawn, "Timeline per channel attempt"),
            "deliveries": deliveries,
        },
    )


def _lanes(events: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The events per channel attempt (channel and that attempt's provider id), in the order
    the attempts began."""
    lanes: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for event in events:
        key = (event["channel"] or "message", event["channel_message_id"] or "")
        lanes.setdefault(key, []).append(event)
    ordered = sorted(lanes.items(), key=lambda kv: min(_when(e) for e in kv[1]))
    return [(f"{ch} {attempt}".strip(), evs) for (ch, attempt), evs in ordered]


def _when(event: Mapping[str, Any]) -> datetime:
    moment: datetime = event["occurred_at"] or event["received_at"]
    return moment


async def group(request: web.Request) -> web.Response:
    provider = _provider(request)
    after, limit = groups.group_query({k: v for k, v in request.query.items() if k == "cursor"})
    async with connection(request.app[POOL]) as conn:
        found = await groups.group_view(conn, provider, request.match_info["id"], after, _PAGE)
    del limit
    if found is None:
        raise ApiError(404, "group_not_found", "no messages in this group")
    view = found.model_dump()
    return render(
        request,
        "group.html",
        {"g": view, "bar": charts.status_bar(view["counts"], "Messages per status")},
    )


async def receipt(request: web.Request) -> web.Response:
    try:
        receipt_id = uuid.UUID(request.match_info["id"])
    except ValueError as exc:
        raise ApiError(404, "receipt_not_found", "no such receipt") from exc
    async with connection(request.app[POOL]) as conn:
        view = await receipts.receipt_view(conn, receipt_id)
    if view is None:
        raise ApiError(404, "receipt_not_found", "no such receipt")
    return render(request, "receipt.html", {"r": view.model_dump()})


async def problems(request: web.Request) -> web.Response:
    cursor = {k: v for k, v in request.query.items() if k in ("cursor", "provider") and v}
    arguments = receipts.problems_arguments({**cursor, "limit": str(_PAGE)})
    async with connection(request.app[POOL]) as conn:
        unmapped = await queries.list_unmapped(conn)
        page = (await receipts.problems_view(conn, arguments)).model_dump()
    return render(request, "problems.html", {"unmapped": unmapped, "receipts": page})


def _provider(request: web.Request) -> str:
    name = request.match_info["provider"]
    if name not in PROVIDERS:
        raise ApiError(404, "unknown_provider", "unknown provider")
    return name
