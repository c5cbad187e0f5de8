"""Outgoing requests may only reach public addresses, unless a network is allow-listed.

A subscriber URL is user input: without this guard it could point the forwarder at the cloud
metadata service, the database, or anything else on the internal network. Names are checked
at connect time, by the resolver the HTTP client uses, so a name that resolves to a public
address when saved and to an internal one later is still refused.
"""

import ipaddress
import socket
from collections.abc import Sequence

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class BlockedAddress(OSError):  # noqa: N818 - raised where aiohttp expects connection errors
    pass


def parse_networks(cidrs: Sequence[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs)


# IPv6 prefixes whose last 32 bits are an IPv4 address the packet is taken on to: NAT64's
# well-known prefix (RFC 6052) and its local-use one (RFC 8215, read in the /96 layout its
# deployments use), IPv4-translated (RFC 2765, SIIT), IPv4-mapped and IPv4-compatible
# (RFC 4291). Python's is_global calls most of them public whatever they carry.
_LAST_32_BITS = tuple(
    ipaddress.IPv6Network(n)
    for n in ("64:ff9b::/96", "64:ff9b:1::/48", "::ffff:0:0:0/96", "::ffff:0:0/96", "::/96")
)


def embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address leads to through a translator or a tunnel: the
    one a NAT64 gateway or an IPv4-compatible stack connects to, a 6to4 relay's, or a Teredo
    server and client (empty for a plain IPv6 address)."""
    if address.teredo is not None:
        return address.teredo  # (server, client), the client's bits already flipped back
    if address.sixtofour is not None:
        return (address.sixtofour,)
    if any(address in prefix for prefix in _LAST_32_BITS):
        return (ipaddress.IPv4Address(int(address) & 0xFFFFFFFF),)
    return ()


def allowed(address: IPAddress, allow: Sequence[IPNetwork]) -> bool:
    if any(address in network for network in allow):
        return True
    if isinstance(address, ipaddress.IPv6Address):
        carried = embedded_ipv4(address)
        if carried:
            # Where the request ends up is the IPv4 address: 64:ff9b::a9fe:a9fe is the cloud
            # metadata service behind a NAT64 gateway, however public its prefix looks.
            return all(allowed(v4, allow) for v4 in carried)
    # is_global is false for private, loopback, link-local, shared (CGNAT), reserved and
    # unspecified ranges; multicast can be global but is never a webhook endpoint.
    return address.is_global and not address.is_multicast


def check_literal(host: str, allow: Sequence[IPNetwork]) -> None:
    """Refuse a URL host that is an internal IP literal (names are left to the resolver)."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return
    if not allowed(address, allow):
        raise BlockedAddress(f"{host} is an internal address")


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, then drops every internal address."""

    def __init__(self, allow: Sequence[IPNetwork]) -> None:
        self._inner = DefaultResolver()
        self._allow = tuple(allow)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        kept = [r for r in results if allowed(ipaddress.ip_address(r["host"]), self._allow)]
        if not kept:
            raise BlockedAddress(f"{host} resolves only to internal addresses")
        return kept

    async def close(self) -> None:
        await self._inner.close()
