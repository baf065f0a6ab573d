"""Backends by name, found through the ``egresskit.storage`` entry-point group.

Built-ins register through the same group in egresskit's own pyproject; the table below
only covers running from a source tree that was never installed. An installed entry point
with a built-in's name replaces the built-in. Backends import lazily, on first use, so an
unused plugin's dependencies are never loaded.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Mapping
from typing import Any

from google.protobuf.message import Message

from egresskit.netpolicy import NetworkPolicy
from egresskit.storage.base import Storage, config_to_dict

ENTRY_POINT_GROUP = "egresskit.storage"

_BUILTINS: dict[str, str] = {
    "local": "egresskit.storage.local:LocalStorage",
    "s3": "egresskit.storage.s3:S3Storage",
    "http": "egresskit.storage.http:HttpStorage",
}

# Distributions that provide the backends LiveKit requests can name.
PLUGIN_PACKAGES: dict[str, str] = {
    "gcp": "egresskit-gcs",
    "azure": "egresskit-azure",
    "alioss": "egresskit-alioss",
}

# Fields naming an upload message, on outputs and StorageConfig.
_UPLOAD_FIELDS = ("s3", "gcp", "azure", "aliOSS")

# The upload messages themselves, as validated requests carry them.
_MESSAGE_BACKENDS: dict[str, str] = {
    "S3Upload": "s3",
    "GCPUpload": "gcp",
    "AzureBlobUpload": "azure",
    "AliOSSUpload": "alioss",
}


class StorageNotInstalled(LookupError):
    """A backend was requested that no installed distribution provides."""

    def __init__(self, name: str, package: str | None, detail: str = "") -> None:
        self.backend = name
        self.package = package
        if package:
            msg = f"storage backend {name!r} is not installed: pip install {package}"
        else:
            msg = f"storage backend {name!r} is not installed (no distribution provides it)"
        super().__init__(f"{msg} ({detail})" if detail else msg)


class MissingCredentials(ValueError):
    """Storage named in a request relies on the server's credentials."""

    def __init__(self, name: str, missing: str) -> None:
        self.backend = name
        super().__init__(
            f"{name} storage named in a request must bring its own credentials ({missing}); "
            "the server's own credentials serve only the storage in its configuration"
        )


class Registry:
    """Resolves backend names to ``Storage`` classes for one entry-point group."""

    def __init__(self, group: str = ENTRY_POINT_GROUP) -> None:
        self.group = group
        self._loaded: dict[str, type[Storage]] = {}

    def targets(self) -> dict[str, str]:
        """Every known backend name mapped to its ``module:attr`` target."""
        found = dict(_BUILTINS)
        for ep in importlib.metadata.entry_points(group=self.group):
            found[ep.name.lower()] = ep.value
        return found

    def names(self) -> list[str]:
        return sorted(self.targets())

    def get(self, name: str) -> type[Storage]:
        """The backend class for ``name``, importing it on first use."""
        key = name.lower()
        if key in self._loaded:
            return self._loaded[key]
        target = self.targets().get(key)
        if target is None:
            raise StorageNotInstalled(key, PLUGIN_PACKAGES.get(key))
        module_name, _, attr = target.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError as exc:
            # The plugin is present but one of its own dependencies is not.
            raise StorageNotInstalled(key, PLUGIN_PACKAGES.get(key), str(exc)) from exc
        for part in attr.split("."):
            obj = getattr(obj, part)
        if not (isinstance(obj, type) and issubclass(obj, Storage)):
            raise TypeError(f"entry point {key!r} ({target}) is not a Storage subclass")
        self._loaded[key] = obj
        return obj

    def open(self, name: str, cfg: Mapping[str, Any] | Message) -> Storage:
        """Build backend ``name`` from its config (no network I/O happens here)."""
        return self.get(name).from_config(cfg)

    def from_spec(self, spec: Mapping[str, Any]) -> Storage:
        """Build a backend from a one-key YAML mapping such as ``{"s3": {...}}``."""
        if len(spec) != 1:
            raise ValueError(f"a storage config names exactly one backend, got {sorted(spec)}")
        ((name, cfg),) = spec.items()
        return self.open(name, cfg or {})

    def storage_for_output(
        self,
        output: Message | None,
        request_storage: Message | None = None,
        default: Mapping[str, Any] | None = None,
        *,
        network: NetworkPolicy | None = None,
    ) -> Storage | None:
        """Choose where one output uploads: the one home of the storage precedence rule.

        Per-output ``s3``/``gcp``/``azure``/``aliOSS`` (or ``Output.storage`` of StartEgress)
        wins, then StartEgress's request-level ``storage``, then the server's default
        (``{"s3": {...}}`` from YAML). ``None`` means the file stays under --output-dir.
        `output` and `request_storage` may also be upload messages themselves (``S3Upload``...),
        as validated requests carry them. With `network`, storage the request names is a
        caller's: it must bring its own credentials and may reach only what `network` allows
        (the server's default is the operator's and is not checked).
        """
        for candidate in (output, _field(output, "storage"), request_storage):
            upload = self._upload_in(candidate)
            if upload is not None:
                if network is not None:
                    return self.from_request_upload(upload, network)
                return self.from_upload(upload)
        if default:
            return self.from_spec(default)
        return None

    def from_upload(self, upload: Message) -> Storage:
        """Build the backend of an upload message (``S3Upload``, ``GCPUpload``, ...)."""
        return self.open(self._backend_of(upload), upload)

    def check_request_upload(self, upload: Message) -> None:
        """Raise MissingCredentials unless a request's upload message carries its own credentials."""
        name = self._backend_of(upload)
        missing = self.get(name).missing_credentials(config_to_dict(upload))
        if missing:
            raise MissingCredentials(name, missing)

    def from_request_upload(self, upload: Message, network: NetworkPolicy) -> Storage:
        """The backend of storage a request named: its own credentials, destinations per `network`."""
        self.check_request_upload(upload)
        storage = self.from_upload(upload)
        storage.network = network
        return storage

    def _backend_of(self, upload: Message) -> str:
        name = _MESSAGE_BACKENDS.get(upload.DESCRIPTOR.name)
        if name is None:
            raise ValueError(f"not a storage upload message: {upload.DESCRIPTOR.name}")
        return name

    def _upload_in(self, msg: Message | None) -> Message | None:
        """The upload message `msg` is or names (an output's, or a StorageConfig's provider)."""
        if msg is None or msg.DESCRIPTOR.name in _MESSAGE_BACKENDS:
            return msg
        for field_name in _UPLOAD_FIELDS:
            sub = _field(msg, field_name)
            if sub is not None:
                return sub
        return None


def _field(msg: Message | None, name: str) -> Message | None:
    """The set sub-message ``name`` of ``msg``, or None when absent or unset."""
    if msg is None or name not in msg.DESCRIPTOR.fields_by_name:
        return None
    return getattr(msg, name) if msg.HasField(name) else None


default_registry = Registry()


def get_backend(name: str) -> type[Storage]:
    return default_registry.get(name)


def open_storage(name: str, cfg: Mapping[str, Any] | Message) -> Storage:
    return default_registry.open(name, cfg)


def check_request_upload(upload: Message) -> None:
    default_registry.check_request_upload(upload)


def storage_from_spec(spec: Mapping[str, Any]) -> Storage:
    return default_registry.from_spec(spec)


def storage_for_output(
    output: Message | None,
    request_storage: Message | None = None,
    default: Mapping[str, Any] | None = None,
    *,
    network: NetworkPolicy | None = None,
) -> Storage | None:
    return default_registry.storage_for_output(output, request_storage, default, network=network)
