"""A NUL in one report's id, channel or status (Postgres text refuses it), end to end through
HTTP, the journal and the projector: the good reports of its batch are stored and found by
lookup, the bad one is a problem of its own on the receipt, and the raw body is kept."""

import json
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from receiver.providers import messente
from tests.conftest import AUTH, MESSENTE_PASSWORD, projected
from tests.integration.test_providers import post_comapi, post_infobip

Client = TestClient[Any, Any]


def infobip_report(message_id: str, channel: str | None = None) -> dict[str, Any]:
    report: dict[str, Any] = {
        "messageId": message_id,
        "doneAt": "2024-05-02T10:00:00.000+0000",
        "status": {"groupId": 3, "groupName": "DELIVERED", "id": 5, "name": "DELIVERED_TO_HANDSET"},
    }
    if channel is not None:
        report["channel"] = channel
    return report


async def found(client: Client, provider: str, key: str) -> bool:
    resp = await client.get(f"/v1/messages/{provider}/{key}", headers=AUTH)
    return resp.status == 200


async def receipt_problem(db: asyncpg.Connection, receipt_id: str) -> tuple[bytes, str | None]:
    row = await db.fetchrow(
        "select body, problem from journal where receipt_id = $1::text::uuid", receipt_id
    )
    assert row is not None
    return row["body"], row["problem"]


@pytest.mark.parametrize(
    "bad",
    [
        infobip_report("x\u0000y"),  # NUL in the message id
        infobip_report("ib-bad", channel="sm\u0000s"),  # NUL in the channel
    ],
)
async def test_an_infobip_report_with_nul_costs_only_itself(
    client: Client, db: asyncpg.Connection, bad: dict[str, Any]
) -> None:
    reports = [infobip_report("ib-1"), bad, infobip_report("ib-2"), infobip_report("ib-3")]
    body = json.dumps({"results": reports}).encode()
    resp = await post_infobip(client, body)
    assert resp.status == 200
    answer = await resp.json()
    assert answer["reports"] == 4
    await projected(client.app)

    for key in ("ib-1", "ib-2", "ib-3"):
        assert await found(client, "infobip", key)
    assert await db.fetchval("select count(*) from events") == 3
    kept, problem = await receipt_problem(db, answer["receipt_id"])
    assert kept == body  # so a later fix (reprocess) can recover it
    # Named by where it is in the batch, and only that one.
    assert problem is not None
    assert "results[1]" in problem
    assert "NUL" in problem
    for index in (0, 2, 3):
        assert f"results[{index}]" not in problem


def comapi_event(event_id: str, message_id: str, channel: str = "sms") -> dict[str, Any]:
    return {
        "eventId": event_id,
        "name": "message.delivered",
        "payload": {"id": message_id, "details": {"channel": channel}},
        "timestamp": "2024-05-02T10:00:09.480Z",
    }


@pytest.mark.parametrize(
    "bad",
    [
        comapi_event("ev-bad", "c\u0000m"),  # NUL in the message id
        comapi_event("ev\u0000bad", "cm-bad"),  # NUL in the event id (its dedup key)
        comapi_event("ev-bad", "cm-bad", channel="s\u0000ms"),  # NUL in the channel
    ],
)
async def test_a_comapi_event_with_nul_costs_only_itself(
    client: Client, db: asyncpg.Connection, bad: dict[str, Any]
) -> None:
    events = [comapi_event("ev-1", "cm-1"), bad, comapi_event("ev-2", "cm-2")]
    body = json.dumps(events).encode()
    resp = await post_comapi(client, body)
    assert resp.status == 200
    answer = await resp.json()
    await projected(client.app)

    assert await found(client, "comapi", "cm-1")
    assert await found(client, "comapi", "cm-2")
    assert await db.fetchval("select count(*) from events") == 2
    kept, problem = await receipt_problem(db, answer["receipt_id"])
    assert kept == body
    assert problem is not None
    assert "[1]" in problem
    assert "NUL" in problem
    assert "[0]" not in problem
    assert "[2]" not in problem


def messente_body(**fields: str) -> bytes:
    report = {
        "omnimessage_id": "omni-nul",
        "message_id": "sms-nul",
        "channel": "sms",
        "status": "DELIVRD",
        "timestamp": "2024-05-02T10:15:03.004511",
    }
    report.update(fields)
    return json.dumps(report).encode()


@pytest.mark.parametrize(
    "fields",
    [
        {"omnimessage_id": "omni\u0000nul"},  # the message id
        {"message_id": "sms\u0000nul"},  # the channel message id (an alias, and the dedup key)
        {"channel": "s\u0000ms"},  # the channel
        {"status": "DELI\u0000VRD"},  # the status (part of the dedup key)
    ],
)
async def test_a_messente_report_with_nul_is_a_clear_problem_and_kept(
    client: Client, db: asyncpg.Connection, fields: dict[str, str]
) -> None:
    body = messente_body(**fields)
    headers = {"X-Messente-Signature": messente.sign(MESSENTE_PASSWORD, body)}
    resp = await client.post("/webhooks/messente", data=body, headers=headers)
    # Acknowledged (a retry would carry the same NUL): checked on arrival, parsed by the
    # projector, which finds the NUL and keeps it as the receipt's problem.
    assert resp.status == 200
    answer = await resp.json()
    assert answer["reports"] == 1
    assert answer["problems"] == []
    await projected(client.app)

    assert await db.fetchval("select count(*) from events") == 0
    kept, problem = await receipt_problem(db, answer["receipt_id"])
    assert kept == body
    assert problem is not None
    assert "NUL" in problem
    # Listed among the receipts that kept a problem: what reprocess reads again.
    listed = await client.get("/v1/receipts/problems", headers=AUTH)
    assert answer["receipt_id"] in json.dumps(await listed.json())
