"""What happens in an embedded room, as immutable values sent to event subscribers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from egresskit.rooms.local import LocalParticipant, LocalRoom, LocalTrack


@dataclass(frozen=True)
class ParticipantJoined:
    room: LocalRoom
    participant: LocalParticipant


@dataclass(frozen=True)
class ParticipantLeft:
    room: LocalRoom
    participant: LocalParticipant


@dataclass(frozen=True)
class TrackPublished:
    room: LocalRoom
    track: LocalTrack


@dataclass(frozen=True)
class TrackUnpublished:
    room: LocalRoom
    track: LocalTrack


@dataclass(frozen=True)
class TrackMuted:
    room: LocalRoom
    track: LocalTrack
    muted: bool


@dataclass(frozen=True)
class SpeakersChanged:
    """The room's server says who is speaking: identity -> level (0..1, linear), loudest first."""

    room: LocalRoom
    speakers: tuple[tuple[str, float], ...]


RoomEvent = (
    ParticipantJoined
    | ParticipantLeft
    | TrackPublished
    | TrackUnpublished
    | TrackMuted
    | SpeakersChanged
)
