"""The examples run as documented and leave the recordings they promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from media_checks import ffprobe, frame_at, region_color, stream
from publishers import colors_close

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXAMPLE = EXAMPLES / "record_room.py"
ALICE, BOB = (200, 40, 40), (40, 70, 200)  # the demo's two colour cards
YELLOW = (240, 200, 0)  # examples/watermark.py's box
LEFT_TILE = (120, 300, 520, 420)  # the middle of each half of a two-tile grid
RIGHT_TILE = (760, 300, 1160, 420)


@pytest.mark.slow
def test_demo_recording_is_a_playable_mp4(tmp_path):
    out = tmp_path / "demo.mp4"
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--demo", "--seconds", "3", "--port", "0", "--out", out],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "/whip/demo" in result.stdout
    assert f"complete: {out}" in result.stdout

    info = ffprobe(out)
    video, audio = stream(info, "video"), stream(info, "audio")
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 1280, 720)
    assert audio["codec_name"] == "aac"
    assert 2.7 <= float(info["format"]["duration"]) <= 3.6, info["format"]
    picture = frame_at(out, 2.5)
    assert colors_close(region_color(picture, *LEFT_TILE), ALICE)
    assert colors_close(region_color(picture, *RIGHT_TILE), BOB)


@pytest.mark.slow
def test_watermark_stage_draws_on_every_output_picture(tmp_path):
    out = tmp_path / "watermarked.mp4"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "watermark.py"), "--seconds", "3", "--out", out],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"complete: {out}" in result.stdout

    video = stream(ffprobe(out), "video")
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 640, 360)
    for seconds in (0.5, 2.5):
        picture = frame_at(out, seconds)
        # the 80x40 box 16 px from the top right corner, and the card below it and elsewhere
        # (a white bar sweeps across the card: the regions are wide enough to outvote it)
        assert colors_close(region_color(picture, 548, 20, 620, 52), YELLOW), seconds
        assert colors_close(region_color(picture, 548, 64, 620, 100), ALICE), seconds
        assert colors_close(region_color(picture, 40, 100, 300, 240), ALICE), seconds
