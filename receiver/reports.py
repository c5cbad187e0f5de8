"""What every source hands to ingest: raw receipts and the status updates parsed from them."""

import json
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple

from receiver.status import Status

Source = Literal["webhook", "poll", "send"]


class StatusUpdate(NamedTuple):
    """One report about one message (or one channel attempt of it), in the shared vocabulary.

    `message_key` is the provider's id of the logical message (Messente omnimessage_id, Infobip
    messageId, Comapi messageId, Mercury `{dispatch}:{uniqueId}`); `aliases` are other provider
    ids that find it (Messente channel message_ids). `dedup_key` makes a repeated report (retry,
    or pushed and polled) collapse into one event.

    A named tuple rather than a frozen dataclass: one is made for every report on the
    acknowledgement path, and a tuple is built in a quarter of the time; its field order is
    also the journal's compact form (receiver/ingest/codec.py).
    """

    provider: str
    message_key: str
    status: Status
    dedup_key: str
    provider_status: str | None = None
    channel: str | None = None
    attempt_id: str | None = None
    occurred_at: datetime | None = None
    provider_code: str | None = None
    error_code: str | None = None
    error_text: str | None = None
    permanent: bool | None = None
    # The provider said something we cannot map: stored as `unknown` and counted.
    unmapped: bool = False
    aliases: tuple[str, ...] = ()
    # What the provider said, as jsonb text (receiver/jsonio.py), stored with the event.
    details_json: str = "{}"
    # Facts about the message rather than the event, known from a send registration or a report.
    recipient: str | None = None
    group_key: str | None = None
    reference: str | None = None
    channel_order: tuple[str, ...] | None = None
    registered: bool = False
    # Re-mapping (python -m receiver reprocess): the dedup key of the stored event this one
    # corrects. The status rules then use this in its place; both stay on the timeline.
    corrects: str | None = None

    @property
    def details(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.details_json)
        return parsed


def new_id(at: float | None = None) -> uuid.UUID:
    """A time-ordered UUID, laid out as version 7: Unix milliseconds (now, or `at`, seconds)
    in the top 48 bits, random below. In creation order, receipts go in at the right-hand end
    of their key and of the events' receipt index, and retention finds old ones by key range.

    Uniqueness, not secrecy: the module PRNG costs a fraction of os.urandom, which uuid4()
    calls on every request.
    """
    ms = int((time.time() if at is None else at) * 1000)
    value = (ms & _MS_MASK) << 80 | random.getrandbits(80)
    # Version 7 and the RFC 4122 variant (Python 3.11's UUID() accepts versions 1-5 only).
    value = value & ~(0xF << 76) | 7 << 76
    value = value & ~(0x3 << 62) | 0x2 << 62
    return uuid.UUID(int=value)


def first_id_at(at: float) -> uuid.UUID:
    """The smallest id new_id can give at or after `at`: ids below it are older."""
    return uuid.UUID(int=(int(at * 1000) & _MS_MASK) << 80)


_MS_MASK = (1 << 48) - 1


@dataclass(frozen=True)
class Receipt:
    """A request body exactly as it arrived, kept so a mapping fix can be replayed on history."""

    provider: str
    source: Source
    body: bytes
    content_type: str | None = None
    problem: str | None = None
    id: uuid.UUID = field(default_factory=new_id)
    # Set by python -m receiver reprocess: the stored receipt whose body this one read again.
    # Its events point there, and this receipt's own body is left empty.
    replays: uuid.UUID | None = None
    # The provider account it came by (verified with, or polled through); None: the default.
    account: str | None = None


@dataclass(frozen=True)
class Parsed:
    """A parser's answer: the updates it read, and what it could not read (kept on the receipt)."""

    updates: list[StatusUpdate]
    problems: list[str] = field(default_factory=list)

    @property
    def problem(self) -> str | None:
        """What the receipt keeps: every problem, or None when all of it was read."""
        return "; ".join(self.problems) or None


def nul_field(update: StatusUpdate) -> str | None:
    """The first field of an update holding NUL, or None. Postgres text refuses NUL, and an
    id, channel or status with one cannot be stored under what the provider sent (stripping
    it could merge two messages): such a report is refused alone, as a problem of its
    receipt, whose raw body stays for a later fix to read again."""
    for name, value in zip(StatusUpdate._fields, update, strict=True):
        if isinstance(value, str):
            if "\x00" in value:
                return name
        elif isinstance(value, tuple) and any("\x00" in item for item in value):
            return name
    return None


def nul_problem(where: str, field: str) -> str:
    return f"{where}: {field} contains NUL, which cannot be stored"


def may_hold_nul(body: bytes) -> bool:
    """Whether a JSON body can carry NUL in a string at all: only as the escape \\u0000 (a raw
    NUL byte is not JSON). Most bodies cannot, and their reports need no look."""
    return b"\\u0000" in body


class InvalidReport(ValueError):  # noqa: N818 - reads better than InvalidReportError
    """The body cannot be read as this provider's report at all."""
