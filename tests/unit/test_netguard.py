"""The internal-address guard for outgoing webhooks."""

import ipaddress

import pytest

from receiver.netguard import BlockedAddress, allowed, check_literal, parse_networks


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
