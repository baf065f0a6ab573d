"""Track egress without transcoding, over real WebRTC on 127.0.0.1.

The decoder checks read egresskit's TrackDecoder and aiortc's own decoder
thread: `decoder_worker` (in aiortc.rtcrtpreceiver) keeps the decoder it
constructs in its local `decoder`, None until a frame reaches it, which
egresskit never lets happen. These tests pin what egresskit.rooms.encoded
relies on in the aiortc versions pyproject allows.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import av
import pytest
from aiohttp.test_utils import TestServer
from aiortc import RTCRtpReceiver
from chromium import chromium_available, chromium_publisher
from h264_source import H264PacketTrack, make_h264_file, read_h264_packets
from livekit.protocol import models
from media_checks import ffprobe, stream
from publishers import (
    WHIP_API_KEY,
    WHIP_API_SECRET,
    make_publisher_token,
    next_frames,
    whip_publish,
)

from egresskit.egress.naming import TrackDescription
from egresskit.egress.track_graphs import SourceNotFound, track_graph
from egresskit.pipeline import GraphState, SourceClosed
from egresskit.rooms import LocalRoom, LocalTrack, RoomManager
from egresskit.rooms.encoded import h264_nal_types, is_keyframe, opus_samples
from egresskit.stages.passthrough import RtpTimeline

ROOM = "tracks"
WAIT_S = 20.0
FPS = 30


# --- pure pieces ---------------------------------------------------------------------


def test_rtp_timeline_counts_through_wrap_around():
    timeline = RtpTimeline()
    start = 2**32 - 6000
    positions = [timeline.advance(ts % 2**32) for ts in range(start, start + 5 * 3000, 3000)]
    assert positions == [0, 3000, 6000, 9000, 12000]
    # already unwrapped input (what aiortc hands over) gives the same steps
    unwrapped = RtpTimeline()
    assert [unwrapped.advance(ts) for ts in (2**32 - 3000, 2**32, 2**32 + 3000)] == [0, 3000, 6000]


def test_opus_packet_durations():
    assert opus_samples(bytes([0xFC, 0])) == 960  # CELT 20 ms, one frame
    assert opus_samples(bytes([0x79, 0])) == 1920  # hybrid 20 ms (config 15), two frames
    assert opus_samples(bytes([0x1B, 0x03])) == 3 * 2880  # SILK 60 ms, code 3 with 3 frames
    assert opus_samples(b"") == 0


def test_key_frame_detection():
    assert is_keyframe("video/VP8", bytes([0x10, 0x02, 0x00]))  # P bit clear
    assert not is_keyframe("video/VP8", bytes([0x11, 0x02, 0x00]))
    idr = b"\x00\x00\x00\x01\x67\x42" + b"\x00\x00\x00\x01\x68\xce" + b"\x00\x00\x01\x65\x88"
    assert h264_nal_types(idr) == {7, 8, 5}
    assert is_keyframe("video/H264", idr)
    assert not is_keyframe("video/H264", b"\x00\x00\x00\x01\x41\x9a")
    assert is_keyframe("audio/opus", b"\xfc")


# --- helpers ---------------------------------------------------------------------------


def decoder_of(receiver: RTCRtpReceiver) -> object | None:
    """The decoder aiortc's decoder thread for `receiver` holds, read from the thread's stack."""
    thread = receiver._RTCRtpReceiver__decoder_thread
    assert thread is not None and thread.is_alive(), "the receiver's decoder thread is not running"
    frame = sys._current_frames().get(thread.ident)
    while frame is not None and frame.f_code.co_name != "decoder_worker":
        frame = frame.f_back
    assert frame is not None, "aiortc's decoder_worker is not on the decoder thread's stack"
    return frame.f_locals["decoder"]


async def published_track(room: LocalRoom, identity: str, kind: int) -> LocalTrack:
    events = room.subscribe_events()
    try:
        while True:
            participant = room.participants.get(identity)
            for track in participant.tracks.values() if participant else ():
                if track.kind == kind:
                    return track
            await asyncio.wait_for(events.get(), WAIT_S)
    finally:
        room.unsubscribe_events(events)


async def until(predicate, what: str, timeout: float = WAIT_S) -> None:
    async def poll() -> None:
        while not predicate():  # noqa: ASYNC110 (stage counters have no event to wait on)
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def annex_b_units(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B access unit (3- or 4-byte start codes)."""
    units, start = [], data.find(b"\x00\x00\x01")
    while start != -1:
        begin = start + 3
        end = data.find(b"\x00\x00\x01", begin)
        unit = data[begin : len(data) if end == -1 else end]
        units.append(unit.rstrip(b"\x00") if end != -1 else unit)
        start = end
    return units


def length_prefixed_units(data: bytes) -> list[bytes]:
    """The NAL units of an MP4 sample (4-byte big-endian lengths)."""
    units, pos = [], 0
    while pos + 4 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        units.append(data[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return units


# --- H.264, byte for byte -----------------------------------------------------------------


async def test_h264_is_recorded_byte_for_byte_without_a_decoder(
    whip_server: TestServer, rooms: RoomManager, tmp_path: Path
):
    source_packets = read_h264_packets(make_h264_file(tmp_path / "source.h264", seconds=3))
    pause_at = 45
    camera = H264PacketTrack(source_packets, fps=FPS, pause_at=pause_at, pause_s=1.0)
    token = make_publisher_token(WHIP_API_KEY, WHIP_API_SECRET, ROOM, "cam")
    session = await whip_publish(
        whip_server.make_url("/"), ROOM, token, [camera], video_codec="video/H264"
    )
    room = rooms.get(ROOM)
    track = await published_track(room, "cam", models.TrackType.VIDEO)
    assert track.mime_type == "video/H264"
    description = TrackDescription.of(track)
    assert (description.track_kind, description.track_source, description.extension) == (
        "video",
        "camera",
        ".mp4",
    )
    (receiver,) = room.participants["cam"].connection.getReceivers()

    graph, stages = track_graph(room, track.sid, tmp_path / "track.mp4")
    messages = []
    graph.bus.subscribe(messages.append)
    await graph.start()
    camera.start()

    await until(lambda: stages.source.frames_in >= 20, "the first recorded frames")
    assert track.encoded.decoder is None  # recorded, never decoded
    assert track.encoded.frames_decoded == 0

    # The control: a decoded subscriber starts egresskit's decoder, and the
    # recording goes on untouched.
    decoded = track.subscribe(maxsize=5)
    frames = await next_frames(decoded, 3, timeout=WAIT_S)
    assert all(isinstance(f, av.VideoFrame) for f in frames)
    assert track.encoded.decoder.codec_name == "h264"
    assert track.encoded.frames_decoded >= 3
    track.unsubscribe(decoded)
    assert decoder_of(receiver) is None  # aiortc's own decoder thread never decodes

    await asyncio.wait_for(camera.finished.wait(), WAIT_S)
    # aiortc's jitter buffer releases a frame when the next one starts: the last stays inside
    await until(lambda: stages.source.frames_in >= len(source_packets) - 1, "every packet")
    await session.close()  # unpublished: the graph ends by itself
    assert await graph.wait(WAIT_S) is GraphState.COMPLETE, graph.error
    assert any(isinstance(m, SourceClosed) for m in messages)

    info = ffprobe(tmp_path / "track.mp4")
    video = stream(info, "video")
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 640, 360)

    with av.open(str(tmp_path / "track.mp4")) as container:
        recorded = [p for p in container.demux(container.streams.video[0]) if p.size]
        samples = [bytes(p) for p in recorded]
        times = [float(p.pts * p.time_base) for p in recorded]
        keyframes = [p.is_keyframe for p in recorded]
    assert len(source_packets) - 2 <= len(samples) <= len(source_packets)
    assert keyframes[0]
    for index, sample in enumerate(samples):  # the same NAL units, byte for byte
        assert length_prefixed_units(sample) == annex_b_units(source_packets[index]), index
    # The pause stays a pause: one step of 1 s + one frame, every other step one frame.
    steps = [round(b - a, 3) for a, b in zip(times, times[1:], strict=False)]
    assert steps[pause_at - 1] == pytest.approx(1.0 + 1 / FPS, abs=0.002)
    assert all(
        s == pytest.approx(1 / FPS, abs=0.002) for i, s in enumerate(steps) if i != pause_at - 1
    )


async def test_unknown_or_in_process_track_is_refused(rooms: RoomManager, tmp_path: Path):
    from publishers import SineAudioTrack

    room = rooms.get_or_create(ROOM)
    with pytest.raises(SourceNotFound):
        track_graph(room, "TR_unknown", tmp_path / "x.ogg")
    local = await room.publish(SineAudioTrack(), identity="synth")
    with pytest.raises(ValueError, match="no encoded media"):
        track_graph(room, local.sid, tmp_path / "x.ogg")


# --- a browser's VP8 and Opus ------------------------------------------------------------


def media_end_s(path: Path, kind: str) -> tuple[float, int, bool]:
    """Where the decoded media ends on the recording's timeline, frames decoded, first is key."""
    with av.open(str(path)) as container:
        media = container.streams.video[0] if kind == "video" else container.streams.audio[0]
        first_key = next(p for p in container.demux(media) if p.size).is_keyframe
        container.seek(0)
        end, count = 0.0, 0
        for frame in container.decode(media):
            count += 1
            duration = (
                frame.samples / frame.sample_rate
                if kind == "audio"
                else float(frame.duration * frame.time_base)
                if frame.duration
                else 0.0
            )
            end = max(end, frame.time + duration)
    return end, count, first_key


@pytest.mark.chromium
@pytest.mark.skipif(not chromium_available(), reason="Debian chromium is not installed")
async def test_browser_vp8_and_opus_become_webm_and_ogg(
    whip_server: TestServer, rooms: RoomManager, tmp_path: Path
):
    token = make_publisher_token(WHIP_API_KEY, WHIP_API_SECRET, ROOM, "browser")
    async with chromium_publisher(whip_server.make_url("/"), ROOM, token) as browser:
        await browser.wait_published(30.0)
        room = rooms.get(ROOM)
        video = await published_track(room, "browser", models.TrackType.VIDEO)
        audio = await published_track(room, "browser", models.TrackType.AUDIO)
        assert (video.mime_type, audio.mime_type) == ("video/VP8", "audio/opus")
        # Join mid-stream: the browser's first key frame is long gone, so the
        # recording must ask for one.
        await asyncio.sleep(1.0)
        runs = [
            track_graph(room, video.sid, tmp_path / "camera.webm"),
            track_graph(room, audio.sid, tmp_path / "microphone.ogg"),
        ]
        for graph, _ in runs:
            await graph.start()
        await asyncio.sleep(5.0)
        walls = [graph.clock.now() for graph, _ in runs]
        for graph, _ in runs:
            assert await graph.stop() is GraphState.COMPLETE, graph.error

    for (_, stages), wall, kind in zip(runs, walls, ("video", "audio"), strict=True):
        path = stages.writer.path
        info = ffprobe(path)
        assert stream(info, kind)["codec_name"] == ("vp8" if kind == "video" else "opus")
        end, count, first_key = media_end_s(path, kind)
        assert first_key
        assert count > (4 * 15 if kind == "video" else 4 * 50)
        assert abs(end - wall) <= 0.05 * wall, (kind, end, wall)
