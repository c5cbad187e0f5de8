"""Personal data: credentials kept out of stored receipts, and the erasure of everything
stored about one phone number (its messages with their events, aliases, status changes and
deliveries; the number wherever it appears in a raw receipt or the journal's parsed form)."""

import re
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import asyncpg
import pydantic_core
import structlog

from receiver.db import connection

log = structlog.get_logger()

# Keys whose values are credentials wherever they appear in a stored registration (Mercury's
# SendMessages sample carries a `password` per recipient). Compared without case, `_` or `-`.
_CREDENTIAL_KEYS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "secret",
        "clientsecret",
        "apikey",
        "apisecret",
        "accesstoken",
        "refreshtoken",
        "authorization",
    }
)
REMOVED = "[removed]"


def _is_credential(key: str) -> bool:
    return key.lower().replace("_", "").replace("-", "") in _CREDENTIAL_KEYS


def _scrub(value: Any) -> tuple[Any, bool]:
    if isinstance(value, dict):
        changed = False
        out: dict[str, Any] = {}
        for key, item in value.items():
            if _is_credential(key) and item is not None:
                out[key], changed = REMOVED, True
            else:
                out[key], inner = _scrub(item)
                changed = changed or inner
        return out, changed
    if isinstance(value, list):
        items = [_scrub(item) for item in value]
        return [item for item, _ in items], any(changed for _, changed in items)
    return value, False


def without_credentials(body: bytes) -> bytes:
    """A registration body as it may be stored: every credential value replaced by
    "[removed]". Unchanged, byte for byte, when it holds none (or is not JSON)."""
    try:
        document = pydantic_core.from_json(body)
    except ValueError:
        return body
    scrubbed, changed = _scrub(document)
    return pydantic_core.to_json(scrubbed) if changed else body


class InvalidNumberError(ValueError):
    """Not something a phone number can be."""


_SEPARATORS = re.compile(r"[\s().\-/]")


def number_digits(number: str) -> str:
    """The digits of an international number: `+372 5555-5555`, `00372...` and `372...` are
    one number (providers write it each way: Messente with +, Infobip and Mercury without)."""
    digits = _SEPARATORS.sub("", number)
    if digits.startswith("+"):
        digits = digits[1:]
    elif digits.startswith("00"):
        digits = digits[2:]
    if not (digits.isascii() and digits.isdigit() and 6 <= len(digits) <= 20):
        raise InvalidNumberError("a phone number is 6-20 digits, optionally after + or 00")
    return digits


@dataclass
class Erased:
    """What an erasure found (a dry run) or removed."""

    messages: int = 0
    events: int = 0
    aliases: int = 0
    status_changes: int = 0
    deliveries: int = 0
    receipts: int = 0


# Messages about the number: its recipient, or any of its events' details (a report that
# names the number where the message itself has no recipient). Digits only reach the
# pattern (number_digits), so it cannot be a pattern of the caller's making.
_MATCH = """
    create temporary table erasing on commit drop as
    select m.provider, m.key from messages m
    where regexp_replace(m.recipient, '[^0-9]', '', 'g') in ($1, '00' || $1)
       or exists (
            select 1 from events e
            where e.provider = m.provider and e.message_key = m.key
              and e.details::text ~ ('(^|[^0-9])' || $1 || '([^0-9]|$)'))
"""

_COUNT = """
    select
        (select count(*) from erasing),
        (select count(*) from events e join erasing x
            on e.provider = x.provider and e.message_key = x.key),
        (select count(*) from aliases a join erasing x
            on a.provider = x.provider and a.message_key = x.key),
        (select count(*) from status_changes s join erasing x
            on s.provider = x.provider and s.message_key = x.key),
        (select count(*) from deliveries d join erasing x
            on d.provider = x.provider and d.message_key = x.key)
"""

# Deliveries (pending ones too: their payload names the number) have no foreign key to the
# message; events, aliases and status changes go with it through the cascade.
_DELETE = """
    with deliveries_gone as (
        delete from deliveries d using erasing x
        where d.provider = x.provider and d.message_key = x.key
    )
    delete from messages m using erasing x where m.provider = x.provider and m.key = x.key
"""

# Journal rows holding the digits anywhere, raw body or parsed form; _redact decides which
# really name the number (not a longer number that contains it).
_JOURNAL_CANDIDATES = """
    select id, received_at, body, updates from journal
    where position($1::bytea in body) > 0 or position($1::bytea in coalesce(updates, ''))> 0
    order by id
"""
_JOURNAL_REDACT = """
    update journal set body = $3, updates = $4 where id = $1 and received_at = $2
"""


def _redact(data: bytes, digits: str) -> bytes:
    """The number replaced wherever it stands alone (with +, 00 or neither): by `erased`
    inside a JSON or XML string, by 0 where it was a bare JSON number, so what was readable
    stays readable (reprocess reads these bodies again)."""
    pattern = re.compile(rb"(?<![0-9])(?:\+|00)?" + digits.encode() + rb"(?![0-9])")

    def replace(match: re.Match[bytes]) -> bytes:
        before = data[match.start() - 1 : match.start()]
        return b"erased" if before in (b'"', b">", b"'") else b"0"

    return pattern.sub(replace, data)


Progress = Callable[[int, int], None]


async def erase(
    pool: asyncpg.Pool, number: str, *, dry_run: bool, progress: Progress | None = None
) -> tuple[str, Erased]:
    """Everything stored about `number`, counted (dry run) or removed. Returns an id for this
    erasure (what the log line and the caller share: the number itself is never logged)."""
    digits = number_digits(number)
    erasure = str(uuid.uuid4())
    found = Erased()
    # Messages first, then the journal, then messages once more: one the projector wrote from
    # a journal row between the first pass and its redaction goes in the second.
    for pass_number in (1, 2):
        async with connection(pool) as conn, conn.transaction():
            await conn.execute(_MATCH, digits)
            counts = await conn.fetchrow(_COUNT)
            assert counts is not None
            for name, count in zip(
                ("messages", "events", "aliases", "status_changes", "deliveries"),
                counts,
                strict=True,
            ):
                setattr(found, name, getattr(found, name) + count)
            if not dry_run:
                await conn.execute(_DELETE)
        if pass_number == 1:
            found.receipts = await _journal(pool, digits, dry_run, progress)
        if dry_run:
            break
    log.info("erasure.done", erasure=erasure, dry_run=dry_run, **asdict(found))
    return erasure, found


async def _journal(
    pool: asyncpg.Pool, digits: str, dry_run: bool, progress: Progress | None
) -> int:
    # Read in a transaction of its own that writes nothing (no transaction id, so it holds no
    # projection back); each redaction is then a short write of its own.
    async with connection(pool) as conn:
        rows = await conn.fetch(_JOURNAL_CANDIDATES, digits.encode())
    redacted = 0
    for done, row in enumerate(rows, 1):
        body = _redact(row["body"], digits)
        updates = None if row["updates"] is None else _redact(row["updates"], digits)
        if body != row["body"] or updates != row["updates"]:
            redacted += 1
            if not dry_run:
                async with connection(pool) as conn:
                    await conn.execute(
                        _JOURNAL_REDACT, row["id"], row["received_at"], body, updates
                    )
        if progress is not None:
            progress(done, len(rows))
    return redacted
