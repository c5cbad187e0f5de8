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


def allowed(address: IPAddress, allow: Sequence[IPNetwork]) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
    if any(address in network for network in allow):
        return True
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
