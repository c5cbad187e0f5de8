"""A console page rendered with what every page needs (the session's CSRF token, its scopes,
the search vocabulary)."""

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from receiver.console import session
from receiver.providers import PROVIDERS
from receiver.status import Status

SESSION = web.RequestKey("console_session", session.Session)


def render(
    request: web.Request, template: str, context: dict[str, Any], status: int = 200
) -> web.Response:
    current = request.get(SESSION)
    return aiohttp_jinja2.render_template(
        template,
        request,
        {
            **context,
            "csrf": current.csrf if current else "",
            "admin": current is not None and "admin" in current.scopes,
            "signed_in": current is not None,
            "providers": sorted(PROVIDERS),
            "statuses": [s.value for s in Status],
        },
        status=status,
    )
