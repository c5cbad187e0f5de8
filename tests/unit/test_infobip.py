"""Infobip: Basic verification and report parsing (JSON and XML), without a server."""

import base64
import json
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from receiver.providers import infobip
from receiver.providers.base import Registration, Verification
from receiver.reports import InvalidReport
from receiver.settings import Account
from receiver.status import Status
from tests.payloads import load, raw

NOW = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)
ACCOUNT = Account(username="ib", secret=SecretStr("s3cret"))


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (basic("ib", "s3cret"), Verification.OK),
        (basic("ib", "wrong"), Verification.BAD),  # wrong password
        (basic("other", "s3cret"), Verification.BAD),  # wrong user
        ({"Authorization": "Bearer s3cret"}, Verification.BAD),  # wrong scheme
        ({"Authorization": "Basic !!!not-base64"}, Verification.BAD),  # garbage credentials
        ({}, Verification.MISSING),
        # Other spellings of the right credentials: the header is not compared as text only.
        (
            {"Authorization": basic("ib", "s3cret")["Authorization"].replace("Basic", "basic")},
            Verification.OK,
        ),
        (
            {"Authorization": basic("ib", "s3cret")["Authorization"].replace(" ", "   ")},
            Verification.OK,
        ),
        ({"Authorization": basic("ib", "s3cret")["Authorization"] + "x"}, Verification.BAD),
    ],
)
def test_basic_credentials_are_checked(headers: dict[str, str], expected: Verification) -> None:
    assert infobip.verify(ACCOUNT, headers, b"{}") is expected


def test_without_credentials_configured_verification_is_not_configured() -> None:
    assert infobip.verify(Account(), basic("a", "b"), b"{}") is Verification.NOT_CONFIGURED


def test_sms_v2_batch_parses_every_report_with_its_error() -> None:
    parsed = infobip.parse_webhook(raw("infobip", "sms_v2_batch.json"), "application/json", NOW)
    assert parsed.problems == []
    failed, expired, delivered = parsed.updates
    assert (failed.status, expired.status, delivered.status) == (
        Status.FAILED,
        Status.EXPIRED,
        Status.DELIVERED,
    )
    assert failed.message_key == "2034072219640523073"
    assert failed.group_key == "2034072219640523072"
    assert failed.reference == "order:4711"
    assert failed.recipient == "385981178000"
    assert failed.channel == "sms"
    assert failed.provider_status == "UNDELIVERABLE_NOT_DELIVERED"
    assert failed.provider_code == "2.9"
    assert (failed.error_code, failed.error_text, failed.permanent) == (
        "1",
        "Unknown Subscriber",
        True,
    )
    assert expired.permanent is False
    # "+0000" offsets parse; doneAt is when the status was reached.
    assert failed.occurred_at == datetime(2024, 3, 1, 9, 0, 7, 880000, tzinfo=UTC)
    # NO_ERROR is not an error.
    assert (delivered.error_code, delivered.permanent) == (None, None)
    assert failed.details["price"] == {"pricePerMessage": 0.0, "currency": "EUR"}
    assert failed.details["campaignReferenceId"] == "summersale"


def test_delivered_to_operator_is_sent_not_delivered() -> None:
    (update,) = infobip.parse_webhook(raw("infobip", "sms_v3_report.json"), None, NOW).updates
    assert update.status is Status.SENT
    assert update.provider_status == "DELIVERED_TO_OPERATOR"
    assert update.details["platform"] == {"entityId": "entity-1", "applicationId": "app-1"}
    assert update.details["messageCount"] == 1


def test_omni_report_carries_its_channel() -> None:
    (update,) = infobip.parse_webhook(raw("infobip", "omni_report.json"), None, NOW).updates
    assert update.channel == "viber"
    assert update.status is Status.DELIVERED


def test_messages_api_report_uses_destination_as_recipient() -> None:
    (u,) = infobip.parse_webhook(raw("infobip", "messages_api_report.json"), None, NOW).updates
    assert (u.channel, u.recipient, u.status) == ("whatsapp", "441134960001", Status.DELIVERED)


def test_seen_report_is_read() -> None:
    (u,) = infobip.parse_webhook(raw("infobip", "omni_seen.json"), None, NOW).updates
    assert u.status is Status.READ
    assert u.occurred_at == datetime(2024, 4, 1, 10, 7, tzinfo=UTC)


def test_minimal_report_with_only_a_group_parses() -> None:
    (u,) = infobip.parse_webhook(raw("infobip", "minimal.json"), None, NOW).updates
    assert u.status is Status.SENT
    assert u.occurred_at is None


def test_unknown_group_is_unmapped_and_unknown_id_maps_by_its_group() -> None:
    odd, pigeon = infobip.parse_webhook(raw("infobip", "unknown_group.json"), None, NOW).updates
    assert (odd.status, odd.unmapped) == (Status.UNKNOWN, True)
    assert (pigeon.status, pigeon.unmapped) == (Status.DELIVERED, False)


def test_one_bad_report_does_not_lose_the_others() -> None:
    parsed = infobip.parse_webhook(raw("infobip", "batch_with_bad_item.json"), None, NOW)
    assert [u.message_key for u in parsed.updates] == ["good-1", "good-3"]
    assert len(parsed.problems) == 2
    assert parsed.problems[0].startswith("results[1]: messageId")
    assert parsed.problems[1].startswith("results[2]: doneAt")


def test_xml_batch_parses_like_json() -> None:
    parsed = infobip.parse_webhook(raw("infobip", "sms_v2_batch.xml"), "application/xml", NOW)
    delivered, rejected = parsed.updates
    assert (delivered.message_key, delivered.status) == ("xml-msg-1", Status.DELIVERED)
    assert delivered.details["price"] == {"pricePerMessage": "0.01", "currency": "EUR"}
    assert (rejected.status, rejected.error_code, rejected.permanent) == (
        Status.REJECTED,
        "581",
        True,
    )


def test_xml_with_a_single_result_parses() -> None:
    body = (
        b"<reportResponse><results><result><messageId>one</messageId>"
        b"<status><groupId>3</groupId><id>5</id></status></result></results></reportResponse>"
    )
    (u,) = infobip.parse_webhook(body, "text/xml", NOW).updates
    assert (u.message_key, u.status) == ("one", Status.DELIVERED)


def test_same_report_from_json_and_xml_has_the_same_dedup_key() -> None:
    xml_update = infobip.parse_webhook(raw("infobip", "sms_v2_batch.xml"), "text/xml", NOW).updates[
        0
    ]
    as_json = json.dumps({"results": [xml_update.details]}).encode()
    (json_update,) = infobip.parse_webhook(as_json, "application/json", NOW).updates
    assert json_update.dedup_key == xml_update.dedup_key


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"", "application/json"),  # empty
        (b"results", "application/json"),  # not JSON
        (b'{"results": [', "application/json"),  # truncated
        (b'{"result": []}', "application/json"),  # no results key
        (b'{"results": {}}', "application/json"),  # results not an array
        (b"[]", "application/json"),  # array at the top
        (b"<reportResponse><results>", "application/xml"),  # truncated XML
        (b"<reportResponse/>", "application/xml"),  # XML without results
        (  # an entity-expansion attempt
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa">]><r>&a;</r>',
            "application/xml",
        ),
    ],
)
def test_unreadable_bodies_raise_invalid_report(body: bytes, content_type: str) -> None:
    with pytest.raises(InvalidReport):
        infobip.parse_webhook(body, content_type, NOW)


def test_send_response_registers_each_message_in_its_bulk() -> None:
    reg = Registration(load("infobip", "send_response.json"), None, "ref-1", NOW)
    enroute, accepted = infobip.parse_registration(reg)
    assert (enroute.message_key, enroute.status) == ("MESSAGE-ID-123-xyz", Status.SENT)
    assert (accepted.status, accepted.provider_status) == (Status.ACCEPTED, "PENDING_ACCEPTED")
    assert enroute.group_key == "Bulk-ID-12xyz"
    assert enroute.recipient == "41793026727"
    assert enroute.registered
    assert enroute.reference == "ref-1"


def test_send_response_without_messages_is_refused() -> None:
    with pytest.raises(InvalidReport):
        infobip.parse_registration(Registration({"bulkId": "x", "messages": []}, None, None, NOW))


def billion_laughs(encoding: str) -> bytes:
    entities = '<!ENTITY a0 "' + "lol" * 10 + '">'
    entities += "".join(f'<!ENTITY a{i} "{f"&a{i - 1};" * 10}">' for i in range(1, 9))
    document = (
        f'<?xml version="1.0" encoding="{encoding}"?><!DOCTYPE r [{entities}]>'
        "<reportResponse><results><result><messageId>&a8;</messageId></result></results>"
        "</reportResponse>"
    )
    return document.encode(encoding)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_a_dtd_is_refused_by_the_parser_in_any_encoding(encoding: str) -> None:
    # utf-16 writes a BOM; -le and -be do not, and expat tells them by the first bytes.
    body = billion_laughs(encoding)
    assert b"<!DOCTYPE" not in body or encoding == "utf-8"
    with pytest.raises(InvalidReport, match=r"DTD|well-formed|encoding"):
        infobip.parse_webhook(body, "application/xml", NOW)


def test_a_utf16_document_without_a_dtd_is_read() -> None:
    body = (
        '<?xml version="1.0" encoding="utf-16"?><reportResponse><results><result>'
        "<messageId>u16</messageId><status><groupId>3</groupId></status>"
        "</result></results></reportResponse>"
    ).encode("utf-16")
    (update,) = infobip.parse_webhook(body, "application/xml", NOW).updates
    assert update.message_key == "u16"
