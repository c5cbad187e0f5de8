"""RECEIVER_ACCOUNTS' polling fields: refused at start when wrong, and a named account
completed from the deployment's settings without ever borrowing another account's secrets."""

import json
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from receiver import accounts
from receiver.providers import PROVIDERS
from receiver.settings import Account, Settings


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"time_zone": "Mars/Olympus"}, "unknown time zone"),  # not an IANA zone
        ({"time_zone": "Europe/\x00Athens"}, "unknown time zone"),  # NUL inside
        ({"base_url": "ftp://api.example.com"}, "base_url"),  # not HTTP
        ({"base_url": "https://a b.example.com"}, "base_url"),  # a space: no such host
        ({"base_url": "https://" + "a" * 2000}, "base_url"),  # huge
        ({"poll_concurrency": 0}, "poll_concurrency"),  # would never poll
        ({"poll_rate": -1}, "poll_rate"),
        ({"poll_interval": 0}, "poll_interval"),  # a drain loop without pause
        ({"api_kee": "typo"}, "api_kee"),  # an unknown field is a typo, not ignored
    ],
)
def test_a_wrong_account_field_stops_the_service_with_its_name(
    monkeypatch: pytest.MonkeyPatch, fields: dict[str, Any], complaint: str
) -> None:
    monkeypatch.setenv("RECEIVER_ACCOUNTS", json.dumps({"mercury": {"athens": fields}}))
    with pytest.raises(ValidationError, match=complaint):
        Settings()


def test_a_named_account_takes_the_defaults_base_url_zone_and_pace_but_not_its_secrets() -> None:
    settings = Settings(
        mercury_username="default-user",
        mercury_password=SecretStr("default-pass"),
        mercury_base_url="https://default.mercury.example",
        mercury_time_zone="Europe/Tallinn",
        poll_concurrency=7,
        poll_rate=3.0,
        accounts={"mercury": {"athens": Account(time_zone="Europe/Athens")}},
    )
    found = accounts.accounts(settings, "mercury")
    athens = found["athens"]
    assert athens.base_url == "https://default.mercury.example"
    assert athens.time_zone == "Europe/Athens"
    assert (athens.poll_concurrency, athens.poll_rate) == (7, 3.0)
    assert athens.api_username is None
    assert athens.api_password is None
    assert found[accounts.DEFAULT].time_zone == "Europe/Tallinn"
    mercury = PROVIDERS["mercury"]
    assert mercury.poll is not None
    # Without its own credentials it does not poll (with the default's, it would be polling
    # the default account's dispatches as if they were its own).
    assert not mercury.poll.ready(athens)
    assert [name for _, name, _ in accounts.polled(settings)] == [accounts.DEFAULT]


def test_a_default_account_with_nothing_set_is_no_account() -> None:
    assert accounts.accounts(Settings(), "mercury") == {}
    assert accounts.polled(Settings()) == []
    assert accounts.drained(Settings()) == []


def test_the_messente_api_password_is_the_signature_key_and_polls_too() -> None:
    settings = Settings(
        accounts={
            "messente": {"brand2": Account(secret=SecretStr("pw2"), api_username="brand2-user")}
        }
    )
    polled = accounts.polled(settings)
    assert [(p.name, name) for p, name, _ in polled] == [("messente", "brand2")]
    assert polled[0][2].base_url == "https://api.messente.com"
