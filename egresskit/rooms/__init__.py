"""Rooms that egress records: embedded rooms fed by WHIP publishers or in-process tracks."""

from egresskit.rooms.events import (
    ParticipantJoined,
    ParticipantLeft,
    RoomEvent,
    TrackMuted,
    TrackPublished,
    TrackUnpublished,
)
from egresskit.rooms.local import LocalParticipant, LocalRoom, LocalTrack, RoomManager
from egresskit.rooms.whip import whip_app

__all__ = [
    "LocalParticipant",
    "LocalRoom",
    "LocalTrack",
    "ParticipantJoined",
    "ParticipantLeft",
    "RoomEvent",
    "RoomManager",
    "TrackMuted",
    "TrackPublished",
    "TrackUnpublished",
    "whip_app",
]
