"""Building graphs: which stages a kind of egress needs and how they are joined."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from livekit.protocol import egress as egress_pb

from egresskit.egress import naming
from egresskit.egress.encoding import EncodingSettings
from egresskit.netpolicy import NetworkPolicy
from egresskit.pipeline import Graph, LinkPolicy
from egresskit.rooms.local import LocalRoom
from egresskit.stages.compositor import VideoCompositor
from egresskit.stages.encoder import AudioEncoder, AudioEncoding, VideoEncoder, VideoEncoding
from egresskit.stages.hls import HlsSegmenter
from egresskit.stages.mixer import AudioMixer
from egresskit.stages.muxer import FileMuxer, Mp4Muxer
from egresskit.stages.participants import EVERYONE, ParticipantChoice, ParticipantGate
from egresskit.stages.snapshot import ImageSnapshotter
from egresskit.stages.speaker import SpeakerTracker
from egresskit.stages.stream import RetryPolicy, StreamSink
from egresskit.stages.subscriber import RoomSubscriber, TrackFilter

# Control items and the newest frame per track: the compositor consumes them at once.
TRACK_ITEMS_QUEUE = 64
# Raw composited frames waiting for the encoder: a few frames of slack.
RAW_VIDEO_QUEUE = 4
RAW_AUDIO_QUEUE = 25
# Encoded packets never drop; a muxer that falls behind holds up its encoder.
PACKET_QUEUE = 120
# Composited frames waiting for a snapshot: only the newest matters.
SNAPSHOT_QUEUE = 2


@dataclass(frozen=True, slots=True)
class FileOutput:
    """A local file; its container follows the extension (.mp4, .ogg, .webm, .mp3, .mkv)."""

    path: str | os.PathLike[str]


@dataclass(frozen=True, slots=True)
class SegmentsOutput:
    """HLS: MPEG-TS segments `{prefix}_00000.ts`... (or TIMESTAMP names) and an EVENT playlist.

    The prefix's directory holds segments and playlists; `playlist` defaults
    to `{prefix}.m3u8`; `live_playlist`, if given, is the sliding window of 5.
    The video key frame interval is set to `segment_duration`.
    """

    prefix: str | os.PathLike[str]
    playlist: str = ""
    live_playlist: str = ""
    segment_duration: float = 4.0
    suffix: int = egress_pb.INDEX  # SegmentedFileSuffix


@dataclass(frozen=True, slots=True)
class StreamOutput:
    """Live streams: `rtmp://`, `rtmps://` (FLV) and `srt://` (MPEG-TS) URLs, more added later."""

    urls: tuple[str, ...] = ()
    retry: RetryPolicy = RetryPolicy()
    network: NetworkPolicy | None = None  # a caller's URLs: where they may connect


@dataclass(frozen=True, slots=True)
class ImageOutput:
    """A JPEG of the composite every `capture_interval` s; width/height 0 keep its size."""

    prefix: str | os.PathLike[str]
    capture_interval: float = 10.0
    width: int = 0
    height: int = 0
    suffix: int = egress_pb.IMAGE_SUFFIX_INDEX  # ImageFileSuffix


Output = FileOutput | SegmentsOutput | StreamOutput | ImageOutput


@dataclass
class CompositeStages:
    """The stages of a composite graph, kept so the caller can watch and steer them."""

    subscriber: RoomSubscriber
    compositor: VideoCompositor | None
    mixer: AudioMixer | None
    video_encoder: VideoEncoder | None
    audio_encoder: AudioEncoder | None
    muxers: list[FileMuxer]
    # who is drawn and heard; `participants.choose` changes it while the graph runs
    participants: ParticipantGate = field(default_factory=ParticipantGate)
    segmenters: list[HlsSegmenter] = field(default_factory=list)
    streams: list[StreamSink] = field(default_factory=list)
    snapshotters: list[ImageSnapshotter] = field(default_factory=list)


CONTAINERS = {".mp4": "mp4", ".ogg": "ogg", ".webm": "webm", ".mp3": "mp3", ".mkv": "matroska"}


def stage_encodings(
    settings: EncodingSettings, *, audio: bool = True, video: bool = True
) -> tuple[VideoEncoding | None, AudioEncoding | None]:
    """The encoder settings of a request's EncodingSettings (None for a left-out medium)."""
    video_encoding = audio_encoding = None
    if video:
        video_encoding = VideoEncoding(
            codec=settings.video_codec,
            width=settings.width,
            height=settings.height,
            fps=settings.framerate,
            bitrate_kbps=settings.video_bitrate_kbps,
            profile=settings.h264_profile,
            keyframe_interval_s=settings.key_frame_interval_s,
        )
    if audio:
        audio_encoding = AudioEncoding(
            codec=settings.audio_codec,
            bitrate_kbps=settings.audio_bitrate_kbps,
            sample_rate=settings.audio_frequency,
        )
    return video_encoding, audio_encoding


def file_muxer(output: FileOutput, encoders: list) -> FileMuxer:
    suffix = os.path.splitext(os.fspath(output.path))[1].lower()
    if suffix == ".mp4":
        return Mp4Muxer(output.path, encoders)
    if suffix not in CONTAINERS:
        raise ValueError(f"unsupported file type {suffix or '(none)'}")
    return FileMuxer(output.path, encoders, format=CONTAINERS[suffix])


def segmenter(output: SegmentsOutput, encoders: list) -> HlsSegmenter:
    prefix = Path(output.prefix)
    return HlsSegmenter(
        encoders,
        prefix.parent,
        naming.playlist_name(prefix.name, output.playlist),
        segment_names=lambda index, when: naming.segment_name(
            prefix.name, output.suffix, index, when
        ),
        live_playlist=naming.live_playlist_name(output.live_playlist),
        segment_duration=output.segment_duration,
    )


def snapshotter(output: ImageOutput) -> ImageSnapshotter:
    prefix = Path(output.prefix)
    return ImageSnapshotter(
        prefix.parent,
        image_names=lambda index, when: naming.image_name(prefix.name, output.suffix, index, when),
        capture_interval=output.capture_interval,
        width=output.width,
        height=output.height,
    )


def composite_graph(
    room: LocalRoom,
    outputs: list[Output],
    *,
    video: VideoEncoding | None = VideoEncoding(),
    audio: AudioEncoding | None = AudioEncoding(),
    track_filter: TrackFilter | None = None,
    participants: ParticipantChoice = EVERYONE,
    layout: str = "grid",
    audio_mixing: int = 0,
    name: str = "composite",
) -> tuple[Graph, CompositeStages]:
    """Room -> subscriber -> compositor / mixer -> one encode each -> every output.

    `layout` is a LiveKit layout name (see `egresskit.stages.layout`);
    `audio_mixing` a LiveKit AudioMixing value. The mixer tells the
    compositor who is talking through a shared SpeakerTracker.

    `participants` chooses who is drawn and heard (everyone by default);
    `stages.participants.choose` changes it while the graph runs.

    `video=None` records audio only, `audio=None` video only. Every output
    gets its own bounded link from the one encode; images take raw
    composited frames through a leaky link.
    """
    if video is None and audio is None:
        raise ValueError("a composite needs video, audio or both")
    segments = [o for o in outputs if isinstance(o, SegmentsOutput)]
    if video is not None and segments:
        # HLS segments start on key frames: one key frame per segment
        video = dataclasses.replace(video, keyframe_interval_s=segments[0].segment_duration)
    if video is None and any(isinstance(o, ImageOutput) for o in outputs):
        raise ValueError("image outputs need video")
    graph = Graph(name)
    subscriber = graph.add(
        RoomSubscriber(
            room,
            video=video is not None,
            audio=audio is not None,
            track_filter=track_filter,
        )
    )
    gate = ParticipantGate(participants)
    encoders = []
    compositor = mixer = video_encoder = audio_encoder = None
    speakers = SpeakerTracker() if video is not None and audio is not None else None
    if video is not None:
        compositor = graph.add(
            VideoCompositor(
                video.width,
                video.height,
                video.fps,
                layout=layout,
                speakers=speakers,
                participants=gate,
            )
        )
        video_encoder = graph.add(VideoEncoder(video))
        graph.link(subscriber.video, compositor.input, maxsize=TRACK_ITEMS_QUEUE)
        graph.link(subscriber.roster, compositor.roster, maxsize=TRACK_ITEMS_QUEUE)
        graph.link(compositor.output, video_encoder.input, maxsize=RAW_VIDEO_QUEUE)
        encoders.append(video_encoder)
    if audio is not None:
        mixer = graph.add(AudioMixer(mixing=audio_mixing, speakers=speakers, participants=gate))
        audio_encoder = graph.add(AudioEncoder(audio))
        graph.link(subscriber.audio, mixer.input, maxsize=TRACK_ITEMS_QUEUE)
        graph.link(mixer.output, audio_encoder.input, maxsize=RAW_AUDIO_QUEUE)
        encoders.append(audio_encoder)
    stages = CompositeStages(
        subscriber, compositor, mixer, video_encoder, audio_encoder, [], participants=gate
    )
    for output in outputs:
        if isinstance(output, ImageOutput):
            assert compositor is not None
            images = graph.add(snapshotter(output))
            graph.link(
                compositor.output,
                images.input,
                maxsize=SNAPSHOT_QUEUE,
                policy=LinkPolicy.DROP_OLDEST,
            )
            stages.snapshotters.append(images)
            continue
        if isinstance(output, FileOutput):
            sink = graph.add(file_muxer(output, encoders))
            stages.muxers.append(sink)
        elif isinstance(output, SegmentsOutput):
            sink = graph.add(segmenter(output, encoders))
            stages.segmenters.append(sink)
        else:
            # never blocks its input: each URL has its own queue and thread
            sink = graph.add(
                StreamSink(encoders, output.urls, retry=output.retry, network=output.network)
            )
            stages.streams.append(sink)
        for encoder in encoders:
            graph.link(encoder.output, sink.input, maxsize=PACKET_QUEUE, policy=LinkPolicy.BLOCK)
    return graph, stages
