"""Report shapes from the providers' documents that the parsers once got wrong (issue 11)."""

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from receiver.providers import comapi, infobip, mercury
from receiver.providers.base import Registration
from receiver.status import Status
from tests.payloads import load, raw

NOW = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)


def test_messages_api_integer_mcc_mnc_costs_nothing_and_is_kept() -> None:
    parsed = infobip.parse_webhook(raw("infobip", "messages_api_mccmnc_int.json"), None, NOW)
    assert parsed.problems == []
    (u,) = parsed.updates
    assert (u.status, u.channel) == (Status.DELIVERED, "sms")
    assert u.details["mccMnc"] == 22801


def test_odd_types_in_fields_that_do_not_decide_the_status_are_kept_not_fatal() -> None:
    body = (
        b'{"results": [{"messageId": "odd-1", "smsCount": "one", "price": "free",'
        b' "platform": [1], "callbackData": 42, "to": 385981178000,'
        b' "status": {"groupId": 3, "id": 5, "name": "DELIVERED_TO_HANDSET"}}]}'
    )
    (u,) = infobip.parse_webhook(body, None, NOW).updates
    assert u.status is Status.DELIVERED
    assert (u.reference, u.recipient) == ("42", "385981178000")
    assert u.details["price"] == "free"


def test_a_report_with_a_bad_deciding_field_is_still_a_problem() -> None:
    body = b'{"results": [{"messageId": "bad-1", "status": {"groupId": "three"}}]}'
    parsed = infobip.parse_webhook(body, None, NOW)
    assert parsed.updates == []
    assert "results[0]" in parsed.problems[0]


def test_whatsapp_report_names_no_channel_and_its_empty_bulk_is_no_group() -> None:
    (u,) = infobip.parse_webhook(raw("infobip", "whatsapp_report.json"), None, NOW).updates
    assert u.channel is None  # not "sms": the projector takes the registered channel
    assert u.group_key is None
    assert u.status is Status.DELIVERED
    assert u.occurred_at == datetime(2024, 6, 1, 12, 0, 4, tzinfo=UTC)  # -0300 honoured


def test_sms_reports_without_a_channel_field_are_sms_by_their_kind() -> None:
    v2 = infobip.parse_webhook(raw("infobip", "sms_v2_batch.json"), None, NOW).updates[0]
    (v3,) = infobip.parse_webhook(raw("infobip", "sms_v3_report.json"), None, NOW).updates
    assert (v2.channel, v3.channel) == ("sms", "sms")


def test_messages_api_seen_report_keeps_its_channel() -> None:
    (u,) = infobip.parse_webhook(raw("infobip", "messages_api_seen.json"), None, NOW).updates
    assert (u.status, u.channel) == (Status.READ, "viber_bm")


def test_sms_v3_send_response_registers_its_destination() -> None:
    reg = Registration(load("infobip", "sms_v3_send_response.json"), None, None, NOW)
    (u,) = infobip.parse_registration(reg)
    assert (u.message_key, u.recipient, u.status) == ("v3-sent-1", "41793026727", Status.ACCEPTED)
    assert u.group_key == "v3-bulk-1"


def test_a_registration_channel_is_carried_by_its_updates() -> None:
    reg = Registration(
        {"messages": [{"messageId": "wa-msg-1", "to": "441134960000"}]}, None, None, NOW, "whatsapp"
    )
    (u,) = infobip.parse_registration(reg)
    assert u.channel == "whatsapp"


def test_comapi_inbound_message_is_not_a_status_report() -> None:
    parsed = comapi.parse_webhook(raw("comapi", "inbound.json"), None, NOW)
    assert parsed.updates == []
    assert parsed.problems == []


def test_mercury_zone_less_times_are_the_accounts_local_time() -> None:
    # The seed: sent at 2016-05-12T10:00:00+03:00, the dispatch shows 2016-05-12T10:00:00.
    athens = ZoneInfo("Europe/Athens")
    local = datetime(2016, 5, 12, 10, 0)
    assert mercury.local_to_utc(local, athens) == datetime(2016, 5, 12, 7, 0, tzinfo=UTC)
    assert mercury.local_to_utc(local, ZoneInfo("UTC")) == datetime(2016, 5, 12, 10, tzinfo=UTC)
    with_offset = datetime(2016, 5, 12, 10, 0, tzinfo=ZoneInfo("Asia/Tokyo"))
    assert mercury.local_to_utc(with_offset, athens) == datetime(2016, 5, 12, 1, tzinfo=UTC)
