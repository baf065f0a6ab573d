"""Where a received frame belongs in time: RTP timestamps mapped to this process's clock.

A recording lines its tracks up by when their media was captured, not by
when frames reached a mixer or compositor: whatever buffers a frame
passed through (network, jitter buffer, decoder, queues) then cannot shift
audio against video. Times are seconds on `time.monotonic()`, the clock
of `egresskit.pipeline.GraphClock`.

Each track's RTP clock runs at a known rate, so mapping it to time needs
one number, its epoch: the time of RTP timestamp zero (relative to a
reference timestamp). Every observation gives an upper bound on the epoch,
because nothing is sent before it is captured nor arrives before it is sent:

- an RTCP sender report (RFC 3550 section 6.4.1) pairs an RTP timestamp
  with the sender's NTP wall clock. Tracks of one sender share that clock
  (`SenderClock`), so the reports place every track of a sender on one
  clock, keeping the A/V alignment the sender gave them whatever each
  track's packets met on the way (jitter, retransmission, pacing);
- a packet arriving says its media was captured no later than then.

A track with reports is placed by them, and the sender's clock is mapped
to ours by its tightest bound: the smallest (arrival - NTP) of its reports
and of the packets of all its tracks (their NTP time read through their
track's reports). The many packets tighten it within a second where the
few reports would take long, and a shift in that mapping moves every
track of the sender together: network jitter moves a recording's tracks
as one, never apart. A sender that stamps its reports at capture time
(browsers, libwebrtc) keeps its A/V alignment exactly; one that stamps
them with the time it sent its last packet (aiortc) is late on each
track by that track's constant encoding and sending time. Without any
sender report a track is timed by its packets alone: from the earliest
arrival, then by its RTP clock.

Each bound is the smallest of the last `WINDOW_S` seconds, so the clocks
may drift apart slowly.

Usage by any RTP receiver (`egresskit.rooms.encoded` wires aiortc's): one
`SenderClock` per peer connection, one `TrackTimeline` per received track;
call `arrived(rtp_timestamp)` as frames arrive, `sender_report` for each
RTCP SR of the track's media SSRC, and `time_of(rtp_timestamp)` for the
capture time of a frame.
"""

from __future__ import annotations

import time
from collections import deque

_WRAP = 1 << 32
# Beyond this distance from the reference a timestamp becomes the reference
# (a 32-bit RTP timestamp wraps every 13 h at 90 kHz; differences are signed).
_REANCHOR = 1 << 30
# The epoch is the smallest bound seen in this many seconds, kept per second.
WINDOW_S = 16
# A sender's clock mapping moves only when its tightest bound has moved more than
# this: each move shifts every track at once, which audio follows to the sample
# (cutting or padding that much) but video only to the output's next frame, so
# small moves would jolt lip sync by up to a frame and click, for nothing: being
# late by this much only uses a little of the playout delay.
OFFSET_STEP_S = 0.015


def rtp_delta(timestamp: int, reference: int) -> int:
    """`timestamp - reference` for 32-bit RTP timestamps, wrap-around included (signed)."""
    delta = (timestamp - reference) % _WRAP
    return delta - _WRAP if delta >= _WRAP // 2 else delta


def ntp_seconds(ntp_timestamp: int) -> float:
    """A 64-bit NTP timestamp (32.32 fixed point) in seconds."""
    return (ntp_timestamp >> 32) + (ntp_timestamp & 0xFFFFFFFF) / _WRAP


class SenderClock:
    """One sender's NTP clock against ours; every track of one peer connection shares it."""

    def __init__(self) -> None:
        self._reports = _WindowMin()  # our monotonic time minus the sender's NTP time
        self._tracks: list[TrackTimeline] = []
        self._offset: float | None = None  # the mapping in use

    def observe(self, ntp: float, arrival: float) -> None:
        """A sender report stamped `ntp` (s) arrived at `arrival` (monotonic s)."""
        self._reports.offer(arrival - ntp, arrival)

    def add_track(self, track: TrackTimeline) -> None:
        self._tracks.append(track)

    @property
    def offset(self) -> float | None:
        """Our monotonic time minus the sender's NTP time; None before a report.

        The tightest bound, once it is more than OFFSET_STEP_S from the one in use.
        """
        bound = self._reports.value
        if bound is None:
            return None
        for track in self._tracks:
            track_bound = track.arrival_offset()
            if track_bound is not None and track_bound < bound:
                bound = track_bound
        if self._offset is None or abs(bound - self._offset) > OFFSET_STEP_S:
            self._offset = bound
        return self._offset


class _WindowMin:
    """The smallest value offered in the last WINDOW_S one-second buckets."""

    def __init__(self) -> None:
        self._buckets: deque[list[float]] = deque()  # [bucket start, smallest value]
        self.value: float | None = None

    def offer(self, value: float, now: float) -> None:
        buckets = self._buckets
        if not buckets or now - buckets[-1][0] >= 1.0:
            buckets.append([now, value])
            if len(buckets) > WINDOW_S:
                buckets.popleft()
                self.value = min(bucket[1] for bucket in buckets)
                return
        elif value < buckets[-1][1]:
            buckets[-1][1] = value
        if self.value is None or value < self.value:
            self.value = value

    def shift(self, seconds: float) -> None:
        for bucket in self._buckets:
            bucket[1] += seconds
        if self.value is not None:
            self.value += seconds


class TrackTimeline:
    """The capture time of each RTP timestamp of one track, on `time.monotonic()`."""

    def __init__(self, clock_rate: int, sender: SenderClock | None = None) -> None:
        self.clock_rate = clock_rate
        self.sender = sender if sender is not None else SenderClock()
        self.sender.add_track(self)
        self._reference: int | None = None  # the RTP timestamp epochs are relative to
        self._reported = _WindowMin()  # epochs in sender NTP seconds
        self._arrived = _WindowMin()  # epochs in monotonic seconds

    def _seconds(self, rtp_timestamp: int) -> float:
        """Seconds of RTP clock from the reference to `rtp_timestamp` (which may become it)."""
        if self._reference is None:
            self._reference = rtp_timestamp
        delta = rtp_delta(rtp_timestamp, self._reference)
        if abs(delta) > _REANCHOR:
            self._reference = rtp_timestamp
            self._reported.shift(delta / self.clock_rate)
            self._arrived.shift(delta / self.clock_rate)
            return 0.0
        return delta / self.clock_rate

    def arrived(self, rtp_timestamp: int, arrival: float | None = None) -> None:
        """Media with this RTP timestamp had arrived by `arrival` (monotonic s; default now)."""
        now = time.monotonic() if arrival is None else arrival
        self._arrived.offer(now - self._seconds(rtp_timestamp), now)

    def sender_report(
        self, rtp_timestamp: int, ntp_timestamp: int, arrival: float | None = None
    ) -> None:
        """An RTCP SR of the track: its RTP and 64-bit NTP timestamps, and when it arrived."""
        now = time.monotonic() if arrival is None else arrival
        ntp = ntp_seconds(ntp_timestamp)
        self.sender.observe(ntp, now)
        self._reported.offer(ntp - self._seconds(rtp_timestamp), now)

    def arrival_offset(self) -> float | None:
        """The sender's clock offset this track's packets allow (arrival - NTP of their media)."""
        if self._arrived.value is None or self._reported.value is None:
            return None
        return self._arrived.value - self._reported.value

    @property
    def reported(self) -> bool:
        """Whether sender reports place this track (else packet arrivals do)."""
        return self._reported_epoch() is not None

    def _reported_epoch(self) -> float | None:
        offset = self.sender.offset
        if self._reported.value is None or offset is None:
            return None
        return self._reported.value + offset

    def time_of(self, rtp_timestamp: int) -> float:
        """When the media with this RTP timestamp was captured, in monotonic seconds.

        A timestamp seen before anything arrived counts as arriving now.
        """
        seconds = self._seconds(rtp_timestamp)
        epoch = self._reported_epoch()
        if epoch is None:
            epoch = self._arrived.value
        if epoch is None:
            self.arrived(rtp_timestamp)
            return self.time_of(rtp_timestamp)
        return epoch + seconds
