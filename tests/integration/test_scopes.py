"""API token scopes: read (lookups, receipts), write (send registrations), admin (the
subscriptions API); a token configured without scopes has all three."""

import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr, ValidationError

from receiver.http.app import create_app
from receiver.settings import Settings, split_token
from tests.conftest import AiohttpClient, make_client, make_settings

Client = TestClient[Any, Any]

# Each token's scopes, as written in RECEIVER_API_TOKENS.
TOKENS = {
    "t-read": "t-read:read",
    "t-write": "t-write:write",
    "t-admin": "t-admin:admin",
    "t-read-write": "t-read-write:read+write",
    "t-every": "t-every",  # unscoped, as every token was before scopes: everything
}
MAY = {
    "t-read": {"read"},
    "t-write": {"write"},
    "t-admin": {"admin"},
    "t-read-write": {"read", "write"},
    "t-every": {"read", "write", "admin"},
}

SOME_ID = str(uuid.uuid4())
MESSENTE_RESPONSE = {
    "response": {
        "omnimessage_id": "omni-scope",
        "to": "+3725555555",
        "messages": [{"channel": "sms", "message_id": "sms-scope", "sender": "Brand"}],
    }
}

# One request per /v1 route, and the scope it needs.
ROUTES: list[tuple[str, str, str, dict[str, Any] | None, str]] = [
    ("GET", "/v1/messages", "/v1/messages", None, "read"),
    ("GET", "/v1/messages/{provider}/{id}", "/v1/messages/messente/omni-1", None, "read"),
    ("GET", "/v1/groups/{provider}/{id}", "/v1/groups/infobip/bulk-1", None, "read"),
    ("GET", "/v1/unmapped", "/v1/unmapped", None, "read"),
    ("GET", "/v1/receipts/problems", "/v1/receipts/problems", None, "read"),
    ("GET", "/v1/receipts/{id}", f"/v1/receipts/{SOME_ID}", None, "read"),
    ("POST", "/v1/messages/{provider}", "/v1/messages/messente", MESSENTE_RESPONSE, "write"),
    (
        "POST",
        "/v1/subscriptions",
        "/v1/subscriptions",
        {"url": "https://hooks.example.com/dlr"},
        "admin",
    ),
    ("GET", "/v1/subscriptions", "/v1/subscriptions", None, "admin"),
    ("POST", "/v1/erasures", "/v1/erasures", {"phone": "+3725555555", "dry_run": True}, "admin"),
    ("GET", "/v1/subscriptions/{id}", f"/v1/subscriptions/{SOME_ID}", None, "admin"),
    ("PATCH", "/v1/subscriptions/{id}", f"/v1/subscriptions/{SOME_ID}", {}, "admin"),
    ("DELETE", "/v1/subscriptions/{id}", f"/v1/subscriptions/{SOME_ID}", None, "admin"),
    (
        "POST",
        "/v1/subscriptions/{id}/rotate-secret",
        f"/v1/subscriptions/{SOME_ID}/rotate-secret",
        {},
        "admin",
    ),
    (
        "POST",
        "/v1/subscriptions/{id}/replay",
        f"/v1/subscriptions/{SOME_ID}/replay",
        {},
        "admin",
    ),
    (
        "GET",
        "/v1/subscriptions/{id}/deliveries",
        f"/v1/subscriptions/{SOME_ID}/deliveries?state=dead",
        None,
        "admin",
    ),
    (
        "GET",
        "/v1/subscriptions/{id}/deliveries/{delivery_id}",
        f"/v1/subscriptions/{SOME_ID}/deliveries/{SOME_ID}",
        None,
        "admin",
    ),
    (
        "POST",
        "/v1/subscriptions/{id}/deliveries/{delivery_id}/replay",
        f"/v1/subscriptions/{SOME_ID}/deliveries/{SOME_ID}/replay",
        None,
        "admin",
    ),
]


@pytest.fixture
async def scoped(database_url: str, aiohttp_client: AiohttpClient) -> Client:
    settings = make_settings(database_url, api_tokens=tuple(SecretStr(t) for t in TOKENS.values()))
    return await make_client(aiohttp_client, settings)


@pytest.mark.parametrize(
    ("method", "route", "path", "body", "needs"), ROUTES, ids=[f"{r[0]} {r[1]}" for r in ROUTES]
)
async def test_each_route_takes_only_tokens_with_its_scope(
    scoped: Client, method: str, route: str, path: str, body: dict[str, Any] | None, needs: str
) -> None:
    for token, scopes in MAY.items():
        headers = {"Authorization": f"Bearer {token}"}
        resp = await scoped.request(method, path, json=body, headers=headers)
        if needs in scopes:
            assert resp.status not in (401, 403), (token, await resp.text())
        else:
            assert resp.status == 403, (token, resp.status)
            error = (await resp.json())["error"]
            assert error["code"] == "forbidden"
            assert repr(needs) in error["message"]


def test_every_v1_route_is_in_the_table_above(database_url: str) -> None:
    app = create_app(make_settings(database_url))
    served = {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None and r.resource.canonical.startswith("/v1") and r.method != "HEAD"
    }
    assert served == {(method, route) for method, route, *_ in ROUTES}


async def test_the_written_scope_is_what_a_token_may_do_not_part_of_it(scoped: Client) -> None:
    # "t-read:read" is the token "t-read" with the read scope, not a token of that spelling.
    resp = await scoped.get("/v1/unmapped", headers={"Authorization": "Bearer t-read:read"})
    assert resp.status == 401


async def test_an_unknown_route_is_404_whatever_the_token_may_do(scoped: Client) -> None:
    resp = await scoped.get("/v1/nothing-here", headers={"Authorization": "Bearer t-write"})
    assert resp.status == 404


@pytest.mark.parametrize(
    ("entry", "token", "scopes"),
    [
        ("plain", "plain", {"read", "write", "admin"}),  # unscoped: everything, as before
        ("tok:read", "tok", {"read"}),
        ("tok:read+write+admin", "tok", {"read", "write", "admin"}),
        ("a:b:admin", "a:b", {"admin"}),  # the scopes follow the last colon
    ],
)
def test_token_entries_are_read_with_their_scopes(entry: str, token: str, scopes: set[str]) -> None:
    assert split_token(entry) == (token, frozenset(scopes))


@pytest.mark.parametrize(
    "entry",
    [
        "s3cr3t:reed",  # a typo must not become a token with every scope
        "s3cr3t:",  # no scope after the colon
        "s3cr3t:read+",  # an empty scope
        "s3cr3t:b",  # an old token with a colon: now it must be written with its scopes
        ":read",  # no token
    ],
)
def test_a_bad_scope_stops_the_configuration_without_showing_the_token(entry: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(api_tokens=entry)  # a string, as the environment gives it
    assert "s3cr3t" not in str(raised.value)
    assert "scopes must be" in str(raised.value)
