"""Where recordings go: the Storage contract, backends found by entry point, safe uploads.

Built-in backends are ``local`` and ``s3``; ``gcp``, ``azure`` and ``alioss`` come from the
separate distributions ``egresskit-gcs``, ``egresskit-azure`` and ``egresskit-alioss``, and
anyone can add a backend by publishing an ``egresskit.storage`` entry point.

The S3 tests and benchmark run against moto in server mode: it installs from PyPI with
the test extras (no binary download, no container), speaks the S3 REST API including
multipart uploads, object tagging and user metadata, can enforce credentials when asked,
and starts in about a second, so fault tests can stop and restart it freely.
"""

from egresskit.storage.base import Storage, config_to_dict
from egresskit.storage.registry import (
    Registry,
    StorageNotInstalled,
    get_backend,
    open_storage,
    storage_for_output,
    storage_from_spec,
)
from egresskit.storage.upload import RetryPolicy, UploadFailed, UploadResult, upload_with_retry

__all__ = [
    "Registry",
    "RetryPolicy",
    "Storage",
    "StorageNotInstalled",
    "UploadFailed",
    "UploadResult",
    "config_to_dict",
    "get_backend",
    "open_storage",
    "storage_for_output",
    "storage_from_spec",
    "upload_with_retry",
]
