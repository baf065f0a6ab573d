"""From a validated request to a graph: where outputs go, where they upload, which stages run."""

from __future__ import annotations

import mimetypes
import posixpath
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from google.protobuf.message import Message

from egresskit.egress import naming
from egresskit.egress.encoding import InvalidRequest
from egresskit.egress.errors import NotSupported, RoomNotFound, SourceUnavailable, TrackNotFound
from egresskit.egress.graphs import (
    CompositeStages,
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
from egresskit.egress.naming import TrackDescription
from egresskit.egress.spec import (
    EgressSpec,
    FileTarget,
    ImagesTarget,
    MediaSource,
    ParticipantSource,
    RoomCompositeSource,
    SegmentsTarget,
    StreamTarget,
    TrackCompositeSource,
    TrackSource,
)
from egresskit.egress.track_graphs import (
    SourceNotFound,
    participant_graph,
    track_composite_graph,
    track_graph,
    track_websocket_graph,
)
from egresskit.egress.validation import with_extensions
from egresskit.netpolicy import NetworkPolicy
from egresskit.pipeline import Graph
from egresskit.rooms.local import LocalRoom
from egresskit.stages.compositor import VideoCompositor
from egresskit.stages.hls import HlsSegmenter
from egresskit.stages.page import START_SIGNAL_TIMEOUT_S, PageSource
from egresskit.stages.participants import ParticipantChoice, ParticipantGate
from egresskit.stages.snapshot import ImageSnapshotter
from egresskit.stages.stream import StreamSink
from egresskit.storage.base import Storage
from egresskit.storage.paths import NameTooLong, PathEscapesRoot, confine
from egresskit.storage.registry import storage_for_output
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
    source = spec.source
    if isinstance(source, RoomCompositeSource) and source.custom_base_url and not source.page:
        return "custom_base_url without the page's address (EgressManager resolves it)"
    if spec.stream is not None and spec.stream.protocol == "websocket":
        return "websocket stream outputs of composites"
    if spec.segments is not None and spec.segments.fragmented_mp4 and not spec.video:
        return "audio-only fragmented MP4 segments"
    if isinstance(source, MediaSource) and source.audio_config is not None:
        routes = source.audio_config.routes
        if (
            source.audio_config.capture_all
            or len(routes) > 1
            or any(not r.track_id for r in routes)
        ):
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
        spec: EgressSpec,
    ) -> None:
        self.root = output_root
        self.identifier = identifier
        self.fields = fields
        self.when = when
        self.default_storage = default_storage
        self.egress_id = egress_id
        self.request_storage = spec.request_storage
        self.network = spec.network  # set for a caller's request: its storage is the caller's

    def confine(self, path: str | Path, field: str) -> Path:
        try:
            return confine(self.root, str(path))
        except (PathEscapesRoot, NameTooLong) as exc:
            raise InvalidRequest(field, str(exc)) from None

    def manifest_beside(self, local: Path, field: str, disabled: bool) -> None:
        if not disabled:
            self.confine(local.parent / manifest_name(self.egress_id), field)

    def storage(self, upload: Message | None) -> Storage | None:
        """Where an output with its own `upload` (or None) goes: the registry's precedence."""
        return storage_for_output(
            upload, self.request_storage, self.default_storage, network=self.network
        )

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


class Rooms(Protocol):
    """Where the planner finds a request's room: a RoomManager, or the one room joined for it."""

    def get(self, name: str) -> LocalRoom | None: ...


def plan(
    spec: EgressSpec,
    egress_id: str,
    rooms: Rooms,
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
    room: LocalRoom | None
    if spec.page is not None:  # a web page or a custom template: the page is the source
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
        if isinstance(spec.source, TrackSource):
            return _plan_track(
                spec, spec.source, egress_id, room, output_root, default_storage, when
            )
        return _plan_encoded(spec, egress_id, room, output_root, default_storage, when)
    except SourceNotFound as exc:
        raise TrackNotFound(str(exc)) from None


def _followed_participant(spec: EgressSpec) -> tuple[str, bool]:
    """(identity, screen share) of the participant a request follows ("" when none)."""
    source = spec.source
    if isinstance(source, ParticipantSource):
        return source.identity, source.screen_share
    if isinstance(source, MediaSource):
        return source.participant_identity, source.screen_share
    return "", False


def _identifier(spec: EgressSpec, room: LocalRoom | None) -> tuple[str, naming.NameFields]:
    """The default file name stem and the template values of a request."""
    source = spec.source
    if room is None:  # a web page, or a LiveKit room's template: no room object to ask
        return spec.room_name or "web", naming.NameFields(room_name=spec.room_name, room_id="")
    identity, _ = _followed_participant(spec)
    if identity:
        return identity, naming.NameFields(room.name, room.sid, publisher_identity=identity)
    if isinstance(source, TrackCompositeSource | MediaSource):
        audio, video = source.audio_track_id, source.video_track_id
        track = room.track(video or audio)
        if track is None:
            raise TrackNotFound(f"track {video or audio!r} is not published in room {room.name!r}")
        return room.name, TrackDescription.of(track).name_fields(room)
    return room.name, naming.NameFields(room_name=room.name, room_id=room.sid)


def _plan_track(
    spec: EgressSpec,
    source: TrackSource,
    egress_id: str,
    room: LocalRoom,
    output_root: Path,
    default_storage: dict[str, Any] | None,
    when: datetime,
) -> Plan:
    """Track egress: the encoded track to a file as it is, or decoded PCM to a websocket."""
    track = room.track(source.track_id)
    if track is None:
        raise TrackNotFound(f"track {source.track_id!r} is not published in room {room.name!r}")
    described = TrackDescription.of(track)
    if source.websocket_url:
        if described.track_kind != "audio":
            raise NotSupported("websocket output of a video track is not implemented")
        graph, websocket = track_websocket_graph(
            room, source.track_id, source.websocket_url, name=egress_id, network=spec.network
        )
        return Plan(graph=graph, room=room, track=websocket.track)
    assert spec.file is not None
    namer = _Namer(
        output_root, track.sid, described.name_fields(room), when, default_storage, egress_id, spec
    )
    relative, local = namer.file(spec.file.filepath, described.extension, spec.file.field)
    namer.manifest_beside(local, spec.file.field, spec.file.disable_manifest)
    try:
        graph, stages = track_graph(room, source.track_id, local, name=egress_id)
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


@dataclass
class _DirectoryTarget:
    """Where a segments or images output writes and uploads, before its stage exists."""

    relative: str  # the requested prefix, relative to the output root
    local: Path
    storage: Storage | None
    disable_manifest: bool

    def bind(self, stage: HlsSegmenter | ImageSnapshotter) -> PlannedDirectory:
        key_dir = posixpath.dirname(self.relative)
        return PlannedDirectory(
            stage, self.local.parent, key_dir, self.relative, self.storage, self.disable_manifest
        )


def _file_output(
    target: FileTarget, namer: _Namer, faststart: bool
) -> tuple[FileOutput, PlannedFile]:
    extension = naming.file_extension(target.file_type)
    relative, local = namer.file(target.filepath, extension, target.field)
    namer.manifest_beside(local, target.field, target.disable_manifest)
    planned = PlannedFile(local, relative, namer.storage(target.storage), target.disable_manifest)
    return FileOutput(local, faststart=faststart), planned


def _segments_output(
    target: SegmentsTarget, namer: _Namer
) -> tuple[SegmentsOutput, _DirectoryTarget]:
    relative, local = namer.prefix(target.filename_prefix, target.field)
    # Playlists sit beside the segments (validation refused directories in their names).
    playlist = naming.playlist_name(local.name, target.playlist_name)
    live_playlist = naming.live_playlist_name(target.live_playlist_name) or ""
    namer.confine(local.parent / playlist, f"{target.field}.playlist_name")
    if live_playlist:
        namer.confine(local.parent / live_playlist, f"{target.field}.live_playlist_name")
    extension = ".m4s" if target.fragmented_mp4 else ".ts"
    first = naming.segment_name(local.name, target.suffix, 0, namer.when, extension)
    namer.confine(local.parent / first, f"{target.field}.filename_prefix")
    if target.fragmented_mp4:
        init = naming.init_segment_name(local.name)
        namer.confine(local.parent / init, f"{target.field}.filename_prefix")
    namer.manifest_beside(local, target.field, target.disable_manifest)
    output = SegmentsOutput(
        local,
        playlist=playlist,
        live_playlist=live_playlist,
        segment_duration=float(target.segment_duration_s),
        suffix=target.suffix,
        fragmented_mp4=target.fragmented_mp4,
    )
    storage = namer.storage(target.storage)
    return output, _DirectoryTarget(relative, local, storage, target.disable_manifest)


def _images_output(target: ImagesTarget, namer: _Namer) -> tuple[ImageOutput, _DirectoryTarget]:
    relative, local = namer.prefix(target.filename_prefix, target.field)
    first = naming.image_name(local.name, target.suffix, 0, namer.when)
    namer.confine(local.parent / first, f"{target.field}.filename_prefix")
    namer.manifest_beside(local, target.field, target.disable_manifest)
    output = ImageOutput(
        local,
        capture_interval=float(target.capture_interval_s),
        width=target.width,
        height=target.height,
        suffix=target.suffix,
    )
    storage = namer.storage(target.storage)
    return output, _DirectoryTarget(relative, local, storage, target.disable_manifest)


def _stream_output(target: StreamTarget, network: NetworkPolicy | None) -> StreamOutput:
    return StreamOutput(target.urls, network=network)


def _encoded_graph(
    spec: EgressSpec,
    room: LocalRoom | None,
    outputs: list[Output],
    egress_id: str,
    web_start_timeout_s: float,
) -> tuple[Graph, CompositeStages | WebStages]:
    """The graph of an encoding egress's source, feeding `outputs` from one encode."""
    assert spec.encoding is not None
    video, audio = stage_encodings(spec.encoding, audio=spec.audio, video=spec.video)
    source, page = spec.source, spec.page
    try:
        if page is not None:
            return web_graph(
                page.url,
                outputs,
                video=video,
                audio=audio,
                await_start_signal=page.await_start_signal,
                start_timeout_s=web_start_timeout_s,
                name=egress_id,
            )
        assert room is not None
        identity, screen_share = _followed_participant(spec)
        if identity:
            return participant_graph(
                room,
                identity,
                outputs,
                screen_share=screen_share,
                video=video,
                audio=audio,
                name=egress_id,
            )
        if isinstance(source, TrackCompositeSource | MediaSource):
            return track_composite_graph(
                room,
                source.audio_track_id,
                source.video_track_id,
                outputs,
                video=video,
                audio=audio,
                name=egress_id,
            )
        assert isinstance(source, RoomCompositeSource)
        return composite_graph(
            room,
            outputs,
            video=video,
            audio=audio,
            layout=source.layout or "grid",
            audio_mixing=source.audio_mixing,
            participants=ParticipantChoice.of(source.include_identities, source.exclude_identities),
            name=egress_id,
        )
    except ValueError as exc:
        raise NotSupported(str(exc)) from None


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
    namer = _Namer(output_root, identifier, fields, when, default_storage, egress_id, spec)
    outputs: list[Output] = []
    files: dict[FileOutput, PlannedFile] = {}
    segment_targets: dict[SegmentsOutput, _DirectoryTarget] = {}
    image_targets: dict[ImageOutput, _DirectoryTarget] = {}
    if spec.file is not None:
        file_output, planned_file = _file_output(spec.file, namer, spec.faststart)
        outputs.append(file_output)
        files[file_output] = planned_file
    if spec.segments is not None:
        segments_output, segments_target = _segments_output(spec.segments, namer)
        outputs.append(segments_output)
        segment_targets[segments_output] = segments_target
    for images in spec.images:
        images_output, images_target = _images_output(images, namer)
        outputs.append(images_output)
        image_targets[images_output] = images_target
    if spec.stream is not None:
        outputs.append(_stream_output(spec.stream, spec.network))
    graph, stages = _encoded_graph(spec, room, outputs, egress_id, web_start_timeout_s)
    written = stages.outputs
    for file_output, planned in files.items():
        planned.writer = written.files[file_output]
    page = participants = None
    if isinstance(stages, WebStages):
        page = stages.source
    elif isinstance(spec.source, RoomCompositeSource):
        participants = stages.participants
    return Plan(
        graph=graph,
        room=room,
        compositor=stages.compositor,
        files=list(files.values()),
        segments=[t.bind(written.segments[o]) for o, t in segment_targets.items()],
        images=[t.bind(written.images[o]) for o, t in image_targets.items()],
        stream=written.stream,
        participants=participants,
        page=page,
    )
