"""Mercury Web API: SendMessages registration. Mercury has no push; its dispatches are polled."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from receiver.providers.base import Provider, Registration, clean, clean_json, invalid
from receiver.reports import InvalidReport, StatusUpdate
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
                details=clean_json(details),
                recipient=clean(recipient.mobilePhone or recipient.email, 200),
                group_key=str(response.dispatch),
                reference=clean(registration.reference, 500),
                registered=True,
            )
        )
    return updates


PROVIDER = Provider(name=NAME, parse_registration=parse_registration)
