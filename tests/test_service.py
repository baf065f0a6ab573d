"""The Egress API end to end through the real LiveKit server SDKs, webhooks and bad inputs."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest
from livekit import api
from livekit.protocol import egress as egress_pb
from media_checks import ffprobe, stream
from service_fixtures import API_KEY, API_SECRET, join, service_config, wait_status

from egresskit.service.app import create_app
from egresskit.tokens import create_token

NODE_DIR = Path(__file__).with_name("node")
RED, BLUE = (220, 40, 40), (40, 60, 220)
DONE = (egress_pb.EGRESS_COMPLETE, egress_pb.EGRESS_FAILED, egress_pb.EGRESS_ABORTED)


@pytest.fixture
async def service(aiohttp_server, tmp_path, webhooks):
    app = create_app(service_config(tmp_path / "out", webhooks.url))
    server = await aiohttp_server(app, host="127.0.0.1")
    server.output_dir = tmp_path / "out"
    server.base = str(server.make_url("")).rstrip("/")
    return server


@pytest.fixture
async def lkapi(service):
    client = api.LiveKitAPI(service.base, API_KEY, API_SECRET)
    yield client
    await client.aclose()


@pytest.fixture
async def publishers(service):
    sessions = [
        await join(service.base, "standup", "alice", RED, 440.0),
        await join(service.base, "standup", "bob", BLUE, 1000.0),
    ]
    yield sessions
    for session in sessions:
        await session.close()


@pytest.mark.slow
async def test_python_sdk_records_a_room(service, lkapi, publishers, webhooks):
    info = await lkapi.egress.start_room_composite_egress(
        egress_pb.RoomCompositeEgressRequest(
            room_name="standup",
            file_outputs=[egress_pb.EncodedFileOutput(filepath="py/{room_name}-call.mp4")],
        )
    )
    assert info.egress_id.startswith("EG_") and len(info.egress_id) == 15
    assert info.status == egress_pb.EGRESS_STARTING
    await wait_status(lkapi, info.egress_id, [egress_pb.EGRESS_ACTIVE])
    listed = await lkapi.egress.list_egress(egress_pb.ListEgressRequest(room_name="standup"))
    assert [i.egress_id for i in listed.items] == [info.egress_id]
    await asyncio.sleep(3)
    stopped = await lkapi.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))
    assert stopped.status == egress_pb.EGRESS_ENDING
    final = await wait_status(lkapi, info.egress_id, DONE)
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    assert final.details == "End reason: StopEgress API"
    assert final.started_at < final.ended_at

    (result,) = final.file_results
    path = service.output_dir / "py" / "standup-call.mp4"
    assert result.filename == "py/standup-call.mp4"
    assert Path(result.location) == path.resolve()
    assert result.size == path.stat().st_size
    assert 2.5e9 < result.duration < 6e9
    probe = ffprobe(path)
    assert (
        stream(probe, "video")["codec_name"] == "h264"
        and stream(probe, "audio")["codec_name"] == "aac"
    )

    manifest = json.loads((path.parent / f"{info.egress_id}.json").read_text())
    assert manifest["egress_id"] == info.egress_id and manifest["room_name"] == "standup"
    assert manifest["files"] == [{"filename": result.filename, "location": result.location}]

    ended = await webhooks.wait_for(info.egress_id, "egress_ended")
    assert ended.egress_info.status == egress_pb.EGRESS_COMPLETE
    sequence = webhooks.of(info.egress_id)
    assert sequence[0] == ("egress_started", egress_pb.EGRESS_STARTING)
    assert sequence[1] == ("egress_updated", egress_pb.EGRESS_ACTIVE)
    assert sequence[-1] == ("egress_ended", egress_pb.EGRESS_COMPLETE)
    assert ended.room.name == "standup"

    active = await lkapi.egress.list_egress(egress_pb.ListEgressRequest(active=True))
    assert active.items == []
    everything = await lkapi.egress.list_egress(egress_pb.ListEgressRequest())
    assert [i.egress_id for i in everything.items] == [info.egress_id]


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("node"), reason="node is not installed")
async def test_node_sdk_records_a_room(service, lkapi, publishers):
    if not (NODE_DIR / "node_modules" / "livekit-server-sdk").exists():
        pytest.skip(
            "livekit-server-sdk is not installed (scripts/install-test-deps.sh installs it)"
        )
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(NODE_DIR / "egress_client.mjs"),
        service.base,
        API_KEY,
        API_SECRET,
        "standup",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=NODE_DIR,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert report["listed"] is True
    assert report["stopped_status"] in ("EGRESS_ENDING", 2)
    final = await wait_status(lkapi, report["egress_id"], DONE)
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    (result,) = final.file_results
    assert stream(ffprobe(result.location), "video")["width"] == 1280


@pytest.mark.slow
async def test_room_emptying_ends_the_egress(service, lkapi):
    session = await join(service.base, "short", "carol", RED, 440.0)
    info = await lkapi.egress.start_room_composite_egress(
        egress_pb.RoomCompositeEgressRequest(
            room_name="short", audio_only=True, file_outputs=[egress_pb.EncodedFileOutput()]
        )
    )
    await wait_status(lkapi, info.egress_id, [egress_pb.EGRESS_ACTIVE])
    await asyncio.sleep(1.0)
    await session.close()
    final = await wait_status(lkapi, info.egress_id, DONE)
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    assert final.details == "Source closed"
    (result,) = final.file_results
    assert result.filename.startswith("short-") and result.filename.endswith(".ogg")
    assert stream(ffprobe(result.location), "audio")["codec_name"] == "opus"


async def test_session_limit(aiohttp_server, tmp_path):
    app = create_app(service_config(tmp_path, max_duration_s=1.5))
    server = await aiohttp_server(app, host="127.0.0.1")
    base = str(server.make_url("")).rstrip("/")
    session = await join(base, "limited", "dave", RED, 440.0)
    client = api.LiveKitAPI(base, API_KEY, API_SECRET)
    try:
        info = await client.egress.start_room_composite_egress(
            egress_pb.RoomCompositeEgressRequest(
                room_name="limited",
                file_outputs=[egress_pb.EncodedFileOutput(filepath="limited.mp4")],
            )
        )
        final = await wait_status(client, info.egress_id, DONE + (egress_pb.EGRESS_LIMIT_REACHED,))
        assert final.status == egress_pb.EGRESS_LIMIT_REACHED
        assert final.details == "Session limit reached"
        assert float(ffprobe(tmp_path / "limited.mp4")["format"]["duration"]) > 1.0
    finally:
        await client.aclose()
        await session.close()


# --- bad inputs: exact Twirp codes, and the server keeps serving ------------------------------


def token(secret: str = API_SECRET, **overrides) -> str:
    video = overrides.pop("video", {"roomRecord": True})
    return create_token(API_KEY, secret, video=video, **overrides)


async def call(
    service,
    method: str,
    body,
    *,
    auth: str | None = "default",
    content_type="application/json",
    http_method="POST",
):
    headers = {"Content-Type": content_type}
    if auth == "default":
        auth = f"Bearer {token()}"
    if auth is not None:
        headers["Authorization"] = auth
    data = json.dumps(body) if isinstance(body, dict) else body
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            http_method, f"{service.base}/twirp/livekit.Egress/{method}", data=data, headers=headers
        ) as response,
    ):
        return response.status, await response.json(content_type=None)


def none_token() -> str:
    import base64

    def part(obj) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'iss': API_KEY, 'exp': 4102444800, 'video': {'roomRecord': True}})}."


BAD_AUTH = [
    ("no token", None),
    ("wrong secret", f"Bearer {token('not-the-secret-but-long-enough-to-sign')}"),
    ("expired", f"Bearer {token(ttl=-3600)}"),
    ("alg none", f"Bearer {none_token()}"),
    ("no roomRecord", f"Bearer {token(video={'roomJoin': True, 'room': 'x'})}"),
]


@pytest.mark.parametrize(("case", "auth"), BAD_AUTH, ids=[c for c, _ in BAD_AUTH])
async def test_bad_tokens_are_unauthenticated(service, case, auth):
    status, body = await call(service, "ListEgress", {}, auth=auth)
    assert (status, body["code"]) == (401, "unauthenticated"), body
    assert API_SECRET not in json.dumps(body)
    status, _ = await call(service, "ListEgress", {})
    assert status == 200


BAD_REQUESTS = [
    (
        "malformed json",
        "StartRoomCompositeEgress",
        "{not json",
        "application/json",
        "POST",
        400,
        "malformed",
    ),
    (
        "malformed protobuf",
        "StartRoomCompositeEgress",
        b"\xff\xff\xff\xff",
        "application/protobuf",
        "POST",
        400,
        "malformed",
    ),
    ("unknown method", "StartSomething", {}, "application/json", "POST", 404, "bad_route"),
    ("GET", "ListEgress", None, "application/json", "GET", 404, "bad_route"),
    (
        "missing room",
        "StartRoomCompositeEgress",
        {"file_outputs": [{"filepath": "a.mp4"}]},
        "application/json",
        "POST",
        400,
        "invalid_argument",
    ),
    (
        "two files",
        "StartRoomCompositeEgress",
        {"room_name": "standup", "file_outputs": [{"filepath": "a.mp4"}, {"filepath": "b.mp4"}]},
        "application/json",
        "POST",
        400,
        "invalid_argument",
    ),
    (
        "odd width",
        "StartRoomCompositeEgress",
        {
            "room_name": "standup",
            "advanced": {"width": 1281, "height": 720},
            "file_outputs": [{"filepath": "a.mp4"}],
        },
        "application/json",
        "POST",
        400,
        "invalid_argument",
    ),
    (
        "escaping path",
        "StartRoomCompositeEgress",
        {"room_name": "standup", "file_outputs": [{"filepath": "../../etc/x"}]},
        "application/json",
        "POST",
        400,
        "invalid_argument",
    ),
    (
        "unknown room",
        "StartRoomCompositeEgress",
        {"room_name": "nobody-here", "file_outputs": [{"filepath": "a.mp4"}]},
        "application/json",
        "POST",
        404,
        "not_found",
    ),
    (
        "unknown egress",
        "StopEgress",
        {"egress_id": "EG_doesnotexist"},
        "application/json",
        "POST",
        404,
        "not_found",
    ),
    (
        "custom template of an unknown room",
        "StartRoomCompositeEgress",
        {
            "room_name": "nobody-here",
            "custom_base_url": "https://example.com/t",
            "file_outputs": [{"filepath": "a.mp4"}],
        },
        "application/json",
        "POST",
        404,
        "not_found",
    ),
    (
        "bad layout",
        "UpdateLayout",
        {"egress_id": "EG_x", "layout": "mosaic"},
        "application/json",
        "POST",
        400,
        "invalid_argument",
    ),
]


@pytest.mark.parametrize(
    ("case", "method", "body", "content_type", "http_method", "status", "code"),
    BAD_REQUESTS,
    ids=[c[0] for c in BAD_REQUESTS],
)
async def test_bad_requests(
    service, publishers, case, method, body, content_type, http_method, status, code
):
    got_status, got = await call(
        service, method, body, content_type=content_type, http_method=http_method
    )
    assert (got_status, got["code"]) == (status, code), got
    assert got["msg"]
    assert not (service.output_dir.parent / "etc").exists()
    ok, listed = await call(service, "ListEgress", {})
    assert ok == 200 and listed["items"] == []


@pytest.mark.slow
async def test_stopping_twice(service, lkapi, publishers):
    info = await lkapi.egress.start_room_composite_egress(
        egress_pb.RoomCompositeEgressRequest(
            room_name="standup", file_outputs=[egress_pb.EncodedFileOutput(filepath="twice.mp4")]
        )
    )
    await wait_status(lkapi, info.egress_id, [egress_pb.EGRESS_ACTIVE])
    status, first = await call(service, "StopEgress", {"egressId": info.egress_id})
    assert status == 200 and first["status"] == "EGRESS_ENDING"
    status, second = await call(service, "StopEgress", {"egress_id": info.egress_id})
    assert (status, second["code"]) == (412, "failed_precondition")
    final = await wait_status(lkapi, info.egress_id, DONE)
    assert final.status == egress_pb.EGRESS_COMPLETE
    status, third = await call(service, "StopEgress", {"egress_id": info.egress_id})
    assert (status, third["code"]) == (412, "failed_precondition")


async def test_secrets_are_redacted(service, publishers, lkapi):
    secret = "S3-SECRET-VALUE-never-shown"
    request = egress_pb.RoomCompositeEgressRequest(
        room_name="standup",
        file_outputs=[
            egress_pb.EncodedFileOutput(
                filepath="r.mp4",
                s3=egress_pb.S3Upload(
                    access_key="AKIA-key", secret=secret, bucket="b", endpoint="http://127.0.0.1:9"
                ),
            )
        ],
    )
    info = await lkapi.egress.start_room_composite_egress(request)
    text = str(info)
    assert secret not in text and "AKIA-key" not in text
    status, listed = await call(service, "ListEgress", {"egress_id": info.egress_id})
    assert secret not in json.dumps(listed)
    assert listed["items"][0]["room_composite"]["file_outputs"][0]["s3"]["bucket"] == "b"
    await lkapi.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))


async def test_health_and_metrics(service):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{service.base}/healthz") as response:
            health = await response.json()
        async with http.get(f"{service.base}/metrics") as response:
            text = await response.text()
    assert health["status"] == "ok" and health["active_egress"] == 0
    assert "egresskit_egress_active 0" in text
