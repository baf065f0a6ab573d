"""RoomSubscriber: the source of per-track frames and room changes for a graph."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import av
from livekit.protocol import models

from egresskit.pipeline import EOS, Link, LinkPolicy, OutputPort, Stage, StageEvent
from egresskit.rooms.events import (
    ParticipantJoined,
    ParticipantLeft,
    SpeakersChanged,
    TrackMuted,
    TrackPublished,
    TrackUnpublished,
)
from egresskit.rooms.local import LocalRoom, LocalTrack
from egresskit.stages.media import (
    RosterItem,
    SpeakersAnnounced,
    TrackEnded,
    TrackFrame,
    TrackInfo,
    TrackItem,
    TrackMuteChanged,
    TrackStarted,
)

log = logging.getLogger(__name__)

TrackFilter = Callable[[LocalTrack], bool]

# Raw video is live: a subscriber keeps only the newest frames of each track.
VIDEO_TRACK_QUEUE = 2
# Audio is kept for up to a second of backlog; overflow is counted by the link.
AUDIO_TRACK_QUEUE = 50


@dataclass(frozen=True, slots=True, eq=False)
class ParticipantArrived(StageEvent):
    identity: str


@dataclass(frozen=True, slots=True, eq=False)
class ParticipantDeparted(StageEvent):
    identity: str


@dataclass(frozen=True, slots=True, eq=False)
class RoomEmpty(StageEvent):
    """The last participant left the room: a room composite ends."""

    room: str


@dataclass(frozen=True, slots=True, eq=False)
class TrackSubscribed(StageEvent):
    track_sid: str
    media: str  # "video" | "audio"


def track_info(track: LocalTrack) -> TrackInfo:
    return TrackInfo(
        sid=track.sid,
        kind=track.kind,
        source=track.source,
        participant_identity=track.participant.identity,
        participant_name=track.participant.name,
        mime_type=track.mime_type,
        participant_kind=track.participant.kind,
    )


class RoomSubscriber(Stage):
    """Follows a room: subscribes to every matching track and forwards its frames.

    Outputs `video` and `audio` carry TrackStarted / TrackFrame /
    TrackMuteChanged / TrackEnded items. Drops happen per track at the
    subscription (leaky), never on the way to the compositor or mixer, so
    control items are never lost. Room changes are posted on the bus
    (`ParticipantArrived`, `ParticipantDeparted`, `RoomEmpty`).

    Output `roster` carries TrackStarted / TrackMuteChanged / TrackEnded,
    without frames, for every track the filter admits, audio and video,
    subscribed or not: who is in the room and whose microphone is muted;
    and SpeakersAnnounced when the room's server says who is speaking.

    Who of them a composite draws and hears is not decided here: its
    compositor and mixer ask a ParticipantGate per frame, so the tracks of
    someone left out stay subscribed and someone let in is recorded from
    the instant they are chosen, with no subscription to wait for.
    """

    def __init__(
        self,
        room: LocalRoom,
        *,
        video: bool = True,
        audio: bool = True,
        track_filter: TrackFilter | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        self.room = room
        self.want_video = video
        self.want_audio = audio
        self.track_filter = track_filter
        self.video: OutputPort[TrackItem] = self.add_output("video")
        self.audio: OutputPort[TrackItem] = self.add_output("audio")
        self.roster: OutputPort[RosterItem] = self.add_output("roster")
        self._announced: dict[str, LocalTrack] = {}
        self._pumps: dict[str, asyncio.Task[None]] = {}
        self._subscriptions: dict[str, tuple[LocalTrack, Link]] = {}
        self._events: Link | None = None

    def _wanted(self, track: LocalTrack) -> bool:
        if track.kind == models.TrackType.VIDEO and not self.want_video:
            return False
        if track.kind == models.TrackType.AUDIO and not self.want_audio:
            return False
        return self.track_filter is None or self.track_filter(track)

    def _port(self, track: LocalTrack) -> OutputPort[TrackItem]:
        return self.video if track.kind == models.TrackType.VIDEO else self.audio

    async def run(self) -> None:
        self._events = self.room.subscribe_events()
        try:
            while (event := await self.next_unless_stopping(self._events)) is not EOS:
                await self._handle(event)
            for sid in list(self._subscriptions):
                await self._end_track(sid)
            for track in list(self._announced.values()):
                await self._retire(track)
        finally:
            self._release()

    async def _handle(self, event: object) -> None:
        if isinstance(event, TrackPublished):
            await self._announce(event.track)
            if self._wanted(event.track):
                await self._start_track(event.track)
        elif isinstance(event, TrackUnpublished):
            if event.track.sid in self._subscriptions:
                await self._end_track(event.track.sid)
            await self._retire(event.track)
        elif isinstance(event, TrackMuted):
            track = event.track
            if track.sid in self._subscriptions:
                await self._port(track).send(TrackMuteChanged(track_info(track), event.muted))
            if track.sid in self._announced:
                await self.roster.send(TrackMuteChanged(track_info(track), event.muted))
        elif isinstance(event, SpeakersChanged):
            await self.roster.send(SpeakersAnnounced(event.speakers))
        elif isinstance(event, ParticipantJoined):
            self.post(ParticipantArrived(self, event.participant.identity))
        elif isinstance(event, ParticipantLeft):
            self.post(ParticipantDeparted(self, event.participant.identity))
            if self.room.empty:
                self.post(RoomEmpty(self, self.room.name))

    async def _announce(self, track: LocalTrack) -> None:
        if track.sid in self._announced:
            return
        if self.track_filter is not None and not self.track_filter(track):
            return
        self._announced[track.sid] = track
        info = track_info(track)
        await self.roster.send(TrackStarted(info))
        if track.muted:
            await self.roster.send(TrackMuteChanged(info, True))

    async def _retire(self, track: LocalTrack) -> None:
        if self._announced.pop(track.sid, None) is not None:
            await self.roster.send(TrackEnded(track_info(track)))

    async def _start_track(self, track: LocalTrack) -> None:
        if track.sid in self._subscriptions:
            return
        video = track.kind == models.TrackType.VIDEO
        link = track.subscribe(
            maxsize=VIDEO_TRACK_QUEUE if video else AUDIO_TRACK_QUEUE, policy=LinkPolicy.DROP_OLDEST
        )
        self._subscriptions[track.sid] = (track, link)
        info = track_info(track)
        port = self._port(track)
        await port.send(TrackStarted(info))
        if track.muted:
            await port.send(TrackMuteChanged(info, True))
        self._pumps[track.sid] = asyncio.create_task(self._pump(track, info, link, port))
        self.post(TrackSubscribed(self, track.sid, "video" if video else "audio"))

    async def _pump(
        self,
        track: LocalTrack,
        info: TrackInfo,
        link: Link[av.VideoFrame | av.AudioFrame],
        port: OutputPort[TrackItem],
    ) -> None:
        async for frame in link:
            await port.send(TrackFrame(info, frame, track.frame_time(frame)))

    async def _end_track(self, sid: str) -> None:
        track, link = self._subscriptions.pop(sid)
        track.unsubscribe(link)
        pump = self._pumps.pop(sid, None)
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        await self._port(track).send(TrackEnded(track_info(track)))

    def _release(self) -> None:
        """Drop every subscription (also on cancel, when nothing more may be sent)."""
        for pump in self._pumps.values():
            pump.cancel()
        self._pumps.clear()
        for track, link in self._subscriptions.values():
            track.unsubscribe(link)
        self._subscriptions.clear()
        self._announced.clear()
        if self._events is not None:
            self.room.unsubscribe_events(self._events)
            self._events = None

    def stats(self) -> dict[str, int]:
        return {"dropped_" + sid: link.dropped for sid, (_, link) in self._subscriptions.items()}
