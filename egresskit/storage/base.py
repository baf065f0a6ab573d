"""The contract every storage backend fulfils (secrets are masked by `egresskit.masking`).

A backend is built from one config convention, ``Backend.from_config(cfg)``, where ``cfg``
is either the LiveKit protocol message for that backend (``S3Upload``, ``GCPUpload``,
``AzureBlobUpload``, ``AliOSSUpload``) or a plain mapping with the same snake_case keys
(as written in the server's YAML config). Backends open network clients lazily, so
constructing one validates a request without touching the network.
"""

from __future__ import annotations

import abc
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self
from urllib.parse import quote, urlsplit, urlunsplit

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from egresskit.masking import config_secrets, mask_config
from egresskit.netpolicy import NetworkPolicy


def config_to_dict(cfg: Mapping[str, Any] | Message | None) -> dict[str, Any]:
    """Normalise a protocol message or a mapping into a plain dict with snake_case keys."""
    if cfg is None:
        return {}
    if isinstance(cfg, Message):
        return MessageToDict(cfg, preserving_proto_field_name=True)
    return dict(cfg)


@dataclass(frozen=True)
class ProxySettings:
    """An HTTP proxy for uploads (LiveKit ``ProxyConfig``)."""

    url: str
    username: str = ""
    password: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ProxySettings | None:
        if not data or not data.get("url"):
            return None
        return cls(data["url"], data.get("username", ""), data.get("password", ""))

    def url_with_auth(self) -> str:
        """The proxy URL carrying basic credentials, the form botocore and aiohttp accept."""
        if not self.username:
            return self.url
        parts = urlsplit(self.url)
        auth = quote(self.username, safe="") + ":" + quote(self.password, safe="")
        return urlunsplit(parts._replace(netloc=f"{auth}@{parts.hostname}:{parts.port or 80}"))

    def as_dict(self) -> dict[str, str]:
        return {"url": self.url, "username": self.username, "password": self.password}


class Storage(abc.ABC):
    """An upload target: puts local files (or byte streams) under keys and says where.

    Subclasses set ``name`` (their entry-point name) and implement ``from_config`` and
    ``upload_file``. Instances are async context managers; ``close`` releases clients.
    """

    name: ClassVar[str]
    # Set on storage a request named: where its endpoint and proxy may be. None for the
    # operator's storage. Backends that open their own connections resolve names with it.
    network: NetworkPolicy | None = None

    @classmethod
    def missing_credentials(cls, cfg: Mapping[str, Any]) -> str:
        """What `cfg` lacks to sign on its own ("" when nothing), for storage named in a request.

        Such storage must bring its own credentials: the server's ambient ones
        (environment, credential files, instance role) are for the operator's
        storage only. A backend that does not override this is never used from
        a request.
        """
        return "credentials of its own"

    @classmethod
    @abc.abstractmethod
    def from_config(cls, cfg: Mapping[str, Any] | Message) -> Self:
        """Build the backend from its protocol message or an equivalent mapping."""

    @abc.abstractmethod
    async def upload_file(self, path: Path, key: str, content_type: str) -> str:
        """Upload ``path`` to ``key`` and return the final location (a URL or absolute path)."""

    async def delete(self, key: str) -> None:
        """Remove the object at ``key``; none there is no error (StopEgress with discard).

        A backend that does not override this cannot discard what it stored.
        """
        raise NotImplementedError(f"the {self.name} storage cannot delete objects")

    async def close(self) -> None:  # noqa: B027 - a default: clientless backends hold nothing
        """Release network clients. Safe to call more than once."""

    def config(self) -> dict[str, Any]:
        """The backend's effective config, secrets included (never log this; see redacted)."""
        return {}

    def redacted(self) -> dict[str, Any]:
        """The effective config with every credential replaced: safe to log or echo."""
        return mask_config(self.config())

    def secret_values(self) -> list[str]:
        """Credential strings this backend holds, for scrubbing error text."""
        return config_secrets(self.config())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.redacted()!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def host_is_address(endpoint: str) -> bool:
    """Whether an endpoint's host is an IP address or localhost: no bucket subdomains there."""
    host = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}").hostname or ""
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
