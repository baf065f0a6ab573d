"""Lip sync: a flash and a beep sent together stay together in every kind of recording.

The service runs as its own process (`egresskit serve`), the publisher in
another: tests/flash_beep.py (aiortc over WHIP), or headless Chromium
publishing a canvas that flashes and a WebAudio tone that beeps
(tests/chromium.py FLASH_BEEP). One recording records a room composite, a
participant egress and a track composite at the same time, driven through
the livekit-api SDK; each file is then decoded and every flash paired with
its beep. The aiortc publisher records all three for `SECONDS` (60 s);
so does Chromium. The publisher behind 100 ms of jitter and 2 % loss, which
also loses a video packet for good every 4 s, records a participant egress for
`SHORT_SECONDS`, long enough for two repairs at a key frame: bench/lip_sync.py
records all three for 60 s.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import flash_beep
import numpy as np
import pytest
from chromium import FLASH_BEEP, chromium_available, chromium_publisher
from livekit import api
from livekit.protocol import egress as egress_pb
from livekit.protocol import models
from livekit.protocol import room as room_pb
from media_checks import av_offsets, ffprobe, longest_freeze, luma_frames
from publishers import make_publisher_token
from service_fixtures import API_KEY, API_SECRET, child_env, serve, stop, wait_status

from egresskit.rooms.encoded import MAX_PACKET_WAIT_S
from egresskit.rooms.intake import RECEIVE_TICK_S
from egresskit.stages.media import PLAYOUT_DELAY_S

TESTS = Path(__file__).parent
ROOM, IDENTITY = "lipsync", "flasher"
SECONDS = 60.0
SHORT_SECONDS = 12.0
CHROMIUM_SETTLE_S = 5.0
PERIOD_S = flash_beep.PERIOD_S
# Small outputs: three encodes at once on a shared 2-core machine.
ENCODING = egress_pb.EncodingOptions(width=640, height=360, framerate=30, video_bitrate=600)


async def publish_flash_beep(base: str, *extra: str) -> asyncio.subprocess.Process:
    """The flash + beep publisher in its own process, once it has published."""
    token = make_publisher_token(API_KEY, API_SECRET, ROOM, IDENTITY)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(TESTS / "flash_beep.py"),
        base,
        ROOM,
        token,
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_env(),
    )
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    if line.strip() != b"published":
        await stop(proc)
        raise AssertionError(f"publisher failed: {(await proc.stderr.read()).decode()[-2000:]}")
    return proc


async def published_tracks(client: api.LiveKitAPI) -> dict[int, str]:
    """Track ids of the publisher by type, once both are published."""
    deadline = time.monotonic() + 20
    while True:
        listed = await client.room.list_participants(room_pb.ListParticipantsRequest(room=ROOM))
        tracks = {t.type: t.sid for p in listed.participants for t in p.tracks}
        if len(tracks) == 2:
            return tracks
        if time.monotonic() > deadline:
            raise AssertionError(f"tracks published: {tracks}")
        await asyncio.sleep(0.2)


@dataclass
class Recorded:
    """An egress and the test's own bounds on how long it recorded."""

    info: egress_pb.EgressInfo
    shortest: float = 0.0  # from the start request's answer to the stop request
    longest: float = 0.0  # from the start request to the stop request's answer
    active_at: float = 0.0  # time.monotonic() once every egress was active


# The flash is seen at frame granularity: at 30 fps its onset lands up to half a frame
# from its capture time, by where the publisher's frames fall on the output grid, a
# constant for one recording, and for each kind its own (Chromium, one run: room +3,
# participant +23, track composite +7 ms). Decoded audio is exact (the steady +21.5 ms
# read before was Opus's 6.5 ms encoder delay plus that phase). Two aiortc runs read
# -13..+15 ms.
FRAME_PHASE_S = 0.5 / 30
# The bounds: 20 ms from clean publishers, 40 ms with jitter and loss.
CLEAN_S, IMPAIRED_S = 0.020, 0.040
JITTER_MS, LOSS = 100, 0.02

# First quarter against last (the medians of their offsets).
MAX_DRIFT_S = 0.010
# A flash shows in the file at the output frame (30 fps) its capture time falls in, so
# a timing move of a millisecond near a frame boundary steps the measured offset by a
# whole frame (read in a 60 s participant egress: -16 ms for four pairs, then +17 ms).
# That step is the grid's, not drift: a step of one frame period between neighbouring
# pairs (within FLIP_TOLERANCE_S) is taken out before the quarters are compared.
FRAME_S = 1 / 30
FLIP_TOLERANCE_S = 0.004

# Longest the picture may stand still (after a loss a key frame is asked for at once).
MAX_FREEZE_S = 1.0
# A packet lost for good (see flash_beep.py) shows as a hole with the next packet (a
# frame and the relay's jitter later); the service waits MAX_PACKET_WAIT_S for its
# retransmission, gives up with the next packet (a frame) and asks for a key frame,
# which comes through the same relay (a frame and the jitter), then shows; plus 0.25 s
# for a key frame packet that the 2 % loss took and NACK brought back, or a busy
# host. Read (load 2-5): asked 0.30-0.55 s, right again 0.33-0.56 s after the loss.
# Asking again (KEYFRAME_REQUEST_INTERVAL_S, 1 s later) or the sender's own next key
# frame (aiortc's VP8: every 3000 frames) would take longer: this is the key frame
# asked for at once.
# The loss and a lost key frame packet are each seen up to a receive tick after they
# arrive (a socket is read on readiness only once a hole is known): one CI run read
# 0.83 s, asked 0.39 s after the loss.
RECOVERY_S = MAX_PACKET_WAIT_S + 2 * JITTER_MS / 1000 + 3 / 30 + 0.25 + 2 * RECEIVE_TICK_S
# Mean luma change (0-255) below which two frames are the same picture (see longest_freeze).
STILL = 0.3


KINDS = ("room", "participant", "track_composite")


async def record_all_three(
    client: api.LiveKitAPI, seconds: float, kinds: tuple[str, ...] = KINDS
) -> dict[str, Recorded]:
    """Room composite, participant and track composite egresses (or some), recorded together."""
    tracks = await published_tracks(client)
    egress = client.egress
    outputs = {kind: [egress_pb.EncodedFileOutput(filepath=f"{kind}.mp4")] for kind in kinds}
    requests = {
        "room": lambda: egress.start_room_composite_egress(
            egress_pb.RoomCompositeEgressRequest(
                room_name=ROOM, file_outputs=outputs["room"], advanced=ENCODING
            )
        ),
        "participant": lambda: egress.start_participant_egress(
            egress_pb.ParticipantEgressRequest(
                room_name=ROOM,
                identity=IDENTITY,
                file_outputs=outputs["participant"],
                advanced=ENCODING,
            )
        ),
        "track_composite": lambda: egress.start_track_composite_egress(
            egress_pb.TrackCompositeEgressRequest(
                room_name=ROOM,
                audio_track_id=tracks[models.TrackType.AUDIO],
                video_track_id=tracks[models.TrackType.VIDEO],
                file_outputs=outputs["track_composite"],
                advanced=ENCODING,
            )
        ),
    }
    asked = time.monotonic()
    started = {kind: await requests[kind]() for kind in kinds}
    answered = time.monotonic()
    for info in started.values():
        await wait_status(client, info.egress_id, [egress_pb.EGRESS_ACTIVE])
    active = time.monotonic()
    await asyncio.sleep(seconds)
    recorded = {}
    for kind, info in started.items():
        stopping = time.monotonic()
        await egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))
        recorded[kind] = Recorded(info, stopping - answered, time.monotonic() - asked, active)
    for record in recorded.values():
        record.info = await wait_status(
            client, record.info.egress_id, [egress_pb.EGRESS_COMPLETE], timeout=60
        )
    return recorded


def without_frame_steps(offsets: list[float]) -> list[float]:
    """`offsets` with each one-frame step between two levels taken out (see FRAME_S).

    A level is two neighbouring pairs within FLIP_TOLERANCE_S: one pair off
    by a frame (a flash a frame late after a loss) is no step, and the
    quarters' medians already leave it out.
    """
    steady, shift = offsets[:1], 0.0
    for i in range(1, len(offsets)):
        before, after = offsets[i - 1], offsets[i]
        if (
            abs(abs(after - before) - FRAME_S) <= FLIP_TOLERANCE_S
            and i >= 2
            and abs(offsets[i - 2] - before) <= FLIP_TOLERANCE_S
            and i + 1 < len(offsets)
            and abs(offsets[i + 1] - after) <= FLIP_TOLERANCE_S
        ):
            shift -= after - before
        steady.append(after + shift)
    return steady


def test_one_frame_steps_between_levels_are_taken_out_and_single_pairs_are_not():
    ms = [-0.016] * 4 + [0.017] * 4  # a flash crossing a frame boundary for good
    assert without_frame_steps(ms) == pytest.approx([-0.016] * 8)
    # a pair a frame late, entered by a step that is not a frame's: everything after stays
    ms = [-0.004] * 3 + [0.011, -0.038] + [-0.004] * 3
    assert without_frame_steps(ms) == pytest.approx(ms)


def lip_sync_pairs(path: Path) -> list[tuple[float, float]]:
    """`av_offsets` of the flashes shown from PLAYOUT_DELAY_S on.

    Until then a composite holds each track's first frame, shown at once
    and due only at PLAYOUT_DELAY_S (the delay of a recording's start, see
    egresskit.stages.media): a recording that starts on a flash shows it
    held from its first frames, ~0.4-0.5 s before its beep (seen at 1 in 4
    Chromium starts: one pair of 30 off by +368..+500 ms).
    """
    return [(flash, offset) for flash, offset in av_offsets(path) if flash >= PLAYOUT_DELAY_S]


def check_sync(
    path: Path,
    recorded: Recorded,
    tolerance: float,
    max_freeze: float,
    max_drift: float = MAX_DRIFT_S,
    worst_tolerance: float | None = None,
) -> str:
    """Assert lip sync, no drift and an exact duration; a summary line for the log."""
    pairs = lip_sync_pairs(path)
    expected = recorded.shortest / PERIOD_S
    assert pairs, f"{path.name}: no flash/beep pair of ~{expected:.0f}"
    offsets = [offset for _, offset in pairs]
    median = statistics.median(offsets)
    worst = max(offsets, key=abs)
    quarter = max(1, len(offsets) // 4)
    steady = without_frame_steps(offsets)
    drift = statistics.median(steady[-quarter:]) - statistics.median(steady[:quarter])
    duration = float(ffprobe(path)["format"]["duration"])
    freeze = longest_freeze(path)
    summary = (
        f"{path.name}: {len(pairs)} flash/beep pairs of ~{expected:.0f}, offset median "
        f"{median * 1000:+.1f} ms, worst {worst * 1000:+.1f} ms, drift {drift * 1000:+.1f} ms; "
        f"{duration:.3f} s for {recorded.shortest:.3f}-{recorded.longest:.3f} s of wall time; "
        f"longest freeze {freeze:.2f} s; offsets (ms) {[round(o * 1000) for o in offsets]}"
    )
    print(summary)
    assert len(pairs) >= expected - 4, summary
    worst_tolerance = tolerance if worst_tolerance is None else worst_tolerance
    assert abs(median) <= tolerance and abs(worst) <= worst_tolerance, summary
    assert abs(drift) <= max_drift, summary
    assert freeze <= max_freeze, summary
    slack = 0.002 * recorded.shortest
    assert recorded.shortest - slack <= duration <= recorded.longest + slack, summary
    return summary


async def record_from_aiortc(
    output_dir: Path, seconds: float, *extra: str, kinds: tuple[str, ...] = KINDS
) -> tuple[dict[str, Recorded], dict]:
    """Recordings of tests/flash_beep.py (given `extra` arguments: jitter, loss), and
    what the publisher reported on exit (an impaired one: its losses, see flash_beep.py)."""
    service = await serve(output_dir)
    publisher = None
    client = api.LiveKitAPI(service.url, API_KEY, API_SECRET)
    try:
        publisher = await publish_flash_beep(service.url, *extra)
        results = await record_all_three(client, seconds, kinds)
        return results, await publisher_report(publisher)
    finally:
        await client.aclose()
        if publisher is not None:
            await stop(publisher)
        await service.stop()


async def publisher_report(publisher: asyncio.subprocess.Process) -> dict:
    """The JSON line flash_beep.py prints once asked to stop ({} if none)."""
    publisher.terminate()
    out, err = await asyncio.wait_for(publisher.communicate(), 15)
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    if publisher.returncode != 0:
        raise AssertionError(f"publisher exited {publisher.returncode}: {err.decode()[-2000:]}")
    return json.loads(lines[-1]) if lines else {}


async def record_from_chromium(
    output_dir: Path, seconds: float, kinds: tuple[str, ...] = KINDS, settle: float = 0.0
) -> dict[str, Recorded]:
    """Recordings of a Chromium page publishing FLASH_BEEP over WHIP."""
    service = await serve(output_dir)
    client = api.LiveKitAPI(service.url, API_KEY, API_SECRET)
    try:
        token = make_publisher_token(API_KEY, API_SECRET, ROOM, IDENTITY)
        async with chromium_publisher(service.url, ROOM, token, FLASH_BEEP) as browser:
            await browser.wait_published(30)
            # libwebrtc reports on audio every ~5 s: until its first report the audio
            # is placed by arrivals alone, and the first pairs read 10-30 ms apart from
            # the rest (bench/lip_sync.py records from the start and shows it)
            await asyncio.sleep(settle)
            return await record_all_three(client, seconds, kinds)
    finally:
        await client.aclose()
        await service.stop()


@pytest.mark.slow
async def test_flash_and_beep_stay_together_from_an_aiortc_publisher(tmp_path):
    results, _ = await record_from_aiortc(tmp_path, SECONDS)
    assert_all_in_sync(results, CLEAN_S + FRAME_PHASE_S)


@pytest.mark.slow
@pytest.mark.chromium
@pytest.mark.skipif(
    not chromium_available(), reason="Debian chromium (/usr/bin/chromium) is not installed"
)
async def test_flash_and_beep_stay_together_from_chromium(tmp_path):
    results = await record_from_chromium(tmp_path, SECONDS, settle=CHROMIUM_SETTLE_S)
    assert_all_in_sync(results, CLEAN_S + FRAME_PHASE_S)


@pytest.mark.slow
async def test_flash_and_beep_stay_together_through_jitter_and_loss(tmp_path):
    """100 ms of jitter and 2 % loss between publisher and service: A/V within 40 ms,
    and every packet lost for good (every 4 s) is repaired at the next key frame."""
    results, report = await record_from_aiortc(
        tmp_path, SHORT_SECONDS, str(JITTER_MS), str(LOSS), kinds=("participant",)
    )
    # The issue asks no drift bound here: a quarter of 12 s is one pair, and two pairs
    # each within 40 ms may be 80 ms apart as the clock mapping moves with the jitter
    # (read: -28 ms then +15 ms); the worst pair's bound holds them.
    assert_all_in_sync(results, IMPAIRED_S + FRAME_PHASE_S, max_drift=math.inf)
    recorded = results["participant"]
    (result,) = recorded.info.file_results
    check_recoveries(Path(result.location), recorded, report)


def check_recoveries(path: Path, recorded: Recorded, report: dict) -> str:
    """Assert that the picture is right again within RECOVERY_S of every packet the
    publisher lost for good, and that the service asked for a key frame in that time."""
    frames = pictures(path)
    # Media time m of the publisher shows at m + shift in the recording. Its flashes
    # fall on multiples of PERIOD_S; which one a flash is follows from when the egress
    # became active (the recording starts then and shows media after PLAYOUT_DELAY_S).
    guess = report["start"] - recorded.active_at + PLAYOUT_DELAY_S
    shifts = [t - PERIOD_S * round((t - guess) / PERIOD_S) for t, _ in av_offsets(path)]
    shift = statistics.median(shifts)
    right_from = next(t for t, right, _ in frames if right)
    recorded_to = frames[-1][0]
    lines = []
    for lost in report["lost_for_good"]:
        at = lost + shift
        if not right_from <= at <= recorded_to - 2 * RECOVERY_S:  # its recovery recorded
            continue
        asked = [t - lost for t in report["keyframe_requests"] if t >= lost]
        recovered = recovery(frames, at)
        lines.append(
            f"lost at {at:.3f} s: key frame asked "
            + (f"{asked[0]:.3f} s later" if asked else "never")
            + f", picture right again at {recovered:.3f} s"
        )
        assert asked and asked[0] <= RECOVERY_S, lines[-1]
        assert recovered - at <= RECOVERY_S, lines[-1]
    summary = f"{path.name}: " + "; ".join(lines)
    print(summary)
    assert lines, f"{path.name}: no packet lost for good while recording ({report})"
    return summary


def recovery(frames: list[tuple[float, bool, bool]], at: float) -> float:
    """When the picture is right and moving again after a loss at `at` (recording time).

    Every frame that is frozen or wrong until RECOVERY_S after the loss counts
    (its own, those waiting for its retransmission, those decoded without it),
    and so does a run of them that goes on past that, through gaps of up to two
    good frames (frames that came through): the picture is back once three good
    frames follow the last of them.
    """
    limit = at + RECOVERY_S
    last_bad = None
    good_since = 0
    for t, right, moved in frames:
        if t < at - 2 / 30:
            continue
        if right and moved:
            good_since += 1
            if t > limit and good_since > 2:
                break
        elif t <= limit or (last_bad is not None and good_since <= 2):
            last_bad, good_since = t, 0
        else:
            break  # a new run, begun after the loss's time
    if last_bad is None:
        return at
    return next((t for t, right, moved in frames if t > last_bad and right and moved), math.inf)


def pictures(path: Path) -> list[tuple[float, bool, bool]]:
    """(time, right, moved) of each frame of a tests/flash_beep.py recording.

    Right: the grey bar shows once and whole (a picture decoded against a reference
    that was lost smears or cuts it); moved: it differs from the frame before.
    """
    frames = []
    previous = None
    for at, luma in luma_frames(path):
        columns = np.flatnonzero(np.abs(luma.mean(axis=0) - flash_beep.BAR) < 30)
        width = flash_beep.BAR_WIDTH * luma.shape[1] / flash_beep.WIDTH
        right = (
            len(columns) > 0
            and columns[-1] - columns[0] + 1 == len(columns)  # one run of columns
            and 0.7 * width <= len(columns) <= 1.3 * width
        )
        moved = previous is None or np.abs(luma - previous).mean() >= STILL
        frames.append((at, bool(right), bool(moved)))
        previous = luma
    return frames


def assert_all_in_sync(
    results: dict[str, Recorded],
    tolerance: float,
    max_freeze: float = MAX_FREEZE_S,
    max_drift: float = MAX_DRIFT_S,
    worst_tolerance: float | None = None,
) -> None:
    """check_sync on every recording; every failure is reported, not only the first."""
    failures = []
    for kind, recorded in results.items():
        (result,) = recorded.info.file_results
        try:
            check_sync(
                Path(result.location), recorded, tolerance, max_freeze, max_drift, worst_tolerance
            )
        except AssertionError as exc:
            failures.append(f"{kind}: {exc}")
    assert not failures, "\n".join(failures)
