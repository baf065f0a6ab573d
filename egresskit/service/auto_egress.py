"""Embedded rooms that record themselves, as LiveKit's RoomEgress asks a server to.

The server config's `auto_egress` is a RoomEgress message in YAML form:
`tracks` (AutoTrackEgress: every published track recorded as it is) and
`participant` (AutoParticipantEgress: every participant recorded with
their camera and microphone). Each start goes through the EgressManager
like an API call, so results, webhooks and limits are the same.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format
from livekit.protocol import egress as egress_pb
from livekit.protocol import room as room_pb

from egresskit.egress.manager import EgressManager
from egresskit.rooms import ParticipantJoined, RoomEvent, TrackPublished

log = logging.getLogger(__name__)


def parse_room_egress(config: Mapping[str, Any]) -> room_pb.RoomEgress:
    """The RoomEgress of a YAML mapping (snake_case or camelCase keys); ValueError if invalid."""
    try:
        return json_format.ParseDict(dict(config), room_pb.RoomEgress())
    except json_format.ParseError as exc:
        raise ValueError(f"auto_egress: {exc}") from None


class AutoEgress:
    """Starts track and participant egresses as tracks are published and people join."""

    def __init__(self, manager: EgressManager, room_egress: room_pb.RoomEgress) -> None:
        self.manager = manager
        self.room_egress = room_egress
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        return self.room_egress.HasField("tracks") or self.room_egress.HasField("participant")

    def on_room_event(self, event: RoomEvent) -> None:
        request = self._request(event)
        if request is not None:
            task = asyncio.get_running_loop().create_task(self._start(request))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _request(
        self, event: RoomEvent
    ) -> egress_pb.TrackEgressRequest | egress_pb.ParticipantEgressRequest | None:
        rules = self.room_egress
        if isinstance(event, TrackPublished) and rules.HasField("tracks"):
            track = event.track
            if not track.has_encoded_media:
                return None  # an in-process track: nothing to pass through
            track_rule = rules.tracks
            output = egress_pb.DirectFileOutput(
                filepath=track_rule.filepath, disable_manifest=track_rule.disable_manifest
            )
            for field in ("s3", "gcp", "azure", "aliOSS"):
                if track_rule.HasField(field):
                    getattr(output, field).CopyFrom(getattr(track_rule, field))
            return egress_pb.TrackEgressRequest(
                room_name=event.room.name, track_id=track.sid, file=output
            )
        if isinstance(event, ParticipantJoined) and rules.HasField("participant"):
            participant_rule = rules.participant
            request = egress_pb.ParticipantEgressRequest(
                room_name=event.room.name,
                identity=event.participant.identity,
                file_outputs=participant_rule.file_outputs,
                segment_outputs=participant_rule.segment_outputs,
            )
            if participant_rule.HasField("advanced"):
                request.advanced.CopyFrom(participant_rule.advanced)
            else:
                request.preset = participant_rule.preset
            return request
        return None

    async def _start(
        self, request: egress_pb.TrackEgressRequest | egress_pb.ParticipantEgressRequest
    ) -> None:
        try:
            info = await self.manager.start(request)
        except Exception as exc:  # a rule that cannot run must not disturb the room
            log.warning("auto egress for room %s not started: %s", request.room_name, exc)
            return
        log.info("auto egress %s started for room %s", info.egress_id, request.room_name)
