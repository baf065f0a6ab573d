"""The egresskit.Egress extension methods, driven by egresskit.client as a user would.

Pause/resume (a publisher shows which second it is; the file must jump over
the paused seconds with no timestamp gap), discard (local and S3 outputs
gone), include/exclude (a participant's colour and tone absent, then present).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc import VideoStreamTrack
from livekit import api
from livekit.protocol import egress as egress_pb
from media_checks import ffprobe
from publishers import make_publisher_token, whip_publish
from service_fixtures import (
    API_KEY,
    API_SECRET,
    child_env,
    join,
    serve,
    service_config,
    start,
    stop,
    wait_status,
)

from egresskit.client import (
    EgressClient,
    EgressClientError,
    PauseEgressRequest,
    ResumeEgressRequest,
    RoomCompositeEgressRequest,
    StopEgressRequest,
    UpdateParticipantsRequest,
)
from egresskit.service.app import MANAGER, create_app
from egresskit.stages.media import PLAYOUT_DELAY_S

SMALL = egress_pb.EncodingOptions(width=320, height=180, framerate=15)
FINAL = (egress_pb.EGRESS_COMPLETE, egress_pb.EGRESS_FAILED, egress_pb.EGRESS_ABORTED)


class SecondsTrack(VideoStreamTrack):
    """A grey whose level says how many whole seconds have passed since `epoch` (0..11)."""

    def __init__(self, epoch: float, fps: int = 15) -> None:
        super().__init__()
        self.epoch = epoch
        self.fps = fps
        self._index = 0

    async def recv(self) -> av.VideoFrame:
        await asyncio.sleep(max(0.0, self.epoch + self._index / self.fps - time.monotonic()))
        second = int(time.monotonic() - self.epoch) % 12
        image = np.full((180, 320, 3), level_of(second), np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = self._index * 90_000 // self.fps
        frame.time_base = Fraction(1, 90_000)
        self._index += 1
        return frame


def level_of(second: int) -> int:
    return 16 + 18 * second


def seconds_shown(path: Path) -> list[tuple[float, int, int]]:
    """(time, pts, second shown at the centre) for every decoded frame."""
    out = []
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            image = frame.to_ndarray(format="rgb24")
            grey = float(np.mean(image[80:100, 150:170]))
            out.append((frame.time, frame.pts, round((grey - 16) / 18)))
    return out


async def wait_for_status(manager, egress_id: str, statuses, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while (info := manager.get(egress_id).public_info()).status not in statuses:
        assert time.monotonic() < deadline, egress_pb.EgressStatus.Name(info.status)
        await asyncio.sleep(0.05)
    return info


# --- pause and resume ---------------------------------------------------------------------------


async def test_pause_for_4_s_leaves_a_6_s_file_without_the_paused_seconds(
    aiohttp_server, tmp_path, webhooks
):
    app = create_app(service_config(tmp_path, webhooks.url))
    server = await aiohttp_server(app, host="127.0.0.1")
    base = str(server.make_url("")).rstrip("/")
    epoch = time.monotonic()
    token = make_publisher_token(API_KEY, API_SECRET, "pause", "alice")
    publisher = await whip_publish(base, "pause", token, [SecondsTrack(epoch)])
    manager = app[MANAGER]
    async with EgressClient(base, API_KEY, API_SECRET) as client:
        try:
            info = await client.start_room_composite_egress(
                RoomCompositeEgressRequest(
                    request=egress_pb.RoomCompositeEgressRequest(
                        room_name="pause",
                        video_only=True,
                        advanced=SMALL,
                        file_outputs=[egress_pb.EncodedFileOutput(filepath="pause.mp4")],
                        segment_outputs=[
                            egress_pb.SegmentedFileOutput(
                                filename_prefix="hls/pause", segment_duration=2
                            )
                        ],
                    )
                )
            )
            egress_id = info.egress_id
            await wait_for_status(manager, egress_id, [egress_pb.EGRESS_ACTIVE])
            clock = manager.get(egress_id).plan.graph.clock
            await clock.sleep_until(3.0)
            paused = await client.pause_egress(PauseEgressRequest(egress_id=egress_id))
            paused_at = time.monotonic()
            assert paused.status == egress_pb.EGRESS_ACTIVE and paused.details == "paused"
            await asyncio.sleep(4.0)
            resumed = await client.resume_egress(ResumeEgressRequest(egress_id=egress_id))
            resumed_at = time.monotonic()
            assert resumed.status == egress_pb.EGRESS_ACTIVE and resumed.details == ""
            await clock.sleep_until(6.0)  # 10 s after the start
            await client.stop_egress(StopEgressRequest(egress_id=egress_id))
            final = await wait_for_status(manager, egress_id, FINAL)
            assert final.status == egress_pb.EGRESS_COMPLETE, final.error
        finally:
            await publisher.close()

    path = tmp_path / "pause.mp4"
    duration = float(ffprobe(path)["format"]["duration"])
    assert 5.6 <= duration <= 6.4, duration
    shown = await asyncio.to_thread(seconds_shown, path)
    steps = set(np.diff([pts for _, pts, _ in shown]).tolist())
    assert len(steps) == 1, f"the timeline has gaps: frame pts steps {sorted(steps)}"
    # every whole second of the publisher's inside the pause (100 ms margins) is missing
    inside = [
        s for s in range(12) if paused_at - epoch + 0.1 < s and s + 1 < resumed_at - epoch - 0.1
    ]
    assert len(inside) >= 2
    seconds = [s for _, _, s in shown]
    assert not set(inside) & set(seconds), f"paused seconds {inside} recorded: {seconds}"
    # after the first frames (initials until the camera's first frame) the counter only
    # rises, by one a second, except once: where the recording resumed, which it shows
    # PLAYOUT_DELAY_S later (the video plays that much behind its capture)
    counted = [(t, s) for t, _, s in shown if t >= 1.0]
    jumps = [(t, b - a) for (_, a), (t, b) in zip(counted, counted[1:], strict=False) if b != a]
    big = [(t, step) for t, step in jumps if step != 1]
    assert len(big) == 1 and big[0][1] > 1, jumps
    assert abs(big[0][0] - (3.0 + PLAYOUT_DELAY_S)) < 0.2, jumps

    playlist = (tmp_path / "hls" / "pause.m3u8").read_text()
    assert playlist.count("#EXT-X-DISCONTINUITY\n") == 1, playlist
    before, _ = playlist.split("#EXT-X-DISCONTINUITY\n")
    resumed_from = sum(float(d) for d in re.findall(r"#EXTINF:([\d.]+),", before))
    assert abs(resumed_from - 3.0) < 0.3, playlist

    await webhooks.wait_for(egress_id, "egress_ended")
    updates = [
        e.egress_info.details
        for e in webhooks.events
        if e.egress_info.egress_id == egress_id and e.event == "egress_updated"
    ]
    assert "paused" in updates, updates
    assert updates.index("paused") < len(updates) - 1 and updates[updates.index("paused") + 1] == ""
    events = [e.event for e in webhooks.events if e.egress_info.egress_id == egress_id]
    assert events[0] == "egress_started" and events[-1] == "egress_ended", events


async def test_extension_refusals_are_twirp_errors(aiohttp_server, tmp_path):
    app = create_app(service_config(tmp_path))
    server = await aiohttp_server(app, host="127.0.0.1")
    base = str(server.make_url("")).rstrip("/")
    composite = egress_pb.RoomCompositeEgressRequest(
        room_name="r", file_outputs=[egress_pb.EncodedFileOutput(filepath="x.mp4")]
    )
    async with EgressClient(base, API_KEY, API_SECRET) as client:
        with pytest.raises(EgressClientError) as refused:
            await client.start_room_composite_egress(
                RoomCompositeEgressRequest(request=composite, video_codec="h265")
            )
        assert refused.value.code == "invalid_argument" and "video_codec" in refused.value.message
        with pytest.raises(EgressClientError) as refused:
            await client.pause_egress(PauseEgressRequest(egress_id="EG_unknown"))
        assert refused.value.code == "not_found"
        with pytest.raises(EgressClientError) as refused:
            await client.update_participants(
                UpdateParticipantsRequest(egress_id="EG_x", include_identities=[""])
            )
        assert refused.value.code == "invalid_argument"
    async with EgressClient(base, API_KEY, "wrong-secret-of-sufficient-length!!") as client:
        with pytest.raises(EgressClientError) as refused:
            await client.stop_egress(StopEgressRequest(egress_id="EG_x"))
        assert refused.value.code == "unauthenticated"


# --- discard ----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_discard_deletes_local_files_and_objects_already_uploaded(
    tmp_path, moto_server, s3_bucket
):
    """`egresskit serve` in its own process, egresskit.client and the CLI, moto as S3."""
    out = tmp_path / "out"
    service = await serve(out, EGRESSKIT_EGRESS_NETWORK='{"allow": ["127.0.0.0/8"]}')
    base = service.url
    s3 = egress_pb.S3Upload(
        access_key="testing",
        secret="testing",
        region="us-east-1",
        endpoint=moto_server.url,
        bucket=s3_bucket,
        force_path_style=True,
    )
    objects = moto_server.boto3_client()
    publisher = None
    try:
        publisher = await join(base, "discard", "alice", (200, 40, 40), 440.0)
        async with EgressClient(base, API_KEY, API_SECRET) as client:
            info = await client.start_room_composite_egress(
                RoomCompositeEgressRequest(
                    request=egress_pb.RoomCompositeEgressRequest(
                        room_name="discard",
                        advanced=SMALL,
                        file_outputs=[egress_pb.EncodedFileOutput(filepath="local/d.mp4")],
                        segment_outputs=[
                            egress_pb.SegmentedFileOutput(
                                filename_prefix="hls/d",
                                live_playlist_name="live.m3u8",
                                segment_duration=1,
                                s3=s3,
                            )
                        ],
                        image_outputs=[
                            egress_pb.ImageOutput(
                                capture_interval=1, filename_prefix="img/d", s3=s3
                            )
                        ],
                    )
                )
            )
            # meanwhile the CLI subcommands reach the same service (each starts Python)
            cli_env = child_env(
                EGRESSKIT_URL=base, EGRESSKIT_API_KEY=API_KEY, EGRESSKIT_API_SECRET=API_SECRET
            )
            choose = await start("participants", info.egress_id, "--exclude", "bob", env=cli_env)
            unknown = await start("stop", "EG_unknown", "--discard", env=cli_env)
            (printed, choose_errors), (_, unknown_errors), _ = await asyncio.wait_for(
                asyncio.gather(choose.communicate(), unknown.communicate(), asyncio.sleep(5.0)),
                60,
            )
            assert choose.returncode == 0, choose_errors.decode()
            assert json.loads(printed)["egress_id"] == info.egress_id
            assert unknown.returncode == 1 and "not_found" in unknown_errors.decode()
            uploaded = objects.list_objects_v2(Bucket=s3_bucket).get("Contents", [])
            assert len(uploaded) >= 3, "segments and images upload while recording"
            assert list(out.rglob("*.mp4")), "the file is being written"
            stopped = await client.stop_egress(
                StopEgressRequest(egress_id=info.egress_id, discard=True)
            )
            assert stopped.status == egress_pb.EGRESS_ENDING
            lk = api.LiveKitAPI(base, API_KEY, API_SECRET)  # ListEgress, as LiveKit's SDK sees it
            try:
                final = await wait_status(lk, info.egress_id, FINAL)
            finally:
                await lk.aclose()
        assert final.status == egress_pb.EGRESS_ABORTED, final.error
        assert final.details == "discarded" and not final.error
        assert not final.file_results and not final.segment_results
        left = [o["Key"] for o in objects.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
        assert left == [], left
        files = [p for p in out.rglob("*") if p.is_file()]
        assert files == [], files
    finally:
        if publisher is not None:
            await publisher.close()
        await service.stop()


# --- include / exclude ------------------------------------------------------------------------

PEOPLE = {
    "alice": ((220, 40, 40), 440.0),
    "bob": ((40, 60, 220), 1000.0),
    "carol": ((40, 200, 40), 2500.0),
}


@contextlib.asynccontextmanager
async def publishers_elsewhere(base: str, room: str, people: dict):
    """tests/whip_child.py per person, in processes of their own, as users publish: the
    test process's event loop serves the service only. Started at once, ended by SIGTERM."""
    tests = Path(__file__).resolve().parent
    env = child_env(PYTHONPATH=os.pathsep.join([str(tests), str(tests.parent)]))
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(tests / "whip_child.py"),
            base,
            room,
            make_publisher_token(API_KEY, API_SECRET, room, identity),
            ",".join(map(str, colour)),
            str(tone),
            "320x180",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        for identity, (colour, tone) in people.items()
    ]

    async def published(proc) -> None:
        while not (line := await proc.stdout.readline()).startswith(b"published"):
            if not line:
                raise AssertionError((await proc.stderr.read()).decode()[-2000:])

    try:
        await asyncio.wait_for(asyncio.gather(*(published(p) for p in procs)), 60)
        yield
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 10)
            await stop(proc)


def colour_series(path: Path, colour) -> list[tuple[float, float]]:
    """(time, share of the picture in `colour`) for every decoded frame."""
    out = []
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            image = frame.to_ndarray(format="rgb24").astype(np.int16)
            near = np.all(np.abs(image - np.array(colour)) < 40, axis=2)
            out.append((frame.time, float(near.mean())))
    return out


def tone_series(path: Path, tone: float) -> list[tuple[float, float]]:
    """(time, amplitude of `tone` in the mix) for every decoded audio frame (~21 ms)."""
    out = []
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.audio[0]):
            samples = frame.to_ndarray().reshape(-1, frame.samples)[0].astype(np.float64)
            window = np.hanning(len(samples))
            wave = np.exp(-2j * np.pi * tone * np.arange(len(samples)) / frame.sample_rate)
            out.append((frame.time, 2 * abs(np.dot(samples * window, wave)) / window.sum()))
    return out


async def test_excluded_participant_is_neither_drawn_nor_heard_until_included(
    aiohttp_server, tmp_path
):
    app = create_app(service_config(tmp_path))
    server = await aiohttp_server(app, host="127.0.0.1")
    base = str(server.make_url("")).rstrip("/")
    manager = app[MANAGER]
    async with (
        publishers_elsewhere(base, "choose", PEOPLE),
        EgressClient(base, API_KEY, API_SECRET) as client,
    ):
        info = await client.start_room_composite_egress(
            RoomCompositeEgressRequest(
                request=egress_pb.RoomCompositeEgressRequest(
                    room_name="choose",
                    advanced=SMALL,
                    file_outputs=[egress_pb.EncodedFileOutput(filepath="choose.mp4")],
                ),
                exclude_identities=["bob"],
            )
        )
        await wait_for_status(manager, info.egress_id, [egress_pb.EGRESS_ACTIVE])
        clock = manager.get(info.egress_id).plan.graph.clock
        await clock.sleep_until(2.5)
        called_at = clock.now()
        await client.update_participants(UpdateParticipantsRequest(egress_id=info.egress_id))
        await clock.sleep_until(called_at + 1.5)
        left_at = clock.now()
        await client.update_participants(
            UpdateParticipantsRequest(egress_id=info.egress_id, exclude_identities=["bob"])
        )
        await clock.sleep_until(left_at + 1.5)
        await client.stop_egress(StopEgressRequest(egress_id=info.egress_id))
        final = await wait_for_status(manager, info.egress_id, FINAL)
        assert final.status == egress_pb.EGRESS_COMPLETE, final.error

    # The recording shows the room PLAYOUT_DELAY_S after it happened (everyone's sound and
    # pictures, in step): a call's place in it is where the others' media of that instant
    # is. Before the first, nothing of bob, not even what he said just before the call
    # (excluded media is never buffered into the mix); from it, his colour and his tone
    # within 200 ms; from the second, nothing of bob again within 200 ms.
    placed = called_at + PLAYOUT_DELAY_S
    gone = left_at + PLAYOUT_DELAY_S
    frame = 1 / SMALL.framerate  # a picture shows the source frame nearest its instant
    path = tmp_path / "choose.mp4"
    bob = await asyncio.to_thread(colour_series, path, PEOPLE["bob"][0])
    alice = await asyncio.to_thread(colour_series, path, PEOPLE["alice"][0])
    assert all(share < 0.01 for t, share in bob if t < placed - frame), "bob drawn while excluded"
    assert any(share > 0.05 for t, share in alice if 1.0 < t < placed)
    shown = [t for t, share in bob if t >= placed - frame and share > 0.05]
    assert shown and shown[0] - placed <= 0.2, f"bob drawn at {shown[:1]}, placed {placed:.3f}"
    assert all(share > 0.05 for t, share in bob if shown[0] <= t < gone - frame), "bob hidden"
    assert all(share < 0.01 for t, share in bob if t > gone + 0.2), "bob drawn once left out"

    tones = {
        who: await asyncio.to_thread(tone_series, path, tone) for who, (_, tone) in PEOPLE.items()
    }
    level = float(np.median([a for t, a in tones["alice"] if 1.0 < t < placed]))
    assert level > 0.01, tones["alice"][:60]  # alice is heard, so the checks below can fail
    # a quarter of a tone: a leaked frame of bob is a whole one, a click of a late frame far less
    leaked = [(t, a) for t, a in tones["bob"] if 1.0 < t < placed - 0.03 and a > 0.25 * level]
    assert not leaked, f"bob heard while excluded: {leaked[:5]}, placed {placed:.3f}"
    heard = [t for t, a in tones["bob"] if t >= placed - 0.03 and a > 0.5 * level]
    assert heard and heard[0] - placed <= 0.2, f"bob heard at {heard[:1]}, placed {placed:.3f}"
    steady = [a for t, a in tones["bob"] if heard[0] + 0.1 < t < heard[0] + 1.1]
    assert np.mean(steady) > 0.5 * level, steady  # and on
    after = [(t, a) for t, a in tones["bob"] if t > gone + 0.2 and a > 0.25 * level]
    assert not after, f"bob heard once left out: {after[:5]}, gone {gone:.3f}"
