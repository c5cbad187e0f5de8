"""Receipt ids: unique, valid RFC 4122 version 7 UUIDs, ordered by the time they were made."""

import time

from receiver.reports import first_id_at, new_id


def test_ids_are_version_7_and_unique() -> None:
    ids = [new_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert {(i.version, i.variant) for i in ids} == {(7, "specified in RFC 4122")}


def test_ids_sort_by_the_millisecond_they_were_made_in() -> None:
    now = time.time()
    moments = [now - 86400 * 400, now - 86400, now - 1, now]
    ids = [new_id(at=t) for t in moments]
    assert ids == sorted(ids)
    # The same order as Postgres compares uuids: byte by byte.
    assert [i.bytes for i in ids] == sorted(i.bytes for i in ids)
    bound = first_id_at(now - 60)
    assert [i < bound for i in ids] == [True, True, False, False]
    assert new_id(at=now - 60) >= bound
