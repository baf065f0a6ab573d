"""Segments, images and live streams through the Egress API and the real livekit-api client."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from livekit import api
from livekit.protocol import egress as egress_pb
from media_checks import ffprobe, stream
from publishers import SineAudioTrack, SyntheticVideoTrack
from service_fixtures import API_KEY, API_SECRET, service_config, wait_status

from egresskit.service.app import ROOMS, create_app

DONE = (egress_pb.EGRESS_COMPLETE, egress_pb.EGRESS_FAILED, egress_pb.EGRESS_ABORTED)
SMALL = egress_pb.EncodingOptions(width=640, height=360, framerate=30, video_bitrate=800)


@pytest.fixture
async def service(aiohttp_server, tmp_path):
    app = create_app(service_config(tmp_path / "out"))
    server = await aiohttp_server(app, host="127.0.0.1")
    server.output_dir = tmp_path / "out"
    room = app[ROOMS].get_or_create("show")
    await room.publish(SyntheticVideoTrack((220, 40, 40)), identity="alice")
    await room.publish(SineAudioTrack(440.0), identity="alice")
    client = api.LiveKitAPI(str(server.make_url("")).rstrip("/"), API_KEY, API_SECRET)
    server.client = client
    yield server
    await client.aclose()


@pytest.mark.slow
async def test_segments_images_and_file_from_one_egress(service):
    client = service.client
    info = await client.egress.start_room_composite_egress(
        egress_pb.RoomCompositeEgressRequest(
            room_name="show",
            advanced=SMALL,
            file_outputs=[egress_pb.EncodedFileOutput(filepath="show/{room_name}.mp4")],
            segment_outputs=[
                egress_pb.SegmentedFileOutput(
                    filename_prefix="show/hls/part",
                    playlist_name="index.m3u8",
                    live_playlist_name="live.m3u8",
                    segment_duration=2,
                )
            ],
            image_outputs=[
                egress_pb.ImageOutput(
                    filename_prefix="show/thumbs/t", capture_interval=2, width=320, height=180
                )
            ],
        )
    )
    await wait_status(client, info.egress_id, [egress_pb.EGRESS_ACTIVE])
    await asyncio.sleep(7)
    await client.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))
    final = await wait_status(client, info.egress_id, DONE)
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error

    out = service.output_dir / "show"
    (segments,) = final.segment_results
    playlist = Path(segments.playlist_location)
    assert playlist == (out / "hls" / "index.m3u8").resolve()
    assert segments.live_playlist_location.endswith("live.m3u8")
    files = sorted((out / "hls").glob("part_*.ts"))
    assert segments.segment_count == len(files) >= 3
    assert segments.size == sum(f.stat().st_size for f in files)
    text = playlist.read_text()
    assert "#EXT-X-ENDLIST" in text and text.count("#EXTINF") == len(files)
    assert float(ffprobe(playlist)["format"]["duration"]) > 6

    (images,) = final.image_results
    thumbs = sorted((out / "thumbs").glob("t_*.jpeg"))
    assert images.image_count == len(thumbs) in (3, 4, 5)
    assert (
        stream(ffprobe(thumbs[0]), "video")["width"],
        stream(ffprobe(thumbs[0]), "video")["height"],
    ) == (320, 180)

    (file_result,) = final.file_results
    assert stream(ffprobe(file_result.location), "video")["width"] == 640

    manifest = json.loads((out / f"{info.egress_id}.json").read_text())
    (listed,) = manifest["playlists"]
    assert listed["location"] == segments.playlist_location
    assert [s["filename"] for s in listed["segments"]] == [f"show/hls/{f.name}" for f in files]
    assert len(manifest["images"]) == images.image_count
    assert all(i["timestamp"] for i in manifest["images"])


@pytest.mark.slow
async def test_update_stream_adds_and_removes_urls(service, rtmp_server):
    client = service.client
    first, second = rtmp_server.url("alpha-secretkey"), rtmp_server.url("beta-secretkey")
    info = await client.egress.start_room_composite_egress(
        egress_pb.RoomCompositeEgressRequest(
            room_name="show",
            advanced=SMALL,
            stream_outputs=[egress_pb.StreamOutput(protocol=egress_pb.RTMP, urls=[first])],
            file_outputs=[egress_pb.EncodedFileOutput(filepath="streamed.mp4")],
        )
    )
    assert "secretkey" not in str(info)
    await wait_status(client, info.egress_id, [egress_pb.EGRESS_ACTIVE])
    await asyncio.sleep(2)
    updated = await client.egress.update_stream(
        egress_pb.UpdateStreamRequest(egress_id=info.egress_id, add_output_urls=[second])
    )
    assert len(updated.stream_results) == 2 and "secretkey" not in str(updated)
    await asyncio.sleep(2)
    updated = await client.egress.update_stream(
        egress_pb.UpdateStreamRequest(egress_id=info.egress_id, remove_output_urls=[first])
    )
    statuses = sorted(s.status for s in updated.stream_results)
    assert statuses == [egress_pb.StreamInfo.ACTIVE, egress_pb.StreamInfo.FINISHED]
    await asyncio.sleep(2)
    await client.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))
    final = await wait_status(client, info.egress_id, DONE)
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    assert all(s.status == egress_pb.StreamInfo.FINISHED for s in final.stream_results)
    assert "secretkey" not in str(final)
    rtmp_server.stop()
    alpha = float(ffprobe(rtmp_server.recording("alpha-secretkey"))["format"]["duration"])
    beta = float(ffprobe(rtmp_server.recording("beta-secretkey"))["format"]["duration"])
    assert 3.0 <= alpha <= 5.5, alpha
    assert 3.0 <= beta <= 5.5, beta
    assert float(ffprobe(service.output_dir / "streamed.mp4")["format"]["duration"]) > 5.0


@pytest.mark.slow
async def test_stream_only_egress_ends_when_its_last_url_is_removed(service, rtmp_server):
    client = service.client
    url = rtmp_server.url("only")
    info = await client.egress.start_room_composite_egress(
        egress_pb.RoomCompositeEgressRequest(
            room_name="show", advanced=SMALL, stream_outputs=[egress_pb.StreamOutput(urls=[url])]
        )
    )
    await wait_status(client, info.egress_id, [egress_pb.EGRESS_ACTIVE])
    await asyncio.sleep(1)
    await client.egress.update_stream(
        egress_pb.UpdateStreamRequest(egress_id=info.egress_id, remove_output_urls=[url])
    )
    final = await wait_status(client, info.egress_id, DONE)
    assert final.status == egress_pb.EGRESS_COMPLETE
    assert final.details == "All streams stopped"


async def test_update_stream_needs_a_stream_output(service):
    client = service.client
    info = await client.egress.start_room_composite_egress(
        egress_pb.RoomCompositeEgressRequest(
            room_name="show",
            audio_only=True,
            file_outputs=[egress_pb.EncodedFileOutput(filepath="a.ogg")],
        )
    )
    with pytest.raises(api.TwirpError) as refused:
        await client.egress.update_stream(
            egress_pb.UpdateStreamRequest(
                egress_id=info.egress_id, add_output_urls=["rtmp://127.0.0.1:1/live/x"]
            )
        )
    assert refused.value.code == "invalid_argument"
    await client.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))


@pytest.mark.slow
async def test_stream_only_egress_fails_when_every_stream_fails(service, caplog):
    caplog.set_level(logging.DEBUG, logger="egresskit")
    client = service.client
    dead = "rtmp://127.0.0.1:9/live/nobody-listens"  # the discard port: connection refused
    info = await client.egress.start_room_composite_egress(
        egress_pb.RoomCompositeEgressRequest(
            room_name="show", advanced=SMALL, stream_outputs=[egress_pb.StreamOutput(urls=[dead])]
        )
    )
    final = await wait_status(client, info.egress_id, DONE, timeout=60)
    assert final.status == egress_pb.EGRESS_FAILED
    (result,) = final.stream_results
    assert result.status == egress_pb.StreamInfo.FAILED and result.retries >= 1
    assert result.error and "nobody-listens" not in str(final)
    # one placeholder style for the key, in the answer and in the service log alike
    assert result.url == "rtmp://127.0.0.1:9/live/{no...ns}"
    assert "rtmp://127.0.0.1:9/live/{no...ns}" in caplog.text
    assert "nobody-listens" not in caplog.text
