"""Building graphs: which stages a kind of egress needs and how they are joined."""

from __future__ import annotations

import os
from dataclasses import dataclass

from egresskit.egress.encoding import EncodingSettings
from egresskit.pipeline import Graph, LinkPolicy
from egresskit.rooms.local import LocalRoom
from egresskit.stages.compositor import VideoCompositor
from egresskit.stages.encoder import AudioEncoder, AudioEncoding, VideoEncoder, VideoEncoding
from egresskit.stages.mixer import AudioMixer
from egresskit.stages.muxer import FileMuxer, Mp4Muxer
from egresskit.stages.subscriber import RoomSubscriber, TrackFilter

# Control items and the newest frame per track: the compositor consumes them at once.
TRACK_ITEMS_QUEUE = 64
# Raw composited frames waiting for the encoder: a few frames of slack.
RAW_VIDEO_QUEUE = 4
RAW_AUDIO_QUEUE = 25
# Encoded packets never drop; a muxer that falls behind holds up its encoder.
PACKET_QUEUE = 120


@dataclass(frozen=True, slots=True)
class FileOutput:
    """A local file; its container follows the extension (.mp4, .ogg, .webm, .mp3, .mkv)."""

    path: str | os.PathLike[str]


@dataclass
class CompositeStages:
    """The stages of a composite graph, kept so the caller can watch and steer them."""

    subscriber: RoomSubscriber
    compositor: VideoCompositor | None
    mixer: AudioMixer | None
    video_encoder: VideoEncoder | None
    audio_encoder: AudioEncoder | None
    muxers: list[FileMuxer]


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


def composite_graph(
    room: LocalRoom,
    outputs: list[FileOutput],
    *,
    video: VideoEncoding | None = VideoEncoding(),
    audio: AudioEncoding | None = AudioEncoding(),
    track_filter: TrackFilter | None = None,
    name: str = "composite",
) -> tuple[Graph, CompositeStages]:
    """Room -> subscriber -> compositor / mixer -> one encode each -> every output.

    `video=None` records audio only, `audio=None` video only.
    """
    if video is None and audio is None:
        raise ValueError("a composite needs video, audio or both")
    graph = Graph(name)
    subscriber = graph.add(
        RoomSubscriber(
            room, video=video is not None, audio=audio is not None, track_filter=track_filter
        )
    )
    encoders = []
    compositor = mixer = video_encoder = audio_encoder = None
    if video is not None:
        compositor = graph.add(VideoCompositor(video.width, video.height, video.fps))
        video_encoder = graph.add(VideoEncoder(video))
        graph.link(subscriber.video, compositor.input, maxsize=TRACK_ITEMS_QUEUE)
        graph.link(compositor.output, video_encoder.input, maxsize=RAW_VIDEO_QUEUE)
        encoders.append(video_encoder)
    if audio is not None:
        mixer = graph.add(AudioMixer())
        audio_encoder = graph.add(AudioEncoder(audio))
        graph.link(subscriber.audio, mixer.input, maxsize=TRACK_ITEMS_QUEUE)
        graph.link(mixer.output, audio_encoder.input, maxsize=RAW_AUDIO_QUEUE)
        encoders.append(audio_encoder)
    muxers = []
    for output in outputs:
        muxer = graph.add(file_muxer(output, encoders))
        for encoder in encoders:
            graph.link(encoder.output, muxer.input, maxsize=PACKET_QUEUE, policy=LinkPolicy.BLOCK)
        muxers.append(muxer)
    stages = CompositeStages(subscriber, compositor, mixer, video_encoder, audio_encoder, muxers)
    return graph, stages
