"""Encoding settings: LiveKit defaults, the eight presets and advanced options."""

from __future__ import annotations

import pytest
from livekit.protocol import egress as egress_pb
from livekit.protocol import models as models_pb

from egresskit.egress.encoding import EncodingSettings, InvalidRequest, audio_codec_of
from egresskit.stages.encoder import gop_frames


def test_defaults():
    settings = EncodingSettings.from_request(None, None)
    assert (settings.width, settings.height, settings.depth, settings.framerate) == (
        1280,
        720,
        24,
        30,
    )
    assert (settings.video_codec, settings.h264_profile, settings.video_bitrate_kbps) == (
        "h264",
        "main",
        3000,
    )
    assert settings.key_frame_interval_s == 4.0
    assert gop_frames(settings.key_frame_interval_s, settings.framerate) == 120
    assert (settings.audio_codec, settings.audio_bitrate_kbps, settings.audio_frequency) == (
        "opus",
        128,
        48000,
    )
    aac = EncodingSettings.from_request(None, None, default_audio_codec="aac")
    assert (aac.audio_codec, aac.audio_frequency) == ("aac", 44100)


@pytest.mark.parametrize(
    ("preset", "size", "fps", "kbps"),
    [
        (egress_pb.H264_720P_30, (1280, 720), 30, 3000),
        (egress_pb.H264_720P_60, (1280, 720), 60, 4500),
        (egress_pb.H264_1080P_30, (1920, 1080), 30, 4500),
        (egress_pb.H264_1080P_60, (1920, 1080), 60, 6000),
        (egress_pb.PORTRAIT_H264_720P_30, (720, 1280), 30, 3000),
        (egress_pb.PORTRAIT_H264_720P_60, (720, 1280), 60, 4500),
        (egress_pb.PORTRAIT_H264_1080P_30, (1080, 1920), 30, 4500),
        (egress_pb.PORTRAIT_H264_1080P_60, (1080, 1920), 60, 6000),
    ],
)
def test_presets(preset, size, fps, kbps):
    settings = EncodingSettings.from_request(preset, None, default_audio_codec="aac")
    assert (settings.width, settings.height) == size
    assert (settings.framerate, settings.video_bitrate_kbps) == (fps, kbps)
    assert (settings.video_codec, settings.h264_profile, settings.depth) == ("h264", "main", 24)
    assert settings.key_frame_interval_s == 4.0
    assert (settings.audio_codec, settings.audio_bitrate_kbps) == ("aac", 128)


def test_unsupported_presets_are_invalid():
    with pytest.raises(InvalidRequest, match="PASSTHROUGH"):
        EncodingSettings.from_request(egress_pb.PASSTHROUGH, None)
    with pytest.raises(InvalidRequest, match="preset"):
        EncodingSettings.from_request(42, None)


def test_advanced_options_override_only_what_they_set():
    options = egress_pb.EncodingOptions(
        width=640,
        height=360,
        framerate=15,
        video_codec=models_pb.H264_HIGH,
        video_bitrate=800,
        key_frame_interval=2.5,
        audio_codec=models_pb.AC_MP3,
        audio_bitrate=96,
        audio_frequency=22050,
    )
    settings = EncodingSettings.from_request(None, options)
    assert (settings.width, settings.height, settings.framerate) == (640, 360, 15)
    assert (settings.h264_profile, settings.video_bitrate_kbps) == ("high", 800)
    assert settings.key_frame_interval_s == 2.5
    assert gop_frames(settings.key_frame_interval_s, settings.framerate) == 38
    assert (settings.audio_codec, settings.audio_bitrate_kbps, settings.audio_frequency) == (
        "mp3",
        96,
        22050,
    )
    empty = EncodingSettings.from_request(None, egress_pb.EncodingOptions())
    assert empty == EncodingSettings.from_request(None, None)
    baseline = egress_pb.EncodingOptions(video_codec=models_pb.H264_BASELINE)
    assert EncodingSettings.from_request(None, baseline).h264_profile == "baseline"
    vp8 = EncodingSettings.from_request(None, egress_pb.EncodingOptions(video_codec=models_pb.VP8))
    assert vp8.video_codec == "vp8"


def test_opus_rounds_its_rate_up_to_a_native_one():
    for requested, encoded in ((44100, 48000), (0, 48000), (16000, 16000), (11025, 12000)):
        options = egress_pb.EncodingOptions(audio_codec=models_pb.OPUS, audio_frequency=requested)
        assert EncodingSettings.from_request(None, options).audio_frequency == encoded


def test_explicit_audio_codec_wins_over_the_container_default():
    options = egress_pb.EncodingOptions(audio_codec=models_pb.OPUS)
    assert audio_codec_of(options) == "opus"
    assert audio_codec_of(egress_pb.EncodingOptions()) is None and audio_codec_of(None) is None
    settings = EncodingSettings.from_request(None, options, default_audio_codec="aac")
    assert settings.audio_codec == "opus"


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (dict(width=1281), "advanced.width"),
        (dict(height=719), "advanced.height"),
        (dict(width=14, height=14), "advanced.width"),
        (dict(width=8192), "advanced.width"),
        (dict(width=-2), "advanced.width"),
        (dict(depth=12), "advanced.depth"),
        (dict(framerate=-1), "advanced.framerate"),
        (dict(framerate=500), "advanced.framerate"),
        (dict(video_codec=99), "advanced.video_codec"),
        (dict(audio_codec=99), "advanced.audio_codec"),
        (dict(audio_codec=models_pb.AAC, audio_frequency=12345), "advanced.audio_frequency"),
        (dict(audio_codec=models_pb.OPUS, audio_frequency=96000), "advanced.audio_frequency"),
        (dict(key_frame_interval=-1.0), "advanced.key_frame_interval"),
        (dict(key_frame_interval=float("nan")), "advanced.key_frame_interval"),
        (dict(video_bitrate=-5), "advanced.video_bitrate"),
    ],
)
def test_invalid_advanced_options(options, field):
    with pytest.raises(InvalidRequest) as caught:
        EncodingSettings.from_request(None, egress_pb.EncodingOptions(**options))
    assert caught.value.field == field
    assert str(caught.value).startswith(f"request has missing or invalid field: {field}")
    assert isinstance(caught.value, ValueError)


def test_settings_are_immutable():
    settings = EncodingSettings.from_request(None, None)
    with pytest.raises(AttributeError):
        settings.width = 1  # type: ignore[misc]
