"""When the datagram being handled arrived, by the kernel's receive timestamp.

The receive path reads its sockets on a tick (`egresskit.rooms.intake`), so
a packet is handled up to a tick after it arrived. Whatever places media in
time from arrivals (a track's timeline, a sender report's mapping) asks
`now()` here instead of reading the clock: while the intake hands on a
datagram it sets that datagram's arrival; outside it, `now()` is the clock.
"""

from __future__ import annotations

import time

_current: float | None = None  # time.monotonic() seconds, while a datagram is handled


def now() -> float:
    """The arrival of the datagram being handled, else `time.monotonic()`."""
    return _current if _current is not None else time.monotonic()


def handling(arrival: float | None) -> None:
    """Set (a datagram's arrival, monotonic s) or clear (None) what `now()` answers."""
    global _current
    _current = arrival
