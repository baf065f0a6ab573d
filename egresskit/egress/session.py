"""One egress from start to end: its EgressInfo, its graph, and what happens to its outputs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from livekit.protocol import egress as egress_pb

from egresskit.egress.delivery import DirectoryDelivery
from egresskit.egress.errors import EgressEnded
from egresskit.egress.manifest import (
    ManifestImage,
    ManifestSegment,
    TrackDetails,
    build_manifest,
    manifest_name,
    write_manifest,
)
from egresskit.egress.planner import Plan, PlannedDirectory, PlannedFile
from egresskit.egress.redact import redact
from egresskit.pipeline import (
    BusEvent,
    FirstMedia,
    GraphError,
    GraphState,
    SourceClosed,
    SourceFailed,
    Stage,
    memory,
)
from egresskit.stages.hls import HlsSegmenter, InitSegmentWritten, PlaylistUpdated, SegmentClosed
from egresskit.stages.page import RecordingStarted
from egresskit.stages.participants import ParticipantChoice
from egresskit.stages.snapshot import ImageWritten
from egresskit.stages.stream import StreamState, StreamStateChanged, StreamStatus
from egresskit.stages.subscriber import RoomEmpty
from egresskit.storage.base import Storage
from egresskit.storage.upload import RetryPolicy, UploadFailed, upload_with_retry

log = logging.getLogger(__name__)

ACTIVE_STATES = (egress_pb.EGRESS_STARTING, egress_pb.EGRESS_ACTIVE, egress_pb.EGRESS_ENDING)

STOP_API = "End reason: StopEgress API"
SOURCE_CLOSED = "Source closed"
LIMIT_REACHED = "Session limit reached"
SHUTDOWN = "End reason: service shutting down"
STREAMS_STOPPED = "All streams stopped"
STREAMS_FAILED = "All streams failed"
PAUSED = "paused"  # in details while paused: the status stays ACTIVE for LiveKit clients
DISCARDED = "discarded"

_STREAM_STATUS = {
    StreamStatus.ACTIVE: egress_pb.StreamInfo.ACTIVE,
    StreamStatus.FINISHED: egress_pb.StreamInfo.FINISHED,
    StreamStatus.FAILED: egress_pb.StreamInfo.FAILED,
}

# Listener of lifecycle events: ("egress_started" | "egress_updated" | "egress_ended", session)
Listener = Callable[[str, "EgressSession"], None]


class EgressSession:
    """Runs one plan and keeps its EgressInfo true.

    STARTING -> ACTIVE (first media written) -> ENDING -> COMPLETE, FAILED,
    ABORTED or LIMIT_REACHED. Whatever ends the graph, what was written is
    finalized, uploaded (or kept locally, said in the error) and listed in
    the results and the manifest. Segments and images upload as they are
    written, not at the end.
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
        self.signing_key = ""  # the caller's API key, which signs those (empty: the server's)
        self._listener = listener
        self._max_duration_s = max_duration_s
        self._retry = retry or RetryPolicy()
        self._backup = backup
        self._end_reason = ""
        self._end_status: egress_pb.EgressStatus | None = None
        self._end_error = ""
        self._warnings = ""  # what set_details said (tracks left out), kept beside "paused"
        self._discard = False  # StopEgress with discard: delete everything written
        self._task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[GraphState] | None = None
        self._public: egress_pb.EgressInfo | None = None
        self._delivery = DirectoryDelivery(self._retry, backup)
        self._segments: dict[Stage, list[Path]] = {}  # segmenter -> the segment files it wrote
        self._images: list[tuple[PlannedDirectory, Path, int]] = []  # output, file, capture ns
        self.done = asyncio.Event()
        self.ended_monotonic: float | None = None
        self.upload_bytes = 0
        if plan.stream is not None:
            self._stream_results(plan.stream.states)
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

    # --- what the graph reports -------------------------------------------------------------

    def _on_bus(self, event: BusEvent) -> None:
        if self.info.status == egress_pb.EGRESS_STARTING and self._is_first_media(event):
            self.info.status = egress_pb.EGRESS_ACTIVE
            self._changed("egress_updated")
        match event:
            case RoomEmpty() | SourceClosed():
                self.end(SOURCE_CLOSED)
            case SourceFailed(error=error):
                # the source ended its streams: what was recorded is finalized, the egress FAILED
                self.end(error, egress_pb.EGRESS_FAILED)
            case SegmentClosed(stage=stage, segment=segment):
                self._segment_written(stage, segment.path)
            case InitSegmentWritten(stage=stage, path=path):  # fMP4's init goes as a segment
                self._segment_written(stage, path)
            case PlaylistUpdated(stage=stage, path=path, ended=ended):
                if (directory := self._output_of(self.plan.segments, stage)) is not None:
                    self._announce(directory, path, keep_local=not ended)
            case ImageWritten(stage=stage, image=image):
                if (directory := self._output_of(self.plan.images, stage)) is not None:
                    self._images.append((directory, image.path, image.timestamp_ns))
                    self._announce(directory, image.path)
            case StreamStateChanged(stage=stage):
                sink = self.plan.stream
                if sink is not None and stage is sink:
                    self._stream_results(sink.states)
                    self._changed("egress_updated")
                    self._maybe_end_streams()

    def _segment_written(self, segmenter: Stage, path: Path) -> None:
        directory = self._output_of(self.plan.segments, segmenter)
        if directory is not None:
            self._segments.setdefault(segmenter, []).append(path)
            # Kept until the playlists listing it are stored (_release_local_copies).
            self._announce(directory, path, keep_local=True)

    def _announce(
        self, directory: PlannedDirectory, path: Path, *, keep_local: bool = False
    ) -> None:
        """Upload a written file, unless the egress is being discarded."""
        if not self._discard:
            self._delivery.announce(directory, path, keep_local=keep_local)

    @staticmethod
    def _is_first_media(event: BusEvent) -> bool:
        """Media reached an output (a file, a segment, an image or a stream destination),
        or a web page's recording began: its first picture is on the frame grid."""
        if isinstance(event, FirstMedia | SegmentClosed | ImageWritten | RecordingStarted):
            return True
        return isinstance(event, StreamStateChanged) and bool(event.state.started_at_ns)

    @staticmethod
    def _output_of(
        directories: Sequence[PlannedDirectory], stage: Stage
    ) -> PlannedDirectory | None:
        """The planned output a stage writes (None for a stage of no planned output)."""
        return next((d for d in directories if d.stage is stage), None)

    def _stream_results(self, states: Sequence[StreamState]) -> None:
        del self.info.stream_results[:]
        for state in states:
            ended = state.ended_at_ns
            self.info.stream_results.add(
                url=state.url,  # redacted in public_info
                started_at=state.started_at_ns,
                ended_at=ended,
                duration=max(0, ended - state.started_at_ns)
                if ended and state.started_at_ns
                else 0,
                status=_STREAM_STATUS[state.status],
                error=state.error,
                retries=state.retries,
            )

    def _maybe_end_streams(self) -> None:
        """A stream-only egress ends when no URL is left streaming."""
        if self.plan.files or self.plan.segments or self.plan.images:
            return
        sink = self.plan.stream
        assert sink is not None
        states = sink.states
        if not states or any(s.status is StreamStatus.ACTIVE for s in states):
            return
        if sink.all_failed:
            self._end_error = STREAMS_FAILED
            self.end(STREAMS_FAILED, egress_pb.EGRESS_FAILED)
        else:
            self.end(STREAMS_STOPPED)

    # --- steering ---------------------------------------------------------------------------

    def end(self, reason: str, status: egress_pb.EgressStatus | None = None) -> None:
        """Ask the graph to drain and finish; the first reason given is the one reported."""
        if self._stopping is not None or not self.active:
            return
        self._end_reason = reason
        self._end_status = status
        if status == egress_pb.EGRESS_FAILED:
            self._end_error = reason
        if self.info.status == egress_pb.EGRESS_STARTING and status is None:
            self._end_status = egress_pb.EGRESS_ABORTED
        self.info.status = egress_pb.EGRESS_ENDING
        self._changed("egress_updated")
        self._stopping = asyncio.create_task(self.plan.graph.stop())

    def explain_source_closed(self, reason: str) -> None:
        """Why the source closed, learnt while the graph drains: the reason reported instead.

        A deleted LiveKit room sends its participants' departures (the room is
        empty, the source closes) before the room's end, in whichever order
        they are read.
        """
        if self._stopping is not None and self.active and self._end_reason == SOURCE_CLOSED:
            self._end_reason = reason

    def set_details(self, details: str) -> None:
        """What the caller should know about a running egress (tracks left out, and why).

        Unchanged details are no update: each one is a round trip to livekit-server
        that a worker's next report (ACTIVE, on the start path) would wait for."""
        if details == self._warnings:
            return
        self._warnings = details
        self._show_details()
        self._changed("egress_updated")

    def _show_details(self) -> None:
        paused = PAUSED if self.plan.graph.paused else ""
        self.info.details = "; ".join(part for part in (paused, self._warnings) if part)

    def pause(self) -> bool:
        """Write nothing until `resume`, keeping the graph and its connections.

        The status stays what it is (ACTIVE): details say "paused" and an
        egress_updated is sent. False if it was paused already. ValueError
        when the graph cannot pause (a track egress keeps its track's timing),
        EgressEnded once it is ending.
        """
        self._check_running()
        try:
            changed = self.plan.graph.pause()
        except GraphError as exc:
            raise ValueError(f"this egress cannot pause: {exc}") from None
        if changed:
            self._show_details()
            self._changed("egress_updated")
        return changed

    def resume(self) -> bool:
        """Go on writing, timestamps continuous; False if it was not paused."""
        self._check_running()
        try:
            changed = self.plan.graph.resume()
        except GraphError as exc:
            raise ValueError(f"this egress cannot resume: {exc}") from None
        if changed:
            self._show_details()
            self._changed("egress_updated")
        return changed

    def _check_running(self) -> None:
        if self.plan.graph.state is not GraphState.RUNNING:
            raise EgressEnded(f"egress {self.egress_id} is ending")

    def choose_participants(self, include: Sequence[str], exclude: Sequence[str]) -> None:
        """Record only `include` (empty: everyone) and never `exclude`, from media of this instant."""
        participants = self.plan.participants
        if participants is None:
            raise ValueError("only a room composite chooses its participants")
        participants.choose(ParticipantChoice.of(include, exclude))
        self._changed("egress_updated")

    def discard(self) -> None:
        """End the egress and delete everything it wrote and uploaded; it ends ABORTED."""
        if self._stopping is not None or not self.active:
            return
        self._discard = True
        self.end(DISCARDED, egress_pb.EGRESS_ABORTED)

    def update_layout(self, layout: str) -> None:
        """Switch the compositor's layout at its next frame, or tell a template page its layout."""
        if self.plan.page is not None and self.kind != "web":  # a custom template
            self.plan.page.set_layout(layout)
        elif self.plan.compositor is None:
            raise ValueError("this egress has no video to lay out")
        else:
            self.plan.compositor.set_layout(layout or "grid")
        if self.info.HasField("room_composite"):  # not a StartEgress request's oneof
            self.info.room_composite.layout = layout
        self._changed("egress_updated")

    async def update_stream(self, add: Sequence[str], remove: Sequence[str]) -> None:
        """Add and remove stream URLs; ValueError for a URL that cannot be added or removed."""
        sink = self.plan.stream
        if sink is None:
            raise ValueError("egress has no stream output to update")
        for url in add:
            sink.add_url(url)
        for url in remove:
            try:
                await sink.remove_url(url)
            except KeyError as exc:
                raise ValueError(str(exc.args[0])) from None
        self._stream_results(sink.states)
        self._changed("egress_updated")

    async def wait(self) -> None:
        await self.done.wait()

    async def abort(self) -> None:
        """Cancel the graph now (files are still closed and delivered)."""
        await self.plan.graph.cancel()

    # --- the end ----------------------------------------------------------------------------

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
        try:
            await self._finish(state)
        finally:
            # The info now says everything; the graph's codecs, frames and threads go now.
            self.plan.graph.release()
            await asyncio.to_thread(memory.trim)

    async def _finish(self, state: GraphState) -> None:
        """Deliver and report what was written, then end: no failing step keeps it from ending.

        Each step runs guarded (a read-only directory, a full disk, a failing
        storage); its error joins `info.error`, the steps after it still run,
        and the egress always reaches a final status and sends egress_ended.
        """
        graph = self.plan.graph
        info = self.info
        info.ended_at = time.time_ns()
        errors: list[str] = []
        if state is GraphState.FAILED:
            errors.append(
                f"{graph.failed_stage}: {graph.error}" if graph.failed_stage else str(graph.error)
            )
        try:
            if self._discard:
                await self._discard_outputs(errors)
                return
            for planned in self.plan.files:
                with _collected(errors, f"file {planned.key}"):
                    error = await self._deliver(planned)
                    if error:
                        errors.append(error)
            with _collected(errors, "uploads"):
                await self._delivery.finish()
            for directory in self.plan.segments:
                with _collected(errors, "segments"):
                    await self._release_local_copies(directory)
            errors.extend(self._delivery.errors)
            self.upload_bytes += self._delivery.uploaded_bytes
            if self._delivery.backup_used:
                info.backup_storage_used = True
            with _collected(errors, "results"):
                self._segment_results()
                self._image_results()
                if self.plan.stream is not None:
                    self._stream_results(self.plan.stream.states)
                self._legacy_results()
            await self._write_manifests(errors)
        finally:
            self._conclude(errors)

    def _conclude(self, errors: list[str]) -> None:
        """The final status, error and details; egress_ended; waiters released."""
        info = self.info
        if self._discard and not errors:
            info.status = egress_pb.EGRESS_ABORTED
            info.details = DISCARDED
            self.ended_monotonic = time.monotonic()
            try:
                self._changed("egress_ended")
            finally:
                self.done.set()
            return
        if errors:
            info.status = egress_pb.EGRESS_FAILED
            info.error = "; ".join(errors)
            info.error_code = 500
        elif self._end_status == egress_pb.EGRESS_FAILED:
            info.status = egress_pb.EGRESS_FAILED
            info.error = self._end_error
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
        ended = self._end_reason or SOURCE_CLOSED
        # warnings given while running (set_details) stay, after why the egress ended
        info.details = f"{ended}; {self._warnings}" if self._warnings else ended
        self.ended_monotonic = time.monotonic()
        try:
            self._changed("egress_ended")
        finally:
            self.done.set()

    async def _discard_outputs(self, errors: list[str]) -> None:
        """StopEgress with discard: delete every file written and every object uploaded.

        Uploads under way finish first, so that nothing lands after its
        deletion; no manifest is written. What cannot be deleted is named in
        `errors` (the egress then ends FAILED saying so).
        """
        with _collected(errors, "uploads"):
            await self._delivery.finish()
        for planned in self.plan.files:
            with _collected(errors, f"discarding {planned.key}"):
                await asyncio.to_thread(planned.local_path.unlink, missing_ok=True)
        written: list[tuple[PlannedDirectory, Path]] = []
        for directory in self.plan.segments:
            segmenter = _segmenter(directory)
            segments = self._segments.get(segmenter, [])
            written += [(directory, path) for path in (*segments, *segmenter.playlists)]
        written += [(directory, path) for directory, path, _ in self._images]
        for directory, path in written:
            key = directory.key(path)
            with _collected(errors, f"discarding {key}"):
                if directory.storage is not None:
                    await directory.storage.delete(key)
                if self._backup is not None and self._delivery.used_backup(path):
                    await self._backup.delete(key)
                await asyncio.to_thread(path.unlink, missing_ok=True)

    async def _release_local_copies(self, directory: PlannedDirectory) -> None:
        """Delete the local copies of stored segments and playlists once every playlist is stored.

        Until then (a playlist upload failed, the queue was full) they all
        stay, so the local playlist, reported as the playlist's location,
        plays from local files.
        """
        if directory.storage is None:
            return
        segmenter = _segmenter(directory)
        playlists = segmenter.playlists
        if not all(self._delivery.stored(p) for p in playlists):
            return
        segments = self._segments.get(segmenter, [])
        for path in (*segments, *playlists):
            if self._delivery.stored(path):
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(path.unlink, missing_ok=True)

    async def _deliver(self, planned: PlannedFile) -> str:
        """Fill the file's result; upload it if it has a storage. Returns an error or ''."""
        writer = planned.writer
        size = writer.size
        # add() returns the stored element (append would store a copy), so the upload's
        # location set below lands in file_results.
        result = self.info.file_results.add(
            filename=planned.key,
            started_at=self.info.started_at,
            ended_at=self.info.ended_at,
            duration=int(writer.duration_s * 1e9),
            size=size,
            location=str(planned.local_path),
        )
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
        if uploaded.backup_used:
            self.info.backup_storage_used = True
        with contextlib.suppress(OSError):
            await asyncio.to_thread(planned.local_path.unlink)
        return ""

    def _segment_results(self) -> None:
        for directory in self.plan.segments:
            results = _segmenter(directory).results
            live = results.live_playlist
            self.info.segment_results.add(
                playlist_name=directory.key(results.playlist),
                live_playlist_name=directory.key(live) if live is not None else "",
                duration=int(results.duration_s * 1e9),
                size=results.size,
                playlist_location=self._delivery.location(results.playlist),
                live_playlist_location=self._delivery.location(live) if live is not None else "",
                segment_count=results.segment_count,
                started_at=results.started_at_ns,
                ended_at=results.ended_at_ns,
            )

    def _image_results(self) -> None:
        for directory in self.plan.images:
            taken = [(p, t) for d, p, t in self._images if d is directory]
            self.info.image_results.add(
                filename_prefix=directory.prefix,
                image_count=len(taken),
                started_at=taken[0][1] if taken else 0,
                ended_at=taken[-1][1] if taken else 0,
            )

    def _legacy_results(self) -> None:
        """The deprecated single-result fields, set when one output kind was used."""
        info = self.info
        kinds = [bool(info.file_results), bool(info.segment_results), bool(info.stream_results)]
        if sum(kinds) != 1 or info.image_results:
            return
        if len(info.file_results) == 1:
            info.file.CopyFrom(info.file_results[0])
        elif len(info.segment_results) == 1:
            info.segments.CopyFrom(info.segment_results[0])
        elif info.stream_results:
            info.stream.info.extend(info.stream_results)

    def _manifest(self) -> dict:
        segments = {}
        for directory, results in zip(self.plan.segments, self.info.segment_results, strict=True):
            files = self._segments.get(directory.stage, [])
            segments[results.playlist_location] = [
                ManifestSegment(directory.key(p), self._delivery.location(p)) for p in files
            ]
        images = [
            ManifestImage(directory.key(path), timestamp, self._delivery.location(path))
            for directory, path, timestamp in self._images
        ]
        track = self.plan.track
        details = (
            TrackDetails(track.track_kind, track.track_source, track.publisher_identity)
            if track is not None
            else None
        )
        writers = [f.writer for f in self.plan.files if f.writer is not None]
        return build_manifest(
            self.info,
            segments=segments,
            images=images,
            track=details,
            first_media_at_ns=writers[0].first_media_at_ns if writers else 0,
        )

    async def _write_manifests(self, errors: list[str]) -> None:
        """`{egress_id}.json` beside each output that wants one (once per place)."""
        places: dict[tuple[Path, str], Storage | None] = {}
        for planned in self.plan.files:
            if not planned.disable_manifest:
                places.setdefault(
                    (planned.local_path.parent, posixpath.dirname(planned.key)), planned.storage
                )
        for directory in (*self.plan.segments, *self.plan.images):
            if not directory.disable_manifest:
                places.setdefault((directory.local_dir, directory.key_dir), directory.storage)
        if not places:
            return
        with _collected(errors, "manifest"):
            manifest = self._manifest()
            name = manifest_name(self.egress_id)
            for (local_dir, key_dir), storage in places.items():
                with _collected(errors, "manifest"):
                    location = await self._store_manifest(
                        local_dir / name, posixpath.join(key_dir, name), storage, manifest, errors
                    )
                    if not self.info.manifest_location:
                        self.info.manifest_location = location

    async def _store_manifest(
        self, local: Path, key: str, storage: Storage | None, manifest: dict, errors: list[str]
    ) -> str:
        """Write one manifest, upload it if it has a storage; its location (local if not)."""
        await asyncio.to_thread(write_manifest, local, manifest)
        if storage is None:
            return str(local)
        try:
            uploaded = await upload_with_retry(
                storage, local, key, "application/json", self._retry, self._backup
            )
        except UploadFailed as exc:
            errors.append(f"manifest: {exc}")
            return str(local)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(local.unlink)
        return uploaded.location


def _segmenter(directory: PlannedDirectory) -> HlsSegmenter:
    """The stage writing a segments output (a planned directory's stage may be a snapshotter)."""
    stage = directory.stage
    assert isinstance(stage, HlsSegmenter), f"{stage} writes no segments"
    return stage


@contextlib.contextmanager
def _collected(errors: list[str], step: str) -> Iterator[None]:
    """Run one end-of-egress step; its failure is reported in `errors`, not raised."""
    try:
        yield
    except Exception as exc:
        log.warning("ending an egress: %s failed: %s", step, exc, exc_info=exc)
        errors.append(f"{step}: {exc}")
