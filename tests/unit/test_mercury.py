"""Mercury: SendMessages registration (no push)."""

from datetime import UTC, datetime

import pytest

from receiver.providers import mercury
from receiver.providers.base import Registration
from receiver.reports import InvalidReport
from receiver.status import Status
from tests.payloads import load

NOW = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)


def test_invalid_recipients_are_rejected_at_once_and_the_rest_accepted() -> None:
    reg = Registration(
        load("mercury", "send_response.json"), load("mercury", "send_request.json"), "promo", NOW
    )
    a, b = mercury.parse_registration(reg)
    assert (a.message_key, a.status, a.recipient) == (
        "180249:CustomerIdA",
        Status.ACCEPTED,
        "6936862208",
    )
    assert (b.message_key, b.status, b.permanent) == ("180249:CustomerIdB", Status.REJECTED, True)
    assert {a.group_key, b.group_key} == {"180249"}
    assert b.details["cardNumber"] == "LOYAL-42"
    # Template payloads and per-recipient passwords are not copied into events.
    assert "password" not in a.details
    assert "payload" not in a.details


def test_invalid_emails_as_plain_strings_match_by_address() -> None:
    response = {"dispatch": 7, "invalidEmails": ["B@Example.com"], "invalidMobiles": []}
    request = {
        "recipients": [
            {"uniqueId": "a", "email": "a@example.com"},
            {"uniqueId": "b", "email": "b@example.com"},
        ]
    }
    a, b = mercury.parse_registration(Registration(response, request, None, NOW))
    assert (a.status, b.status) == (Status.ACCEPTED, Status.REJECTED)


@pytest.mark.parametrize(
    ("response", "request_"),
    [
        ({"dispatch": 1}, None),  # no request: recipients unknown
        ({"dispatch": "abc"}, {"recipients": [{"uniqueId": "a"}]}),  # dispatch not a number
        ({"dispatch": 1}, {"recipients": []}),  # nobody to send to
        ({"dispatch": 1}, {"recipients": [{"uniqueId": "a"}, {"uniqueId": "a"}]}),  # duplicate id
    ],
)
def test_bad_registrations_are_refused(response: object, request_: object) -> None:
    with pytest.raises(InvalidReport):
        mercury.parse_registration(Registration(response, request_, None, NOW))
