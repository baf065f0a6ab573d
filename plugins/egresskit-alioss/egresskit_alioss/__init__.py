"""Alibaba Cloud OSS backend for egresskit (LiveKit ``AliOSSUpload``), on alibabacloud-oss-v2.

Config keys: ``access_key``, ``secret``, ``region``, ``endpoint``, ``bucket``, and
egresskit's ``use_path_style`` (for endpoints that address buckets by path; when unset,
endpoints whose host is an IP address or ``localhost`` use it, since a bucket cannot be
a subdomain of those). Each file goes up as one PutObject (OSS allows up to 5 GiB), read
in a worker thread.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote, urlsplit

import alibabacloud_oss_v2 as oss
import alibabacloud_oss_v2.aio as oss_aio
from google.protobuf.message import Message

from egresskit.storage.base import Storage, config_to_dict, host_is_address

MAX_PUT = 5 * 1024**3  # OSS PutObject limit


class AliOSSStorage(Storage):
    name = "alioss"

    def __init__(
        self,
        bucket: str,
        access_key: str,
        secret: str,
        region: str = "",
        endpoint: str = "",
        use_path_style: bool | None = None,
    ) -> None:
        if not bucket:
            raise ValueError("alioss storage needs a bucket")
        if not (region or endpoint):
            raise ValueError("alioss storage needs a region or an endpoint")
        self.bucket = bucket
        self.access_key = access_key
        self.secret = secret
        self.region = region
        self.endpoint = endpoint
        self.use_path_style = (
            host_is_address(endpoint) if use_path_style is None else use_path_style
        )
        self._client: oss_aio.AsyncClient | None = None

    @classmethod
    def missing_credentials(cls, cfg: Mapping[str, Any]) -> str:
        return "" if cfg.get("access_key") and cfg.get("secret") else "access_key and secret"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | Message) -> Self:
        data = config_to_dict(cfg)
        return cls(
            bucket=data.get("bucket", ""),
            access_key=data.get("access_key", ""),
            secret=data.get("secret", ""),
            region=data.get("region", ""),
            endpoint=data.get("endpoint", ""),
            use_path_style=(
                None if data.get("use_path_style") is None else bool(data["use_path_style"])
            ),
        )

    def config(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "access_key": self.access_key,
            "secret": self.secret,
            "region": self.region,
            "endpoint": self.endpoint,
            "use_path_style": self.use_path_style,
        }

    def location(self, key: str) -> str:
        endpoint = self.endpoint or f"oss-{self.region}.aliyuncs.com"
        if "://" not in endpoint:
            endpoint = f"https://{endpoint}"
        parts = urlsplit(endpoint)
        if self.use_path_style:
            return f"{parts.scheme}://{parts.netloc}/{self.bucket}/{quote(key)}"
        return f"{parts.scheme}://{self.bucket}.{parts.netloc}/{quote(key)}"

    def _oss(self) -> oss_aio.AsyncClient:
        if self._client is None:
            cfg = oss.config.load_default()
            cfg.credentials_provider = oss.credentials.StaticCredentialsProvider(
                self.access_key, self.secret
            )
            cfg.region = self.region or "cn-hangzhou"
            if self.endpoint:
                cfg.endpoint = self.endpoint
                cfg.disable_ssl = self.endpoint.startswith("http://")
            cfg.use_path_style = self.use_path_style
            # Retries belong to the caller's RetryPolicy, so attempts are counted once.
            cfg.retry_max_attempts = 1
            self._client = oss_aio.AsyncClient(cfg)
        return self._client

    async def _checked_client(self) -> oss_aio.AsyncClient:
        """The client, once a request's endpoint is known to resolve where requests may go."""
        if self.network is not None and self.endpoint:
            # The SDK resolves the endpoint itself, so its addresses are checked first.
            parts = urlsplit(self.endpoint if "://" in self.endpoint else f"//{self.endpoint}")
            await self.network.resolve_async(parts.hostname or "", parts.port or 443)
        return self._oss()

    async def upload_file(self, path: Path, key: str, content_type: str) -> str:
        client = await self._checked_client()
        size = (await asyncio.to_thread(os.stat, path)).st_size
        if size > MAX_PUT:
            raise ValueError(f"alioss single PUT is limited to 5 GiB; {path} has {size} bytes")
        body = await asyncio.to_thread(Path(path).read_bytes)
        await client.put_object(
            oss.PutObjectRequest(
                bucket=self.bucket, key=key, body=body, content_type=content_type or None
            )
        )
        return self.location(key)

    async def delete(self, key: str) -> None:
        """DeleteObject; OSS answers 204 for a key that is not there, so that is no error."""
        client = await self._checked_client()
        await client.delete_object(oss.DeleteObjectRequest(bucket=self.bucket, key=key))

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()
