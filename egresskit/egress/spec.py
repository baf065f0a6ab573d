"""The request model: a checked egress request, as a small base plus a source per kind.

`validation.validate` builds an `EgressSpec` from any of the wire requests;
the planner, admission and the LiveKit room joiner read it. What every kind
has (outputs, encoding, webhooks, the caller's rules) sits on `EgressSpec`;
what only one kind means sits on that kind's source: `RoomCompositeSource`,
`WebSource`, `ParticipantSource`, `TrackCompositeSource`, `MediaSource` or
`TrackSource`. Storage messages are carried untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from livekit.protocol import egress as egress_pb
from livekit.protocol import models as models_pb

from egresskit.egress.encoding import EncodingSettings
from egresskit.egress.naming import ImageSuffix, SegmentSuffix
from egresskit.netpolicy import NetworkPolicy
from egresskit.stages.mixer import Mixing

# The upload messages a request may name, carried as they came.
Upload = (
    egress_pb.S3Upload | egress_pb.GCPUpload | egress_pb.AzureBlobUpload | egress_pb.AliOSSUpload
)
EgressKind = Literal["room_composite", "track_composite", "participant", "track", "web", "media"]
FileType = Literal["mp4", "ogg", "mp3", ""]
StreamProtocol = Literal["rtmp", "srt", "websocket"]


@dataclass(frozen=True)
class FileTarget:
    """One file output; `file_type` is empty for track egress (the track's codec decides)."""

    filepath: str
    file_type: FileType
    disable_manifest: bool
    storage: Upload | None  # the output's own upload; see EgressSpec.request_storage
    field: str  # where the request names it, for errors about its path


@dataclass(frozen=True)
class SegmentsTarget:
    """One HLS output."""

    filename_prefix: str
    playlist_name: str
    live_playlist_name: str
    segment_duration_s: int
    suffix: SegmentSuffix
    fragmented_mp4: bool
    disable_manifest: bool
    storage: Upload | None
    field: str


@dataclass(frozen=True)
class StreamTarget:
    """One stream output: every URL speaks the same protocol."""

    protocol: StreamProtocol
    urls: tuple[str, ...]


@dataclass(frozen=True)
class ImagesTarget:
    """One snapshot output; width/height 0 keep the source size."""

    capture_interval_s: int
    width: int
    height: int
    filename_prefix: str
    suffix: ImageSuffix
    disable_manifest: bool
    storage: Upload | None
    field: str


@dataclass(frozen=True)
class WebSource:
    """A web page recorded by a browser (web egress, or a template's page)."""

    url: str
    await_start_signal: bool = False
    room_name: str = ""  # StartEgress may name one; it only names the files
    kind: ClassVar[EgressKind] = "web"


@dataclass(frozen=True)
class RoomCompositeSource:
    """A whole room, composited (RoomCompositeEgress, StartEgress's template)."""

    room_name: str
    layout: str = ""
    audio_mixing: Mixing = Mixing.DEFAULT
    # a template page draws the room instead of the compositor; the manager resolves it to `page`
    custom_base_url: str = ""
    page: WebSource | None = None
    # egresskit extension: who is drawn and mixed (empty include: everyone)
    include_identities: tuple[str, ...] = ()
    exclude_identities: tuple[str, ...] = ()
    kind: ClassVar[EgressKind] = "room_composite"


@dataclass(frozen=True)
class ParticipantSource:
    """One participant's camera and microphone, or screen share and its audio."""

    room_name: str
    identity: str
    screen_share: bool = False
    kind: ClassVar[EgressKind] = "participant"


@dataclass(frozen=True)
class TrackCompositeSource:
    """One audio and one video track by id (either may be empty)."""

    room_name: str
    audio_track_id: str = ""
    video_track_id: str = ""
    kind: ClassVar[EgressKind] = "track_composite"


@dataclass(frozen=True)
class MediaSource:
    """StartEgress's media source: a video track or a participant's video, and audio routes."""

    room_name: str
    video_track_id: str = ""
    participant_identity: str = ""
    screen_share: bool = False
    audio_config: egress_pb.AudioConfig | None = None
    kind: ClassVar[EgressKind] = "media"

    @property
    def audio_track_id(self) -> str:
        """The track of the first audio route (the one route planning supports)."""
        routes = self.audio_config.routes if self.audio_config is not None else ()
        return routes[0].track_id if routes else ""


@dataclass(frozen=True)
class TrackSource:
    """One track as it is published: to a file without transcoding, or as PCM to a websocket."""

    room_name: str
    track_id: str
    websocket_url: str = ""
    kind: ClassVar[EgressKind] = "track"


Source = (
    RoomCompositeSource
    | WebSource
    | ParticipantSource
    | TrackCompositeSource
    | MediaSource
    | TrackSource
)


@dataclass(frozen=True)
class EgressSpec:
    """A valid egress request, independent of the wire message it came in."""

    source: Source
    audio: bool = True
    video: bool = True
    encoding: EncodingSettings | None = None  # None for track egress: nothing is encoded
    file: FileTarget | None = None
    stream: StreamTarget | None = None
    segments: SegmentsTarget | None = None
    images: tuple[ImagesTarget, ...] = ()
    # StartEgress's `storage`: where outputs without their own upload go
    request_storage: Upload | None = None
    webhooks: tuple[models_pb.WebhookConfig, ...] = ()
    video_codec: str = ""  # egresskit extension: "" or "h264", "vp9", "av1"
    faststart: bool = False  # egresskit extension: MP4 moov before mdat after a clean stop
    # Set by `check_caller` for a caller's request: where its destinations may be (None: the
    # operator's own request), and the API key that signs its webhooks.
    network: NetworkPolicy | None = None
    caller_key: str = ""

    @property
    def kind(self) -> EgressKind:
        return self.source.kind

    @property
    def room_name(self) -> str:
        return self.source.room_name

    @property
    def page(self) -> WebSource | None:
        """The page a browser records, if one does: a web source or a template's page."""
        if isinstance(self.source, WebSource):
            return self.source
        if isinstance(self.source, RoomCompositeSource):
            return self.source.page
        return None
