"""What the console tests share: signing in over HTTP, and a failover message stored through
the real webhook and registration routes."""

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from receiver.providers import messente
from receiver.settings import Settings
from tests.conftest import API_TOKEN, AUTH, MESSENTE_PASSWORD, make_settings, projected
from tests.integration.test_forwarding import forwarding_settings

Client = TestClient[Any, Any]
READER, WRITER = "reader-token", "writer-token"
OMNI = "omni-failover"
RECIPIENT = "+37255555555"
_HIDDEN = re.compile(r'name="csrf" value="([^"]+)"')


# An all-scopes token, a reader and a sender.
TOKENS = (SecretStr(API_TOKEN), SecretStr(f"{READER}:read"), SecretStr(f"{WRITER}:write"))


def console_settings(database_url: str, **overrides: Any) -> Settings:
    """With forwarding to loopback subscribers and fast retries."""
    return forwarding_settings(database_url, **{"api_tokens": TOKENS, **overrides})


def plain_settings(database_url: str, **overrides: Any) -> Settings:
    return make_settings(database_url, **{"api_tokens": TOKENS, **overrides})


def csrf_of(page: str) -> str:
    found = _HIDDEN.search(page)
    assert found is not None, "no CSRF field on the page"
    return found[1]


async def sign_in(client: Client, token: str = API_TOKEN) -> str:
    """Sign in as a browser would (form, cookie); returns the CSRF token of the session."""
    form = await client.get("/console/login")
    assert form.status == 200
    resp = await client.post(
        "/console/login",
        data={"csrf": csrf_of(await form.text()), "token": token, "next": "/console/messages"},
        allow_redirects=False,
    )
    assert resp.status == 303, await resp.text()
    page = await client.get("/console/messages")
    assert page.status == 200
    return csrf_of(await page.text())


async def messente_report(
    client: Client,
    message_id: str,
    channel: str,
    status: str,
    timestamp: str,
    omni: str = OMNI,
    **extra: Any,
) -> dict[str, Any]:
    body = json.dumps(
        {
            "omnimessage_id": omni,
            "message_id": message_id,
            "channel": channel,
            "status": status,
            # Written as Messente writes it, with no `+`: searches spell it otherwise.
            "to": RECIPIENT.removeprefix("+"),
            "timestamp": timestamp,
            **extra,
        }
    ).encode()
    resp = await client.post(
        "/webhooks/messente",
        data=body,
        headers={"X-Messente-Signature": messente.sign(MESSENTE_PASSWORD, body)},
    )
    assert resp.status == 200, await resp.text()
    answer: dict[str, Any] = await resp.json()
    return answer


async def failover_message(client: Client) -> None:
    """A Messente omnimessage sent viber first, then sms: viber expires, sms is delivered."""
    resp = await client.post(
        "/v1/messages/messente",
        json={
            "response": {
                "omnimessage_id": OMNI,
                "to": RECIPIENT,
                "messages": [
                    {"channel": "viber", "message_id": "viber-1", "sender": "Brand"},
                    {"channel": "sms", "message_id": "sms-1", "sender": "Brand"},
                ],
            },
            "request": {"to": RECIPIENT, "messages": [{"channel": "viber"}, {"channel": "sms"}]},
            "reference": "order-4711",
        },
        headers=AUTH,
    )
    assert resp.status == 201, await resp.text()
    # Provider times just after the registration (Messente's are UTC without a zone).
    sent = datetime.now(UTC).replace(tzinfo=None)
    await messente_report(
        client,
        "viber-1",
        "viber",
        "EXPIRED",
        (sent + timedelta(seconds=2)).isoformat(),
        err=2,
        error="Sending message expired",
    )
    await projected(client.app)
    delivered_at = (sent + timedelta(seconds=4)).isoformat()
    await messente_report(client, "sms-1", "sms", "DELIVRD", delivered_at)
    await projected(client.app)
