"""From a validated request to a graph: where files go, where they upload, which stages run."""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from egresskit.egress.errors import NotSupported, RoomNotFound
from egresskit.egress.graphs import CompositeStages, FileOutput, composite_graph, stage_encodings
from egresskit.egress.naming import NameFields, confine, file_extension, file_path
from egresskit.egress.validation import EgressSpec
from egresskit.pipeline import Graph
from egresskit.rooms.local import LocalRoom, RoomManager
from egresskit.storage.base import Storage
from egresskit.storage.registry import storage_from_spec, storage_from_upload

CONTENT_TYPES = {
    ".mp4": "video/mp4",
    ".ogg": "audio/ogg",
    ".webm": "video/webm",
    ".mp3": "audio/mpeg",
}


@dataclass
class PlannedFile:
    """One file the graph writes locally, and where it goes when the egress ends."""

    local_path: Path
    key: str  # the requested relative name; the object key when it uploads
    storage: Storage | None
    disable_manifest: bool

    @property
    def content_type(self) -> str:
        suffix = self.local_path.suffix.lower()
        return (
            CONTENT_TYPES.get(suffix)
            or mimetypes.guess_type(self.local_path.name)[0]
            or "application/octet-stream"
        )


@dataclass
class Plan:
    graph: Graph
    stages: CompositeStages
    room: LocalRoom
    files: list[PlannedFile] = field(default_factory=list)


def _unsupported(spec: EgressSpec) -> str | None:
    """The feature a valid request needs that this build does not offer, if any."""
    if spec.kind == "web":
        return "web egress (recording a web page needs a browser, which egresskit does not run)"
    if spec.custom_base_url:
        return "custom_base_url (layouts are drawn by egresskit, not by a web page)"
    if spec.kind in ("track", "track_composite", "participant", "media"):
        return f"{spec.kind.replace('_', ' ')} egress"
    if spec.segments is not None:
        return "segment (HLS) outputs"
    if spec.stream is not None:
        return "stream outputs"
    if spec.images:
        return "image outputs"
    if spec.await_start_signal:
        return "await_start_signal"
    return None


def check_supported(spec: EgressSpec) -> None:
    missing = _unsupported(spec)
    if missing is not None:
        raise NotSupported(f"{missing} is not implemented yet")


def plan(
    spec: EgressSpec,
    egress_id: str,
    rooms: RoomManager,
    output_root: Path,
    default_storage: dict[str, Any] | None = None,
    when: datetime | None = None,
) -> Plan:
    """Resolve rooms, names and storage, and build the graph (nothing runs yet).

    Raises RoomNotFound, NotSupported, PathEscapesRoot, InvalidRequest or
    StorageNotInstalled for the service to turn into Twirp errors.
    """
    check_supported(spec)
    room = rooms.get(spec.room_name)
    if room is None:
        raise RoomNotFound(spec.room_name)
    when = when or datetime.now(UTC)
    fields = NameFields(room_name=room.name, room_id=room.sid)
    files: list[PlannedFile] = []
    if spec.file is not None:
        relative = file_path(
            spec.file.filepath,
            identifier=room.name,
            fields=fields,
            extension=file_extension(spec.file.file_type),
            when=when,
        )
        local = confine(output_root, relative)
        if spec.file.storage is not None:
            storage = storage_from_upload(spec.file.storage)
        elif default_storage:
            storage = storage_from_spec(default_storage)
        else:
            storage = None
        files.append(PlannedFile(local, relative, storage, spec.file.disable_manifest))
    assert spec.encoding is not None
    video, audio = stage_encodings(spec.encoding, audio=spec.audio, video=spec.video)
    graph, stages = composite_graph(
        room,
        [FileOutput(f.local_path) for f in files],
        video=video,
        audio=audio,
        layout=spec.layout or "grid",
        audio_mixing=spec.audio_mixing,
        name=egress_id,
    )
    return Plan(graph=graph, stages=stages, room=room, files=files)
