"""HTTP PUT storage: each file PUT to a URL made from a template, for WebDAV and on-premises stores.

Configured by the operator only (LiveKit's requests have no message for it):

```yaml
storage:
  http:
    url: "https://dav.example.com/recordings/{key}"   # {key}: the object key, path-quoted
    headers: {Authorization: "Bearer ..."}             # sent with every PUT; values are secret
    timeout: 60                                          # seconds for one PUT
```

A URL without `{key}` is a base the key is appended to. Any 2xx answer is
success; anything else is an error the upload retries (`upload_with_retry`).
Header values, a password in the URL and its query values are credentials:
they never appear in logs, errors or locations. The location of an upload is
its URL without query or user info.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

import aiohttp
from google.protobuf.message import Message

from egresskit.masking import mask_url, named
from egresskit.storage.base import Storage, config_to_dict

KEY_FIELD = "{key}"
DEFAULT_TIMEOUT_S = 60.0


class HttpStatusError(Exception):
    """The server answered a PUT with a status other than 2xx."""


class HttpStorage(Storage):
    """PUTs files to `url` (a template with `{key}`, or a base URL) with fixed `headers`."""

    name = "http"

    def __init__(
        self, url: str, headers: Mapping[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("http storage needs an http:// or https:// url")
        self.url = url
        self.headers = {str(k): str(v) for k, v in (headers or {}).items()}
        self.timeout = float(timeout)
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | Message) -> Self:
        data = config_to_dict(cfg)
        return cls(
            url=data.get("url", ""),
            headers=data.get("headers") or {},
            timeout=data.get("timeout", DEFAULT_TIMEOUT_S),
        )

    def target(self, key: str) -> str:
        """The URL a key is PUT to."""
        quoted = quote(key, safe="/")
        if KEY_FIELD in self.url:
            return self.url.replace(KEY_FIELD, quoted)
        return self.url.rstrip("/") + "/" + quoted

    def location(self, key: str) -> str:
        """Where the file is, as results and manifests say: no query, no user info."""
        parts = urlsplit(self.target(key))
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit((parts.scheme, host, parts.path, "", ""))

    async def upload_file(self, path: Path, key: str, content_type: str) -> str:
        size = (await asyncio.to_thread(path.stat)).st_size
        session = self._session_for_uploads()
        headers = {**self.headers, "Content-Type": content_type, "Content-Length": str(size)}
        # aiohttp reads a file body in its executor, 64 KiB at a time: the loop never waits
        # on the disk, and the file is never held in memory whole.
        with open(path, "rb") as body:  # noqa: ASYNC230 - opening is cheap; reads are off the loop
            async with session.put(self.target(key), data=body, headers=headers) as response:
                if not 200 <= response.status < 300:
                    raise HttpStatusError(
                        f"PUT {self.location(key)} answered {response.status} {response.reason}"
                    )
        return self.location(key)

    def _session_for_uploads(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def config(self) -> dict[str, Any]:
        return {"url": self.url, "headers": dict(self.headers), "timeout": self.timeout}

    def redacted(self) -> dict[str, Any]:
        """Header values and the URL's password and query values masked."""
        return {
            "url": mask_url(self.url, every_query_value=True),
            "headers": {name: named(name) for name in self.headers},
            "timeout": self.timeout,
        }

    def secret_values(self) -> list[str]:
        parts = urlsplit(self.url)
        found = [v for v in self.headers.values() if v]
        found += [value for _, value in parse_qsl(parts.query) if value]
        if parts.password:
            found.append(parts.password)
        return found
