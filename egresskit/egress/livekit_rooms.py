"""Egresses of a LiveKit server's rooms: each egress joins its room as its own hidden recorder.

With a LiveKit server configured, `room_name` names a room of that server.
Each egress joins it as a `LiveKitRoom` (identity = the egress id, as
LiveKit's own egress does), subscribed to exactly the tracks its request
needs, and leaves when the egress ends. The room's end drives the egress:
the server ending the session finishes it normally; losing the server fails
it with the reason, after the file recorded so far is finished.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from livekit.protocol import egress as egress_pb
from livekit.protocol import models

from egresskit.egress.errors import RoomNotFound, SourceUnavailable
from egresskit.egress.session import EgressSession
from egresskit.egress.spec import (
    EgressSpec,
    ParticipantSource,
    TrackCompositeSource,
    TrackSource,
)
from egresskit.rooms.livekit import LiveKitError, LiveKitRoom, WantedTrack

log = logging.getLogger(__name__)

# How long joining waits for the tracks present at joining to be negotiated.
SUBSCRIBE_TIMEOUT_S = 10.0
ROOM_ENDED = "the LiveKit room ended"


@dataclass(frozen=True)
class LiveKitServer:
    """Where the rooms are, and the key egresskit joins them with."""

    url: str
    api_key: str
    api_secret: str = ""

    def __repr__(self) -> str:
        return f"LiveKitServer({self.url!r}, api_key={self.api_key!r})"


def wanted_tracks(spec: EgressSpec) -> WantedTrack:
    """Exactly the tracks a request records (all of the wanted kinds for composites)."""

    def kind_wanted(track: models.TrackInfo) -> bool:
        if track.type == models.TrackType.VIDEO:
            return spec.video
        if track.type == models.TrackType.AUDIO:
            return spec.audio
        return False

    source = spec.source
    if isinstance(source, TrackSource):
        return lambda participant, track: track.sid == source.track_id
    if isinstance(source, TrackCompositeSource):
        sids = {source.audio_track_id, source.video_track_id} - {""}
        return lambda participant, track: track.sid in sids
    if isinstance(source, ParticipantSource):
        return lambda participant, track: (
            participant.identity == source.identity and kind_wanted(track)
        )
    return lambda participant, track: kind_wanted(track)


class SingleRoom:
    """The planner's view of rooms when the request's room was joined for it alone."""

    def __init__(self, room: LiveKitRoom) -> None:
        self.room = room

    def get(self, name: str) -> LiveKitRoom | None:
        return self.room if name == self.room.name else None


async def join_room(server: LiveKitServer, spec: EgressSpec, egress_id: str) -> LiveKitRoom:
    """Join the request's room with the tracks it needs."""
    try:
        room = await LiveKitRoom.connect(
            server.url,
            server.api_key,
            server.api_secret,
            spec.room_name,
            identity=egress_id,
            wanted=wanted_tracks(spec),
            timeout=SUBSCRIBE_TIMEOUT_S,
        )
    except LiveKitError as exc:
        raise SourceUnavailable(str(exc)) from None
    if not room.participants and spec.kind != "room_composite":
        await room.close()
        raise RoomNotFound(spec.room_name)
    return room


async def follow_room(session: EgressSession, room: LiveKitRoom) -> None:
    """End the egress with its room; leave the room once the egress has finished."""
    finished = asyncio.ensure_future(session.wait())
    try:
        seen = 0
        while not finished.done():
            waiting: set[asyncio.Future[Any]] = {finished, room.ended}
            done, _ = await asyncio.wait(waiting, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            if len(room.warnings) != seen:
                seen = len(room.warnings)
                session.set_details("; ".join(room.warnings))
            if room.ended in done and not finished.done():
                reason = room.ended.result()
                if reason:
                    session.end(reason, egress_pb.EGRESS_FAILED)
                else:
                    session.end(ROOM_ENDED)
                    session.explain_source_closed(ROOM_ENDED)
                await finished
    finally:
        finished.cancel()
        await room.close()
