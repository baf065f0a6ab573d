"""No data loss: retries against a server that comes back, backup storage, secret-free errors."""

from __future__ import annotations

import hashlib
import logging
import os

import pytest
from livekit.protocol import egress
from storage_servers import MotoServer, free_port

from egresskit.masking import scrub
from egresskit.storage import RetryPolicy, UploadFailed, upload_with_retry
from egresskit.storage.local import LocalStorage
from egresskit.storage.s3 import S3Storage

FAST = RetryPolicy(attempts=3, initial_delay=0.01, max_delay=0.05)


def s3_at(url: str, bucket: str, **fields) -> S3Storage:
    cfg = {"access_key": "testing", "secret": "testing", "endpoint": url, "bucket": bucket}
    return S3Storage.from_config({"force_path_style": True, "connect_timeout": 2, **cfg, **fields})


@pytest.fixture
def recording(tmp_path):
    path = tmp_path / "out" / "room.mp4"
    path.parent.mkdir()
    data = os.urandom(300_000)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


async def test_server_down_for_two_attempts_then_up_succeeds_on_third(recording):
    path, digest = recording
    server = MotoServer(port=free_port())
    seen: list[int] = []

    def on_retry(storage, attempt, error, delay):
        seen.append(attempt)
        if attempt == 2:  # the server comes up after the second failure
            server.start()
            server.boto3_client().create_bucket(Bucket="late")

    storage = s3_at(server.url, "late")
    try:
        async with storage:
            result = await upload_with_retry(
                storage, path, "room.mp4", "video/mp4", RetryPolicy(), on_retry=on_retry
            )
        assert (result.attempts, result.backup_used, seen) == (3, False, [1, 2])
        body = server.boto3_client().get_object(Bucket="late", Key="room.mp4")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == digest
    finally:
        server.stop()


async def test_server_stays_down_fails_readably_and_keeps_the_file(recording):
    path, digest = recording
    dead = f"http://127.0.0.1:{free_port()}"
    async with s3_at(dead, "nowhere") as storage:
        with pytest.raises(UploadFailed) as info:
            await upload_with_retry(storage, path, "room.mp4", "video/mp4", FAST)
    assert info.value.attempts == 3
    assert "upload to s3 failed after 3 attempts" in str(info.value)
    assert str(path) in str(info.value)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


async def test_backup_storage_used_when_primary_fails(moto_server, s3_bucket, recording):
    path, digest = recording
    dead = f"http://127.0.0.1:{free_port()}"
    async with s3_at(dead, "nowhere") as primary, s3_at(moto_server.url, s3_bucket) as backup:
        result = await upload_with_retry(
            primary, path, "rec/room.mp4", "video/mp4", FAST, backup=backup
        )
    assert result.backup_used is True
    assert result.location == f"{moto_server.url}/{s3_bucket}/rec/room.mp4"
    body = moto_server.boto3_client().get_object(Bucket=s3_bucket, Key="rec/room.mp4")["Body"]
    assert hashlib.sha256(body.read()).hexdigest() == digest
    assert path.exists()


async def test_backup_to_local_directory(recording, tmp_path):
    path, digest = recording
    dead = f"http://127.0.0.1:{free_port()}"
    async with s3_at(dead, "nowhere") as primary:
        result = await upload_with_retry(
            primary, path, "rec/room.mp4", "video/mp4", FAST, backup=LocalStorage(tmp_path / "b")
        )
    assert result.backup_used and result.location == str((tmp_path / "b/rec/room.mp4").resolve())
    assert hashlib.sha256((tmp_path / "b/rec/room.mp4").read_bytes()).hexdigest() == digest


@pytest.fixture(scope="module")
def moto_with_auth():
    with MotoServer(enforce_auth=True) as server:
        yield server


async def test_wrong_credentials_give_readable_error_without_secrets(
    moto_with_auth, recording, caplog
):
    path, _ = recording
    access_key, secret = "AKIAWRONGKEY00001234", "wR0ng/Secret+Value/0123456789abcdefXYZ"
    caplog.set_level(logging.DEBUG, logger="egresskit")
    caplog.set_level(logging.INFO)
    cfg = egress.S3Upload(
        access_key=access_key,
        secret=secret,
        session_token="session-token-secret-42",
        endpoint=moto_with_auth.url,
        bucket="private",
        force_path_style=True,
    )
    async with S3Storage.from_config(cfg) as storage:
        with pytest.raises(UploadFailed) as info:
            await upload_with_retry(storage, path, "room.mp4", "video/mp4", FAST)
    message = str(info.value)
    assert "InvalidAccessKeyId" in message or "403" in message
    for leaked in (access_key, secret, "session-token-secret-42"):
        assert leaked not in message
        assert leaked not in caplog.text
    assert "failed after 3 attempts" in caplog.text
    assert path.exists()


def test_scrub_removes_values_and_credential_shapes():
    text = (
        "denied for AKIA1234SECRETKEY with secret s3cr3t-value; "
        "Authorization: AWS4-HMAC-SHA256 Credential=x, Signature=abcdef0123456789; "
        "SharedKey devstoreaccount1:c2lnbmF0dXJl; "
        '{"private_key": "-----BEGIN PRIVATE KEY-----\\nMIIE\\n-----END PRIVATE KEY-----\\n"}'
    )
    out = scrub(text, ["AKIA1234SECRETKEY", "s3cr3t-value"])
    for leaked in ("AKIA1234SECRETKEY", "s3cr3t-value", "abcdef0123456789", "c2lnbmF0dXJl", "MIIE"):
        assert leaked not in out
    assert out.startswith("denied for {...} with secret {...};")
