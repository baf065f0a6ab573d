"""The `{egress_id}.json` manifest written next to an egress's outputs, last.

Downstream jobs poll for the manifest to know that every file of an egress is
complete, so it is written atomically: a reader sees either no manifest or the
whole of it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from livekit.protocol import egress as egress_pb

from egresskit.storage.paths import write_atomically


@dataclass(frozen=True)
class ManifestSegment:
    """One HLS segment as stored."""

    filename: str
    location: str


@dataclass(frozen=True)
class ManifestImage:
    """One snapshot as stored; `timestamp_ns` is when it was captured (Unix ns)."""

    filename: str
    timestamp_ns: int
    location: str


@dataclass(frozen=True)
class TrackDetails:
    """What only the running egress knows about the recorded track."""

    track_kind: str = ""  # "audio" | "video"
    track_source: str = ""  # "camera", "microphone", "screen_share", ...
    publisher_identity: str = ""


def manifest_name(egress_id: str) -> str:
    """File name of an egress's manifest."""
    return f"{egress_id}.json"


def build_manifest(
    info: egress_pb.EgressInfo,
    *,
    segments: Mapping[str, Sequence[ManifestSegment]] | None = None,
    images: Sequence[ManifestImage] = (),
    track: TrackDetails | None = None,
    first_media_at_ns: int = 0,
) -> dict[str, Any]:
    """The manifest of a finished egress.

    `segments` maps each playlist location (as in `info.segment_results`) to
    its segments. Times are Unix nanoseconds like EgressInfo, except image
    timestamps, which are RFC 3339 strings as in LiveKit's manifests.
    `first_media_at` is when the first media of the file was captured, on the
    clock all egresses of a room share (0: no file, or nothing written): files
    of one room line up by it (README, "Synchronized tracks").
    """
    request = info.WhichOneof("request")
    track = track or TrackDetails()
    publisher = track.publisher_identity or (
        info.participant.identity if request == "participant" else ""
    )
    segments = segments or {}
    return {
        "egress_id": info.egress_id,
        "room_id": info.room_id,
        "room_name": info.room_name,
        "url": _source_url(info),
        "started_at": info.started_at,
        "ended_at": info.ended_at,
        "publisher_identity": publisher,
        "track_id": info.track.track_id if request == "track" else "",
        "track_kind": track.track_kind,
        "track_source": track.track_source,
        "audio_track_id": _audio_track_id(info),
        "video_track_id": _video_track_id(info),
        "first_media_at": first_media_at_ns,
        "files": [{"filename": f.filename, "location": f.location} for f in info.file_results],
        "playlists": [
            {
                "location": result.playlist_location,
                "segments": [
                    {"filename": s.filename, "location": s.location}
                    for s in segments.get(result.playlist_location, ())
                ],
            }
            for result in info.segment_results
        ],
        "images": [
            {
                "filename": image.filename,
                "timestamp": _rfc3339(image.timestamp_ns),
                "location": image.location,
            }
            for image in images
        ],
    }


def write_manifest(path: Path, manifest: Mapping[str, Any]) -> None:
    """Write `manifest` to `path` atomically (temp file in the same directory, then rename).

    Blocking: call it through `asyncio.to_thread` from the event loop.
    """
    text = json.dumps(manifest, indent=2) + "\n"
    write_atomically(path, lambda out: out.write(text.encode()), sync=True)


def _source_url(info: egress_pb.EgressInfo) -> str:
    request = info.WhichOneof("request")
    if request == "web":
        return info.web.url
    if request == "egress" and info.egress.WhichOneof("source") == "web":
        return info.egress.web.url
    return ""


def _audio_track_id(info: egress_pb.EgressInfo) -> str:
    return info.track_composite.audio_track_id if info.HasField("track_composite") else ""


def _video_track_id(info: egress_pb.EgressInfo) -> str:
    if info.HasField("track_composite"):
        return info.track_composite.video_track_id
    if info.HasField("egress") and info.egress.HasField("media"):
        return info.egress.media.video_track_id
    return ""


def _rfc3339(timestamp_ns: int) -> str:
    seconds, nanos = divmod(timestamp_ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z"
