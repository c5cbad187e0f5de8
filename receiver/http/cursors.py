"""Page cursors: one format for every paginated /v1 list, base64url of a JSON array of the
last row's sort key. Opaque to clients, and checked like any other input when they come back."""

import base64
import binascii
import uuid
from datetime import datetime
from typing import Any

from receiver import instants
from receiver.http.errors import ApiError
from receiver.jsonio import dumps, has_nul, loads

_INVALID = "cursor is not one this API gave out"


def encode(*key: Any) -> str:
    return base64.urlsafe_b64encode(dumps(list(key)).encode()).decode().rstrip("=")


def decode(cursor: str) -> Any:
    """The JSON value inside a cursor (a 400 invalid_cursor if it is not one)."""
    try:
        value = loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise invalid() from exc
    # Ours never hold NUL; one that does would reach Postgres text (a 500) or a lenient parse.
    if has_nul(value):
        raise invalid()
    return value


def invalid() -> ApiError:
    return ApiError(400, "invalid_cursor", _INVALID)


def text(value: object) -> str:
    # A cursor is ours, but it comes back from the client: NUL would reach Postgres text.
    if not isinstance(value, str) or "\x00" in value:
        raise ValueError("not a cursor string")
    return value


def moment_and_id(cursor: str) -> tuple[datetime, uuid.UUID]:
    """A (timestamp, uuid) keyset position: receipts, subscriptions, deliveries."""
    try:
        moment, id_ = decode(cursor)
        return instants.parse(moment), uuid.UUID(text(id_))
    except (TypeError, ValueError) as exc:
        raise invalid() from exc
