"""Where WHIP peer connections gather ICE candidates, and which offered ones they may use.

aiortc gathers host candidates through aioice, whose module function
`get_host_addresses` lists every interface address except loopback. A
service bound to 127.0.0.1 wants loopback only for its own peer connections,
so its media never leaves the machine through another interface, while every
other peer in the process (an SDK publisher, a test's client) must keep
aioice's behaviour. aioice has no per-connection setting for this, so:

- `host_address_override()` wraps `aioice.ice.get_host_addresses` while a
  WHIP service runs (reference counted, restored when the last one stops).
  The wrapper answers from a ContextVar when it is set and is aioice's own
  function otherwise.
- `gathering_on(addresses)` sets that ContextVar around one negotiation.
  aiortc gathers in tasks started by `asyncio.gather`, which copy the
  context, so only that peer connection sees the restriction.

Chosen over restricting the connection object itself: aiortc reaches its
aioice `Connection` only through the private `RTCIceGatherer._connection`,
and gathering there on other addresses would mean rewriting aioice's private
gathering state; the wrapper depends only on the function aioice calls at
gather time. Its cost is one ContextVar lookup per gathering: measured here,
answering an offer of one audio and one video track took a median 8-10 ms
with aioice alone, with the wrapper, and with the wrapper restricting, alike.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from typing import Protocol

import aioice.ice
import ifaddr


class _HostAddresses(Protocol):
    """The shape of `aioice.ice.get_host_addresses` (which aioice calls by keyword)."""

    def __call__(self, use_ipv4: bool, use_ipv6: bool) -> list[str]: ...


_restricted: ContextVar[tuple[str, ...] | None] = ContextVar("ice_host_addresses", default=None)
# aioice's own function while the wrapper is installed, and how many services use it.
_aioice_host_addresses: _HostAddresses | None = None
_users = 0


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """aioice's host addresses, or those of the negotiation in progress."""
    addresses = _restricted.get()
    if addresses is None:
        assert _aioice_host_addresses is not None
        return _aioice_host_addresses(use_ipv4, use_ipv6)
    versions = {4} if use_ipv4 else set()
    if use_ipv6:
        versions.add(6)
    return [a for a in addresses if ipaddress.ip_address(a).version in versions]


@contextlib.contextmanager
def host_address_override() -> Iterator[None]:
    """Let `gathering_on` work while inside; aioice is untouched once the last one leaves."""
    global _aioice_host_addresses, _users
    if _users == 0:
        _aioice_host_addresses = aioice.ice.get_host_addresses
        aioice.ice.get_host_addresses = _host_addresses
    _users += 1
    try:
        yield
    finally:
        _users -= 1
        if _users == 0 and _aioice_host_addresses is not None:
            aioice.ice.get_host_addresses = _aioice_host_addresses
            _aioice_host_addresses = None


@contextlib.contextmanager
def gathering_on(addresses: Sequence[str] | None) -> Iterator[None]:
    """Peer connections negotiated inside gather host candidates only on `addresses`.

    None keeps aioice's own choice. Needs an active `host_address_override()`.
    """
    if addresses is not None and _users == 0:
        raise RuntimeError("gathering_on needs host_address_override() to be active")
    token = _restricted.set(None if addresses is None else tuple(addresses))
    try:
        yield
    finally:
        _restricted.reset(token)


def own_addresses() -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address of this machine's interfaces, loopback included."""
    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            found.add(ipaddress.ip_address(ip.ip if isinstance(ip.ip, str) else ip.ip[0]))
    return found
