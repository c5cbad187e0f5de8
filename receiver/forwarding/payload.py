"""What subscribers are sent: a status change, its event id and envelope, and its signature.

The projector builds each change's payload here as it applies a batch (in the same transaction
as the events, into the outbox), as plain dicts since it is on the projector's hot path; the
forwarder stamps and signs it per Standard Webhooks when it sends. The models in
receiver/http/views.py (`StatusChange`, `ChangeData`) document the same shape, and tests read
payloads through them."""

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from receiver.status import Status


class Deciding(Protocol):
    """The event that gave a message its status, as the payload tells it."""

    @property
    def provider_status(self) -> str | None: ...
    @property
    def provider_code(self) -> str | None: ...
    @property
    def error_code(self) -> str | None: ...
    @property
    def error_text(self) -> str | None: ...
    @property
    def permanent(self) -> bool | None: ...
    @property
    def channel(self) -> str | None: ...
    @property
    def attempt_id(self) -> str | None: ...
    @property
    def occurred_at(self) -> datetime | None: ...
    @property
    def source(self) -> str: ...


@dataclass(frozen=True)
class StatusChange:
    """A message whose current status moved; what subscribers are told."""

    provider: str
    key: str
    previous: Status | None
    status: Status
    seq: int
    payload: dict[str, Any]

    @property
    def event_id(self) -> str:
        # Derived, not random: the same change always has the same webhook-id, across retries,
        # replays and subscriptions.
        name = f"{self.provider}\x00{self.key}\x00{self.seq}".encode()
        return "evt_" + hashlib.blake2b(name, digest_size=16).hexdigest()

    def envelope(self) -> dict[str, Any]:
        """The change as it is queued for every subscription; `timestamp` is added at send."""
        return {"type": "message.status", "id": self.event_id, "data": self.payload}


def data(
    key: tuple[str, str],
    *,
    status: Status,
    previous: Status | None,
    seq: int,
    status_at: datetime | None,
    channel: str | None,
    recipient: str | None,
    reference: str | None,
    group: str | None,
    account: str | None,
    event: Deciding | None,
) -> dict[str, Any]:
    """The `data` of a forwarded status change (documented in the README)."""
    return {
        "provider": key[0],
        "message_id": key[1],
        "status": status.value,
        "previous_status": previous.value if previous else None,
        "seq": seq,
        "status_at": status_at.isoformat() if status_at else None,
        "channel": channel,
        "recipient": recipient,
        "reference": reference,
        "group": group,
        "account": account,
        "event": None
        if event is None
        else {
            "provider_status": event.provider_status,
            "provider_code": event.provider_code,
            "error_code": event.error_code,
            "error_text": event.error_text,
            "permanent": event.permanent,
            "channel": event.channel,
            "channel_message_id": event.attempt_id,
            "occurred_at": event.occurred_at.isoformat() if event.occurred_at else None,
            "source": event.source,
        },
    }


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One `webhook-signature` entry: v1, base64 HMAC-SHA256 of "{id}.{timestamp}.{body}"."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
