"""One egress from start to end: its EgressInfo, its graph, and what happens to its files."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import time
from collections.abc import Callable

from livekit.protocol import egress as egress_pb

from egresskit.egress.manifest import build_manifest, manifest_name, write_manifest
from egresskit.egress.planner import Plan, PlannedFile
from egresskit.egress.redact import redact
from egresskit.pipeline import BusMessage, GraphState
from egresskit.stages.muxer import FileMuxer
from egresskit.storage.base import Storage
from egresskit.storage.upload import RetryPolicy, UploadFailed, upload_with_retry

log = logging.getLogger(__name__)

ACTIVE_STATES = (egress_pb.EGRESS_STARTING, egress_pb.EGRESS_ACTIVE, egress_pb.EGRESS_ENDING)

STOP_API = "End reason: StopEgress API"
SOURCE_CLOSED = "Source closed"
LIMIT_REACHED = "Session limit reached"
SHUTDOWN = "End reason: service shutting down"

# Listener of lifecycle events: ("egress_started" | "egress_updated" | "egress_ended", session)
Listener = Callable[[str, "EgressSession"], None]


class EgressSession:
    """Runs one plan and keeps its EgressInfo true.

    STARTING -> ACTIVE (first media written) -> ENDING -> COMPLETE, FAILED,
    ABORTED or LIMIT_REACHED. Whatever ends the graph, files that were
    written are finalized, uploaded (or kept locally, said in the error) and
    listed in the results and the manifest.
    """

    def __init__(
        self,
        info: egress_pb.EgressInfo,
        plan: Plan,
        *,
        listener: Listener,
        kind: str = "",
        max_duration_s: float = 0.0,
        retry: RetryPolicy | None = None,
        backup: Storage | None = None,
    ) -> None:
        self.info = info
        self.plan = plan
        self.kind = kind  # the EgressSpec kind: room_composite, track, ...
        self.webhooks: tuple = ()  # the request's extra webhook targets
        self._listener = listener
        self._max_duration_s = max_duration_s
        self._retry = retry or RetryPolicy()
        self._backup = backup
        self._end_reason = ""
        self._end_status: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[GraphState] | None = None
        self._public: egress_pb.EgressInfo | None = None
        self.done = asyncio.Event()
        self.ended_monotonic: float | None = None
        self.upload_bytes = 0
        plan.graph.bus.subscribe(self._on_bus)

    @property
    def egress_id(self) -> str:
        return self.info.egress_id

    @property
    def active(self) -> bool:
        return self.info.status in ACTIVE_STATES

    def public_info(self) -> egress_pb.EgressInfo:
        """The EgressInfo as callers see it: secrets and stream keys redacted (cached)."""
        if self._public is None:
            self._public = redact(self.info)
        return self._public

    def _changed(self, event: str | None = None) -> None:
        self.info.updated_at = time.time_ns()
        self._public = None
        if event is not None:
            self._listener(event, self)

    async def start(self) -> None:
        self.info.status = egress_pb.EGRESS_STARTING
        self.info.started_at = time.time_ns()
        self._changed("egress_started")
        await self.plan.graph.start()
        self._task = asyncio.create_task(self._run(), name=f"egress {self.egress_id}")

    def _on_bus(self, message: BusMessage) -> None:
        if message.kind == "first_media" and self.info.status == egress_pb.EGRESS_STARTING:
            self.info.status = egress_pb.EGRESS_ACTIVE
            self._changed("egress_updated")
        elif message.kind == "room_empty":
            self.end(SOURCE_CLOSED)

    def end(self, reason: str, status: int | None = None) -> None:
        """Ask the graph to drain and finish; the first reason given is the one reported."""
        if self._stopping is not None or not self.active:
            return
        self._end_reason = reason
        self._end_status = status
        if self.info.status == egress_pb.EGRESS_STARTING:
            self._end_status = egress_pb.EGRESS_ABORTED if status is None else status
        self.info.status = egress_pb.EGRESS_ENDING
        self._changed("egress_updated")
        self._stopping = asyncio.create_task(self.plan.graph.stop())

    async def _run(self) -> None:
        limit = None
        if self._max_duration_s > 0:
            limit = asyncio.get_running_loop().call_later(
                self._max_duration_s, self.end, LIMIT_REACHED, egress_pb.EGRESS_LIMIT_REACHED
            )
        try:
            state = await self.plan.graph.wait()
        finally:
            if limit is not None:
                limit.cancel()
        await self._finish(state)

    async def _finish(self, state: GraphState) -> None:
        graph = self.plan.graph
        info = self.info
        info.ended_at = time.time_ns()
        errors: list[str] = []
        if state is GraphState.FAILED:
            errors.append(
                f"{graph.failed_stage}: {graph.error}" if graph.failed_stage else str(graph.error)
            )
        for planned, muxer in zip(self.plan.files, self.plan.stages.muxers, strict=True):
            error = await self._deliver(planned, muxer)
            if error:
                errors.append(error)
        await self._write_manifests(errors)
        if errors:
            info.status = egress_pb.EGRESS_FAILED
            info.error = "; ".join(errors)
            info.error_code = 500
        elif self._end_status is not None:
            info.status = self._end_status
            if self._end_status == egress_pb.EGRESS_LIMIT_REACHED:
                info.error_code = 413
            elif self._end_status == egress_pb.EGRESS_ABORTED:
                info.error = "egress stopped before any media was recorded"
                info.error_code = 412
        else:
            info.status = egress_pb.EGRESS_COMPLETE
        info.details = self._end_reason or SOURCE_CLOSED
        self.ended_monotonic = time.monotonic()
        self._changed("egress_ended")
        self.done.set()

    async def _deliver(self, planned: PlannedFile, muxer: FileMuxer) -> str:
        """Fill the file's result; upload it if it has a storage. Returns an error or ''."""
        size = muxer.size
        # add() returns the stored element (append would store a copy), so the upload's
        # location set below lands in file_results.
        result = self.info.file_results.add(
            filename=planned.key,
            started_at=self.info.started_at,
            ended_at=self.info.ended_at,
            duration=int(muxer.duration_s * 1e9),
            size=size,
            location=str(planned.local_path),
        )
        if self._single_file_output():
            self.info.file.CopyFrom(result)
        if planned.storage is None or size == 0:
            return ""
        try:
            uploaded = await upload_with_retry(
                planned.storage,
                planned.local_path,
                planned.key,
                planned.content_type,
                self._retry,
                self._backup,
            )
        except UploadFailed as exc:
            return str(exc)
        self.upload_bytes += size
        result.location = uploaded.location
        if self._single_file_output():
            self.info.file.CopyFrom(result)
        if uploaded.backup_used:
            self.info.backup_storage_used = True
        with contextlib.suppress(OSError):
            planned.local_path.unlink()
        return ""

    def _single_file_output(self) -> bool:
        return len(self.plan.files) == 1 and not (
            self.info.stream_results or self.info.segment_results or self.info.image_results
        )

    async def _write_manifests(self, errors: list[str]) -> None:
        for planned in self.plan.files:
            if planned.disable_manifest:
                continue
            manifest = build_manifest(self.info)
            local = planned.local_path.parent / manifest_name(self.egress_id)
            await asyncio.to_thread(write_manifest, local, manifest)
            self.info.manifest_location = str(local)
            if planned.storage is None:
                continue
            key = posixpath.join(posixpath.dirname(planned.key), manifest_name(self.egress_id))
            try:
                uploaded = await upload_with_retry(
                    planned.storage, local, key, "application/json", self._retry, self._backup
                )
            except UploadFailed as exc:
                errors.append(f"manifest: {exc}")
                continue
            self.info.manifest_location = uploaded.location
            with contextlib.suppress(OSError):
                local.unlink()

    def update_layout(self, layout: str) -> None:
        """Switch the compositor's layout at its next frame."""
        compositor = self.plan.stages.compositor
        if compositor is None:
            raise ValueError("this egress has no video to lay out")
        compositor.set_layout(layout or "grid")
        self.info.room_composite.layout = layout
        self._changed("egress_updated")

    async def wait(self) -> None:
        await self.done.wait()

    async def abort(self) -> None:
        """Cancel the graph now (files are still closed and delivered)."""
        await self.plan.graph.cancel()
