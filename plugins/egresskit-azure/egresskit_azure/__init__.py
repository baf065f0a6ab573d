"""Azure Blob Storage backend for egresskit (LiveKit ``AzureBlobUpload``), on azure-storage-blob's aio client.

Config keys: ``account_name``, ``account_key``, ``container_name``, and egresskit's
``account_url`` to target Azurite or another endpoint. Without it, the environment variable
``EGRESSKIT_AZURE_ACCOUNT_URL`` applies, else ``https://<account>.blob.core.windows.net``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Self

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import ContentSettings
from azure.storage.blob.aio import BlobServiceClient
from google.protobuf.message import Message

from egresskit.storage.base import Storage, config_to_dict

ACCOUNT_URL_ENV = "EGRESSKIT_AZURE_ACCOUNT_URL"
CHUNK = 4 * 1024 * 1024


async def read_chunks(path: Path, size: int = CHUNK) -> AsyncIterator[bytes]:
    """The file's bytes in chunks, each read in a worker thread."""
    f = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, size):
            yield chunk
    finally:
        await asyncio.to_thread(f.close)


class AzureBlobStorage(Storage):
    """Uploads block blobs into one container; large files go up as staged blocks."""

    name = "azure"

    def __init__(
        self,
        account_name: str,
        account_key: str,
        container_name: str,
        account_url: str = "",
        max_concurrency: int = 4,
    ) -> None:
        if not (account_name and container_name):
            raise ValueError("azure storage needs account_name and container_name")
        self.account_name = account_name
        self.account_key = account_key
        self.container_name = container_name
        self.account_url = (
            account_url
            or os.environ.get(ACCOUNT_URL_ENV, "")
            or f"https://{account_name}.blob.core.windows.net"
        ).rstrip("/")
        self.max_concurrency = max_concurrency
        self._client: BlobServiceClient | None = None

    @classmethod
    def missing_credentials(cls, cfg: Mapping[str, Any]) -> str:
        return "" if cfg.get("account_key") else "account_key"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | Message) -> Self:
        data = config_to_dict(cfg)
        return cls(
            account_name=data.get("account_name", ""),
            account_key=data.get("account_key", ""),
            container_name=data.get("container_name", ""),
            account_url=data.get("account_url", ""),
            max_concurrency=int(data.get("max_concurrency", 4)),
        )

    def config(self) -> dict[str, Any]:
        return {
            "account_name": self.account_name,
            "account_key": self.account_key,
            "container_name": self.container_name,
            "account_url": self.account_url,
        }

    def _service(self) -> BlobServiceClient:
        if self._client is None:
            credential = {"account_name": self.account_name, "account_key": self.account_key}
            self._client = BlobServiceClient(self.account_url, credential=credential)
        return self._client

    async def upload_file(self, path: Path, key: str, content_type: str) -> str:
        blob = self._service().get_blob_client(self.container_name, key)
        size = (await asyncio.to_thread(os.stat, path)).st_size
        await blob.upload_blob(
            read_chunks(Path(path)),
            length=size,
            overwrite=True,
            content_settings=ContentSettings(content_type=content_type or None),
            max_concurrency=self.max_concurrency,
        )
        return blob.url

    async def delete(self, key: str) -> None:
        blob = self._service().get_blob_client(self.container_name, key)
        with contextlib.suppress(ResourceNotFoundError):  # already gone is what was asked
            await blob.delete_blob()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()
