"""An egress whose output cannot be written still ends: FAILED, with the OS error, announced.

The output directory is a small tmpfs the test mounts (so it needs root): made
read-only, or filled up while segments are written. Each egress must reach
FAILED within 10 s of the fault with the OS error in `error`, send
egress_ended, give its `max_concurrent` slot back, and leave what it had
already recorded readable.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from livekit import api
from livekit.protocol import egress as egress_pb
from media_checks import ffprobe
from publishers import SineAudioTrack, SyntheticVideoTrack
from service_fixtures import API_KEY, API_SECRET, service_config, wait_status

from egresskit.service.app import MANAGER, ROOMS, create_app

SMALL = egress_pb.EncodingOptions(width=320, height=180, framerate=15, video_bitrate=500)
FAULT_BOUND_S = 10.0


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where` for the test (skips unless root can mount)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for the output directory needs root")
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def remount_read_only(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)


def free_bytes(where: Path) -> int:
    stats = os.statvfs(where)
    return stats.f_bavail * stats.f_frsize


@dataclass
class Running:
    client: api.LiveKitAPI
    app: web.Application


async def start_service(aiohttp_server, output_dir: Path, webhooks) -> Running:
    app = create_app(service_config(output_dir, webhooks.url, max_concurrent=1))
    server = await aiohttp_server(app, host="127.0.0.1")
    room = app[ROOMS].get_or_create("disk")
    await room.publish(SyntheticVideoTrack((40, 160, 40), 320, 180, 15), identity="alice")
    await room.publish(SineAudioTrack(440.0), identity="alice")
    client = api.LiveKitAPI(str(server.make_url("")).rstrip("/"), API_KEY, API_SECRET)
    return Running(client, app)


async def assert_failed_and_announced(service: Running, webhooks, egress_id: str, reason: str):
    """FAILED within the bound, the OS error in `error`, egress_ended sent, the slot free,
    and nothing left for a shutdown to wait for."""
    client = service.client
    final = await wait_status(client, egress_id, [egress_pb.EGRESS_FAILED], timeout=FAULT_BOUND_S)
    assert reason in final.error, final.error
    ended = await webhooks.wait_for(egress_id, "egress_ended", timeout=5)
    assert ended.egress_info.status == egress_pb.EGRESS_FAILED
    assert reason in ended.egress_info.error
    # max_concurrent=1: the failed egress no longer holds the only slot.
    again = await client.egress.start_room_composite_egress(
        egress_pb.RoomCompositeEgressRequest(
            room_name="disk", audio_only=True, file_outputs=[egress_pb.EncodedFileOutput()]
        )
    )
    await wait_status(client, again.egress_id, [egress_pb.EGRESS_FAILED, egress_pb.EGRESS_ACTIVE])
    with contextlib.suppress(api.TwirpError):
        await client.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=again.egress_id))
    await wait_status(
        client,
        again.egress_id,
        [egress_pb.EGRESS_FAILED, egress_pb.EGRESS_COMPLETE, egress_pb.EGRESS_ABORTED],
    )
    await asyncio.wait_for(service.app[MANAGER].shutdown(), 5)
    return final


async def test_read_only_output_directory_fails_the_egress(aiohttp_server, tmp_path, webhooks):
    with tmpfs(tmp_path / "ro", "1m") as mount:
        (mount / "out").mkdir()
        remount_read_only(mount)
        service = await start_service(aiohttp_server, mount / "out", webhooks)
        try:
            info = await service.client.egress.start_room_composite_egress(
                egress_pb.RoomCompositeEgressRequest(
                    room_name="disk",
                    advanced=SMALL,
                    file_outputs=[egress_pb.EncodedFileOutput(filepath="rec.mp4")],
                    segment_outputs=[
                        egress_pb.SegmentedFileOutput(filename_prefix="hls/p", segment_duration=1)
                    ],
                )
            )
            await assert_failed_and_announced(
                service, webhooks, info.egress_id, "Read-only file system"
            )
        finally:
            await service.client.aclose()


@pytest.mark.slow
async def test_full_disk_fails_the_egress_and_keeps_what_was_written(
    aiohttp_server, tmp_path, webhooks
):
    with tmpfs(tmp_path / "small", "400k") as mount:
        service = await start_service(aiohttp_server, mount, webhooks)
        try:
            info = await service.client.egress.start_room_composite_egress(
                egress_pb.RoomCompositeEgressRequest(
                    room_name="disk",
                    advanced=SMALL,
                    segment_outputs=[
                        egress_pb.SegmentedFileOutput(
                            filename_prefix="hls/p", playlist_name="index", segment_duration=1
                        )
                    ],
                )
            )
            deadline = time.monotonic() + 60
            while free_bytes(mount) > 16 * 1024:
                assert time.monotonic() < deadline, "the disk never filled"
                await asyncio.sleep(0.05)
            final = await assert_failed_and_announced(
                service, webhooks, info.egress_id, "No space left on device"
            )
        finally:
            await service.client.aclose()
        # What was recorded before the disk filled: a playlist whose every segment decodes.
        playlist = mount / "hls" / "index.m3u8"
        listed = [
            line for line in playlist.read_text().splitlines() if line and not line.startswith("#")
        ]
        assert listed, playlist.read_text()
        for name in listed:
            assert float(ffprobe(playlist.parent / name)["format"]["duration"]) > 0.5
        (segments,) = final.segment_results
        assert segments.segment_count >= len(listed)
        assert Path(segments.playlist_location) == playlist.resolve()
