"""Subscriber URLs are checked whole, once, when a subscription is created or changed."""

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import AUTH

Client = TestClient[Any, Any]

_LONG_LABEL = "a" * 64
# Five labels of 60 and "com": 308 characters, every label within 63.
_LONG_NAME = ".".join(["a" * 60] * 5 + ["com"])

BAD_URLS = [
    ("http://exa mple.com/", "a space in the host"),
    ("http://example.com/a b", "a space in the path"),
    ("http://exam\tple.com/", "a tab (which URL parsers silently drop)"),
    ("http://a..b/", "an empty label"),
    ("http://.example.com/", "an empty first label"),
    (f"http://{_LONG_LABEL}.com/", "a label over 63 characters"),
    (f"http://{_LONG_NAME}/", "a name over 253 characters"),
    ("http://" + "ü" * 70 + ".com/", "a label over 63 once IDNA-encoded"),
    ("http://-bad.example.com/", "a label starting with a hyphen"),
    ("http://exa%20mple.com/", "a percent-escape in the host"),
    ("http://exa$mple.com/", "a character no hostname has"),
    ("http://2130706433/", "a number as the whole host: 127.0.0.1 to some resolvers"),
    ("http://10.0.0.1.2/", "a host ending in a number that is no IPv4 address"),
    ("http://[fe80::1%25eth0]/", "an IPv6 zone id"),
    ("http://[zz]/", "brackets that hold no IPv6 address"),
    ("http://example.com:99999/", "a port over 65535"),
    ("http://example.com:0/", "port 0"),
    ("http://example.com:abc/", "a port that is no number"),
    ("http://example.com:-1/", "a negative port"),
    ("http://user:pw@example.com/", "a user and password"),
    ("http://user@example.com/", "a user name"),
    ("http://@example.com/", "an empty user info"),
    ("ftp://example.com/x", "not http"),
    ("javascript:alert(1)", "not http, no host"),
    ("file:///etc/passwd", "a file"),
    ("//example.com/x", "no scheme"),
    ("/relative", "not absolute"),
    ("http:///x", "no host"),
    ("", "empty"),
]

GOOD_URLS = [
    "https://hooks.example.com/dlr",
    "http://hooks.example.com:8080/dlr?tenant=1",
    "HTTPS://Hooks.Example.COM/DLR",  # scheme and host are case-insensitive
    "https://bücher.example/dlr",  # IDNA
    "https://xn--bcher-kva.example/dlr",
    "https://example.com./dlr",  # a fully qualified name's trailing dot
    "https://my_hooks.example.com/dlr",  # underscores are in real DNS names
    f"https://{'a' * 63}.example.com/",  # a label of exactly 63
    "https://93.184.216.34/dlr",
    "https://[2606:2800:220:1:248:1893:25c8:1946]:8443/dlr",
]


@pytest.mark.parametrize(("url", "why"), BAD_URLS)
async def test_a_bad_url_is_refused_at_creation(client: Client, url: str, why: str) -> None:
    resp = await client.post("/v1/subscriptions", json={"url": url}, headers=AUTH)
    assert resp.status == 400, why
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_body", why
    assert error["message"].startswith("url: "), error


@pytest.mark.parametrize(("url", "why"), BAD_URLS)
async def test_a_bad_url_is_refused_at_update(client: Client, url: str, why: str) -> None:
    created = await client.post(
        "/v1/subscriptions", json={"url": "https://hooks.example.com/dlr"}, headers=AUTH
    )
    path = f"/v1/subscriptions/{(await created.json())['id']}"
    resp = await client.patch(path, json={"url": url}, headers=AUTH)
    assert resp.status == 400, why
    assert (await resp.json())["error"]["code"] == "invalid_body", why
    unchanged = await (await client.get(path, headers=AUTH)).json()
    assert unchanged["url"] == "https://hooks.example.com/dlr"


@pytest.mark.parametrize("url", GOOD_URLS)
async def test_a_good_url_is_accepted_as_written(client: Client, url: str) -> None:
    resp = await client.post("/v1/subscriptions", json={"url": url}, headers=AUTH)
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["url"] == url
