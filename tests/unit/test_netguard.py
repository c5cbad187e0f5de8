"""The internal-address guard for outgoing webhooks."""

import ipaddress

import pytest

from receiver.forwarding.netguard import BlockedAddress, allowed, check_literal, parse_networks


@pytest.mark.parametrize(
    ("address", "ok"),
    [
        ("93.184.216.34", True),  # public IPv4
        ("2606:2800:220:1:248:1893:25c8:1946", True),  # public IPv6
        ("10.0.0.1", False),  # private
        ("172.16.5.4", False),  # private
        ("192.168.1.1", False),  # private
        ("127.0.0.1", False),  # loopback
        ("169.254.169.254", False),  # link-local (cloud metadata)
        ("100.64.0.1", False),  # shared address space (CGNAT)
        ("0.0.0.0", False),  # unspecified
        ("224.0.0.1", False),  # multicast
        ("::1", False),  # IPv6 loopback
        ("fe80::1", False),  # IPv6 link-local
        ("fc00::1", False),  # IPv6 unique local
        ("::ffff:10.0.0.1", False),  # IPv4-mapped private
        ("::ffff:93.184.216.34", True),  # IPv4-mapped public
    ],
)
def test_only_public_addresses_are_allowed_by_default(address: str, ok: bool) -> None:
    assert allowed(ipaddress.ip_address(address), ()) is ok


def test_allow_list_opens_exactly_its_networks() -> None:
    allow = parse_networks(["127.0.0.0/8", "10.1.0.0/16"])
    assert allowed(ipaddress.ip_address("127.0.0.1"), allow)
    assert allowed(ipaddress.ip_address("10.1.2.3"), allow)
    assert not allowed(ipaddress.ip_address("10.2.0.1"), allow)


def test_literal_check_ignores_names_and_refuses_internal_literals() -> None:
    check_literal("example.com", ())  # names are the resolver's business
    check_literal("93.184.216.34", ())
    with pytest.raises(BlockedAddress):
        check_literal("[::1]", ())


# Each IPv6 form that carries an IPv4 address inside it, written with the IPv4 address it
# carries: a NAT64 gateway, 6to4 relay, Teredo relay or an IPv4-compatible stack would take
# the request on to that IPv4 address, so it is that address the guard must judge.
_EMBEDDED_FORMS = {
    "nat64": lambda v4: f"64:ff9b::{v4}",  # RFC 6052 well-known prefix, /96 layout
    "nat64-local": lambda v4: f"64:ff9b:1:2a::{v4}",  # RFC 8215 local-use prefix, a /96 of it
    "6to4": lambda v4: _sixtofour(v4),  # RFC 3056: the IPv4 address in bits 16-47
    "compatible": lambda v4: f"::{v4}",  # RFC 4291 IPv4-compatible (deprecated)
    "mapped": lambda v4: f"::ffff:{v4}",  # RFC 4291 IPv4-mapped
    "translated": lambda v4: f"::ffff:0:{v4}",  # RFC 2765 IPv4-translated (SIIT)
    "teredo-server": lambda v4: _teredo(server=v4, client="93.184.216.34"),  # RFC 4380
    "teredo-client": lambda v4: _teredo(server="93.184.216.34", client=v4),
}


def _sixtofour(v4: str) -> str:
    packed = ipaddress.IPv4Address(v4).packed
    return str(ipaddress.IPv6Address(b"\x20\x02" + packed + bytes(10)))


def _teredo(server: str, client: str) -> str:
    # The client address is stored with every bit flipped (RFC 4380 section 4).
    flipped = bytes(b ^ 0xFF for b in ipaddress.IPv4Address(client).packed)
    packed = b"\x20\x01\x00\x00" + ipaddress.IPv4Address(server).packed
    return str(ipaddress.IPv6Address(packed + b"\x00\x00" + b"\xff\xff" + flipped))


@pytest.mark.parametrize("form", sorted(_EMBEDDED_FORMS))
@pytest.mark.parametrize(
    ("v4", "ok"),
    [
        ("127.0.0.1", False),  # loopback
        ("10.1.2.3", False),  # private
        ("169.254.169.254", False),  # link-local: cloud metadata
        ("93.184.216.34", True),  # public: the form itself is no reason to refuse
    ],
)
def test_an_ipv4_address_inside_ipv6_is_judged_as_itself(form: str, v4: str, ok: bool) -> None:
    address = ipaddress.ip_address(_EMBEDDED_FORMS[form](v4))
    assert allowed(address, ()) is ok, address


def test_an_embedded_internal_address_is_refused_as_a_literal_too() -> None:
    with pytest.raises(BlockedAddress):
        check_literal("[64:ff9b::a9fe:a9fe]", ())  # 169.254.169.254 behind NAT64


def test_allow_listing_the_embedded_ipv4_network_opens_its_embedded_forms() -> None:
    allow = parse_networks(["10.0.0.0/8"])
    assert allowed(ipaddress.ip_address("64:ff9b::a01:203"), allow)  # 10.1.2.3
    assert not allowed(ipaddress.ip_address("64:ff9b::7f00:1"), allow)  # 127.0.0.1
