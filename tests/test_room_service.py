"""livekit.RoomService over embedded rooms, and room webhooks, through the real SDK."""

from __future__ import annotations

import aiohttp
import pytest
from livekit import api
from livekit.protocol import models
from livekit.protocol import room as room_pb
from service_fixtures import API_KEY, API_SECRET, join, service_config

from egresskit.service.app import create_app
from egresskit.tokens import create_token


@pytest.fixture
async def service(aiohttp_server, tmp_path, webhooks):
    server = await aiohttp_server(
        create_app(service_config(tmp_path, webhooks.url)), host="127.0.0.1"
    )
    server.base = str(server.make_url("")).rstrip("/")
    return server


async def test_sdk_lists_rooms_participants_and_track_ids(service, webhooks):
    publisher = await join(service.base, "lobby", "erin", (200, 30, 30), 440.0)
    client = api.LiveKitAPI(service.base, API_KEY, API_SECRET)
    try:
        rooms = await client.room.list_rooms(room_pb.ListRoomsRequest())
        assert [r.name for r in rooms.rooms] == ["lobby"]
        assert rooms.rooms[0].num_participants == 1 and rooms.rooms[0].sid.startswith("RM_")
        listed = await client.room.list_participants(room_pb.ListParticipantsRequest(room="lobby"))
        (participant,) = listed.participants
        assert participant.identity == "erin"
        kinds = sorted((t.type, t.source) for t in participant.tracks)
        assert kinds == [
            (models.TrackType.AUDIO, models.TrackSource.MICROPHONE),
            (models.TrackType.VIDEO, models.TrackSource.CAMERA),
        ]
        assert all(t.sid.startswith("TR_") and t.mime_type for t in participant.tracks)
        one = await client.room.get_participant(
            room_pb.RoomParticipantIdentity(room="lobby", identity="erin")
        )
        assert one.sid == participant.sid
        with pytest.raises(api.TwirpError) as missing:
            await client.room.list_participants(room_pb.ListParticipantsRequest(room="nowhere"))
        assert missing.value.code == "not_found"
    finally:
        await client.aclose()
        await publisher.close()

    events = []
    for name in ("participant_joined", "track_published", "track_unpublished", "participant_left"):
        events.append(await webhooks.wait_for_room("lobby", name))
    joined, published, _, left = events
    assert joined.participant.identity == "erin" and left.participant.identity == "erin"
    assert published.track.sid in {t.sid for t in participant.tracks}


async def test_room_service_needs_a_room_grant(service):
    record_only = create_token(API_KEY, API_SECRET, video={"roomRecord": True})
    for token, status in (
        (record_only, 401),
        (create_token(API_KEY, API_SECRET, video={"roomList": True}), 200),
    ):
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{service.base}/twirp/livekit.RoomService/ListRooms",
                json={},
                headers={"Authorization": f"Bearer {token}"},
            ) as response,
        ):
            assert response.status == status, await response.text()
