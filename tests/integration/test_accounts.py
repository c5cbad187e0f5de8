"""Several accounts per provider: each verifies its own reports, an expired one is refused,
URL tokens authenticate per-request URLs, and messages remember their account."""

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr
from structlog.testing import capture_logs

from receiver.providers import messente
from receiver.settings import Account, Settings
from tests.conftest import AiohttpClient, make_client, make_settings
from tests.integration.test_providers import INFOBIP_AUTH, get_json
from tests.payloads import raw

Client = TestClient[Any, Any]
TOKEN = "t0k3n-" + "x" * 40
PAST = datetime.now(UTC) - timedelta(hours=1)
FUTURE = datetime.now(UTC) + timedelta(days=1)


def report(omni: str) -> bytes:
    return json.dumps(
        {
            "omnimessage_id": omni,
            "message_id": omni + "-sms",
            "channel": "sms",
            "status": "DELIVRD",
            "err": 0,
            "to": "+3725555555",
            "timestamp": "2024-05-02T10:15:03.004511",
        }
    ).encode()


@pytest.fixture
async def client(database_url: str, aiohttp_client: AiohttpClient) -> Client:
    settings: Settings = make_settings(
        database_url,
        accounts={
            "messente": {
                "brand2": Account(secret=SecretStr("brand2-password")),
                "rotated": Account(secret=SecretStr("old-password"), until=FUTURE),
                "retired": Account(secret=SecretStr("gone-password"), until=PAST),
            },
            "infobip": {"perrequest": Account(url_token=SecretStr(TOKEN))},
        },
    )
    result: Client = await make_client(aiohttp_client, settings)
    return result


async def post_messente(client: Client, body: bytes, key: str) -> Any:
    headers = {"X-Messente-Signature": messente.sign(key, body)}
    return await client.post("/webhooks/messente", data=body, headers=headers)


async def test_each_account_verifies_and_names_its_reports(client: Client) -> None:
    from tests.conftest import MESSENTE_PASSWORD

    for omni, key, account in [
        ("o-default", MESSENTE_PASSWORD, "default"),
        ("o-brand2", "brand2-password", "brand2"),
        ("o-rotated", "old-password", "rotated"),  # within its grace period
    ]:
        assert (await post_messente(client, report(omni), key)).status == 200
        message = await get_json(client, f"/v1/messages/messente/{omni}")
        assert message["account"] == account
    found = await get_json(client, "/v1/messages?account=brand2")
    assert [m["message_id"] for m in found["messages"]] == ["o-brand2"]


async def test_an_expired_account_and_an_unknown_key_are_refused(client: Client) -> None:
    for key in ["gone-password", "never-configured"]:
        resp = await post_messente(client, report("o-x"), key)
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "invalid_signature"


async def test_a_url_token_authenticates_a_request_without_credentials(client: Client) -> None:
    body = raw("infobip", "sms_v3_report.json")
    with capture_logs() as logs:
        resp = await client.post(f"/webhooks/infobip/{TOKEN}", data=body)
    assert resp.status == 200
    message = await get_json(client, "/v1/messages/infobip/v3-msg-1")
    assert message["account"] == "perrequest"
    assert TOKEN not in repr(logs)


@pytest.mark.parametrize(
    "token",
    [
        TOKEN[:-1],  # one character short
        TOKEN + "y",  # one too many
        "x" * 1000,  # huge
        "%00" + TOKEN[3:],  # NUL
        "%C3%A9" * 10,  # non-ASCII
    ],
)
async def test_a_wrong_url_token_is_refused(client: Client, token: str) -> None:
    resp = await client.post(f"/webhooks/infobip/{token}", data=b'{"results": []}')
    # A NUL anywhere in a path is refused before any handler (400); else the token is wrong.
    assert resp.status == (400 if "%00" in token else 401)
    error = (await resp.json())["error"]
    assert "%00" in token or error["code"] == "invalid_token"


async def test_a_url_token_is_not_accepted_for_another_provider(client: Client) -> None:
    resp = await client.post(f"/webhooks/comapi/{TOKEN}", data=b"{}")
    assert resp.status == 401


async def test_basic_auth_still_works_beside_a_token_account(client: Client) -> None:
    body = raw("infobip", "sms_v3_report.json")
    resp = await client.post("/webhooks/infobip", data=body, headers=INFOBIP_AUTH)
    assert resp.status == 200
    assert (await get_json(client, "/v1/messages/infobip/v3-msg-1"))["account"] == "default"


def test_a_short_url_token_stops_the_service() -> None:
    with pytest.raises(ValueError, match="32 characters"):
        Settings(accounts={"infobip": {"a": {"url_token": "short"}}})


def test_accounts_read_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    value = {"comapi": {"eu": {"secret": "s", "until": "2030-01-01T00:00:00Z"}}}
    monkeypatch.setenv("RECEIVER_ACCOUNTS", json.dumps(value))
    account = Settings().accounts["comapi"]["eu"]
    assert account.secret is not None
    assert account.secret.get_secret_value() == "s"
    assert account.until == datetime(2030, 1, 1, tzinfo=UTC)
