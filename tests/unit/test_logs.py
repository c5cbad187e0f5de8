"""The log sink: warnings reach stdout at once, info lines within FLUSH_AFTER, in order, and
never a line cut across two writes."""

import asyncio
import io
from datetime import UTC, datetime
from typing import Any

from receiver import logs


class Writes(io.BytesIO):
    """Under the sink's buffer, in place of the file: remembers each write(2) it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[bytes] = []

    def write(self, data: Any, /) -> int:
        self.calls.append(bytes(data))
        return super().write(data)


def sink() -> tuple[logs.LineSink, Writes]:
    raw = Writes()
    return logs.LineSink(io.BufferedWriter(raw, buffer_size=1 << 16)), raw


async def test_info_lines_wait_for_the_timer_and_warnings_do_not() -> None:
    s, raw = sink()
    s.info(b'{"event":"one"}')
    s.info(b'{"event":"two"}')
    assert raw.calls == []
    await asyncio.sleep(logs.FLUSH_AFTER * 2)
    assert raw.calls == [b'{"event":"one"}\n{"event":"two"}\n']

    s.info(b'{"event":"three"}')
    s.warning(b'{"event":"four"}')
    # The warning takes the waiting line out with it, in order.
    assert raw.calls[1:] == [b'{"event":"three"}\n{"event":"four"}\n']


async def test_each_write_holds_whole_lines_and_fits_an_atomic_pipe_write() -> None:
    s, raw = sink()
    lines = [
        b'{"event":"http.request","n":%d,"pad":"%s"}' % (i, b"x" * (i % 300)) for i in range(200)
    ]
    for line in lines:
        s.info(line)
    s.info(b'{"event":"long","pad":"' + b"y" * 5000 + b'"}')
    s.flush()
    assert all(call.endswith(b"\n") for call in raw.calls)
    assert all(len(call) <= logs.PIPE_BUF for call in raw.calls[:-1])
    assert len(raw.calls[-1]) > logs.PIPE_BUF  # a line longer than that goes alone
    assert b"".join(raw.calls).splitlines()[:-1] == lines


def test_without_an_event_loop_every_line_is_written_at_once() -> None:
    s, raw = sink()
    s.info(b'{"event":"migrate.done"}')
    assert raw.calls == [b'{"event":"migrate.done"}\n']


def test_a_flush_left_on_a_closed_loop_does_not_hold_up_the_next_loops_lines() -> None:
    s, raw = sink()

    async def log_and_leave() -> None:
        s.info(b'{"event":"one"}')

    async def log_and_wait() -> None:
        s.info(b'{"event":"two"}')
        await asyncio.sleep(logs.FLUSH_AFTER * 2)

    asyncio.run(log_and_leave())  # its loop closes before the flush was due
    asyncio.run(log_and_wait())
    assert b"".join(raw.calls) == b'{"event":"one"}\n{"event":"two"}\n'


def test_standard_library_lines_are_one_json_object_each_traceback_inside() -> None:
    import json
    import logging

    out = io.BytesIO()
    logs.configure("info", stream=out)
    try:
        try:
            raise ConnectionResetError("peer went away\nsecond line")
        except ConnectionResetError:
            logging.getLogger("asyncpg.pool").exception("error on connection close")
        logging.getLogger("asyncio").info("plain %s", "info")
        logs.flush()
    finally:
        logs.reset()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert (first["event"], first["logger"], first["level"]) == (
        "error on connection close",
        "asyncpg.pool",
        "error",
    )
    assert "ConnectionResetError: peer went away" in first["exception"]
    assert (second["event"], second["level"]) == ("plain info", "info")


def test_a_throttle_lets_one_line_a_period_through_and_counts_the_rest() -> None:
    throttle = logs.Throttle(0.2)
    assert throttle.due() == 0
    assert [throttle.due() for _ in range(5)] == [None] * 5
    import time

    time.sleep(0.25)
    assert throttle.due() == 5


def test_an_outage_is_one_warning_a_second_not_one_per_request() -> None:
    from structlog.testing import capture_logs

    from receiver.http import errors

    kept = errors._OUTAGE_LINES
    errors._OUTAGE_LINES = logs.Throttle(60)  # a fresh one: other tests had outages too
    try:
        with capture_logs() as lines:
            answers = [
                errors.as_response(ConnectionRefusedError(111, "refused")) for _ in range(500)
            ]
    finally:
        errors._OUTAGE_LINES = kept
    assert {a.status for a in answers} == {503}
    assert [e["event"] for e in lines] == ["database.unavailable"]
    assert lines[0]["not_logged"] == 0


def test_a_value_that_is_not_unicode_still_renders_as_one_json_line() -> None:
    import json

    # aiohttp gives a raw header byte as a lone surrogate, which UTF-8 cannot encode.
    line = logs._to_json({"event": "http.request", "request_id": "\udcff\udcfe"})
    assert b"\n" not in line
    assert json.loads(line)["event"] == "http.request"


def test_the_access_lines_clock_reads_as_iso_utc_and_keeps_up() -> None:
    before = datetime.now(UTC)
    texts = [logs.utc_now_text() for _ in range(2000)]
    after = datetime.now(UTC)
    for text in (texts[0], texts[-1]):
        # Always six digits of microseconds and a Z, even on a whole second.
        assert len(text) == len("2026-12-03T08:19:40.176534Z")
        assert text.endswith("Z")
        read = datetime.fromisoformat(text.replace("Z", "+00:00"))
        assert before.replace(microsecond=0) <= read <= after
