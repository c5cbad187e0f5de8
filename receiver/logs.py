"""structlog set up once: JSON lines on stdout, one summary line per request."""

import asyncio
import atexit
import json
import logging
import sys
import time
from collections.abc import MutableMapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, BinaryIO

import pydantic_core
import structlog

log = structlog.get_logger()


# How long an info line may wait in the buffer. A crash can lose this much of the access log,
# never a report (those are in Postgres before they are acknowledged).
FLUSH_AFTER = 0.1


# Writes to a pipe up to this size are atomic: the workers of `serve` share one stdout, and a
# line cut in two by another worker's write would be two broken lines.
PIPE_BUF = 4096
# Written out early past this much, so a burst cannot pile up in memory.
MOST_BUFFERED = 64 * 1024


class LineSink:
    """Where rendered lines go. Warnings and errors are written at once; info and debug lines
    are buffered and written together within FLUSH_AFTER seconds, so a busy server makes one
    write(2) per few dozen requests rather than one per request. Each write holds whole
    lines and at most PIPE_BUF bytes (a longer line goes alone)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lines: list[bytes] = []
        self._size = 0
        # The loop a flush is scheduled on, if any.
        self._flush_pending: asyncio.AbstractEventLoop | None = None
        atexit.register(self.flush)

    def flush(self) -> None:
        self._flush_pending = None
        chunk: list[bytes] = []
        size = 0
        for line in self._lines:
            if chunk and size + len(line) > PIPE_BUF:
                self._write(chunk)
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._write(chunk)
        self._lines, self._size = [], 0

    def _write(self, lines: list[bytes]) -> None:
        self._stream.write(b"".join(lines))
        self._stream.flush()

    def _buffered(self, line: bytes) -> None:
        self._lines.append(line + b"\n")
        self._size += len(line) + 1
        if self._size > MOST_BUFFERED:
            self.flush()
        if not self._lines:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (start-up, CLI commands): write now
            self.flush()
            return
        # A flush scheduled on a loop that has since closed (tests run one per test) never
        # runs: schedule again on this one.
        if self._flush_pending is loop:
            return
        self._flush_pending = loop
        loop.call_later(FLUSH_AFTER, self.flush)

    def _at_once(self, line: bytes) -> None:
        self._lines.append(line + b"\n")
        self.flush()

    debug = info = _buffered
    warning = error = critical = exception = msg = _at_once


def _to_json(event: Any, **_: Any) -> bytes:
    # pydantic-core renders in one pass what json.dumps does in Python; anything it does not
    # know (an exception object, say) is written as its str().
    try:
        return pydantic_core.to_json(event, fallback=str)
    except pydantic_core.PydanticSerializationError:
        # A string that is not Unicode (a raw byte aiohttp gave as a lone surrogate): a log
        # line must never fail the request it describes, so it is written \u-escaped.
        return json.dumps(event, default=str).encode()


# The id of the request being handled, on every line logged while handling it. One variable
# of our own: structlog's general contextvars cost several times more per request.
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)


def _add_request_id(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    request_id = REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


_sink: LineSink | None = None
# Where access lines go once configured; None above info level.
_access_sink: LineSink | None = None
_configured = False


# The current second's text, made once a second rather than once a request.
_second: tuple[int, str] = (-1, "")


def utc_now_text() -> str:
    """Now, as the log lines write it (`2026-12-03T08:19:40.176534Z`, microseconds always):
    a third of what datetime.now(UTC).isoformat() costs, paid on every request."""
    global _second
    now = time.time()
    whole = int(now)
    if whole != _second[0]:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{_second[1]}.{int((now - whole) * 1_000_000):06d}Z"


def access(fields: dict[str, Any]) -> None:
    """The one line per request, rendered here rather than by structlog's processor chain
    (on a single-report webhook that chain cost a tenth of the request). Same shape as every
    other line: event, request_id, level and timestamp, as JSON. Before configure() (tests,
    the app embedded elsewhere) it goes through structlog like any other line."""
    fields["request_id"] = REQUEST_ID.get()
    if _access_sink is not None:
        fields["level"] = "info"
        fields["timestamp"] = utc_now_text()
        _access_sink.info(_to_json(fields))
    elif not _configured:
        log.info(fields.pop("event"), **fields)


class _StdlibToSink(logging.Handler):
    """Lines from the standard library's logging (asyncpg, asyncio, aiohttp) as JSON lines in
    the same sink: one object per line, its traceback inside (`exception`), never a multi-line
    traceback in the middle of the JSON stream."""

    def __init__(self, sink: LineSink) -> None:
        super().__init__()
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event: dict[str, Any] = {
                "event": record.getMessage(),
                "logger": record.name,
                "level": record.levelname.lower(),
                "timestamp": datetime.fromtimestamp(record.created, UTC)
                .isoformat()
                .replace("+00:00", "Z"),
            }
            request_id = REQUEST_ID.get()
            if request_id is not None:
                event["request_id"] = request_id
            if record.exc_info:
                event["exception"] = logging.Formatter().formatException(record.exc_info)
            line = _to_json(event)
        except Exception:  # logging must not raise into its caller
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING:
            self._sink.warning(line)
        else:
            self._sink.info(line)


class Throttle:
    """At most one line per `every` seconds for something that repeats (a 503 for each request
    during a database outage was 4,849 warnings in 10 s); `due()` says whether to write one,
    and how many were left out since the last."""

    def __init__(self, every: float) -> None:
        self._every = every
        self._last = float("-inf")
        self._skipped = 0

    def due(self) -> int | None:
        now = time.monotonic()
        if now - self._last < self._every:
            self._skipped += 1
            return None
        skipped, self._skipped, self._last = self._skipped, 0, now
        return skipped


def flush() -> None:
    if _sink is not None:
        _sink.flush()


def reset() -> None:
    """Back to structlog's defaults and no access lines (tests that configured a stream)."""
    global _sink, _access_sink, _configured
    flush()
    _sink = _access_sink = None
    _configured = False
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StdlibToSink)]:
        root.removeHandler(handler)
    structlog.reset_defaults()


def configure(level: str = "info", stream: BinaryIO | None = None) -> None:
    """JSON lines to `stream` (stdout's buffer unless given: tests read what is written)."""
    global _sink, _access_sink, _configured
    _configured = True
    if stream is not None:
        _sink = LineSink(stream)
    elif _sink is None:
        _sink = LineSink(sys.stdout.buffer)
    sink = _sink
    logging.basicConfig(handlers=[_StdlibToSink(sink)], level=level.upper(), force=True)
    numeric = logging.getLevelName(level.upper())
    _access_sink = sink if numeric <= logging.INFO else None
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_request_id,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_to_json),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *_: sink,
        cache_logger_on_first_use=True,
    )
