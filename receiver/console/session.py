"""Console sign-in: a signed, expiring session cookie and the CSRF tokens bound to it.

Nothing is kept on the server: with several HTTP workers (RECEIVER_WORKERS) a session held in
one process's memory would be unknown to the next. The cookie names the API token only by a
keyed fingerprint, and its scopes are read from the configuration on every request, so a token
taken out of RECEIVER_API_TOKENS ends its sessions at once.
"""

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from aiohttp import web

from receiver.providers.base import same
from receiver.settings import Settings, split_token

COOKIE = "dlr_console"
# Holds a nonce between the sign-in form and its POST: the form's CSRF token is bound to it.
LOGIN_COOKIE = "dlr_console_login"


@dataclass(frozen=True, slots=True)
class Session:
    scopes: frozenset[str]
    csrf: str


def secret(settings: Settings) -> bytes:
    """The key sessions are signed with: RECEIVER_CONSOLE_SECRET, or one derived from the API
    tokens, which every worker reads from the same environment."""
    if settings.console_secret is not None:
        material = b"set\n" + settings.console_secret.get_secret_value().encode()
    else:
        tokens = sorted(t.get_secret_value() for t in settings.api_tokens)
        material = b"derived\n" + "\n".join(tokens).encode()
    return hashlib.sha256(b"dlr-receiver console session\n" + material).digest()


def _mac(key: bytes, purpose: str, value: str) -> str:
    digest = hmac.new(key, f"{purpose}\n{value}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def token_scopes(settings: Settings, given: str) -> frozenset[str] | None:
    """The scopes of a configured API token, None when `given` is not one."""
    scopes: set[str] = set()
    matched = False
    # Every entry compared, as for bearer tokens: the time taken says nothing about which.
    for entry in settings.api_tokens:
        token, token_scopes = split_token(entry.get_secret_value())
        if same(token, given):
            matched = True
            scopes |= token_scopes
    return frozenset(scopes) if matched else None


def issue(settings: Settings, token: str, now: float | None = None) -> str:
    """A cookie value for a signed-in token: `fingerprint.expiry.nonce.mac`."""
    key = secret(settings)
    expires = int((now if now is not None else time.time()) + settings.console_session_seconds)
    body = f"{_mac(key, 'token', token)}.{expires}.{secrets.token_urlsafe(16)}"
    return f"{body}.{_mac(key, 'session', body)}"


def read(settings: Settings, value: str | None, now: float | None = None) -> Session | None:
    """The session a cookie value carries; None when it is absent, forged, expired or its
    token is no longer configured."""
    if not value or len(value) > 300 or not value.isascii():
        return None
    key = secret(settings)
    body, _, mac = value.rpartition(".")
    if not hmac.compare_digest(_mac(key, "session", body).encode(), mac.encode()):
        return None
    fingerprint, expires, nonce = body.split(".")
    if int(expires) < (now if now is not None else time.time()):
        return None
    scopes: set[str] = set()
    for entry in settings.api_tokens:
        token, entry_scopes = split_token(entry.get_secret_value())
        if hmac.compare_digest(_mac(key, "token", token).encode(), fingerprint.encode()):
            scopes |= entry_scopes
    if not scopes:
        return None
    return Session(frozenset(scopes), _mac(key, "csrf", nonce))


def login_csrf(settings: Settings, nonce: str) -> str:
    return _mac(secret(settings), "login", nonce)


def is_secure(request: web.Request) -> bool:
    """Whether the browser reached us over TLS: directly, or through a proxy that says so."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


def set_cookie(
    request: web.Request, response: web.StreamResponse, name: str, value: str, max_age: float
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=int(max_age),
        path="/console",
        httponly=True,
        samesite="Strict",
        secure=is_secure(request),
    )


def clear_cookie(response: web.StreamResponse, name: str) -> None:
    response.del_cookie(name, path="/console")
