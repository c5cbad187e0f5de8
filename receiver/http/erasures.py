"""Erasure of a phone number over the API (the erase command does the same)."""

import dataclasses

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from receiver.http import views
from receiver.http.errors import ApiError, read_body
from receiver.http.keys import POOL
from receiver.http.openapi import Operation, documented
from receiver.jsonio import model_response
from receiver.maintenance import privacy
from receiver.providers.base import describe


class _ErasureBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phone: str = Field(max_length=64, description="the number, in any spelling")
    dry_run: bool = Field(default=False, description="count what would go, remove nothing")


@documented(
    Operation(
        "Erase everything stored about one phone number (or count it: dry_run)",
        {200: views.Erased},
        {400: "invalid_body"},
        body=_ErasureBody,
        description="Messages with their events, aliases, status changes and deliveries; "
        "the number redacted in raw receipts. The log line names the erasure id, never the "
        "number.",
    )
)
async def erase(request: web.Request) -> web.Response:
    """Everything stored about one phone number: counted (`dry_run`) or removed."""
    try:
        parsed = _ErasureBody.model_validate_json(await read_body(request))
        number = privacy.number_digits(parsed.phone)
    except ValidationError as exc:
        raise ApiError(400, "invalid_body", describe(exc)) from exc
    except privacy.InvalidNumberError as exc:
        raise ApiError(400, "invalid_body", f"phone: {exc}") from exc
    erasure, found = await privacy.erase(request.app[POOL], number, dry_run=parsed.dry_run)
    return model_response(
        views.Erased(erasure=erasure, dry_run=parsed.dry_run, **dataclasses.asdict(found))
    )
