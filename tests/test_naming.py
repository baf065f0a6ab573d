"""Output naming: templates, defaults, extensions, HLS/image names and root confinement."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egresskit.egress.naming import (
    ImageSuffix,
    NameFields,
    SegmentSuffix,
    expand_template,
    file_extension,
    file_path,
    image_name,
    live_playlist_name,
    output_prefix,
    playlist_name,
    segment_name,
    track_extension,
    with_extension,
)
from egresskit.storage.paths import NameTooLong, PathEscapesRoot, confine

WHEN = datetime(2024, 3, 9, 7, 5, 3, 45_678, tzinfo=timezone(timedelta(hours=2)))
FIELDS = NameFields(
    room_name="studio",
    room_id="RM_1",
    publisher_identity="alice",
    track_id="TR_v",
    track_type="video",
    track_source="camera",
)


def test_template_placeholders():
    template = "{room_name}/{room_id}/{publisher_identity}-{track_id}-{track_type}-{track_source}"
    assert expand_template(template, FIELDS, WHEN) == "studio/RM_1/alice-TR_v-video-camera"
    assert expand_template("{time}", FIELDS, WHEN) == "2024-03-09T070503"  # local wall clock
    assert expand_template("{utc}", FIELDS, WHEN) == "20240309050503045"  # UTC + milliseconds
    assert expand_template("{unknown}-{room_name}", FIELDS, WHEN) == "{unknown}-studio"


def test_template_values_cannot_add_directories():
    fields = NameFields(room_name="../../etc", publisher_identity="a/b\\c", track_id="..")
    assert expand_template("{room_name}", fields, WHEN) == ".._.._etc"
    assert expand_template("{publisher_identity}", fields, WHEN) == "a_b_c"
    assert expand_template("x/{track_id}", fields, WHEN) == "x/_"
    # An empty leading value does not make the path absolute.
    assert expand_template("{room_id}/x", fields, WHEN) == "x"


def test_default_file_paths():
    path = file_path("", identifier="studio", fields=FIELDS, extension=".mp4", when=WHEN)
    assert path == "studio-2024-03-09T070503.mp4"
    path = file_path("rec/", identifier="TR_v", fields=FIELDS, extension=".webm", when=WHEN)
    assert path == "rec/TR_v-2024-03-09T070503.webm"
    path = file_path(
        "{room_name}-{time}", identifier="x", fields=FIELDS, extension=".ogg", when=WHEN
    )
    assert path == "studio-2024-03-09T070503.ogg"


@pytest.mark.parametrize(
    ("requested", "extension", "expected"),
    [
        ("a.mp4", ".mp4", "a.mp4"),
        ("a.MP4", ".mp4", "a.MP4"),
        ("a.ogg", ".mp4", "a.mp4"),  # wrong known extension replaced
        ("a.mp4", ".ogg", "a.ogg"),
        ("a", ".mp3", "a.mp3"),  # missing one appended
        ("meeting.v2", ".mp4", "meeting.v2.mp4"),  # unknown suffix kept
        ("dir.mp4/file", ".ogg", "dir.mp4/file.ogg"),
    ],
)
def test_extension_inference(requested, extension, expected):
    assert with_extension(requested, extension) == expected


def test_extensions_by_container_and_track_codec():
    assert [file_extension(t) for t in ("mp4", "ogg", "mp3")] == [".mp4", ".ogg", ".mp3"]
    assert track_extension("audio/opus") == ".ogg"
    assert track_extension("video/H264") == ".mp4"
    assert track_extension("vp8") == track_extension("video/VP9") == ".webm"
    with pytest.raises(ValueError):
        track_extension("video/AV1")


def test_hls_names():
    prefix = output_prefix("live/{room_name}", identifier="x", fields=FIELDS, when=WHEN)
    assert prefix == "live/studio"
    assert output_prefix("show.m3u8", identifier="x", fields=FIELDS, when=WHEN) == "show"
    assert output_prefix("", identifier="studio", fields=FIELDS, when=WHEN) == (
        "studio-2024-03-09T070503"
    )
    assert segment_name(prefix, SegmentSuffix.INDEX, 7, WHEN) == "live/studio_00007.ts"
    assert segment_name(prefix, "timestamp", 7, WHEN) == "live/studio_20240309050503045.ts"
    assert playlist_name(prefix) == "live/studio.m3u8"
    assert playlist_name(prefix, "index") == "index.m3u8"
    assert playlist_name(prefix, "index.m3u8") == "index.m3u8"
    assert live_playlist_name("live-index") == "live-index.m3u8"
    assert live_playlist_name("") is None


def test_image_names():
    assert image_name("snap", ImageSuffix.INDEX, 12, WHEN) == "snap_00012.jpeg"
    assert image_name("snap", ImageSuffix.TIMESTAMP, 12, WHEN) == "snap_20240309050503045.jpeg"
    assert image_name("snap", "none_overwrite", 12, WHEN) == "snap.jpeg"


def test_confine_accepts_paths_inside_the_root(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    assert confine(root, "a/b.mp4") == root.resolve() / "a/b.mp4"
    assert confine(root, "a/../b.mp4") == root.resolve() / "b.mp4"
    assert confine(root, str(root / "abs.mp4")) == root.resolve() / "abs.mp4"


@pytest.mark.parametrize(
    "requested", ["../../etc/x", "..", "a/../../x", "/etc/passwd", "a\x00b", ".", "x/..", ""]
)
def test_confine_rejects_escapes_and_the_root_itself(tmp_path, requested):
    # A prefix naming the root itself would put its files in the root's parent.
    with pytest.raises(PathEscapesRoot):
        confine(tmp_path, requested)


def test_confine_rejects_names_the_filesystem_cannot_hold(tmp_path):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    assert confine(tmp_path, "d/" + "n" * limit).name == "n" * limit
    for requested in ("n" * (limit + 1), "d" * (limit + 1) + "/x.mp4", "é" * (limit // 2 + 1)):
        with pytest.raises(NameTooLong, match="File name too long"):
            confine(tmp_path, requested)
    with pytest.raises(NameTooLong, match="File name too long"):
        confine(tmp_path, "/".join(["d" * 200] * 25))


def test_confine_rejects_symlink_loops(tmp_path):
    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    with pytest.raises(PathEscapesRoot, match="loop"):
        confine(tmp_path, "a/x.mp4")


def test_confine_rejects_symlinks_leading_out(tmp_path):
    root = tmp_path / "out"
    outside = tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "link")
    os.symlink(root / "inner", root / "inner-link")
    with pytest.raises(PathEscapesRoot):
        confine(root, "link/x.mp4")
    assert confine(root, "inner-link/x.mp4") == root.resolve() / "inner/x.mp4"
    # A root that is itself reached through a symlink still works.
    os.symlink(root, tmp_path / "root-link")
    assert confine(tmp_path / "root-link", "y.mp4") == root.resolve() / "y.mp4"


_text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
_segment = st.sampled_from(["..", ".", "", "a", "{room_name}", "{time}", "/", "x.mp4"]) | _text


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(_segment, max_size=6),
    room=_text,
    identity=_text,
    absolute=st.booleans(),
)
def test_no_generated_path_escapes_the_root(tmp_path_factory, parts, room, identity, absolute):
    root = tmp_path_factory.getbasetemp() / "confined"
    root.mkdir(exist_ok=True)
    requested = ("/" if absolute else "") + "/".join(parts)
    fields = NameFields(room_name=room, publisher_identity=identity)
    relative = file_path(requested, identifier=room, fields=fields, extension=".mp4", when=WHEN)
    try:
        path = confine(root, relative)
    except PathEscapesRoot:
        return
    assert path.is_relative_to(root.resolve())
    assert path.name.endswith(".mp4")


@settings(max_examples=200, deadline=None)
@given(room=_text, identity=_text, track=_text)
def test_template_values_alone_never_escape(tmp_path_factory, room, identity, track):
    root = tmp_path_factory.getbasetemp() / "values"
    root.mkdir(exist_ok=True)
    fields = NameFields(room_name=room, publisher_identity=identity, track_id=track)
    relative = file_path(
        "{room_name}/{publisher_identity}/{track_id}-{utc}",
        identifier=room,
        fields=fields,
        extension=".ogg",
        when=WHEN.astimezone(UTC),
    )
    assert confine(root, relative).is_relative_to(Path(root).resolve())
