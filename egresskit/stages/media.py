"""The items that flow between media stages."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import av


@dataclass(frozen=True, slots=True)
class TrackInfo:
    """What a stage needs to know about a room track, without holding the room."""

    sid: str
    kind: int  # livekit.protocol.models.TrackType
    source: int  # livekit.protocol.models.TrackSource
    participant_identity: str
    participant_name: str = ""
    mime_type: str = ""
    participant_kind: int = 0  # livekit.protocol.models.ParticipantInfo.Kind (0: STANDARD)


@dataclass(frozen=True, slots=True)
class TrackStarted:
    """A track joined the stream: a compositor gives it a tile, a mixer a buffer."""

    track: TrackInfo


@dataclass(frozen=True, slots=True)
class TrackEnded:
    """A track left: its tile or buffer goes away."""

    track: TrackInfo


# How long after its capture a frame is played into a composite (see TrackFrame.time).
# It covers the network, the jitter buffer, decoding and the hops to the
# compositor and mixer, so audio and video meet at the capture times the
# sender gave them; a frame later than this is shown late (video) or dropped
# (audio, counted). Half a second also rides out a publisher or a loop held
# up for a while on a busy machine, which 0.3 s did not in tests. Recordings
# keep their length: the first PLAYOUT_DELAY_S of output shows the media as
# soon as there is any.
PLAYOUT_DELAY_S = 0.5


@dataclass(frozen=True, slots=True)
class TrackFrame:
    """One decoded frame of one track, in the order it arrived.

    `time` is when it was captured, on `time.monotonic()` (see
    `egresskit.rooms.timeline`); None means now, when it arrives.
    """

    track: TrackInfo
    frame: av.VideoFrame | av.AudioFrame
    time: float | None = None


@dataclass(frozen=True, slots=True)
class TrackMuteChanged:
    track: TrackInfo
    muted: bool


@dataclass(frozen=True, slots=True)
class SpeakersAnnounced:
    """The room's server says who is speaking: (identity, level 0..1 linear), loudest first."""

    speakers: tuple[tuple[str, float], ...]


TrackItem = TrackStarted | TrackEnded | TrackFrame | TrackMuteChanged
# What a roster port carries: the tracks without frames, and who the server hears speaking.
RosterItem = TrackStarted | TrackEnded | TrackMuteChanged | SpeakersAnnounced


@dataclass(slots=True)
class EncodedPacket:
    """A compressed packet and which elementary stream ("video" or "audio") it belongs to."""

    kind: str
    packet: av.Packet

    @property
    def seconds(self) -> float:
        pts = self.packet.pts or 0
        tb = self.packet.time_base or Fraction(1, 1)
        return float(pts * tb)
