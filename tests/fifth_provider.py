"""A fifth provider, defined only in the tests: what adding a provider takes is this one
module, registered through receiver.providers.register. It pushes reports signed with a hex
HMAC-SHA256 in `X-Fifth-Signature`, answers `GET /messages/{id}` with a Bearer API key, and
registers sends from `{"id": ...}`."""

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from receiver.providers.base import (
    Fetched,
    MessagePolling,
    PollError,
    PollTarget,
    Provider,
    Push,
    Registration,
    Timestamp,
    Verification,
    describe,
    fetch,
    invalid,
    verify_hex_hmac,
)
from receiver.reports import InvalidReport, Parsed, StatusUpdate
from receiver.settings import Account
from receiver.status import Status

NAME = "fifth"
STATES = {"SENT": Status.SENT, "DELIVERED": Status.DELIVERED, "FAILED": Status.FAILED}


class _Report(BaseModel):
    id: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00]+$")
    state: str = Field(max_length=50)
    at: Timestamp


def _update(report: _Report) -> StatusUpdate:
    return StatusUpdate(
        provider=NAME,
        message_key=report.id,
        status=STATES.get(report.state, Status.UNKNOWN),
        dedup_key=f"{report.state}|{report.at.isoformat()}",
        provider_status=report.state,
        occurred_at=report.at,
        unmapped=report.state not in STATES,
    )


def verify(account: Account, headers: Mapping[str, str], body: bytes) -> Verification:
    return verify_hex_hmac(account.secret, headers, "X-Fifth-Signature", body, "sha256")


def parse_webhook(body: bytes, content_type: str | None, received_at: datetime) -> Parsed:
    try:
        return Parsed([_update(_Report.model_validate_json(body))])
    except ValidationError as exc:
        raise invalid(exc) from exc


def parse_registration(registration: Registration) -> list[StatusUpdate]:
    response = registration.response
    if not isinstance(response, dict):
        raise InvalidReport("response must be an object")
    try:
        sent = _Report.model_validate(
            {**response, "state": "ACCEPTED", "at": registration.received_at}
        )
    except ValidationError as exc:
        raise invalid(exc) from exc
    return [_update(sent)._replace(status=Status.ACCEPTED, dedup_key="send", registered=True)]


def ready(account: Account) -> bool:
    return account.api_key is not None and account.base_url is not None


async def poll(session: aiohttp.ClientSession, account: Account, target: PollTarget) -> Fetched:
    if account.api_key is None or account.base_url is None:
        raise PollError("no API key")
    url = f"{account.base_url}/messages/{quote(target.key, safe='')}"
    headers = {"Authorization": f"Bearer {account.api_key.get_secret_value()}"}
    body = await fetch(session, url, headers=headers)
    if body is None:
        return Fetched(b"", [], ["unknown message (404)"])
    try:
        return Fetched(body, [_update(_Report.model_validate_json(body))])
    except ValidationError as exc:
        return Fetched(body, [], [describe(exc)])


PROVIDER = Provider(
    name=NAME,
    parse_registration=parse_registration,
    push=Push(verify=verify, parse=parse_webhook),
    poll=MessagePolling(fetch=poll, ready=ready),
)


class FakeFifthApi:
    """The fifth provider's status API: one message state each, behind a Bearer key."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.base = ""  # its URL, once served
        self.states: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/messages/{id}", self._message)
        return app

    async def _message(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": "unauthorized"}, status=401)
        key = request.match_info["id"]
        self.calls.append(key)
        if key not in self.states:
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response(self.states[key])
