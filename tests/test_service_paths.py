"""No request writes outside --output-dir: every path-bearing field of every request type.

A real service (in-process aiohttp app, driven by the livekit-api client)
records from rooms whose names and publisher identities are hostile too, so
template values are attacked along with the paths. The output root holds
symlinks planted to lead out of it. After each request, nothing may exist
outside the root but what was there before.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from livekit import api
from livekit.protocol import egress as egress_pb
from publishers import SineAudioTrack, SyntheticVideoTrack
from service_fixtures import API_KEY, API_SECRET, join, service_config, wait_status

from egresskit.service.app import MANAGER, ROOMS, create_app

SMALL = egress_pb.EncodingOptions(width=160, height=90, framerate=10, video_bitrate=150)
FINAL = (
    egress_pb.EGRESS_COMPLETE,
    egress_pb.EGRESS_FAILED,
    egress_pb.EGRESS_ABORTED,
    egress_pb.EGRESS_LIMIT_REACHED,
)
WHIP_ROOM = "whip..room"  # track egress needs a WebRTC publisher: one room for the whole test
WHIP_IDENTITY = "../../outside/who"
KINDS = (
    "room_composite",
    "track_composite",
    "participant",
    "track",
    "web",
    "start_template",
    "start_media",
)


# --- the directory under attack -----------------------------------------------------------------


@dataclass
class Layout:
    """`base/out` is the output root, `base/outside` what it must never touch."""

    base: Path
    root: Path
    outside: Path

    def plant(self) -> None:
        """Symlinks inside the root that lead out of it (re-planted before every case)."""
        self.outside.mkdir(exist_ok=True)
        links = {
            "link": self.outside,  # a directory
            "pl.m3u8": self.outside / "pl.m3u8",  # a playlist name
            "evil.mp4": self.outside / "evil.mp4",  # a file name
            "seg_00000.ts": self.outside / "seg.ts",  # a generated segment name
            "img_00000.jpeg": self.outside / "img.jpeg",  # a generated image name
            "loop": self.root / "loop",
        }
        for name, target in links.items():
            link = self.root / name
            if not link.is_symlink():
                link.unlink(missing_ok=True)
                os.symlink(target, link)

    def outside_entries(self) -> set[str]:
        """Everything under `base` that is not under the root (symlinks not followed)."""
        found = set()
        for directory, dirs, files in os.walk(self.base):
            for name in dirs + files:
                path = Path(directory, name)
                if not path.is_relative_to(self.root):
                    found.add(str(path.relative_to(self.base)))
        return found


# --- hostile strings ----------------------------------------------------------------------------

_PIECES = st.sampled_from(
    [
        "..",
        ".",
        "",
        "link",
        "loop",
        "pl.m3u8",
        "evil.mp4",
        "seg",
        "img",
        "outside",
        "{room_name}",
        "{publisher_identity}",
        "{track_id}",
        "{time}",
        "{utc}",
        "..\\..",
        "%2e%2e",
        "a\x00b",
        "n" * 300,
        "x.m3u8",
    ]
)
_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=8)
# Absolute paths point into the test's own directory, where an escape can be seen.
_ANCHORS = st.sampled_from(["", "", "", "/", "{base}/", "{base}/outside/", "{root}/"])


_PLAIN = st.sampled_from(["", "rec/{room_name}-{time}", "{publisher_identity}/{track_id}", "x/"])


@st.composite
def _hostile(draw, *, file_name: bool = False) -> str:
    if draw(st.integers(0, 3)) == 0:  # some requests must be valid, so that they record
        return draw(_PLAIN)
    parts = draw(st.lists(_PIECES | _TEXT, max_size=4 if not file_name else 1))
    anchor = "" if file_name else draw(_ANCHORS)
    return anchor + "/".join(parts)


_NAMES = (
    st.sampled_from(["..", "../..", "/", "../outside", "link", "{room_name}", ".", "a/../.."])
    | st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=10)
).filter(bool)


@dataclass(frozen=True)
class Case:
    kind: str
    room: str
    identity: str
    file: str | None
    prefix: str | None  # segments (None: no segment output)
    playlist: str
    live_playlist: str
    images: str | None
    suffix: int


@st.composite
def _cases(draw) -> Case:
    kind = draw(st.sampled_from(KINDS))
    outputs = (
        {"file"}
        if kind == "track"
        else draw(st.sets(st.sampled_from(["file", "segments", "images"]), min_size=1))
    )
    return Case(
        kind=kind,
        room=draw(_NAMES),
        identity=draw(_NAMES),
        file=draw(_hostile()) if "file" in outputs else None,
        prefix=draw(_hostile()) if "segments" in outputs else None,
        playlist=draw(_hostile() | _hostile(file_name=True)),
        live_playlist=draw(_hostile() | _hostile(file_name=True)),
        images=draw(_hostile()) if "images" in outputs else None,
        suffix=draw(st.sampled_from([0, 1])),
    )


def _fill(text: str, layout: Layout) -> str:
    return text.replace("{base}", str(layout.base)).replace("{root}", str(layout.root))


# --- building each request type ------------------------------------------------------------------


def _legacy_outputs(case: Case, layout: Layout) -> dict:
    outputs: dict = {}
    if case.file is not None:
        outputs["file_outputs"] = [egress_pb.EncodedFileOutput(filepath=_fill(case.file, layout))]
    if case.prefix is not None:
        outputs["segment_outputs"] = [
            egress_pb.SegmentedFileOutput(
                filename_prefix=_fill(case.prefix, layout),
                playlist_name=_fill(case.playlist, layout),
                live_playlist_name=_fill(case.live_playlist, layout),
                segment_duration=1,
                filename_suffix=case.suffix,
            )
        ]
    if case.images is not None:
        outputs["image_outputs"] = [
            egress_pb.ImageOutput(
                filename_prefix=_fill(case.images, layout),
                capture_interval=1,
                filename_suffix=case.suffix,
            )
        ]
    return outputs


def _v2_outputs(case: Case, layout: Layout) -> list[egress_pb.Output]:
    legacy = _legacy_outputs(case, layout)
    outputs = []
    for file in legacy.get("file_outputs", []):
        outputs.append(egress_pb.Output(file=egress_pb.FileOutput(filepath=file.filepath)))
    for segments in legacy.get("segment_outputs", []):
        outputs.append(egress_pb.Output(segments=segments))
    for images in legacy.get("image_outputs", []):
        outputs.append(egress_pb.Output(images=images))
    return outputs


async def _start(client: api.LiveKitAPI, case: Case, layout: Layout, tracks: dict[str, str]):
    egress = client.egress
    if case.kind == "room_composite":
        return await egress.start_room_composite_egress(
            egress_pb.RoomCompositeEgressRequest(
                room_name=case.room, advanced=SMALL, **_legacy_outputs(case, layout)
            )
        )
    if case.kind == "track_composite":
        return await egress.start_track_composite_egress(
            egress_pb.TrackCompositeEgressRequest(
                room_name=case.room,
                audio_track_id=tracks["audio"],
                video_track_id=tracks["video"],
                advanced=SMALL,
                **_legacy_outputs(case, layout),
            )
        )
    if case.kind == "participant":
        return await egress.start_participant_egress(
            egress_pb.ParticipantEgressRequest(
                room_name=case.room,
                identity=case.identity,
                advanced=SMALL,
                **_legacy_outputs(case, layout),
            )
        )
    if case.kind == "track":
        return await egress.start_track_egress(
            egress_pb.TrackEgressRequest(
                room_name=WHIP_ROOM,
                track_id=tracks["whip_audio"],
                file=egress_pb.DirectFileOutput(filepath=_fill(case.file or "", layout)),
            )
        )
    if case.kind == "web":
        return await egress.start_web_egress(
            egress_pb.WebEgressRequest(
                url="http://127.0.0.1:9/", advanced=SMALL, **_legacy_outputs(case, layout)
            )
        )
    if case.kind == "start_template":
        source = {"template": egress_pb.TemplateSource()}
    else:
        source = {
            "media": egress_pb.MediaSource(
                participant_video=egress_pb.ParticipantVideo(identity=case.identity),
                audio=egress_pb.AudioConfig(
                    routes=[egress_pb.AudioRoute(track_id=tracks["audio"])]
                ),
            )
        }
    return await egress.start_egress(
        egress_pb.StartEgressRequest(
            room_name=case.room, advanced=SMALL, outputs=_v2_outputs(case, layout), **source
        )
    )


# --- the service ----------------------------------------------------------------------------------


@pytest.fixture
async def service(aiohttp_server, tmp_path):
    layout = Layout(tmp_path, tmp_path / "out", tmp_path / "outside")
    layout.root.mkdir()
    layout.plant()
    app = create_app(service_config(layout.root))
    server = await aiohttp_server(app, host="127.0.0.1")
    base = str(server.make_url("")).rstrip("/")
    client = api.LiveKitAPI(base, API_KEY, API_SECRET)
    publisher = await join(base, WHIP_ROOM, WHIP_IDENTITY, (30, 30, 200), 330.0)
    whip_room = app[ROOMS].get(WHIP_ROOM)
    for _ in range(100):
        if whip_room is not None and len(whip_room.tracks()) == 2:
            break
        await asyncio.sleep(0.05)
        whip_room = app[ROOMS].get(WHIP_ROOM)
    (audio,) = [t for t in whip_room.tracks() if t.mime_type.startswith("audio/")]
    server.layout, server.client, server.app_ = layout, client, app
    server.whip_audio = audio.sid
    server.before = layout.outside_entries()
    yield server
    await publisher.close()
    await client.aclose()


async def _record(service, case: Case) -> None:
    """One request; an egress it starts records until its first media, then stops."""
    app, layout, client = service.app_, service.layout, service.client
    layout.plant()
    room = app[ROOMS].get_or_create(case.room)
    video = await room.publish(
        SyntheticVideoTrack((200, 40, 40), 160, 90, 10), identity=case.identity
    )
    audio = await room.publish(SineAudioTrack(440.0), identity=case.identity)
    tracks = {"video": video.sid, "audio": audio.sid, "whip_audio": service.whip_audio}
    try:
        try:
            info = await _start(client, case, layout, tracks)
        except api.TwirpError as refused:
            assert refused.code in ("invalid_argument", "unimplemented"), refused.message
            event(f"{case.kind}: {refused.code}")
            if refused.code == "unimplemented":
                event(f"{case.kind}: {refused.message}")
            return
        session = app[MANAGER].get(info.egress_id)
        await wait_status(client, info.egress_id, [egress_pb.EGRESS_ACTIVE, *FINAL], timeout=15)
        if session.active:
            app[MANAGER].stop(info.egress_id)
        await asyncio.wait_for(session.wait(), 20)
        event(f"{case.kind}: {egress_pb.EgressStatus.Name(session.info.status)}")
        _assert_results_inside(session.info, layout.root)
    finally:
        await room.leave(case.identity)


def _assert_results_inside(info: egress_pb.EgressInfo, root: Path) -> None:
    """What the egress reports it wrote is there, inside the root."""
    written = [f.location for f in info.file_results if f.size]
    written += [s.playlist_location for s in info.segment_results if s.segment_count]
    written += [s.live_playlist_location for s in info.segment_results if s.live_playlist_name]
    if info.manifest_location:
        written.append(info.manifest_location)
    for location in written:
        path = Path(location)
        assert path.is_file() and path.resolve().is_relative_to(root.resolve()), location


@pytest.mark.slow
@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=_cases())
@example(
    case=Case("room_composite", "r", "p", None, "hls/part", "../../outside/pl.m3u8", "", None, 0)
)
@example(case=Case("start_template", "r", "p", None, "hls/part", "x", "{base}/outside/l", None, 0))
@example(case=Case("participant", "r", "p", "link/x.mp4", "x/..", "pl.m3u8", "", "link/i", 0))
@example(
    case=Case(
        "track_composite",
        "..",
        "../..",
        "{room_name}/{publisher_identity}",
        "seg",
        "",
        "",
        "img",
        0,
    )
)
@example(case=Case("track", "r", "p", "{publisher_identity}/{track_id}", None, "", "", None, 0))
async def test_no_request_writes_outside_the_output_root(service, case):
    await _record(service, case)
    assert service.layout.outside_entries() == service.before
    assert not list(service.layout.outside.iterdir()), "a planted symlink was written through"


# --- the escapes of issue 11, one by one ----------------------------------------------------------


@pytest.mark.parametrize(
    ("segments", "field"),
    [
        ({"playlist_name": "../../outside/pl.m3u8"}, "segment_outputs[0].playlist_name"),
        (
            {"live_playlist_name": "{base}/outside/live.m3u8"},
            "segment_outputs[0].live_playlist_name",
        ),
        ({"filename_prefix": "part", "playlist_name": "pl"}, "segment_outputs[0].playlist_name"),
        ({"filename_prefix": "link/part"}, "segment_outputs[0].filename_prefix"),
        ({"filename_prefix": "seg"}, "segment_outputs[0].filename_prefix"),  # seg_00000.ts
        ({"filename_prefix": "hls/.."}, "segment_outputs[0].filename_prefix"),  # the root itself
    ],
)
async def test_each_hls_escape_is_refused_naming_its_field(service, segments, field):
    app, layout = service.app_, service.layout
    room = app[ROOMS].get_or_create("show")
    await room.publish(SyntheticVideoTrack((200, 40, 40), 160, 90, 10), identity="alice")
    output = {"filename_prefix": "hls/part", **segments}
    output = {k: _fill(v, layout) for k, v in output.items()}
    with pytest.raises(api.TwirpError) as refused:
        await service.client.egress.start_room_composite_egress(
            egress_pb.RoomCompositeEgressRequest(
                room_name="show",
                advanced=SMALL,
                video_only=True,
                segment_outputs=[egress_pb.SegmentedFileOutput(segment_duration=1, **output)],
            )
        )
    assert refused.value.code == "invalid_argument"
    assert field in refused.value.message
    assert layout.outside_entries() == service.before
    assert app[MANAGER].list(active=True) == []


async def test_a_name_too_long_for_the_filesystem_is_refused(service):
    room = service.app_[ROOMS].get_or_create("show")
    await room.publish(SineAudioTrack(440.0), identity="alice")
    limit = os.pathconf(service.layout.root, "PC_NAME_MAX")
    with pytest.raises(api.TwirpError) as refused:
        await service.client.egress.start_room_composite_egress(
            egress_pb.RoomCompositeEgressRequest(
                room_name="show",
                audio_only=True,
                file_outputs=[egress_pb.EncodedFileOutput(filepath="d" * (limit + 1) + "/a.ogg")],
            )
        )
    assert refused.value.code == "invalid_argument"
    assert "file_outputs[0].filepath" in refused.value.message
    assert "File name too long" in refused.value.message
    assert service.app_[MANAGER].list() == []
