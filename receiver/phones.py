"""Phone numbers as E.164 (`+3725555555`), whatever spelling a provider or a user writes."""

import functools
import re
from collections.abc import Iterable

import phonenumbers

# What people and providers put between digits: spaces, dashes, dots, brackets, slashes.
_SEPARATORS = re.compile(r"[\s\-./()]+")
_DIGITS = re.compile(r"\+?[0-9]{6,17}")

# Possible rather than valid: operators open new ranges before the library knows them. An
# international number may be one possible only locally (phonenumbers' is_possible_number);
# a national one is read only when it is possible as a whole number (a US seven-digit number
# has no area code: no one can be reached at it from the country code alone).
_POSSIBLE = frozenset(
    {
        phonenumbers.ValidationResult.IS_POSSIBLE,
        phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY,
    }
)
_POSSIBLE_WHOLE = frozenset({phonenumbers.ValidationResult.IS_POSSIBLE})


def e164(text: str | None) -> str | None:
    """The E.164 form of an international number: `+372 5555 555`, `3725555555` (Infobip
    writes no `+`), `003725555555` and ` 3725555555` (a `+` in a query string arrives as a
    space) are all `+3725555555`. None for anything else (an email, a national number with
    no country code, a number no country has): that is kept as written."""
    if not text or len(text) > 40:
        return None
    return _e164(text)


# The projector asks once per report, and a message's reports name one number: phonenumbers'
# parse was a sixth of the projector's CPU on single reports. Keys are at most 40 characters.
@functools.lru_cache(maxsize=65536)
def _e164(text: str) -> str | None:
    compact = _SEPARATORS.sub("", text)
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    if not _DIGITS.fullmatch(compact):
        return None
    if not compact.startswith("+"):
        compact = "+" + compact
    return _formatted(compact, None, _POSSIBLE)


def _formatted(compact: str, region: str | None, possible: frozenset[int]) -> str | None:
    """E.164 of `compact` read in `region` (None: it starts with its +country code), if its
    possibility is one of `possible`."""
    try:
        number = phonenumbers.parse(compact, region)
    except phonenumbers.NumberParseException:
        return None
    if phonenumbers.is_possible_number_with_reason(number) not in possible:
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def stored(text: str | None) -> str | None:
    """A recipient as it is stored: E.164 when it is an international number, else as is."""
    return e164(text) or text


def national(text: str, region: str) -> str | None:
    """The E.164 form of a number as dialled inside `region` (ISO 3166: `EE`, `HR`): with
    `HR`, `098 117 8000` is `+385981178000`. None for what is not a possible number there,
    and for a number written internationally (`+`, `00`): e164() reads that one."""
    if not text or len(text) > 40:
        return None
    return _national(text, region)


@functools.lru_cache(maxsize=4096)
def _national(text: str, region: str) -> str | None:
    compact = _SEPARATORS.sub("", text)
    if compact.startswith(("+", "00")) or not _DIGITS.fullmatch(compact):
        return None
    return _formatted(compact, region, _POSSIBLE_WHOLE)


def spellings(text: str, regions: Iterable[str] = ()) -> list[str]:
    """What a search for `text` matches: its E.164 form, and as written (the spellings
    stored before numbers were normalised: `+3725555555` and Infobip's `3725555555`). A
    number without its country code is also read as dialled in each of `regions`: `5555555`
    with `EE` finds `+3725555555`, and with `EE,HR` also `+3855555555`."""
    found = {f for f in [e164(text), *(national(text, r) for r in regions)] if f}
    if not found:
        return [text]
    return sorted({text, text.strip(), *found, *(f[1:] for f in found)})
