"""Messente end to end: signed webhook → Postgres → lookup, through the real app and database."""

import asyncio
import json
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from receiver.providers import messente
from tests.conftest import (
    AUTH,
    MESSENTE_PASSWORD,
    AiohttpClient,
    make_client,
    make_settings,
    projected,
)
from tests.payloads import load, raw

Client = TestClient[Any, Any]
OMNI = "d7248cda-6c1a-4436-acf5-aaf249bb67d3"
VIBER_ID = "0b6a9c1e-7a1f-4d7e-9b0e-2f3c4d5e6f70"
SMS_ID = "fr593ce7-1c2d-4e5f-5k2n-a1b2c3d4e5f6"


def report(
    status: str | None,
    *,
    message_id: str = SMS_ID,
    channel: str = "sms",
    timestamp: str = "2024-05-02T10:16:00.000000",
    omni: str = OMNI,
    **extra: Any,
) -> bytes:
    body = {
        "omnimessage_id": omni,
        "message_id": message_id,
        "channel": channel,
        "status": status,
        "to": "+3725555555",
        "timestamp": timestamp,
        **extra,
    }
    return json.dumps(body).encode()


async def post_report(client: Client, body: bytes, signature: str | None = "valid") -> Any:
    headers = {"Content-Type": "application/json"}
    if signature == "valid":
        headers["X-Messente-Signature"] = messente.sign(MESSENTE_PASSWORD, body)
    elif signature is not None:
        headers["X-Messente-Signature"] = signature
    return await client.post("/webhooks/messente", data=body, headers=headers)


async def lookup(client: Client, id_: str) -> dict[str, Any]:
    resp = await client.get(f"/v1/messages/messente/{id_}", headers=AUTH)
    assert resp.status == 200, await resp.text()
    result: dict[str, Any] = await resp.json()
    return result


async def register(client: Client, with_request: bool = True) -> Any:
    body: dict[str, Any] = {
        "response": load("messente", "send_response_viber_sms.json"),
        "reference": "order-4711",
    }
    if with_request:
        body["request"] = load("messente", "send_request_viber_sms.json")
    return await client.post("/v1/messages/messente", json=body, headers=AUTH)


async def test_signed_report_is_stored_and_readable_by_omnimessage_and_channel_id(
    client: Client, db: asyncpg.Connection
) -> None:
    body = raw("messente", "dlr_sms_delivered_priced.json")
    resp = await post_report(client, body)
    assert resp.status == 200
    assert (await resp.json())["reports"] == 1

    by_omni = await lookup(client, OMNI)
    by_channel_id = await lookup(client, SMS_ID)
    assert by_omni == by_channel_id
    assert by_omni["status"] == "delivered"
    assert by_omni["recipient"] == "+3725555555"
    (event,) = by_omni["events"]
    assert event["provider_status"] == "DELIVRD"
    assert event["channel"] == "sms"
    assert event["channel_message_id"] == SMS_ID
    assert event["source"] == "webhook"
    assert event["occurred_at"] == "2024-05-02T10:16:09.000001+00:00"
    assert event["received_at"]
    assert event["details"]["price_info"]["total_price"] == "0.045"
    # The raw body is kept byte for byte.
    assert await db.fetchval("select body from journal") == body


async def test_report_with_bad_signature_is_refused_and_not_stored(
    client: Client, db: asyncpg.Connection
) -> None:
    body = raw("messente", "dlr_sms_rejected.json")
    resp = await post_report(client, body, signature=messente.sign("wrong-password", body))
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "invalid_signature"
    assert await db.fetchval("select count(*) from journal") == 0


async def test_report_without_signature_is_refused(client: Client, db: asyncpg.Connection) -> None:
    resp = await post_report(client, raw("messente", "dlr_sms_rejected.json"), signature=None)
    assert resp.status == 401
    assert (await resp.json())["error"]["message"] == "signature missing"
    assert await db.fetchval("select count(*) from events") == 0


async def test_tampered_body_fails_verification(client: Client) -> None:
    body = report("DELIVRD")
    signature = messente.sign(MESSENTE_PASSWORD, body)
    resp = await post_report(client, body.replace(b"DELIVRD", b"UNDELIV"), signature=signature)
    assert resp.status == 401


async def test_without_a_configured_password_webhooks_are_refused(
    database_url: str, aiohttp_client: AiohttpClient
) -> None:
    from receiver.http.app import create_app

    client = await aiohttp_client(
        create_app(make_settings(database_url, messente_api_password=None))
    )
    resp = await post_report(client, report("DELIVRD"), signature=None)
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "webhook_not_configured"


async def test_insecure_opt_in_accepts_unsigned_reports(
    database_url: str, aiohttp_client: AiohttpClient
) -> None:

    settings = make_settings(
        database_url, messente_api_password=None, insecure_webhooks=("messente",)
    )
    client = await make_client(aiohttp_client, settings)
    resp = await post_report(client, report("DELIVRD"), signature=None)
    assert resp.status == 200
    assert (await lookup(client, OMNI))["status"] == "delivered"


async def test_a_retried_report_is_one_event(client: Client, db: asyncpg.Connection) -> None:
    body = report("DELIVRD")
    first = await post_report(client, body)
    second = await post_report(client, body)
    assert (first.status, second.status) == (200, 200)
    await projected(client.app)
    assert await db.fetchval("select count(*) from events") == 1
    # Both deliveries are kept as receipts: the raw history is complete.
    assert await db.fetchval("select count(*) from journal") == 2


async def test_late_ack_after_delivery_stays_delivered(client: Client) -> None:
    await post_report(client, report("DELIVRD", timestamp="2024-05-02T10:16:05.000000"))
    await post_report(client, report("ACK", timestamp="2024-05-02T10:16:01.000000"))
    message = await lookup(client, OMNI)
    assert message["status"] == "delivered"
    assert [e["provider_status"] for e in message["events"]] == ["ACK", "DELIVRD"]
    assert message["seq"] == 1  # the late ACK was not a status change


async def test_viber_failing_then_sms_delivered_is_delivered(client: Client) -> None:
    assert (await register(client)).status == 201
    await post_report(
        client,
        report(
            "EXPIRED",
            message_id=VIBER_ID,
            channel="viber",
            timestamp="2024-05-02T10:15:00.000000",
            err=2,
        ),
    )
    await post_report(client, report("DELIVRD", timestamp="2024-05-02T10:16:00.000000"))
    message = await lookup(client, OMNI)
    assert message["status"] == "delivered"
    assert message["channel"] == "sms"
    assert [(a["channel"], a["status"]) for a in message["attempts"]] == [
        ("viber", "expired"),
        ("sms", "delivered"),
    ]


async def test_viber_failing_while_sms_is_pending_is_not_failed(client: Client) -> None:
    await register(client)
    await post_report(client, report("EXPIRED", message_id=VIBER_ID, channel="viber", err=2))
    message = await lookup(client, OMNI)
    assert message["status"] == "sent"
    assert [(a["channel"], a["status"]) for a in message["attempts"]] == [
        ("viber", "expired"),
        ("sms", "accepted"),
    ]


async def test_report_before_registration_then_registration_merges(
    client: Client, db: asyncpg.Connection
) -> None:
    await post_report(client, report("ACK", message_id=VIBER_ID, channel="viber"))
    before = await lookup(client, OMNI)
    assert before["status"] == "sent"
    assert before["registered_at"] is None

    resp = await register(client)
    assert resp.status == 201
    assert (await resp.json())["messages"] == [
        {"provider": "messente", "message_id": OMNI, "status": "sent"}
    ]
    after = await lookup(client, OMNI)
    assert after["registered_at"] is not None
    assert after["reference"] == "order-4711"
    assert after["channel_order"] == ["viber", "sms"]
    assert sorted(after["aliases"]) == sorted([VIBER_ID, SMS_ID])
    assert await db.fetchval("select count(*) from messages") == 1
    assert [e["source"] for e in after["events"]].count("send") == 2


async def test_registration_makes_the_message_accepted(client: Client) -> None:
    resp = await register(client, with_request=False)
    assert resp.status == 201
    message = await lookup(client, VIBER_ID)
    assert message["status"] == "accepted"
    assert message["channel_order"] is None
    # Registering the same send again changes nothing.
    again = await register(client, with_request=False)
    assert again.status == 201
    assert await lookup(client, VIBER_ID) == message


async def test_concurrent_identical_reports_store_one_event(
    client: Client, db: asyncpg.Connection
) -> None:
    body = report("DELIVRD")
    responses = await asyncio.gather(*(post_report(client, body) for _ in range(20)))
    assert [r.status for r in responses] == [200] * 20
    await projected(client.app)
    assert await db.fetchval("select count(*) from events") == 1
    assert await db.fetchval("select count(*) from messages") == 1
    assert await db.fetchval("select seq from messages") == 1


async def test_concurrent_reports_for_many_messages_are_all_stored(
    client: Client, db: asyncpg.Connection
) -> None:
    bodies = [report("DELIVRD", omni=f"omni-{i}", message_id=f"msg-{i}") for i in range(60)]
    responses = await asyncio.gather(*(post_report(client, b) for b in bodies))
    assert all(r.status == 200 for r in responses)
    await projected(client.app)
    assert await db.fetchval("select count(*) from messages where status = 'delivered'") == 60


async def test_unknown_status_is_stored_raw_as_unknown_and_counted(client: Client) -> None:
    await post_report(client, report("TELEPORTED", timestamp="2024-05-02T10:00:00"))
    await post_report(client, report("TELEPORTED", timestamp="2024-05-02T10:00:01"))
    message = await lookup(client, OMNI)
    assert message["status"] == "unknown"
    assert {e["provider_status"] for e in message["events"]} == {"TELEPORTED"}
    resp = await client.get("/v1/unmapped", headers=AUTH)
    (row,) = (await resp.json())["unmapped"]
    assert (row["provider"], row["provider_status"], row["count"]) == ("messente", "TELEPORTED", 2)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "JSON"),
        (b'{"omnimessage_id": "o", "status": "DELIVRD"', "truncated"),
        (b'{"message_id": "m", "status": "DELIVRD"}', "omnimessage_id"),
        (b'{"omnimessage_id": ["o"], "status": "DELIVRD"}', "omnimessage_id"),
        (b"", "empty"),
        (b'[{"omnimessage_id": "o"}]', "an array"),
        (b'{"omnimessage_id": "", "status": "DELIVRD"}', "empty id"),
        (json.dumps({"omnimessage_id": "o" * 201}).encode(), "id too long"),
    ],
)
async def test_signed_but_unreadable_report_is_400_and_kept_raw(
    client: Client, db: asyncpg.Connection, body: bytes, reason: str
) -> None:
    resp = await post_report(client, body)
    assert resp.status == 400, reason
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_report"
    stored = await db.fetchrow(
        "select body, problem from journal where receipt_id = $1::uuid", error["receipt_id"]
    )
    assert stored is not None
    assert stored["body"] == body
    assert stored["problem"]


async def test_a_report_that_names_its_message_but_does_not_parse_is_acknowledged_and_kept(
    client: Client, db: asyncpg.Connection
) -> None:
    # Checked on arrival (a JSON object naming its omnimessage), parsed by the projector: a
    # field that does not parse costs no 400, whose retry would carry the same bytes. The
    # receipt keeps the body and the problem, for reprocess after a parser fix.
    body = json.dumps({"omnimessage_id": OMNI, "status": "DELIVRD", "err": "not a number"})
    resp = await post_report(client, body.encode())
    assert resp.status == 200
    answer = await resp.json()
    assert (answer["reports"], answer["problems"]) == (1, [])
    await projected(client.app)
    stored = await db.fetchrow(
        "select body, problem from journal where receipt_id = $1::uuid", answer["receipt_id"]
    )
    assert stored is not None
    assert stored["body"] == body.encode()
    assert "err" in stored["problem"]
    assert await db.fetchval("select count(*) from events") == 0
    listed = await client.get("/v1/receipts/problems", headers=AUTH)
    assert answer["receipt_id"] in json.dumps(await listed.json())


async def test_oversized_body_is_413_json(database_url: str, aiohttp_client: AiohttpClient) -> None:

    client = await make_client(aiohttp_client, make_settings(database_url, max_body_bytes=1024))
    body = report("DELIVRD", padding="x" * 4096)
    resp = await post_report(client, body)
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "body_too_large"


async def test_nul_characters_do_not_break_storage(client: Client) -> None:
    resp = await post_report(client, report("DELIVRD", error="bad\u0000text", sender="a\u0000b"))
    assert resp.status == 200
    message = await lookup(client, OMNI)
    assert message["events"][0]["details"]["sender"] == "ab"


async def test_lookup_of_unknown_id_is_404_json(client: Client) -> None:
    resp = await client.get("/v1/messages/messente/nope", headers=AUTH)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "message_not_found"


async def test_unknown_provider_is_404(client: Client) -> None:
    assert (await client.post("/webhooks/acme", data=b"{}")).status == 404
    resp = await client.get("/v1/messages/acme/x", headers=AUTH)
    assert (await resp.json())["error"]["code"] == "unknown_provider"


@pytest.mark.parametrize(
    "headers",
    [
        {},  # no token at all
        {"Authorization": "Bearer wrong"},  # wrong token
        {"Authorization": "Basic dGVzdC10b2tlbg=="},  # wrong scheme
    ],
)
async def test_client_api_needs_a_valid_bearer_token(
    client: Client, headers: dict[str, str]
) -> None:
    resp = await client.get(f"/v1/messages/messente/{OMNI}", headers=headers)
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{", "invalid_body"),  # malformed JSON
        (b'{"request": {}}', "invalid_body"),  # no response
        (b'{"response": {"omnimessage_id": "o"}}', "invalid_send_response"),  # no messages
        (b'{"response": {}, "reference": 5}', "invalid_body"),  # reference not a string
        (b'{"response": {}, "surprise": 1}', "invalid_body"),  # unknown field
    ],
)
async def test_bad_registrations_are_400(client: Client, body: bytes, code: str) -> None:
    resp = await client.post("/v1/messages/messente", data=body, headers=AUTH)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == code


async def test_readyz_reports_the_database(client: Client) -> None:
    resp = await client.get("/readyz")
    assert resp.status == 200


async def test_one_log_line_per_request_with_the_webhook_facts_and_no_secrets(
    client: Client,
) -> None:
    import io

    from receiver import logs

    body = report("DELIVRD")
    out = io.BytesIO()
    logs.configure("info", stream=out)
    try:
        good = await post_report(client, body)
        bad = await post_report(client, body, signature="0" * 64)
        logs.flush()
    finally:
        logs.reset()
    lines = [json.loads(raw) for raw in out.getvalue().splitlines()]
    access = [e for e in lines if e["event"] == "http.request"]
    assert [(e["provider"], e["reports"], e["problems"], e["status"]) for e in access[:1]] == [
        ("messente", 1, 0, 200)
    ]
    assert [e["status"] for e in access] == [200, 401]
    assert [e["request_id"] for e in access] == [
        good.headers["X-Request-Id"],
        bad.headers["X-Request-Id"],
    ]
    assert all(e["level"] == "info" and e["timestamp"].endswith("Z") for e in access)
    # A line logged while handling a request carries that request's id.
    (warning,) = [e for e in lines if e["event"] == "webhook.unverified"]
    assert warning["request_id"] == bad.headers["X-Request-Id"]
    text = out.getvalue().decode()
    assert MESSENTE_PASSWORD not in text
    assert messente.sign(MESSENTE_PASSWORD, body) not in text


async def test_metrics_count_webhooks_and_reports(client: Client) -> None:
    body = report("DELIVRD")
    await post_report(client, body)
    await post_report(client, body)
    await post_report(client, body, signature="0" * 64)
    await projected(client.app)
    resp = await client.get("/metrics")
    assert resp.status == 200
    text = await resp.text()
    # Labels as prometheus-client writes them: sorted by name.
    ok = 'dlr_webhook_requests_total{account="default",provider="messente",status="200"} 2.0'
    assert ok in text
    assert 'dlr_webhook_requests_total{account="none",provider="messente",status="401"} 1.0' in text
    assert 'dlr_reports_total{account="default",outcome="new",provider="messente"} 1.0' in text
    dup = 'dlr_reports_total{account="default",outcome="duplicate",provider="messente"} 1.0'
    assert dup in text
    assert "dlr_forward_pending 0" in text
