"""WHIP ingest over real WebRTC between aiortc peers on 127.0.0.1."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from livekit.protocol import models
from publishers import (
    WHIP_API_KEY,
    WHIP_API_SECRET,
    SineAudioTrack,
    SyntheticVideoTrack,
    WhipSession,
    colors_close,
    frame_color,
    make_publisher_token,
    next_frames,
    tone_frequency,
    whip_publish,
)

from egresskit.pipeline.link import EOS, Link
from egresskit.rooms import (
    LocalRoom,
    LocalTrack,
    ParticipantJoined,
    ParticipantLeft,
    RoomManager,
    TrackPublished,
    TrackUnpublished,
)
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
    assert alice.location.endswith(f"/whip/{ROOM}/{participant.sid}")
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
    async with aiohttp.ClientSession() as http:
        for path in (f"/whip/{ROOM}/PA_doesnotexist", "/whip/no-such-room/PA_doesnotexist"):
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
