"""The journal's compact form of parsed status updates: JSON bytes, one array per update.

Written on the acknowledgement path (encoded in pydantic-core, in one pass) and read by the
projector. The format is versioned, so a journal written by one release is read by the next;
an unreadable row is the projector's poison, never the request's.
"""

from datetime import datetime
from typing import Any

import pydantic_core

from receiver.reports import StatusUpdate
from receiver.status import Status

VERSION = 1

# The order of a StatusUpdate's fields in each encoded array. Appending is compatible (older
# rows are shorter: the missing tail takes the defaults); reordering is not.
_FIELDS = (
    "provider",
    "message_key",
    "status",
    "dedup_key",
    "provider_status",
    "channel",
    "attempt_id",
    "occurred_at",
    "provider_code",
    "error_code",
    "error_text",
    "permanent",
    "unmapped",
    "aliases",
    "details_json",
    "recipient",
    "group_key",
    "reference",
    "channel_order",
    "registered",
    "corrects",
)
_OCCURRED_AT = _FIELDS.index("occurred_at")
_STATUS = _FIELDS.index("status")
_ALIASES = _FIELDS.index("aliases")
_ORDER = _FIELDS.index("channel_order")


# The compact form is the tuple itself: a change to StatusUpdate's fields must come here first.
assert StatusUpdate._fields == _FIELDS, "StatusUpdate's fields and the journal format differ"


def encode(updates: list[StatusUpdate]) -> bytes:
    return pydantic_core.to_json({"v": VERSION, "u": updates})


def decode(data: bytes) -> list[StatusUpdate]:
    """ValueError for anything this release cannot read."""
    document = pydantic_core.from_json(data)
    if not isinstance(document, dict) or document.get("v") != VERSION:
        raise ValueError("journal updates: unknown format")
    return [_update(row) for row in document["u"]]


def _update(row: list[Any]) -> StatusUpdate:
    if not isinstance(row, list) or len(row) < _ALIASES:
        raise ValueError("journal updates: a malformed update")
    values = dict(zip(_FIELDS, row, strict=False))
    values["status"] = Status(row[_STATUS])
    if row[_OCCURRED_AT] is not None:
        values["occurred_at"] = datetime.fromisoformat(row[_OCCURRED_AT])
    values["aliases"] = tuple(row[_ALIASES])
    if len(row) > _ORDER and row[_ORDER] is not None:
        values["channel_order"] = tuple(row[_ORDER])
    return StatusUpdate(**values)
