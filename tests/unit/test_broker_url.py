"""Broker subscription URLs: what is accepted, what is refused and why, and what is shown."""

import re

import pytest

from receiver.forwarding import broker_url
from receiver.forwarding.target_url import check_target_url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("nats://h", "missing query parameter subject"),  # no subject at all
        ("nats://h?subject=", "subject may not be empty"),
        ("nats://h?subject=a.*", "without * or >"),  # wildcards cannot be published to
        ("nats://h?subject=a.>", "without * or >"),
        ("nats://h?subject=a..b", "none empty"),
        ("nats://h?subject=.a", "none empty"),
        ("nats://h?subject=a%20b", "spaces or control characters"),  # decoded space
        ("nats://h?subject=a%00b", "spaces or control characters"),  # decoded NUL
        ("nats://h?subject=a%0d%0aPUB", "spaces or control characters"),  # protocol injection
        ("nats://h?subject=" + "a" * 256, "longer than 255 bytes"),
        ("nats://h?subject={message_key}", "only {provider} and {status}"),
        ("nats://h?subject=a.{status", "unmatched brace"),
        ("nats://h?subject=a.x{status}", "without * or >"),  # a token is a template or text
        ("nats://h?subject=a&subject=b", "subject given twice"),
        ("nats://h?subject=a&stream=S", "unknown query parameters ['stream']"),
        ("nats://h/path?subject=a", "has no path"),
        ("nats://h:0?subject=a", "port must be 1-65535"),
        ("nats://h:65536?subject=a", "not a URL"),
        ("nats://?subject=a", "with a host"),
        ("nats://2130706433?subject=a", "neither a name nor a dotted IPv4"),  # 127.0.0.1
        ("nats://[fe80::1%25eth0]?subject=a", "zone id"),
        ("nats://" + "a" * 64 + ".com?subject=a", "longer than 63"),
        ("nats://h?subject=a#frag", "fragment"),
        ("amqp://h/", "missing query parameter exchange"),
        ("amqp://h/?exchange=", "exchange must be 1-255"),
        ("amqp://h/?exchange=a%20b", "exchange must be 1-255"),  # decoded space
        ("amqp://h/?exchange=a/b", "exchange must be 1-255"),
        ("amqp://h/?exchange=" + "x" * 256, "exchange must be 1-255"),
        ("amqp://h/?exchange=x&routing_key={recipient}", "only {provider} and {status}"),
        ("amqp://h/?exchange=x&routing_key=" + "k" * 256, "longer than 255 bytes"),
        ("amqp://h/a/b?exchange=x", "write a '/' inside it as %2F"),
        ("amqp://h/?exchange=x&queue=q", "unknown query parameters ['queue']"),
        ("amqp://h/?exchange=x&exchange=y", "exchange given twice"),
        ("amqps://h/?exchange=x", "http://, https://, nats:// or amqp://"),  # TLS: not yet
    ],
)
def test_a_broker_url_that_cannot_be_published_to_is_refused(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        check_target_url(url)


def test_a_nats_url_names_its_server_and_subject() -> None:
    target = broker_url.parse("nats://u:p@Nats.Example.com:4333?subject=dlr.{provider}.{status}")
    assert (target.host, target.port, target.username, target.password) == (
        "nats.example.com", 4333, "u", "p",
    )  # fmt: skip
    assert broker_url.fill(target.subject, "infobip", "failed") == "dlr.infobip.failed"
    assert broker_url.parse("nats://h?subject=a").port == 4222


def test_an_amqp_url_names_its_vhost_exchange_and_routing_key() -> None:
    target = broker_url.parse("amqp://u:p%40ss@h/prod%2Fdlr?exchange=dlr.events")
    assert (target.port, target.password, target.vhost) == (5672, "p@ss", "prod/dlr")
    assert (target.exchange, target.routing_key) == ("dlr.events", "{provider}.{status}")
    assert broker_url.parse("amqp://h?exchange=x").vhost == "/"
    assert broker_url.parse("amqp://h/?exchange=x&routing_key=").routing_key == ""


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest:s3cret@h/?exchange=x", "amqp://guest:***@h/?exchange=x"),
        ("amqp://u:p%40ss@h/?exchange=x", "amqp://u:***@h/?exchange=x"),
        ("nats://tok3n@h:4222?subject=a", "nats://***@h:4222?subject=a"),  # a token
        ("nats://u:pw@h?subject=a", "nats://u:***@h?subject=a"),
        ("amqp://user@h/?exchange=x", "amqp://user@h/?exchange=x"),  # no password to hide
        ("nats://h?subject=a", "nats://h?subject=a"),
        ("https://h/hook?key=abc", "https://h/hook?key=abc"),  # not a broker URL: as it is
    ],
)
def test_credentials_are_redacted(url: str, shown: str) -> None:
    assert broker_url.redact(url) == shown


def test_an_error_quoting_the_password_is_scrubbed() -> None:
    url = "amqp://u:p%40ss@h/?exchange=x"
    assert broker_url.scrub("auth failed for u:p@ss and p%40ss", url) == (
        "auth failed for u:*** and ***"
    )
    assert broker_url.scrub("no secret here", "nats://h?subject=a") == "no secret here"
