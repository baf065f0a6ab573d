"""Track, participant and composite egresses of a LiveKit room, the service in this process.

In-process so a test can look at what the service built (no decoder for
passthrough); driven through the `livekit-api` SDK all the same.
"""

from __future__ import annotations

import asyncio

import av
import numpy as np
import pytest
from livekit import api, rtc
from livekit.protocol import egress as egress_pb
from livekit_publishers import FPS, SdkPublisher, read_stamp
from livekit_server import LiveKitServer, unavailable_reason
from media_checks import ffprobe, frame_at, region_color, stream
from publishers import colors_close
from service_fixtures import wait_status

from egresskit.service.app import MANAGER, create_app
from egresskit.service.config import ServiceConfig

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(unavailable_reason()), reason=unavailable_reason()),
]

API_KEY, API_SECRET = "egresskit-key", "egresskit-secret-of-sufficient-length-0123"
RED, GREEN, BLUE = (220, 40, 40), (40, 200, 60), (40, 60, 220)
FULL = (300, 150, 980, 570)
DONE = (egress_pb.EGRESS_COMPLETE, egress_pb.EGRESS_FAILED, egress_pb.EGRESS_ABORTED)


@pytest.fixture(scope="module")
def livekit_server():
    with LiveKitServer() as server:
        yield server


@pytest.fixture
async def service(aiohttp_server, tmp_path, livekit_server):
    config = ServiceConfig(
        port=0,
        api_key=API_KEY,
        api_secret=API_SECRET,
        output_dir=tmp_path / "out",
        livekit_url=livekit_server.url,
        livekit_api_key=livekit_server.api_key,
        livekit_api_secret=livekit_server.api_secret,
        # the websocket receiver of these tests is on loopback
        egress_network={"allow": ["127.0.0.0/8", "::1/128"]},
    )
    server = await aiohttp_server(create_app(config), host="127.0.0.1")
    server.output_dir = tmp_path / "out"
    return server


@pytest.fixture
async def lkapi(service):
    client = api.LiveKitAPI(str(service.make_url("")).rstrip("/"), API_KEY, API_SECRET)
    yield client
    await client.aclose()


def stamps(path) -> list[int]:
    with av.open(str(path)) as container:
        return [read_stamp(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]


async def test_h264_track_passthrough_keeps_every_frame(service, lkapi, livekit_server):
    pub = await SdkPublisher(
        livekit_server,
        "h264",
        "alice",
        color=RED,
        tone=None,
        video_codec=rtc.VideoCodec.H264,
        stamp=True,
    ).start()
    try:
        await asyncio.sleep(0.5)
        info = await lkapi.egress.start_track_egress(
            egress_pb.TrackEgressRequest(
                room_name="h264",
                track_id=pub.video_sid,
                file=egress_pb.DirectFileOutput(filepath="alice.mp4"),
            )
        )
        session = service.app[MANAGER].get(info.egress_id)
        track = session.plan.room.track(pub.video_sid)
        assert track.mime_type.lower() == "video/h264"
        await wait_status(lkapi, info.egress_id, [egress_pb.EGRESS_ACTIVE])
        await asyncio.sleep(5)
        await lkapi.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))
        final = await wait_status(lkapi, info.egress_id, DONE)
    finally:
        await pub.stop()
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    assert track.encoded.decoder is None, "passthrough decoded the track"
    assert track.encoded.frames_decoded == 0
    path = service.output_dir / "alice.mp4"
    video = stream(ffprobe(path), "video")
    assert video["codec_name"] == "h264"
    numbers = stamps(path)
    span = numbers[-1] - numbers[0] + 1
    assert len(numbers) > 100
    assert numbers == sorted(numbers), "frames out of order"
    assert abs(len(numbers) - span) <= 0.01 * span, f"{len(numbers)} frames of {span} sent"


def stamped_frames(path) -> list[tuple[float, int]]:
    """(pts in seconds, the publisher's frame number) of every frame of a file."""
    with av.open(str(path)) as container:
        return [
            (float(f.pts * f.time_base), read_stamp(f.to_ndarray(format="rgb24")))
            for f in container.decode(video=0)
        ]


async def test_track_egress_survives_joining_again(service, lkapi, livekit_server):
    """The server loses egresskit's session (node failure: resuming is refused), the room
    joins afresh with a new PC: the track egress records on in the same file, its frames
    still on the publisher's timeline, and ends COMPLETE when stopped."""
    from livekit.protocol import rtc as rtc_pb

    pub = await SdkPublisher(
        livekit_server, "rejoin-track", "alice", color=RED, tone=None,
        video_codec=rtc.VideoCodec.H264, stamp=True,
    ).start()  # fmt: skip
    try:
        await asyncio.sleep(0.5)
        info = await lkapi.egress.start_track_egress(
            egress_pb.TrackEgressRequest(
                room_name="rejoin-track",
                track_id=pub.video_sid,
                file=egress_pb.DirectFileOutput(filepath="alice.mp4"),
            )
        )
        room = service.app[MANAGER].get(info.egress_id).plan.room
        await wait_status(lkapi, info.egress_id, [egress_pb.EGRESS_ACTIVE])
        await asyncio.sleep(2)
        await room._signal.send(
            rtc_pb.SignalRequest(simulate=rtc_pb.SimulateScenario(node_failure=True))
        )
        async with asyncio.timeout(10):
            while room.rejoined < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        rejoined_at = pub.frames_sent
        await asyncio.sleep(3)
        await lkapi.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))
        final = await wait_status(lkapi, info.egress_id, DONE)
    finally:
        await pub.stop()
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    frames = stamped_frames(service.output_dir / "alice.mp4")
    numbers = [n for _, n in frames]
    assert numbers == sorted(numbers), "frames out of order"
    after = [n for n in numbers if n > rejoined_at]
    assert len(after) >= 60, f"{len(after)} frames recorded after joining again"
    # every frame where the publisher's numbering puts it: the time between two frames is
    # what their numbers say, across the new connection too (missing frames only leave a pause)
    (pts0, n0) = frames[0]
    drift = [abs((pts - pts0) - (n - n0) / FPS) for pts, n in frames]
    assert max(drift) <= 0.1, f"frames off the publisher's timeline by up to {max(drift):.3f} s"


@pytest.mark.parametrize(
    ("codec", "kind", "extension", "codec_name"),
    [(rtc.VideoCodec.VP8, "video", "webm", "vp8"), (None, "audio", "ogg", "opus")],
)
async def test_vp8_and_opus_tracks(
    service, lkapi, livekit_server, codec, kind, extension, codec_name
):
    room = f"track-{extension}"
    pub = await SdkPublisher(
        livekit_server,
        room,
        "alice",
        color=RED if kind == "video" else None,
        tone=440.0 if kind == "audio" else None,
        video_codec=codec or rtc.VideoCodec.VP8,
    ).start()
    try:
        await asyncio.sleep(0.5)
        sid = pub.video_sid if kind == "video" else pub.audio_sid
        info = await lkapi.egress.start_track_egress(
            egress_pb.TrackEgressRequest(
                room_name=room,
                track_id=sid,
                file=egress_pb.DirectFileOutput(filepath=f"alice.{extension}"),
            )
        )
        await wait_status(lkapi, info.egress_id, [egress_pb.EGRESS_ACTIVE])
        await asyncio.sleep(3)
        await pub.unpublish(sid)  # the track ends: so does its egress
        final = await wait_status(lkapi, info.egress_id, DONE)
    finally:
        await pub.stop()
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    probe = ffprobe(service.output_dir / f"alice.{extension}")
    assert stream(probe, kind)["codec_name"] == codec_name
    assert float(probe["format"]["duration"]) > 2.0


async def test_new_camera_on_a_reused_transceiver(service, lkapi, livekit_server):
    pub = await SdkPublisher(livekit_server, "reuse", "alice", color=RED, tone=440.0).start()
    try:
        await asyncio.sleep(0.5)
        info = await lkapi.egress.start_participant_egress(
            egress_pb.ParticipantEgressRequest(
                room_name="reuse",
                identity="alice",
                file_outputs=[egress_pb.EncodedFileOutput(filepath="alice.mp4")],
            )
        )
        await wait_status(lkapi, info.egress_id, [egress_pb.EGRESS_ACTIVE])
        await asyncio.sleep(3)
        old = pub.video_sid
        await pub.unpublish(old)
        await asyncio.sleep(1)
        new = await pub.publish_camera(GREEN, rtc.VideoCodec.VP8)
        assert new != old
        await asyncio.sleep(4)
        session = service.app[MANAGER].get(info.egress_id)
        assert session.plan.room.track(new) is not None, "the new camera is not in the roster"
        await lkapi.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))
        final = await wait_status(lkapi, info.egress_id, DONE)
    finally:
        await pub.stop()
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    path = service.output_dir / "alice.mp4"
    duration = float(ffprobe(path)["format"]["duration"])
    assert colors_close(region_color(frame_at(path, 2.0), *FULL), RED)
    last = region_color(frame_at(path, duration - 0.5), *FULL)
    assert colors_close(last, GREEN), last


async def test_vp9_track_is_skipped_with_a_warning(service, lkapi, livekit_server):
    vp9 = await SdkPublisher(
        livekit_server, "vp9", "carol", color=RED, tone=None, video_codec=rtc.VideoCodec.VP9
    ).start()
    vp8 = await SdkPublisher(livekit_server, "vp9", "dave", color=GREEN, tone=440.0).start()
    try:
        await asyncio.sleep(0.5)
        info = await lkapi.egress.start_room_composite_egress(
            egress_pb.RoomCompositeEgressRequest(
                room_name="vp9",
                file_outputs=[egress_pb.EncodedFileOutput(filepath="vp9.mp4")],
            )
        )
        assert "VP9" in info.details.upper() and vp9.video_sid in info.details, info.details
        await wait_status(lkapi, info.egress_id, [egress_pb.EGRESS_ACTIVE])
        await asyncio.sleep(3)
        await lkapi.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))
        final = await wait_status(lkapi, info.egress_id, DONE)
    finally:
        await vp9.stop()
        await vp8.stop()
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    assert vp9.video_sid in final.details and "cannot receive" in final.details, final.details
    path = service.output_dir / "vp9.mp4"
    probe = ffprobe(path)
    assert stream(probe, "audio")["codec_name"] == "aac"
    image = frame_at(path, 2.0)
    assert any(
        colors_close(region_color(image, x, 220, x + 400, 500), GREEN) for x in (100, 740)
    ), "dave's tile is not in the composite"


async def test_reused_transceiver_among_other_video(service, lkapi, livekit_server):
    """With two video m-lines, RTP is routed by SSRC: the reused m-line's new SSRC must be known."""
    alice = await SdkPublisher(livekit_server, "reuse2", "alice", color=RED, tone=None).start()
    bob = await SdkPublisher(livekit_server, "reuse2", "bob", color=BLUE, tone=None).start()
    try:
        await asyncio.sleep(0.5)
        info = await lkapi.egress.start_room_composite_egress(
            egress_pb.RoomCompositeEgressRequest(
                room_name="reuse2",
                video_only=True,
                file_outputs=[egress_pb.EncodedFileOutput(filepath="reuse2.mp4")],
            )
        )
        await wait_status(lkapi, info.egress_id, [egress_pb.EGRESS_ACTIVE])
        await asyncio.sleep(2)
        await alice.unpublish(alice.video_sid)
        await asyncio.sleep(1)
        await alice.publish_camera(GREEN, rtc.VideoCodec.VP8)
        await asyncio.sleep(4)
        await lkapi.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))
        final = await wait_status(lkapi, info.egress_id, DONE)
    finally:
        await alice.stop()
        await bob.stop()
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    path = service.output_dir / "reuse2.mp4"
    duration = float(ffprobe(path)["format"]["duration"])
    image = frame_at(path, duration - 0.5)
    tiles = [region_color(image, x, 220, x + 400, 500) for x in (100, 740)]
    assert any(colors_close(c, GREEN) for c in tiles), tiles
    assert any(colors_close(c, BLUE) for c in tiles), tiles


async def test_unreachable_livekit_server_is_unavailable(aiohttp_server, tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = ServiceConfig(
        port=0,
        api_key=API_KEY,
        api_secret=API_SECRET,
        output_dir=tmp_path,
        livekit_url=f"ws://127.0.0.1:{port}",
        livekit_api_key="k",
        livekit_api_secret="s" * 32,
    )
    server = await aiohttp_server(create_app(config), host="127.0.0.1")
    client = api.LiveKitAPI(str(server.make_url("")).rstrip("/"), API_KEY, API_SECRET)
    try:
        with pytest.raises(api.TwirpError) as caught:
            await client.egress.start_room_composite_egress(
                egress_pb.RoomCompositeEgressRequest(
                    room_name="r", file_outputs=[egress_pb.EncodedFileOutput(filepath="r.mp4")]
                )
            )
    finally:
        await client.aclose()
    assert caught.value.code == "unavailable"
    assert "cannot reach LiveKit server" in caught.value.message
    assert "s" * 32 not in caught.value.message


async def test_audio_track_to_a_websocket(aiohttp_server, service, lkapi, livekit_server):
    from test_websocket_egress import pcm_server

    ws_server, receiver = await pcm_server(aiohttp_server, "accept")
    pub = await SdkPublisher(livekit_server, "ws", "alice", color=None, tone=440.0).start()
    try:
        await asyncio.sleep(0.5)
        info = await lkapi.egress.start_track_egress(
            egress_pb.TrackEgressRequest(
                room_name="ws",
                track_id=pub.audio_sid,
                websocket_url=str(ws_server.make_url("/audio").with_scheme("ws")),
            )
        )
        await asyncio.wait_for(receiver.first_audio.wait(), 15)
        await asyncio.sleep(2)
        await lkapi.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))
        final = await wait_status(lkapi, info.egress_id, DONE)
    finally:
        await pub.stop()
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    pcm = np.frombuffer(b"".join(receiver.pcm), np.int16).reshape(-1, 2)[:, 0].astype(float)
    assert len(pcm) > 48000, len(pcm)
    spectrum = np.abs(np.fft.rfft(pcm[-48000:]))
    assert abs(np.argmax(spectrum) - 440) <= 5  # 1 Hz bins over one second


async def test_segments_and_images_of_a_livekit_room(service, lkapi, livekit_server):
    pub = await SdkPublisher(livekit_server, "hls", "alice", color=RED, tone=440.0).start()
    try:
        await asyncio.sleep(0.5)
        info = await lkapi.egress.start_room_composite_egress(
            egress_pb.RoomCompositeEgressRequest(
                room_name="hls",
                segment_outputs=[
                    egress_pb.SegmentedFileOutput(
                        filename_prefix="hls/seg", playlist_name="index.m3u8", segment_duration=2
                    )
                ],
                image_outputs=[
                    egress_pb.ImageOutput(capture_interval=2, filename_prefix="img/snap")
                ],
            )
        )
        await wait_status(lkapi, info.egress_id, [egress_pb.EGRESS_ACTIVE])
        await asyncio.sleep(6)
        await lkapi.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))
        final = await wait_status(lkapi, info.egress_id, DONE)
    finally:
        await pub.stop()
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    playlist = (service.output_dir / "hls" / "index.m3u8").read_text()
    segments = [line for line in playlist.splitlines() if line.endswith(".ts")]
    assert len(segments) >= 2, playlist
    assert colors_close(
        region_color(frame_at(service.output_dir / "hls" / segments[1], 1e6), *FULL),
        RED,  # its last
    )
    images = sorted((service.output_dir / "img").glob("snap*"))
    assert len(images) >= 2, images
