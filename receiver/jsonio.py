"""JSON out: handler responses (datetimes as ISO-8601, UUIDs as strings) and jsonb column text."""

import json
import uuid
from datetime import datetime
from typing import Any

import pydantic_core
from aiohttp import web
from pydantic import BaseModel


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
        data = pydantic_core.to_json(_without_nul(value))
    return data.decode()


def model_jsonb_text(model: BaseModel) -> str:
    """A provider payload as jsonb text, its unset (None) fields left out; encoded in one pass
    in pydantic-core rather than dumped to dicts first (this runs once per report)."""
    text = model.model_dump_json(exclude_none=True)
    if "\\u0000" in text:
        return jsonb_text(model.model_dump(mode="json", exclude_none=True))
    return text


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    if isinstance(value, dict):
        return {str(k).replace("\x00", ""): _without_nul(v) for k, v in value.items()}
    return value
