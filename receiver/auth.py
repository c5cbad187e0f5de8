"""Bearer tokens for the client API under /v1 (providers authenticate their own way)."""

from aiohttp import web

from receiver.errors import ApiError
from receiver.keys import SETTINGS
from receiver.providers.base import same


def check_bearer(request: web.Request) -> None:
    """Raises ApiError unless a request under /v1 carries one of the configured tokens."""
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
        matches = [same(t.get_secret_value(), given.strip()) for t in tokens]
        if not any(matches):
            raise ApiError(
                401, "unauthorized", "invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
            )
