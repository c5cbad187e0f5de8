"""What a journal row carries into its text columns: never a value Postgres refuses, which
would fail every request in the same group commit."""

from receiver.ingest.queries import JournalRow
from receiver.reports import Receipt


def test_a_header_with_stray_bytes_and_a_problem_with_nul_are_made_storable() -> None:
    # aiohttp hands over a header's non-UTF-8 byte as a lone surrogate (surrogateescape).
    receipt = Receipt("infobip", "webhook", b"{}", "application/json; x=\udcff", "bad\x00id")
    row = JournalRow.of(receipt, None, 0)
    assert row.content_type is not None
    assert row.problem is not None
    row.content_type.encode()  # would raise on a lone surrogate
    assert "\x00" not in row.problem
    assert row.problem == "bad\\x00id"
