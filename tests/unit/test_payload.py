"""The forwarded payload and its signing (receiver/forwarding/payload.py), without a database."""

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from receiver.forwarding.payload import StatusChange, data, new_secret, sign
from receiver.http import views
from receiver.status import Status


@dataclass(frozen=True)
class _Event:
    provider_status: str | None = "DELIVRD"
    provider_code: str | None = "0"
    error_code: str | None = None
    error_text: str | None = None
    permanent: bool | None = None
    channel: str | None = "sms"
    attempt_id: str | None = "sms-1"
    occurred_at: datetime | None = datetime(2024, 5, 2, 10, 15, 3, tzinfo=UTC)
    source: str = "webhook"


_Tamper = Callable[[bytes, dict[str, str]], tuple[bytes, dict[str, str]]]


def _change(seq: int = 2, event: _Event | None = None) -> StatusChange:
    payload = data(
        ("messente", "omni-1"),
        status=Status.DELIVERED,
        previous=Status.SENT,
        seq=seq,
        status_at=datetime(2024, 5, 2, 10, 15, 3, tzinfo=UTC),
        channel="sms",
        recipient="+3725555555",
        reference="order-7",
        group=None,
        account="default",
        event=event,
    )
    return StatusChange("messente", "omni-1", Status.SENT, Status.DELIVERED, seq, payload)


def test_the_envelope_reads_as_the_documented_queued_change() -> None:
    change = _change(event=_Event())
    queued = views.QueuedChange.model_validate(change.envelope())
    assert queued.id == change.event_id
    assert queued.data.status is Status.DELIVERED
    assert queued.data.previous_status is Status.SENT
    assert queued.data.event is not None
    assert queued.data.event.channel_message_id == "sms-1"


def test_a_status_composed_from_no_one_event_has_a_null_event() -> None:
    assert views.QueuedChange.model_validate(_change(event=None).envelope()).data.event is None


def test_the_event_id_is_the_same_for_the_same_change_and_differs_for_the_next() -> None:
    # Retries, replays and every subscription send one change under one webhook-id.
    assert _change(seq=2).event_id == _change(seq=2).event_id
    assert _change(seq=2).event_id != _change(seq=3).event_id


def test_a_signature_verifies_with_the_standard_webhooks_reference() -> None:
    secret = new_secret()
    body = json.dumps({**_change(event=_Event()).envelope(), "timestamp": "now"}).encode()
    timestamp = int(time.time())
    headers = {
        "webhook-id": "evt_1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, "evt_1", timestamp, body),
    }
    assert Webhook(secret).verify(body, headers)["type"] == "message.status"


@pytest.mark.parametrize(
    ("what", "change"),
    [
        # The body changed on the way (a proxy re-encoding it, an attacker).
        ("body", lambda body, headers: (body + b" ", headers)),
        # A recorded request replayed under another event id.
        ("id", lambda body, headers: (body, {**headers, "webhook-id": "evt_2"})),
    ],
)
def test_a_signature_does_not_verify_what_was_changed(what: str, change: _Tamper) -> None:
    secret = new_secret()
    body = b'{"type": "message.status"}'
    timestamp = int(time.time())
    headers = {
        "webhook-id": "evt_1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, "evt_1", timestamp, body),
    }
    body, headers = change(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, headers)


def test_a_signature_under_another_secret_does_not_verify() -> None:
    body, timestamp = b"{}", int(time.time())
    headers = {
        "webhook-id": "evt_1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(new_secret(), "evt_1", timestamp, body),
    }
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
