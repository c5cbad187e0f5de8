"""Infobip, Comapi and Mercury end to end through HTTP and Postgres; search and group views."""

import asyncio
import base64
import io
import json
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from receiver.providers import comapi, messente
from tests.conftest import (
    AUTH,
    COMAPI_SECRET,
    INFOBIP_PASSWORD,
    INFOBIP_USER,
    MESSENTE_PASSWORD,
    projected,
)
from tests.payloads import load, raw

Client = TestClient[Any, Any]
INFOBIP_AUTH = {
    "Authorization": "Basic "
    + base64.b64encode(f"{INFOBIP_USER}:{INFOBIP_PASSWORD}".encode()).decode()
}


async def get_json(client: Client, path: str, status: int = 200) -> Any:
    resp = await client.get(path, headers=AUTH)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def post_infobip(
    client: Client,
    body: bytes | io.BytesIO,
    content_type: str = "application/json",
    auth: bool = True,
) -> Any:
    headers = {"Content-Type": content_type, **(INFOBIP_AUTH if auth else {})}
    return await client.post("/webhooks/infobip", data=body, headers=headers)


async def post_comapi(client: Client, body: bytes, signature: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    headers["X-Comapi-Signature"] = signature or comapi.sign(COMAPI_SECRET, body)
    return await client.post("/webhooks/comapi", data=body, headers=headers)


# Infobip


async def test_infobip_batch_is_stored_and_each_message_readable(client: Client) -> None:
    resp = await post_infobip(client, raw("infobip", "sms_v2_batch.json"))
    assert resp.status == 200
    assert (await resp.json())["reports"] == 3
    failed = await get_json(client, "/v1/messages/infobip/2034072219640523073")
    assert failed["status"] == "failed"
    (event,) = failed["events"]
    assert (event["error_code"], event["error_text"], event["permanent"]) == (
        "1",
        "Unknown Subscriber",
        True,
    )
    assert event["details"]["error"]["name"] == "EC_UNKNOWN_SUBSCRIBER"
    assert failed["reference"] == "order:4711"
    group = await get_json(client, "/v1/groups/infobip/2034072219640523072")
    assert group["counts"] == {"delivered": 1, "expired": 1, "failed": 1}
    assert group["total"] == 3


async def test_infobip_xml_batch_is_stored(client: Client) -> None:
    resp = await post_infobip(client, raw("infobip", "sms_v2_batch.xml"), "application/xml")
    assert resp.status == 200
    message = await get_json(client, "/v1/messages/infobip/xml-msg-2")
    assert message["status"] == "rejected"


async def test_infobip_without_or_with_wrong_credentials_is_401(
    client: Client, db: asyncpg.Connection
) -> None:
    body = raw("infobip", "sms_v2_batch.json")
    assert (await post_infobip(client, body, auth=False)).status == 401
    wrong = {"Authorization": "Basic " + base64.b64encode(b"infobip-hook:nope").decode()}
    resp = await client.post("/webhooks/infobip", data=body, headers=wrong)
    assert resp.status == 401
    assert await db.fetchval("select count(*) from journal") == 0


async def test_infobip_bad_report_in_a_batch_keeps_the_good_ones(
    client: Client, db: asyncpg.Connection
) -> None:
    resp = await post_infobip(client, raw("infobip", "batch_with_bad_item.json"))
    # 200: Infobip must not retry (or drop) the whole batch for one bad report.
    assert resp.status == 200
    result = await resp.json()
    # Acknowledged on a look at the body: the four reports are read by the projector.
    assert (result["reports"], result["problems"]) == (4, [])
    await projected(client.app)
    assert await db.fetchval("select count(*) from events") == 2
    receipt = await db.fetchrow("select body, problem from journal")
    assert receipt is not None
    assert receipt["body"] == raw("infobip", "batch_with_bad_item.json")
    # The two it could not read are named on the receipt, where reprocess finds them.
    assert "results[1]" in receipt["problem"]
    problems = await (await client.get(f"/v1/receipts/{result['receipt_id']}", headers=AUTH)).json()
    assert problems["problem"] == receipt["problem"]
    assert len(problems["events"]) == 2


async def test_infobip_registration_then_delivery_to_operator_then_handset(client: Client) -> None:
    body = {"response": load("infobip", "send_response.json"), "reference": "campaign-9"}
    resp = await client.post("/v1/messages/infobip", json=body, headers=AUTH)
    assert resp.status == 201
    assert [m["status"] for m in (await resp.json())["messages"]] == ["accepted", "sent"]

    def report(status_id: int, name: str, done: str) -> bytes:
        return json.dumps(
            {
                "results": [
                    {
                        "messageId": "MESSAGE-ID-123-xyz",
                        "bulkId": "Bulk-ID-12xyz",
                        "doneAt": done,
                        "status": {"groupId": 3, "id": status_id, "name": name},
                    }
                ]
            }
        ).encode()

    await post_infobip(client, report(2, "DELIVERED_TO_OPERATOR", "2024-04-01T10:00:01.000+0000"))
    message = await get_json(client, "/v1/messages/infobip/MESSAGE-ID-123-xyz")
    assert message["status"] == "sent"
    await post_infobip(client, report(5, "DELIVERED_TO_HANDSET", "2024-04-01T10:00:05.000+0000"))
    message = await get_json(client, "/v1/messages/infobip/MESSAGE-ID-123-xyz")
    assert message["status"] == "delivered"
    assert message["reference"] == "campaign-9"
    assert sorted(e["source"] for e in message["events"]) == ["send", "webhook", "webhook"]


async def test_infobip_unknown_codes_are_listed_in_unmapped(client: Client) -> None:
    await post_infobip(client, raw("infobip", "unknown_group.json"))
    unmapped = (await get_json(client, "/v1/unmapped"))["unmapped"]
    assert [(u["provider"], u["provider_status"], u["count"]) for u in unmapped] == [
        ("infobip", "QUANTUM_SUPERPOSED", 1)
    ]
    assert (await get_json(client, "/v1/messages/infobip/odd-1"))["status"] == "unknown"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{", "application/json"),  # truncated JSON
        (b"hello", "text/plain"),  # not JSON
        (b"<reportResponse><results>", "application/xml"),  # truncated XML
    ],
)
async def test_infobip_unreadable_body_is_400_and_kept(
    client: Client, db: asyncpg.Connection, body: bytes, content_type: str
) -> None:
    resp = await post_infobip(client, body, content_type)
    assert resp.status == 400
    assert await db.fetchval("select body from journal") == body


# Comapi


async def test_comapi_batch_with_failover_is_stored(client: Client) -> None:
    resp = await post_comapi(client, raw("comapi", "batch_failover.json"))
    assert resp.status == 200
    message = await get_json(client, "/v1/messages/comapi/287d32c0-170e-4a80-bfc3-48f376d17682")
    assert message["status"] == "delivered"
    assert {(a["channel"], a["status"]) for a in message["attempts"]} == {
        ("fbMessenger", "failed"),
        ("sms", "delivered"),
    }


async def test_comapi_retried_event_is_one_event(client: Client, db: asyncpg.Connection) -> None:
    body = raw("comapi", "single_failed.json")
    await post_comapi(client, body)
    second = await post_comapi(client, body)
    assert second.status == 200
    await projected(client.app)
    assert await db.fetchval("select count(*) from events") == 1


async def test_comapi_bad_signature_is_401(client: Client) -> None:
    resp = await post_comapi(client, raw("comapi", "single_failed.json"), signature="0" * 40)
    assert resp.status == 401


async def test_comapi_unreadable_json_shape_is_acknowledged_and_kept(
    client: Client, db: asyncpg.Connection
) -> None:
    # A 400 would make Comapi drop the event for good; a later parser fix can still use this.
    body = b'{"surprise": "a shape we do not know yet"}'
    resp = await post_comapi(client, body)
    assert resp.status == 200
    await projected(client.app)
    row = await db.fetchrow("select body, problem from journal")
    assert row is not None
    assert (row["body"], bool(row["problem"])) == (body, True)


async def test_comapi_non_json_is_400_but_still_kept(
    client: Client, db: asyncpg.Connection
) -> None:
    resp = await post_comapi(client, b"\x00\x01 definitely not json")
    assert resp.status == 400
    assert await db.fetchval("select count(*) from journal") == 1


async def test_comapi_batch_registration_then_failover_reports(client: Client) -> None:
    body = {
        "response": load("comapi", "send_batch_response.json"),
        "request": load("comapi", "send_batch_request.json"),
    }
    resp = await client.post("/v1/messages/comapi", json=body, headers=AUTH)
    assert resp.status == 201
    key = "58bde0da-b380-4cb2-8dd1-ca74fc7a0cda"
    failed_whatsapp = json.dumps(
        {
            "eventId": "ev-1",
            "name": "message.failed",
            "payload": {
                "id": key,
                "details": {
                    "channel": "whatsApp",
                    "channelStatus": {
                        "whatsApp": {"status": "failed", "updatedOn": "2024-05-02T10:00:01.000Z"}
                    },
                },
            },
            "timestamp": "2024-05-02T10:00:01.000Z",
        }
    ).encode()
    await post_comapi(client, failed_whatsapp)
    message = await get_json(client, f"/v1/messages/comapi/{key}")
    # sms comes next in the registered rules: not failed yet.
    assert message["status"] == "sent"
    assert message["recipient"] == "+447123123123"  # stored as E.164
    assert message["channel_order"] == ["whatsApp", "sms"]


async def test_comapi_single_registration(client: Client) -> None:
    body = {"response": load("comapi", "send_single_response.json")}
    resp = await client.post("/v1/messages/comapi", json=body, headers=AUTH)
    assert resp.status == 201
    message = await get_json(client, "/v1/messages/comapi/d8e296bb-97c4-4495-b98f-1e32e0b11628")
    assert message["status"] == "accepted"


# Mercury


async def test_mercury_registration_rejects_invalid_recipients_and_groups_the_dispatch(
    client: Client,
) -> None:
    body = {
        "response": load("mercury", "send_response.json"),
        "request": load("mercury", "send_request.json"),
        "reference": "spring-promo",
    }
    resp = await client.post("/v1/messages/mercury", json=body, headers=AUTH)
    assert resp.status == 201
    message = await get_json(client, "/v1/messages/mercury/180249:CustomerIdB")
    assert message["status"] == "rejected"
    group = await get_json(client, "/v1/groups/mercury/180249")
    assert group["counts"] == {"accepted": 1, "rejected": 1}
    assert [m["message_id"] for m in group["members"]] == [
        "180249:CustomerIdA",
        "180249:CustomerIdB",
    ]


async def test_mercury_has_no_webhook(client: Client) -> None:
    assert (await client.post("/webhooks/mercury", data=b"{}")).status == 404


async def test_mercury_registration_without_request_is_400(client: Client) -> None:
    body = {"response": load("mercury", "send_response.json")}
    resp = await client.post("/v1/messages/mercury", json=body, headers=AUTH)
    assert resp.status == 400


# Search and groups


async def _seed(client: Client) -> None:
    await post_infobip(client, raw("infobip", "sms_v2_batch.json"))
    for i in range(5):
        body = json.dumps(
            {
                "omnimessage_id": f"omni-{i}",
                "message_id": f"m-{i}",
                "channel": "sms",
                "status": "DELIVRD",
                "to": "+3725550000",
            }
        ).encode()
        headers = {"X-Messente-Signature": messente.sign(MESSENTE_PASSWORD, body)}
        await client.post("/webhooks/messente", data=body, headers=headers)


async def test_search_by_recipient_status_and_provider(client: Client) -> None:
    await _seed(client)
    found = await get_json(client, "/v1/messages?recipient=%2B3725550000")
    assert {m["message_id"] for m in found["messages"]} == {f"omni-{i}" for i in range(5)}
    failed = await get_json(client, "/v1/messages?status=failed,expired")
    assert {m["status"] for m in failed["messages"]} == {"failed", "expired"}
    infobip_only = await get_json(client, "/v1/messages?provider=infobip")
    assert len(infobip_only["messages"]) == 3
    # Your own reference: Infobip carries it back as callbackData.
    by_reference = await get_json(client, "/v1/messages?reference=order:4712")
    assert [m["message_id"] for m in by_reference["messages"]] == ["2034072219640523074"]
    assert (await get_json(client, "/v1/messages?reference=order:0"))["messages"] == []


async def test_search_pages_through_everything_once(client: Client) -> None:
    await _seed(client)
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        path = "/v1/messages?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = await get_json(client, path)
        seen.extend(m["message_id"] for m in page["messages"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 8
    assert len(set(seen)) == 8


async def test_search_time_range(client: Client) -> None:
    await _seed(client)
    everything = await get_json(client, "/v1/messages?since=2000-01-01T00:00:00Z")
    assert len(everything["messages"]) == 8
    nothing = await get_json(client, "/v1/messages?until=2000-01-01T00:00:00Z")
    assert nothing["messages"] == []


@pytest.mark.parametrize(
    "query",
    [
        "status=teleported",  # not a status
        "provider=acme",  # not a provider
        "since=yesterday",  # not a time
        "limit=0",  # out of range
        "cursor=%%%",  # not one we gave out
        "colour=blue",  # unknown parameter
    ],
)
async def test_bad_search_queries_are_400(client: Client, query: str) -> None:
    body = await get_json(client, f"/v1/messages?{query}", status=400)
    assert body["error"]["code"] in {"invalid_query", "invalid_cursor"}


async def test_unknown_group_is_404(client: Client) -> None:
    body = await get_json(client, "/v1/groups/infobip/nope", status=404)
    assert body["error"]["code"] == "group_not_found"


async def test_concurrent_infobip_batches_for_shared_messages_lose_nothing(
    client: Client, db: asyncpg.Connection
) -> None:
    def batch(n: int) -> bytes:
        # Every batch touches the same 20 messages, in a different order each time.
        ids = list(range(20))
        ids = ids[n:] + ids[:n]
        return json.dumps(
            {
                "results": [
                    {
                        "messageId": f"shared-{i}",
                        "doneAt": f"2024-01-01T00:00:{n:02d}.000+0000",
                        "status": {"groupId": 1, "id": 7, "name": "PENDING_ENROUTE"},
                    }
                    for i in ids
                ]
            }
        ).encode()

    responses = await asyncio.gather(*(post_infobip(client, batch(n)) for n in range(10)))
    assert all(r.status == 200 for r in responses)
    await projected(client.app)
    assert await db.fetchval("select count(*) from events") == 200
    assert await db.fetchval("select count(*) from messages where status = 'sent'") == 20


async def test_a_lone_surrogate_escape_in_a_report_is_stored_not_a_500(
    client: Client, db: asyncpg.Connection
) -> None:
    # JSON may escape half of a UTF-16 pair ("\ud800"): Python reads it, but it is not
    # Unicode, and neither UTF-8 nor jsonb can hold it. The report is authenticated and
    # otherwise good: it is stored, with U+FFFD in place of the half, and the raw body kept.
    infobip_body = raw("infobip", "sms_v3_report.json").replace(b'"to": "', b'"to": "\\ud800', 1)
    assert b"\\ud800" in infobip_body
    resp = await post_infobip(client, infobip_body)
    assert resp.status == 200, await resp.text()

    comapi_body = raw("comapi", "single_failed.json").replace(
        b'"orderId": "', b'"orderId": "\\udfff', 1
    )
    assert b"\\udfff" in comapi_body
    resp = await post_comapi(client, comapi_body)
    assert resp.status == 200, await resp.text()
    await projected(client.app)
    assert await db.fetchval("select count(*) from events") == 2

    recipients = await db.fetch("select recipient from messages where provider = 'infobip'")
    assert [r["recipient"][0] for r in recipients] == ["\ufffd"]
    details = await db.fetchval("select details::text from events where provider = 'comapi'")
    assert "\ufffd4712" in details
    assert await db.fetchval("select count(*) from journal where body = $1", comapi_body) == 1


async def test_a_lone_surrogate_in_a_search_is_not_a_500(client: Client) -> None:
    # Percent-encoded bytes of a surrogate (not UTF-8), and a cursor whose JSON escapes one.
    resp = await client.get("/v1/messages?recipient=%ED%A0%80", headers=AUTH)
    assert resp.status in (200, 400), await resp.text()
    cursor = base64.urlsafe_b64encode(b'["\\ud800", "x"]').decode().rstrip("=")
    resp = await client.get(f"/v1/messages?cursor={cursor}", headers=AUTH)
    assert resp.status in (200, 400), await resp.text()


async def test_receipts_that_kept_a_problem_can_be_listed_and_read(client: Client) -> None:
    # An Infobip batch with one report we cannot read (200: the others are stored), a body
    # that is not JSON (400, kept), and bytes that are not UTF-8 (400, kept).
    partly = raw("infobip", "batch_with_bad_item.json")
    resp = await post_infobip(client, partly)
    assert resp.status == 200
    partly_id = (await resp.json())["receipt_id"]
    not_json_ids = []
    for body in (b"not json", b"\xff\xfe not utf-8"):
        resp = await post_infobip(client, body)
        assert resp.status == 400
        not_json_ids.append((await resp.json())["error"]["receipt_id"])
    resp = await post_infobip(client, raw("infobip", "omni_report.json"))
    clean_id = (await resp.json())["receipt_id"]

    listed, cursor = [], None
    while True:
        page = await get_json(
            client, "/v1/receipts/problems?limit=2" + (f"&cursor={cursor}" if cursor else "")
        )
        listed += page["receipts"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    # Newest first, only those with a problem, each once across pages.
    assert [r["id"] for r in listed] == [*reversed(not_json_ids), partly_id]
    assert all(r["problem"] and r["provider"] == "infobip" for r in listed)

    one = await get_json(client, f"/v1/receipts/{partly_id}")
    # A message's timeline points back at the body its event came in.
    first = one["events"][0]["message_id"]
    timeline = await get_json(client, f"/v1/messages/infobip/{first}")
    assert [e["receipt_id"] for e in timeline["events"]] == [partly_id]
    assert one["body"] == partly.decode()
    assert base64.b64decode(one["body_base64"]) == partly
    assert one["problem"].startswith("results[")
    assert len(one["events"]) >= 1
    assert all(e["message_id"] and e["status"] for e in one["events"])
    binary = await get_json(client, f"/v1/receipts/{not_json_ids[1]}")
    assert binary["body"] is None
    assert base64.b64decode(binary["body_base64"]) == b"\xff\xfe not utf-8"
    assert binary["events"] == []
    assert (await get_json(client, f"/v1/receipts/{clean_id}"))["problem"] is None

    for missing in ("00000000-0000-0000-0000-000000000000", "not-a-uuid"):
        error = await get_json(client, f"/v1/receipts/{missing}", status=404)
        assert error["error"]["code"] == "receipt_not_found"
    error = await get_json(client, "/v1/receipts/problems?cursor=bm9wZQ", status=400)
    assert error["error"]["code"] == "invalid_cursor"
