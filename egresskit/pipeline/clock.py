"""One clock per graph: every stage derives output timestamps from it."""

from __future__ import annotations

import asyncio
import time


class GraphClock:
    """Media time of a graph, in seconds since it started.

    Output timestamps come from here, never from per-source counters, so a
    late joiner or a stalled source cannot stretch or shrink a recording.
    """

    def __init__(self) -> None:
        self._t0: float | None = None
        self.started_at_ns = 0

    def start(self) -> None:
        if self._t0 is None:
            self._t0 = time.monotonic()
            self.started_at_ns = time.time_ns()

    @property
    def started(self) -> bool:
        return self._t0 is not None

    def now(self) -> float:
        """Seconds of media time elapsed; 0 before start."""
        if self._t0 is None:
            return 0.0
        return time.monotonic() - self._t0

    def media_time(self, monotonic: float) -> float:
        """The media time of a `time.monotonic()` instant (negative before the start)."""
        assert self._t0 is not None, "the clock has not started"
        return monotonic - self._t0

    def wall_ns(self, media_time: float) -> int:
        """The wall-clock time (Unix ns) at which a media time happened."""
        return self.started_at_ns + int(media_time * 1e9)

    async def sleep_until(self, media_time: float) -> None:
        delay = media_time - self.now()
        if delay > 0:
            await asyncio.sleep(delay)
