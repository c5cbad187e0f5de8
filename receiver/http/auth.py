"""Bearer tokens for the client API under /v1, and what each may do (providers authenticate
their own way)."""

from aiohttp import web

from receiver.http.errors import ApiError
from receiver.http.keys import SETTINGS
from receiver.providers.base import same
from receiver.settings import split_token

# The scope each /v1 route needs, by method and route pattern (HEAD as GET). A route not
# listed needs `admin`: the subscriptions API (its secrets, deliveries, replays, dead
# letters), and any route added without a thought for this table, which then fails closed.
_NEEDS = {
    ("GET", "/v1/messages"): "read",
    ("GET", "/v1/messages/{provider}/{id}"): "read",
    ("GET", "/v1/groups/{provider}/{id}"): "read",
    ("GET", "/v1/unmapped"): "read",
    ("GET", "/v1/receipts/problems"): "read",
    ("GET", "/v1/receipts/{id}"): "read",
    ("POST", "/v1/messages/{provider}"): "write",
}


def needed_scope(method: str, route: str) -> str:
    return _NEEDS.get(("GET" if method == "HEAD" else method, route), "admin")


def check_bearer(request: web.Request) -> None:
    """Raises ApiError unless a request under /v1 carries one of the configured tokens, with
    the scope its route needs."""
    # A path prefix rather than a per-handler decorator, so a new /v1 route cannot forget it.
    if request.path.startswith("/v1/") or request.path == "/v1":
        tokens = request.app[SETTINGS].api_tokens
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if not tokens:
            raise ApiError(401, "unauthorized", "no API tokens configured (RECEIVER_API_TOKENS)")
        if scheme.lower() != "bearer" or not given:
            raise ApiError(
                401,
                "unauthorized",
                "send Authorization: Bearer <token>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        # Compare against every token so the time taken says nothing about which one is close.
        # A token listed twice has the scopes of both entries.
        scopes: set[str] = set()
        matched = False
        for entry in tokens:
            token, token_scopes = split_token(entry.get_secret_value())
            if same(token, given.strip()):
                matched = True
                scopes |= token_scopes
        if not matched:
            raise ApiError(
                401, "unauthorized", "invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
            )
        resource = request.match_info.route.resource
        if resource is None:
            return  # no such route: the 404 (or 405) says so, whatever the token may do
        needed = needed_scope(request.method, resource.canonical)
        if needed not in scopes:
            raise ApiError(
                403,
                "forbidden",
                f"this token lacks the {needed!r} scope that {request.method} "
                f"{resource.canonical} needs",
            )
