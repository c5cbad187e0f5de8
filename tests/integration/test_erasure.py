"""Erasure of one phone number (API and CLI), and credentials kept out of stored receipts."""

import asyncio
import base64
import json
import re
import sys
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from receiver.providers import messente
from receiver.settings import Settings
from tests.conftest import (
    AUTH,
    INFOBIP_PASSWORD,
    INFOBIP_USER,
    MESSENTE_PASSWORD,
    AiohttpClient,
    clean_env,
    make_client,
    make_settings,
    projected,
)
from tests.fakes import infobip_report
from tests.payloads import load

Client = TestClient[Any, Any]

NUMBER = "385981178000"
# The number as each provider writes it, and numbers that must survive: a neighbour in the
# same batch, and a longer number that contains this one.
NEIGHBOUR = "385981178001"
LONGER = "3859811780001"
ANYWHERE = re.compile(rb"(?<![0-9])(?:\+|00)?" + NUMBER.encode() + rb"(?![0-9])")
BASIC = "Basic " + base64.b64encode(f"{INFOBIP_USER}:{INFOBIP_PASSWORD}".encode()).decode()


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, database_url: str) -> Client:
    # No forwarder: deliveries stay pending, as a subscriber's backlog would.
    settings: Settings = make_settings(database_url, forward_enabled=False, poll_enabled=False)
    return await make_client(aiohttp_client, settings)


async def messente_report(client: Client, omni: str, to: str) -> None:
    body = json.dumps(
        {"omnimessage_id": omni, "message_id": f"{omni}-sms", "channel": "sms", "to": to,
         "status": "DELIVRD", "timestamp": "2024-05-02T10:00:00"}
    ).encode()  # fmt: skip
    headers = {"X-Messente-Signature": messente.sign(MESSENTE_PASSWORD, body)}
    resp = await client.post("/webhooks/messente", data=body, headers=headers)
    assert resp.status == 200


async def seed(client: Client) -> None:
    """The number in every place a report or registration can put it."""
    created = await client.post(
        "/v1/subscriptions", json={"url": "https://hooks.example.com/dlr"}, headers=AUTH
    )
    assert created.status == 201
    await messente_report(client, "omni-erase", f"+{NUMBER}")
    await messente_report(client, "omni-longer", f"+{LONGER}")
    batch = {"results": [dict(infobip_report("ib-erase"), to=NUMBER),
                         dict(infobip_report("ib-neighbour"), to=NEIGHBOUR)]}  # fmt: skip
    resp = await client.post("/webhooks/infobip", json=batch, headers={"Authorization": BASIC})
    assert resp.status == 200
    request = load("mercury", "send_request.json")
    request["recipients"][0]["mobilePhone"] = f"00{NUMBER}"
    resp = await client.post(
        "/v1/messages/mercury",
        json={"response": load("mercury", "send_response.json"), "request": request},
        headers=AUTH,
    )
    assert resp.status == 201
    await projected(client.app)


async def everything_stored(db: asyncpg.Connection) -> list[tuple[str, bytes]]:
    """Every value of every row of every table, as bytes (raw bodies as they are)."""
    tables = await db.fetch(
        "select tablename from pg_tables where schemaname = 'public' order by tablename"
    )
    found = []
    for table in tables:
        name = table["tablename"]
        for row in await db.fetch(f'select * from "{name}"'):  # noqa: S608 - catalog names
            for value in row.values():
                data = value if isinstance(value, bytes) else str(value).encode()
                found.append((name, data))
    return found


async def mentions(db: asyncpg.Connection, pattern: re.Pattern[bytes]) -> set[str]:
    return {name for name, data in await everything_stored(db) if pattern.search(data)}


async def test_erasure_leaves_nothing_about_the_number_and_keeps_its_neighbours(
    client: Client, db: asyncpg.Connection
) -> None:
    await seed(client)
    assert {"messages", "events", "journal", "deliveries", "status_changes"} <= await mentions(
        db, ANYWHERE
    )
    before = await everything_stored(db)

    with capture_logs() as logged:
        dry = await client.post(
            "/v1/erasures", json={"phone": f"+{NUMBER}", "dry_run": True}, headers=AUTH
        )
    assert dry.status == 200
    counted = await dry.json()
    assert counted["dry_run"] is True
    assert counted["messages"] == 3  # Messente, Infobip, Mercury
    assert counted["receipts"] == 3
    assert counted["deliveries"] == counted["status_changes"] >= 3
    assert await everything_stored(db) == before  # a dry run writes nothing

    with capture_logs() as logged_too:
        resp = await client.post("/v1/erasures", json={"phone": f"+{NUMBER}"}, headers=AUTH)
    assert resp.status == 200
    erased = await resp.json()
    assert {k: v for k, v in erased.items() if k not in ("erasure", "dry_run")} == {
        k: v for k, v in counted.items() if k not in ("erasure", "dry_run")
    }
    assert await mentions(db, ANYWHERE) == set()  # raw receipts included
    # The log says an erasure happened, never whose.
    (line,) = [e for e in logged + logged_too if e["event"] == "erasure.done" and not e["dry_run"]]
    assert line["erasure"] == erased["erasure"]
    assert NUMBER[2:] not in repr(logged + logged_too)

    # Others are untouched: the neighbour in the same batch, and the longer number.
    for provider, key in (("infobip", "ib-neighbour"), ("messente", "omni-longer")):
        found = await client.get(f"/v1/messages/{provider}/{key}", headers=AUTH)
        assert found.status == 200
    assert (
        await db.fetchval(
            "select count(*) from journal where position($1::bytea in body) > 0", NEIGHBOUR.encode()
        )
        == 1
    )
    search = await client.get("/v1/messages", params={"recipient": f"+{NUMBER}"}, headers=AUTH)
    assert (await search.json())["messages"] == []

    # A report arriving after the erasure is stored as any other.
    await messente_report(client, "omni-after", f"+{NUMBER}")
    await projected(client.app)
    assert (await client.get("/v1/messages/messente/omni-after", headers=AUTH)).status == 200


async def test_two_erasures_at_once_both_answer_and_leave_nothing(
    client: Client, db: asyncpg.Connection
) -> None:
    await seed(client)
    answers = await asyncio.gather(
        *(client.post("/v1/erasures", json={"phone": NUMBER}, headers=AUTH) for _ in range(2))
    )
    assert [a.status for a in answers] == [200, 200]
    assert await mentions(db, ANYWHERE) == set()


@pytest.mark.parametrize(
    "body",
    [
        {"phone": ""},  # nothing
        {"phone": "+1234"},  # too short for any number
        {"phone": "3859811780\x00"},  # NUL
        {"phone": "٣٨٥٩٨١١٧٨٠٠٠"},  # digits, but not ASCII ones
        {"phone": "3" * 10_000},  # huge
        {"phone": ".*"},  # a pattern, not a number
        {"phone": NUMBER, "dry_run": "maybe"},  # not a boolean
        {"phone": NUMBER, "everything": True},  # unknown field
        {},  # no phone
    ],
)
async def test_a_bad_erasure_request_is_a_json_400(client: Client, body: dict[str, Any]) -> None:
    resp = await client.post("/v1/erasures", json=body, headers=AUTH)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "invalid_body"


async def test_registration_receipts_keep_no_credentials(
    client: Client, db: asyncpg.Connection
) -> None:
    request = load("mercury", "send_request.json")
    resp = await client.post(
        "/v1/messages/mercury",
        json={"response": load("mercury", "send_response.json"), "request": request},
        headers=AUTH,
    )
    assert resp.status == 201
    receipt = await (
        await client.get(f"/v1/receipts/{(await resp.json())['receipt_id']}", headers=AUTH)
    ).json()
    stored = json.loads(receipt["body"])
    recipients = stored["request"]["recipients"]
    assert [r["password"] for r in recipients] == ["[removed]", "[removed]"]
    assert recipients[0]["mobilePhone"] == "6936862208"  # the rest as sent
    leaked = re.compile(rb"ABC123|XXXYYY")
    assert await mentions(db, leaked) == set()


async def test_erase_command_dry_run_then_erase_with_the_number_from_stdin(
    client: Client, db: asyncpg.Connection, database_url: str
) -> None:
    await seed(client)

    async def erase(*args: str) -> tuple[int | None, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "receiver", "erase", *args,
            env=clean_env(RECEIVER_DATABASE_URL=database_url),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate(f"+{NUMBER}\n".encode())
        return proc.returncode, out.decode(), err.decode()

    code, out, _ = await erase("-", "--dry-run")
    assert code == 0
    assert "would erase: 3 messages" in out
    assert await mentions(db, ANYWHERE)
    code, out, _ = await erase("-")
    assert code == 0
    assert "erased: 3 messages" in out
    assert NUMBER[2:] not in out
    logged = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [e["event"] for e in logged if e["event"] == "erasure.done"] == ["erasure.done"]
    assert await mentions(db, ANYWHERE) == set()
    code, _, err = await erase("not-a-number")
    assert code == 2
    assert len(err.splitlines()) == 1
