"""egresskit's own output options: VP9 and AV1 video, MP4 faststart.

The requests are LiveKit's with the extension fields of `EgressSpec` set, as
egresskit's StartRoomCompositeEgress sets them; each is planned and run
like any egress, and the file is checked with ffprobe.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import subprocess
from pathlib import Path

import pytest
from livekit.protocol import egress as egress_pb
from media_checks import ffprobe, stream

from egresskit.egress.encoding import InvalidRequest
from egresskit.egress.planner import plan
from egresskit.egress.spec import EgressSpec
from egresskit.egress.validation import validate
from egresskit.pipeline import GraphState
from egresskit.rooms.local import RoomManager

SECONDS = 2.0


def composite_spec(filepath: str, **extensions) -> EgressSpec:
    request = egress_pb.RoomCompositeEgressRequest(
        room_name="codecs",
        file_outputs=[egress_pb.EncodedFileOutput(filepath=filepath)],
        advanced=egress_pb.EncodingOptions(width=640, height=360, framerate=30),
    )
    return dataclasses.replace(validate(request), **extensions)


async def record(spec: EgressSpec, tmp_path: Path, rooms: RoomManager) -> Path:
    """Run the planned egress for SECONDS of an (empty, drawn) room; the file it wrote."""
    planned = plan(spec, "EG_codecs", rooms, tmp_path)
    await planned.graph.start()
    await asyncio.sleep(SECONDS)
    assert await planned.graph.stop() is GraphState.COMPLETE, planned.graph.error
    (file,) = planned.files
    return file.local_path


def decode_errors(path: Path) -> str:
    """What ffmpeg's own decoders (libdav1d, vp9) complain of while decoding every frame."""
    return subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr


@pytest.mark.parametrize("codec", ["vp9", "av1"])
async def test_vp9_and_av1_files_decode_at_the_requested_size(tmp_path, codec):
    rooms = RoomManager()
    rooms.get_or_create("codecs")
    path = await record(composite_spec(f"{codec}.mp4", video_codec=codec), tmp_path, rooms)
    video = stream(ffprobe(path), "video")
    assert (video["codec_name"], video["width"], video["height"]) == (codec, 640, 360)
    assert decode_errors(path) == ""
    assert int(video["nb_read_frames"]) >= SECONDS * 30 * 0.8


@pytest.mark.parametrize("codec", ["vp9", "av1"])
async def test_vp9_and_av1_hls_segments_are_fragmented_mp4(tmp_path, codec):
    rooms = RoomManager()
    rooms.get_or_create("codecs")
    request = egress_pb.RoomCompositeEgressRequest(
        room_name="codecs",
        segment_outputs=[
            egress_pb.SegmentedFileOutput(
                filename_prefix=f"hls/{codec}",
                segment_duration=1,
                protocol=egress_pb.HLS_FMP4_PROTOCOL,
                live_playlist_name="live.m3u8",
            )
        ],
        advanced=egress_pb.EncodingOptions(width=640, height=360, framerate=30),
    )
    planned = plan(
        dataclasses.replace(validate(request), video_codec=codec), "EG_h", rooms, tmp_path
    )
    await planned.graph.start()
    await asyncio.sleep(3.2)
    assert await planned.graph.stop() is GraphState.COMPLETE, planned.graph.error
    playlist = tmp_path / "hls" / f"{codec}.m3u8"
    lines = playlist.read_text().splitlines()
    assert "#EXT-X-VERSION:7" in lines and f'#EXT-X-MAP:URI="{codec}_init.mp4"' in lines
    names = [line for line in lines if line and not line.startswith("#")]
    assert len(names) >= 3 and all(name.endswith(".m4s") for name in names), lines
    assert f'#EXT-X-MAP:URI="{codec}_init.mp4"' in (tmp_path / "hls" / "live.m3u8").read_text()
    # players read the playlist as one stream: the codec at the size asked, every frame
    info = ffprobe(playlist)
    video = stream(info, "video")
    assert (video["codec_name"], video["width"], video["height"]) == (codec, 640, 360)
    assert stream(info, "audio")["codec_name"] == "aac"
    assert int(video["nb_read_frames"]) >= 3 * 30 * 0.8
    assert decode_errors(playlist) == ""
    # and each segment starts on a key frame: decodable from the init section alone
    init = (tmp_path / "hls" / f"{codec}_init.mp4").read_bytes()
    alone = tmp_path / "second.mp4"
    alone.write_bytes(init + (tmp_path / "hls" / names[1]).read_bytes())
    assert decode_errors(alone) == ""
    assert 0.9 < float(stream(ffprobe(alone), "video")["start_time"]) < 1.5


def test_codecs_that_do_not_fit_an_output_are_refused():
    segments = egress_pb.RoomCompositeEgressRequest(
        room_name="codecs",
        segment_outputs=[egress_pb.SegmentedFileOutput(filename_prefix="live")],
    )
    spec = dataclasses.replace(validate(segments), video_codec="av1")
    with pytest.raises(InvalidRequest, match="HLS output cannot carry AV1"):
        plan(spec, "EG_x", RoomManager(), Path("/nonexistent"))
    with pytest.raises(InvalidRequest, match="must be h264, vp9 or av1"):
        plan(composite_spec("x.mp4", video_codec="vp8x"), "EG_x", RoomManager(), Path("/x"))
    ogg = egress_pb.RoomCompositeEgressRequest(
        room_name="codecs",
        audio_only=True,
        file_outputs=[egress_pb.EncodedFileOutput(filepath="a.ogg", file_type=egress_pb.OGG)],
    )
    with pytest.raises(InvalidRequest, match="faststart needs an MP4 file"):
        plan(dataclasses.replace(validate(ogg), faststart=True), "EG_x", RoomManager(), Path("/x"))


def top_level_boxes(path: Path) -> list[str]:
    """The top-level MP4 boxes in file order, as `ffprobe -v trace` reports them."""
    trace = subprocess.run(
        ["ffprobe", "-v", "trace", str(path)], capture_output=True, text=True, check=True
    ).stderr
    boxes = []
    for line in trace.splitlines():
        if "type:'" in line and " parent:'root'" in line:
            boxes.append(line.split("type:'")[1][:4])
    return boxes


async def test_faststart_puts_the_index_first_after_a_clean_stop(tmp_path):
    rooms = RoomManager()
    rooms.get_or_create("codecs")
    plain = await record(composite_spec("plain.mp4"), tmp_path, rooms)
    fast = await record(composite_spec("fast.mp4", faststart=True), tmp_path, rooms)
    plain_boxes, fast_boxes = top_level_boxes(plain), top_level_boxes(fast)
    assert plain_boxes.index("mdat") < plain_boxes.index("moov"), plain_boxes
    assert fast_boxes.index("moov") < fast_boxes.index("mdat"), fast_boxes
    assert "moof" not in fast_boxes
    # the same media: streams, durations and sizes as the fragmented recording's
    for path in (plain, fast):
        info = ffprobe(path)
        assert [s["codec_name"] for s in info["streams"]] == ["h264", "aac"]
        assert abs(float(info["format"]["duration"]) - SECONDS) < 0.3
        assert (stream(info, "video")["width"], stream(info, "video")["height"]) == (640, 360)
        # when its first media was captured, to the microsecond, kept by the faststart copy
        created = info["format"]["tags"]["creation_time"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", created)
        assert not created.endswith(".000000Z"), created  # not the whole seconds of mvhd


async def test_fmp4_hls_marks_the_resume_point_with_a_discontinuity(tmp_path):
    """A paused fMP4 HLS egress (what VP9/AV1 segments use) cuts at the resume, as MPEG-TS does."""
    rooms = RoomManager()
    rooms.get_or_create("codecs")
    request = egress_pb.RoomCompositeEgressRequest(
        room_name="codecs",
        segment_outputs=[
            egress_pb.SegmentedFileOutput(
                filename_prefix="hls/paused",
                segment_duration=4,
                protocol=egress_pb.HLS_FMP4_PROTOCOL,
            )
        ],
        advanced=egress_pb.EncodingOptions(width=320, height=180, framerate=30),
    )
    planned = plan(validate(request), "EG_p", rooms, tmp_path)
    await planned.graph.start()
    await asyncio.sleep(1.0)
    assert planned.graph.pause()
    await asyncio.sleep(1.0)
    assert planned.graph.resume()
    await asyncio.sleep(1.0)
    assert await planned.graph.stop() is GraphState.COMPLETE, planned.graph.error
    lines = (tmp_path / "hls" / "paused.m3u8").read_text().splitlines()
    names = [line for line in lines if line and not line.startswith("#")]
    # two segments (a 4 s one cut short at the resume, then the rest), the second marked
    assert len(names) == 2, lines
    assert lines.count("#EXT-X-DISCONTINUITY") == 1, lines
    assert lines[lines.index("#EXT-X-DISCONTINUITY") + 2] == names[1], lines
    assert decode_errors(tmp_path / "hls" / "paused.m3u8") == ""
