"""Hostile input on every route: whatever the bytes, the answer is a clear 4xx (or a 2xx),
never a 500."""

import itertools
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import AUTH
from tests.payloads import raw

Client = TestClient[Any, Any]

# NUL (Postgres text refuses it), bytes that are not UTF-8, a surrogate's UTF-8-style bytes,
# and a very long value.
NASTY = ["%00", "a%00b", "%FF%FE", "%ED%A0%80", "x" * 5000]

GETS = [
    "/v1/messages?recipient={v}",
    "/v1/messages?status={v}",
    "/v1/messages?provider={v}",
    "/v1/messages?since={v}",
    "/v1/messages?cursor={v}",
    "/v1/messages?limit={v}",
    "/v1/messages/messente/{v}",
    "/v1/messages/{v}/x",
    "/v1/groups/infobip/{v}",
    "/v1/groups/infobip/x?cursor={v}",
    "/v1/subscriptions/{v}",
    "/v1/subscriptions/{v}/deliveries",
    "/v1/subscriptions/00000000-0000-0000-0000-000000000000/deliveries/{v}",
    "/v1/receipts/{v}",
    "/v1/receipts/problems?provider={v}",
    "/v1/receipts/problems?since={v}",
    "/v1/receipts/problems?cursor={v}",
]


@pytest.mark.parametrize("template", GETS)
async def test_nasty_values_in_paths_and_queries_are_never_a_500(
    client: Client, template: str
) -> None:
    for value in NASTY:
        resp = await client.get(template.format(v=value), headers=AUTH)
        assert resp.status < 500, (template, value, await resp.text())
        if resp.status >= 400:
            assert "error" in await resp.json()


BODIES = [b"", b"\x00", b"\xff\xfe", b'{"url": "http://a\\u0000b"}', b'{"url": "\\ud800"}', b"[]"]
POSTS = [
    "/v1/messages/messente",
    "/v1/messages/infobip",
    "/v1/messages/comapi",
    "/v1/messages/mercury",
    "/v1/subscriptions",
    "/v1/subscriptions/00000000-0000-0000-0000-000000000000/replay",
]


async def test_nasty_bodies_are_never_a_500(client: Client) -> None:
    for path, body in itertools.product(POSTS, BODIES):
        headers = {**AUTH, "Content-Type": "application/json"}
        resp = await client.post(path, data=body, headers=headers)
        assert resp.status < 500, (path, body, await resp.text())
        assert "error" in await resp.json()
    for body in BODIES:
        resp = await client.patch(
            "/v1/subscriptions/00000000-0000-0000-0000-000000000000", data=body, headers=AUTH
        )
        assert resp.status < 500, (body, await resp.text())


@pytest.mark.parametrize("escape", ["\\u0000", "\\ud800"])
async def test_a_registration_carrying_nul_or_a_lone_surrogate_is_never_a_500(
    client: Client, escape: str
) -> None:
    for provider, response in [
        ("messente", raw("messente", "send_response_viber_sms.json")),
        ("infobip", raw("infobip", "send_response.json")),
        ("comapi", raw("comapi", "send_single_response.json")),
    ]:
        # Into the first string value of the send response: its message id, typically.
        text = response.decode()
        at = text.index('": "') + 4
        body = f'{{"response": {text[:at]}{escape}{text[at:]}}}'.encode()
        resp = await client.post(f"/v1/messages/{provider}", data=body, headers=AUTH)
        assert resp.status < 500, (provider, await resp.text())


async def test_non_ascii_headers_are_never_a_500(client: Client) -> None:
    odd = "éü€" + "x" * 200
    for path, headers in [
        ("/v1/messages", {"Authorization": f"Bearer {odd}", "X-Request-Id": odd}),
        ("/healthz", {"X-Request-Id": odd}),
    ]:
        resp = await client.get(path, headers=headers)
        assert resp.status < 500, (path, await resp.text())
    for provider, header in [
        ("messente", "X-Messente-Signature"),
        ("comapi", "X-Comapi-Signature"),
        ("infobip", "Authorization"),
    ]:
        resp = await client.post(
            f"/webhooks/{provider}", data=b"{}", headers={header: odd, "X-Request-Id": odd}
        )
        assert resp.status == 401, (provider, await resp.text())
