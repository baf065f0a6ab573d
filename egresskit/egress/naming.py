"""Output names: filename templates, default paths, extensions, HLS and image names.

Names follow LiveKit Egress so existing tooling finds the files where it
expects them. Names are only text here: the planner puts every one of them
through `egresskit.storage.paths.confine`, which keeps them inside the
output root.

Template values (room names, identities, track ids) come from clients, so a
path separator or a bare `.`/`..` inside a value is replaced by `_`: a room
named `../x` names a file, it does not climb a directory. The requested path
itself may contain directories; `confine` decides whether it stays inside.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from livekit.protocol import models

if TYPE_CHECKING:
    from egresskit.rooms.local import LocalRoom, LocalTrack

TIME_FORMAT = "%Y-%m-%dT%H%M%S"  # Go layout 2006-01-02T150405

# Every extension an egress output can carry; a path ending in one of these
# with the wrong one for its output has it replaced rather than doubled.
KNOWN_EXTENSIONS = frozenset(
    {".mp4", ".ogg", ".mp3", ".webm", ".m3u8", ".ts", ".m4s", ".jpeg", ".jpg", ".json"}
)

_TEMPLATE_KEYS = (
    "room_name",
    "room_id",
    "publisher_identity",
    "track_id",
    "track_type",
    "track_source",
)
_TEMPLATE = re.compile(r"\{(" + "|".join(_TEMPLATE_KEYS + ("time", "utc")) + r")\}")
_UNSAFE_IN_VALUE = re.compile(r"[/\\\x00-\x1f\x7f]")


class SegmentSuffix(enum.StrEnum):
    """How HLS segments are numbered: `{prefix}_00001.ts` or `{prefix}_<utc>.ts`."""

    INDEX = "index"
    TIMESTAMP = "timestamp"


class ImageSuffix(enum.StrEnum):
    """How snapshots are named: numbered, by UTC time, or one file overwritten."""

    INDEX = "index"
    TIMESTAMP = "timestamp"
    NONE_OVERWRITE = "none_overwrite"


@dataclass(frozen=True)
class NameFields:
    """Values for the filename template placeholders."""

    room_name: str = ""
    room_id: str = ""
    publisher_identity: str = ""
    track_id: str = ""
    track_type: str = ""
    track_source: str = ""


def format_time(when: datetime) -> str:
    """`{time}`: local wall-clock time in LiveKit's `2006-01-02T150405` layout."""
    return when.strftime(TIME_FORMAT)


def format_utc(when: datetime) -> str:
    """`{utc}` and TIMESTAMP suffixes: UTC `YYYYMMDDHHMMSS` plus 3-digit milliseconds."""
    utc = when.astimezone(UTC)
    return utc.strftime("%Y%m%d%H%M%S") + f"{utc.microsecond // 1000:03d}"


def expand_template(template: str, fields: NameFields, when: datetime) -> str:
    """Replace the `{...}` placeholders of a filename template."""
    values: Mapping[str, str] = {
        **{key: _safe_value(getattr(fields, key)) for key in _TEMPLATE_KEYS},
        "time": format_time(when),
        "utc": format_utc(when),
    }
    expanded = _TEMPLATE.sub(lambda m: values[m.group(1)], template)
    # An empty value at the start ("{room_name}/x" without a room name) must not
    # turn a relative template into an absolute path.
    return expanded if template.startswith("/") else expanded.lstrip("/")


def file_path(
    requested: str, *, identifier: str, fields: NameFields, extension: str, when: datetime
) -> str:
    """The relative path of a file output, from the request's `filepath`.

    An empty path, or one naming a directory (trailing `/`), gets the default
    name `<identifier>-<time>`; the extension is fixed up with `with_extension`.
    """
    if not requested or requested.endswith("/"):
        requested = f"{requested}{_safe_value(identifier)}-{format_time(when)}"
    return with_extension(expand_template(requested, fields, when), extension)


def output_prefix(requested: str, *, identifier: str, fields: NameFields, when: datetime) -> str:
    """The name prefix of segments or images, from the request's `filename_prefix`.

    Defaults like `file_path`; a known extension (`prefix.m3u8`) is dropped
    because the segment, playlist and image names add their own.
    """
    if not requested or requested.endswith("/"):
        requested = f"{requested}{_safe_value(identifier)}-{format_time(when)}"
    stem, extension = os.path.splitext(expand_template(requested, fields, when))
    return stem if extension.lower() in KNOWN_EXTENSIONS else stem + extension


def with_extension(path: str, extension: str) -> str:
    """`path` ending in `extension`: a wrong known extension is replaced, a missing one added."""
    stem, current = os.path.splitext(path)
    if current.lower() == extension:
        return path
    if current.lower() in KNOWN_EXTENSIONS:
        return stem + extension
    return path + extension


def file_extension(file_type: str) -> str:
    """Extension of an encoded file container: `mp4`, `ogg` or `mp3`."""
    return {"mp4": ".mp4", "ogg": ".ogg", "mp3": ".mp3"}[file_type]


def track_extension(codec: str) -> str:
    """Extension of a track egress file, by the source codec (name or MIME type)."""
    name = codec.lower().rpartition("/")[2]
    if name == "opus":
        return ".ogg"
    if name in ("h264", "avc"):
        return ".mp4"
    if name in ("vp8", "vp9"):
        return ".webm"
    raise ValueError(f"no file type for track codec {codec!r}")


def segment_name(
    prefix: str, suffix: SegmentSuffix | str, index: int, when: datetime, extension: str = ".ts"
) -> str:
    """Name of one HLS segment: INDEX `{prefix}_00001.ts` or TIMESTAMP `{prefix}_<utc>.ts`
    (`.m4s` for fragmented MP4 segments)."""
    if SegmentSuffix(suffix) is SegmentSuffix.TIMESTAMP:
        return f"{prefix}_{format_utc(when)}{extension}"
    return f"{prefix}_{index:05d}{extension}"


def init_segment_name(prefix: str) -> str:
    """The initialization section of fragmented MP4 segments (their EXT-X-MAP)."""
    return f"{prefix}_init.mp4"


def playlist_name(prefix: str, requested: str = "") -> str:
    """The HLS playlist: `playlist_name` if given, else the segment prefix, as `.m3u8`."""
    return with_extension(requested or prefix, ".m3u8")


def live_playlist_name(requested: str) -> str | None:
    """The optional sliding-window playlist, or None when the request names none."""
    return with_extension(requested, ".m3u8") if requested else None


def image_name(prefix: str, suffix: ImageSuffix | str, index: int, when: datetime) -> str:
    """Name of one snapshot: INDEX, TIMESTAMP or NONE_OVERWRITE (`{prefix}.jpeg`)."""
    suffix = ImageSuffix(suffix)
    if suffix is ImageSuffix.TIMESTAMP:
        return f"{prefix}_{format_utc(when)}.jpeg"
    if suffix is ImageSuffix.NONE_OVERWRITE:
        return f"{prefix}.jpeg"
    return f"{prefix}_{index:05d}.jpeg"


def _safe_value(value: str) -> str:
    cleaned = _UNSAFE_IN_VALUE.sub("_", value)
    return "_" if cleaned in (".", "..") else cleaned


@dataclass(frozen=True, slots=True)
class TrackDescription:
    """What results, manifests and file names say about a recorded track."""

    track_id: str
    track_kind: str  # "audio" | "video"
    track_source: str  # "camera", "microphone", "screen_share", "screen_share_audio", "unknown"
    publisher_identity: str
    mime_type: str

    @classmethod
    def of(cls, track: LocalTrack) -> TrackDescription:
        """The description of a published track."""
        return cls(
            track_id=track.sid,
            track_kind="video" if track.kind == models.TrackType.VIDEO else "audio",
            track_source=models.TrackSource.Name(track.source).lower(),
            publisher_identity=track.participant.identity,
            mime_type=track.mime_type,
        )

    @property
    def extension(self) -> str:
        """The file extension a passthrough recording of this track gets."""
        return track_extension(self.mime_type)

    def name_fields(self, room: LocalRoom) -> NameFields:
        """Template values naming this track's recordings in `room`."""
        return NameFields(
            room_name=room.name,
            room_id=room.sid,
            publisher_identity=self.publisher_identity,
            track_id=self.track_id,
            track_type=self.track_kind,
            track_source=self.track_source,
        )
