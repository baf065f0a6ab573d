"""WHIP ingest over real WebRTC between aiortc peers on 127.0.0.1."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import aiohttp
import psutil
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, unpack_remb_fci
from livekit.protocol import models
from publishers import (
    WHIP_API_KEY,
    WHIP_API_SECRET,
    SineAudioTrack,
    SyntheticVideoTrack,
    WhipError,
    WhipSession,
    colors_close,
    frame_color,
    make_publisher_token,
    next_frames,
    tone_frequency,
    whip_publish,
)
from yarl import URL

from egresskit.pipeline.link import EOS, Link
from egresskit.rooms import (
    LocalRoom,
    LocalTrack,
    ParticipantJoined,
    ParticipantLeft,
    RoomManager,
    TrackPublished,
    TrackUnpublished,
    whip_app,
)
from egresskit.rooms.encoded import PASSTHROUGH_REMB_BPS
from egresskit.tokens import create_token

ROOM = "studio"
WAIT_S = 20.0
RED = (220, 30, 30)
BLUE = (30, 30, 220)


def token_for(identity: str, room: str = ROOM, **kwargs) -> str:
    return make_publisher_token(WHIP_API_KEY, WHIP_API_SECRET, room, identity, **kwargs)


def small_video(color: tuple[int, int, int]) -> SyntheticVideoTrack:
    return SyntheticVideoTrack(color=color, width=160, height=96, fps=15)


async def wait_for_event(link: Link, predicate, timeout: float = WAIT_S):
    while True:
        event = await asyncio.wait_for(link.get(), timeout)
        assert event is not EOS, "the room's event link ended"
        if predicate(event):
            return event


async def published_tracks(room: LocalRoom, identity: str, count: int) -> list[LocalTrack]:
    """Wait until `identity` has `count` tracks published (events), then return them."""
    events = room.subscribe_events()
    try:
        while (
            len(room.participants.get(identity).tracks if identity in room.participants else [])
            < count
        ):
            await wait_for_event(events, lambda e: isinstance(e, TrackPublished))
    finally:
        room.unsubscribe_events(events)
    return list(room.participants[identity].tracks.values())


async def assert_delivers_color(track: LocalTrack, color: tuple[int, int, int]) -> None:
    """A fresh subscriber of `track` receives frames of `color`."""
    link = track.subscribe(maxsize=5)
    try:
        frames = await next_frames(link, 5, timeout=WAIT_S)
    finally:
        track.unsubscribe(link)
    assert colors_close(frame_color(frames[-1]), color), frame_color(frames[-1])


@pytest.fixture
async def alice(whip_server: TestServer, rooms: RoomManager):
    """A publisher already in the room, whose video must keep flowing whatever else happens."""
    session = await whip_publish(
        whip_server.make_url("/"), ROOM, token_for("alice"), [small_video(RED)]
    )
    yield session
    await session.close()


async def alice_video(rooms: RoomManager) -> LocalTrack:
    room = rooms.get(ROOM)
    assert room is not None
    (track,) = await published_tracks(room, "alice", 1)
    return track


async def test_two_publishers_reach_a_subscriber(whip_server: TestServer, rooms: RoomManager):
    base = whip_server.make_url("/")
    alice = await whip_publish(
        base, ROOM, token_for("alice"), [small_video(RED), SineAudioTrack(440)]
    )
    bob = await whip_publish(
        base, ROOM, token_for("bob"), [small_video(BLUE), SineAudioTrack(1000)]
    )
    room = rooms.get(ROOM)
    assert room is not None

    for identity, color, tone in (("alice", RED, 440), ("bob", BLUE, 1000)):
        tracks = await published_tracks(room, identity, 2)
        video = next(t for t in tracks if t.kind == models.TrackType.VIDEO)
        audio = next(t for t in tracks if t.kind == models.TrackType.AUDIO)
        assert (video.mime_type, video.source) == ("video/VP8", models.TrackSource.CAMERA)
        assert (audio.mime_type, audio.source) == ("audio/opus", models.TrackSource.MICROPHONE)
        await assert_delivers_color(video, color)

        link = audio.subscribe(maxsize=50)
        frames = await next_frames(link, 40)  # 0.8 s of 20 ms frames
        assert abs(tone_frequency(frames[10:]) - tone) < tone * 0.03

    participant = room.participants["alice"]
    assert participant.name == "alice"
    # The resource is an unguessable secret, not the public participant sid.
    prefix, _, secret = alice.location.rpartition("/")
    assert prefix.endswith(f"/whip/{ROOM}") and len(secret) >= 32
    assert participant.sid not in alice.location
    assert alice.etag

    await alice.close()
    await bob.close()


async def test_delete_leaves_the_room(whip_server: TestServer, rooms: RoomManager):
    session = await whip_publish(
        whip_server.make_url("/"), ROOM, token_for("carol"), [small_video(BLUE), SineAudioTrack()]
    )
    room = rooms.get(ROOM)
    tracks = await published_tracks(room, "carol", 2)
    carol = room.participants["carol"]
    events = room.subscribe_events()
    subscriber = tracks[0].subscribe()

    async with aiohttp.ClientSession() as http, http.delete(session.location) as response:
        assert response.status in (200, 204)
        assert response.headers["Access-Control-Allow-Origin"] == "*"

    # The replay of the current state, then the session's end.
    seen = [await wait_for_event(events, lambda e: True) for _ in range(6)]
    assert seen[0] == ParticipantJoined(room, carol)
    assert set(seen[1:3]) == {TrackPublished(room, t) for t in tracks}
    assert set(seen[3:5]) == {TrackUnpublished(room, t) for t in tracks}
    assert seen[5] == ParticipantLeft(room, carol)
    assert "carol" not in room.participants

    async def until_eos() -> None:
        async for _ in subscriber:
            pass

    await asyncio.wait_for(until_eos(), WAIT_S)

    assert await session.close() == 404  # already gone


async def test_same_identity_replaces_the_session(whip_server: TestServer, rooms: RoomManager):
    base = whip_server.make_url("/")
    first = await whip_publish(base, ROOM, token_for("dave"), [small_video(RED)])
    room = rooms.get(ROOM)
    (old_track,) = await published_tracks(room, "dave", 1)
    old_participant = room.participants["dave"]

    second = await whip_publish(base, ROOM, token_for("dave"), [small_video(BLUE)])

    new_participant = room.participants["dave"]
    assert new_participant is not old_participant
    assert room.track(old_track.sid) is None
    (new_track,) = new_participant.tracks.values()
    await assert_delivers_color(new_track, BLUE)
    assert await first.close() == 404
    await second.close()


async def test_screen_share_source_from_query(whip_server: TestServer, rooms: RoomManager):
    session = await whip_publish(
        whip_server.make_url("/"),
        ROOM,
        token_for("erin"),
        [small_video(BLUE), SineAudioTrack()],
        source="screen_share",
    )
    tracks = await published_tracks(rooms.get(ROOM), "erin", 2)
    assert {t.source for t in tracks} == {
        models.TrackSource.SCREEN_SHARE,
        models.TrackSource.SCREEN_SHARE_AUDIO,
    }
    await session.close()


async def test_closed_peer_connection_leaves(whip_server: TestServer, rooms: RoomManager):
    session = await whip_publish(
        whip_server.make_url("/"), ROOM, token_for("frank"), [small_video(RED)]
    )
    room = rooms.get(ROOM)
    (track,) = await published_tracks(room, "frank", 1)
    await assert_delivers_color(track, RED)
    events = room.subscribe_events()

    await session.pc.close()  # gone without DELETE

    await wait_for_event(
        events, lambda e: isinstance(e, ParticipantLeft) and e.participant.identity == "frank"
    )
    assert room.track(track.sid) is None


async def post_offer(server: TestServer, path: str, body: str, headers: dict[str, str]):
    async with aiohttp.ClientSession() as http:
        async with http.post(server.make_url(path), data=body, headers=headers) as response:
            return response.status, await response.text(), response.headers


async def real_offer() -> str:
    """A valid offer from an aiortc peer (closed again: only its SDP is used)."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(small_video(RED), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"}


REJECTIONS = {
    "garbage SDP": (400, lambda: ("not an sdp", bearer(token_for("mallory")))),
    "SDP without media": (
        400,
        lambda: ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n", bearer(token_for("m"))),
    ),
    "missing token": (401, lambda: (None, {"Content-Type": "application/sdp"})),
    "invalid token": (401, lambda: (None, bearer("not.a.jwt"))),
    "badly signed token": (
        401,
        lambda: (
            None,
            bearer(
                make_publisher_token(WHIP_API_KEY, "wrong-secret-xxxxxxxxxxxxxxxxxxx", ROOM, "m")
            ),
        ),
    ),
    "expired token": (401, lambda: (None, bearer(token_for("mallory", ttl=-3600)))),
    "token for another room": (403, lambda: (None, bearer(token_for("mallory", room="elsewhere")))),
    "token without canPublish": (
        403,
        lambda: (None, bearer(token_for("mallory", can_publish=False))),
    ),
    "token without roomJoin": (
        403,
        lambda: (
            None,
            bearer(
                create_token(
                    WHIP_API_KEY,
                    WHIP_API_SECRET,
                    identity="m",
                    video={"room": ROOM, "canPublish": True},
                )
            ),
        ),
    ),
    "wrong content type": (
        415,
        lambda: (
            None,
            {"Authorization": f"Bearer {token_for('mallory')}", "Content-Type": "text/plain"},
        ),
    ),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
async def test_rejected_offer_leaves_others_alone(
    case: str, whip_server: TestServer, rooms: RoomManager, alice: WhipSession
):
    status, make_request = REJECTIONS[case]
    body, headers = make_request()
    if body is None:
        body = await real_offer()
    track = await alice_video(rooms)

    got, text, response_headers = await post_offer(whip_server, f"/whip/{ROOM}", body, headers)

    assert got == status, text
    assert text.strip() and len(text) < 500  # a readable message
    assert WHIP_API_SECRET not in text
    assert response_headers["Access-Control-Allow-Origin"] == "*"
    room = rooms.get(ROOM)
    assert set(room.participants) == {"alice"}
    await assert_delivers_color(track, RED)


async def test_unknown_resource_is_404(
    whip_server: TestServer, rooms: RoomManager, alice: WhipSession
):
    track = await alice_video(rooms)
    # The participant sid is public (ListParticipants, webhooks): it ends nothing.
    public_sid = rooms.get(ROOM).participants["alice"].sid
    secret = alice.location.rpartition("/")[2]
    async with aiohttp.ClientSession() as http:
        for path in (
            f"/whip/{ROOM}/PA_doesnotexist",
            "/whip/no-such-room/PA_doesnotexist",
            f"/whip/{ROOM}/{public_sid}",
            f"/whip/other-room/{secret}",
        ):
            async with http.delete(whip_server.make_url(path)) as response:
                assert response.status == 404
    assert set(rooms.get(ROOM).participants) == {"alice"}
    await assert_delivers_color(track, RED)


async def test_cors_preflight_and_trickle(whip_server: TestServer, alice: WhipSession):
    async with aiohttp.ClientSession() as http:
        preflight_headers = {
            "Origin": "http://127.0.0.1:9",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        }
        async with http.options(
            whip_server.make_url(f"/whip/{ROOM}"), headers=preflight_headers
        ) as response:
            assert response.status == 204
            headers = response.headers
        assert headers["Access-Control-Allow-Origin"] == "*"
        assert "POST" in headers["Access-Control-Allow-Methods"]
        allowed = {h.strip().lower() for h in headers["Access-Control-Allow-Headers"].split(",")}
        assert {"authorization", "content-type"} <= allowed
        exposed = {h.strip().lower() for h in headers["Access-Control-Expose-Headers"].split(",")}
        assert {"location", "etag", "link"} <= exposed

        async with http.options(alice.location, headers=preflight_headers) as response:
            assert response.status == 204
            assert "DELETE" in response.headers["Access-Control-Allow-Methods"]

        async with http.patch(
            alice.location,
            data="a=candidate:1 1 udp 1 127.0.0.1 9 typ host",
            headers={"Content-Type": "application/trickle-ice-sdpfrag"},
        ) as response:
            assert response.status == 405
            assert response.headers["Access-Control-Allow-Origin"] == "*"


# --- session hygiene: connect timeout, DELETE secret, sources, limits ------------------------


def without_candidates(sdp: str) -> str:
    """An offer naming no candidate and not ending them: ICE can never connect."""
    return "".join(
        line + "\r\n"
        for line in sdp.splitlines()
        if not line.startswith(("a=candidate:", "a=end-of-candidates"))
    )


def udp_sockets() -> int:
    return len(psutil.Process().net_connections(kind="udp"))


async def test_sessions_that_never_connect_are_closed(aiohttp_server, rooms, whip_keys):
    app = web.Application()
    app.add_subapp(
        "/whip", whip_app(rooms, whip_keys, ice_addresses=["127.0.0.1"], connect_timeout_s=1.0)
    )
    server = await aiohttp_server(app, host="127.0.0.1")
    body = without_candidates(await real_offer())
    before = udp_sockets()

    statuses = await asyncio.gather(
        *(
            post_offer(server, f"/whip/{ROOM}", body, bearer(token_for(f"ghost{i:02d}")))
            for i in range(50)
        )
    )
    assert [s for s, _, _ in statuses] == [201] * 50
    room = rooms.get(ROOM)
    assert len(room.participants) == 50 and udp_sockets() >= before + 50

    async def all_gone() -> None:
        while room.participants or udp_sockets() > before:  # noqa: ASYNC110
            await asyncio.sleep(0.1)

    await asyncio.wait_for(all_gone(), 10.0)


def sources_token(identity: str, sources: list[str]) -> str:
    return create_token(
        WHIP_API_KEY,
        WHIP_API_SECRET,
        identity=identity,
        video={"roomJoin": True, "room": ROOM, "canPublish": True, "canPublishSources": sources},
    )


async def test_can_publish_sources_is_enforced(whip_server: TestServer, rooms: RoomManager):
    base = whip_server.make_url("/")
    with pytest.raises(WhipError) as refused:
        await whip_publish(
            base, ROOM, sources_token("mic", ["microphone"]), [small_video(RED), SineAudioTrack()]
        )
    assert refused.value.status == 403 and "camera" in refused.value.text
    with pytest.raises(WhipError) as refused:
        await whip_publish(
            base, ROOM, sources_token("cam", ["camera"]), [small_video(RED)], source="screen_share"
        )
    assert refused.value.status == 403 and "screen_share" in refused.value.text
    assert rooms.get(ROOM) is None or not rooms.get(ROOM).participants

    # What the grant lists is published.
    async with await whip_publish(
        base, ROOM, sources_token("mic", ["microphone"]), [SineAudioTrack()]
    ):
        (track,) = await published_tracks(rooms.get(ROOM), "mic", 1)
        assert track.source == models.TrackSource.MICROPHONE


async def test_offer_with_too_many_media_sections(whip_server: TestServer, rooms: RoomManager):
    offer = await real_offer()
    head, _, section = offer.partition("m=")
    mid = next(line for line in section.splitlines() if line.startswith("a=mid:"))
    sections = "".join("m=" + section.replace(mid, f"a=mid:{i}") for i in range(500))
    status, text, _ = await post_offer(
        whip_server, f"/whip/{ROOM}", head + sections, bearer(token_for("greedy"))
    )
    assert status == 400 and "500 media sections" in text, text
    assert rooms.get(ROOM) is None


async def test_location_of_an_odd_room_name_is_one_path_segment(
    whip_server: TestServer, rooms: RoomManager
):
    name = "../../x"
    url = URL(f"{whip_server.make_url('/whip/')}{quote(name, safe='')}", encoded=True)
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=await real_offer(), headers=bearer(token_for("odd", room=name))) as r,
    ):
        assert r.status == 201, await r.text()
        location = r.headers["Location"]
    assert location.startswith("/whip/..%2F..%2Fx/"), location
    assert set(rooms.get(name).participants) == {"odd"}
    async with (
        aiohttp.ClientSession() as http,
        http.delete(whip_server.make_url("/").join(URL(location, encoded=True))) as r,
    ):
        assert r.status == 200
    assert not rooms.get(name).participants


async def test_publisher_known_only_from_its_checks_connects(
    whip_server: TestServer, rooms: RoomManager
):
    """No candidate in the offer (as a trickling browser sends it): the service answers
    with loopback and learns the publisher's interface address from its checks."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver(small_video(BLUE), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        status, answer, _ = await post_offer(
            whip_server,
            f"/whip/{ROOM}",
            without_candidates(pc.localDescription.sdp),
            bearer(token_for("quiet")),
        )
        assert status == 201, answer
        hosts = {line.split()[4] for line in answer.splitlines() if line.startswith("a=candidate")}
        assert hosts == {"127.0.0.1"}
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        (track,) = await published_tracks(rooms.get(ROOM), "quiet", 1)
        await assert_delivers_color(track, BLUE)
    finally:
        await pc.close()


async def remb_spy(session: WhipSession) -> list[tuple[float, int]]:
    """(loop time, bitrate) of every REMB the publisher's video sender gets from now on."""
    sender = session.pc.getSenders()[0]
    handle_rtcp = sender._handle_rtcp_packet
    rembs: list[tuple[float, int]] = []

    async def spy(packet) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            bitrate, _ = unpack_remb_fci(packet.fci)
            rembs.append((asyncio.get_running_loop().time(), bitrate))
        await handle_rtcp(packet)

    sender._handle_rtcp_packet = spy
    return rembs


async def test_decoded_track_sends_bandwidth_feedback_a_few_times_a_second(
    whip_server: TestServer, rooms: RoomManager
):
    """While its track is decoded, REMB reaches a video publisher from the receive-side
    estimate (grouped by encoded._GroupedBitrateEstimate), never more often than every
    200 ms (encoded.REMB_INTERVAL_MS) and more often than the passthrough cap's second."""
    video = small_video(RED)
    session = await whip_publish(whip_server.make_url("/"), ROOM, token_for("alice"), [video])
    try:
        (track,) = await published_tracks(rooms.get(ROOM), "alice", 1)
        link = track.subscribe(maxsize=5)  # decoded frames wanted: the track is estimated
        rembs = await remb_spy(session)
        for _ in range(100):
            while not link.empty():
                link.get_nowait()
            if len(rembs) >= 4:
                break
            await asyncio.sleep(0.1)
        assert len(rembs) >= 4
        times = [t for t, _ in rembs]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert min(gaps) >= 0.19
        assert min(gaps) < 0.9, gaps  # the estimate, not the passthrough cap once a second
        assert all(bitrate < PASSTHROUGH_REMB_BPS for _, bitrate in rembs)
    finally:
        await session.close()


async def test_passthrough_track_tells_its_sender_the_fixed_cap_once_a_second(
    whip_server: TestServer, rooms: RoomManager
):
    """A track nobody decodes runs no bandwidth estimate: its publisher hears
    encoded.PASSTHROUGH_REMB_BPS about once a second (and encodes at its own maximum)."""
    video = small_video(RED)
    session = await whip_publish(whip_server.make_url("/"), ROOM, token_for("alice"), [video])
    try:
        (track,) = await published_tracks(rooms.get(ROOM), "alice", 1)
        link = track.subscribe_encoded()
        rembs = await remb_spy(session)
        for _ in range(60):
            while not link.empty():
                link.get_nowait()
            if len(rembs) >= 3:
                break
            await asyncio.sleep(0.1)
        assert len(rembs) >= 3
        assert {bitrate for _, bitrate in rembs} == {PASSTHROUGH_REMB_BPS}
        times = [t for t, _ in rembs]
        assert min(b - a for a, b in zip(times, times[1:], strict=False)) >= 0.9
        assert track.encoded.decoder is None
    finally:
        await session.close()
