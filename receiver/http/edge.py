"""The one middleware, the edge of every request: its id and its one log line, what is refused
before a handler runs (NUL in the URL, an oversized body, a missing bearer token, a console
page without a session), and every failure as a JSON error (as an HTML page in the console).

One function rather than a chain of four: each layer of aiohttp middleware is a coroutine per
request, and on the acknowledgement path those layers cost more than the journal write.
"""

import asyncio
import itertools
import secrets
import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from receiver import logs
from receiver.console import guard as console_guard
from receiver.http.auth import check_bearer
from receiver.http.errors import as_response, refuse_early
from receiver.http.keys import METRICS

# Where a handler leaves facts for the request's log line (a webhook: provider, reports).
LOG_FACTS = web.RequestKey("log_facts", dict[str, Any])


# Our own request ids: a random prefix per process and a counter. Unique across workers and
# restarts, and no random draw and UUID on every request.
_OWN_PREFIX = secrets.token_hex(8)
_OWN_IDS = (f"{_OWN_PREFIX}{n:016x}" for n in itertools.count())


def _request_id(request: web.Request) -> str:
    """The caller's X-Request-Id if it can go back out as it came (printable ASCII, at most
    100 characters), else one of our own: raw bytes in it made the answer's header a 500."""
    given = request.headers.get("X-Request-Id", "")
    if given and len(given) <= 100 and given.isascii() and given.isprintable():
        return given
    return next(_OWN_IDS)


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    # The request id travels in a context variable, so every line logged while handling it
    # carries it.
    request_id = _request_id(request)
    token = logs.REQUEST_ID.set(request_id)
    started = time.perf_counter()
    status = 500
    try:
        try:
            refuse_early(request)
            check_bearer(request)
            if request.path.startswith("/console"):
                response = await console_guard.guarded(request, handler)
            else:
                response = await handler(request)
        except Exception as exc:
            response = as_response(exc)
        except asyncio.CancelledError:
            # The client went away and the server cancelled its handler: not a server error.
            status = 499
            raise
        status = response.status
        response.headers["X-Request-Id"] = request_id
        return response
    finally:
        elapsed = time.perf_counter() - started
        facts = request.get(LOG_FACTS)
        if request.path.startswith("/webhooks/"):
            request.app[METRICS].webhook(
                request.match_info.get("provider", "?"),
                facts.get("account") if facts else None,
                status,
                elapsed,
            )
        # Path only: query strings and bodies may carry secrets or personal data.
        fields: dict[str, Any] = {
            "event": "http.request",
            "method": request.method,
            # A webhook URL token is a secret: never in a log line.
            "path": (
                f"/webhooks/{request.match_info.get('provider', '?')}/<token>"
                if "token" in request.match_info
                else request.path
            ),
            "status": status,
            "ms": round(elapsed * 1000, 2),
            "remote": request.remote,
        }
        # Behind a TLS proxy `remote` is the proxy: the client it names is logged beside it,
        # as given (the proxy's word, not checked; cut short so a header cannot bloat a line).
        forwarded = request.headers.get("X-Forwarded-For")
        if forwarded:
            fields["forwarded_for"] = forwarded[:200]
        if facts:
            fields.update(facts)
        logs.access(fields)
        logs.REQUEST_ID.reset(token)
