"""Mercury Web API: SendMessages registration. Mercury has no push; its dispatches are polled."""

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from receiver.jsonio import jsonb_text, model_jsonb_text
from receiver.providers.base import (
    Fetched,
    MessagePolling,
    PollError,
    PollTarget,
    Provider,
    Registration,
    basic_auth,
    clean,
    describe,
    fetch,
    invalid,
)
from receiver.reports import InvalidReport, StatusUpdate
from receiver.settings import Account, Settings
from receiver.status import Status

NAME = "mercury"


class _InvalidMobile(BaseModel):
    model_config = ConfigDict(extra="allow")

    uniqueId: str | None = None  # noqa: N815 - Mercury's field names
    mobile: str | None = None


class _InvalidEmail(BaseModel):
    model_config = ConfigDict(extra="allow")

    uniqueId: str | None = None  # noqa: N815
    email: str | None = None


class _SendResponse(BaseModel):
    """`POST /api/SendMessages` response."""

    model_config = ConfigDict(extra="allow")

    dispatch: int = Field(ge=0)
    totalRecipients: int | None = None  # noqa: N815
    totalRecipientsSent: int | None = None  # noqa: N815
    invalidRecipients: int | None = None  # noqa: N815
    # Documented as strings for emails and {uniqueId, mobile} for mobiles; both read both ways.
    invalidEmails: list[str | _InvalidEmail] = Field(default_factory=list)  # noqa: N815
    invalidMobiles: list[str | _InvalidMobile] = Field(default_factory=list)  # noqa: N815


class _Recipient(BaseModel):
    model_config = ConfigDict(extra="allow")

    uniqueId: str = Field(min_length=1, max_length=200)  # noqa: N815
    mobilePhone: str | None = None  # noqa: N815
    email: str | None = None
    cardNumber: str | None = None  # noqa: N815


class _SendRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    templateId: int | None = None  # noqa: N815
    recipients: list[_Recipient] = Field(min_length=1)


def message_key(dispatch: int | str, unique_id: str) -> str:
    """A dispatch goes to many recipients; each is a message of its own."""
    return f"{dispatch}:{unique_id}"


def parse_registration(registration: Registration) -> list[StatusUpdate]:
    # The response names only the invalid recipients; the valid ones are known from the
    # request alone, so Mercury registrations need it.
    if registration.request is None:
        raise InvalidReport(
            "request: Mercury registrations need the SendMessages request (its recipients)"
        )
    try:
        response = _SendResponse.model_validate(registration.response)
        request = _SendRequest.model_validate(registration.request)
    except ValidationError as exc:
        raise invalid(exc) from exc
    ids = [r.uniqueId for r in request.recipients]
    if len(set(ids)) != len(ids):
        raise InvalidReport("request.recipients: uniqueId must be unique within a send")

    invalid_ids, invalid_mobiles, invalid_emails = set(), set(), set()
    for entry in [*response.invalidMobiles, *response.invalidEmails]:
        if isinstance(entry, str):
            invalid_mobiles.add(entry)
            invalid_emails.add(entry.lower())
        elif entry.uniqueId:
            invalid_ids.add(entry.uniqueId)
        elif isinstance(entry, _InvalidMobile) and entry.mobile:
            invalid_mobiles.add(entry.mobile)
        elif isinstance(entry, _InvalidEmail) and entry.email:
            invalid_emails.add(entry.email.lower())

    updates = []
    for recipient in request.recipients:
        refused = (
            recipient.uniqueId in invalid_ids
            or (recipient.mobilePhone is not None and recipient.mobilePhone in invalid_mobiles)
            or (recipient.email is not None and recipient.email.lower() in invalid_emails)
        )
        details: dict[str, Any] = {"dispatch": response.dispatch, "uniqueId": recipient.uniqueId}
        if recipient.cardNumber:
            details["cardNumber"] = recipient.cardNumber
        updates.append(
            StatusUpdate(
                provider=NAME,
                message_key=message_key(response.dispatch, recipient.uniqueId),
                # Mercury validated the recipient and excluded it: refused before sending.
                status=Status.REJECTED if refused else Status.ACCEPTED,
                dedup_key="send",
                provider_status="invalidRecipient" if refused else "accepted",
                occurred_at=registration.received_at,
                error_text="invalid recipient" if refused else None,
                permanent=True if refused else None,
                details_json=jsonb_text(details),
                recipient=clean(recipient.mobilePhone or recipient.email, 200),
                group_key=str(response.dispatch),
                reference=clean(registration.reference, 500),
                registered=True,
            )
        )
    return updates


class _Dispatch(BaseModel):
    """`GET /api/Dispatches/{DispatchId}`: the dispatch's queue state (no per-handset status)."""

    model_config = ConfigDict(extra="allow")

    dispatchId: int | None = None  # noqa: N815
    sendStatusId: int  # noqa: N815
    messageTypeId: int | None = None  # noqa: N815
    hasStartedQueuing: bool | None = None  # noqa: N815
    hasFinishedQueuing: bool | None = None  # noqa: N815
    errorMessage: str | None = None  # noqa: N815
    # Zone-less, in the account's local time (see local_to_utc); an offset, if one ever
    # comes, is honoured.
    createdAt: datetime | None = None  # noqa: N815
    startedQueuingAt: datetime | None = None  # noqa: N815
    finishedQueuingAt: datetime | None = None  # noqa: N815
    lastUpdate: datetime | None = None  # noqa: N815


# sendStatusId: 1 Draft, 2 Pending, 3 Queued, 7 Error. 4-6 are undocumented.
SEND_STATUSES: dict[int, Status] = {
    1: Status.ACCEPTED,
    2: Status.ACCEPTED,
    3: Status.SENT,  # once hasFinishedQueuing: handed to the gateway. Never "delivered".
    7: Status.FAILED,
}
CHANNELS = {1: "sms", 2: "email"}  # messageTypeId


def local_to_utc(moment: datetime | None, zone: ZoneInfo) -> datetime | None:
    """Mercury writes times without a zone, in the account's local time: the seed's own
    SendMessages sample sends at `2016-05-12T10:00:00+03:00` and its dispatch shows `sendAt
    2016-05-12T10:00:00`. So the zone is the account's (`time_zone`; the default account's is
    RECEIVER_MERCURY_TIME_ZONE)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("timestamp out of range") from None


def default_account(settings: Settings) -> Account:
    """RECEIVER_MERCURY_*, with RECEIVER_MERCURY_TIME_ZONE as the account's local time."""
    return Account(
        api_username=settings.mercury_username,
        api_password=settings.mercury_password,
        base_url=settings.mercury_base_url,
        time_zone=settings.mercury_time_zone,
    )


def poll_ready(account: Account) -> bool:
    return bool(account.base_url and account.api_username and account.api_password)


async def poll(session: aiohttp.ClientSession, account: Account, target: PollTarget) -> Fetched:
    if not (account.base_url and account.api_username and account.api_password):
        raise PollError("the account has no Mercury API credentials")
    zone = account.time_zone or "UTC"
    dispatch = target.group or target.key.split(":", 1)[0]
    url = f"{account.base_url.rstrip('/')}/api/Dispatches/{quote(dispatch, safe='')}"
    headers = basic_auth(account.api_username, account.api_password.get_secret_value())
    body = await fetch(session, url, headers=headers)
    if body is None:
        return Fetched(b"", [], [f"Mercury does not know dispatch {dispatch} (404)"])
    try:
        found = _Dispatch.model_validate_json(body)
    except ValidationError as exc:
        return Fetched(body, [], [describe(exc)])
    finished = bool(found.hasFinishedQueuing)
    status = SEND_STATUSES.get(found.sendStatusId, Status.UNKNOWN)
    if status is Status.SENT and not finished:
        status = Status.ACCEPTED  # queued, but not all of it handed over yet
    local = found.finishedQueuingAt or found.lastUpdate or found.startedQueuingAt or found.createdAt
    try:
        at = local_to_utc(local, ZoneInfo(zone))
    except ValueError as exc:  # 0001-01-01 east of Greenwich: no such instant in UTC
        return Fetched(body, [], [f"dispatch time: {exc}"])
    updates = [
        StatusUpdate(
            provider=NAME,
            message_key=key,
            status=status,
            dedup_key=f"dispatch|{found.sendStatusId}|{finished}",
            provider_status=f"sendStatusId {found.sendStatusId}",
            provider_code=str(found.sendStatusId),
            channel=CHANNELS.get(found.messageTypeId or 0),
            occurred_at=at,
            error_text=clean(found.errorMessage) if status is Status.FAILED else None,
            unmapped=found.sendStatusId not in SEND_STATUSES,
            details_json=model_jsonb_text(found),
            group_key=dispatch,
        )
        for key in target.members
    ]
    done = found.sendStatusId == 7 or (found.sendStatusId == 3 and finished)
    return Fetched(body, updates, done=done)


PROVIDER = Provider(
    name=NAME,
    parse_registration=parse_registration,
    # One dispatch request answers for all its recipients.
    poll=MessagePolling(fetch=poll, ready=poll_ready, by_group=True),
    default_account=default_account,
)
