"""Broker subscription URLs (nats://, amqp://): read, checked whole, and shown without secrets.

A broker URL names a server and a place in it: a NATS JetStream subject
(`nats://[USER:PASSWORD@|TOKEN@]HOST[:PORT]?subject=SUBJECT`) or a RabbitMQ exchange
(`amqp://USER:PASSWORD@HOST[:PORT]/VHOST?exchange=EXCHANGE[&routing_key=KEY]`). Subjects and
routing keys may hold `{provider}` and `{status}`, filled in per status change. The credentials
are secrets: `redact` is what the API and the logs show.
"""

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

BROKER_SCHEMES = ("nats", "amqp")
_DEFAULT_PORTS = {"nats": 4222, "amqp": 5672}
# What a subject or routing key may be filled in with: both come from closed sets of lowercase
# words (providers, statuses), so a filled-in subject is as valid as the template was.
_TOKENS = ("provider", "status")
_TEMPLATE = re.compile(r"\{([^{}]*)\}")
# NATS subject tokens: no whitespace (checked before), and the wildcards `*` and `>` cannot be
# published to. A dot separates tokens, so an empty token (`a..b`) is no subject.
_SUBJECT_TOKEN = re.compile(r"[^*>.{}]+|\{provider\}|\{status\}")
# RabbitMQ exchange names (its own rule for names it accepts).
_EXCHANGE = re.compile(r"[A-Za-z0-9_.:-]{1,255}")
_MOST_BYTES = 255  # a subject we keep to, an AMQP short string's limit
_REDACTED = "***"


@dataclass(frozen=True)
class BrokerUrl:
    """One broker target. `server` identifies the connection: subscriptions that share it
    share one connection per forwarder."""

    scheme: Literal["nats", "amqp"]
    host: str
    port: int
    username: str | None
    password: str | None
    vhost: str  # amqp only ("/" by default)
    subject: str  # nats: the subject template
    exchange: str  # amqp
    routing_key: str  # amqp: the routing key template

    @property
    def server(self) -> tuple[str, str, int, str | None, str | None, str]:
        return (self.scheme, self.host, self.port, self.username, self.password, self.vhost)

    def secrets(self) -> tuple[str, ...]:
        """What must never be shown or logged: the password (or NATS token)."""
        if self.scheme == "nats" and self.password is None and self.username:
            return (self.username,)  # nats://TOKEN@host
        return (self.password,) if self.password else ()


def is_broker_url(value: str) -> bool:
    return value.split(":", 1)[0].lower() in BROKER_SCHEMES


def parse(value: str) -> BrokerUrl:
    """The broker target of a nats:// or amqp:// URL; ValueError saying what is wrong."""
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme not in BROKER_SCHEMES:
        raise ValueError("must be a nats:// or amqp:// URL")
    try:
        port = _DEFAULT_PORTS[scheme] if parts.port is None else parts.port
    except ValueError as exc:
        raise ValueError(f"not a URL ({exc})") from exc
    if parts.hostname is None or not parts.hostname:
        raise ValueError("must be an absolute URL with a host")
    if parts.fragment:
        raise ValueError("may not have a fragment")
    query = _query(parts.query)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if scheme == "nats":
        if parts.path not in ("", "/"):
            raise ValueError("a nats:// URL has no path; name the subject with ?subject=")
        _only(query, {"subject"}, required={"subject"})
        subject = query["subject"]
        _check_subject(subject)
        return BrokerUrl("nats", parts.hostname, port, username, password, "", subject, "", "")
    _only(query, {"exchange", "routing_key"}, required={"exchange"})
    if not _EXCHANGE.fullmatch(query["exchange"]):
        raise ValueError("exchange must be 1-255 letters, digits, '-', '_', '.' or ':'")
    routing_key = query.get("routing_key", "{provider}.{status}")
    _check_routing_key(routing_key)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    if "/" in parts.path[1:]:
        raise ValueError("the path is the vhost; write a '/' inside it as %2F")
    return BrokerUrl(
        "amqp", parts.hostname, port, username, password, vhost, "", query["exchange"], routing_key
    )


def fill(template: str, provider: str, status: str) -> str:
    return template.replace("{provider}", provider).replace("{status}", status)


def redact(value: str) -> str:
    """The URL with its password (or NATS token) replaced by ***; other URLs unchanged."""
    if not is_broker_url(value):
        return value
    parts = urlsplit(value)
    if "@" not in parts.netloc:
        return value
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if colon:
        shown = f"{user}:{_REDACTED}"
    elif parts.scheme.lower() == "nats":
        shown = _REDACTED  # nats://TOKEN@host: the user part is the secret
    else:
        shown = user
    return urlunsplit(parts._replace(netloc=f"{shown}@{hostport}"))


def scrub(text: str, url: str) -> str:
    """Text (an error message) with the URL's secrets taken out, before it is stored or logged."""
    try:
        target = parse(url)
    except ValueError:
        return text
    for secret in target.secrets():
        for form in {secret, quote(secret, safe="")}:
            text = text.replace(form, _REDACTED)
    return text


def _query(raw: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(raw, keep_blank_values=True, strict_parsing=bool(raw))
    except ValueError as exc:
        raise ValueError("query is not name=value pairs") from exc
    query: dict[str, str] = {}
    for name, value in pairs:
        if name in query:
            raise ValueError(f"{name} given twice")
        query[name] = value
    return query


def _only(query: dict[str, str], known: set[str], required: set[str]) -> None:
    unknown = sorted(set(query) - known)
    if unknown:
        raise ValueError(f"unknown query parameters {unknown}; known: {sorted(known)}")
    missing = sorted(required - set(query))
    if missing:
        raise ValueError(f"missing query parameter {missing[0]}")


def _check_template(value: str, what: str) -> None:
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"{what} may not contain spaces or control characters")
    if len(value.encode()) > _MOST_BYTES:
        raise ValueError(f"{what} is longer than {_MOST_BYTES} bytes")
    for token in _TEMPLATE.findall(value):
        if token not in _TOKENS:
            raise ValueError(f"{what} may hold only {{provider}} and {{status}}, not {{{token}}}")
    if "{" in _TEMPLATE.sub("", value) or "}" in _TEMPLATE.sub("", value):
        raise ValueError(f"{what} has an unmatched brace")


def _check_subject(subject: str) -> None:
    if not subject:
        raise ValueError("subject may not be empty")
    _check_template(subject, "subject")
    if not all(_SUBJECT_TOKEN.fullmatch(token) for token in subject.split(".")):
        raise ValueError("subject must be dot-separated tokens, none empty, without * or >")


def _check_routing_key(key: str) -> None:
    _check_template(key, "routing_key")
