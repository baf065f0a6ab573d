"""S3Storage against moto's S3 server: round trips, object options, multipart, proxy."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

from livekit.protocol import egress
from storage_servers import ForwardProxy

from egresskit.storage import storage_for_output
from egresskit.storage.s3 import MiB, S3Storage


def make_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``; return their sha256."""
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def s3_upload(moto_server, bucket: str, **fields) -> egress.S3Upload:
    return egress.S3Upload(
        access_key="testing",
        secret="testing",
        region="us-east-1",
        endpoint=moto_server.url,
        bucket=bucket,
        force_path_style=True,
        **fields,
    )


async def download_sha256(moto_server, bucket: str, key: str) -> str:
    def fetch() -> bytes:
        return moto_server.boto3_client().get_object(Bucket=bucket, Key=key)["Body"].read()

    return hashlib.sha256(await asyncio.to_thread(fetch)).hexdigest()


async def test_upload_is_listed_and_byte_identical_with_metadata_and_tags(
    moto_server, s3_bucket, tmp_path
):
    src = tmp_path / "room.mp4"
    digest = make_file(src, 1 * MiB + 17)
    output = egress.EncodedFileOutput(
        filepath="rooms/room.mp4",
        s3=s3_upload(
            moto_server,
            s3_bucket,
            metadata={"room": "standup", "owner": "egresskit"},
            tagging="team=media&kind=recording",
            content_disposition='attachment; filename="room.mp4"',
        ),
    )
    storage = storage_for_output(output)
    assert isinstance(storage, S3Storage)
    async with storage:
        location = await storage.upload_file(src, "rooms/room.mp4", "video/mp4")

    assert location == f"{moto_server.url}/{s3_bucket}/rooms/room.mp4"
    client = moto_server.boto3_client()
    listed = client.list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert [(o["Key"], o["Size"]) for o in listed] == [("rooms/room.mp4", src.stat().st_size)]
    assert await download_sha256(moto_server, s3_bucket, "rooms/room.mp4") == digest
    head = client.head_object(Bucket=s3_bucket, Key="rooms/room.mp4")
    assert head["Metadata"] == {"room": "standup", "owner": "egresskit"}
    assert head["ContentType"] == "video/mp4"
    assert head["ContentDisposition"] == 'attachment; filename="room.mp4"'
    tags = client.get_object_tagging(Bucket=s3_bucket, Key="rooms/room.mp4")["TagSet"]
    assert {t["Key"]: t["Value"] for t in tags} == {"team": "media", "kind": "recording"}


async def test_30mb_file_goes_up_in_parts_with_options_kept(moto_server, s3_bucket, tmp_path):
    src = tmp_path / "long.mp4"
    digest = make_file(src, 30 * MiB)
    storage = S3Storage.from_config(
        s3_upload(moto_server, s3_bucket, metadata={"room": "big"}, tagging="size=large")
    )
    async with storage:
        await storage.upload_file(src, "long.mp4", "video/mp4")

    client = moto_server.boto3_client()
    head = client.head_object(Bucket=s3_bucket, Key="long.mp4")
    # A multipart object's ETag is "<md5 of part md5s>-<part count>": 30 MiB / 8 MiB parts.
    assert head["ETag"].strip('"').endswith("-4")
    assert head["ContentLength"] == 30 * MiB
    assert head["Metadata"] == {"room": "big"}
    tags = client.get_object_tagging(Bucket=s3_bucket, Key="long.mp4")["TagSet"]
    assert tags == [{"Key": "size", "Value": "large"}]
    assert await download_sha256(moto_server, s3_bucket, "long.mp4") == digest


async def test_upload_through_authenticating_proxy_uses_path_style(
    moto_server, s3_bucket, tmp_path
):
    src = tmp_path / "clip.mp4"
    digest = make_file(src, 256 * 1024)
    async with ForwardProxy() as proxy:
        proxy_cfg = egress.ProxyConfig(url=proxy.url, username="proxyuser", password="pr0xy-pass")
        storage = S3Storage.from_config(s3_upload(moto_server, s3_bucket, proxy=proxy_cfg))
        async with storage:
            await storage.upload_file(src, "via/proxy.mp4", "video/mp4")

    assert ("PUT", f"{moto_server.url}/{s3_bucket}/via/proxy.mp4") in [
        (r.method, r.target) for r in proxy.requests
    ]
    assert proxy.credentials()[0] == ("proxyuser", "pr0xy-pass")
    assert await download_sha256(moto_server, s3_bucket, "via/proxy.mp4") == digest


def test_location_follows_addressing_style():
    path_style = S3Storage(bucket="b", endpoint="http://127.0.0.1:9000", force_path_style=True)
    virtual = S3Storage(bucket="b", endpoint="https://s3.example.test")
    aws = S3Storage(bucket="b", region="eu-west-1")
    assert path_style.location("a b.mp4") == "http://127.0.0.1:9000/b/a%20b.mp4"
    assert virtual.location("x.mp4") == "https://b.s3.example.test/x.mp4"
    assert aws.location("x.mp4") == "https://b.s3.eu-west-1.amazonaws.com/x.mp4"


def test_repr_and_redacted_hide_every_credential():
    storage = S3Storage.from_config(
        {
            "bucket": "b",
            "access_key": "AKIAEXAMPLEKEY123",
            "secret": "very/secret+value",
            "session_token": "token-value-xyz",
            "proxy": {"url": "http://127.0.0.1:1", "username": "u", "password": "proxy-pw"},
        }
    )
    shown = repr(storage) + str(storage.redacted())
    for secret in ("AKIAEXAMPLEKEY123", "very/secret+value", "token-value-xyz", "proxy-pw"):
        assert secret not in shown
    assert "{secret}" in shown and "{access_key}" in shown
