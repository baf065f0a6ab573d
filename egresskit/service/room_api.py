"""livekit.RoomService over the embedded rooms: enough for SDK users to find track ids."""

from __future__ import annotations

from livekit.protocol import models
from livekit.protocol import room as room_pb

from egresskit.rooms.local import LocalParticipant, LocalRoom, LocalTrack, RoomManager
from egresskit.service.twirp import TwirpContext, TwirpError

ROOM_SERVICE = room_pb.DESCRIPTOR.services_by_name["RoomService"]
ROOM_GRANTS = ("roomList", "roomAdmin")


def room_info(room: LocalRoom) -> models.Room:
    participants = list(room.participants.values())
    return models.Room(
        sid=room.sid,
        name=room.name,
        creation_time=int(room.created_at),
        creation_time_ms=int(room.created_at * 1000),
        num_participants=len(participants),
        num_publishers=sum(1 for p in participants if p.tracks),
    )


def track_info(track: LocalTrack) -> models.TrackInfo:
    return models.TrackInfo(
        sid=track.sid,
        type=track.kind,
        name=track.name,
        muted=track.muted,
        source=track.source,
        mime_type=track.mime_type,
    )


def participant_info(participant: LocalParticipant) -> models.ParticipantInfo:
    return models.ParticipantInfo(
        sid=participant.sid,
        identity=participant.identity,
        name=participant.name,
        metadata=participant.metadata,
        state=models.ParticipantInfo.ACTIVE,
        joined_at=int(participant.joined_at),
        joined_at_ms=int(participant.joined_at * 1000),
        kind=participant.kind,
        is_publisher=bool(participant.tracks),
        tracks=[track_info(track) for track in participant.tracks.values()],
    )


class RoomApi:
    """ListRooms, ListParticipants and GetParticipant; other RoomService calls are unimplemented."""

    def __init__(self, rooms: RoomManager) -> None:
        self.rooms = rooms

    def _room(self, name: str) -> LocalRoom:
        if not name:
            raise TwirpError("invalid_argument", "request has missing or invalid field: room")
        room = self.rooms.get(name)
        if room is None:
            raise TwirpError("not_found", f"room {name!r} does not exist")
        return room

    async def ListRooms(
        self, request: room_pb.ListRoomsRequest, context: TwirpContext
    ) -> room_pb.ListRoomsResponse:
        wanted = set(request.names)
        rooms = [r for r in self.rooms.rooms() if not wanted or r.name in wanted]
        return room_pb.ListRoomsResponse(rooms=[room_info(r) for r in rooms])

    async def ListParticipants(
        self, request: room_pb.ListParticipantsRequest, context: TwirpContext
    ) -> room_pb.ListParticipantsResponse:
        room = self._room(request.room)
        return room_pb.ListParticipantsResponse(
            participants=[participant_info(p) for p in room.participants.values()]
        )

    async def GetParticipant(
        self, request: room_pb.RoomParticipantIdentity, context: TwirpContext
    ) -> models.ParticipantInfo:
        room = self._room(request.room)
        participant = room.participants.get(request.identity)
        if participant is None:
            raise TwirpError(
                "not_found", f"participant {request.identity!r} is not in room {room.name!r}"
            )
        return participant_info(participant)
