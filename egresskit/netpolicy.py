"""Where destinations a caller names may be: the one home of the egress network policy.

A request names hosts the service then connects to: webhook receivers, stream
servers, websocket receivers, storage endpoints and proxies. Left alone, a
caller holding only `roomRecord` could make the service reach its own
loopback services, a cloud metadata address or the private network behind it.
An address is refused when it lies in a denied range and in no allowed one.
The denied ranges are the operator's `deny` plus, unless `--dev`, every
non-public range (loopback, link-local, private, shared, multicast, reserved,
unspecified); `allow` carves exceptions, so `deny: [0.0.0.0/0, ::/0]` with an
`allow` list admits only those networks.

The rule is applied twice. At request time `check_url` refuses hosts that are
addresses, in every spelling the resolver accepts (`2130706433`, `0177.0.0.1`,
`0x7f.1`, `::ffff:127.0.0.1`), so the caller gets `invalid_argument`. When
connecting, names are resolved and every address they resolve to is checked
(`resolve`, or `PolicyResolver` inside aiohttp), so a name that points at
127.0.0.1 is loopback too. Destinations the operator configured (server-wide
webhooks, storage from the config file) are the operator's and not checked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Everything that is not the public internet, denied unless `--dev`.
NON_PUBLIC: tuple[str, ...] = (
    "0.0.0.0/8",  # "this network": 0.0.0.0 reaches the host itself
    "10.0.0.0/8",
    "100.64.0.0/10",  # carrier-grade NAT
    "127.0.0.0/8",
    "169.254.0.0/16",  # link-local, cloud metadata services
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, broadcast
    "::/96",  # unspecified, loopback, IPv4-compatible
    "64:ff9b:1::/48",  # local-use NAT64
    "fc00::/7",  # unique local
    "fe80::/10",  # link-local
    "fec0::/10",  # site-local
    "ff00::/8",  # multicast
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class DestinationDenied(OSError):
    """A caller-supplied destination is, or resolves to, an address the policy refuses.

    The message names the host and address: it is for the service's log. Callers
    get it only for the host they wrote themselves (request validation).
    """


def parse_address(host: str) -> IPAddress | None:
    """`host` as an address if the system resolver would read it as one, else None.

    Besides the usual forms this takes what `inet_aton` takes (one to four parts,
    each decimal, octal or hex), and unwraps IPv4-mapped and NAT64 IPv6.
    """
    host = host.strip().removeprefix("[").removesuffix("]")
    try:
        address: IPAddress = ipaddress.ip_address(host)
    except ValueError:
        if not host or not all(c.isalnum() or c == "." for c in host):
            return None
        try:
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return _unwrap(address)


def _unwrap(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address.scope_id:
            return ipaddress.IPv6Address(str(address).partition("%")[0])
    return address


@dataclass(frozen=True)
class NetworkPolicy:
    """Allowed and denied networks for caller-supplied destinations."""

    allow: tuple[IPNetwork, ...] = ()
    deny: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in NON_PUBLIC)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None, *, dev: bool = False) -> NetworkPolicy:
        """The policy of an `egress_network` setting ({allow: [...], deny: [...]}).

        Raises ValueError naming what is wrong.
        """
        config = dict(config or {})
        unknown = sorted(set(config) - {"allow", "deny"})
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(map(str, unknown))}: use allow and deny")
        defaults = () if dev else NON_PUBLIC
        return cls(
            allow=_networks(config.get("allow"), "allow"),
            deny=_networks(defaults, "deny") + _networks(config.get("deny"), "deny"),
        )

    def allows(self, address: IPAddress) -> bool:
        address = _unwrap(address)
        if any(address in network for network in self.allow):
            return True
        return not any(address in network for network in self.deny)

    def check_address(self, address: str | IPAddress, host: str = "") -> None:
        """Raise DestinationDenied unless `address` (of `host`, for the message) is allowed."""
        parsed = parse_address(address) if isinstance(address, str) else _unwrap(address)
        if parsed is None:
            raise DestinationDenied(f"{host or address!s} is not an address")
        if not self.allows(parsed):
            shown = f"{host} ({parsed})" if host and host != str(parsed) else str(parsed)
            raise DestinationDenied(f"{shown} is in a network egress may not reach")

    def check_host(self, host: str) -> None:
        """Request time: refuse a host that is a denied address; names wait for `resolve`."""
        address = parse_address(host)
        if address is not None:
            self.check_address(address, host)

    def check_url(self, url: str) -> None:
        """`check_host` for a URL's host (ValueError if the URL has none)."""
        host = urlsplit(url if "://" in url else f"//{url}").hostname
        if not host:
            raise ValueError("the URL has no host")
        self.check_host(host)

    def resolve(self, host: str, port: int, socktype: int = socket.SOCK_STREAM) -> list[tuple]:
        """Blocking: `getaddrinfo` for `host`, refused if any address it gives is denied."""
        infos = socket.getaddrinfo(host, port, type=socktype)
        for info in infos:
            # an int here (a non-IP family) is no address, so it is refused
            self.check_address(str(info[4][0]), host)
        return infos

    async def resolve_async(self, host: str, port: int) -> None:
        """`resolve` off the event loop."""
        await asyncio.to_thread(self.resolve, host, port)


class PolicyResolver(AbstractResolver):
    """An aiohttp resolver that refuses names resolving to a denied address.

    aiohttp does not ask a resolver about hosts that are already addresses:
    those are checked at request time (`NetworkPolicy.check_url`).
    """

    def __init__(self, policy: NetworkPolicy) -> None:
        self._policy = policy
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            self._policy.check_address(result["host"], host)
        return results

    async def close(self) -> None:
        await self._inner.close()


def _networks(values: Iterable[str] | str | None, name: str) -> tuple[IPNetwork, ...]:
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(str(value), strict=False))
        except ValueError:
            raise ValueError(f"{name}: {value!r} is not an address or network") from None
    return tuple(networks)
