"""Errors: every failure leaves as `{"error": {"code", "message"}}` (http/edge.py sends it)."""

from collections.abc import Mapping
from typing import Any

import structlog
from aiohttp import web

from receiver.db import is_transient
from receiver.http.keys import SETTINGS
from receiver.logs import Throttle

log = structlog.get_logger()


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})


def error_response(
    status: int,
    code: str,
    message: str,
    extra: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body: dict[str, Any] = {"error": {"code": code, "message": message, **(extra or {})}}
    return web.json_response(body, status=status, headers=headers)


# aiohttp's own refusals, named in our vocabulary.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


class ClientGone(Exception):  # noqa: N818 - a state, not a coding error
    """The client closed its connection before its body was read: nobody is left to answer."""


async def read_body(request: web.Request) -> bytes:
    """The request's body; ClientGone when the client hangs up while sending it. aiohttp says
    so with a ConnectionResetError, which is an OSError: left alone it would read as a
    database outage (a warning, a 503 in the metrics) for what is the client's doing."""
    try:
        return await request.read()
    except ConnectionResetError as exc:
        raise ClientGone(str(exc)) from exc


def refuse_early(request: web.Request) -> None:
    """What is refused before any handler runs: NUL in the URL, a declared oversized body."""
    # Postgres text cannot hold NUL: refused here once, rather than failing in a query later.
    if "%00" in request.raw_path:  # path and query as sent, before percent-decoding
        raise ApiError(400, "bad_request", "the URL may not contain NUL (%00)")
    # aiohttp's own limit only trips once that much has arrived, so a client announcing a huge
    # body and trickling it in would hold a handler until then.
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "body_too_large", f"body larger than {limit} bytes")


# One warning a second while the database is out, with how many 503s went unlogged.
_OUTAGE_LINES = Throttle(1.0)


def as_response(exc: Exception) -> web.Response:
    """The JSON answer for a failure; a non-error HTTPException (a redirect) is re-raised."""
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.extra, exc.headers)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        code = _HTTP_CODES.get(exc.status, "http_error")
        return error_response(exc.status, code, exc.reason, headers=_keep_allow(exc))
    if isinstance(exc, ClientGone):
        log.info("http.client_disconnected", reason=str(exc))
        # Nginx's code for it: the answer reaches nobody, the log line and metric say why.
        return error_response(499, "client_disconnected", "the client closed the connection")
    if is_transient(exc):
        # Providers retry on 5xx: a database outage costs a delay, not a report.
        skipped = _OUTAGE_LINES.due()
        if skipped is not None:
            log.warning(
                "database.unavailable", error=f"{type(exc).__name__}: {exc}", not_logged=skipped
            )
        return error_response(
            503,
            "database_unavailable",
            "the database is unreachable; retry later",
            headers={"Retry-After": "5"},
        )
    log.error("request.crashed", exc_info=exc)
    return error_response(500, "internal", "internal error")


def _keep_allow(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}
