"""Fuzzing: random and mutated payloads into every parser and verifier. Nothing may come out
but a parse result or InvalidReport (a clean 4xx at the HTTP edge)."""

import json
import re
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from receiver.providers import PROVIDERS, comapi, infobip, messente
from receiver.providers.base import Registration, Verification
from receiver.reports import InvalidReport, Parsed
from receiver.settings import Account
from tests.payloads import raw

NOW = datetime(2024, 5, 2, tzinfo=UTC)
SEEDS = [
    ("messente", raw("messente", "dlr_viber_expired.json"), "application/json"),
    ("messente", raw("messente", "dlr_sms_delivered_priced.json"), "application/json"),
    ("infobip", raw("infobip", "sms_v2_batch.json"), "application/json"),
    ("infobip", raw("infobip", "omni_seen.json"), "application/json"),
    ("infobip", raw("infobip", "sms_v2_batch.xml"), "application/xml"),
    ("comapi", raw("comapi", "batch_failover.json"), "application/json"),
    ("comapi", raw("comapi", "single_failed.json"), "application/json"),
]
PARSERS = {
    "messente": messente.parse_webhook,
    "infobip": infobip.parse_webhook,
    "comapi": comapi.parse_webhook,
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=25,
)


def parses_cleanly(provider: str, body: bytes, content_type: str) -> None:
    try:
        result = PARSERS[provider](body, content_type, NOW)
    except InvalidReport:
        return
    assert isinstance(result, Parsed)
    for update in result.updates:
        assert update.message_key
        assert "\x00" not in (update.provider_status or "")
        # Whatever comes out can be sent to Postgres: UTF-8 text (no lone surrogate) and
        # jsonb details.
        for value in update:
            for text in value if isinstance(value, tuple) else (value,):
                if isinstance(text, str):
                    text.encode()
        assert isinstance(json.loads(update.details_json), dict)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.data())
def test_mutated_payloads_parse_or_are_refused(seed: tuple[str, bytes, str], data: Any) -> None:
    provider, body, content_type = seed
    mutated = bytearray(body)
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(mutated) - 1))
        action = data.draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        if action == "flip":
            mutated[position] = data.draw(st.integers(0, 255))
        elif action == "delete":
            del mutated[position]
        elif action == "insert":
            mutated.insert(position, data.draw(st.integers(0, 255)))
        else:
            del mutated[position:]
        if not mutated:
            break
    parses_cleanly(provider, bytes(mutated), content_type)


# JSON escapes Python reads but Postgres cannot store as they are (a lone half of a surrogate
# pair, NUL), and ones it can (a whole pair, an accent, a backslash).
ESCAPES = ["\\ud800", "\\udfff", "\\ud83d\\ude00", "\\u0000", "\\u00e9", "\\\\"]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([s for s in SEEDS if s[2] == "application/json"]), st.data())
def test_escapes_inside_strings_parse_or_are_refused(
    seed: tuple[str, bytes, str], data: Any
) -> None:
    provider, body, content_type = seed
    text = body.decode()
    # Just inside a string: the start of a key or of a string value.
    starts = [m.end() for m in re.finditer(r'(?:[{,]\s*"|"\s*:\s*")', text)]
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.sampled_from(starts))
        escape = data.draw(st.sampled_from(ESCAPES))
        text = text[:at] + escape + text[at:]
        starts = [s + len(escape) if s > at else s for s in starts]
    parses_cleanly(provider, text.encode(), content_type)


# The ends of what a datetime holds, with zones that push them past it once in UTC.
EXTREME_TIMES = [
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "0001-01-01T00:00:00",
    "9999-12-31T23:59:59.999999Z",
    "2024-02-30T00:00:00Z",
]
TIMESTAMP = re.compile(r'"\d{4}-\d\d-\d\dT[^"]*"')


@settings(max_examples=100)
@given(st.sampled_from([s for s in SEEDS if s[2] == "application/json"]), st.data())
def test_extreme_timestamps_parse_or_are_refused(seed: tuple[str, bytes, str], data: Any) -> None:
    provider, body, content_type = seed
    text = TIMESTAMP.sub(lambda _: f'"{data.draw(st.sampled_from(EXTREME_TIMES))}"', body.decode())
    parses_cleanly(provider, text.encode(), content_type)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.integers(1, 5000), st.booleans(), st.data())
def test_deep_nesting_parses_or_is_refused(
    seed: tuple[str, bytes, str], depth: int, arrays: bool, data: Any
) -> None:
    # Past the recursion limits of json.loads, of the XML reader, of the jsonb encoder.
    provider, body, content_type = seed
    text = body.decode()
    if content_type.endswith("xml"):
        nested = "<a>" * depth + "x" + "</a>" * depth
        starts = [m.end() for m in re.finditer(r"<[A-Za-z]+>", text)]
    else:
        inner = "[" * depth + "]" * depth if arrays else '{"a":' * depth + "1" + "}" * depth
        nested = f'"deep": {inner},'
        starts = [m.end() for m in re.finditer(r"\{\s*", text)]  # just inside an object
    at = data.draw(st.sampled_from(starts))
    parses_cleanly(provider, (text[:at] + nested + text[at:]).encode(), content_type)


@settings(max_examples=200)
@given(
    st.sampled_from(sorted(PARSERS)),
    st.binary(max_size=300),
    st.sampled_from(["application/json", "application/xml", None]),
)
def test_random_bytes_parse_or_are_refused(provider: str, body: bytes, ctype: str | None) -> None:
    parses_cleanly(provider, body, ctype or "")


@settings(max_examples=300)
@given(st.sampled_from(sorted(PARSERS)), json_values)
def test_random_json_parses_or_is_refused(provider: str, value: Any) -> None:
    parses_cleanly(provider, json.dumps(value).encode(), "application/json")


@settings(max_examples=300)
@given(st.sampled_from(sorted(PARSERS)), json_values)
def test_random_values_in_a_batch_envelope(provider: str, value: Any) -> None:
    body = {"results": [value]} if provider == "infobip" else value
    parses_cleanly(provider, json.dumps(body).encode(), "application/json")


@settings(max_examples=300)
@given(st.sampled_from(sorted(PROVIDERS)), json_values, json_values | st.none())
def test_registrations_parse_or_are_refused(provider: str, response: Any, request: Any) -> None:
    try:
        parse = PROVIDERS[provider].parse_registration
        assert parse is not None
        updates = parse(Registration(response, request, None, NOW))
    except InvalidReport:
        return
    assert all(u.registered for u in updates)


# One account holding what each verifier reads: a secret, and Infobip's Basic username.
VERIFY_ACCOUNT = Account(username="u", secret=SecretStr("s" * 20))


@settings(max_examples=300)
@given(
    st.sampled_from([messente.verify, infobip.verify, comapi.verify]),
    st.dictionaries(
        st.sampled_from(["X-Messente-Signature", "X-Comapi-Signature", "Authorization"]),
        st.text(max_size=80),
    ),
    st.binary(max_size=200),
)
def test_verifiers_only_ever_answer_a_verdict(
    verify: Any, headers: dict[str, str], body: bytes
) -> None:
    verdict = verify(VERIFY_ACCOUNT, headers, body)
    assert verdict in (Verification.OK, Verification.BAD, Verification.MISSING)
    # A random header is never a valid signature.
    assert verdict is not Verification.OK or not headers
