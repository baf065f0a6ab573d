"""Synchronized track egresses: files started apart line up by their manifests.

The service runs as its own process, the flash + beep publisher in another
(tests/flash_beep.py). The audio track's egress starts, the video track's
1.5 s later, both through the livekit-api SDK; each writes its track as it
came (Opus to .ogg, VP8 to .webm) and a manifest with `first_media_at`. The
README's one-line ffmpeg command merges them, and every flash must meet its
beep in the merged file.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
from pathlib import Path

import pytest
from livekit import api
from livekit.protocol import egress as egress_pb
from livekit.protocol import models
from media_checks import av_offsets, ffprobe
from service_fixtures import API_KEY, API_SECRET, serve, stop, wait_status
from test_lip_sync import publish_flash_beep, published_tracks

STAGGER_S = 1.5
OVERLAP_S = 6.0
TOLERANCE_S = 0.020

README = Path(__file__).parent.parent / "README.md"
EXAMPLE_MANIFESTS = 'M="EG_a.json EG_v.json"; '


def readme_command() -> str:
    """The README's one-line command ("Synchronized tracks"), taking the manifests from $M."""
    (line,) = [ln for ln in README.read_text().splitlines() if ln.startswith(EXAMPLE_MANIFESTS)]
    return line.removeprefix(EXAMPLE_MANIFESTS).replace("ffmpeg ", "ffmpeg -v error ", 1)


def align(manifests: list[Path], directory: Path) -> Path:
    """Run the README's command on `manifests` in `directory`; the merged file."""
    env = {"M": " ".join(str(m) for m in manifests), "PATH": "/usr/bin:/bin"}
    subprocess.run(["bash", "-c", readme_command()], env=env, cwd=directory, check=True)
    return directory / "synced.mkv"


def manifest_of(info: egress_pb.EgressInfo) -> Path:
    return Path(info.file_results[0].location).parent / f"{info.egress_id}.json"


@pytest.mark.slow
async def test_two_track_egresses_started_apart_merge_in_sync(tmp_path):
    service = await serve(tmp_path / "out")
    base = service.url
    publisher = None
    client = api.LiveKitAPI(base, API_KEY, API_SECRET)
    try:
        publisher = await publish_flash_beep(base)
        tracks = await published_tracks(client)
        infos = []
        for kind in (models.TrackType.AUDIO, models.TrackType.VIDEO):
            info = await client.egress.start_track_egress(
                egress_pb.TrackEgressRequest(
                    room_name="lipsync",
                    track_id=tracks[kind],
                    file=egress_pb.DirectFileOutput(filepath="tracks/{track_type}-{track_id}"),
                )
            )
            await wait_status(client, info.egress_id, [egress_pb.EGRESS_ACTIVE])
            infos.append(info)
            if kind == models.TrackType.AUDIO:
                await asyncio.sleep(STAGGER_S)
        await asyncio.sleep(OVERLAP_S)
        for info in infos:
            await client.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))
        infos = [
            await wait_status(client, info.egress_id, [egress_pb.EGRESS_COMPLETE], timeout=30)
            for info in infos
        ]
    finally:
        await client.aclose()
        if publisher is not None:
            await stop(publisher)
        await service.stop()

    manifests = [manifest_of(info) for info in infos]
    started = [json.loads(m.read_text())["first_media_at"] for m in manifests]
    assert 1.0 < (started[1] - started[0]) / 1e9 < 2.5, started  # the video egress began later
    merged = align(manifests, tmp_path)
    assert sorted(s["codec_type"] for s in ffprobe(merged)["streams"]) == ["audio", "video"]
    offsets = [offset for _, offset in av_offsets(merged)]
    assert len(offsets) >= OVERLAP_S / 2 - 1, offsets
    summary = f"beep - flash: median {statistics.median(offsets) * 1000:+.1f} ms, " + ", ".join(
        f"{o * 1000:+.1f}" for o in offsets
    )
    print(summary)
    # Half a frame of measurement granularity at 30 fps, as in test_lip_sync.
    assert max(abs(o) for o in offsets) <= TOLERANCE_S + 0.5 / 30, summary
    assert abs(statistics.median(offsets)) <= TOLERANCE_S, summary
