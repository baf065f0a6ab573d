"""Encoding options end to end: presets and advanced fields give the files they promise.

Video is encoded offline (frames pushed as fast as the encoder takes them),
so 10 s of each preset costs only its encode time; the audio-only case runs
a live room.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from fractions import Fraction

import av
import numpy as np
import pytest
from livekit.protocol import egress as egress_pb
from livekit.protocol import models as models_pb
from media_checks import ffprobe, stream
from publishers import SineAudioTrack

from egresskit import FileOutput, Graph, GraphState, Stage, VideoEncoder, composite_graph
from egresskit.egress.encoding import EncodingSettings
from egresskit.egress.graphs import file_muxer, stage_encodings
from egresskit.stages.encoder import VideoEncoding

SECONDS = 10
VARIANTS = 16  # distinct pictures cycled through, each shifted: moving, busy content


class BusyPictures(Stage):
    """`seconds` of a moving gradient with grain, at the encoder's size and rate, unpaced.

    Grain keeps the picture expensive enough that the rate control, not the
    content, decides the bitrate.
    """

    def __init__(self, width: int, height: int, fps: int, seconds: int) -> None:
        super().__init__("pictures")
        self.output = self.add_output("output")
        self.count = fps * seconds
        self.time_base = Fraction(1, fps)
        rng = np.random.default_rng(7)
        rows, cols = height * 3 // 2, width
        gradient = (np.add.outer(np.arange(rows), np.arange(cols)) % 256).astype(np.int16)
        grain = rng.integers(-24, 25, (rows, cols), dtype=np.int16)
        self.pictures = [
            np.clip(
                np.roll(gradient, 9 * i, axis=1) + np.roll(grain, 5 * i, axis=0), 0, 255
            ).astype(np.uint8)
            for i in range(VARIANTS)
        ]

    async def run(self) -> None:
        for n in range(self.count):
            frame = av.VideoFrame.from_ndarray(self.pictures[n % VARIANTS], format="yuv420p")
            frame.pts = n
            frame.time_base = self.time_base
            await self.output.send(frame)


async def encode_offline(settings: EncodingSettings, path, seconds: int = SECONDS) -> dict:
    video, _ = stage_encodings(settings, audio=False)
    graph = Graph("offline")
    source = graph.add(BusyPictures(video.width, video.height, video.fps, seconds))
    encoder = graph.add(VideoEncoder(video))
    muxer = graph.add(file_muxer(FileOutput(path)))
    graph.link(source.output, encoder.input, maxsize=4)
    graph.link(encoder.output, muxer.input, maxsize=64)
    await graph.start()
    assert await graph.wait(120) is GraphState.COMPLETE, graph.error
    return stream(ffprobe(path), "video")


PRESETS = {
    egress_pb.H264_720P_30: (1280, 720, 30, 3000),
    egress_pb.H264_720P_60: (1280, 720, 60, 4500),
    egress_pb.H264_1080P_30: (1920, 1080, 30, 4500),
    egress_pb.H264_1080P_60: (1920, 1080, 60, 6000),
    egress_pb.PORTRAIT_H264_720P_30: (720, 1280, 30, 3000),
    egress_pb.PORTRAIT_H264_720P_60: (720, 1280, 60, 4500),
    egress_pb.PORTRAIT_H264_1080P_30: (1080, 1920, 30, 4500),
    egress_pb.PORTRAIT_H264_1080P_60: (1080, 1920, 60, 6000),
}


# Every preset goes through the same rate control with its own table entry (asserted
# for each): its bitrate is measured on the smallest and the largest pixel rate (10 s
# of busy pictures each). Portrait presets encode the same pixel count at the same rate
# and bitrate as their landscape twins; the other encodes are kept short and checked
# for their size and frame rate.
MEASURED = {egress_pb.H264_720P_30, egress_pb.H264_1080P_60}
SHORT_SECONDS = 2


@pytest.mark.slow
@pytest.mark.parametrize(
    "preset", list(PRESETS), ids=[egress_pb.EncodingOptionsPreset.Name(p) for p in PRESETS]
)
async def test_preset_resolution_rate_and_bitrate(preset, tmp_path):
    width, height, fps, kbps = PRESETS[preset]
    settings = EncodingSettings.from_request(preset, None)
    video_encoding, _ = stage_encodings(settings, audio=False)
    assert video_encoding.bitrate_kbps == kbps
    seconds = SECONDS if preset in MEASURED else SHORT_SECONDS
    video = await encode_offline(settings, tmp_path / "p.mp4", seconds)
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", width, height)
    assert video["r_frame_rate"] == f"{fps}/1"
    assert int(video["nb_read_frames"]) == fps * seconds
    if preset in MEASURED:
        bitrate = int(video["bit_rate"]) / 1000
        assert abs(bitrate - kbps) <= 0.25 * kbps, f"{bitrate:.0f} kbps for a {kbps} kbps preset"


@pytest.mark.parametrize(
    ("width", "height", "fps", "threads"),
    [(1280, 720, 30, 1), (640, 360, 30, 1), (1920, 1080, 30, 0), (1280, 720, 60, 0)],
)
def test_x264_runs_one_thread_up_to_720p30(width, height, fps, threads):
    """One thread is cheaper where it keeps up; larger pictures get x264's own count (0)."""
    encoder = VideoEncoder(VideoEncoding(width=width, height=height, fps=fps))
    assert encoder.context.thread_count == threads


def key_frame_times(path) -> list[float]:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-skip_frame", "nokey"]
        + ["-show_entries", "frame=pts_time", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [float(f["pts_time"]) for f in json.loads(result.stdout)["frames"]]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("codec", "suffix", "codec_name", "profile"),
    [
        (models_pb.H264_BASELINE, ".mp4", "h264", "Constrained Baseline"),
        (models_pb.H264_HIGH, ".mp4", "h264", "High"),
        (models_pb.VP8, ".webm", "vp8", None),
    ],
)
async def test_advanced_video_options(codec, suffix, codec_name, profile, tmp_path):
    options = egress_pb.EncodingOptions(
        width=640, height=360, framerate=15, video_codec=codec, video_bitrate=2000
    )
    options.key_frame_interval = 2.0
    settings = EncodingSettings.from_request(None, options)
    path = tmp_path / f"advanced{suffix}"
    video = await encode_offline(settings, path, seconds=6)
    assert (video["codec_name"], video["width"], video["height"]) == (codec_name, 640, 360)
    assert video["r_frame_rate"] == "15/1"
    if profile:
        assert video["profile"] == profile
    assert key_frame_times(path) == pytest.approx([0.0, 2.0, 4.0], abs=0.01)
    size_kbits = path.stat().st_size * 8 / 1000
    assert abs(size_kbits / 6 - 2000) <= 0.25 * 2000


@pytest.mark.slow
async def test_audio_only_composite_to_ogg_opus(rooms, tmp_path):
    room = rooms.get_or_create("radio")
    await room.publish(SineAudioTrack(440.0), identity="host")
    settings = EncodingSettings.from_request(None, None, default_audio_codec="opus")
    video, audio = stage_encodings(settings, video=False)
    path = tmp_path / "radio.ogg"
    graph, _ = composite_graph(room, [FileOutput(path)], video=video, audio=audio)
    await graph.start()
    await asyncio.sleep(3.0)
    wall = graph.clock.now()
    assert await graph.stop() is GraphState.COMPLETE, graph.error
    info = ffprobe(path)
    assert info["format"]["format_name"] == "ogg"
    assert [s["codec_type"] for s in info["streams"]] == ["audio"]
    assert (stream(info, "audio")["codec_name"], stream(info, "audio")["sample_rate"]) == (
        "opus",
        "48000",
    )
    assert abs(float(info["format"]["duration"]) - wall) <= 0.3
