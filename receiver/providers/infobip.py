"""Infobip: batched delivery reports (SMS v1/v2/v3, OMNI, Messages API; JSON or XML), HTTP Basic
verification, send-response registration, and its status groups."""

import base64
import functools
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

import aiohttp
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from receiver.jsonio import loads, model_jsonb_text
from receiver.providers import xmlbody
from receiver.providers.base import (
    PollError,
    Provider,
    Push,
    QueueDrain,
    Registration,
    Timestamp,
    Verification,
    clean,
    describe,
    fetch,
    header,
    invalid,
    same,
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

NAME = "infobip"

# Status groups. Infobip adds ids freely; the group is the stable part, so map by group first.
GROUPS: dict[int, Status] = {
    0: Status.ACCEPTED,  # ACCEPTED: seen in send responses
    1: Status.SENT,  # PENDING: on its way
    2: Status.FAILED,  # UNDELIVERABLE
    3: Status.DELIVERED,  # DELIVERED
    4: Status.EXPIRED,  # EXPIRED
    5: Status.REJECTED,  # REJECTED
}
# Ids whose meaning differs from their group's.
IDS: dict[tuple[int, int], Status] = {
    # DELIVERED_TO_OPERATOR: the operator has it, the handset may not. Not a delivery.
    (3, 2): Status.SENT,
    # PENDING_ACCEPTED: the send response's "we have it", nothing sent to a network yet.
    (1, 26): Status.ACCEPTED,
}


class _Status(BaseModel):
    groupId: int  # noqa: N815 - Infobip's field names
    groupName: str | None = None  # noqa: N815
    id: int | None = None
    name: str | None = None
    description: str | None = None
    action: str | None = None


class _Error(BaseModel):
    groupId: int | None = None  # noqa: N815
    groupName: str | None = None  # noqa: N815
    id: int | None = None
    name: str | None = None
    description: str | None = None
    permanent: bool | None = None


def _as_text(value: object) -> object:
    # A number where text was documented is still the same fact; anything else is left to
    # fail validation (an object where an id should be is not a report we can trust).
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


_Text = Annotated[str | None, BeforeValidator(_as_text)]


class _Report(BaseModel):
    """The union of the SMS v1/v2, SMS v3, OMNI, Messages API and seen report shapes."""

    model_config = ConfigDict(extra="allow")

    messageId: str = Field(min_length=1, max_length=200)  # noqa: N815
    bulkId: str | None = Field(default=None, max_length=200)  # noqa: N815
    # Fields that do not decide the status are read leniently: a type Infobip changes (the
    # Messages API's mccMnc is an integer, SMS's a string) must never cost a report. They
    # are kept as sent, in the event's details.
    to: Any = None
    destination: _Text = None  # Messages API
    sender: _Text = None
    sentAt: Timestamp | None = None  # noqa: N815
    doneAt: Timestamp | None = None  # noqa: N815
    seenAt: Timestamp | None = None  # noqa: N815 - seen reports
    smsCount: Any = None  # noqa: N815 - SMS v1/v2
    messageCount: Any = None  # noqa: N815 - SMS v3, OMNI, Messages API
    mccMnc: Any = None  # noqa: N815
    callbackData: _Text = None  # noqa: N815
    price: Any = None
    status: _Status | None = None
    error: _Error | None = None
    channel: _Text = None  # OMNI and Messages API
    event: _Text = None  # Messages API: "DELIVERY"
    platform: Any = None


def verify(account: Account, headers: Mapping[str, str], body: bytes) -> Verification:
    """HTTP Basic, as set on the Infobip subscription's security settings."""
    user, password = account.username, account.secret
    if not user or password is None:
        return Verification.NOT_CONFIGURED
    given = header(headers, "Authorization")
    if not given:
        return Verification.MISSING
    # The header as Infobip writes it is one comparison; any other spelling of the same
    # credentials (scheme case, padding of the value) is decoded below.
    if same(_basic_header(user, password.get_secret_value()), given):
        return Verification.OK
    scheme, _, encoded = given.partition(" ")
    if scheme.lower() != "basic":
        return Verification.BAD
    try:
        given_user, _, given_password = (
            base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        )
    except ValueError:  # not base64 (non-ASCII too), or not UTF-8 inside
        return Verification.BAD
    # Both compared every time, so timing does not tell which one was wrong.
    user_ok = same(user, given_user)
    password_ok = same(password.get_secret_value(), given_password)
    return Verification.OK if user_ok and password_ok else Verification.BAD


@functools.lru_cache(maxsize=8)
def _basic_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class _Batch(BaseModel):
    results: list[_Report]


def parse_webhook(body: bytes, content_type: str | None, received_at: datetime) -> Parsed:
    reports: list[Any] | None = None
    if not _is_xml(body, content_type):
        # The common case, a batch that is all good, is read in one pass.
        try:
            reports = _Batch.model_validate_json(body).results
        except ValidationError:
            reports = None
    if reports is None:
        reports = _results(body, content_type)
    updates, problems = [], []
    look_for_nul = may_hold_nul(body) or _is_xml(body, content_type)
    for index, item in enumerate(reports):
        try:
            report = item if isinstance(item, _Report) else _Report.model_validate(item)
            update = report_to_update(report)
        except ValidationError as exc:
            # One bad report must not cost the others: it stays in the raw receipt instead.
            problems.append(f"results[{index}]: {describe(exc)}")
            continue
        if look_for_nul and (field := nul_field(update)) is not None:
            problems.append(nul_problem(f"results[{index}]", field))
            continue
        updates.append(update)
    return Parsed(updates, problems)


def _is_xml(body: bytes, content_type: str | None) -> bool:
    return "xml" in (content_type or "").lower() or body.lstrip()[:1] == b"<"


def check_webhook(body: bytes, content_type: str | None) -> int | None:
    """A JSON batch is checked here and parsed in the projector: validating a hundred reports
    is most of what a batch costs, and Infobip's answer is the same 200 either way (one bad
    report never fails its batch). XML, which is rare, is parsed at once."""
    if _is_xml(body, content_type):
        return None
    return len(_results(body, content_type))


def _results(body: bytes, content_type: str | None) -> list[Any]:
    if _is_xml(body, content_type):
        document = xmlbody.loads(body)
        (root,) = document.values()
        found = root.get("results") if isinstance(root, dict) else None
        if found is None:
            raise InvalidReport("XML body has no <results>")
        return xmlbody.items(found)
    try:
        document = loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidReport(f"body is not JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("results"), list):
        raise InvalidReport('body must be an object with a "results" array')
    results: list[Any] = document["results"]
    return results


def map_status(status: _Status) -> tuple[Status, bool]:
    """(normalised status, unmapped?) by id where it differs from its group, else by group."""
    if status.id is not None and (status.groupId, status.id) in IDS:
        return IDS[(status.groupId, status.id)], False
    if status.groupId in GROUPS:
        return GROUPS[status.groupId], False
    return Status.UNKNOWN, True


def report_to_update(report: _Report) -> StatusUpdate:
    """One report, pushed or polled, as an update; both give the same dedup key."""
    channel = _channel(report)
    if report.status is None:
        if report.seenAt is None:
            raise _missing("status")
        # OMNI / Messages API seen report: no status object, just when it was seen.
        return _update(
            report,
            Status.READ,
            report.seenAt,
            f"seen|{report.seenAt.isoformat()}",
            channel,
            "SEEN",
        )
    status, unmapped = map_status(report.status)
    raw_status = report.status.name or f"group {report.status.groupId}"
    occurred = report.doneAt or report.sentAt
    stamp = occurred.isoformat() if occurred else "-"
    # The dedup key keeps "sms" for a report that names no channel: stored keys must stay
    # what they were, or a report read again (reprocess) would be a second event.
    dedup = f"{channel or 'sms'}|{report.status.groupId}.{report.status.id}|{stamp}"
    return _update(report, status, occurred, dedup, channel, raw_status, unmapped)


def _channel(report: _Report) -> str | None:
    """The channel a report names (OMNI, Messages API), else the one its kind shows: SMS
    v1/v2 reports carry `smsCount` and SMS v3 reports `sender`. WhatsApp and Viber channel
    reports carry neither and no `channel`: None, and the projector takes the channel the
    message was registered with (or saw before)."""
    if report.channel and report.channel.strip():
        return report.channel.strip().lower()
    if report.smsCount is not None or (report.sender is not None and report.event is None):
        return "sms"
    return None


def _update(
    report: _Report,
    status: Status,
    occurred: datetime | None,
    dedup: str,
    channel: str | None,
    raw_status: str,
    unmapped: bool = False,
) -> StatusUpdate:
    error = report.error
    has_error = error is not None and error.id not in (None, 0)
    return StatusUpdate(
        provider=NAME,
        message_key=report.messageId,
        status=status,
        dedup_key=dedup,
        provider_status=clean(raw_status, 100),
        channel=channel,
        occurred_at=occurred,
        provider_code=(
            f"{report.status.groupId}.{report.status.id}" if report.status is not None else None
        ),
        error_code=str(error.id) if has_error and error else None,
        error_text=clean(error.description or error.name) if has_error and error else None,
        permanent=error.permanent if has_error and error else None,
        unmapped=unmapped,
        details_json=model_jsonb_text(report),
        recipient=clean(_recipient(report.to) or report.destination, 200),
        # WhatsApp reports carry `"bulkId": ""` for a message sent alone: no group.
        group_key=report.bulkId or None,
        reference=clean(report.callbackData, 4000),
    )


def _recipient(to: Any) -> str | None:
    if isinstance(to, dict):
        value = to.get("phoneNumber") or to.get("emailAddress")
        return str(value) if value else None
    if isinstance(to, str | int) and not isinstance(to, bool):
        return str(to)
    return None


def _missing(field: str) -> ValidationError:
    return ValidationError.from_exception_data(
        "InfobipReport", [{"type": "missing", "loc": (field,), "input": None}]
    )


class _SentMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    messageId: str = Field(min_length=1, max_length=200)  # noqa: N815
    to: Any = None
    destination: _Text = None  # SMS v3 send responses name the recipient so
    status: _Status | None = None


class _SendResponse(BaseModel):
    """SMS v2 / OMNI send response: `{"bulkId"?, "messages": [...]}`."""

    bulkId: str | None = Field(default=None, max_length=200)  # noqa: N815
    messages: list[_SentMessage] = Field(min_length=1)


def parse_registration(registration: Registration) -> list[StatusUpdate]:
    try:
        response = _SendResponse.model_validate(registration.response)
    except ValidationError as exc:
        raise invalid(exc) from exc
    updates = []
    for sent in response.messages:
        status, unmapped = map_status(sent.status) if sent.status else (Status.ACCEPTED, False)
        updates.append(
            StatusUpdate(
                provider=NAME,
                message_key=sent.messageId,
                status=status,
                dedup_key="send",
                provider_status=clean(sent.status.name if sent.status else None, 100),
                provider_code=(f"{sent.status.groupId}.{sent.status.id}" if sent.status else None),
                occurred_at=registration.received_at,
                unmapped=unmapped,
                details_json=model_jsonb_text(sent),
                recipient=clean(_recipient(sent.to) or sent.destination, 200),
                channel=registration.channel,
                group_key=response.bulkId or None,
                reference=clean(registration.reference, 500),
                registered=True,
            )
        )
    return updates


# Report queues drained by the poller. Each report comes out of them once (within 48 h), so
# every batch is committed before the next call, and one poller per account runs at a time.
# The once-only report queues: SMS v1/v2, SMS v3, OMNI, and the Messages API's (which Infobip
# says also carries reports of messages sent through the channels' own APIs).
REPORT_PATHS = ("/sms/1/reports", "/sms/3/reports", "/omni/1/reports", "/messages-api/1/reports")
REPORT_LIMIT = 1000  # the documented maximum per call


def default_account(settings: Settings) -> Account:
    """RECEIVER_INFOBIP_*: the webhook's Basic credentials, and the API key that drains."""
    return Account(
        secret=settings.infobip_webhook_password,
        username=settings.infobip_webhook_username,
        api_key=settings.infobip_api_key,
        base_url=settings.infobip_base_url,
        poll_interval=settings.infobip_poll_interval,
    )


def drain_ready(account: Account) -> bool:
    return account.api_key is not None and account.base_url is not None


async def fetch_reports(session: aiohttp.ClientSession, account: Account, path: str) -> bytes:
    if account.api_key is None or account.base_url is None:
        raise PollError("the account has no Infobip API key")
    headers = {
        "Authorization": f"App {account.api_key.get_secret_value()}",
        "Accept": "application/json",
    }
    url = account.base_url.rstrip("/") + path
    body = await fetch(session, url, headers=headers, params={"limit": str(REPORT_LIMIT)})
    return b'{"results": []}' if body is None else body


PROVIDER = Provider(
    name=NAME,
    parse_registration=parse_registration,
    push=Push(verify=verify, parse=parse_webhook, check=check_webhook),
    # Infobip messages are not polled one by one: their reports are drained from the queues.
    drain=QueueDrain(
        paths=REPORT_PATHS, fetch=fetch_reports, parse=parse_webhook, ready=drain_ready
    ),
    default_account=default_account,
)
