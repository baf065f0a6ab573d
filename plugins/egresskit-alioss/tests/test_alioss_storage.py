"""AliOSSStorage's OSS requests against moto's S3 server (see the README for what that proves)."""

from __future__ import annotations

import hashlib
import os

import pytest
from egresskit_alioss import AliOSSStorage
from livekit.protocol import egress

from egresskit.storage import storage_for_output

MiB = 1024 * 1024


@pytest.fixture
def bucket(oss_target):
    name = f"oss-{os.urandom(4).hex()}"
    return oss_target.create_bucket(name)


def read_back(oss_target, bucket: str, key: str) -> tuple[list[str], dict, bytes]:
    client = oss_target.boto3_client()
    names = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    obj = client.get_object(Bucket=bucket, Key=key)
    return names, obj, obj["Body"].read()


async def test_alioss_request_puts_object(oss_target, bucket, tmp_path):
    data = os.urandom(3 * MiB + 7)
    (tmp_path / "room.mp4").write_bytes(data)
    output = egress.EncodedFileOutput(
        filepath="room.mp4",
        aliOSS=egress.AliOSSUpload(
            access_key="LTAIexampleKey",
            secret="oss-secret-value",
            region="cn-hangzhou",
            endpoint=oss_target.url,
            bucket=bucket,
        ),
    )
    storage = storage_for_output(output)
    assert isinstance(storage, AliOSSStorage)
    assert "oss-secret-value" not in repr(storage)
    assert storage.use_path_style  # an IP-address endpoint cannot host bucket subdomains
    async with storage:
        location = await storage.upload_file(tmp_path / "room.mp4", "rooms/room.mp4", "video/mp4")
    assert location == f"{oss_target.url}/{bucket}/rooms/room.mp4"
    names, obj, body = read_back(oss_target, bucket, "rooms/room.mp4")
    assert names == ["rooms/room.mp4"]
    assert obj["ContentType"] == "video/mp4"
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()


async def test_delete_removes_the_object_and_a_missing_one_is_no_error(
    oss_target, bucket, tmp_path
):
    (tmp_path / "seg.ts").write_bytes(os.urandom(10_000))
    storage = AliOSSStorage(bucket, "LTAIexampleKey", "oss-secret-value", endpoint=oss_target.url)
    async with storage:
        for key in ("live/seg_0.ts", "live/seg_1.ts"):
            await storage.upload_file(tmp_path / "seg.ts", key, "video/mp2t")
        await storage.delete("live/seg_0.ts")
        await storage.delete("live/seg_0.ts")  # discarding twice, or what never landed
    client = oss_target.boto3_client()
    names = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert names == ["live/seg_1.ts"]
