"""Graphs that follow tracks or one participant rather than a whole room.

- `track_graph`: one track's encoded media to a file, with no decode or
  encode (Opus -> .ogg, VP8 -> .webm, H.264 -> .mp4).
- `track_websocket_graph`: one audio track, decoded, as PCM to a websocket.
- `participant_graph`: one participant's camera and microphone (or screen
  share and its audio), composited and encoded.
- `track_composite_graph`: one audio and one video track, composited and encoded.

Each graph ends by itself, COMPLETE, when what it follows is gone (the
track unpublished, the participant left), and posts `SourceClosed` on its
bus first (`SourceClosed`), saying why.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from dataclasses import dataclass

from livekit.protocol import models

from egresskit.egress import naming
from egresskit.egress.graphs import CompositeStages, composite_graph
from egresskit.netpolicy import NetworkPolicy
from egresskit.pipeline import EOS, Graph, LinkPolicy, SourceClosed, Stage
from egresskit.rooms.events import ParticipantLeft, TrackUnpublished
from egresskit.rooms.local import LocalRoom, LocalTrack
from egresskit.stages.encoder import AudioEncoding, VideoEncoding
from egresskit.stages.mixer import AudioMixer
from egresskit.stages.passthrough import (
    EncodedTrackSource,
    PassthroughFileWriter,
    passthrough_supported,
)
from egresskit.stages.subscriber import RoomSubscriber
from egresskit.stages.websocket import WebsocketAudioSink

# Encoded packets into the writer never drop: about 4 s of 30 fps video.
PACKET_QUEUE = 120
# Track items (control and frames) from the subscriber; the mixer and the sink drain them at once.
TRACK_ITEMS_QUEUE = 64
# Mixed 20 ms frames waiting for the websocket: half a second.
PCM_QUEUE = 25

CAMERA_SOURCES = frozenset({models.TrackSource.CAMERA, models.TrackSource.MICROPHONE})
SCREEN_SOURCES = frozenset({models.TrackSource.SCREEN_SHARE, models.TrackSource.SCREEN_SHARE_AUDIO})


class SourceNotFound(LookupError):
    """The room has no such track or participant (the service answers `not_found`)."""


@dataclass(frozen=True, slots=True)
class TrackDescription:
    """What results, manifests and file names say about a recorded track."""

    track_id: str
    track_kind: str  # "audio" | "video"
    track_source: str  # "camera", "microphone", "screen_share", "screen_share_audio", "unknown"
    publisher_identity: str
    mime_type: str

    @classmethod
    def of(cls, track: LocalTrack) -> TrackDescription:
        return cls(
            track_id=track.sid,
            track_kind="video" if track.kind == models.TrackType.VIDEO else "audio",
            track_source=models.TrackSource.Name(track.source).lower(),
            publisher_identity=track.participant.identity,
            mime_type=track.mime_type,
        )

    @property
    def extension(self) -> str:
        """The file extension a passthrough recording of this track gets."""
        return naming.track_extension(self.mime_type)

    def name_fields(self, room: LocalRoom) -> naming.NameFields:
        return naming.NameFields(
            room_name=room.name,
            room_id=room.sid,
            publisher_identity=self.publisher_identity,
            track_id=self.track_id,
            track_type=self.track_kind,
            track_source=self.track_source,
        )


@dataclass
class TrackStages:
    source: EncodedTrackSource
    writer: PassthroughFileWriter  # the file at the path track_graph was given
    track: TrackDescription


@dataclass
class WebsocketStages:
    subscriber: RoomSubscriber
    mixer: AudioMixer
    sink: WebsocketAudioSink
    watch: SourceWatch
    track: TrackDescription


class SourceWatch(Stage):
    """Ends its graph (drained, COMPLETE) once the followed participant or tracks are gone.

    Follows a participant by identity, or a set of track ids (the graph
    ends when none of them is published any more). Posts `SourceClosed`
    with the reason before stopping the graph.
    """

    def __init__(
        self,
        room: LocalRoom,
        *,
        identity: str | None = None,
        track_sids: Iterable[str] = (),
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        self.room = room
        self.identity = identity
        self.track_sids = frozenset(track_sids)
        self._stopper: asyncio.Task | None = None

    def _gone(self) -> str | None:
        if self.identity is not None and self.identity not in self.room.participants:
            return "participant left"
        if self.track_sids and all(self.room.track(sid) is None for sid in self.track_sids):
            return "track unpublished"
        return None

    async def run(self) -> None:
        events = self.room.subscribe_events()
        try:
            reason = self._gone()
            while reason is None:
                event = await self.next_unless_stopping(events)
                if self.stopping.is_set():
                    return
                if event is EOS:
                    reason = "room closed"
                elif isinstance(event, ParticipantLeft | TrackUnpublished):
                    reason = self._gone()
        finally:
            self.room.unsubscribe_events(events)
        self.post(SourceClosed(self, reason))
        assert self.graph is not None
        # Kept so the task is not collected; it outlives this stage, which it also waits for.
        self._stopper = asyncio.create_task(self.graph.stop())


def _track(room: LocalRoom, track_sid: str) -> LocalTrack:
    track = room.track(track_sid)
    if track is None:
        raise SourceNotFound(f"track {track_sid!r} is not published in room {room.name!r}")
    return track


def track_graph(
    room: LocalRoom, track_sid: str, path: str | os.PathLike[str], *, name: str = "track"
) -> tuple[Graph, TrackStages]:
    """The track's encoded media written to `path` as it arrives, without transcoding.

    `path` should end in `TrackDescription.of(track).extension` (the
    container follows the codec, not the name). Raises SourceNotFound for an
    unknown track and ValueError for a track that cannot be recorded this
    way (a codec without a passthrough container, or an in-process track).
    """
    track = _track(room, track_sid)
    if not track.has_encoded_media:
        raise ValueError(f"track {track_sid} is not received over WebRTC; it has no encoded media")
    if not passthrough_supported(track.mime_type):
        raise ValueError(f"track {track_sid} is {track.mime_type}, which cannot be passed through")
    graph = Graph(name)
    source = graph.add(EncodedTrackSource(track))
    writer = graph.add(PassthroughFileWriter(path, track.mime_type, source=source))
    graph.link(source.output, writer.input, maxsize=PACKET_QUEUE, policy=LinkPolicy.BLOCK)
    return graph, TrackStages(source, writer, TrackDescription.of(track))


def track_websocket_graph(
    room: LocalRoom,
    track_sid: str,
    url: str,
    *,
    name: str = "track-websocket",
    network: NetworkPolicy | None = None,
) -> tuple[Graph, WebsocketStages]:
    """An audio track decoded and sent to `url` as PCM S16LE 48 kHz stereo, 20 ms a message.

    The mixer puts the audio on the graph clock, so the receiver gets audio
    at exactly real time, silence while the track is muted or stalled.
    """
    track = _track(room, track_sid)
    if track.kind != models.TrackType.AUDIO:
        raise ValueError(f"track {track_sid} is not an audio track")
    graph = Graph(name)
    subscriber = graph.add(
        RoomSubscriber(room, video=False, track_filter=lambda t: t.sid == track_sid)
    )
    mixer = graph.add(AudioMixer())
    sink = graph.add(WebsocketAudioSink(url, network=network))
    watch = graph.add(SourceWatch(room, track_sids=[track_sid]))
    graph.link(subscriber.audio, mixer.input, maxsize=TRACK_ITEMS_QUEUE)
    graph.link(subscriber.audio, sink.events, maxsize=TRACK_ITEMS_QUEUE)
    graph.link(mixer.output, sink.input, maxsize=PCM_QUEUE)
    stages = WebsocketStages(subscriber, mixer, sink, watch, TrackDescription.of(track))
    return graph, stages


def participant_graph(
    room: LocalRoom,
    identity: str,
    outputs: list,
    *,
    screen_share: bool = False,
    video: VideoEncoding | None = VideoEncoding(),
    audio: AudioEncoding | None = AudioEncoding(),
    name: str = "participant",
) -> tuple[Graph, CompositeStages]:
    """One participant's camera and microphone (or screen share and its audio), encoded.

    Tracks the participant publishes later are picked up; a muted or
    stalled video keeps its last frame. The graph ends when the participant
    leaves. `outputs` are what `composite_graph` takes.
    """
    if identity not in room.participants:
        raise SourceNotFound(f"participant {identity!r} is not in room {room.name!r}")
    sources = SCREEN_SOURCES if screen_share else CAMERA_SOURCES

    def follows(track: LocalTrack) -> bool:
        return track.participant.identity == identity and track.source in sources

    graph, stages = composite_graph(
        room, outputs, video=video, audio=audio, track_filter=follows, name=name
    )
    graph.add(SourceWatch(room, identity=identity))
    return graph, stages


def track_composite_graph(
    room: LocalRoom,
    audio_sid: str,
    video_sid: str,
    outputs: list,
    *,
    video: VideoEncoding = VideoEncoding(),
    audio: AudioEncoding = AudioEncoding(),
    name: str = "track-composite",
) -> tuple[Graph, CompositeStages]:
    """One audio and one video track (either id may be empty), composited and encoded.

    Ends when none of the given tracks is published any more.
    """
    if not audio_sid and not video_sid:
        raise ValueError("a track composite needs an audio or a video track id")
    for sid, kind in ((audio_sid, models.TrackType.AUDIO), (video_sid, models.TrackType.VIDEO)):
        if sid and _track(room, sid).kind != kind:
            raise ValueError(f"track {sid} is not a {models.TrackType.Name(kind).lower()} track")
    wanted = {sid for sid in (audio_sid, video_sid) if sid}
    graph, stages = composite_graph(
        room,
        outputs,
        video=video if video_sid else None,
        audio=audio if audio_sid else None,
        track_filter=lambda track: track.sid in wanted,
        name=name,
    )
    graph.add(SourceWatch(room, track_sids=wanted))
    return graph, stages
