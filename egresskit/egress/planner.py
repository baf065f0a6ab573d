"""From a validated request to a graph: where outputs go, where they upload, which stages run."""

from __future__ import annotations

import mimetypes
import posixpath
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from egresskit.egress import naming
from egresskit.egress.encoding import InvalidRequest
from egresskit.egress.errors import NotSupported, RoomNotFound, SourceUnavailable, TrackNotFound
from egresskit.egress.graphs import (
    FileOutput,
    ImageOutput,
    Output,
    SegmentsOutput,
    StreamOutput,
    WebStages,
    composite_graph,
    stage_encodings,
    web_graph,
)
from egresskit.egress.manifest import manifest_name
from egresskit.egress.track_graphs import (
    SourceNotFound,
    TrackDescription,
    participant_graph,
    track_composite_graph,
    track_graph,
    track_websocket_graph,
)
from egresskit.egress.validation import EgressSpec, with_extensions
from egresskit.netpolicy import NetworkPolicy
from egresskit.pipeline import Graph
from egresskit.rooms.local import LocalRoom, RoomManager
from egresskit.stages.compositor import VideoCompositor
from egresskit.stages.hls import HlsSegmenter
from egresskit.stages.page import START_SIGNAL_TIMEOUT_S, PageSource
from egresskit.stages.participants import ParticipantChoice, ParticipantGate
from egresskit.stages.snapshot import ImageSnapshotter
from egresskit.stages.stream import StreamSink
from egresskit.storage.base import Storage
from egresskit.storage.paths import NameTooLong, PathEscapesRoot, confine
from egresskit.storage.registry import storage_from_request, storage_from_spec, storage_from_upload
from egresskit.web import BrowserUnavailable, check_available

CONTENT_TYPES = {
    ".mp4": "video/mp4",
    ".ogg": "audio/ogg",
    ".webm": "video/webm",
    ".mp3": "audio/mpeg",
    ".ts": "video/mp2t",
    ".m3u8": "application/vnd.apple.mpegurl",
    ".jpeg": "image/jpeg",
    ".json": "application/json",
}


def content_type(path: Path) -> str:
    return (
        CONTENT_TYPES.get(path.suffix.lower())
        or mimetypes.guess_type(path.name)[0]
        or "application/octet-stream"
    )


@dataclass
class PlannedFile:
    """One file the graph writes locally, and where it goes when the egress ends."""

    local_path: Path
    key: str  # the requested relative name; the object key when it uploads
    storage: Storage | None
    disable_manifest: bool
    writer: Any = None  # the stage writing it: size, duration_s

    @property
    def content_type(self) -> str:
        return content_type(self.local_path)


@dataclass
class PlannedDirectory:
    """Segments or images: many files under one prefix, uploaded as each one is written."""

    stage: HlsSegmenter | ImageSnapshotter
    local_dir: Path
    key_dir: str  # the relative directory; object keys are key_dir/filename
    prefix: str  # the requested name prefix, relative
    storage: Storage | None
    disable_manifest: bool

    def key(self, local: Path) -> str:
        return posixpath.join(self.key_dir, local.name) if self.key_dir else local.name


@dataclass
class Plan:
    graph: Graph
    room: LocalRoom | None  # None for a web page
    compositor: VideoCompositor | None = None
    files: list[PlannedFile] = field(default_factory=list)
    segments: list[PlannedDirectory] = field(default_factory=list)
    images: list[PlannedDirectory] = field(default_factory=list)
    stream: StreamSink | None = None
    track: TrackDescription | None = None
    # the room composite's choice of who is recorded (UpdateParticipants changes it)
    participants: ParticipantGate | None = None
    page: PageSource | None = None  # a web egress or custom template: the page's browser


def _unsupported(spec: EgressSpec) -> str | None:
    """The feature a valid request needs that this build does not offer, if any."""
    if spec.custom_base_url and not spec.web_url:
        return "custom_base_url without the page's address (EgressManager resolves it)"
    if spec.stream is not None and spec.stream.protocol == "websocket" and spec.kind != "track":
        return "websocket stream outputs of composites"
    if spec.segments is not None and spec.segments.fragmented_mp4 and not spec.video:
        return "audio-only fragmented MP4 segments"
    if spec.kind == "media" and spec.audio_config is not None:
        routes = spec.audio_config.routes
        if spec.audio_config.capture_all or len(routes) > 1 or any(not r.track_id for r in routes):
            return "media audio routes other than one track id"
    return None


def check_supported(spec: EgressSpec) -> None:
    missing = _unsupported(spec)
    if missing is not None:
        raise NotSupported(f"{missing} is not implemented")


class _Namer:
    """Names and storage of one request's outputs, all confined to the output root.

    Every name an output will write is checked here, before anything runs:
    the requested path, the playlists, a sample of the generated segment or
    image names, and the manifest beside them. A path that leaves the root
    or does not fit the filesystem becomes InvalidRequest naming the field.
    """

    def __init__(
        self,
        output_root: Path,
        identifier: str,
        fields: naming.NameFields,
        when: datetime,
        default_storage: dict[str, Any] | None,
        egress_id: str,
        network: NetworkPolicy | None = None,
    ) -> None:
        self.root = output_root
        self.identifier = identifier
        self.fields = fields
        self.when = when
        self.default_storage = default_storage
        self.egress_id = egress_id
        self.network = network  # set for a caller's request: its storage is the caller's

    def confine(self, path: str | Path, field: str) -> Path:
        try:
            return confine(self.root, str(path))
        except (PathEscapesRoot, NameTooLong) as exc:
            raise InvalidRequest(field, str(exc)) from None

    def manifest_beside(self, local: Path, field: str, disabled: bool) -> None:
        if not disabled:
            self.confine(local.parent / manifest_name(self.egress_id), field)

    def storage(self, upload: Message | None) -> Storage | None:
        if upload is not None and self.network is not None:
            return storage_from_request(upload, self.network)
        if upload is not None:
            return storage_from_upload(upload)
        if self.default_storage:
            return storage_from_spec(self.default_storage)
        return None

    def file(self, requested: str, extension: str, field: str) -> tuple[str, Path]:
        relative = naming.file_path(
            requested,
            identifier=self.identifier,
            fields=self.fields,
            extension=extension,
            when=self.when,
        )
        return relative, self.confine(relative, f"{field}.filepath")

    def prefix(self, requested: str, field: str) -> tuple[str, Path]:
        relative = naming.output_prefix(
            requested, identifier=self.identifier, fields=self.fields, when=self.when
        )
        return relative, self.confine(relative, f"{field}.filename_prefix")


def plan(
    spec: EgressSpec,
    egress_id: str,
    rooms: RoomManager,
    output_root: Path,
    default_storage: dict[str, Any] | None = None,
    when: datetime | None = None,
    web_start_timeout_s: float = START_SIGNAL_TIMEOUT_S,
) -> Plan:
    """Resolve rooms, tracks, names and storage, and build the graph (nothing runs yet).

    Raises RoomNotFound, TrackNotFound, NotSupported, InvalidRequest (a
    path outside the output root or too long for its filesystem among them),
    SourceUnavailable (a web egress on a machine without a browser) or
    StorageNotInstalled for the service to turn into Twirp errors.
    `web_start_timeout_s` bounds a web egress's wait for START_RECORDING.
    """
    check_supported(spec)
    spec = with_extensions(spec)
    when = when or datetime.now(UTC)
    if spec.web_url:  # a web page or a custom template: the page is the source
        try:
            check_available()
        except BrowserUnavailable as exc:
            raise SourceUnavailable(str(exc)) from None
        # a template's room, when embedded, names its files; a LiveKit room is the page's
        room = rooms.get(spec.room_name) if spec.kind != "web" else None
        return _plan_encoded(
            spec, egress_id, room, output_root, default_storage, when, web_start_timeout_s
        )
    room = rooms.get(spec.room_name)
    if room is None:
        raise RoomNotFound(spec.room_name)
    try:
        if spec.kind == "track":
            return _plan_track(spec, egress_id, room, output_root, default_storage, when)
        return _plan_encoded(spec, egress_id, room, output_root, default_storage, when)
    except SourceNotFound as exc:
        raise TrackNotFound(str(exc)) from None


def _track_sids(spec: EgressSpec) -> tuple[str, str]:
    """(audio, video) track ids of a track composite or a media source."""
    audio = spec.audio_track_id
    if spec.kind == "media" and spec.audio_config is not None and spec.audio_config.routes:
        audio = spec.audio_config.routes[0].track_id
    return audio, spec.video_track_id


def _identifier(spec: EgressSpec, room: LocalRoom | None) -> tuple[str, naming.NameFields]:
    """The default file name stem and the template values of a request."""
    if room is None:  # a web page, or a LiveKit room's template: no room object to ask
        return spec.room_name or "web", naming.NameFields(room_name=spec.room_name, room_id="")
    if spec.participant_identity:
        fields = naming.NameFields(
            room.name, room.sid, publisher_identity=spec.participant_identity
        )
        return spec.participant_identity, fields
    audio, video = _track_sids(spec)
    if audio or video:
        track = room.track(video or audio)
        if track is None:
            raise TrackNotFound(f"track {video or audio!r} is not published in room {room.name!r}")
        described = TrackDescription.of(track)
        return room.name, described.name_fields(room)
    return room.name, naming.NameFields(room_name=room.name, room_id=room.sid)


def _plan_track(
    spec: EgressSpec,
    egress_id: str,
    room: LocalRoom,
    output_root: Path,
    default_storage: dict[str, Any] | None,
    when: datetime,
) -> Plan:
    """Track egress: the encoded track to a file as it is, or decoded PCM to a websocket."""
    track = room.track(spec.track_id)
    if track is None:
        raise TrackNotFound(f"track {spec.track_id!r} is not published in room {room.name!r}")
    described = TrackDescription.of(track)
    if spec.websocket_url:
        if described.track_kind != "audio":
            raise NotSupported("websocket output of a video track is not implemented")
        graph, stages = track_websocket_graph(
            room, spec.track_id, spec.websocket_url, name=egress_id, network=spec.network
        )
        return Plan(graph=graph, room=room, track=stages.track)
    assert spec.file is not None
    namer = _Namer(
        output_root,
        track.sid,
        described.name_fields(room),
        when,
        default_storage,
        egress_id,
        spec.network,
    )
    relative, local = namer.file(spec.file.filepath, described.extension, spec.file.field)
    namer.manifest_beside(local, spec.file.field, spec.file.disable_manifest)
    try:
        graph, stages = track_graph(room, spec.track_id, local, name=egress_id)
    except ValueError as exc:
        raise NotSupported(f"track egress of this track: {exc}") from None
    planned = PlannedFile(
        local,
        relative,
        namer.storage(spec.file.storage),
        spec.file.disable_manifest,
        stages.writer,
    )
    return Plan(graph=graph, room=room, files=[planned], track=stages.track)


def _plan_encoded(
    spec: EgressSpec,
    egress_id: str,
    room: LocalRoom | None,
    output_root: Path,
    default_storage: dict[str, Any] | None,
    when: datetime,
    web_start_timeout_s: float = START_SIGNAL_TIMEOUT_S,
) -> Plan:
    """Composites, participant, track composite and web egress: one encode, every output."""
    identifier, fields = _identifier(spec, room)
    namer = _Namer(output_root, identifier, fields, when, default_storage, egress_id, spec.network)
    outputs: list[Output] = []
    files: dict[FileOutput, PlannedFile] = {}
    # (relative prefix, local prefix, (storage, disable_manifest)) of segment and image outputs
    segment_targets: dict[SegmentsOutput, tuple[str, Path, tuple[Storage | None, bool]]] = {}
    image_targets: dict[ImageOutput, tuple[str, Path, tuple[Storage | None, bool]]] = {}
    if spec.file is not None:
        extension = naming.file_extension(spec.file.file_type)
        relative, local = namer.file(spec.file.filepath, extension, spec.file.field)
        namer.manifest_beside(local, spec.file.field, spec.file.disable_manifest)
        file_output = FileOutput(local, faststart=spec.faststart)
        outputs.append(file_output)
        files[file_output] = PlannedFile(
            local, relative, namer.storage(spec.file.storage), spec.file.disable_manifest
        )
    if spec.segments is not None:
        target = spec.segments
        relative, local = namer.prefix(target.filename_prefix, target.field)
        # Playlists sit beside the segments (validation refused directories in their names).
        playlist = naming.playlist_name(local.name, target.playlist_name)
        live_playlist = naming.live_playlist_name(target.live_playlist_name) or ""
        namer.confine(local.parent / playlist, f"{target.field}.playlist_name")
        if live_playlist:
            namer.confine(local.parent / live_playlist, f"{target.field}.live_playlist_name")
        extension = ".m4s" if target.fragmented_mp4 else ".ts"
        first = naming.segment_name(local.name, target.suffix, 0, when, extension)
        namer.confine(local.parent / first, f"{target.field}.filename_prefix")
        if target.fragmented_mp4:
            init = naming.init_segment_name(local.name)
            namer.confine(local.parent / init, f"{target.field}.filename_prefix")
        namer.manifest_beside(local, target.field, target.disable_manifest)
        segments_output = SegmentsOutput(
            local,
            playlist=playlist,
            live_playlist=live_playlist,
            segment_duration=float(target.segment_duration_s),
            suffix=target.suffix,
            fragmented_mp4=target.fragmented_mp4,
        )
        outputs.append(segments_output)
        segment_targets[segments_output] = (
            relative, local, (namer.storage(target.storage), target.disable_manifest)
        )
    for target in spec.images:
        relative, local = namer.prefix(target.filename_prefix, target.field)
        first = naming.image_name(local.name, target.suffix, 0, when)
        namer.confine(local.parent / first, f"{target.field}.filename_prefix")
        namer.manifest_beside(local, target.field, target.disable_manifest)
        image_output = ImageOutput(
            local,
            capture_interval=float(target.capture_interval_s),
            width=target.width,
            height=target.height,
            suffix=target.suffix,
        )
        outputs.append(image_output)
        image_targets[image_output] = (
            relative, local, (namer.storage(target.storage), target.disable_manifest)
        )
    if spec.stream is not None:
        outputs.append(StreamOutput(tuple(spec.stream.urls), network=spec.network))
    assert spec.encoding is not None
    video, audio = stage_encodings(spec.encoding, audio=spec.audio, video=spec.video)
    try:
        if spec.web_url:
            graph, stages = web_graph(
                spec.web_url,
                outputs,
                video=video,
                audio=audio,
                await_start_signal=spec.await_start_signal,
                start_timeout_s=web_start_timeout_s,
                name=egress_id,
            )
        elif spec.participant_identity:
            graph, stages = participant_graph(
                room,
                spec.participant_identity,
                outputs,
                screen_share=spec.screen_share,
                video=video,
                audio=audio,
                name=egress_id,
            )
        elif spec.kind in ("track_composite", "media"):
            audio_sid, video_sid = _track_sids(spec)
            graph, stages = track_composite_graph(
                room, audio_sid, video_sid, outputs, video=video, audio=audio, name=egress_id
            )
        else:
            graph, stages = composite_graph(
                room,
                outputs,
                video=video,
                audio=audio,
                layout=spec.layout or "grid",
                audio_mixing=spec.audio_mixing,
                participants=ParticipantChoice.of(spec.include_identities, spec.exclude_identities),
                name=egress_id,
            )
    except ValueError as exc:
        raise NotSupported(str(exc)) from None
    written = stages.outputs
    for file_output, planned in files.items():
        planned.writer = written.files[file_output]
    segments = [
        PlannedDirectory(written.segments[output], local.parent, posixpath.dirname(rel), rel, *to)
        for output, (rel, local, to) in segment_targets.items()
    ]
    images = [
        PlannedDirectory(written.images[output], local.parent, posixpath.dirname(rel), rel, *to)
        for output, (rel, local, to) in image_targets.items()
    ]
    return Plan(
        graph=graph,
        room=room,
        compositor=stages.compositor,
        files=list(files.values()),
        segments=segments,
        images=images,
        stream=written.stream,
        participants=stages.participants
        if spec.kind == "room_composite" and not isinstance(stages, WebStages)
        else None,
        page=stages.source if isinstance(stages, WebStages) else None,
    )
