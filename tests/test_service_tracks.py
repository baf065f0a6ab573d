"""Track, participant and track composite egress through the API, found with RoomService."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import WSMsgType, web
from livekit import api
from livekit.protocol import egress as egress_pb
from livekit.protocol import models
from livekit.protocol import room as room_pb
from media_checks import ffprobe, stream
from service_fixtures import API_KEY, API_SECRET, join, service_config, wait_status

from egresskit.service.app import create_app

DONE = (egress_pb.EGRESS_COMPLETE, egress_pb.EGRESS_FAILED, egress_pb.EGRESS_ABORTED)


@pytest.fixture
async def service(aiohttp_server, tmp_path):
    server = await aiohttp_server(create_app(service_config(tmp_path / "out")), host="127.0.0.1")
    server.output_dir = tmp_path / "out"
    server.base = str(server.make_url("")).rstrip("/")
    server.client = api.LiveKitAPI(server.base, API_KEY, API_SECRET)
    yield server
    await server.client.aclose()


async def track_ids(client: api.LiveKitAPI, room: str, identity: str) -> dict[int, str]:
    """Track ids by kind, as an SDK user finds them: RoomService.ListParticipants."""
    for _ in range(100):
        listed = await client.room.list_participants(room_pb.ListParticipantsRequest(room=room))
        for participant in listed.participants:
            if participant.identity == identity and len(participant.tracks) == 2:
                return {t.type: t.sid for t in participant.tracks}
        await asyncio.sleep(0.05)
    raise AssertionError(f"{identity} has not published two tracks")


@pytest.mark.slow
async def test_track_egress_of_a_track_found_with_room_service(service):
    publisher = await join(service.base, "tracks", "alice", (220, 40, 40), 440.0)
    client = service.client
    try:
        ids = await track_ids(client, "tracks", "alice")
        video = ids[models.TrackType.VIDEO]
        info = await client.egress.start_track_egress(
            egress_pb.TrackEgressRequest(
                room_name="tracks",
                track_id=video,
                file=egress_pb.DirectFileOutput(
                    filepath="t/{publisher_identity}-{track_type}-{track_id}"
                ),
            )
        )
        await wait_status(client, info.egress_id, [egress_pb.EGRESS_ACTIVE])
        await asyncio.sleep(3)
    finally:
        await publisher.close()  # unpublishing ends the egress by itself
    final = await wait_status(client, info.egress_id, DONE)
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    assert final.details == "Source closed"
    (result,) = final.file_results
    assert result.filename == f"t/alice-video-{video}.webm"
    probe = ffprobe(result.location)
    assert stream(probe, "video")["codec_name"] == "vp8"
    assert 2.0 < float(probe["format"]["duration"]) < 6.0
    manifest = json.loads((Path(result.location).parent / f"{info.egress_id}.json").read_text())
    assert (manifest["track_id"], manifest["track_kind"], manifest["track_source"]) == (
        video,
        "video",
        "camera",
    )
    assert manifest["publisher_identity"] == "alice"


async def test_unknown_track_is_not_found(service):
    publisher = await join(service.base, "tracks", "bob", (40, 60, 220), 660.0)
    try:
        with pytest.raises(api.TwirpError) as refused:
            await service.client.egress.start_track_egress(
                egress_pb.TrackEgressRequest(
                    room_name="tracks", track_id="TR_nosuchtrack", file=egress_pb.DirectFileOutput()
                )
            )
        assert refused.value.code == "not_found"
        assert refused.value.message == "track 'TR_nosuchtrack' is not published in room 'tracks'"
    finally:
        await publisher.close()


@pytest.mark.slow
async def test_participant_egress_ends_when_they_leave(service):
    publisher = await join(service.base, "people", "carol", (40, 200, 60), 440.0)
    client = service.client
    try:
        await track_ids(client, "people", "carol")
        info = await client.egress.start_participant_egress(
            egress_pb.ParticipantEgressRequest(
                room_name="people",
                identity="carol",
                file_outputs=[
                    egress_pb.EncodedFileOutput(filepath="people/{publisher_identity}.mp4")
                ],
            )
        )
        await wait_status(client, info.egress_id, [egress_pb.EGRESS_ACTIVE])
        await asyncio.sleep(2.5)
    finally:
        await publisher.close()
    final = await wait_status(client, info.egress_id, DONE)
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    (result,) = final.file_results
    assert result.filename == "people/carol.mp4"
    probe = ffprobe(result.location)
    assert (
        stream(probe, "video")["codec_name"] == "h264"
        and stream(probe, "audio")["codec_name"] == "aac"
    )


@pytest.mark.slow
async def test_track_composite_and_websocket_audio(service, aiohttp_server):
    received = {"bytes": 0, "texts": []}

    async def sink(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type == WSMsgType.BINARY:
                received["bytes"] += len(message.data)
            elif message.type == WSMsgType.TEXT:
                received["texts"].append(message.data)
        return ws

    app = web.Application()
    app.router.add_get("/pcm", sink)
    ws_server = await aiohttp_server(app, host="127.0.0.1")
    publisher = await join(service.base, "mix", "dave", (200, 200, 40), 440.0)
    client = service.client
    try:
        ids = await track_ids(client, "mix", "dave")
        audio, video = ids[models.TrackType.AUDIO], ids[models.TrackType.VIDEO]
        composite = await client.egress.start_track_composite_egress(
            egress_pb.TrackCompositeEgressRequest(
                room_name="mix",
                audio_track_id=audio,
                video_track_id=video,
                file_outputs=[egress_pb.EncodedFileOutput(filepath="mix/composite.mp4")],
            )
        )
        pcm = await client.egress.start_track_egress(
            egress_pb.TrackEgressRequest(
                room_name="mix",
                track_id=audio,
                websocket_url=str(ws_server.make_url("/pcm")).replace("http://", "ws://"),
            )
        )
        await wait_status(client, composite.egress_id, [egress_pb.EGRESS_ACTIVE])
        await asyncio.sleep(3)
    finally:
        await publisher.close()
    final = await wait_status(client, composite.egress_id, DONE)
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    probe = ffprobe(final.file_results[0].location)
    assert stream(probe, "video")["width"] == 1280 and stream(probe, "audio")["codec_name"] == "aac"
    ended = await wait_status(client, pcm.egress_id, DONE)
    assert ended.status == egress_pb.EGRESS_COMPLETE, ended.error
    seconds = received["bytes"] / (48_000 * 2 * 2)
    assert seconds > 2.0, f"only {seconds:.2f} s of PCM arrived"


@pytest.mark.slow
async def test_rooms_record_themselves_with_auto_track_egress(aiohttp_server, tmp_path):
    config = service_config(
        tmp_path,
        auto_egress={"tracks": {"filepath": "auto/{publisher_identity}/{track_type}-{track_id}"}},
    )
    server = await aiohttp_server(create_app(config), host="127.0.0.1")
    base = str(server.make_url("")).rstrip("/")
    client = api.LiveKitAPI(base, API_KEY, API_SECRET)
    publishers = []
    try:
        publishers.append(await join(base, "auto", "erin", (220, 40, 40), 440.0))
        publishers.append(await join(base, "auto", "frank", (40, 60, 220), 660.0))
        for _ in range(100):
            listed = await client.egress.list_egress(egress_pb.ListEgressRequest(room_name="auto"))
            if len(listed.items) >= 4:
                break
            await asyncio.sleep(0.05)
        assert len(listed.items) == 4, [i.track.track_id for i in listed.items]
        for item in listed.items:
            await wait_status(client, item.egress_id, [egress_pb.EGRESS_ACTIVE])
        await asyncio.sleep(2)
    finally:
        for publisher in publishers:
            await publisher.close()
        for item in listed.items:
            await wait_status(client, item.egress_id, DONE)
        await client.aclose()
    files = sorted(
        p.relative_to(tmp_path / "auto")
        for p in (tmp_path / "auto").rglob("*.*")
        if p.suffix != ".json"
    )
    assert len(files) == 4, files
    assert {f.parts[0] for f in files} == {"erin", "frank"}
    assert sorted(f.suffix for f in files) == [".ogg", ".ogg", ".webm", ".webm"]
    for f in files:
        assert float(ffprobe(tmp_path / "auto" / f)["format"]["duration"]) > 1.0


@pytest.mark.slow
async def test_start_egress_media_passthrough_records_one_track_as_it_is(service):
    publisher = await join(service.base, "media", "gina", (220, 40, 40), 440.0)
    client = service.client
    try:
        audio = (await track_ids(client, "media", "gina"))[models.TrackType.AUDIO]
        info = await client.egress.start_egress(
            egress_pb.StartEgressRequest(
                room_name="media",
                media=egress_pb.MediaSource(
                    audio=egress_pb.AudioConfig(routes=[egress_pb.AudioRoute(track_id=audio)])
                ),
                preset=egress_pb.PASSTHROUGH,
                outputs=[egress_pb.Output(file=egress_pb.FileOutput(filepath="media/{track_id}"))],
            )
        )
        await wait_status(client, info.egress_id, [egress_pb.EGRESS_ACTIVE])
        await asyncio.sleep(2)
        await client.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))
    finally:
        await publisher.close()
    final = await wait_status(client, info.egress_id, DONE)
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    (result,) = final.file_results
    assert result.filename == f"media/{audio}.ogg"
    assert stream(ffprobe(result.location), "audio")["codec_name"] == "opus"
