"""The one error middleware: every failure leaves as `{"error": {"code", "message"}}`."""

from collections.abc import Mapping
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from receiver.db import is_transient
from receiver.keys import SETTINGS

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


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    # Postgres text cannot hold NUL: refused here once, rather than failing in a query later.
    if "%00" in request.raw_path:  # path and query as sent, before percent-decoding
        return error_response(400, "bad_request", "the URL may not contain NUL (%00)")
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.extra, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        return error_response(exc.status, code, exc.reason, headers=_keep_allow(exc))
    except Exception as exc:
        if is_transient(exc):
            # Providers retry on 5xx: a database outage costs a delay, not a report.
            log.warning("database.unavailable", error=f"{type(exc).__name__}: {exc}")
            return error_response(
                503,
                "database_unavailable",
                "the database is unreachable; retry later",
                headers={"Retry-After": "5"},
            )
        log.exception("request.crashed")
        return error_response(500, "internal", "internal error")


def _keep_allow(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}


@web.middleware
async def body_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a declared oversized body before reading a byte of it.

    aiohttp's own limit only trips once that much has arrived, so a client announcing a huge
    body and trickling it in would hold a handler until then.
    """
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "body_too_large", f"body larger than {limit} bytes")
    return await handler(request)
