"""AzureBlobStorage against Azurite, checked with azure-storage-blob's own client."""

from __future__ import annotations

import hashlib
import logging
import os

import pytest
from azure.storage.blob.aio import BlobServiceClient
from egresskit_azure import AzureBlobStorage
from livekit.protocol import egress

from egresskit.storage import RetryPolicy, UploadFailed, storage_for_output, upload_with_retry


@pytest.fixture
def container(azurite):
    return azurite.create_container(f"rec-{os.urandom(4).hex()}")


def azurite_credential(azurite) -> dict[str, str]:
    return {"account_name": azurite.ACCOUNT, "account_key": azurite.KEY}


async def test_azure_request_uploads_to_azurite(azurite_env, container, tmp_path):
    azurite = azurite_env
    data = os.urandom(9 * 1024 * 1024 + 3)  # above one block: staged blocks, then commit
    (tmp_path / "room.mp4").write_bytes(data)
    output = egress.EncodedFileOutput(
        filepath="room.mp4",
        azure=egress.AzureBlobUpload(
            account_name=azurite.ACCOUNT, account_key=azurite.KEY, container_name=container
        ),
    )
    storage = storage_for_output(output)
    assert isinstance(storage, AzureBlobStorage)
    assert azurite.KEY not in repr(storage)
    async with storage:
        location = await storage.upload_file(tmp_path / "room.mp4", "rooms/room.mp4", "video/mp4")
    assert location == f"{azurite.account_url}/{container}/rooms/room.mp4"

    async with BlobServiceClient(
        azurite.account_url, credential=azurite_credential(azurite)
    ) as svc:
        box = svc.get_container_client(container)
        names = [b.name async for b in box.list_blobs()]
        blob = box.get_blob_client("rooms/room.mp4")
        props = await blob.get_blob_properties()
        downloaded = await (await blob.download_blob()).readall()
    assert names == ["rooms/room.mp4"]
    assert props.content_settings.content_type == "video/mp4"
    assert hashlib.sha256(downloaded).digest() == hashlib.sha256(data).digest()


async def test_wrong_account_key_fails_without_showing_it(azurite, container, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="egresskit")
    (tmp_path / "a.mp4").write_bytes(b"x" * 1000)
    wrong_key = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk="
    storage = AzureBlobStorage(azurite.ACCOUNT, wrong_key, container, azurite.account_url)
    async with storage:
        with pytest.raises(UploadFailed) as info:
            await upload_with_retry(
                storage, tmp_path / "a.mp4", "a.mp4", "video/mp4", RetryPolicy(2, 0.01, 0.01)
            )
    assert "upload to azure failed after 2 attempts" in str(info.value)
    assert wrong_key not in str(info.value) and wrong_key not in caplog.text


async def test_delete_removes_the_blob_and_a_missing_one_is_no_error(azurite, container, tmp_path):
    (tmp_path / "seg.ts").write_bytes(os.urandom(10_000))
    storage = AzureBlobStorage(azurite.ACCOUNT, azurite.KEY, container, azurite.account_url)
    async with storage:
        for key in ("live/seg_0.ts", "live/seg_1.ts"):
            await storage.upload_file(tmp_path / "seg.ts", key, "video/mp2t")
        await storage.delete("live/seg_0.ts")
        await storage.delete("live/seg_0.ts")  # discarding twice, or what never landed
    async with BlobServiceClient(
        azurite.account_url, credential=azurite_credential(azurite)
    ) as svc:
        names = [b.name async for b in svc.get_container_client(container).list_blobs()]
    assert names == ["live/seg_1.ts"]
