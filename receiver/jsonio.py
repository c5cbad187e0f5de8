"""JSON in (provider bodies read with the standard library), and out: handler responses
(datetimes as ISO-8601, UUIDs as strings) and jsonb column text."""

import json
import re
import uuid
from datetime import datetime
from typing import Any

import pydantic_core
from aiohttp import web
from pydantic import BaseModel

# JSON may escape half of a UTF-16 surrogate pair on its own ("\ud800"). json.loads gives it
# back as a lone surrogate: not Unicode, and neither UTF-8, Postgres text nor jsonb can hold
# it. Only such an escape can produce one (raw UTF-8 bytes for it fail to decode).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_NUL = re.compile("\x00")


# Providers' documents are a few levels deep. A much deeper one is refused (ValueError) before
# anything recursive meets it: json.loads itself, the jsonb encoder (about 200 levels).
MAX_DEPTH = 64


def loads(body: bytes) -> Any:
    """json.loads, with lone surrogates replaced by U+FFFD: a report that carries one is
    otherwise good, and is stored (its raw body is kept as it came). ValueError for what is
    not JSON, or is nested deeper than MAX_DEPTH."""
    # pydantic-core's parser first, at a third of the cost on a provider's report. It refuses
    # what json.loads reads differently (a lone surrogate, a byte-order mark), and those take
    # the long way below; so does a body with enough brackets to nest too deep.
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        try:
            return pydantic_core.from_json(body)
        except ValueError:
            pass
    try:
        value = json.loads(body)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None
    # Only a body with more brackets than MAX_DEPTH can nest deeper: counting them runs in C,
    # walking the document in Python cost as much as parsing it.
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH and _deeper_than(value, MAX_DEPTH):
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    if _SURROGATE_ESCAPE.search(body):
        value = _replace_in_strings(value, _SURROGATE, "\ufffd")
    return value


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(value: Any) -> str:
    return json.dumps(value, default=_default)


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.json_response(value, status=status, dumps=dumps)


def jsonb_text(value: Any) -> str:
    """JSON text for a jsonb column. Postgres refuses the NUL character, which providers' text
    may carry; it is rare, so it is looked for in the encoded bytes before any cleaning."""
    data = pydantic_core.to_json(value)
    if b"\\u0000" in data:
        data = pydantic_core.to_json(_replace_in_strings(value, _NUL, ""))
    return data.decode()


def model_jsonb_text(model: BaseModel) -> str:
    """A provider payload as jsonb text, its unset (None) fields left out; encoded in one pass
    in pydantic-core rather than dumped to dicts first (this runs once per report)."""
    text = model.model_dump_json(exclude_none=True)
    if "\\u0000" in text:
        return jsonb_text(model.model_dump(mode="json", exclude_none=True))
    return text


def _deeper_than(value: Any, limit: int) -> bool:
    # A stack, not recursion: the point is not to find the recursion limit.
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in item)
    return False


def has_nul(value: Any) -> bool:
    """Whether any string in a JSON value (keys included) holds NUL, which Postgres text and
    jsonb refuse."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list):
        return any(has_nul(v) for v in value)
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    return False


def _replace_in_strings(value: Any, pattern: re.Pattern[str], by: str) -> Any:
    """A JSON value with `pattern` replaced in every string in it, keys included."""
    if isinstance(value, str):
        return pattern.sub(by, value)
    if isinstance(value, list):
        return [_replace_in_strings(v, pattern, by) for v in value]
    if isinstance(value, dict):
        return {
            pattern.sub(by, str(k)): _replace_in_strings(v, pattern, by) for k, v in value.items()
        }
    return value


def model_response(model: BaseModel, status: int = 200) -> web.Response:
    """A handler's answer from its view model (receiver/http/views.py), encoded as json_response
    encodes: fields left at their default and never set (a secret not shown) are left out."""
    return json_response(model.model_dump(exclude_unset=True), status=status)
