"""Giving the memory of ended graphs back to the operating system (glibc; a no-op elsewhere).

glibc gives threads that allocate heaps of their own ("arenas", up to 8
per core) and keeps freed blocks in them for reuse. Each graph starts
fresh worker threads, so the frames and codec buffers of successive
egresses spread over ever more arenas, and a service's RSS climbs for its
first dozens of egresses although no object outlives its egress. Measured
over 50 start/stop cycles of a 720p room composite (tests/test_resources.py,
RSS after cycle 50 minus after cycle 5): +25 to +53 MB with glibc's
defaults, +25 to +40 MB trimming after each egress, +3 to +4 MB with two
arenas and a trim after each egress (+0.6 MB with one), and RSS itself
~160 MB instead of ~290 MB. Two arenas rather than one leave codec threads
some room not to wait on each other's allocations.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

# mallopt's parameter number for the arena limit (glibc's malloc.h)
_M_ARENA_MAX = -8
ARENAS = 2


@functools.cache
def _libc() -> Any:
    try:
        return ctypes.CDLL(None)  # the symbols the process already has: libc's
    except OSError:
        return None


def limit_arenas(count: int = ARENAS) -> bool:
    """Cap glibc's arenas; call at process start, before threads allocate. True if applied."""
    mallopt = getattr(_libc(), "mallopt", None)
    return mallopt is not None and mallopt(_M_ARENA_MAX, count) == 1


def trim() -> None:
    """Return the free pages of every arena to the system (~1 ms; call off the event loop)."""
    malloc_trim = getattr(_libc(), "malloc_trim", None)
    if malloc_trim is not None:
        malloc_trim(0)
