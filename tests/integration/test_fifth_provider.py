"""Adding a provider is one module: a fifth one, defined in tests/fifth_provider.py and
registered through the same registry as the four built in, gets its webhook route, its
verification against its accounts (and URL tokens), send registration and polling through
its account, without any change to the route table, http/webhooks.py or polling/poller.py."""

import io
import json
import socket
import tokenize
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr, ValidationError

import receiver
from receiver.providers import PROVIDERS, messente, register
from receiver.providers.base import Provider, sign_hex_hmac
from receiver.settings import Account, Settings
from tests import fifth_provider
from tests.conftest import AUTH, AiohttpClient, eventually, make_client, make_settings
from tests.fifth_provider import FakeFifthApi

Client = TestClient[Any, Any]
SECRET = "fifth-webhook-secret"
API_KEY = "fifth-api-key"
TOKEN = "fifth-url-token-" + "y" * 32


@pytest.fixture
def fifth() -> Iterator[Provider]:
    register(fifth_provider.PROVIDER)
    try:
        yield fifth_provider.PROVIDER
    finally:
        del PROVIDERS[fifth_provider.NAME]


@pytest.fixture
async def api(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> FakeFifthApi:
    fake = FakeFifthApi(API_KEY)
    server = await aiohttp_server(fake.app())
    fake.base = str(server.make_url("")).rstrip("/")
    return fake


@pytest.fixture
async def client(
    fifth: Provider, api: FakeFifthApi, database_url: str, aiohttp_client: AiohttpClient
) -> Client:
    settings: Settings = make_settings(
        database_url,
        forward_enabled=False,
        poll_min_interval=0.1,
        poll_max_interval=0.4,
        poll_timeout=2.0,
        accounts={
            "fifth": {
                "main": Account(
                    secret=SecretStr(SECRET),
                    api_key=SecretStr(API_KEY),
                    base_url=api.base,
                ),
                "links": Account(url_token=SecretStr(TOKEN)),
            }
        },
    )
    result: Client = await make_client(aiohttp_client, settings)
    return result


def report(id_: str, state: str = "SENT") -> bytes:
    return json.dumps({"id": id_, "state": state, "at": "2024-05-02T10:00:00Z"}).encode()


async def post(client: Client, body: bytes, key: str | None = SECRET, path: str = "") -> Any:
    headers = {"X-Fifth-Signature": sign_hex_hmac(key, body, "sha256")} if key else {}
    return await client.post(f"/webhooks/fifth{path}", data=body, headers=headers)


async def status_of(client: Client, id_: str) -> Any:
    resp = await client.get(f"/v1/messages/fifth/{id_}", headers=AUTH)
    return await resp.json()


async def test_a_fifth_provider_module_gets_webhook_verification_and_polling(
    client: Client, api: FakeFifthApi
) -> None:
    resp = await post(client, report("m-1"))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["reports"] == 1
    found = await status_of(client, "m-1")
    assert (found["status"], found["account"]) == ("sent", "main")
    assert found["next_poll_at"] is not None  # its account polls

    api.states["m-1"] = {"id": "m-1", "state": "DELIVERED", "at": "2024-05-02T10:00:09Z"}

    async def delivered() -> bool:
        return bool((await status_of(client, "m-1"))["status"] == "delivered")

    await eventually(delivered)
    events = (await status_of(client, "m-1"))["events"]
    assert [(e["source"], e["status"]) for e in events] == [
        ("webhook", "sent"),
        ("poll", "delivered"),
    ]
    assert "m-1" in api.calls


async def test_a_send_registered_through_the_fifth_providers_account_is_polled(
    client: Client, api: FakeFifthApi
) -> None:
    body = {"response": {"id": "r-1"}, "account": "main"}
    assert (await client.post("/v1/messages/fifth", json=body, headers=AUTH)).status == 201
    api.states["r-1"] = {"id": "r-1", "state": "FAILED", "at": "2024-05-02T10:00:09Z"}

    async def failed() -> bool:
        return bool((await status_of(client, "r-1"))["status"] == "failed")

    await eventually(failed)


@pytest.mark.parametrize(
    ("body", "key", "path", "status", "code"),
    [
        (report("x"), None, "", 401, "invalid_signature"),  # no signature at all
        (report("x"), "a-guess", "", 401, "invalid_signature"),  # signed with another key
        (report("x"), None, "/" + "z" * 48, 401, "invalid_token"),  # a guessed URL token
        (report("x\x00y"), SECRET, "", 400, "invalid_report"),  # NUL in its id
        (b"\xff\xfe{", SECRET, "", 400, "invalid_report"),  # not UTF-8, not JSON
        (report("x" * 201), SECRET, "", 400, "invalid_report"),  # an id past its limit
    ],
)
async def test_the_fifth_providers_webhook_refuses_what_it_cannot_verify_or_read(
    client: Client, body: bytes, key: str | None, path: str, status: int, code: str
) -> None:
    resp = await post(client, body, key, path)
    assert resp.status == status
    assert (await resp.json())["error"]["code"] == code


async def test_the_fifth_provider_takes_its_accounts_url_tokens(client: Client) -> None:
    resp = await post(client, report("t-1"), key=None, path=f"/{TOKEN}")
    assert resp.status == 200, await resp.text()
    assert (await status_of(client, "t-1"))["account"] == "links"


async def test_an_unregistered_provider_has_no_route_and_no_accounts(
    database_url: str, aiohttp_client: AiohttpClient
) -> None:
    with pytest.raises(ValidationError, match=r"unknown providers \['fifth'\]"):
        make_settings(database_url, accounts={"fifth": {"main": Account()}})
    client = await make_client(aiohttp_client, make_settings(database_url))
    resp = await post(client, report("x"))
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "unknown_provider"


@pytest.mark.parametrize(
    "provider",
    [
        messente.PROVIDER,  # a name taken already
        Provider(name="Fifth"),  # upper case: not what a route or a JSON key expects
        Provider(name="fifth/x"),  # not one path segment
        Provider(name=""),
        Provider(name="f" * 51),
    ],
)
def test_the_registry_refuses_a_taken_name_and_one_no_path_can_carry(provider: Provider) -> None:
    before = dict(PROVIDERS)
    with pytest.raises(ValueError, match="provider"):
        register(provider)
    assert before == PROVIDERS


@pytest.mark.parametrize("module", ["polling/poller.py", "http/webhooks.py"])
def test_the_poller_and_the_webhook_route_name_no_provider(module: str) -> None:
    source = (Path(receiver.__file__).parent / module).read_text()
    names = {"messente", "infobip", "comapi", "mercury"}
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        # Code only (identifiers and string values), not the comments explaining it.
        if token.type == tokenize.NAME and token.string.lower() in names:
            found.append(token.string)
        if token.type == tokenize.STRING and token.string.strip("\"'").lower() in names:
            found.append(token.string)
    assert found == []
    assert "assert settings" not in source


async def test_an_account_whose_api_has_vanished_does_not_hold_up_the_other(
    fifth: Provider, api: FakeFifthApi, database_url: str, aiohttp_client: AiohttpClient
) -> None:
    with socket.socket() as sock:  # a port nothing listens on once closed: connection refused
        sock.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = make_settings(
        database_url,
        forward_enabled=False,
        poll_min_interval=0.1,
        poll_max_interval=0.4,
        poll_timeout=2.0,
        accounts={
            "fifth": {
                "main": Account(
                    secret=SecretStr(SECRET), api_key=SecretStr(API_KEY), base_url=api.base
                ),
                "gone": Account(
                    secret=SecretStr("gone-secret"), api_key=SecretStr("k"), base_url=gone
                ),
            }
        },
    )
    client = await make_client(aiohttp_client, settings)
    assert (await post(client, report("m-gone"), key="gone-secret")).status == 200
    assert (await post(client, report("m-ok"))).status == 200
    api.states["m-ok"] = {"id": "m-ok", "state": "DELIVERED", "at": "2024-05-02T10:00:09Z"}

    async def delivered() -> bool:
        return bool((await status_of(client, "m-ok"))["status"] == "delivered")

    await eventually(delivered)
    stuck = await status_of(client, "m-gone")
    assert (stuck["status"], stuck["account"]) == ("sent", "gone")
    assert stuck["next_poll_at"] is not None  # polled again later, not dropped
    assert "m-gone" not in api.calls  # never asked of another account's API
