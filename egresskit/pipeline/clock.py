"""One clock per graph: every stage derives output timestamps from it."""

from __future__ import annotations

import asyncio
import time


class GraphClock:
    """Media time of a graph, in seconds since it started, paused intervals left out.

    Output timestamps come from here, never from per-source counters, so a
    late joiner or a stalled source cannot stretch or shrink a recording.
    While the clock is paused media time stands still: stages that tick on it
    wait, so nothing is written, and after `resume` timestamps continue from
    where they stopped (a paused recording is as long as the time recorded).
    """

    def __init__(self) -> None:
        self._t0: float | None = None
        self.started_at_ns = 0
        self._paused_at: float | None = None  # monotonic instant of the current pause
        # (monotonic start, monotonic end, media time) of each pause that ended
        self._pauses: list[tuple[float, float, float]] = []
        self._paused_total = 0.0
        self._running = asyncio.Event()
        self._running.set()
        self._stopped = False
        # media times at which the clock resumed: encoders start a key frame there, HLS a
        # discontinuity
        self.resumes: list[float] = []

    def start(self) -> None:
        if self._t0 is None:
            self._t0 = time.monotonic()
            self.started_at_ns = time.time_ns()

    @property
    def started(self) -> bool:
        return self._t0 is not None

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    def pause(self) -> bool:
        """Stop media time now; False if it was already paused."""
        if self._paused_at is not None:
            return False
        self._paused_at = time.monotonic()
        self._running.clear()
        return True

    def resume(self) -> bool:
        """Let media time run on from where it stopped; False if it was not paused."""
        if self._paused_at is None:
            return False
        media = self.now()
        now = time.monotonic()
        self._pauses.append((self._paused_at, now, media))
        self._paused_total += now - self._paused_at
        self._paused_at = None
        self.resumes.append(media)
        self._running.set()
        return True

    def stop(self) -> None:
        """The graph is stopping: waiters of a paused clock return so that stages can end."""
        self._stopped = True
        self._running.set()

    def now(self) -> float:
        """Seconds of media time elapsed; 0 before start."""
        if self._t0 is None:
            return 0.0
        instant = self._paused_at if self._paused_at is not None else time.monotonic()
        return instant - self._t0 - self._paused_total

    def in_pause(self, monotonic: float) -> bool:
        """Whether a `time.monotonic()` instant fell while the clock was paused (media to drop)."""
        if self._paused_at is not None and monotonic >= self._paused_at:
            return True
        return any(start <= monotonic < end for start, end, _ in self._pauses)

    def media_time(self, monotonic: float) -> float:
        """The media time of a `time.monotonic()` instant (negative before the start)."""
        assert self._t0 is not None, "the clock has not started"
        paused = 0.0
        for start, end, _ in self._pauses:
            if monotonic >= end:
                paused += end - start
            elif monotonic > start:
                paused += monotonic - start
        if self._paused_at is not None and monotonic > self._paused_at:
            paused += monotonic - self._paused_at
        return monotonic - self._t0 - paused

    def wall_ns(self, media_time: float) -> int:
        """The wall-clock time (Unix ns) at which a media time happened (after any pause before it)."""
        paused = sum(end - start for start, end, media in self._pauses if media <= media_time)
        return self.started_at_ns + int((media_time + paused) * 1e9)

    async def sleep_until(self, media_time: float) -> None:
        """Return once media time reaches `media_time` (at once when the graph is stopping)."""
        while not self._stopped:
            if self._paused_at is not None:
                await self._running.wait()
                continue
            delay = media_time - self.now()
            if delay <= 0:
                return
            await asyncio.sleep(delay)
