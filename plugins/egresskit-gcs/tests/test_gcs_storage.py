"""GCSStorage against gcp-storage-emulator, checked with gcloud-aio-storage's own client."""

from __future__ import annotations

import hashlib
import os

import pytest
from egresskit_gcs import GCSStorage
from gcloud.aio.storage import Storage as GcsClient
from livekit.protocol import egress
from storage_servers import ForwardProxy, unique_name

from egresskit.storage import open_storage, storage_for_output


@pytest.fixture
def bucket(gcs_emulator, request):
    return gcs_emulator.create_bucket(unique_name(request, "rec-"))


async def read_back(gcs_emulator, bucket: str, key: str) -> tuple[list[str], bytes]:
    async with GcsClient(api_root=gcs_emulator.url) as client:
        listed = await client.list_objects(bucket)
        data = await client.download(bucket, key)
    return [item["name"] for item in listed.get("items", [])], data


async def test_gcp_request_uploads_to_emulator(gcs_emulator_env, bucket, tmp_path):
    gcs_emulator = gcs_emulator_env
    data = os.urandom(2 * 1024 * 1024 + 5)
    (tmp_path / "room.mp4").write_bytes(data)
    output = egress.EncodedFileOutput(filepath="room.mp4", gcp=egress.GCPUpload(bucket=bucket))
    storage = storage_for_output(output)
    assert isinstance(storage, GCSStorage)
    async with storage:
        location = await storage.upload_file(tmp_path / "room.mp4", "rooms/room.mp4", "video/mp4")
    assert location == f"{gcs_emulator.url}/{bucket}/rooms/room.mp4"
    names, downloaded = await read_back(gcs_emulator, bucket, "rooms/room.mp4")
    assert names == ["rooms/room.mp4"]
    assert hashlib.sha256(downloaded).digest() == hashlib.sha256(data).digest()


async def test_upload_through_proxy_reaches_emulator(gcs_emulator, bucket, tmp_path):
    data = os.urandom(100_000)
    (tmp_path / "clip.mp4").write_bytes(data)
    async with ForwardProxy() as proxy:
        cfg = {
            "bucket": bucket,
            "endpoint": gcs_emulator.url,
            "proxy": {"url": proxy.url, "username": "gcsuser", "password": "gcs-proxy-pw"},
        }
        async with open_storage("gcp", cfg) as storage:
            await storage.upload_file(tmp_path / "clip.mp4", "clip.mp4", "video/mp4")
    uploads = [r for r in proxy.requests if f"/upload/storage/v1/b/{bucket}/o" in r.target]
    assert uploads and uploads[0].target.startswith(gcs_emulator.url)
    assert proxy.credentials()[0] == ("gcsuser", "gcs-proxy-pw")
    _, downloaded = await read_back(gcs_emulator, bucket, "clip.mp4")
    assert downloaded == data


def test_credentials_never_shown():
    creds = (
        '{"type": "service_account", "private_key_id": "kid-123456", "private_key": "pk-abcdef"}'
    )
    storage = GCSStorage.from_config(egress.GCPUpload(bucket="b", credentials=creds))
    assert "pk-abcdef" not in repr(storage) and "kid-123456" not in repr(storage)
    assert {"pk-abcdef", "kid-123456"} <= set(storage.secret_values())


async def test_delete_removes_the_object_and_a_missing_one_is_no_error(
    gcs_emulator, bucket, tmp_path
):
    (tmp_path / "seg.ts").write_bytes(os.urandom(10_000))
    async with open_storage("gcp", {"bucket": bucket, "endpoint": gcs_emulator.url}) as storage:
        for key in ("live/seg_0.ts", "live/seg_1.ts"):
            await storage.upload_file(tmp_path / "seg.ts", key, "video/mp2t")
        await storage.delete("live/seg_0.ts")
        await storage.delete("live/seg_0.ts")  # discarding twice, or what never landed
    async with GcsClient(api_root=gcs_emulator.url) as client:
        listed = await client.list_objects(bucket)
    assert [item["name"] for item in listed.get("items", [])] == ["live/seg_1.ts"]
