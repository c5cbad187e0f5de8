"""Messente: signature check and report/registration parsing, without a server."""

import json
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from receiver.providers import messente
from receiver.providers.base import Registration, Verification
from receiver.reports import InvalidReport
from receiver.settings import Account
from receiver.status import Status
from tests.payloads import load, raw

NOW = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)
# The account whose API password signs the reports.
ACCOUNT = Account(secret=SecretStr("pw"))


def test_signature_over_raw_bytes_verifies() -> None:
    body = raw("messente", "dlr_sms_rejected.json")
    headers = {"X-Messente-Signature": messente.sign("pw", body)}
    assert messente.verify(ACCOUNT, headers, body) is Verification.OK


def test_signature_accepts_upper_case_hex() -> None:
    body = b'{"a": 1}'
    headers = {"X-Messente-Signature": messente.sign("pw", body).upper()}
    assert messente.verify(ACCOUNT, headers, body) is Verification.OK


def test_signature_of_reserialised_json_does_not_verify() -> None:
    body = raw("messente", "dlr_sms_rejected.json")
    reserialised = json.dumps(json.loads(body)).encode()
    headers = {"X-Messente-Signature": messente.sign("pw", reserialised)}
    assert messente.verify(ACCOUNT, headers, body) is Verification.BAD


def test_signature_with_another_key_is_bad() -> None:
    body = b"{}"
    headers = {"X-Messente-Signature": messente.sign("other", body)}
    assert messente.verify(ACCOUNT, headers, body) is Verification.BAD


def test_missing_signature_is_missing() -> None:
    assert messente.verify(ACCOUNT, {}, b"{}") is Verification.MISSING


def test_without_a_password_verification_is_not_configured() -> None:
    assert messente.verify(Account(), {"X-Messente-Signature": "ab"}, b"{}") is (
        Verification.NOT_CONFIGURED
    )


@pytest.mark.parametrize(
    ("raw_status", "expected"),
    [
        ("ACK", Status.SENT),
        ("ACCEPTD", Status.SENT),
        ("DELIVRD", Status.DELIVERED),
        ("SEEN", Status.READ),
        ("UNDELIV", Status.FAILED),
        ("FAILED", Status.FAILED),
        ("DELETED", Status.FAILED),
        ("REJECTD", Status.REJECTED),
        ("NACK", Status.REJECTED),
        ("EXPIRED", Status.EXPIRED),
        ("UNKNOWN", Status.UNKNOWN),
        ("delivrd", Status.DELIVERED),  # case is not significant
        (None, Status.ACCEPTED),  # null while Messente is still processing
    ],
)
def test_status_values_map_to_the_model(raw_status: str | None, expected: Status) -> None:
    body = json.dumps({"omnimessage_id": "o", "message_id": "m", "status": raw_status}).encode()
    (update,) = messente.parse_webhook(body, "application/json", NOW).updates
    assert update.status is expected
    assert update.unmapped is False


def test_an_unknown_status_value_is_kept_raw_and_flagged_unmapped() -> None:
    body = b'{"omnimessage_id": "o", "message_id": "m", "status": "TELEPORTED"}'
    (update,) = messente.parse_webhook(body, None, NOW).updates
    assert update.status is Status.UNKNOWN
    assert update.unmapped is True
    assert update.provider_status == "TELEPORTED"


def test_report_fields_land_on_the_update() -> None:
    body = raw("messente", "dlr_viber_expired.json")
    (u,) = messente.parse_webhook(body, "application/json", NOW).updates
    assert u.message_key == "d7248cda-6c1a-4436-acf5-aaf249bb67d3"
    assert u.attempt_id == "0b6a9c1e-7a1f-4d7e-9b0e-2f3c4d5e6f70"
    assert u.aliases == ("0b6a9c1e-7a1f-4d7e-9b0e-2f3c4d5e6f70",)
    assert u.channel == "viber"
    assert u.status is Status.EXPIRED
    assert u.provider_code == "2"
    assert u.error_code == "2"
    assert u.error_text == "Sending message expired"
    assert u.permanent is True
    assert u.recipient == "+3725555555"
    # Zone-less Messente timestamps are read as UTC.
    assert u.occurred_at == datetime(2024, 5, 2, 10, 15, 0, 120000, tzinfo=UTC)
    assert u.details["sender"] == "MyBrand"


def test_price_info_is_kept_in_details() -> None:
    (u,) = messente.parse_webhook(
        raw("messente", "dlr_sms_delivered_priced.json"), None, NOW
    ).updates
    assert u.details["price_info"] == {
        "part_price": "0.045",
        "parts_count": 1,
        "total_price": "0.045",
    }
    assert u.error_code is None  # err 0 is "no error"
    assert u.permanent is None


def test_err_999_is_the_temporary_error() -> None:
    body = b'{"omnimessage_id": "o", "message_id": "m", "status": "FAILED", "err": 999}'
    (u,) = messente.parse_webhook(body, None, NOW).updates
    assert u.permanent is False


def test_the_same_report_twice_has_the_same_dedup_key() -> None:
    body = raw("messente", "dlr_sms_rejected.json")
    first = messente.parse_webhook(body, None, NOW).updates[0]
    again = messente.parse_webhook(body, None, datetime.now(UTC)).updates[0]
    assert first.dedup_key == again.dedup_key


def test_different_statuses_of_one_channel_message_have_different_dedup_keys() -> None:
    ack = b'{"omnimessage_id": "o", "message_id": "m", "status": "ACK", "timestamp": "2024-01-01"}'
    dlv = ack.replace(b"ACK", b"DELIVRD")
    assert (
        messente.parse_webhook(ack, None, NOW).updates[0].dedup_key
        != messente.parse_webhook(dlv, None, NOW).updates[0].dedup_key
    )


@pytest.mark.parametrize(
    "body",
    [
        b"",  # empty
        b"not json",  # not JSON at all
        b'{"omnimessage_id": "o", "status": "DELIVRD"',  # truncated
        b"[]",  # an array, not a report
        b'{"message_id": "m", "status": "DELIVRD"}',  # no omnimessage_id
        b'{"omnimessage_id": "", "status": "DELIVRD"}',  # empty omnimessage_id
        b'{"omnimessage_id": 5, "status": "DELIVRD"}',  # wrong type
        b'{"omnimessage_id": "o", "err": "lots"}',  # err not an integer
        b'{"omnimessage_id": "o", "timestamp": "yesterday"}',  # unreadable time
    ],
)
def test_unreadable_reports_raise_invalid_report(body: bytes) -> None:
    with pytest.raises(InvalidReport):
        messente.parse_webhook(body, "application/json", NOW)


def test_registration_creates_one_accepted_attempt_per_channel_in_request_order() -> None:
    reg = Registration(
        load("messente", "send_response_viber_sms.json"),
        load("messente", "send_request_viber_sms.json"),
        "order-1",
        NOW,
    )
    updates = messente.parse_registration(reg)
    assert [(u.channel, u.status) for u in updates] == [
        ("viber", Status.ACCEPTED),
        ("sms", Status.ACCEPTED),
    ]
    assert {u.message_key for u in updates} == {"d7248cda-6c1a-4436-acf5-aaf249bb67d3"}
    assert all(u.channel_order == ("viber", "sms") for u in updates)
    assert all(u.reference == "order-1" and u.registered for u in updates)


def test_registration_without_request_has_no_channel_order() -> None:
    reg = Registration(load("messente", "send_response_viber_sms.json"), None, None, NOW)
    assert all(u.channel_order is None for u in messente.parse_registration(reg))


@pytest.mark.parametrize(
    "response",
    [
        {},  # nothing
        {"omnimessage_id": "o", "messages": []},  # no channel messages
        {"omnimessage_id": "o", "messages": [{"channel": "sms"}]},  # no message_id
        ["not", "an", "object"],
    ],
)
def test_bad_send_responses_are_refused(response: object) -> None:
    with pytest.raises(InvalidReport):
        messente.parse_registration(Registration(response, None, None, NOW))
