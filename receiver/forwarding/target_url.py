"""What a subscriber URL may look like: checked whole, once, where a subscription is saved.

URL parsers are lenient (yarl keeps `exa mple.com` as a host and drops tabs; the resolver
then fails on a 64-character label with a UnicodeError), so a URL that can never be
delivered to would be saved and fail on every attempt, or crash a request later. Whether
the address it reaches is allowed is netguard's business, not this module's.
"""

import ipaddress
import re
from urllib.parse import urlsplit

import yarl

from receiver.forwarding import broker_url

# A hostname label once IDNA-encoded: letters, digits, hyphens (RFC 1123), and underscores,
# which DNS allows and some real hosts have; no hyphen at either end.
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?")
# A last label that is a number (decimal or 0x-hex) makes resolvers and browsers read the
# whole host as an IPv4 address in one of its old forms: 2130706433 and 0x7f.1 are 127.0.0.1.
_NUMERIC = re.compile(r"[0-9]+|0x[0-9a-f]*")


def check_target_url(value: str) -> str:
    """The URL unchanged if it is an absolute http(s) URL with a valid host and port and no
    user info, or a broker URL (broker_url) with a valid host; otherwise ValueError saying
    what is wrong."""
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("may not contain spaces or control characters")
    if broker_url.is_broker_url(value):
        return _check_broker(value)
    try:
        parts = urlsplit(value)
        port = parts.port  # reads the port: ValueError if not a number in 0-65535
    except ValueError as exc:
        raise ValueError(f"not a URL ({exc})") from exc
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("must be an http://, https://, nats:// or amqp:// URL")
    if not parts.netloc:
        raise ValueError("must be an absolute URL with a host")
    if "@" in parts.netloc:
        raise ValueError("may not contain a user name or password (put a secret in the path)")
    if port == 0:
        raise ValueError("port must be 1-65535")
    if parts.netloc.startswith("["):
        _check_ipv6(parts.hostname or "")
    else:
        _check_hostname(value)
    return value


def _check_broker(value: str) -> str:
    # Brokers take credentials in the URL (their clients' convention); the host is held to
    # the same rules as a webhook's, checked on the URL without them.
    target = broker_url.parse(value)
    parts = urlsplit(value)
    bare = parts._replace(netloc=parts.netloc.rpartition("@")[2])
    if bare.netloc.startswith("["):
        _check_ipv6(target.host)
    else:
        _check_hostname(bare.geturl())
    if target.port == 0:
        raise ValueError("port must be 1-65535")
    return value


def _check_ipv6(host: str) -> None:
    if "%" in host:
        raise ValueError("an IPv6 zone id names a local interface; it cannot be a target")
    try:
        ipaddress.IPv6Address(host)
    except ValueError as exc:
        raise ValueError("the brackets do not hold an IPv6 address") from exc


def _check_hostname(value: str) -> None:
    try:
        # The host as aiohttp will send it: lowercased, IDNA-encoded by the same library.
        host = yarl.URL(value).raw_host or ""
    except ValueError as exc:  # UnicodeError included: a label IDNA cannot encode
        raise ValueError("host is not a valid name") from exc
    if not host:
        raise ValueError("must be an absolute URL with a host")
    try:
        ipaddress.IPv4Address(host)
        return
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host  # a fully qualified name's root dot
    if len(name) > 253:
        raise ValueError("host name longer than 253 characters")
    labels = name.split(".")
    for label in labels:
        if not label:
            raise ValueError("host name has an empty label")
        if len(label) > 63:
            raise ValueError("host name has a label longer than 63 characters")
        if not _LABEL.fullmatch(label):
            raise ValueError("host name may hold only letters, digits, '-' and '_'")
    if _NUMERIC.fullmatch(labels[-1]):
        raise ValueError("host is neither a name nor a dotted IPv4 address")
