"""Rooms that egress records: embedded rooms (WHIP publishers, in-process tracks) and LiveKit rooms."""

from egresskit.rooms.events import (
    ParticipantJoined,
    ParticipantLeft,
    RoomEvent,
    TrackMuted,
    TrackPublished,
    TrackUnpublished,
)
from egresskit.rooms.livekit import LiveKitRoom
from egresskit.rooms.local import LocalParticipant, LocalRoom, LocalTrack, RoomManager
from egresskit.rooms.whip import whip_app

__all__ = [
    "LiveKitRoom",
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
