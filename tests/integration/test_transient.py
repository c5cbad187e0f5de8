"""Which database errors are an outage (a 503, retried) and which are a bug (a 500, logged with
its traceback): real errors from a real connection, not constructed ones."""

import asyncpg
import pytest

from receiver.db import is_transient


async def caught(conn: asyncpg.Connection, query: str, *args: object) -> BaseException:
    with pytest.raises(Exception) as info:  # noqa: PT011 - the error's type is the question
        await conn.fetch(query, *args)
    return info.value


async def test_our_own_mistakes_are_not_an_outage(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        wrong_count = await caught(conn, "select $1::int", 1, 2)
        wrong_type = await caught(conn, "select $1::int", "one")
        bad_sql = await caught(conn, "select from nowhere_at_all")
    finally:
        await conn.close()
    assert isinstance(wrong_count, asyncpg.InterfaceError)
    assert isinstance(wrong_type, asyncpg.DataError | asyncpg.InterfaceError)
    assert not is_transient(wrong_count)
    assert not is_transient(wrong_type)
    assert not is_transient(bad_sql)


async def test_a_connection_that_is_gone_is_an_outage(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    await conn.close()
    assert is_transient(await caught(conn, "select 1"))
    refused = None
    try:
        await asyncpg.connect("postgresql://postgres@127.0.0.1:1/none", timeout=5)
    except Exception as exc:  # whatever a refused connection raises
        refused = exc
    assert refused is not None
    assert is_transient(refused)
