"""Comapi / dotdigital Enterprise Communications API: signed webhook envelopes (single or batch),
per-channel statuses, single and batch send registration."""

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from receiver.jsonio import jsonb_text, loads, model_jsonb_text
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

NAME = "comapi"

# Message (and channelStatus) statuses of the Omnichannel API 1.3.1 schema.
STATUSES: dict[str, Status] = {
    "processing": Status.ACCEPTED,
    "retrying": Status.ACCEPTED,  # Comapi is still trying to hand it over
    "sent": Status.SENT,
    "delivered": Status.DELIVERED,
    "read": Status.READ,
    "expired": Status.EXPIRED,
    "failed": Status.FAILED,
    # Stopped by a rule or filter before any channel took it.
    "filtered": Status.REJECTED,
}
# Webhook event names that carry a status. Other message.* events (sentRequest, clicks, …) are
# kept on the timeline as `unknown`, which never moves a status.
# Documented events under message.* that are not about a message we sent.
NOT_REPORTS = frozenset({"message.inbound"})
EVENTS: dict[str, Status] = {
    "message.sent": Status.SENT,
    "message.delivered": Status.DELIVERED,
    "message.read": Status.READ,
    "message.expired": Status.EXPIRED,
    "message.failed": Status.FAILED,
}


class _ChannelStatus(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: str = Field(max_length=100)
    details: dict[str, Any] | None = None
    updatedOn: Timestamp | None = None  # noqa: N815 - Comapi's field names


class _Details(BaseModel):
    model_config = ConfigDict(extra="allow")

    channel: str | None = Field(default=None, max_length=100)
    additionalInfo: dict[str, Any] | None = None  # noqa: N815
    channelStatus: dict[str, _ChannelStatus] = Field(default_factory=dict)  # noqa: N815


class _MessagePayload(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1, max_length=200)
    details: _Details = Field(default_factory=_Details)
    metadata: dict[str, Any] | None = None
    updatedOn: Timestamp | None = None  # noqa: N815


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="allow")

    eventId: str = Field(min_length=1, max_length=200)  # noqa: N815
    name: str = Field(min_length=1, max_length=200)
    payload: dict[str, Any]
    accountId: int | None = None  # noqa: N815
    apiSpaceId: str | None = None  # noqa: N815
    revision: int | None = None
    etag: str | None = None
    timestamp: Timestamp | None = None


def verify(account: Account, headers: Mapping[str, str], body: bytes) -> Verification:
    """X-Comapi-Signature: lowercase hex HMAC-SHA1 of the raw body with the webhook secret."""
    return verify_hex_hmac(account.secret, headers, "X-Comapi-Signature", body, "sha1")


def sign(secret: str, body: bytes) -> str:
    return sign_hex_hmac(secret, body, "sha1")


def check_webhook(body: bytes, content_type: str | None) -> int:
    """Checked here, parsed in the projector: a 400 is only for what is not JSON at all."""
    document = _document(body)
    return len(document) if isinstance(document, list) else 1


def _document(body: bytes) -> Any:
    try:
        return loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidReport(f"body is not JSON: {exc}") from exc


def parse_webhook(body: bytes, content_type: str | None, received_at: datetime) -> Parsed:
    # Comapi never retries a 400 and then drops the event. So 400 only for bytes that are not
    # JSON at all; JSON of a shape we cannot read yet is acknowledged and kept raw instead.
    document = _document(body)
    envelopes = document if isinstance(document, list) else [document]
    updates: list[StatusUpdate] = []
    problems: list[str] = []
    look_for_nul = may_hold_nul(body)
    for index, item in enumerate(envelopes):
        where = f"[{index}]" if isinstance(document, list) else "body"
        try:
            envelope = _Envelope.model_validate(item)
            # Other families (profile.*, chat.*) carry no message status: the receipt keeps them.
            if not (envelope.name.startswith("message.") or "id" in envelope.payload):
                continue
            # An incoming message (a reply) is not a report about one we sent: its payload id
            # is the inbound message's, and reading it would create a message never sent.
            if envelope.name in NOT_REPORTS:
                continue
            found = envelope_updates(envelope)
        except ValidationError as exc:
            problems.append(f"{where}: {describe(exc)}")
            continue
        # An event is one report: any of its updates unstorable, the event waits whole.
        refused = [f for u in found if (f := nul_field(u)) is not None] if look_for_nul else []
        if refused:
            problems.append(nul_problem(where, refused[0]))
            continue
        updates.extend(found)
    return Parsed(updates, problems)


def envelope_updates(envelope: _Envelope) -> list[StatusUpdate]:
    payload = _MessagePayload.model_validate(envelope.payload)
    details = payload.details
    channel = details.channel.strip() if details.channel else None
    info = details.additionalInfo or {}
    common: dict[str, Any] = {
        "provider": NAME,
        "message_key": payload.id,
        "recipient": clean(str(info["to"]), 200) if info.get("to") else None,
    }
    occurred = envelope.timestamp or payload.updatedOn
    status = EVENTS.get(envelope.name, Status.UNKNOWN)
    reason = info.get("reason") or info.get("failureReason")
    updates = [
        StatusUpdate(
            **common,
            status=status,
            # eventId is unique per event: a retried delivery of it is one event.
            dedup_key=f"event|{envelope.eventId}",
            provider_status=clean(envelope.name, 100),
            provider_code=None if envelope.revision is None else f"revision {envelope.revision}",
            channel=channel,
            occurred_at=occurred,
            error_text=clean(str(reason)) if reason and status is Status.FAILED else None,
            details_json=model_jsonb_text(envelope),
        )
    ]
    # Branch failover: channelStatus holds every channel tried so far. The current channel is the
    # envelope's own event; the others become attempt events of their own, so a failed
    # fbMessenger shows as such beside a delivered sms.
    others = {k: v for k, v in details.channelStatus.items() if k != channel}
    return updates + _channel_updates(common, others)


def _channel_updates(
    common: dict[str, Any], channel_status: dict[str, _ChannelStatus]
) -> list[StatusUpdate]:
    """One attempt event per channel; webhook and poll build the same dedup keys."""
    updates = []
    for name, state in channel_status.items():
        mapped = STATUSES.get(state.status.lower())
        at = state.updatedOn
        updates.append(
            StatusUpdate(
                **common,
                status=mapped or Status.UNKNOWN,
                dedup_key=f"channel|{name}|{state.status}|{at.isoformat() if at else '-'}",
                provider_status=clean(state.status, 100),
                channel=name,
                occurred_at=at,
                unmapped=mapped is None,
                details_json=model_jsonb_text(state),
            )
        )
    return updates


class _To(BaseModel):
    model_config = ConfigDict(extra="allow")

    phoneNumber: str | None = None  # noqa: N815
    email: str | None = None
    profileId: str | None = None  # noqa: N815


class _SingleResponse(BaseModel):
    """201 body of `POST /cpaas/messages`: the Message."""

    model_config = ConfigDict(extra="allow")

    messageId: str = Field(min_length=1, max_length=200)  # noqa: N815
    status: str | None = Field(default=None, max_length=100)
    statusDetails: dict[str, Any] | None = None  # noqa: N815
    to: _To | None = None
    rules: list[str] | None = None
    sentOn: Timestamp | None = None  # noqa: N815


class _BatchItem(BaseModel):
    index: int = Field(ge=0)
    messageId: str = Field(min_length=1, max_length=200)  # noqa: N815


class _RequestMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    to: _To | None = None
    rules: list[str] | None = None
    metadata: dict[str, Any] | None = None


def parse_registration(registration: Registration) -> list[StatusUpdate]:
    try:
        if isinstance(registration.response, list):
            return _batch(registration)
        return [_single(registration)]
    except ValidationError as exc:
        raise invalid(exc) from exc


def _single(registration: Registration) -> StatusUpdate:
    response = _SingleResponse.model_validate(registration.response)
    request = _RequestMessage.model_validate(registration.request) if registration.request else None
    raw_status = (response.status or "processing").lower()
    status = STATUSES.get(raw_status, Status.UNKNOWN)
    channel = (response.statusDetails or {}).get("channelId") or (response.statusDetails or {}).get(
        "channel"
    )
    rules = response.rules or (request.rules if request else None)
    to = response.to or (request.to if request else None)
    at = response.sentOn or registration.received_at
    return StatusUpdate(
        provider=NAME,
        message_key=response.messageId,
        status=status,
        dedup_key=f"send|{raw_status}",
        provider_status=clean(raw_status, 100),
        channel=str(channel) if channel else None,
        occurred_at=at,
        unmapped=raw_status not in STATUSES,
        details_json=model_jsonb_text(response),
        recipient=_recipient(to),
        reference=clean(registration.reference, 500),
        channel_order=tuple(rules) if rules else None,
        registered=True,
    )


def _batch(registration: Registration) -> list[StatusUpdate]:
    items = [_BatchItem.model_validate(i) for i in registration.response]
    requests: list[_RequestMessage] = []
    if registration.request is not None:
        if not isinstance(registration.request, list):
            raise InvalidReport("request: a batch send request is an array of messages")
        requests = [_RequestMessage.model_validate(r) for r in registration.request]
    updates = []
    for item in items:
        request = requests[item.index] if item.index < len(requests) else None
        updates.append(
            StatusUpdate(
                provider=NAME,
                message_key=item.messageId,
                status=Status.ACCEPTED,
                dedup_key="send|accepted",
                occurred_at=registration.received_at,
                details_json=jsonb_text({"index": item.index}),
                recipient=_recipient(request.to if request else None),
                reference=clean(registration.reference, 500),
                channel_order=tuple(request.rules) if request and request.rules else None,
                registered=True,
            )
        )
    return updates


def _recipient(to: _To | None) -> str | None:
    if to is None:
        return None
    return clean(to.phoneNumber or to.email or to.profileId, 200)


class _StatusDetails(BaseModel):
    model_config = ConfigDict(extra="allow")

    channel: str | None = None
    channelStatus: dict[str, _ChannelStatus] = Field(default_factory=dict)  # noqa: N815


class _Message(BaseModel):
    """`GET /cpaas/messages/{messageId}`: the message's current state."""

    model_config = ConfigDict(extra="allow")

    messageId: str | None = None  # noqa: N815
    status: str | None = Field(default=None, max_length=100)
    statusDetails: _StatusDetails = Field(default_factory=_StatusDetails)  # noqa: N815
    to: _To | None = None
    rules: list[str] | None = None
    sentOn: Timestamp | None = None  # noqa: N815


def default_account(settings: Settings) -> Account:
    """RECEIVER_COMAPI_*: the webhook secret, and the API user that polls."""
    return Account(
        secret=settings.comapi_webhook_secret,
        api_username=settings.comapi_api_username,
        api_password=settings.comapi_api_password,
        base_url=settings.comapi_base_url,
    )


def poll_ready(account: Account) -> bool:
    return bool(account.api_username and account.api_password and account.base_url)


async def poll(session: aiohttp.ClientSession, account: Account, target: PollTarget) -> Fetched:
    if not (account.api_username and account.api_password and account.base_url):
        raise PollError("the account has no Comapi API credentials")
    url = f"{account.base_url.rstrip('/')}/cpaas/messages/{quote(target.key, safe='')}"
    headers = basic_auth(account.api_username, account.api_password.get_secret_value())
    body = await fetch(session, url, headers=headers)
    if body is None:
        # Batch sends take a few seconds to become visible; the next poll will see it.
        return Fetched(b"", [], ["Comapi does not know this message yet (404)"])
    try:
        message = _Message.model_validate_json(body)
    except ValidationError as exc:
        return Fetched(body, [], [describe(exc)])
    common: dict[str, Any] = {
        "provider": NAME,
        "message_key": target.key,
        "recipient": _recipient(message.to),
    }
    updates = _channel_updates(common, message.statusDetails.channelStatus)
    if not updates and message.status:
        # No per-channel detail (yet): the message-level status stands for the whole message.
        raw = message.status.lower()
        updates.append(
            StatusUpdate(
                **common,
                status=STATUSES.get(raw, Status.UNKNOWN),
                dedup_key=f"status|{raw}",
                provider_status=clean(raw, 100),
                unmapped=raw not in STATUSES,
                details_json=jsonb_text({"status": raw}),
            )
        )
    if updates and message.rules:
        updates[0] = updates[0]._replace(channel_order=tuple(message.rules))
    return Fetched(body, updates)


PROVIDER = Provider(
    name=NAME,
    parse_registration=parse_registration,
    push=Push(verify=verify, parse=parse_webhook, check=check_webhook),
    poll=MessagePolling(fetch=poll, ready=poll_ready),
    default_account=default_account,
)
