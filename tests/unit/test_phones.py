"""Phone numbers as E.164, whatever the spelling."""

import pytest

from receiver.phones import e164, national, spellings, stored


@pytest.mark.parametrize(
    "text",
    [
        "+3725555555",
        "3725555555",  # Infobip writes no +
        " 3725555555",  # a + in a query string arrives as a space
        "003725555555",  # the international prefix
        "+372 555-55.55",  # separators people type
        "+372 (5555) 555",
    ],
)
def test_every_common_spelling_is_one_e164_number(text: str) -> None:
    assert e164(text) == "+3725555555"


@pytest.mark.parametrize(
    "text",
    [
        "alice@example.com",  # an email recipient (Mercury, Infobip email)
        "6936862208",  # a national number without country code: no country to give it
        "+0000000000",  # no country has it
        "12",  # too short
        "3" * 30,  # too long
        "+3725555555\x00",  # NUL
        "+372\u0665555555",  # a non-ASCII digit
        "",
    ],
)
def test_what_is_not_an_international_number_is_kept_as_written(text: str) -> None:
    assert e164(text) is None
    assert stored(text) == (text or None) or text == ""
    assert spellings(text) == [text]


def test_a_search_also_finds_the_spellings_stored_before_normalising() -> None:
    assert set(spellings("+372 5555555")) >= {"+3725555555", "3725555555"}


@pytest.mark.parametrize(
    ("text", "region", "expected"),
    [
        ("098 117 8000", "HR", "+385981178000"),
        ("0981178000", "HR", "+385981178000"),
        ("5555 555", "EE", "+3725555555"),
        ("(0)98-117-8000", "HR", "+385981178000"),
        # Written internationally: e164() reads it, not the region.
        ("+385981178000", "EE", None),
        ("00385981178000", "EE", None),
        # Not a number, or not one possible there.
        ("alice@example.com", "HR", None),
        ("12", "HR", None),
        ("0" * 41, "HR", None),
        # Possible only locally (no area code): not a number anyone can be reached at.
        ("5555555", "US", None),
    ],
)
def test_a_national_number_is_read_as_dialled_in_its_region(
    text: str, region: str, expected: str | None
) -> None:
    assert national(text, region) == expected


def test_a_search_spells_a_national_number_for_every_region() -> None:
    found = spellings("5555 555", ["EE", "HR"])
    assert {"+3725555555", "3725555555", "+3855555555", "3855555555"} <= set(found)
    assert "5555 555" in found
    # Without regions, as before: no country to give it.
    assert spellings("5555 555") == ["5555 555"]
