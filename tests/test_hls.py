"""HLS output of a room composite: segments, playlists and their announcements, read by ffprobe."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from livekit.protocol import egress as egress_pb
from media_checks import ffprobe, stream
from publishers import SineAudioTrack, SyntheticVideoTrack

from egresskit import GraphState, SegmentSuffix, composite_graph
from egresskit.egress.graphs import SegmentsOutput, segmenter
from egresskit.egress.planner import plan
from egresskit.egress.validation import validate
from egresskit.stages.encoder import VideoEncoding
from egresskit.stages.hls import SegmentClosed
from egresskit.storage.paths import PathEscapesRoot


def first_video_packet_is_key(path: Path) -> bool:
    result = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=flags",
            "-read_intervals",
            "%+#1",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    packets = json.loads(result.stdout)["packets"]
    return bool(packets) and packets[0]["flags"].startswith("K")


def key_frame_times(path: Path) -> list[float]:
    """Presentation times (s) of the video key frames, from the file's first packet on."""
    result = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=pts_time,flags",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    packets = json.loads(result.stdout)["packets"]
    start = float(packets[0]["pts_time"])
    return [float(p["pts_time"]) - start for p in packets if p["flags"].startswith("K")]


def playlist_entries(path: Path) -> list[tuple[float, str]]:
    """(EXTINF duration, URI) of every segment a playlist lists."""
    lines = path.read_text().splitlines()
    return [
        (float(line.split(":")[1].rstrip(",")), lines[i + 1])
        for i, line in enumerate(lines)
        if line.startswith("#EXTINF:")
    ]


async def record(room, outputs, seconds: float, name: str):
    # one key frame per segment, as validation chooses for requests
    video = VideoEncoding(keyframe_interval_s=outputs[0].segment_duration)
    graph, stages = composite_graph(room, outputs, video=video, name=name)
    closed_while_running: list[str] = []
    graph.bus.subscribe(
        lambda m: (
            closed_while_running.append(m.segment.filename)
            if isinstance(m, SegmentClosed) and graph.state is GraphState.RUNNING
            else None
        )
    )
    await graph.start()
    await asyncio.sleep(seconds)
    assert await graph.stop() is GraphState.COMPLETE, graph.error
    return stages.outputs.segments[outputs[0]], closed_while_running


@pytest.mark.slow
async def test_hls_segments_and_playlists(rooms, tmp_path):
    room = rooms.get_or_create("hls")
    await room.publish(SyntheticVideoTrack((220, 40, 40)), identity="alice")
    await room.publish(SineAudioTrack(440.0), identity="alice")
    four = SegmentsOutput(tmp_path / "four" / "rec", live_playlist="rec-live", segment_duration=4)
    two = SegmentsOutput(
        tmp_path / "two" / "short",
        playlist="index.m3u8",
        live_playlist="live.m3u8",
        segment_duration=2,
        suffix=SegmentSuffix.TIMESTAMP,
    )
    # both recordings run at once, from the same room
    (four_hls, four_early), (two_hls, two_early) = await asyncio.gather(
        record(room, [four], 13.0, "four"), record(room, [two], 13.0, "two")
    )

    # 4 s segments: ffprobe reads the whole recording through the playlist
    playlist = tmp_path / "four" / "rec.m3u8"
    info = ffprobe(playlist)
    assert abs(float(info["format"]["duration"]) - 13.0) <= 0.7, info["format"]
    assert stream(info, "video")["codec_name"] == "h264"
    assert stream(info, "audio")["codec_name"] == "aac"
    entries = playlist_entries(playlist)
    assert [uri for _, uri in entries] == [f"rec_{i:05d}.ts" for i in range(4)]
    for index, (_, uri) in enumerate(entries):
        segment = playlist.parent / uri
        duration = float(ffprobe(segment)["format"]["duration"])
        if index < len(entries) - 1:
            assert abs(duration - 4.0) <= 0.4, f"{uri} lasts {duration:.2f} s"
        assert first_video_packet_is_key(segment), f"{uri} does not start with a key frame"
    text = playlist.read_text()
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in text and text.rstrip().endswith("#EXT-X-ENDLIST")
    stamps = re.findall(r"#EXT-X-PROGRAM-DATE-TIME:(\S+)", text)
    assert len(stamps) == 4
    times = [datetime.fromisoformat(s.replace("Z", "+00:00")) for s in stamps]
    assert all(abs((b - a).total_seconds() - 4.0) < 0.1 for a, b in itertools.pairwise(times))
    # the results match the files, and every segment but the last was announced while recording
    results = four_hls.results
    assert results.segment_count == 4 and results.playlist == playlist
    assert results.size == sum((playlist.parent / uri).stat().st_size for _, uri in entries)
    assert abs(results.duration_s - 13.0) <= 0.7
    assert four_early[:3] == ["rec_00000.ts", "rec_00001.ts", "rec_00002.ts"]

    # 2 s segments named by timestamp: the live playlist holds the last five
    index = tmp_path / "two" / "index.m3u8"
    all_segments = playlist_entries(index)
    assert len(all_segments) == 7, all_segments
    assert all(re.fullmatch(r"short_\d{17}\.ts", uri) for _, uri in all_segments)
    first = datetime.strptime(all_segments[0][1][6:20], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    assert abs((first - datetime.now(UTC)).total_seconds()) < 60
    live = tmp_path / "two" / "live.m3u8"
    assert playlist_entries(live) == all_segments[-5:]
    assert "#EXT-X-MEDIA-SEQUENCE:2" in live.read_text()
    assert (
        abs(float(ffprobe(live)["format"]["duration"]) - sum(d for d, _ in all_segments[-5:])) < 0.5
    )
    assert two_hls.results.live_playlist == live
    assert len(two_early) >= 6


def test_playlist_names_stay_in_the_segment_directory(tmp_path):
    for playlist, live in (("../../x.m3u8", ""), ("index", str(tmp_path / "elsewhere.m3u8"))):
        with pytest.raises(PathEscapesRoot):
            segmenter(
                SegmentsOutput(tmp_path / "out" / "rec", playlist=playlist, live_playlist=live)
            )


@pytest.mark.slow
async def test_a_segment_name_planted_as_a_symlink_is_not_written_through(rooms, tmp_path):
    room = rooms.get_or_create("planted")
    await room.publish(SyntheticVideoTrack((40, 40, 220), 320, 180, 15), identity="alice")
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    os.symlink(outside / "stolen.ts", out / "rec_00001.ts")
    graph, stages = composite_graph(
        room,
        [SegmentsOutput(out / "rec", segment_duration=1)],
        video=VideoEncoding(keyframe_interval_s=1),
        audio=None,
        name="planted",
    )
    await graph.start()
    try:
        assert await graph.wait(timeout=20) is GraphState.FAILED
    finally:
        await graph.cancel()
    assert "outside" in str(graph.error)
    assert not list(outside.iterdir())
    assert first_video_packet_is_key(out / "rec_00000.ts")


async def test_an_advanced_key_frame_interval_is_kept_with_longer_segments(rooms, tmp_path):
    """2 s key frames asked with 6 s segments: the segment holds a 2 s GOP, not a 6 s one."""
    room = rooms.get_or_create("gop")
    await room.publish(SyntheticVideoTrack((40, 200, 60), 320, 180, 15), identity="alice")
    request = egress_pb.RoomCompositeEgressRequest(
        room_name="gop",
        video_only=True,
        advanced=egress_pb.EncodingOptions(
            width=320, height=180, framerate=15, video_bitrate=300, key_frame_interval=2
        ),
        segment_outputs=[
            egress_pb.SegmentedFileOutput(filename_prefix="gop/rec", segment_duration=6)
        ],
    )
    planned = plan(validate(request), "EG_gop", rooms, tmp_path)
    await planned.graph.start()
    await asyncio.sleep(4.6)
    assert await planned.graph.stop() is GraphState.COMPLETE, planned.graph.error
    keys = key_frame_times(tmp_path / "gop" / "rec_00000.ts")
    assert len(keys) == 3 and all(abs(k - 2.0 * i) < 0.1 for i, k in enumerate(keys)), keys
