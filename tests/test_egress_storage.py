"""Recordings through the Egress service into every storage backend, and what happens on faults.

Each test runs the service on 127.0.0.1, publishes an in-process participant into its
room, records a short room composite with the LiveKit Python SDK, and checks the upload
with the backend's own client: listed, downloaded, decoded by ffprobe, and pointed at by
``location`` and the manifest. Nothing is mocked: S3 is moto, GCS gcp-storage-emulator,
Azure Azurite, AliOSS moto's S3 application.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import logging
import site
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from google.protobuf.json_format import MessageToJson
from livekit import api
from livekit.protocol import egress as egress_pb
from media_checks import ffprobe, stream
from publishers import SineAudioTrack, SyntheticVideoTrack
from service_fixtures import (
    API_KEY,
    API_SECRET,
    WebhookLog,
    join,
    service_config,
    wait_status,
)
from storage_servers import ForwardProxy, MotoServer, free_port, unique_name, wait_for_port

from egresskit.client import EgressClient, RoomCompositeEgressRequest, StopEgressRequest
from egresskit.service.app import ROOMS, create_app
from egresskit.service.config import load_config
from egresskit.tokens import create_token

pytestmark = pytest.mark.slow

ROOM = "storage-room"
FILEPATH = "rooms/{room_name}-call.mp4"
KEY = f"rooms/{ROOM}-call.mp4"
DONE = (egress_pb.EGRESS_COMPLETE, egress_pb.EGRESS_FAILED, egress_pb.EGRESS_ABORTED)
# Small and cheap to encode: the tests are about where the file goes, not its pictures.
ENCODING = egress_pb.EncodingOptions(width=320, height=180, framerate=15, video_bitrate=300)
RECORD_SECONDS = 2.0
# Fault tests wait little between attempts.
FAST_RETRY = {"upload_attempts": 3, "upload_initial_delay": 0.05, "upload_max_delay": 0.1}


@dataclass
class Service:
    base: str
    output_dir: Path
    lkapi: api.LiveKitAPI
    webhooks: WebhookLog


@pytest.fixture
async def start_service(aiohttp_server, tmp_path, webhooks):
    """Start the service with config overrides; its room already has a publisher."""
    clients: list[api.LiveKitAPI] = []

    async def start(**overrides) -> Service:
        output_dir = tmp_path / "out"
        app = create_app(service_config(output_dir, webhooks.url, **overrides))
        server = await aiohttp_server(app, host="127.0.0.1")
        room = app[ROOMS].get_or_create(ROOM)
        await room.publish(SyntheticVideoTrack((200, 60, 40), 320, 180, fps=15), identity="ana")
        await room.publish(SineAudioTrack(440.0), identity="ana")
        base = str(server.make_url("")).rstrip("/")
        clients.append(api.LiveKitAPI(base, API_KEY, API_SECRET))
        return Service(base, output_dir, clients[-1], webhooks)

    yield start
    for client in clients:
        await client.aclose()


async def record(service: Service, output: egress_pb.EncodedFileOutput) -> egress_pb.EgressInfo:
    """Record the room for a couple of seconds into ``output``; the final EgressInfo."""
    info = await service.lkapi.egress.start_room_composite_egress(
        egress_pb.RoomCompositeEgressRequest(
            room_name=ROOM, file_outputs=[output], advanced=ENCODING
        )
    )
    await wait_status(service.lkapi, info.egress_id, [egress_pb.EGRESS_ACTIVE])
    await asyncio.sleep(RECORD_SECONDS)
    await service.lkapi.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))
    return await wait_status(service.lkapi, info.egress_id, DONE, timeout=60)


def assert_recording(path: Path) -> None:
    """The file is the room composite: H.264 at the requested size with AAC, ~2 s long."""
    probe = ffprobe(path)
    video = stream(probe, "video")
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 320, 180)
    assert stream(probe, "audio")["codec_name"] == "aac"
    assert 1.0 < float(probe["format"]["duration"]) < 10.0


def manifest_key(info: egress_pb.EgressInfo) -> str:
    return f"rooms/{info.egress_id}.json"


def assert_points_at(info: egress_pb.EgressInfo, manifest: dict, location: str) -> None:
    (result,) = info.file_results
    assert result.filename == KEY and result.location == location
    assert info.file.location == location
    assert manifest["egress_id"] == info.egress_id
    assert manifest["files"] == [{"filename": KEY, "location": location}]


# --- one recording per backend -----------------------------------------------------------


@dataclass
class Target:
    """A backend as a test sees it: the request field, the expected URLs, its own client."""

    output: dict
    url: str  # the location prefix: objects are at f"{url}/{key}"
    names: Callable[[], Awaitable[list[str]]]
    get: Callable[[str], Awaitable[bytes]]

    async def list_and_get(self, key: str) -> tuple[list[str], bytes]:
        return await self.names(), await self.get(key)


def s3_target(moto_server, bucket) -> Target:
    client = moto_server.boto3_client()

    async def names() -> list[str]:
        return [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]

    async def get(key: str) -> bytes:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()

    upload = egress_pb.S3Upload(
        access_key="testing",
        secret="testing",
        region="us-east-1",
        endpoint=moto_server.url,
        bucket=bucket,
        force_path_style=True,
    )
    return Target({"s3": upload}, f"{moto_server.url}/{bucket}", names, get)


# A service-account key file in the shape Google issues; the emulator never checks it.
GCP_CREDENTIALS = json.dumps(
    {
        "type": "service_account",
        "project_id": "egresskit-test",
        "private_key_id": "0123456789abcdef-key-id",
        "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEfake\n-----END PRIVATE KEY-----\n",
        "client_email": "recorder@egresskit-test.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
)


def gcp_target(emulator, bucket) -> Target:
    from gcloud.aio.storage import Storage as GcsClient

    async def names() -> list[str]:
        async with GcsClient(api_root=emulator.url) as client:
            return [o["name"] for o in (await client.list_objects(bucket)).get("items", [])]

    async def get(key: str) -> bytes:
        async with GcsClient(api_root=emulator.url) as client:
            return await client.download(bucket, key)

    upload = egress_pb.GCPUpload(bucket=bucket, credentials=GCP_CREDENTIALS)
    return Target({"gcp": upload}, f"{emulator.url}/{bucket}", names, get)


def azure_target(azurite, container) -> Target:
    async def names() -> list[str]:
        with azurite.service_client() as service:
            return [b.name for b in service.get_container_client(container).list_blobs()]

    async def get(key: str) -> bytes:
        with azurite.service_client() as service:
            blob = service.get_container_client(container).get_blob_client(key)
            return blob.download_blob().readall()

    upload = egress_pb.AzureBlobUpload(
        account_name=azurite.ACCOUNT, account_key=azurite.KEY, container_name=container
    )
    return Target({"azure": upload}, f"{azurite.account_url}/{container}", names, get)


def alioss_target(oss_target, bucket) -> Target:
    target = s3_target(oss_target, bucket)
    upload = egress_pb.AliOSSUpload(
        access_key="LTAI-egress-test",
        secret="oss-egress-secret",
        region="cn-hangzhou",
        endpoint=oss_target.url,
        bucket=bucket,
    )
    return Target({"aliOSS": upload}, target.url, target.names, target.get)


@pytest.fixture(params=["s3", "gcp", "azure", "alioss"])
def target(request) -> Target:
    name = f"rec-{request.param}-{uuid.uuid4().hex[:8]}"
    if request.param == "s3":
        server = request.getfixturevalue("moto_server")
        return s3_target(server, server.create_bucket(name))
    if request.param == "gcp":
        emulator = request.getfixturevalue("gcs_emulator_env")
        return gcp_target(emulator, emulator.create_bucket(name))
    if request.param == "azure":
        azurite = request.getfixturevalue("azurite_env")
        return azure_target(azurite, azurite.create_container(name))
    server = request.getfixturevalue("oss_target")
    return alioss_target(server, server.create_bucket(name))


async def test_room_composite_recorded_straight_to_backend(start_service, target, tmp_path):
    service = await start_service()
    info = await record(service, egress_pb.EncodedFileOutput(filepath=FILEPATH, **target.output))
    assert info.status == egress_pb.EGRESS_COMPLETE, info.error
    assert not info.backup_storage_used

    names, body = await target.list_and_get(KEY)
    assert sorted(names) == sorted([KEY, manifest_key(info)])
    downloaded = tmp_path / "downloaded.mp4"
    downloaded.write_bytes(body)
    assert_recording(downloaded)
    assert info.file_results[0].size == len(body)

    _, manifest = await target.list_and_get(manifest_key(info))
    assert info.manifest_location == f"{target.url}/{manifest_key(info)}"
    assert_points_at(info, json.loads(manifest), f"{target.url}/{KEY}")
    # Uploaded recordings do not stay behind on the service's disk.
    assert not (service.output_dir / KEY).exists()


async def test_discard_deletes_segments_already_uploaded_to_backend(start_service, target):
    """StopEgress with discard (egresskit.client): what was uploaded while recording is gone."""
    service = await start_service()
    segments = egress_pb.SegmentedFileOutput(
        filename_prefix="hls/discarded",
        playlist_name="discarded.m3u8",
        segment_duration=1,
        **target.output,
    )
    async with EgressClient(service.base, API_KEY, API_SECRET) as client:
        info = await client.start_room_composite_egress(
            RoomCompositeEgressRequest(
                request=egress_pb.RoomCompositeEgressRequest(
                    room_name=ROOM, segment_outputs=[segments], advanced=ENCODING
                )
            )
        )
        for _ in range(200):
            uploaded = await target.names()
            if any(name.endswith(".ts") for name in uploaded):
                break
            await asyncio.sleep(0.1)
        assert any(name.endswith(".ts") for name in uploaded), "no segment uploaded in 20 s"
        await client.stop_egress(StopEgressRequest(egress_id=info.egress_id, discard=True))
    final = await wait_status(service.lkapi, info.egress_id, DONE, timeout=60)
    assert final.status == egress_pb.EGRESS_ABORTED, final.error
    assert final.details == "discarded" and not final.error
    assert await target.names() == []


# --- S3 request options ------------------------------------------------------------------

S3_HOST = "s3.egresskit.test"


@pytest.fixture(scope="module")
def named_moto():
    """moto answering as http://s3.egresskit.test:<port> (reached through the test proxy)."""
    with MotoServer(endpoint_host=S3_HOST) as server:
        yield server


async def test_s3_options_and_proxy_reach_the_object(start_service, named_moto, request):
    bucket = named_moto.create_bucket(unique_name(request))
    endpoint = f"http://{S3_HOST}:{named_moto.port}"
    service = await start_service()
    async with ForwardProxy(hosts={S3_HOST: "127.0.0.1"}) as proxy:
        upload = egress_pb.S3Upload(
            access_key="testing",
            secret="testing",
            region="us-east-1",
            endpoint=endpoint,
            bucket=bucket,
            force_path_style=True,
            metadata={"room": ROOM, "team": "video"},
            tagging="project=egresskit&kind=call",
            content_disposition='attachment; filename="call.mp4"',
            proxy=egress_pb.ProxyConfig(url=proxy.url, username="rec", password="proxy-pw-123"),
        )
        info = await record(service, egress_pb.EncodedFileOutput(filepath=FILEPATH, s3=upload))
    assert info.status == egress_pb.EGRESS_COMPLETE, info.error

    # Path style: the bucket is in the path of every request, never in the host name.
    puts = [r.target for r in proxy.requests if r.method == "PUT"]
    assert f"{endpoint}/{bucket}/{KEY}" in puts
    assert f"{endpoint}/{bucket}/{manifest_key(info)}" in puts
    assert all(r.target.startswith(f"{endpoint}/{bucket}/") for r in proxy.requests)
    assert set(proxy.credentials()) == {("rec", "proxy-pw-123")}
    assert info.file_results[0].location == f"{endpoint}/{bucket}/{KEY}"

    client = named_moto.boto3_client()
    head = client.head_object(Bucket=bucket, Key=KEY)
    assert head["Metadata"] == {"room": ROOM, "team": "video"}
    assert head["ContentType"] == "video/mp4"
    assert head["ContentDisposition"] == 'attachment; filename="call.mp4"'
    tags = client.get_object_tagging(Bucket=bucket, Key=KEY)["TagSet"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [
        ("kind", "call"),
        ("project", "egresskit"),
    ]


async def test_s3_virtual_hosted_style_when_path_style_is_off(start_service, named_moto, request):
    """LiveKit's default (force_path_style false) puts the bucket in the host name."""
    bucket = named_moto.create_bucket(unique_name(request))
    endpoint = f"http://{S3_HOST}:{named_moto.port}"
    service = await start_service()
    async with ForwardProxy(hosts={S3_HOST: "127.0.0.1"}) as proxy:
        upload = egress_pb.S3Upload(
            access_key="testing",
            secret="testing",
            region="us-east-1",
            endpoint=endpoint,
            bucket=bucket,
            proxy=egress_pb.ProxyConfig(url=proxy.url),
        )
        info = await record(service, egress_pb.EncodedFileOutput(filepath=FILEPATH, s3=upload))
    assert info.status == egress_pb.EGRESS_COMPLETE, info.error
    virtual = f"http://{bucket}.{S3_HOST}:{named_moto.port}/{KEY}"
    assert ("PUT", virtual) in [(r.method, r.target) for r in proxy.requests]
    assert info.file_results[0].location == virtual
    body = named_moto.boto3_client().get_object(Bucket=bucket, Key=KEY)["Body"].read()
    assert len(body) == info.file_results[0].size


# --- faults ------------------------------------------------------------------------------


class StartWhenRetrying(logging.Handler):
    """Starts the S3 server when the uploader logs its ``attempt``-th failure.

    The uploader logs each failure before it waits, so the server is up for the next try.
    """

    def __init__(self, server: MotoServer, bucket: str, attempt: int) -> None:
        super().__init__(logging.WARNING)
        self.server, self.bucket, self.attempt = server, bucket, attempt
        self.failures: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not record.getMessage().startswith(f"upload of {KEY} to s3 failed (attempt"):
            return
        failed = record.args[2]  # type: ignore[index]
        self.failures.append(failed)
        if failed == self.attempt:
            self.server.start()
            self.server.create_bucket(self.bucket)


def s3_upload_at(url: str, bucket: str, **fields) -> egress_pb.S3Upload:
    return egress_pb.S3Upload(
        access_key="testing",
        secret="testing",
        region="us-east-1",
        endpoint=url,
        bucket=bucket,
        force_path_style=True,
        **fields,
    )


async def test_server_down_for_two_attempts_then_the_upload_succeeds(start_service, tmp_path):
    server = MotoServer(port=free_port())
    starter = StartWhenRetrying(server, "late-bucket", attempt=2)
    uploader_log = logging.getLogger("egresskit.storage.upload")
    uploader_log.addHandler(starter)
    try:
        service = await start_service(**FAST_RETRY)
        output = egress_pb.EncodedFileOutput(
            filepath=FILEPATH, s3=s3_upload_at(server.url, "late-bucket")
        )
        info = await record(service, output)
        assert info.status == egress_pb.EGRESS_COMPLETE, info.error
        assert starter.failures == [1, 2]  # the third and last attempt succeeded
        assert info.file_results[0].location == f"{server.url}/late-bucket/{KEY}"
        body = server.boto3_client().get_object(Bucket="late-bucket", Key=KEY)["Body"].read()
        (tmp_path / "late.mp4").write_bytes(body)
        assert_recording(tmp_path / "late.mp4")
    finally:
        uploader_log.removeHandler(starter)
        server.stop()


async def test_server_stays_down_keeps_the_recording_locally(start_service):
    service = await start_service(**FAST_RETRY)
    dead = f"http://127.0.0.1:{free_port()}"
    output = egress_pb.EncodedFileOutput(filepath=FILEPATH, s3=s3_upload_at(dead, "gone"))
    info = await record(service, output)

    assert info.status == egress_pb.EGRESS_FAILED
    kept = (service.output_dir / KEY).resolve()
    assert "upload to s3 failed after 3 attempts" in info.error
    assert f"the file is kept at {kept}" in info.error
    assert info.file_results[0].location == str(kept)
    assert info.file_results[0].size == kept.stat().st_size
    assert_recording(kept)
    # The manifest could not go up either: it stays beside the recording and says where it is.
    manifest = json.loads(await asyncio.to_thread(Path(info.manifest_location).read_text))
    assert Path(info.manifest_location).parent == kept.parent
    assert manifest["files"] == [{"filename": KEY, "location": str(kept)}]
    assert not info.backup_storage_used


def playlist_entries(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


async def start_hls(service: Service, upload: egress_pb.S3Upload) -> str:
    info = await service.lkapi.egress.start_room_composite_egress(
        egress_pb.RoomCompositeEgressRequest(
            room_name=ROOM,
            advanced=ENCODING,
            segment_outputs=[
                egress_pb.SegmentedFileOutput(
                    filename_prefix="hls/p", playlist_name="index", segment_duration=1, s3=upload
                )
            ],
        )
    )
    return info.egress_id


async def remote_playlist_lists(server: MotoServer, bucket: str, count: int) -> None:
    client = server.boto3_client()
    for _ in range(300):
        with contextlib.suppress(client.exceptions.NoSuchKey):
            body = client.get_object(Bucket=bucket, Key="hls/index.m3u8")["Body"].read()
            if len(playlist_entries(body.decode())) >= count:
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the stored playlist never listed {count} segments")


async def test_stored_hls_keeps_no_local_segments(start_service, moto_server, request):
    bucket = moto_server.create_bucket(unique_name(request))
    service = await start_service(**FAST_RETRY)
    egress_id = await start_hls(service, s3_upload_at(moto_server.url, bucket))
    await remote_playlist_lists(moto_server, bucket, 2)
    await service.lkapi.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=egress_id))
    final = await wait_status(service.lkapi, egress_id, DONE, timeout=60)

    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    (segments,) = final.segment_results
    assert segments.playlist_location == f"{moto_server.url}/{bucket}/hls/index.m3u8"
    body = moto_server.boto3_client().get_object(Bucket=bucket, Key="hls/index.m3u8")["Body"]
    text = body.read().decode()
    assert "#EXT-X-ENDLIST" in text and len(playlist_entries(text)) == segments.segment_count
    # Everything is stored: the local copies are gone.
    assert not list((service.output_dir / "hls").glob("p_*.ts"))


async def test_failed_final_playlist_upload_reports_the_local_playlist(start_service):
    """The storage dies before the egress ends: the complete playlist is local, and so
    are the segments it lists; results and manifest say so, not the older remote copy."""
    server = MotoServer(port=free_port()).start()
    try:
        server.create_bucket("hls")
        service = await start_service(**FAST_RETRY)
        egress_id = await start_hls(service, s3_upload_at(server.url, "hls"))
        await remote_playlist_lists(server, "hls", 2)
    finally:
        server.stop()
    await service.lkapi.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=egress_id))
    final = await wait_status(service.lkapi, egress_id, DONE, timeout=60)

    assert final.status == egress_pb.EGRESS_FAILED
    assert "upload to s3 failed" in final.error
    (segments,) = final.segment_results
    local = (service.output_dir / "hls" / "index.m3u8").resolve()
    assert segments.playlist_location == str(local)
    text = local.read_text()
    listed = playlist_entries(text)
    assert "#EXT-X-ENDLIST" in text and len(listed) == segments.segment_count >= 2
    for name in listed:
        assert (local.parent / name).is_file(), f"{name} is listed but was deleted"
    assert float(ffprobe(local)["format"]["duration"]) >= len(listed) - 1
    manifest = json.loads(Path(final.manifest_location).read_text())
    (playlist,) = manifest["playlists"]
    assert playlist["location"] == str(local)
    for segment in playlist["segments"]:
        location = segment["location"]
        assert location.startswith(f"{server.url}/hls/") or Path(location).is_file(), location


async def test_backup_storage_takes_the_recording(start_service, moto_server, request):
    backup_bucket = moto_server.create_bucket(unique_name(request))
    backup = {
        "s3": {
            "access_key": "testing",
            "secret": "testing",
            "endpoint": moto_server.url,
            "bucket": backup_bucket,
            "force_path_style": True,
        }
    }
    service = await start_service(backup_storage=backup, **FAST_RETRY)
    dead = f"http://127.0.0.1:{free_port()}"
    output = egress_pb.EncodedFileOutput(filepath=FILEPATH, s3=s3_upload_at(dead, "gone"))
    info = await record(service, output)

    assert info.status == egress_pb.EGRESS_COMPLETE, info.error
    assert info.backup_storage_used
    location = f"{moto_server.url}/{backup_bucket}/{KEY}"
    assert info.file_results[0].location == location
    assert info.manifest_location == f"{moto_server.url}/{backup_bucket}/{manifest_key(info)}"
    client = moto_server.boto3_client()
    body = client.get_object(Bucket=backup_bucket, Key=KEY)["Body"].read()
    assert len(body) == info.file_results[0].size
    manifest = json.loads(
        client.get_object(Bucket=backup_bucket, Key=manifest_key(info))["Body"].read()
    )
    assert_points_at(info, manifest, location)


@pytest.fixture(scope="module")
def moto_with_auth():
    with MotoServer(enforce_auth=True) as server:
        yield server


async def list_egress_json(service: Service, egress_id: str) -> str:
    """ListEgress over plain HTTP+JSON, the raw text a client receives."""
    token = create_token(API_KEY, API_SECRET, video={"roomRecord": True})
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{service.base}/twirp/livekit.Egress/ListEgress",
            json={"egress_id": egress_id},
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        assert response.status == 200
        return await response.text()


async def test_wrong_credentials_fail_readably_without_the_secret(
    start_service, moto_with_auth, caplog
):
    caplog.set_level(logging.DEBUG)
    access_key, secret, session_token = (
        "AKIAEGRESSWRONG00042",
        "wr0ng/Egress+Secret/abcdef0123456789XYZ",
        "egress-session-token-secret-77",
    )
    service = await start_service(**FAST_RETRY)
    upload = egress_pb.S3Upload(
        access_key=access_key,
        secret=secret,
        session_token=session_token,
        region="us-east-1",
        endpoint=moto_with_auth.url,
        bucket="private",
        force_path_style=True,
    )
    info = await record(service, egress_pb.EncodedFileOutput(filepath=FILEPATH, s3=upload))

    assert info.status == egress_pb.EGRESS_FAILED
    assert "upload to s3 failed after 3 attempts" in info.error
    assert "InvalidAccessKeyId" in info.error or "403" in info.error
    kept = (service.output_dir / KEY).resolve()
    assert f"the file is kept at {kept}" in info.error
    assert_recording(kept)

    ended = await service.webhooks.wait_for(info.egress_id, "egress_ended")
    assert ended.egress_info.status == egress_pb.EGRESS_FAILED
    hooks = [MessageToJson(e) for e in service.webhooks.events]
    seen = {
        "EgressInfo": str(info),
        "ListEgress JSON": await list_egress_json(service, info.egress_id),
        "webhooks": "\n".join(hooks),
        "logs": caplog.text,
    }
    assert "failed after 3 attempts" in caplog.text
    for where, text in seen.items():
        for leaked in (access_key, secret, session_token):
            assert leaked not in text, f"{where} shows a credential"


# --- configuration -----------------------------------------------------------------------


def test_retry_policy_comes_from_the_server_config(tmp_path):
    path = tmp_path / "egresskit.yaml"
    path.write_text("upload_attempts: 7\nupload_initial_delay: 0.25\nupload_max_delay: 2\n")
    config = load_config({"api_key": "k", "api_secret": "s"}, {}, path)
    assert (config.upload_attempts, config.upload_initial_delay, config.upload_max_delay) == (
        7,
        0.25,
        2.0,
    )
    env = load_config({"api_key": "k", "api_secret": "s"}, {"EGRESSKIT_UPLOAD_ATTEMPTS": "2"})
    assert env.upload_attempts == 2
    path.write_text("upload_attempts: 0\n")
    with pytest.raises(ValueError, match="upload_attempts"):
        load_config({"api_key": "k", "api_secret": "s"}, {}, path)


# --- a backend that is not installed ------------------------------------------------------


def site_without(distribution: str, dest: Path) -> list[Path]:
    """Site directories like this interpreter's, minus everything ``distribution`` installed.

    The distribution's own site directory is mirrored by symbolic links into ``dest``
    without its files (dist-info, editable-install hooks, modules); other site
    directories are used as they are.
    """
    dist = importlib.metadata.distribution(distribution)
    home = Path(dist.locate_file("")).resolve()
    owned = {Path(f).parts[0] for f in dist.files or ()} - {"__pycache__"}
    for entry in home.iterdir():
        if entry.name not in owned:
            (dest / entry.name).symlink_to(entry)
    others = [Path(p) for p in site.getsitepackages() if Path(p).resolve() != home]
    return [dest, *others]


@pytest.fixture
def service_without_gcs(tmp_path):
    """`egresskit serve` in a child interpreter whose site-packages lack egresskit-gcs."""
    mirror = tmp_path / "site"
    mirror.mkdir()
    dirs = site_without("egresskit-gcs", mirror)
    launcher = (
        "import site, sys\n"
        f"for d in {[str(d) for d in dirs]!r}: site.addsitedir(d)\n"
        "from egresskit.cli import main\n"
        "sys.exit(main())\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-S", "-c", launcher, "serve", "--port", str(port)]
        + ["--api-key", API_KEY, "--api-secret", API_SECRET, "--output-dir", str(tmp_path)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


async def test_backend_that_is_not_installed_is_invalid_argument(service_without_gcs):
    publisher = await join(service_without_gcs, ROOM, "ben", (40, 60, 220), 660.0)
    client = api.LiveKitAPI(service_without_gcs, API_KEY, API_SECRET)
    try:
        with pytest.raises(api.TwirpError) as refused:
            await client.egress.start_room_composite_egress(
                egress_pb.RoomCompositeEgressRequest(
                    room_name=ROOM,
                    file_outputs=[
                        egress_pb.EncodedFileOutput(
                            filepath="r.mp4",
                            gcp=egress_pb.GCPUpload(bucket="b", credentials=GCP_CREDENTIALS),
                        )
                    ],
                )
            )
        listed = await client.egress.list_egress(egress_pb.ListEgressRequest())
    finally:
        await client.aclose()
        await publisher.close()
    assert refused.value.code == "invalid_argument"
    assert "pip install egresskit-gcs" in refused.value.message
    assert "MIIEfake" not in refused.value.message
    assert listed.items == []
