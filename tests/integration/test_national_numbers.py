"""A number typed as the customer says it, without its country code, finds the message when
RECEIVER_PHONE_REGIONS names the country: in the API and in the console."""

import json
import urllib.parse
from typing import Any

import pytest
from pydantic import ValidationError

from tests.conftest import AUTH, AiohttpClient, make_client, make_settings
from tests.console_support import TOKENS, sign_in
from tests.integration.test_providers import Client, post_infobip

# Infobip writes the recipient as 385981178000 (Croatia, no +): as dialled there, 098 117 8000.
NATIONAL = "098 117 8000"


async def _client(aiohttp_client: AiohttpClient, database_url: str, **overrides: Any) -> Client:
    client: Client = await make_client(
        aiohttp_client, make_settings(database_url, api_tokens=TOKENS, **overrides)
    )
    report = {
        "messageId": "hr-1",
        "to": "385981178000",
        "doneAt": "2026-12-01T09:00:07.880+0000",
        "status": {"groupId": 3, "groupName": "DELIVERED", "id": 5, "name": "DELIVERED_TO_HANDSET"},
    }
    body = {"results": [report]}
    resp = await post_infobip(client, json.dumps(body).encode())
    assert resp.status == 200, await resp.text()
    return client


async def _found(client: Client, recipient: str) -> list[str]:
    query = urllib.parse.urlencode({"recipient": recipient})
    resp = await client.get(f"/v1/messages?{query}", headers=AUTH)
    assert resp.status == 200, await resp.text()
    return [m["message_id"] for m in (await resp.json())["messages"]]


async def test_a_national_number_finds_the_message_in_a_configured_region(
    database_url: str, aiohttp_client: AiohttpClient
) -> None:
    client = await _client(aiohttp_client, database_url, phone_regions=("SI", "HR"))
    assert await _found(client, NATIONAL) == ["hr-1"]
    assert await _found(client, "0981178000") == ["hr-1"]
    # International spellings still find it, and a number of another country does not.
    assert await _found(client, "+385 98 117 8000") == ["hr-1"]
    assert await _found(client, "098 117 8001") == []
    await sign_in(client)
    page = await client.get(f"/console/messages?{urllib.parse.urlencode({'recipient': NATIONAL})}")
    assert page.status == 200
    assert "hr-1" in await page.text()


async def test_without_a_region_a_national_number_finds_nothing(
    database_url: str, aiohttp_client: AiohttpClient
) -> None:
    client = await _client(aiohttp_client, database_url)
    assert await _found(client, NATIONAL) == []
    assert await _found(client, "+385981178000") == ["hr-1"]


@pytest.mark.parametrize(
    "recipient", ["0\x00981178000", "0" * 40, "0" * 41, "098-117-8000" * 3, "+", "00", "0"]
)
async def test_hostile_national_numbers_are_a_plain_search(
    database_url: str, aiohttp_client: AiohttpClient, recipient: str
) -> None:
    client = await _client(aiohttp_client, database_url, phone_regions=("HR",))
    query = urllib.parse.urlencode({"recipient": recipient})
    resp = await client.get(f"/v1/messages?{query}", headers=AUTH)
    # A NUL is the API's clear 400; everything else searches and finds nothing.
    assert resp.status in (200, 400), await resp.text()
    if resp.status == 200:
        assert (await resp.json())["messages"] == []


@pytest.mark.parametrize("given", ["XX", "croatia", "385"])
def test_an_unknown_region_is_a_clear_error_at_start(database_url: str, given: str) -> None:
    with pytest.raises(ValidationError, match="unknown phone region"):
        make_settings(database_url, phone_regions=(given,))


def test_regions_are_read_from_a_comma_list(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECEIVER_PHONE_REGIONS", "ee, hr")
    assert make_settings(database_url).phone_regions == ("EE", "HR")
