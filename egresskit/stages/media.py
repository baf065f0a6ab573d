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


@dataclass(frozen=True, slots=True)
class TrackFrame:
    """One decoded frame of one track, in the order it arrived."""

    track: TrackInfo
    frame: av.VideoFrame | av.AudioFrame


@dataclass(frozen=True, slots=True)
class TrackMuteChanged:
    track: TrackInfo
    muted: bool


TrackItem = TrackStarted | TrackEnded | TrackFrame | TrackMuteChanged


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
