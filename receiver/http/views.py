"""What the HTTP API answers, as pydantic models: the handlers build their JSON from these,
and /openapi.json describes them. The vocabulary: `message_id` is always the message's key
(what GET /v1/messages/{provider}/{id} is found by), `channel_message_id` always a channel
attempt's own id at the provider (a Messente channel message_id, ...)."""

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from receiver.status import Status


class _View(BaseModel):
    # Closed in the document too: a field added to a handler and not here fails the
    # schemathesis run rather than going undocumented.
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(_View):
    code: str = Field(description="machine-readable, e.g. message_not_found, invalid_query")
    message: str = Field(description="for people; may change")
    receipt_id: str | None = Field(
        default=None, description="invalid_report only: the receipt the raw body is kept in"
    )


class Error(_View):
    """Every failure, whatever the route."""

    error: ErrorDetail


class Health(_View):
    status: Literal["ok"]


class Backlog(_View):
    backlog_rows: int = Field(description="journal rows not yet projected")
    lag_seconds: float = Field(description="how long the oldest of them has waited")


class Ready(_View):
    status: Literal["ready"]
    projection: Backlog


class WebhookAccepted(_View):
    receipt_id: str
    reports: int = Field(description="reports read from the body")
    problems: list[str] = Field(description="reports that could not be read (kept raw)")


class MessageSummary(_View):
    provider: str
    message_id: str = Field(description="the message key")
    status: Status


class Registered(_View):
    receipt_id: str
    messages: list[MessageSummary] = Field(description="empty while not yet visible")
    visible: bool = Field(description="false: journaled, not yet projected (202)")


class MessageListed(MessageSummary):
    status_at: datetime | None
    channel: str | None
    recipient: str | None
    reference: str | None
    group: str | None
    created_at: datetime
    updated_at: datetime


class Attempt(_View):
    channel: str | None
    status: Status
    occurred_at: str | None
    channel_message_id: str | None = Field(description="the attempt's own id at the provider")


class Event(_View):
    id: int
    status: Status
    provider_status: str | None
    provider_code: str | None
    error_code: str | None
    error_text: str | None
    permanent: bool | None
    channel: str | None
    channel_message_id: str | None
    occurred_at: datetime | None
    received_at: datetime
    source: str = Field(description="webhook, poll or send")
    receipt_id: uuid.UUID | None = Field(description="GET /v1/receipts/{id}: the body it came in")
    details: Any = Field(description="the report as received")


class Message(MessageListed):
    account: str | None
    aliases: list[str]
    channel_order: list[str] | None
    attempts: list[Attempt]
    seq: int = Field(description="status changes so far")
    stale: bool = Field(description="polling gave up on it: its status is the last known")
    next_poll_at: datetime | None
    registered_at: datetime | None
    events: list[Event]


class MessagePage(_View):
    messages: list[MessageListed]
    next_cursor: str | None = Field(description="pass back as `cursor` for the next page")


class Group(_View):
    provider: str
    id: str = Field(description="the group's id (Infobip bulkId, omnimessage, dispatch)")
    total: int
    counts: dict[str, int] = Field(description="members per status")
    members: list[MessageListed]
    next_cursor: str | None


class Unmapped(_View):
    provider: str
    provider_status: str
    count: int
    first_seen: datetime
    last_seen: datetime


class UnmappedList(_View):
    unmapped: list[Unmapped]


class ReceiptListed(_View):
    id: uuid.UUID
    provider: str
    source: str
    received_at: datetime
    content_type: str | None
    size: int
    problem: str | None


class ReceiptPage(_View):
    receipts: list[ReceiptListed]
    next_cursor: str | None


class ReceiptEvent(_View):
    message_id: str = Field(description="the message key")
    status: Status
    provider_status: str | None
    channel: str | None
    occurred_at: datetime | None


class Receipt(_View):
    id: uuid.UUID
    provider: str
    source: str
    received_at: datetime
    content_type: str | None
    problem: str | None
    body: str | None = Field(description="null when the bytes are not UTF-8: see body_base64")
    body_base64: str
    events: list[ReceiptEvent]


class Erased(_View):
    """What an erasure of one phone number removed (or, as a dry run, would remove)."""

    erasure: str = Field(description="the erasure's id, as its log line names it")
    dry_run: bool
    messages: int
    events: int
    aliases: int
    status_changes: int
    deliveries: int
    receipts: int


class Subscription(_View):
    id: str
    url: str = Field(description="a broker URL's password shown as ***")
    description: str | None
    statuses: list[Status] | None
    providers: list[str] | None
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None
    previous_secrets_expire_at: list[datetime]
    previous_secret_expires_at: datetime | None = Field(
        description="the last of previous_secrets_expire_at (its name from before rotation lists)"
    )
    created_at: datetime
    updated_at: datetime
    secret: str | None = Field(default=None, description="only at creation and rotation")


class SubscriptionPage(_View):
    subscriptions: list[Subscription]
    next_cursor: str | None


class _DeliveryFields(_View):
    id: str
    event_id: str = Field(description="the webhook-id header")
    provider: str
    message_id: str = Field(description="the message key")
    seq: int
    status: Status
    state: Literal["pending", "delivered", "dead"]
    next_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class Delivery(_DeliveryFields):
    attempts: int = Field(description="attempts made")


class DeliveryAttempt(_View):
    attempted_at: datetime
    duration_ms: int | None
    status_code: int | None
    error: str | None


class DeliveryDetail(_DeliveryFields):
    attempts: list[DeliveryAttempt]
    payload: "QueuedChange"


class DeliveryPage(_View):
    deliveries: list[Delivery]
    next_cursor: str | None


class Replayed(_View):
    replayed: int


# The forwarded payload: what subscribers receive (webhooks in the document). Built by
# receiver/forwarding/payload.py as plain dicts (on the projector's hot path); tests check
# those against these models.


class ChangeEvent(_View):
    provider_status: str | None
    provider_code: str | None
    error_code: str | None
    error_text: str | None
    permanent: bool | None
    channel: str | None
    channel_message_id: str | None
    occurred_at: str | None
    source: str


class ChangeData(_View):
    provider: str
    message_id: str = Field(description="the message key")
    status: Status
    previous_status: Status | None
    seq: int = Field(description="keep the highest per message: deliveries may come out of order")
    status_at: str | None
    channel: str | None
    recipient: str | None
    reference: str | None
    group: str | None
    account: str | None
    event: ChangeEvent | None


class QueuedChange(_View):
    """A status change as it is queued for a subscription."""

    type: Literal["message.status"]
    id: str = Field(description="the event id, also the webhook-id header")
    data: ChangeData


class StatusChange(QueuedChange):
    """A message's status changed: the body of every delivery (and broker message)."""

    timestamp: str = Field(description="when this attempt was sent (ISO 8601)")


DeliveryDetail.model_rebuild()
