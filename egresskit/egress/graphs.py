"""Building graphs: which stages a kind of egress needs and how they are joined."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import av

from egresskit.egress import naming
from egresskit.egress.encoding import EncodingSettings
from egresskit.netpolicy import NetworkPolicy
from egresskit.pipeline import Graph, LinkPolicy, OutputPort, Stage
from egresskit.rooms.local import LocalRoom
from egresskit.stages.compositor import VideoCompositor
from egresskit.stages.encoder import AudioEncoder, AudioEncoding, VideoEncoder, VideoEncoding
from egresskit.stages.hls import Fmp4HlsSegmenter, HlsSegmenter
from egresskit.stages.media import EncodedItem
from egresskit.stages.mixer import AudioMixer, Mixing
from egresskit.stages.muxer import FileMuxer, Mp4Muxer
from egresskit.stages.page import START_SIGNAL_TIMEOUT_S, PageSource
from egresskit.stages.participants import EVERYONE, ParticipantChoice, ParticipantGate
from egresskit.stages.snapshot import ImageSnapshotter
from egresskit.stages.speaker import SpeakerTracker
from egresskit.stages.stream import ReconnectPolicy, StreamSink
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
# A page's grabbed pictures waiting for the encoder: half a second, so a short stall of the
# encoder does not hold back the grab (which would then repeat pictures on the frame grid).
PAGE_VIDEO_QUEUE = 15


@dataclass(frozen=True, slots=True)
class FileOutput:
    """A local file; its container follows the extension (.mp4, .ogg, .webm, .mp3, .mkv).

    `faststart` (MP4 only) moves the index before the media after a clean stop,
    so players start before the whole file has loaded; the file is fragmented,
    and playable after a crash, until then.
    """

    path: str | os.PathLike[str]
    faststart: bool = False


@dataclass(frozen=True, slots=True)
class SegmentsOutput:
    """HLS: MPEG-TS segments `{prefix}_00000.ts`... (or TIMESTAMP names) and an EVENT playlist.

    The prefix's directory holds segments and playlists; `playlist` defaults
    to `{prefix}.m3u8`; `live_playlist`, if given, is the sliding window of 5.
    Segments start on key frames: the video encoding's key frame interval
    should divide `segment_duration` (requests get one per segment from validation).
    """

    prefix: str | os.PathLike[str]
    playlist: str = ""
    live_playlist: str = ""
    segment_duration: float = 4.0
    suffix: naming.SegmentSuffix | str = naming.SegmentSuffix.INDEX
    # fMP4 segments `{prefix}_00000.m4s` after `{prefix}_init.mp4` (EXT-X-MAP), for codecs
    # MPEG-TS cannot carry (VP9, AV1); they need video
    fragmented_mp4: bool = False


@dataclass(frozen=True, slots=True)
class StreamOutput:
    """Live streams: `rtmp://`, `rtmps://` (FLV) and `srt://` (MPEG-TS) URLs, more added later."""

    urls: tuple[str, ...] = ()
    retry: ReconnectPolicy = ReconnectPolicy()
    network: NetworkPolicy | None = None  # a caller's URLs: where they may connect


@dataclass(frozen=True, slots=True)
class ImageOutput:
    """A JPEG of the composite every `capture_interval` s; width/height 0 keep its size."""

    prefix: str | os.PathLike[str]
    capture_interval: float = 10.0
    width: int = 0
    height: int = 0
    suffix: naming.ImageSuffix | str = naming.ImageSuffix.INDEX


Output = FileOutput | SegmentsOutput | StreamOutput | ImageOutput


@dataclass
class OutputStages:
    """The stage writing each output, keyed by the output as it was asked for."""

    files: dict[FileOutput, FileMuxer] = field(default_factory=dict)
    segments: dict[SegmentsOutput, HlsSegmenter] = field(default_factory=dict)
    streams: dict[StreamOutput, StreamSink] = field(default_factory=dict)
    images: dict[ImageOutput, ImageSnapshotter] = field(default_factory=dict)

    def __contains__(self, output: object) -> bool:
        kinds = (self.files, self.segments, self.streams, self.images)
        return any(output in stages for stages in kinds)

    @property
    def stream(self) -> StreamSink | None:
        """The stream sink, if any (a graph streams through one sink, its URLs change)."""
        return next(iter(self.streams.values()), None)


@dataclass
class CompositeStages:
    """The stages of a composite graph, kept so the caller can watch and steer them."""

    subscriber: RoomSubscriber
    compositor: VideoCompositor | None
    mixer: AudioMixer | None
    video_encoder: VideoEncoder | None
    audio_encoder: AudioEncoder | None
    # who is drawn and heard; `participants.choose` changes it while the graph runs
    participants: ParticipantGate = field(default_factory=ParticipantGate)
    outputs: OutputStages = field(default_factory=OutputStages)


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


def file_muxer(output: FileOutput) -> FileMuxer:
    suffix = os.path.splitext(os.fspath(output.path))[1].lower()
    if suffix == ".mp4":
        return Mp4Muxer(output.path, faststart=output.faststart)
    if output.faststart:
        raise ValueError("faststart is an option of MP4 files")
    if suffix not in CONTAINERS:
        raise ValueError(f"unsupported file type {suffix or '(none)'}")
    return FileMuxer(output.path, format=CONTAINERS[suffix])


def segmenter(output: SegmentsOutput) -> HlsSegmenter:
    prefix = Path(output.prefix)
    extension = ".m4s" if output.fragmented_mp4 else ".ts"
    suffix = naming.SegmentSuffix(output.suffix)  # ValueError now, not at the first segment

    def names(index: int, when: datetime) -> str:
        return naming.segment_name(prefix.name, suffix, index, when, extension)

    playlist = naming.playlist_name(prefix.name, output.playlist)
    live_playlist = naming.live_playlist_name(output.live_playlist)
    if output.fragmented_mp4:
        return Fmp4HlsSegmenter(
            prefix.parent,
            playlist,
            init_name=naming.init_segment_name(prefix.name),
            segment_names=names,
            live_playlist=live_playlist,
            segment_duration=output.segment_duration,
        )
    return HlsSegmenter(
        prefix.parent,
        playlist,
        segment_names=names,
        live_playlist=live_playlist,
        segment_duration=output.segment_duration,
    )


def snapshotter(output: ImageOutput) -> ImageSnapshotter:
    prefix = Path(output.prefix)
    suffix = naming.ImageSuffix(output.suffix)  # ValueError now, not at the first image
    return ImageSnapshotter(
        prefix.parent,
        image_names=lambda index, when: naming.image_name(prefix.name, suffix, index, when),
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
    audio_mixing: Mixing | str = Mixing.DEFAULT,
    video_stages: Sequence[Stage] = (),
    name: str = "composite",
) -> tuple[Graph, CompositeStages]:
    """Room -> subscriber -> compositor / mixer -> one encode each -> every output.

    `layout` is a LiveKit layout name (see `egresskit.stages.layout`);
    `audio_mixing` how the mixer places tracks on its channels. The mixer (and a room
    server's speaker announcements) tell the compositor who is talking
    through a shared SpeakerTracker.

    `participants` chooses who is drawn and heard (everyone by default);
    `stages.participants.choose` changes it while the graph runs.

    `video_stages` are stages of your own that the composited pictures pass
    through, in order, before they are encoded (and before images are taken):
    each takes video frames on its `input` port and sends them on from its
    `output` port (see examples/watermark.py).

    `video=None` records audio only, `audio=None` video only. Every output
    gets its own bounded link from the one encode; images take raw
    composited frames through a leaky link.
    """
    if video is None and audio is None:
        raise ValueError("a composite needs video, audio or both")
    if video is None and video_stages:
        raise ValueError("video stages need video")
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
    encoders: list[OutputPort[EncodedItem]] = []
    compositor = mixer = video_encoder = audio_encoder = None
    raw_video: OutputPort[av.VideoFrame] | None = None  # the pictures to encode
    # levels come from the mixer and from the room's server, if it announces speakers
    speakers = SpeakerTracker() if video is not None else None
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
        raw_video = compositor.output
        for stage in video_stages:
            if "input" not in stage.inputs or "output" not in stage.outputs:
                raise ValueError(f"{stage.name} needs an `input` and an `output` port")
            graph.add(stage)
            graph.link(raw_video, stage.inputs["input"], maxsize=RAW_VIDEO_QUEUE)
            raw_video = stage.outputs["output"]
        graph.link(raw_video, video_encoder.input, maxsize=RAW_VIDEO_QUEUE)
        encoders.append(video_encoder.output)
    if audio is not None:
        mixer = graph.add(AudioMixer(mixing=audio_mixing, speakers=speakers, participants=gate))
        audio_encoder = graph.add(AudioEncoder(audio))
        graph.link(subscriber.audio, mixer.input, maxsize=TRACK_ITEMS_QUEUE)
        graph.link(mixer.output, audio_encoder.input, maxsize=RAW_AUDIO_QUEUE)
        encoders.append(audio_encoder.output)
    stages = CompositeStages(
        subscriber, compositor, mixer, video_encoder, audio_encoder, participants=gate
    )
    stages.outputs = attach_outputs(graph, encoders, raw_video, outputs)
    return graph, stages


def attach_outputs(
    graph: Graph,
    encoders: Sequence[OutputPort[EncodedItem]],
    raw_video: OutputPort[av.VideoFrame] | None,
    outputs: Sequence[Output],
) -> OutputStages:
    """Every output from the one encode (`encoders`: the encoders' output ports); images
    take the raw pictures (`raw_video`, None without video) through a leaky link. The
    same output twice is a ValueError."""
    stages = OutputStages()
    for output in outputs:
        if output in stages:
            raise ValueError(f"the same output twice: {output}")
        if isinstance(output, ImageOutput):
            if raw_video is None:
                raise ValueError("image outputs need video")
            images = stages.images[output] = graph.add(snapshotter(output))
            graph.link(
                raw_video,
                images.input,
                maxsize=SNAPSHOT_QUEUE,
                policy=LinkPolicy.DROP_OLDEST,
            )
            continue
        sink: FileMuxer | HlsSegmenter | StreamSink
        if isinstance(output, FileOutput):
            sink = stages.files[output] = graph.add(file_muxer(output))
        elif isinstance(output, SegmentsOutput):
            if output.fragmented_mp4 and raw_video is None:
                raise ValueError("fragmented MP4 segments need video")
            sink = stages.segments[output] = graph.add(segmenter(output))
        else:
            # never blocks its input: each URL has its own queue and thread
            sink = stages.streams[output] = graph.add(
                StreamSink(output.urls, retry=output.retry, network=output.network)
            )
        for encoded in encoders:
            graph.link(encoded, sink.input, maxsize=PACKET_QUEUE, policy=LinkPolicy.BLOCK)
    return stages


@dataclass
class WebStages:
    """The stages of a web page's graph, kept so the caller can watch and steer them."""

    source: PageSource
    video_encoder: VideoEncoder | None
    audio_encoder: AudioEncoder | None
    outputs: OutputStages = field(default_factory=OutputStages)
    compositor: None = None  # a page lays itself out: UpdateLayout has nothing to switch


def web_graph(
    url: str,
    outputs: list[Output],
    *,
    video: VideoEncoding | None = VideoEncoding(),
    audio: AudioEncoding | None = AudioEncoding(),
    await_start_signal: bool = False,
    start_timeout_s: float = START_SIGNAL_TIMEOUT_S,
    name: str = "web",
) -> tuple[Graph, WebStages]:
    """A web page (Chromium on Xvfb) -> one encode each of picture and sound -> every output.

    The page is shown at the video encoding's size; `video=None` records
    its sound only, `audio=None` its picture only.
    """
    if video is None and audio is None:
        raise ValueError("a web egress needs video, audio or both")
    graph = Graph(name)
    width, height, fps = (video.width, video.height, video.fps) if video else (1280, 720, 30)
    source = graph.add(
        PageSource(
            url,
            width=width,
            height=height,
            fps=fps,
            video=video is not None,
            audio=audio is not None,
            await_start_signal=await_start_signal,
            start_timeout_s=start_timeout_s,
        )
    )
    encoders: list[OutputPort[EncodedItem]] = []
    video_encoder = audio_encoder = None
    if video is not None:
        video_encoder = graph.add(VideoEncoder(video))
        graph.link(source.video, video_encoder.input, maxsize=PAGE_VIDEO_QUEUE)
        encoders.append(video_encoder.output)
    if audio is not None:
        audio_encoder = graph.add(AudioEncoder(audio))
        graph.link(source.audio, audio_encoder.input, maxsize=RAW_AUDIO_QUEUE)
        encoders.append(audio_encoder.output)
    stages = WebStages(source, video_encoder, audio_encoder)
    stages.outputs = attach_outputs(graph, encoders, source.video if video else None, outputs)
    return graph, stages
