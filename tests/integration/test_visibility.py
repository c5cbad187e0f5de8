"""What a client sees of the journal: reports a moment after their 2xx (the backlog shown in
/readyz and /metrics), registrations at once (read-your-writes), and a clear 202 when the
projector is not keeping up."""

from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from receiver.db import open_pool
from receiver.http.app import create_app
from receiver.ingest.projector import projector_running
from receiver.providers import messente
from tests.conftest import (
    AUTH,
    MESSENTE_PASSWORD,
    AiohttpClient,
    eventually,
    make_settings,
)
from tests.payloads import load

Client = TestClient[Any, Any]

BODY = b'{"omnimessage_id": "vis-1", "message_id": "vis-m", "status": "DELIVRD"}'
SIGNED = {"X-Messente-Signature": messente.sign(MESSENTE_PASSWORD, BODY)}


async def journal_only(aiohttp_client: AiohttpClient, database_url: str, **extra: Any) -> Client:
    """The service with no projector of its own, as when `python -m receiver project` runs
    apart (and has not started yet)."""
    settings = make_settings(database_url, project_enabled=False, **extra)
    client: Client = await aiohttp_client(create_app(settings))
    return client


async def test_the_backlog_shows_in_readyz_and_metrics_until_a_projector_catches_up(
    aiohttp_client: AiohttpClient, database_url: str
) -> None:
    client = await journal_only(aiohttp_client, database_url)
    resp = await client.post("/webhooks/messente", data=BODY, headers=SIGNED)
    assert resp.status == 200  # acknowledged: it is in the journal
    missing = await client.get("/v1/messages/messente/vis-1", headers=AUTH)
    assert missing.status == 404  # and not yet on the timeline

    ready = await (await client.get("/readyz")).json()
    assert ready["status"] == "ready"
    assert ready["projection"]["backlog_rows"] == 1
    assert ready["projection"]["lag_seconds"] >= 0
    metrics = await (await client.get("/metrics")).text()
    assert "dlr_projection_backlog_rows 1" in metrics

    settings = make_settings(database_url)
    async with open_pool(database_url, 2) as pool, projector_running(pool, settings):

        async def caught_up() -> bool:
            body = await (await client.get("/readyz")).json()
            return bool(body["projection"] == {"backlog_rows": 0, "lag_seconds": 0})

        await eventually(caught_up)
    found = await client.get("/v1/messages/messente/vis-1", headers=AUTH)
    assert (await found.json())["status"] == "delivered"


async def test_a_registration_answers_once_its_messages_are_visible(
    raw_client: Client,
) -> None:
    # raw_client: no waiting for projection before reads; the registration itself must.
    body = {"response": load("messente", "send_response_viber_sms.json")}
    resp = await raw_client.post("/v1/messages/messente", json=body, headers=AUTH)
    assert resp.status == 201
    registered = await resp.json()
    assert registered["visible"] is True
    assert registered["messages"]
    for message in registered["messages"]:
        lookup = await raw_client.get(
            f"/v1/messages/messente/{message['message_id']}", headers=AUTH
        )
        assert lookup.status == 200
        assert (await lookup.json())["status"] == "accepted"


async def test_a_registration_the_projector_cannot_reach_in_time_is_202_and_still_kept(
    aiohttp_client: AiohttpClient, database_url: str, db: asyncpg.Connection
) -> None:
    client = await journal_only(aiohttp_client, database_url, registration_wait=0.3)
    body = {"response": load("messente", "send_response_viber_sms.json")}
    resp = await client.post("/v1/messages/messente", json=body, headers=AUTH)
    assert resp.status == 202
    answer = await resp.json()
    assert answer["visible"] is False
    assert (
        await db.fetchval(
            "select count(*) from journal where receipt_id = $1::uuid", answer["receipt_id"]
        )
        == 1
    )
