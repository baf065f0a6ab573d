"""The built-in `http` storage: PUT to a URL template, retried, secrets kept out of sight.

One test uploads to a small aiohttp receiver that answers 503 twice before
201; the other records through the service (driven by the livekit-api SDK)
into Debian's nginx with WebDAV PUT: an MP4 file and HLS segments (fMP4,
with their initialization section) land on
the server, which refuses any PUT without the configured Authorization.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from aiohttp import web
from livekit import api
from livekit.protocol import egress as egress_pb
from media_checks import ffprobe, stream
from publishers import SineAudioTrack, SyntheticVideoTrack
from service_fixtures import API_KEY, API_SECRET, service_config, wait_status
from webdav_server import WebDavServer

from egresskit.egress.redact import redact
from egresskit.service.app import ROOMS, create_app
from egresskit.storage.registry import storage_from_spec
from egresskit.storage.upload import RetryPolicy, upload_with_retry

TOKEN = "Bearer dav-secret-7f3a9c"
QUERY_SECRET = "sig-4b8e1d2a"


async def test_put_retries_after_503_and_keeps_secrets_out_of_logs(
    aiohttp_server, tmp_path, caplog
):
    received: list[tuple[str, str, str, bytes]] = []

    async def put(request: web.Request) -> web.Response:
        body = await request.read()
        received.append(
            (request.path, request.headers.get("Authorization", ""), request.content_type, body)
        )
        if len(received) <= 2:
            return web.Response(status=503, text=f"busy, try again {TOKEN}")
        return web.Response(status=201)

    app = web.Application()
    app.router.add_put("/{tail:.*}", put)
    server = await aiohttp_server(app, host="127.0.0.1")
    base = f"http://127.0.0.1:{server.port}"
    storage = storage_from_spec(
        {
            "http": {
                "url": f"{base}/store/{{key}}?token={QUERY_SECRET}",
                "headers": {"Authorization": TOKEN},
            }
        }
    )
    source = tmp_path / "a b.mp4"
    source.write_bytes(b"\x00recording" * 1000)
    caplog.set_level(logging.DEBUG)
    async with storage:
        result = await upload_with_retry(
            storage,
            source,
            "room/a b.mp4",
            "video/mp4",
            RetryPolicy(attempts=4, initial_delay=0.01),
        )
    assert result.attempts == 3 and not result.backup_used
    assert result.location == f"{base}/store/room/a%20b.mp4"
    assert [r[0] for r in received] == ["/store/room/a b.mp4"] * 3
    assert received[-1][1:] == (TOKEN, "video/mp4", source.read_bytes())
    # egresskit's own records (the receiver's access log is the test's, not egresskit's)
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("egresskit"))
    assert "503" in logged and "attempt 2/4" in logged
    for secret in (TOKEN, QUERY_SECRET):
        assert secret not in logged and secret not in repr(storage)
        assert secret not in str(storage.redacted())


ROOM = "dav-room"
ENCODING = egress_pb.EncodingOptions(width=320, height=180, framerate=15, video_bitrate=300)


@pytest.mark.slow
async def test_file_and_hls_segments_land_on_nginx_webdav(aiohttp_server, tmp_path: Path):
    with WebDavServer(TOKEN) as dav:
        storage = {"http": {"url": f"{dav.url}/rec/{{key}}", "headers": {"Authorization": TOKEN}}}
        app = create_app(service_config(tmp_path / "out", storage=storage))
        server = await aiohttp_server(app, host="127.0.0.1")
        room = app[ROOMS].get_or_create(ROOM)
        await room.publish(SyntheticVideoTrack((200, 60, 40), 320, 180, fps=15), identity="ana")
        await room.publish(SineAudioTrack(440.0), identity="ana")
        async with api.LiveKitAPI(str(server.make_url("")), API_KEY, API_SECRET) as lkapi:
            started = await lkapi.egress.start_room_composite_egress(
                egress_pb.RoomCompositeEgressRequest(
                    room_name=ROOM,
                    file_outputs=[egress_pb.EncodedFileOutput(filepath="calls/call.mp4")],
                    segment_outputs=[
                        egress_pb.SegmentedFileOutput(
                            filename_prefix="calls/live/part",
                            segment_duration=1,
                            protocol=egress_pb.HLS_FMP4_PROTOCOL,
                        )
                    ],
                    advanced=ENCODING,
                )
            )
            await wait_status(lkapi, started.egress_id, [egress_pb.EGRESS_ACTIVE])
            await asyncio.sleep(3.5)
            await lkapi.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=started.egress_id))
            info = await wait_status(
                lkapi, started.egress_id, [egress_pb.EGRESS_COMPLETE], timeout=60
            )
        stored = dav.root / "rec" / "calls"
        (file,) = info.file_results
        assert file.location == f"{dav.url}/rec/calls/call.mp4"
        probe = ffprobe(stored / "call.mp4")
        assert (stream(probe, "video")["width"], stream(probe, "audio")["codec_name"]) == (
            320,
            "aac",
        )
        (segments,) = info.segment_results
        assert segments.playlist_location == f"{dav.url}/rec/calls/live/part.m3u8"
        playlist = (stored / "live" / "part.m3u8").read_text()
        names = [line for line in playlist.splitlines() if line and not line.startswith("#")]
        assert len(names) >= 3 and "#EXT-X-ENDLIST" in playlist
        assert '#EXT-X-MAP:URI="part_init.mp4"' in playlist
        init = (stored / "live" / "part_init.mp4").read_bytes()  # uploaded too
        for name in names:
            alone = tmp_path / "segment.mp4"
            alone.write_bytes(init + (stored / "live" / name).read_bytes())
            assert stream(ffprobe(alone), "video")["codec_name"] == "h264"
        assert (stored / f"{info.egress_id}.json").exists()  # the manifest, last
        # nothing stayed behind locally, and no secret reached the caller
        assert not list((tmp_path / "out").rglob("*.m4s"))
        assert TOKEN not in str(redact(info))
        assert '"PUT /rec/calls/call.mp4 HTTP/1.1" 201' in dav.access_log()
