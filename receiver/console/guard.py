"""What every request under /console passes first: a session (else the sign-in page), the
scope its page needs, a CSRF token on every POST, and its errors as an HTML page."""

import hmac

from aiohttp import web
from aiohttp.typedefs import Handler

from receiver.console import session
from receiver.console.render import SESSION, render
from receiver.http.errors import ApiError
from receiver.http.keys import SETTINGS

# Reachable without a session: the sign-in form itself and the stylesheet it uses.
_PUBLIC = ("/console/login", "/console/static/")

# Subscriptions carry every forwarded payload and decide where message data goes: `admin`,
# as in the API. Everything else in the console only reads (`read`).
_ADMIN_PREFIX = "/console/subscriptions"

# The console's pages load nothing from anywhere else, run no inline script, and may not be
# framed (clickjacking a replay button).
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; script-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


async def guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run a console handler behind the checks above; called by the edge middleware for
    every path under /console, so a new page cannot forget them."""
    try:
        denied = await _check(request)
        response = denied if denied is not None else await handler(request)
    except ApiError as exc:
        response = render(
            request,
            "error.html",
            {"status": exc.status, "code": exc.code, "message": exc.message},
            exc.status,
        )
    except web.HTTPNotFound:
        response = render(
            request,
            "error.html",
            {"status": 404, "code": "not_found", "message": "no such page"},
            404,
        )
    for name, value in _HEADERS.items():
        response.headers.setdefault(name, value)
    return response


async def _check(request: web.Request) -> web.StreamResponse | None:
    if request.path.startswith(_PUBLIC):
        return None
    settings = request.app[SETTINGS]
    current = session.read(settings, request.cookies.get(session.COOKIE))
    if current is None:
        if request.method in ("GET", "HEAD"):
            return web.Response(status=303, headers={"Location": _login_url(request)})
        raise ApiError(401, "unauthorized", "sign in first: your session has ended")
    request[SESSION] = current
    if request.path.startswith(_ADMIN_PREFIX) and "admin" not in current.scopes:
        raise ApiError(403, "forbidden", "subscriptions need a token with the admin scope")
    if request.method not in ("GET", "HEAD"):
        form = await request.post()  # aiohttp keeps it: the handler reads the same form
        given = form.get("csrf")
        if not isinstance(given, str) or not hmac.compare_digest(
            given.encode(), current.csrf.encode()
        ):
            raise ApiError(403, "csrf", "the form is stale or not from this console: reload it")
    return None


def _login_url(request: web.Request) -> str:
    return str(request.app.router["console_login"].url_for().with_query(next=request.path_qs))
