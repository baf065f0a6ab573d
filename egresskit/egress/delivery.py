"""Uploads of segments, playlists and images while an egress runs, one at a time, in order."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from egresskit.egress.planner import PlannedDirectory, content_type
from egresskit.storage.base import Storage
from egresskit.storage.upload import RetryPolicy, UploadFailed, upload_with_retry

log = logging.getLogger(__name__)

# Pending uploads per egress. A segment is announced every few seconds, so this
# only fills when the storage is down for a long time; the files stay on disk.
QUEUE_SIZE = 1024


@dataclass
class Delivered:
    """Where a file is: its storage location, or its local path while that is the only copy.

    `stored` is true when the file's latest announced content is in the storage.
    """

    location: str
    backup_used: bool = False
    stored: bool = False


class DirectoryDelivery:
    """Uploads files of segment and image outputs as the stages announce them.

    Each announced file gets a location at once (its local path); a worker
    replaces it with the storage location after the upload. A file announced
    again (a playlist rewritten) is not stored until that upload succeeds,
    and a failed upload puts the location back to the local file, the only
    copy of the latest content. Failures are collected, never raised: the
    egress reports them when it ends, and the files stay under the output
    directory.
    """

    def __init__(self, retry: RetryPolicy, backup: Storage | None) -> None:
        self._retry = retry
        self._backup = backup
        self._queue: asyncio.Queue[tuple[PlannedDirectory, Path, bool]] = asyncio.Queue(QUEUE_SIZE)
        self._pending: set[Path] = set()
        self.locations: dict[Path, Delivered] = {}
        self.errors: list[str] = []
        self.uploaded_bytes = 0
        self._worker: asyncio.Task[None] | None = None

    def location(self, path: Path) -> str:
        delivered = self.locations.get(path)
        return delivered.location if delivered else str(path)

    def stored(self, path: Path) -> bool:
        """Whether the latest content announced for `path` is in the storage."""
        delivered = self.locations.get(path)
        return delivered is not None and delivered.stored

    def announce(
        self, directory: PlannedDirectory, path: Path, *, keep_local: bool = False
    ) -> None:
        """A file is complete; upload it if its output has a storage (repeat calls coalesce)."""
        delivered = self.locations.setdefault(path, Delivered(str(path)))
        delivered.stored = False
        if directory.storage is None or path in self._pending:
            return
        try:
            self._queue.put_nowait((directory, path, keep_local))
        except asyncio.QueueFull:
            self.errors.append(f"upload queue full: {path.name} is kept at {path}")
            return
        self._pending.add(path)
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="directory uploads")

    async def _work(self) -> None:
        while True:
            directory, path, keep_local = await self._queue.get()
            self._pending.discard(path)
            try:
                await self._upload(directory, path, keep_local)
            finally:
                self._queue.task_done()

    async def _upload(self, directory: PlannedDirectory, path: Path, keep_local: bool) -> None:
        assert directory.storage is not None
        try:
            size = (await asyncio.to_thread(path.stat)).st_size
            result = await upload_with_retry(
                directory.storage,
                path,
                directory.key(path),
                content_type(path),
                self._retry,
                self._backup,
            )
        except (UploadFailed, OSError) as exc:
            self.errors.append(str(exc))
            self.locations[path] = Delivered(str(path))  # an older stored copy is stale
            return
        self.uploaded_bytes += size
        self.locations[path] = dataclasses.replace(
            self.locations[path], location=result.location, backup_used=result.backup_used
        )
        if path not in self._pending:  # announced again meanwhile: that content is not stored
            self.locations[path].stored = True
        if not keep_local:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(path.unlink)

    async def finish(self) -> None:
        """Wait for every announced upload, then stop the worker."""
        if self._worker is None:
            return
        await self._queue.join()
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker

    def used_backup(self, path: Path) -> bool:
        """Whether `path` went to the backup storage."""
        delivered = self.locations.get(path)
        return delivered is not None and delivered.backup_used

    @property
    def backup_used(self) -> bool:
        return any(d.backup_used for d in self.locations.values())
