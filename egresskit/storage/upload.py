"""Uploads that never lose a recording: retries with backoff, then an optional backup.

The local file is never removed here. On final failure ``UploadFailed`` says why, in
words scrubbed of every credential the backends hold, and the caller keeps the file.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from egresskit.masking import scrub
from egresskit.storage.base import Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: ``attempts`` tries, delays doubling from ``initial_delay``."""

    attempts: int = 5
    initial_delay: float = 0.1
    max_delay: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")

    def delay(self, failed_attempt: int) -> float:
        """Seconds to wait after the ``failed_attempt``-th failure (1-based)."""
        return min(self.max_delay, self.initial_delay * self.multiplier ** (failed_attempt - 1))


@dataclass(frozen=True)
class UploadResult:
    location: str
    backup_used: bool
    attempts: int


class UploadFailed(Exception):
    """Every attempt (and the backup, if any) failed. The message carries no secret."""

    def __init__(self, message: str, path: Path, attempts: int) -> None:
        super().__init__(message)
        self.path = path
        self.attempts = attempts


# Called as on_retry(storage, failed_attempt, scrubbed_error, delay) before each wait.
RetryHook = Callable[[Storage, int, str, float], None]


def describe_error(exc: BaseException, storage: Storage) -> str:
    """A one-line, secret-free description of ``exc``.

    Some clients put the whole response body in the message; the first line and any
    ``ErrorCode:`` line carry what a reader needs.
    """
    lines = str(exc).splitlines() or [""]
    kept = [lines[0].strip()] + [ln.strip() for ln in lines[1:] if ln.startswith("ErrorCode:")]
    text = "; ".join(part for part in kept if part)
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return scrub(text, storage.secret_values())


async def _attempts(
    storage: Storage,
    path: Path,
    key: str,
    content_type: str,
    policy: RetryPolicy,
    on_retry: RetryHook | None,
) -> tuple[str | None, int, str]:
    """Try ``storage`` up to ``policy.attempts`` times: (location or None, attempts, last error)."""
    error = ""
    for attempt in range(1, policy.attempts + 1):
        try:
            return await storage.upload_file(path, key, content_type), attempt, ""
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every backend error is retryable here
            error = describe_error(exc, storage)
            if attempt == policy.attempts:
                break
            delay = policy.delay(attempt)
            log.warning(
                "upload of %s to %s failed (attempt %d/%d), retrying in %.2fs: %s",
                key,
                storage.name,
                attempt,
                policy.attempts,
                delay,
                error,
            )
            if on_retry is not None:
                on_retry(storage, attempt, error, delay)
            await asyncio.sleep(delay)
    return None, policy.attempts, error


async def upload_with_retry(
    storage: Storage,
    path: Path,
    key: str,
    content_type: str,
    policy: RetryPolicy | None = None,
    backup: Storage | None = None,
    on_retry: RetryHook | None = None,
) -> UploadResult:
    """Upload ``path`` to ``storage``, retrying; on final failure try ``backup`` the same way.

    ``attempts`` in the result counts tries against the storage that succeeded.
    """
    policy = policy or RetryPolicy()
    path = Path(path)
    location, attempts, error = await _attempts(storage, path, key, content_type, policy, on_retry)
    if location is not None:
        return UploadResult(location, backup_used=False, attempts=attempts)
    log.error("upload of %s to %s failed after %d attempts: %s", key, storage.name, attempts, error)
    message = f"upload to {storage.name} failed after {attempts} attempts: {error}"
    if backup is None:
        raise UploadFailed(f"{message}; the file is kept at {path}", path, attempts)
    location, backup_attempts, backup_error = await _attempts(
        backup, path, key, content_type, policy, on_retry
    )
    if location is not None:
        log.warning("upload of %s went to backup storage %s", key, backup.name)
        return UploadResult(location, backup_used=True, attempts=backup_attempts)
    raise UploadFailed(
        f"{message}; backup {backup.name} failed after {backup_attempts} attempts: "
        f"{backup_error}; the file is kept at {path}",
        path,
        attempts + backup_attempts,
    )
