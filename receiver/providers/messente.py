"""Messente Omnichannel API: signed delivery reports, omnimessage registration, status codes."""

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from receiver.jsonio import loads, model_jsonb_text
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
    basic_auth,
    clean,
    describe,
    fetch,
    invalid,
    sign_hex_hmac,
    verify_hex_hmac,
)
from receiver.reports import (
    InvalidReport,
    Parsed,
    StatusUpdate,
    may_hold_nul,
    nul_field,
    nul_problem,
)
from receiver.settings import Account, Settings
from receiver.status import Status

NAME = "messente"

# Messente DLR `status` values (SDK enum `Status`). Compared upper-cased.
STATUS_MAP: dict[str, Status] = {
    "ACK": Status.SENT,  # operator accepted it for delivery
    "ACCEPTD": Status.SENT,  # sitting in the operator's delivery queue
    "DELIVRD": Status.DELIVERED,
    "SEEN": Status.READ,  # OTT channels only (err 10)
    "UNDELIV": Status.FAILED,
    "FAILED": Status.FAILED,
    # In the SDK enum but not the docs table: SMPP's "deleted", a final failure.
    "DELETED": Status.FAILED,
    "REJECTD": Status.REJECTED,
    "NACK": Status.REJECTED,
    "EXPIRED": Status.EXPIRED,
    # The operator itself reported an unknown outcome: a known value that means "unknown".
    "UNKNOWN": Status.UNKNOWN,
}


class _DeliveryResult(BaseModel):
    """One DLR body (the SDK's DeliveryResult plus `to` and `omnimessage_id`)."""

    model_config = ConfigDict(extra="allow")

    omnimessage_id: str = Field(min_length=1, max_length=200)  # as _KEY_MAX
    message_id: str | None = Field(default=None, min_length=1, max_length=200)
    # Null while Messente is still processing.
    status: str | None = Field(default=None, max_length=100)
    channel: str | None = Field(default=None, max_length=50)
    to: str | None = None
    sender: str | None = None
    # 0-10 machine codes, 999 the temporary error; null when not processed yet.
    err: int | None = None
    error: str | None = None
    timestamp: Timestamp | None = None
    price_info: dict[str, Any] | None = None


def verify(account: Account, headers: Mapping[str, str], body: bytes) -> Verification:
    """X-Messente-Signature: hex HMAC-SHA256 of the raw body, keyed with the API password."""
    return verify_hex_hmac(account.secret, headers, "X-Messente-Signature", body, "sha256")


def sign(password: str, body: bytes) -> str:
    """The signature Messente would send; for tests, tools and the README's curl example."""
    return sign_hex_hmac(password, body, "sha256")


def check_webhook(body: bytes, content_type: str | None) -> int:
    """A report is checked here and parsed in the projector: validating it and building its
    update was most of what a Messente request cost before its answer. What names the message
    is checked now, so a body that cannot be a report still gets its 400 at once; one whose
    other fields do not parse is kept with its problem, for reprocess after a parser fix."""
    try:
        document = loads(body)
    except ValueError as exc:  # UnicodeDecodeError included
        raise InvalidReport(f"body is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise InvalidReport("body must be a JSON object (one delivery report)")
    key = document.get("omnimessage_id")
    if not isinstance(key, str) or not 1 <= len(key) <= _KEY_MAX:
        raise InvalidReport(f"omnimessage_id must be a string of 1 to {_KEY_MAX} characters")
    return 1


_KEY_MAX = 200


def parse_webhook(body: bytes, content_type: str | None, received_at: datetime) -> Parsed:
    try:
        report = _DeliveryResult.model_validate_json(body)
    except ValidationError as exc:
        raise invalid(exc) from exc
    update = report_to_update(report)
    if may_hold_nul(body) and (field := nul_field(update)) is not None:
        # Not a 400: Messente would only retry the same bytes. Kept raw, listed as a problem.
        return Parsed([], [nul_problem("body", field)])
    return Parsed([update])


def report_to_update(report: _DeliveryResult) -> StatusUpdate:
    """One DeliveryResult, pushed or polled, as an update. Both give the same dedup key."""
    raw_status = report.status.strip().upper() if report.status else None
    if raw_status is None:
        status, unmapped = Status.ACCEPTED, False
    elif raw_status in STATUS_MAP:
        status, unmapped = STATUS_MAP[raw_status], False
    else:
        status, unmapped = Status.UNKNOWN, True
    occurred_at = report.timestamp
    stamp = occurred_at.isoformat() if occurred_at else f"err={report.err}"
    channel = report.channel.strip().lower() if report.channel else None
    return StatusUpdate(
        provider=NAME,
        message_key=report.omnimessage_id,
        status=status,
        dedup_key=f"{report.message_id or channel}|{raw_status}|{stamp}",
        provider_status=clean(report.status, 100),
        channel=channel,
        attempt_id=report.message_id,
        occurred_at=occurred_at,
        provider_code=None if report.err is None else str(report.err),
        error_code=None if report.err in (None, 0) else str(report.err),
        error_text=clean(report.error),
        # 999 is the one code Messente documents as temporary.
        permanent=None if report.err in (None, 0, 10) else report.err != 999,
        unmapped=unmapped,
        aliases=(report.message_id,) if report.message_id else (),
        details_json=model_jsonb_text(report),
        recipient=clean(report.to, 100),
        # The omnimessage is the group of its channel messages.
        group_key=report.omnimessage_id,
    )


class _SentMessage(BaseModel):
    channel: str = Field(min_length=1, max_length=50)
    message_id: str = Field(min_length=1, max_length=200)
    sender: str | None = None


class _SendResponse(BaseModel):
    """`POST /v1/omnimessage` 201 body."""

    messages: list[_SentMessage] = Field(min_length=1)
    omnimessage_id: str = Field(min_length=1, max_length=200)
    to: str | None = None


class _RequestMessage(BaseModel):
    channel: str = Field(default="sms", max_length=50)


class _SendRequest(BaseModel):
    """The omnimessage as sent: its `messages` list is the fallback order."""

    to: str | None = None
    messages: list[_RequestMessage] = Field(default_factory=list)


def parse_registration(registration: Registration) -> list[StatusUpdate]:
    try:
        response = _SendResponse.model_validate(registration.response)
        request = (
            _SendRequest.model_validate(registration.request)
            if registration.request is not None
            else None
        )
    except ValidationError as exc:
        raise invalid(exc) from exc
    order = tuple(m.channel.lower() for m in request.messages) if request else None
    recipient = response.to or (request.to if request else None)
    return [
        StatusUpdate(
            provider=NAME,
            message_key=response.omnimessage_id,
            status=Status.ACCEPTED,
            dedup_key=f"send|{sent.message_id}",
            channel=sent.channel.lower(),
            attempt_id=sent.message_id,
            occurred_at=registration.received_at,
            aliases=(sent.message_id,),
            details_json=model_jsonb_text(sent),
            recipient=clean(recipient, 100),
            group_key=response.omnimessage_id,
            reference=clean(registration.reference, 500),
            channel_order=order or None,
            registered=True,
        )
        for sent in response.messages
    ]


class _StatusResponse(BaseModel):
    """`GET /v1/omnimessage/{id}/status`: every channel's DeliveryResult, in send order."""

    model_config = ConfigDict(extra="allow")

    omnimessage_id: str | None = None
    to: str | None = None
    statuses: list[dict[str, Any]] = Field(default_factory=list)


def default_account(settings: Settings) -> Account:
    """RECEIVER_MESSENTE_*: one API key, whose password both signs reports and polls."""
    return Account(
        secret=settings.messente_api_password,
        api_username=settings.messente_api_username,
        base_url=settings.messente_base_url,
    )


def _api_password(account: Account) -> SecretStr | None:
    # Messente's API password is the signature key too: `secret` serves for both.
    return account.api_password or account.secret


def poll_ready(account: Account) -> bool:
    return bool(account.api_username and _api_password(account) and account.base_url)


async def poll(session: aiohttp.ClientSession, account: Account, target: PollTarget) -> Fetched:
    password = _api_password(account)
    if not (account.api_username and password and account.base_url):
        raise PollError("the account has no Messente API credentials")
    base = account.base_url.rstrip("/")
    url = f"{base}/v1/omnimessage/{quote(target.key, safe='')}/status"
    headers = basic_auth(account.api_username, password.get_secret_value())
    body = await fetch(session, url, headers=headers)
    if body is None:
        return Fetched(b"", [], ["Messente does not know this omnimessage (404)"])
    try:
        response = _StatusResponse.model_validate_json(body)
    except ValidationError as exc:
        return Fetched(body, [], [describe(exc)])
    updates, problems = [], []
    order = []
    for index, item in enumerate(response.statuses):
        # The docs' own example has inner omnimessage_ids that differ from the outer one: the
        # id we asked about is the one that counts.
        try:
            result = _DeliveryResult.model_validate({**item, "omnimessage_id": target.key})
        except ValidationError as exc:
            problems.append(f"statuses[{index}]: {describe(exc)}")
            continue
        if result.to is None:
            result.to = response.to
        update = report_to_update(result)
        updates.append(update)
        if update.channel and update.channel not in order:
            order.append(update.channel)
    if updates and order:
        # statuses[] is in send order: the fallback order, known now even if never registered.
        updates[0] = updates[0]._replace(channel_order=tuple(order))
    return Fetched(body, updates, problems)


PROVIDER = Provider(
    name=NAME,
    parse_registration=parse_registration,
    push=Push(verify=verify, parse=parse_webhook, check=check_webhook),
    poll=MessagePolling(fetch=poll, ready=poll_ready),
    default_account=default_account,
)
