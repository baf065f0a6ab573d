"""Encoding settings of one egress: the LiveKit defaults, presets and advanced options.

A request carries either a preset or an `EncodingOptions` message; both end up
as one immutable `EncodingSettings` that the encoders read, so every zero
("unset") field of the wire message is resolved here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from livekit.protocol import egress as egress_pb
from livekit.protocol import models as models_pb

# vp9 and av1 come only from egresskit's extension request (LiveKit's VideoCodec has neither)
VideoCodecName = Literal["h264", "vp8", "vp9", "av1"]
H264Profile = Literal["baseline", "main", "high"]
AudioCodecName = Literal["opus", "aac", "mp3"]

MIN_DIMENSION = 16
MAX_DIMENSION = 4096
MAX_FRAMERATE = 120
VALID_DEPTHS = (8, 16, 24)
# Opus only encodes at these rates; other requested rates round up to the next one
# (LiveKit resamples the same way, so a request for 44.1 kHz Opus is valid).
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


class InvalidRequest(ValueError):
    """A request field is missing or has a value egresskit cannot honour."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"request has missing or invalid field: {field} ({reason})")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class EncodingSettings:
    """What the video and audio encoders of one egress produce."""

    width: int = 1280
    height: int = 720
    depth: int = 24
    framerate: int = 30
    video_codec: VideoCodecName = "h264"
    h264_profile: H264Profile = "main"
    video_bitrate_kbps: int = 3000
    key_frame_interval_s: float = 4.0
    audio_codec: AudioCodecName = "opus"
    audio_bitrate_kbps: int = 128
    audio_frequency: int = 48000

    @classmethod
    def from_request(
        cls,
        preset: int | None,
        advanced: egress_pb.EncodingOptions | None,
        *,
        default_audio_codec: AudioCodecName = "opus",
    ) -> EncodingSettings:
        """Resolve a request's `preset` or `advanced` options over the defaults.

        `default_audio_codec` is what the outputs call for when the request
        names no audio codec (AAC for MP4, HLS and RTMP; Opus for OGG).
        """
        base = _preset(preset) if preset is not None else cls()
        if advanced is None:
            return _with_audio(base, default_audio_codec, 0)
        return _apply_advanced(base, advanced, default_audio_codec)


_PRESETS: dict[int, tuple[int, int, int, int]] = {
    egress_pb.H264_720P_30: (1280, 720, 30, 3000),
    egress_pb.H264_720P_60: (1280, 720, 60, 4500),
    egress_pb.H264_1080P_30: (1920, 1080, 30, 4500),
    egress_pb.H264_1080P_60: (1920, 1080, 60, 6000),
    egress_pb.PORTRAIT_H264_720P_30: (720, 1280, 30, 3000),
    egress_pb.PORTRAIT_H264_720P_60: (720, 1280, 60, 4500),
    egress_pb.PORTRAIT_H264_1080P_30: (1080, 1920, 30, 4500),
    egress_pb.PORTRAIT_H264_1080P_60: (1080, 1920, 60, 6000),
}

_VIDEO_CODECS: dict[int, tuple[VideoCodecName, H264Profile]] = {
    models_pb.H264_BASELINE: ("h264", "baseline"),
    models_pb.H264_MAIN: ("h264", "main"),
    models_pb.H264_HIGH: ("h264", "high"),
    models_pb.VP8: ("vp8", "main"),
}

_AUDIO_CODECS: dict[int, AudioCodecName] = {
    models_pb.OPUS: "opus",
    models_pb.AAC: "aac",
    models_pb.AC_MP3: "mp3",
}


def audio_codec_of(advanced: egress_pb.EncodingOptions | None) -> AudioCodecName | None:
    """The audio codec a request names explicitly, or None for "use the default"."""
    if advanced is None or advanced.audio_codec == models_pb.DEFAULT_AC:
        return None
    if advanced.audio_codec not in _AUDIO_CODECS:
        raise InvalidRequest("advanced.audio_codec", f"unknown audio codec {advanced.audio_codec}")
    return _AUDIO_CODECS[advanced.audio_codec]


def _preset(preset: int) -> EncodingSettings:
    if preset not in _PRESETS:
        name = egress_pb.EncodingOptionsPreset.Name(preset) if _known_preset(preset) else preset
        raise InvalidRequest("preset", f"preset {name} is not supported")
    width, height, framerate, bitrate = _PRESETS[preset]
    return EncodingSettings(
        width=width, height=height, framerate=framerate, video_bitrate_kbps=bitrate
    )


def _known_preset(preset: int) -> bool:
    return preset in egress_pb.EncodingOptionsPreset.values()


def _apply_advanced(
    base: EncodingSettings, opts: egress_pb.EncodingOptions, default_audio_codec: AudioCodecName
) -> EncodingSettings:
    width = opts.width or base.width
    height = opts.height or base.height
    for name, value in (("width", width), ("height", height)):
        if value < MIN_DIMENSION or value > MAX_DIMENSION or value % 2:
            raise InvalidRequest(
                f"advanced.{name}",
                f"{value} must be even and between {MIN_DIMENSION} and {MAX_DIMENSION}",
            )
    depth = opts.depth or base.depth
    if depth not in VALID_DEPTHS:
        raise InvalidRequest("advanced.depth", f"{depth} must be one of 8, 16, 24")
    framerate = opts.framerate or base.framerate
    if not 1 <= framerate <= MAX_FRAMERATE:
        raise InvalidRequest("advanced.framerate", f"{framerate} must be between 1 and 120")
    video_codec, profile = base.video_codec, base.h264_profile
    if opts.video_codec != models_pb.DEFAULT_VC:
        if opts.video_codec not in _VIDEO_CODECS:
            raise InvalidRequest("advanced.video_codec", f"unknown video codec {opts.video_codec}")
        video_codec, profile = _VIDEO_CODECS[opts.video_codec]
    if opts.video_bitrate < 0:
        raise InvalidRequest("advanced.video_bitrate", "must not be negative")
    if opts.key_frame_interval < 0 or not math.isfinite(opts.key_frame_interval):
        raise InvalidRequest("advanced.key_frame_interval", "must be a positive number of seconds")
    if opts.audio_bitrate < 0:
        raise InvalidRequest("advanced.audio_bitrate", "must not be negative")
    settings = dataclasses.replace(
        base,
        width=width,
        height=height,
        depth=depth,
        framerate=framerate,
        video_codec=video_codec,
        h264_profile=profile,
        video_bitrate_kbps=opts.video_bitrate or base.video_bitrate_kbps,
        key_frame_interval_s=opts.key_frame_interval or base.key_frame_interval_s,
        audio_bitrate_kbps=opts.audio_bitrate or base.audio_bitrate_kbps,
    )
    codec = audio_codec_of(opts) or default_audio_codec
    return _with_audio(settings, codec, opts.audio_frequency)


def _with_audio(
    settings: EncodingSettings, codec: AudioCodecName, frequency: int
) -> EncodingSettings:
    if frequency < 0:
        raise InvalidRequest("advanced.audio_frequency", "must not be negative")
    if codec == "opus":
        rate = next((r for r in OPUS_RATES if r >= (frequency or 48000)), None)
        if rate is None:
            raise InvalidRequest("advanced.audio_frequency", f"{frequency} Hz is too high for Opus")
    else:
        rate = frequency or 44100
        allowed = AAC_RATES if codec == "aac" else MP3_RATES
        if rate not in allowed:
            raise InvalidRequest(
                "advanced.audio_frequency", f"{rate} Hz is not a valid {codec.upper()} sample rate"
            )
    return dataclasses.replace(settings, audio_codec=codec, audio_frequency=rate)
