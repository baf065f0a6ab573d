"""Image snapshots of a room composite: JPEGs at the requested size showing the composite of their time."""

from __future__ import annotations

import asyncio
import json
import re

import numpy as np
import pytest
from livekit.protocol import egress as egress_pb
from media_checks import frame_at, region_color
from PIL import Image
from publishers import SyntheticVideoTrack, colors_close

from egresskit import FileOutput, GraphState, ImageSuffix, composite_graph
from egresskit.egress.graphs import ImageOutput
from egresskit.egress.manager import EgressManager
from egresskit.stages.snapshot import ImageWritten

RED, BLUE = (220, 40, 40), (40, 60, 220)
# 320x180 images of the 1280x720 composite: regions inside the tiles, scaled by 1/4
FULL = (75, 38, 245, 142)
TILE_LEFT = (25, 55, 135, 125)
TILE_RIGHT = (185, 55, 295, 125)
BLUE_JOINS_AT = 3.0


@pytest.mark.slow
async def test_snapshots_every_two_seconds(rooms, tmp_path):
    room = rooms.get_or_create("snaps")
    await room.publish(SyntheticVideoTrack(RED), identity="alice")
    archive = tmp_path / "archive.mp4"
    outputs = [
        FileOutput(archive),
        ImageOutput(tmp_path / "thumbs" / "snap", capture_interval=2, width=320, height=180),
        ImageOutput(
            tmp_path / "latest",
            capture_interval=2,
            suffix=ImageSuffix.NONE_OVERWRITE,
        ),
    ]  # the MP4 shows what the composite was at every moment
    graph, stages = composite_graph(room, outputs, audio=None, name="snaps")
    written = []
    graph.bus.subscribe(lambda e: written.append(e.image) if isinstance(e, ImageWritten) else None)
    await graph.start()
    await graph.clock.sleep_until(BLUE_JOINS_AT)
    await room.publish(SyntheticVideoTrack(BLUE), identity="bob")
    await graph.clock.sleep_until(7.0)
    assert await graph.stop() is GraphState.COMPLETE, graph.error

    snapshots = stages.outputs.images[outputs[1]].images
    assert len(snapshots) in (3, 4), snapshots
    files = sorted((tmp_path / "thumbs").iterdir())
    assert [f.name for f in files] == [f"snap_{i:05d}.jpeg" for i in range(len(snapshots))]
    assert {w.path for w in written} >= {s.path for s in snapshots}
    for snapshot in snapshots:
        with Image.open(snapshot.path) as jpeg:
            assert jpeg.format == "JPEG" and jpeg.size == (320, 180)
            image = np.asarray(jpeg.convert("RGB"))
        when = (snapshot.timestamp_ns - graph.clock.started_at_ns) / 1e9
        assert abs(when - snapshot.media_time_s) < 0.01
        composite = frame_at(archive, when)[::4, ::4]  # 1280x720 -> 320x180
        for region in (FULL, TILE_LEFT, TILE_RIGHT):
            assert colors_close(region_color(image, *region), region_color(composite, *region))
        if when < 1.0:
            continue  # alice's first frame may not have been drawn yet
        if when < BLUE_JOINS_AT - 0.1:
            assert colors_close(region_color(image, *FULL), RED), (when, region_color(image, *FULL))
        elif when > BLUE_JOINS_AT + 0.6:  # bob's first frames have reached the compositor
            assert colors_close(region_color(image, *TILE_LEFT), RED), when
            assert colors_close(region_color(image, *TILE_RIGHT), BLUE), when

    # NONE_OVERWRITE keeps one file, the newest snapshot, at the composite's own size
    latest = stages.outputs.images[outputs[2]]
    assert len(latest.images) == len(snapshots)
    assert {s.path for s in latest.images} == {tmp_path / "latest.jpeg"}
    with Image.open(tmp_path / "latest.jpeg") as jpeg:
        assert jpeg.size == (1280, 720)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive.mp4", "latest.jpeg", "thumbs"]


async def test_an_image_prefix_is_not_credited_with_a_longer_ones_images(rooms, tmp_path):
    """`shots/cam` and `shots/cam_hi` share a directory: each counts only its own JPEGs."""
    room = rooms.get_or_create("two-prefixes")
    await room.publish(SyntheticVideoTrack(RED, 320, 180, 15), identity="alice")
    manager = EgressManager(rooms, tmp_path)
    info = await manager.start(
        egress_pb.RoomCompositeEgressRequest(
            room_name="two-prefixes",
            video_only=True,
            advanced=egress_pb.EncodingOptions(width=320, height=180, framerate=15),
            image_outputs=[
                egress_pb.ImageOutput(filename_prefix="shots/cam", capture_interval=1),
                egress_pb.ImageOutput(filename_prefix="shots/cam_hi", capture_interval=1),
            ],
        )
    )
    session = manager.get(info.egress_id)
    await asyncio.sleep(2.5)
    manager.stop(info.egress_id)
    await session.wait()
    final = manager.get(info.egress_id).info
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    counts = {r.filename_prefix: r.image_count for r in final.image_results}
    on_disk = {
        prefix: sum(
            1 for p in (tmp_path / "shots").iterdir() if re.fullmatch(rf"{stem}_\d+\.jpeg", p.name)
        )
        for prefix, stem in (("shots/cam", "cam"), ("shots/cam_hi", "cam_hi"))
    }
    assert counts == on_disk and min(on_disk.values()) >= 2, (counts, on_disk)
    manifest = json.loads((tmp_path / "shots" / f"{info.egress_id}.json").read_text())
    assert sorted(i["filename"] for i in manifest["images"]) == sorted(
        f"shots/{p.name}" for p in (tmp_path / "shots").glob("*.jpeg")
    ), manifest
