"""Moments given in /v1 queries, bodies and cursors: with a zone (UTC when none is given),
and expressible in UTC. `0001-01-01T00:00:00+14:00` is a valid ISO 8601 string that is before
year 1 in UTC; Python cannot convert it, and it was a 500 wherever it reached a query."""

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator


def in_utc(value: datetime) -> datetime:
    """`value` in UTC; ValueError for a moment outside years 1-9999 in UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("outside the years 1 to 9999 in UTC") from None


def parse(text: object) -> datetime:
    """A moment from a cursor; ValueError (or TypeError) for anything else."""
    if not isinstance(text, str):
        raise TypeError("not a string")
    if "\x00" in text:  # fromisoformat reads past it
        raise ValueError("NUL in a moment")
    return in_utc(datetime.fromisoformat(text))


Instant = Annotated[datetime, AfterValidator(in_utc)]
