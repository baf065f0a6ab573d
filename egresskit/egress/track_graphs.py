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

import os
from dataclasses import dataclass

from livekit.protocol import models

from egresskit.egress.graphs import (
    PACKET_QUEUE,
    RAW_AUDIO_QUEUE,
    TRACK_ITEMS_QUEUE,
    CompositeStages,
    composite_graph,
)
from egresskit.egress.naming import TrackDescription
from egresskit.netpolicy import NetworkPolicy
from egresskit.pipeline import Graph, LinkPolicy
from egresskit.rooms.local import LocalRoom, LocalTrack
from egresskit.stages.encoder import AudioEncoding, VideoEncoding
from egresskit.stages.mixer import AudioMixer
from egresskit.stages.passthrough import (
    EncodedTrackSource,
    PassthroughFileWriter,
    passthrough_supported,
)
from egresskit.stages.source_watch import SourceWatch
from egresskit.stages.subscriber import RoomSubscriber
from egresskit.stages.websocket import WebsocketAudioSink

CAMERA_SOURCES = frozenset({models.TrackSource.CAMERA, models.TrackSource.MICROPHONE})
SCREEN_SOURCES = frozenset({models.TrackSource.SCREEN_SHARE, models.TrackSource.SCREEN_SHARE_AUDIO})


class SourceNotFound(LookupError):
    """The room has no such track or participant (the service answers `not_found`)."""


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
    graph.link(mixer.output, sink.input, maxsize=RAW_AUDIO_QUEUE)
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
    video: VideoEncoding | None = VideoEncoding(),
    audio: AudioEncoding | None = AudioEncoding(),
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
