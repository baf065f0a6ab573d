"""Google Cloud Storage backend for egresskit (LiveKit ``GCPUpload``), on gcloud-aio-storage.

Config keys: ``credentials`` (service-account JSON as a string; empty means the library's
default credentials), ``bucket``, ``proxy`` (``url``, ``username``, ``password``), and
egresskit's ``endpoint`` to target an emulator. Without ``endpoint``, the
``STORAGE_EMULATOR_HOST`` environment variable is honoured, as Google's own clients do.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

import aiohttp
from gcloud.aio.storage import Storage as GcsClient
from google.protobuf.message import Message

from egresskit.netpolicy import PolicyResolver
from egresskit.storage.base import ProxySettings, Storage, config_to_dict

PUBLIC_ROOT = "https://storage.googleapis.com"


class GCSStorage(Storage):
    """Uploads to one bucket. The file is read in a worker thread, then sent by the client."""

    name = "gcp"

    def __init__(
        self,
        bucket: str,
        credentials: str = "",
        proxy: Mapping[str, str] | None = None,
        endpoint: str = "",
        timeout: int = 300,
    ) -> None:
        if not bucket:
            raise ValueError("gcp storage needs a bucket")
        if credentials:
            json.loads(credentials)  # fail at request time on malformed JSON, not at upload
        self.bucket = bucket
        self.credentials = credentials
        self.proxy = ProxySettings.from_dict(proxy)
        self.endpoint = endpoint or os.environ.get("STORAGE_EMULATOR_HOST", "")
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._client: GcsClient | None = None

    @classmethod
    def missing_credentials(cls, cfg: Mapping[str, Any]) -> str:
        """A service-account key: without one the library uses the server's default credentials."""
        return "" if cfg.get("credentials") else "credentials"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | Message) -> Self:
        data = config_to_dict(cfg)
        return cls(
            bucket=data.get("bucket", ""),
            credentials=data.get("credentials", ""),
            proxy=data.get("proxy"),
            endpoint=data.get("endpoint", ""),
            timeout=int(data.get("timeout", 300)),
        )

    def config(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "credentials": self.credentials,
            "proxy": self.proxy.as_dict() if self.proxy else None,
            "endpoint": self.endpoint,
        }

    def secret_values(self) -> list[str]:
        found = super().secret_values()
        if self.credentials:
            info = json.loads(self.credentials)
            found += [str(info[k]) for k in ("private_key", "private_key_id") if info.get(k)]
        return found

    def location(self, key: str) -> str:
        root = self.endpoint.rstrip("/") if self.endpoint else PUBLIC_ROOT
        return f"{root}/{self.bucket}/{quote(key)}"

    def _open(self) -> GcsClient:
        if self._client is None:
            # Credentials ride in the proxy URL: aiohttp sends them to the proxy only
            # (Proxy-Authorization, or on CONNECT for https), never to the origin.
            connector = None
            if self.network is not None:  # a request's proxy: names checked as resolved
                if self.proxy:
                    self.network.check_url(self.proxy.url)
                connector = aiohttp.TCPConnector(resolver=PolicyResolver(self.network))
            self._session = aiohttp.ClientSession(
                proxy=self.proxy.url_with_auth() if self.proxy else None, connector=connector
            )
            self._client = GcsClient(
                service_file=io.StringIO(self.credentials) if self.credentials else None,
                # gcloud-aio types `session` from its requests build (gcloud-rest), which
                # mypy picks as it cannot evaluate BUILD_GCLOUD_REST; aio takes aiohttp's
                session=self._session,  # type: ignore[arg-type]
                api_root=self.endpoint or None,
            )
        return self._client

    async def upload_file(self, path: Path, key: str, content_type: str) -> str:
        client = self._open()
        data = await asyncio.to_thread(Path(path).read_bytes)
        # With metadata, small objects go up as one multipart request (large ones resumable)
        # whose JSON part names the content type. A plain media upload would do on GCS, but
        # gcp-storage-emulator reads any application/json body (a manifest) as metadata.
        content_type = content_type or "application/octet-stream"
        await client.upload(
            self.bucket,
            key,
            data,
            content_type=content_type,
            metadata={"contentType": content_type},
            timeout=self.timeout,
        )
        return self.location(key)

    async def delete(self, key: str) -> None:
        try:
            await self._open().delete(self.bucket, key, timeout=self.timeout)
        except aiohttp.ClientResponseError as exc:
            if exc.status != 404:  # already gone is what was asked
                raise

    async def close(self) -> None:
        client, session = self._client, self._session
        self._client = self._session = None
        if client is not None:
            await client.close()
        if session is not None and not session.closed:
            await session.close()
