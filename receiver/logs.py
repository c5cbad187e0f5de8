"""structlog set up once: JSON lines on stdout, one summary line per request."""

import logging
import sys
import time

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from receiver.keys import METRICS
from receiver.reports import new_id

log = structlog.get_logger()


def configure(level: str = "info") -> None:
    logging.basicConfig(format="%(message)s", stream=sys.stdout, level=level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    # The request id travels in contextvars, so every line logged while handling it carries it.
    request_id = (request.headers.get("X-Request-Id") or new_id().hex)[:100]
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-Id"] = request_id
        return response
    finally:
        if request.path.startswith("/webhooks/"):
            request.app[METRICS].inc(
                "dlr_webhook_requests_total",
                provider=request.match_info.get("provider", "?"),
                status=str(status),
            )
        # Path only: query strings and bodies may carry secrets or personal data.
        log.info(
            "http.request",
            method=request.method,
            path=request.path,
            status=status,
            ms=round((time.perf_counter() - started) * 1000, 2),
            remote=request.remote,
        )
