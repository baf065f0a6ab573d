"""Which local addresses WebRTC gathers ICE host candidates on.

aiortc gathers through aioice, whose `get_host_addresses` lists every
interface address except loopback. A service reachable only on 127.0.0.1
(the default egresskit service, and every test) needs the opposite: host
candidates on loopback and nowhere else, so no media ever leaves the machine
through another interface. aioice has no setting for this, so this module
replaces that one function, process-wide.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import aioice.ice

_default_host_addresses = aioice.ice.get_host_addresses


def restrict_ice_addresses(addresses: Sequence[str] | None) -> None:
    """Gather host candidates only on `addresses` (IP literals); None restores the default."""
    if addresses is None:
        aioice.ice.get_host_addresses = _default_host_addresses
        return
    allowed = [ipaddress.ip_address(a) for a in addresses]

    def allowed_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [
            str(a)
            for a in allowed
            if (a.version == 4 and use_ipv4) or (a.version == 6 and use_ipv6)
        ]

    aioice.ice.get_host_addresses = allowed_host_addresses
