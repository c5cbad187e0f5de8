"""Comapi / dotdigital: signature check, envelopes (single and batch), send registration."""

from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from receiver.providers import comapi
from receiver.providers.base import Registration, Verification
from receiver.reports import InvalidReport
from receiver.settings import Account
from receiver.status import Status
from tests.payloads import load, raw

NOW = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)
SECRET = "a-webhook-secret-of-36-characters-xx"
ACCOUNT = Account(secret=SecretStr(SECRET))


def test_hmac_sha1_hex_signature_verifies() -> None:
    body = raw("comapi", "single_failed.json")
    headers = {"X-Comapi-Signature": comapi.sign(SECRET, body)}
    assert comapi.verify(ACCOUNT, headers, body) is Verification.OK


@pytest.mark.parametrize(
    ("signature", "expected"),
    [
        (None, Verification.MISSING),
        ("0" * 40, Verification.BAD),  # right length, wrong value
        ("not-hex", Verification.BAD),
    ],
)
def test_bad_or_missing_signatures_fail(signature: str | None, expected: Verification) -> None:
    headers = {} if signature is None else {"X-Comapi-Signature": signature}
    assert comapi.verify(ACCOUNT, headers, b"{}") is expected


def test_sha256_signature_is_not_accepted() -> None:
    import hashlib
    import hmac

    body = b"{}"
    sha256 = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert comapi.verify(ACCOUNT, {"X-Comapi-Signature": sha256}, body) is Verification.BAD


def test_batch_with_failover_gives_each_channel_its_attempt() -> None:
    parsed = comapi.parse_webhook(raw("comapi", "batch_failover.json"), "application/json", NOW)
    assert parsed.problems == []
    by_message: dict[str, list[tuple[str | None, Status]]] = {}
    for u in parsed.updates:
        by_message.setdefault(u.message_key, []).append((u.channel, u.status))
    assert by_message["287d32c0-170e-4a80-bfc3-48f376d17682"] == [
        ("sms", Status.DELIVERED),
        ("fbMessenger", Status.FAILED),
    ]
    assert by_message["9e8d7c6b-5a49-4382-9170-6f5e4d3c2b1a"] == [("sms", Status.SENT)]
    delivered = parsed.updates[0]
    assert delivered.dedup_key == "event|5b1f7c2e-0c5d-4a8e-9f6b-1d2e3f4a5b6c"
    assert delivered.recipient == "447234123123"
    assert delivered.provider_code == "revision 4"
    assert delivered.details["payload"]["metadata"] == {"orderId": "4711"}


def test_single_failed_event() -> None:
    (u,) = comapi.parse_webhook(raw("comapi", "single_failed.json"), None, NOW).updates
    assert (u.status, u.channel, u.provider_status) == (Status.FAILED, "sms", "message.failed")
    assert u.occurred_at == datetime(2024, 5, 2, 11, 0, 5, tzinfo=UTC)


def test_minimal_envelope_parses() -> None:
    (u,) = comapi.parse_webhook(raw("comapi", "minimal.json"), None, NOW).updates
    assert (u.message_key, u.status, u.channel, u.occurred_at) == (
        "min-message-1",
        Status.READ,
        None,
        None,
    )


def test_other_events_are_kept_without_moving_status() -> None:
    parsed = comapi.parse_webhook(raw("comapi", "other_events.json"), None, NOW)
    assert parsed.problems == []
    # The click and the sentRequest are timeline entries; the profile event has no message.
    assert [(u.provider_status, u.status) for u in parsed.updates] == [
        ("interaction.click", Status.UNKNOWN),
        ("message.sentRequest", Status.UNKNOWN),
    ]
    assert not any(u.unmapped for u in parsed.updates)


def test_a_new_channel_status_value_is_unmapped() -> None:
    body = (
        b'{"eventId": "e1", "name": "message.sent", "payload": {"id": "m1", "details": '
        b'{"channel": "sms", "channelStatus": {"rcs": {"status": "teleported"}}}}}'
    )
    sent, rcs = comapi.parse_webhook(body, None, NOW).updates
    assert sent.status is Status.SENT
    assert (rcs.channel, rcs.status, rcs.unmapped) == ("rcs", Status.UNKNOWN, True)


def test_batch_with_a_bad_envelope_keeps_the_good_ones() -> None:
    body = (
        b'[{"eventId": "e1", "name": "message.sent", "payload": {"id": "m1"}},'
        b' {"name": "message.sent", "payload": {"id": "m2"}},'
        b' "not an envelope"]'
    )
    parsed = comapi.parse_webhook(body, None, NOW)
    assert [u.message_key for u in parsed.updates] == ["m1"]
    assert [p.split(":")[0] for p in parsed.problems] == ["[1]", "[2]"]


@pytest.mark.parametrize(
    "body",
    [
        b"",  # empty
        b"{not json",  # malformed
        b'[{"eventId": "e1"',  # truncated
    ],
)
def test_bytes_that_are_not_json_raise_invalid_report(body: bytes) -> None:
    with pytest.raises(InvalidReport):
        comapi.parse_webhook(body, None, NOW)


def test_json_of_an_unreadable_shape_is_a_problem_not_a_rejection() -> None:
    parsed = comapi.parse_webhook(b'{"hello": "world"}', None, NOW)
    assert parsed.updates == []
    assert parsed.problems
    assert parsed.problems[0].startswith("body:")


def test_single_send_response_registers_with_rules_as_channel_order() -> None:
    reg = Registration(load("comapi", "send_single_response.json"), None, "r", NOW)
    (u,) = comapi.parse_registration(reg)
    assert u.message_key == "d8e296bb-97c4-4495-b98f-1e32e0b11628"
    assert (u.status, u.channel, u.recipient) == (Status.ACCEPTED, "sms", "447123123123")
    assert u.channel_order == ("fbMessenger", "sms")


def test_batch_send_response_takes_recipients_and_order_from_the_request() -> None:
    reg = Registration(
        load("comapi", "send_batch_response.json"),
        load("comapi", "send_batch_request.json"),
        None,
        NOW,
    )
    first, second = comapi.parse_registration(reg)
    assert (first.message_key, first.recipient, first.channel_order) == (
        "58bde0da-b380-4cb2-8dd1-ca74fc7a0cda",
        "447123123123",
        ("whatsApp", "sms"),
    )
    assert (second.recipient, second.channel_order) == ("someone@example.com", ("email",))
    assert first.status is Status.ACCEPTED


def test_batch_send_response_without_request_still_registers() -> None:
    reg = Registration(load("comapi", "send_batch_response.json"), None, None, NOW)
    assert [u.recipient for u in comapi.parse_registration(reg)] == [None, None]


@pytest.mark.parametrize(
    "response",
    [
        {"status": "processing"},  # no messageId
        [{"index": -1, "messageId": "x"}],  # negative index
        [{"index": 0}],  # no messageId in a batch item
    ],
)
def test_bad_send_responses_are_refused(response: object) -> None:
    with pytest.raises(InvalidReport):
        comapi.parse_registration(Registration(response, None, None, NOW))
