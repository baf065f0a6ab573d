"""S3 and S3-compatible object storage through aiobotocore.

Files at or above ``multipart_threshold`` go up as a multipart upload with a bounded
number of parts in flight; each part is read from disk in a worker thread, so memory
stays at ``part_size * max_concurrency`` and the event loop never waits on the disk.

Bodies are handed to botocore as ``bytearray``: botocore wraps ``bytes`` in a BytesIO,
which aiohttp then copies whole and sends in 64 KiB reads with a loop turn after each,
while a bytearray reaches aiohttp as one buffer it writes at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote, urlsplit

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from google.protobuf.message import Message

from egresskit.netpolicy import PolicyResolver
from egresskit.storage.base import ProxySettings, Storage, config_to_dict, host_is_address

MiB = 1024 * 1024

# botocore's DEBUG records print request headers and signing input: the access key id,
# the session token, signatures. Unless the application chose a level for these loggers,
# they stay at INFO, so `--log-level debug` never writes credentials.
for _name in ("botocore", "aiobotocore"):
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.INFO)


_session_lock = threading.Lock()
_session: AioSession | None = None


async def _throwaway_client(session: AioSession) -> None:
    async with session.create_client(
        "s3", region_name="us-east-1", aws_access_key_id="-", aws_secret_access_key="-"
    ):
        pass


def shared_session() -> AioSession:
    """The process's botocore session with S3's model loaded. Blocking: call it in a thread.

    A client needs botocore's S3 model and endpoint rules, large JSON files that take
    tens to hundreds of milliseconds to parse. One shared session parses them once, and
    a throwaway client built here, on a worker thread, does it away from the event loop.
    """
    global _session
    with _session_lock:
        if _session is None:
            session = get_session()
            asyncio.run(_throwaway_client(session))
            _session = session
        return _session


def read_range(path: Path, offset: int, length: int) -> bytearray:
    """``length`` bytes of ``path`` from ``offset``, read straight into one buffer."""
    buffer = bytearray(length)
    with open(path, "rb", buffering=0) as f:
        got = os.preadv(f.fileno(), [buffer], offset)
    if got != length:
        raise OSError(f"{path} shrank while uploading: {got} of {length} bytes at {offset}")
    return buffer


@dataclass(repr=False)
class S3Storage(Storage):
    """Uploads to one bucket. Mirrors LiveKit's ``S3Upload`` fields plus transfer tuning."""

    bucket: str
    access_key: str = ""
    secret: str = ""
    session_token: str = ""
    region: str = ""
    endpoint: str = ""
    force_path_style: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    tagging: str = ""
    content_disposition: str = ""
    proxy: ProxySettings | None = None
    multipart_threshold: int = 16 * MiB
    part_size: int = 8 * MiB
    # parts in flight: four kept the local S3 server busiest (4: 0.84x boto3, 10: 0.72-0.78x,
    # 16: 0.71x), with 32 MiB of buffers per upload instead of 80
    max_concurrency: int = 4
    connect_timeout: float = 5.0
    read_timeout: float = 60.0

    name = "s3"

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ValueError("s3 storage needs a bucket")
        if self.part_size < 5 * MiB:
            raise ValueError("s3 part_size must be at least 5 MiB")
        self._client: Any = None
        self._client_cm: Any = None
        self._client_lock = asyncio.Lock()

    @classmethod
    def missing_credentials(cls, cfg: Mapping[str, Any]) -> str:
        """Both keys: with either one missing botocore would fall back to the server's chain."""
        return "" if cfg.get("access_key") and cfg.get("secret") else "access_key and secret"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | Message) -> Self:
        data = config_to_dict(cfg)
        if data.get("assume_role_arn"):
            raise ValueError("s3 assume_role_arn is not supported; pass access_key and secret")
        tuning = {
            k: data[k]
            for k in (
                "multipart_threshold",
                "part_size",
                "max_concurrency",
                "connect_timeout",
                "read_timeout",
            )
            if k in data
        }
        return cls(
            bucket=data.get("bucket", ""),
            access_key=data.get("access_key", ""),
            secret=data.get("secret", ""),
            session_token=data.get("session_token", ""),
            region=data.get("region", ""),
            endpoint=data.get("endpoint", ""),
            force_path_style=bool(data.get("force_path_style", False)),
            metadata=dict(data.get("metadata") or {}),
            tagging=data.get("tagging", ""),
            content_disposition=data.get("content_disposition", ""),
            proxy=ProxySettings.from_dict(data.get("proxy")),
            **tuning,
        )

    def config(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "access_key": self.access_key,
            "secret": self.secret,
            "session_token": self.session_token,
            "region": self.region,
            "endpoint": self.endpoint,
            "force_path_style": self.force_path_style,
            "metadata": dict(self.metadata),
            "tagging": self.tagging,
            "content_disposition": self.content_disposition,
            "proxy": self.proxy.as_dict() if self.proxy else None,
        }

    @property
    def path_style(self) -> bool:
        """Buckets addressed by path: when asked, or when the endpoint's host is an address.

        Otherwise a custom endpoint gets virtual-hosted requests (``bucket.host``), as
        LiveKit's ``force_path_style: false`` means.
        """
        return self.force_path_style or bool(self.endpoint and host_is_address(self.endpoint))

    def location(self, key: str) -> str:
        """The object's URL, in the addressing style the client uses."""
        path = quote(key)
        if self.endpoint:
            base = urlsplit(self.endpoint)
            if self.path_style:
                return f"{self.endpoint.rstrip('/')}/{self.bucket}/{path}"
            return f"{base.scheme}://{self.bucket}.{base.netloc}/{path}"
        if self.region:
            return f"https://{self.bucket}.s3.{self.region}.amazonaws.com/{path}"
        return f"https://{self.bucket}.s3.amazonaws.com/{path}"

    async def _s3(self) -> Any:
        async with self._client_lock:
            if self._client is None:
                proxies = None
                if self.proxy:
                    url = self.proxy.url_with_auth()
                    proxies = {"http": url, "https": url}
                connector_args: dict[str, Any] = {}
                if self.network is not None:
                    # A request's endpoint and proxy: addresses were checked at request
                    # time, names are checked as aiohttp resolves them.
                    for url in (self.endpoint, self.proxy.url if self.proxy else ""):
                        if url:
                            self.network.check_url(url)
                    connector_args["resolver"] = PolicyResolver(self.network)
                config = AioConfig(
                    s3={
                        # botocore's "auto" means path style for every custom endpoint.
                        "addressing_style": "path"
                        if self.path_style
                        else ("virtual" if self.endpoint else "auto"),
                        # Hashing every part for the signature would run on the event loop;
                        # bodies are sent as UNSIGNED-PAYLOAD (TLS protects them on https).
                        "payload_signing_enabled": False,
                    },
                    proxies=proxies,
                    connector_args=connector_args or None,
                    connect_timeout=self.connect_timeout,
                    read_timeout=self.read_timeout,
                    # Retries belong to the caller's RetryPolicy, so attempts are counted once.
                    retries={"total_max_attempts": 1},
                    max_pool_connections=max(10, self.max_concurrency),
                    # S3-compatible servers differ in checksum support; send only what S3 requires.
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                )
                session = await asyncio.to_thread(shared_session)
                self._client_cm = session.create_client(
                    "s3",
                    region_name=self.region or "us-east-1",
                    endpoint_url=self.endpoint or None,
                    aws_access_key_id=self.access_key or None,
                    aws_secret_access_key=self.secret or None,
                    aws_session_token=self.session_token or None,
                    config=config,
                )
                self._client = await self._client_cm.__aenter__()
            return self._client

    def _object_args(self, key: str, content_type: str) -> dict[str, Any]:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if content_type:
            args["ContentType"] = content_type
        if self.metadata:
            args["Metadata"] = dict(self.metadata)
        if self.tagging:
            args["Tagging"] = self.tagging
        if self.content_disposition:
            args["ContentDisposition"] = self.content_disposition
        return args

    async def upload_file(self, path: Path, key: str, content_type: str) -> str:
        client = await self._s3()
        size = (await asyncio.to_thread(os.stat, path)).st_size
        if size < self.multipart_threshold:
            body = await asyncio.to_thread(read_range, Path(path), 0, size)
            await client.put_object(Body=body, **self._object_args(key, content_type))
        else:
            await self._multipart(client, Path(path), size, key, content_type)
        return self.location(key)

    async def delete(self, key: str) -> None:
        client = await self._s3()
        await client.delete_object(Bucket=self.bucket, Key=key)

    async def _multipart(
        self, client: Any, path: Path, size: int, key: str, content_type: str
    ) -> None:
        created = await client.create_multipart_upload(**self._object_args(key, content_type))
        upload_id = created["UploadId"]
        offsets = range(0, size, self.part_size)
        etags: dict[int, str] = {}
        slots = asyncio.Semaphore(self.max_concurrency)

        async def send(number: int, offset: int) -> None:
            try:
                length = min(self.part_size, size - offset)
                data = await asyncio.to_thread(read_range, path, offset, length)
                part = await client.upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=data,
                )
                etags[number] = part["ETag"]
            finally:
                slots.release()

        try:
            async with asyncio.TaskGroup() as tg:
                for number, offset in enumerate(offsets, start=1):
                    # A slot is taken before the task exists, so tasks in flight stay bounded.
                    await slots.acquire()
                    tg.create_task(send(number, offset))
            await client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
                },
            )
        except BaseException:
            # Free the server-side parts; the caller's retry starts a fresh upload.
            try:
                await asyncio.shield(
                    client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                )
            except Exception:  # noqa: BLE001 - the original error is the one to report
                pass
            raise

    async def close(self) -> None:
        async with self._client_lock:
            if self._client_cm is not None:
                cm, self._client_cm, self._client = self._client_cm, None, None
                await cm.__aexit__(None, None, None)
