"""WHEP: an aiortc viewer receives a room's tracks, passed through without any encoder."""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import aiortc.rtcrtpsender
import av
import pytest
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.codecs.h264 import NAL_TYPE_FU_A, PACKET_MAX, H264PayloadDescriptor
from aiortc.mediastreams import MediaStreamError
from h264_source import make_h264_file, read_h264_packets
from publishers import (
    WHIP_API_KEY,
    WHIP_API_SECRET,
    SineAudioTrack,
    SyntheticVideoTrack,
    colors_close,
    frame_color,
    make_publisher_token,
    tone_frequency,
    whip_publish,
)
from yarl import URL

from egresskit.rooms import RoomManager, whip_app
from egresskit.rooms.encoded import EncodedFrame
from egresskit.rooms.fanout import Packetizer
from egresskit.rooms.whep import whep_app
from egresskit.tokens import create_token

ROOM = "watch"
GREEN = (0, 200, 0)
BLUE = (0, 0, 220)


def viewer_token(room: str = ROOM, *, can_subscribe: bool = True) -> str:
    return create_token(
        WHIP_API_KEY,
        WHIP_API_SECRET,
        identity="viewer",
        video={"roomJoin": True, "room": room, "canSubscribe": can_subscribe},
    )


@pytest.fixture
async def server(aiohttp_server, rooms: RoomManager, whip_keys):
    app = web.Application()
    app.add_subapp("/whip", whip_app(rooms, whip_keys, ice_addresses=["127.0.0.1"]))
    app.add_subapp("/whep", whep_app(rooms, whip_keys, ice_addresses=["127.0.0.1"]))
    return await aiohttp_server(app, host="127.0.0.1")


@pytest.fixture
def encoder_ssrcs(monkeypatch):
    """SSRCs of the aiortc senders that built an encoder (the publishers' senders do)."""
    built: list[int] = []
    real = aiortc.rtcrtpsender.get_encoder

    def spy(codec):
        built.append(sys._getframe(1).f_locals["self"]._ssrc)
        return real(codec)

    monkeypatch.setattr(aiortc.rtcrtpsender, "get_encoder", spy)
    return built


def answered_ssrcs(pc: RTCPeerConnection) -> set[int]:
    """The SSRCs the WHEP answer announced for what the service sends."""
    sdp = pc.remoteDescription.sdp
    return {
        int(line.split()[0].split(":")[1])
        for line in sdp.splitlines()
        if line.startswith("a=ssrc:")
    }


async def whep_view(base: URL, path: str, token: str, kinds=("video", "audio")):
    """An aiortc WHEP viewer: (pc, tracks by kind) or (status, text) when refused."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for kind in kinds:
        pc.addTransceiver(kind, direction="recvonly")
    tracks = {}

    @pc.on("track")
    def on_track(track):
        tracks[track.kind] = track

    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(base.join(URL(path)), data=pc.localDescription.sdp, headers=headers) as resp,
    ):
        body = await resp.text()
        if resp.status != 201:
            await pc.close()
            return resp.status, body
        location = resp.headers["Location"]
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    return pc, tracks, location


async def frames(track, count: int, timeout: float = 20.0) -> list:
    async def collect():
        got = []
        while len(got) < count:
            try:
                got.append(await track.recv())
            except MediaStreamError:
                break
        return got

    return await asyncio.wait_for(collect(), timeout)


async def test_viewer_receives_publishers_tracks_without_encoding(
    server, rooms: RoomManager, encoder_ssrcs
):
    base = server.make_url("/")
    first = await whip_publish(
        base,
        ROOM,
        make_publisher_token(WHIP_API_KEY, WHIP_API_SECRET, ROOM, "alice"),
        [SyntheticVideoTrack(GREEN), SineAudioTrack(660)],
    )
    second = await whip_publish(
        base,
        ROOM,
        make_publisher_token(WHIP_API_KEY, WHIP_API_SECRET, ROOM, "bob"),
        [SyntheticVideoTrack(BLUE)],
    )
    async with first, second:
        pc, tracks, location = await whep_view(base, f"/whep/{ROOM}", viewer_token())
        try:
            video = await frames(tracks["video"], 10)
            assert colors_close(frame_color(video[-1]), GREEN)
            audio = await frames(tracks["audio"], 50)
            assert abs(tone_frequency(audio[-25:]) - 660) < 20
            sent = answered_ssrcs(pc)
        finally:
            await pc.close()

        # ?participant= picks bob, whose only track is video.
        pc, tracks, location = await whep_view(
            base, f"/whep/{ROOM}?participant=bob", viewer_token(), kinds=("video",)
        )
        try:
            video = await frames(tracks["video"], 10)
            assert colors_close(frame_color(video[-1]), BLUE)
            async with aiohttp.ClientSession() as http, http.delete(base.join(URL(location))) as r:
                assert r.status == 200
        finally:
            await pc.close()

        room = rooms.get(ROOM)
        assert len(encoder_ssrcs) == 3 and not sent & set(encoder_ssrcs)
        # Nothing was decoded on the service side either: passthrough only.
        assert all(t.encoded.decoder is None for t in room.tracks())


async def test_refusals(server, rooms: RoomManager):
    base = server.make_url("/")
    token = make_publisher_token(WHIP_API_KEY, WHIP_API_SECRET, ROOM, "alice")
    async with await whip_publish(base, ROOM, token, [SyntheticVideoTrack(GREEN)]):
        assert (await whep_view(base, f"/whep/{ROOM}", viewer_token(can_subscribe=False)))[0] == 403
        assert (await whep_view(base, f"/whep/{ROOM}", viewer_token("other")))[0] == 403
        assert (await whep_view(base, "/whep/other", viewer_token("other")))[0] == 404
        status, text = await whep_view(base, f"/whep/{ROOM}?participant=nobody", viewer_token())
        assert (status, text) == (404, f"no participant 'nobody' in room '{ROOM}'")
        status, text = await whep_view(base, f"/whep/{ROOM}?track=TR_x", viewer_token())
        assert status == 404 and "TR_x" in text
        # An audio-only viewer of a video-only publisher.
        status, text = await whep_view(base, f"/whep/{ROOM}", viewer_token(), kinds=("audio",))
        assert status == 400
        async with aiohttp.ClientSession() as http, http.options(base / "whep" / ROOM) as r:
            assert r.headers["Access-Control-Allow-Origin"] == "*"


async def test_h264_passes_through(server, encoder_ssrcs):
    base = server.make_url("/")
    token = make_publisher_token(WHIP_API_KEY, WHIP_API_SECRET, ROOM, "alice")
    publishing = await whip_publish(
        base, ROOM, token, [SyntheticVideoTrack(GREEN)], video_codec="video/H264"
    )
    async with publishing:
        pc, tracks, _ = await whep_view(base, f"/whep/{ROOM}", viewer_token(), kinds=("video",))
        try:
            video = await frames(tracks["video"], 10)
            assert len(video) == 10 and colors_close(frame_color(video[-1]), GREEN)
            answered = [line for line in pc.remoteDescription.sdp.splitlines() if "rtpmap" in line]
            assert any("H264/90000" in line for line in answered)
            assert not any("VP8" in line for line in answered)
            assert answered_ssrcs(pc) and not answered_ssrcs(pc) & set(encoder_ssrcs)
        finally:
            await pc.close()


async def test_lost_packets_are_resent_and_key_frame_requests_reach_the_publisher(server):
    """A viewer's NACK brings the packet back (as RTX); its PLI asks the publisher for a key frame."""
    base = server.make_url("/")
    token = make_publisher_token(WHIP_API_KEY, WHIP_API_SECRET, ROOM, "alice")
    async with await whip_publish(base, ROOM, token, [SyntheticVideoTrack(GREEN)]) as publishing:
        publisher_sender = publishing.pc.getSenders()[0]
        requests = []
        send_keyframe = publisher_sender._send_keyframe
        publisher_sender._send_keyframe = lambda: (requests.append(1), send_keyframe())

        pc, tracks, _ = await whep_view(base, f"/whep/{ROOM}", viewer_token(), kinds=("video",))
        transceiver = pc.getTransceivers()[0]
        dtls = transceiver.receiver.transport
        handle_rtp = dtls._handle_rtp_data
        dropped: set[int] = set()
        arrived = {"media": 0, "rtx": 0}

        async def lossy(data: bytes, arrival_time_ms: int) -> None:
            """Lose the first copy of every 10th media packet on the way to the viewer."""
            sequence = int.from_bytes(data[2:4], "big")
            kind = "rtx" if data[1] & 0x7F == rtx_payload_type else "media"
            if kind == "media" and sequence % 10 == 0 and sequence not in dropped:
                dropped.add(sequence)
                return
            arrived[kind] += 1
            await handle_rtp(data, arrival_time_ms)

        dtls._handle_rtp_data = lossy
        codecs = {c.mimeType.lower(): c.payloadType for c in transceiver._codecs}
        rtx_payload_type = codecs["video/rtx"]
        try:
            video = await frames(tracks["video"], 60)
            assert len(video) == 60 and colors_close(frame_color(video[-1]), GREEN)
            assert dropped and arrived["rtx"] >= len(dropped) // 2

            await asyncio.sleep(1.2)  # past the publisher's key frame request throttle
            before = len(requests)
            group = next(x for x in pc.remoteDescription.sdp.splitlines() if "ssrc-group:FID" in x)
            await transceiver.receiver._send_rtcp_pli(int(group.split()[1]))  # the media SSRC
            for _ in range(50):
                if len(requests) > before:
                    break
                await asyncio.sleep(0.1)
            assert len(requests) > before
        finally:
            await pc.close()


def test_h264_fragments_are_one_size_and_rebuild_the_stream(tmp_path):
    """Large NAL units go out as FU-A fragments of one size (one GSO send per slice), marked
    start and end, that aiortc's depacketizer turns back into a stream decoding as the original."""
    units = read_h264_packets(make_h264_file(tmp_path / "in.h264", seconds=0.5))
    packetizer = Packetizer("video/H264")
    original, rebuilt = av.CodecContext.create("h264", "r"), av.CodecContext.create("h264", "r")
    fragmented = []
    for index, unit in enumerate(units):
        payloads = packetizer.pack(
            EncodedFrame(unit, index * 3000, 90_000, index == 0, "video/H264")
        )
        assert max(map(len, payloads)) <= PACKET_MAX
        for payload in payloads:
            if payload[0] & 0x1F == NAL_TYPE_FU_A:
                if payload[1] & 0x80:
                    fragmented.append([])
                fragmented[-1].append(payload)
        stream = b"".join(H264PayloadDescriptor.parse(payload)[1] for payload in payloads)
        for before, after in zip(
            original.decode(av.Packet(unit)), rebuilt.decode(av.Packet(stream)), strict=True
        ):
            assert (before.to_ndarray() == after.to_ndarray()).all()
    assert len(fragmented) >= len(units)  # every frame had a slice larger than a packet
    for nal in fragmented:
        assert [p[1] & 0xC0 for p in nal] == [0x80] + [0] * (len(nal) - 2) + [0x40]
        assert len({len(p) for p in nal[:-1]}) == 1 and len(nal[-1]) <= len(nal[0])
