"""Where a received frame belongs in time: RTP timestamps mapped to this process's clock.

A recording lines its tracks up by when their media was captured, not by
when frames reached a mixer or compositor: whatever buffers a frame
passed through (network, jitter buffer, decoder, queues) then cannot shift
audio against video. Times are seconds on `time.monotonic()`, the clock
of `egresskit.pipeline.GraphClock`.

- With RTCP sender reports (RFC 3550 section 6.4.1), each pairs an RTP
  timestamp with the sender's NTP wall clock. Tracks of one sender share
  that clock (`SenderClock`), so their frames keep the sender's own A/V
  alignment. The sender clock is mapped to ours by the report that
  arrived soonest after it was sent (the smallest arrival - NTP).
- Some senders (aiortc) pair the RTP timestamp of the packet they last
  sent with the time they sent it, which is late by however long encoding
  and sending took: of the last `REPORT_WINDOW` reports, the one giving
  the earliest time wins, as the one least delayed.
- Until a track's first report, a frame's time is the arrival of the
  track's first packet plus its RTP distance from that packet.

Usage by any RTP receiver (`egresskit.rooms.encoded` wires aiortc's): one
`SenderClock` per peer connection, one `TrackTimeline` per received track;
call `first_packet` for the first RTP packet, `sender_report` for each
RTCP SR of the track's media SSRC, and `time_of(rtp_timestamp)` for each
frame.
"""

from __future__ import annotations

import time
from collections import deque

_WRAP = 1 << 32
# Beyond this distance from its anchor a timestamp re-anchors (a 32-bit RTP
# timestamp wraps every 13 h at 90 kHz; differences are read as signed).
_REANCHOR = 1 << 30
# Sender reports compared to find the least delayed one (about 16 s of them).
REPORT_WINDOW = 16


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
        # our monotonic time minus the sender's NTP time, from its fastest report
        self.offset: float | None = None

    def observe(self, ntp: float, arrival: float) -> None:
        """A sender report stamped `ntp` (s) arrived at `arrival` (monotonic s)."""
        sample = arrival - ntp
        if self.offset is None or sample < self.offset:
            self.offset = sample


class TrackTimeline:
    """The capture time of each RTP timestamp of one track, on `time.monotonic()`."""

    def __init__(self, clock_rate: int, sender: SenderClock | None = None) -> None:
        self.clock_rate = clock_rate
        self.sender = sender if sender is not None else SenderClock()
        self._arrival: tuple[int, float] | None = None  # (RTP timestamp, monotonic s)
        self._report: tuple[int, float] | None = None  # (RTP timestamp, sender NTP s)
        self._reports: deque[tuple[int, float]] = deque(maxlen=REPORT_WINDOW)

    @property
    def reported(self) -> bool:
        """Whether times come from sender reports (else from the first packet's arrival)."""
        return self._report is not None and self.sender.offset is not None

    def first_packet(self, rtp_timestamp: int, arrival: float | None = None) -> None:
        """The track's first RTP packet arrived (`arrival` defaults to now)."""
        if self._arrival is None:
            self._arrival = (rtp_timestamp, time.monotonic() if arrival is None else arrival)

    def sender_report(
        self, rtp_timestamp: int, ntp_timestamp: int, arrival: float | None = None
    ) -> None:
        """An RTCP SR of the track: its RTP and 64-bit NTP timestamps, and when it arrived."""
        ntp = ntp_seconds(ntp_timestamp)
        self.sender.observe(ntp, time.monotonic() if arrival is None else arrival)
        self._reports.append((rtp_timestamp, ntp))
        earliest = min(
            ntp + rtp_delta(rtp_timestamp, rtp) / self.clock_rate for rtp, ntp in self._reports
        )
        self._report = (rtp_timestamp, earliest)

    def time_of(self, rtp_timestamp: int) -> float:
        """When the media with this RTP timestamp was captured, in monotonic seconds."""
        if self.reported:
            assert self._report is not None and self.sender.offset is not None
            reference, ntp = self._report
            return ntp + rtp_delta(rtp_timestamp, reference) / self.clock_rate + self.sender.offset
        if self._arrival is None:
            self._arrival = (rtp_timestamp, time.monotonic())
        reference, arrival = self._arrival
        delta = rtp_delta(rtp_timestamp, reference)
        seconds = arrival + delta / self.clock_rate
        if abs(delta) > _REANCHOR:
            self._arrival = (rtp_timestamp, seconds)
        return seconds
