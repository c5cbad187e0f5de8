"""Hostile traffic is refused cheaply and does not starve good reports: bodies over the limit,
slow clients holding connections open, floods of bad signatures."""

import asyncio
import json
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from receiver.providers import messente
from tests.conftest import MESSENTE_PASSWORD, AiohttpClient, make_client, make_settings

Client = TestClient[Any, Any]


def signed(omni: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(
        {
            "omnimessage_id": omni,
            "message_id": f"{omni}-m",
            "status": "DELIVRD",
            "timestamp": "2024-05-02T10:00:00",
        }
    ).encode()
    return body, {"X-Messente-Signature": messente.sign(MESSENTE_PASSWORD, body)}


async def test_a_body_over_the_limit_is_refused_before_it_is_read(
    database_url: str, aiohttp_client: AiohttpClient, db: asyncpg.Connection
) -> None:
    client = await make_client(aiohttp_client, make_settings(database_url, max_body_bytes=4096))
    host, port = client.server.host, client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    # Announce 100 MB and send only the headers: the answer must not wait for the body.
    writer.write(
        b"POST /webhooks/messente HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Messente-Signature: 00\r\nContent-Length: 100000000\r\n\r\n"
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), timeout=5)
    assert b" 413 " in status_line
    writer.close()
    assert await db.fetchval("select count(*) from journal") == 0


async def test_slow_clients_do_not_starve_good_reports(client: Client) -> None:
    host, port = client.server.host, client.server.port
    slow = []
    for _ in range(200):
        # Slowloris: a request line and half a header, then nothing.
        _reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST /webhooks/messente HTTP/1.1\r\nHost: x\r\nContent-Le")
        slow.append(writer)
    try:
        body, headers = signed("while-slow")
        resp = await asyncio.wait_for(
            client.post("/webhooks/messente", data=body, headers=headers), timeout=5
        )
        assert resp.status == 200
    finally:
        for writer in slow:
            writer.close()


async def test_a_flood_of_bad_signatures_is_refused_without_touching_the_database(
    client: Client, db: asyncpg.Connection
) -> None:
    body, _ = signed("forged")
    bad = {"X-Messente-Signature": "0" * 64}

    async def forged() -> int:
        resp = await client.post("/webhooks/messente", data=body, headers=bad)
        return resp.status

    async def genuine(i: int) -> int:
        good_body, headers = signed(f"genuine-{i}")
        resp = await client.post("/webhooks/messente", data=good_body, headers=headers)
        return resp.status

    results = await asyncio.gather(
        *(forged() for _ in range(500)), *(genuine(i) for i in range(20))
    )
    assert results[:500] == [401] * 500
    assert results[500:] == [200] * 20
    assert await db.fetchval("select count(*) from journal") == 20
