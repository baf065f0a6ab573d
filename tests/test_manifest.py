"""Egress manifests: content from EgressInfo and atomic writing."""

from __future__ import annotations

import json
import os

import pytest
from livekit.protocol import egress as egress_pb

from egresskit.egress.manifest import (
    ManifestImage,
    ManifestSegment,
    TrackDetails,
    build_manifest,
    manifest_name,
    write_manifest,
)

FIELDS = {
    "egress_id",
    "room_id",
    "room_name",
    "url",
    "started_at",
    "ended_at",
    "publisher_identity",
    "track_id",
    "track_kind",
    "track_source",
    "audio_track_id",
    "video_track_id",
    "first_media_at",
    "files",
    "playlists",
    "images",
}


def _composite_info() -> egress_pb.EgressInfo:
    return egress_pb.EgressInfo(
        egress_id="EG_manifest001",
        room_id="RM_1",
        room_name="studio",
        started_at=1_700_000_000_000_000_000,
        ended_at=1_700_000_060_500_000_000,
        track_composite=egress_pb.TrackCompositeEgressRequest(
            room_name="studio", audio_track_id="TR_a", video_track_id="TR_v"
        ),
        file_results=[egress_pb.FileInfo(filename="rec/a.mp4", location="s3://b/rec/a.mp4")],
        segment_results=[egress_pb.SegmentsInfo(playlist_location="s3://b/hls/x.m3u8")],
    )


def test_manifest_fields():
    segments = {"s3://b/hls/x.m3u8": [ManifestSegment("hls/x_00000.ts", "s3://b/hls/x_00000.ts")]}
    images = [ManifestImage("snap_00000.jpeg", 1_700_000_001_000_000_001, "/out/snap_00000.jpeg")]
    manifest = build_manifest(_composite_info(), segments=segments, images=images)
    assert set(manifest) == FIELDS
    assert manifest["egress_id"] == "EG_manifest001" and manifest["room_name"] == "studio"
    assert manifest["started_at"] == 1_700_000_000_000_000_000
    assert (manifest["audio_track_id"], manifest["video_track_id"]) == ("TR_a", "TR_v")
    assert manifest["files"] == [{"filename": "rec/a.mp4", "location": "s3://b/rec/a.mp4"}]
    assert manifest["playlists"] == [
        {
            "location": "s3://b/hls/x.m3u8",
            "segments": [{"filename": "hls/x_00000.ts", "location": "s3://b/hls/x_00000.ts"}],
        }
    ]
    assert manifest["images"] == [
        {
            "filename": "snap_00000.jpeg",
            "timestamp": "2023-11-14T22:13:21.000000001Z",
            "location": "/out/snap_00000.jpeg",
        }
    ]
    json.dumps(manifest)  # serialisable as is


def test_request_specific_fields():
    track = egress_pb.EgressInfo(
        egress_id="EG_t", track=egress_pb.TrackEgressRequest(room_name="r", track_id="TR_x")
    )
    details = TrackDetails(track_kind="audio", track_source="microphone", publisher_identity="bob")
    manifest = build_manifest(track, track=details)
    assert (manifest["track_id"], manifest["track_kind"], manifest["track_source"]) == (
        "TR_x",
        "audio",
        "microphone",
    )
    assert manifest["publisher_identity"] == "bob"
    participant = egress_pb.EgressInfo(
        participant=egress_pb.ParticipantEgressRequest(room_name="r", identity="alice")
    )
    assert build_manifest(participant)["publisher_identity"] == "alice"
    web = egress_pb.EgressInfo(web=egress_pb.WebEgressRequest(url="https://example.com/p"))
    assert build_manifest(web)["url"] == "https://example.com/p"
    assert manifest_name("EG_t") == "EG_t.json"


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "sub" / manifest_name("EG_manifest001")
    write_manifest(path, build_manifest(_composite_info()))
    assert json.loads(path.read_text())["egress_id"] == "EG_manifest001"
    write_manifest(path, {"egress_id": "replaced"})
    assert json.loads(path.read_text()) == {"egress_id": "replaced"}
    assert os.listdir(path.parent) == [path.name]


def test_failed_write_keeps_the_old_manifest(tmp_path):
    path = tmp_path / manifest_name("EG_1")
    write_manifest(path, {"egress_id": "EG_1"})
    with pytest.raises(TypeError):
        write_manifest(path, {"egress_id": object()})  # not JSON: fails mid-write
    assert json.loads(path.read_text()) == {"egress_id": "EG_1"}
    assert os.listdir(tmp_path) == [path.name]
