"""Header bytes no HTTP client library would send: whatever arrives, the answer is JSON, and
a report that is journaled is answered 200, never committed and then answered 500."""

import asyncio
import base64
import json
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from receiver.providers import messente
from tests.conftest import API_TOKEN, MESSENTE_PASSWORD

Client = TestClient[Any, Any]


async def send_raw(
    client: Client, method: str, path: str, headers: list[bytes], body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """One request written byte for byte on a socket (aiohttp's client refuses non-UTF-8
    header values); the status, headers and body of the answer."""
    host, port = client.server.host, client.server.port
    assert port is not None
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = [
            f"{method} {path} HTTP/1.1".encode(),
            f"Host: {host}".encode(),
            b"Connection: close",
            f"Content-Length: {len(body)}".encode(),
            *headers,
        ]
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
        await writer.wait_closed()
    top, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = top.decode("latin-1").split("\r\n")
    answer_headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        answer_headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), answer_headers, rest


def is_json_error(body: bytes) -> bool:
    try:
        return "error" in json.loads(body)
    except ValueError:
        return False


# Each value as the bytes on the wire after the header's name.
ODD_BASIC = [
    "Basic éü€".encode(),  # non-ASCII where base64 goes: 500 before
    b"Basic \xff\xfe",  # not even UTF-8
    b"Basic " + base64.b64encode("é:ü".encode("latin-1")),  # base64 of non-UTF-8
    b"Basic",  # scheme alone
]


async def test_an_unusable_basic_authorization_on_infobip_is_a_401_json(client: Client) -> None:
    for value in ODD_BASIC:
        status, _, body = await send_raw(
            client, "POST", "/webhooks/infobip", [b"Authorization: " + value], b"{}"
        )
        assert status == 401, (value, body)
        assert is_json_error(body), (value, body)


# Request ids that cannot go back out in a response header as they came.
ODD_REQUEST_IDS = [
    b"\xff\xfe\x80",  # not UTF-8
    "é€".encode(),  # UTF-8, not Latin-1
    b"x" * 101,  # longer than we echo
]


async def test_control_characters_in_a_header_are_refused_before_any_handler(
    client: Client, db: asyncpg.Connection
) -> None:
    # aiohttp's parser answers these itself (a plain-text 400, RFC 9110 forbids them): a 4xx,
    # and nothing is journaled, so no acknowledged report goes missing.
    body = json.dumps({"omnimessage_id": "ctl", "status": "DELIVRD"}).encode()
    signature = messente.sign(MESSENTE_PASSWORD, body).encode()
    status, _, _ = await send_raw(
        client,
        "POST",
        "/webhooks/messente",
        [b"X-Messente-Signature: " + signature, b"X-Request-Id: ok\x01\x7fid"],
        body,
    )
    assert status == 400
    assert await db.fetchval("select count(*) from journal") == 0


async def test_a_request_id_of_raw_bytes_is_never_a_plain_text_500(client: Client) -> None:
    auth = f"Authorization: Bearer {API_TOKEN}".encode()
    for path, extra in [("/healthz", []), ("/v1/unmapped", [auth]), ("/nowhere", [])]:
        for rid in ODD_REQUEST_IDS:
            status, headers, body = await send_raw(
                client, "GET", path, [b"X-Request-Id: " + rid, *extra]
            )
            assert status < 500, (path, rid, body)
            assert headers["content-type"].startswith("application/json"), (path, rid)
            # Replaced by an id of our own, so the answer still names its log line.
            assert headers["x-request-id"], (path, rid)
            assert headers["x-request-id"].isascii(), (path, rid)


async def test_a_signed_report_with_a_raw_byte_request_id_is_journaled_and_answered_200(
    client: Client, db: asyncpg.Connection
) -> None:
    for n, rid in enumerate(ODD_REQUEST_IDS):
        report = {"omnimessage_id": f"rid-{n}", "status": "DELIVRD", "channel": "sms"}
        body = json.dumps(report).encode()
        signature = messente.sign(MESSENTE_PASSWORD, body).encode()
        status, _, answer = await send_raw(
            client,
            "POST",
            "/webhooks/messente",
            [
                b"Content-Type: application/json",
                b"X-Messente-Signature: " + signature,
                b"X-Request-Id: " + rid,
            ],
            body,
        )
        assert status == 200, (rid, answer)
        receipt_id = json.loads(answer)["receipt_id"]
        assert await db.fetchval(
            "select count(*) from journal where receipt_id = $1::uuid", receipt_id
        )
