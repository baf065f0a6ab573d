"""Egresses of a real LiveKit server's rooms, through `egresskit serve --livekit-url`.

livekit-server runs on 127.0.0.1; publishers are the official `livekit`
real-time SDK; egresskit runs as its own process and is driven by the
unmodified `livekit-api` SDK at its own URL.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import av
import numpy as np
import pytest
from livekit import api
from livekit.protocol import egress as egress_pb
from livekit_publishers import SdkPublisher, SdkPublisherProcess
from livekit_server import LiveKitServer, SignalRelay, unavailable_reason
from media_checks import audio_samples, ffprobe, frame_at, region_color, stream, tone_strengths
from publishers import colors_close
from service_fixtures import API_KEY, API_SECRET, Served, serve, wait_status

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(unavailable_reason()), reason=unavailable_reason()),
]

RED, RED_TONE = (220, 40, 40), 440.0
BLUE, BLUE_TONE = (40, 60, 220), 1000.0
TILE_LEFT = (100, 220, 540, 500)  # inside the left tile of a two-tile 1280x720 grid
TILE_RIGHT = (740, 220, 1180, 500)
FULL = (300, 150, 980, 570)  # inside a single full-frame tile
DONE = (egress_pb.EGRESS_COMPLETE, egress_pb.EGRESS_FAILED, egress_pb.EGRESS_ABORTED)


@pytest.fixture
def livekit_server():
    with LiveKitServer() as server:
        yield server


class Service:
    """`egresskit serve` (service_fixtures.serve) recording the rooms of `livekit`."""

    def __init__(self, livekit: LiveKitServer, output_dir: Path, livekit_url: str = "") -> None:
        self.livekit_url = livekit_url or livekit.url
        self.output_dir = output_dir
        self.livekit = livekit
        self.url = ""
        self.served: Served | None = None

    async def start(self) -> Service:
        self.served = await serve(
            self.output_dir,
            "--livekit-url",
            self.livekit_url,
            "--livekit-api-key",
            self.livekit.api_key,
            EGRESSKIT_LIVEKIT_API_SECRET=self.livekit.api_secret,  # secrets not on argv
        )
        self.url = self.served.url
        return self

    async def stop(self) -> str:
        """Stop the service; returns its log."""
        return "" if self.served is None else await self.served.terminate(30)


@pytest.fixture
async def service(livekit_server, tmp_path):
    service = await Service(livekit_server, tmp_path / "out").start()
    yield service
    log = await service.stop()
    assert "Traceback" not in log, log[-4000:]


@pytest.fixture
async def lkapi(service):
    client = api.LiveKitAPI(service.url, API_KEY, API_SECRET)
    yield client
    await client.aclose()


async def publishers(livekit_server, room: str, *specs) -> list[SdkPublisher]:
    started = []
    for identity, color, tone in specs:
        started.append(
            await SdkPublisher(livekit_server, room, identity, color=color, tone=tone).start()
        )
    await asyncio.sleep(0.5)  # the server has announced their tracks
    return started


async def stop_all(publishers) -> None:
    for publisher in publishers:
        await publisher.stop()


def file_request(room: str, path: str, **kwargs) -> egress_pb.RoomCompositeEgressRequest:
    return egress_pb.RoomCompositeEgressRequest(
        room_name=room,
        file_outputs=[egress_pb.EncodedFileOutput(filepath=path)],
        **kwargs,
    )


async def test_room_composite_of_two_sdk_publishers(livekit_server, service, lkapi):
    pubs = await publishers(
        livekit_server, "standup", ("alice", RED, RED_TONE), ("bob", BLUE, BLUE_TONE)
    )
    try:
        info = await lkapi.egress.start_room_composite_egress(
            file_request("standup", "standup.mp4")
        )
        started = time.monotonic()
        assert info.room_name == "standup"
        assert info.room_id.startswith("RM_")
        await wait_status(lkapi, info.egress_id, [egress_pb.EGRESS_ACTIVE])
        await asyncio.sleep(10.0 - (time.monotonic() - started))
        await lkapi.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))
        wall = time.monotonic() - started
        final = await wait_status(lkapi, info.egress_id, DONE)
    finally:
        await stop_all(pubs)
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    path = service.output_dir / "standup.mp4"
    probe = ffprobe(path)
    video, audio = stream(probe, "video"), stream(probe, "audio")
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 1280, 720)
    assert audio["codec_name"] == "aac"
    duration = float(probe["format"]["duration"])
    assert abs(duration - wall) <= 0.02 * wall, f"{duration:.2f} s of media for {wall:.2f} s"

    image = frame_at(path, 6.0)
    assert colors_close(region_color(image, *TILE_LEFT), RED), region_color(image, *TILE_LEFT)
    assert colors_close(region_color(image, *TILE_RIGHT), BLUE), region_color(image, *TILE_RIGHT)
    samples, rate = audio_samples(path, 3.0, 8.0)
    red_level, blue_level = tone_strengths(samples, rate, [RED_TONE, BLUE_TONE])
    assert red_level > 50 and blue_level > 50, (red_level, blue_level)


async def test_room_service_is_the_livekit_servers(service, lkapi):
    with pytest.raises(api.TwirpError) as caught:
        await lkapi.room.list_rooms(api.ListRoomsRequest())
    assert caught.value.code == "unimplemented"
    assert "LiveKit server" in caught.value.message


async def test_unknown_room_is_not_found(service, lkapi):
    with pytest.raises(api.TwirpError) as caught:
        await lkapi.egress.start_track_egress(
            egress_pb.TrackEgressRequest(
                room_name="nobody-here",
                track_id="TR_missing",
                file=egress_pb.DirectFileOutput(filepath="x.ogg"),
            )
        )
    assert caught.value.code == "not_found"


def flash_times(path, region: tuple[int, int, int, int], level: float = 200.0) -> list[float]:
    """When the picture in `region` turns white (mean brightness rises above `level`)."""
    x0, y0, x1, y1 = region
    times, bright = [], False
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            mean = float(frame.to_ndarray(format="rgb24")[y0:y1, x0:x1].mean())
            if mean > level and not bright:
                times.append(float(frame.time))
            bright = mean > level
    return times


def beep_times(path, window: float = 0.005, ratio: float = 0.3) -> list[float]:
    """When a beep starts: the level of a `window` rises above `ratio` of the loudest."""
    with av.open(str(path)) as container:
        audio = container.streams.audio[0]
        start = float(audio.start_time * audio.time_base)
    samples, rate = audio_samples(path)
    size = max(1, int(rate * window))
    frames = samples[: len(samples) // size * size].reshape(-1, size)
    levels = np.sqrt(np.mean(frames**2, axis=1))
    threshold = ratio * float(levels.max())
    times, loud = [], False
    for index, level in enumerate(levels):
        if level > threshold and not loud:
            times.append(start + index * size / rate)
        loud = level > threshold
    return times


class DecodedProbe:
    """A second hidden recorder decoding a publisher's tracks, timed by egresskit's timelines:
    when its flashes and beeps were captured, as the publisher's sender reports place them."""

    def __init__(self, room, video, audio) -> None:
        self.room, self.video, self.audio = room, video, audio
        self._frames: dict[str, list] = {"video": [], "audio": []}
        self._tasks = [
            asyncio.create_task(self._read(video.subscribe(maxsize=2000), "video")),
            asyncio.create_task(self._read(audio.subscribe(maxsize=5000), "audio")),
        ]

    @classmethod
    async def join(cls, server, room_name: str, pub: SdkPublisherProcess) -> DecodedProbe:
        from egresskit.rooms.livekit import LiveKitRoom

        room = await LiveKitRoom.connect(
            server.url, server.api_key, server.api_secret, room_name, identity="EG_probe"
        )
        async with asyncio.timeout(10):
            while room.track(pub.video_sid) is None or room.track(pub.audio_sid) is None:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        return cls(room, room.track(pub.video_sid), room.track(pub.audio_sid))

    async def _read(self, link, kind: str) -> None:
        async for frame in link:
            self._frames[kind].append(frame)

    async def close(self) -> list[tuple[float, float]]:
        """(flash time, beep minus flash) of each flash (monotonic s), then the probe leaves."""
        try:
            flashes = self._onsets(
                [self.video.frame_time(f) for f in self._frames["video"]],
                [float(f.to_ndarray(format="gray").mean()) for f in self._frames["video"]],
            )
            times, levels = [], []
            for frame in self._frames["audio"]:
                mono = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0]
                times.append(
                    self.audio.frame_time(frame) + np.arange(len(mono)) / frame.sample_rate
                )
                levels.append(np.abs(mono.astype(np.float64)))
            beeps = self._onsets(list(np.concatenate(times)), list(np.concatenate(levels)))
        finally:
            for task in self._tasks:
                task.cancel()
            await self.room.close()
        return flash_beep_pairs(flashes, beeps)

    @staticmethod
    def _onsets(times: list[float], levels: list[float]) -> list[float]:
        """When the level rises above halfway between its extremes, after 0.5 s below it."""
        threshold = (min(levels) + max(levels)) / 2
        onsets, last_high = [], -1e9
        for when, level in zip(times, levels, strict=True):
            if level > threshold:
                if when - last_high > 0.5:
                    onsets.append(when)
                last_high = when
        return onsets


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def flash_beep_pairs(flashes: list[float], beeps: list[float]) -> list[tuple[float, float]]:
    """(flash, beep minus flash) for each flash with a beep less than a second from it
    (flashes come every 2 s; a publisher behind on a busy machine beeps late)."""
    pairs = []
    for flash in flashes:
        nearest = min(beeps, key=lambda beep: abs(beep - flash), default=None)
        if nearest is not None and abs(nearest - flash) < 1.0:
            pairs.append((flash, nearest - flash))
    return pairs


async def test_av_offset_of_a_flash_and_beep(livekit_server, service, lkapi):
    """The room composite keeps the A/V offset of the publisher's own frames.

    Measured in one run, flash by flash: the offset in the composite, and in the same
    tracks decoded by a second hidden recorder and timed as the publisher's sender
    reports place them (DecodedProbe). The publisher has a process of its own: in this one, the recording
    held its audio back by hundreds of ms at times. With the libwebrtc publisher of the `livekit` SDK the frames already
    carry audio 20-45 ms late: its audio sender reports map an Opus packet's first
    sample to about when the packet arrives, 20 ms (the packet) later than libwebrtc
    took it in (measured: audio packets arrive 0.3 ms after their reported capture,
    video 7 ms), plus up to 10 ms where the beep's first 10 ms chunk begins. The
    composite adds nothing to that but where a flash lands on its 30 fps grid: the
    output frame nearest the flash shows it (VideoCompositor._play), up to half a frame
    (16.7 ms) early or late, the same for every flash of one recording (+12..+13 ms read
    in 8 runs of 23, which failed the former bound of +10 ms: a frame at or after it).
    """
    pub = await SdkPublisherProcess(
        livekit_server, "sync", "alice", tone=1000.0, flash_every=2.0
    ).start()
    probe = None
    try:
        probe = await DecodedProbe.join(livekit_server, "sync", pub)
        asked = time.monotonic()  # about the recording's time 0 (pairs flashes below)
        info = await lkapi.egress.start_room_composite_egress(file_request("sync", "sync.mp4"))
        await wait_status(lkapi, info.egress_id, [egress_pb.EGRESS_ACTIVE])
        # under the service's 10 s keep-alive: an idle connection reused just as the
        # service closes it is reset
        await asyncio.sleep(9)
        await lkapi.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))
        final = await wait_status(lkapi, info.egress_id, DONE)
        published, probe = await probe.close(), None
    finally:
        if probe is not None:
            await probe.close()
        await pub.stop()
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    path = service.output_dir / "sync.mp4"
    recorded = flash_beep_pairs(flash_times(path, FULL), beep_times(path))
    # each flash of the recording with the same flash as published (flashes are 2 s apart)
    added, seen = [], []
    for flash, offset in recorded:
        same = min(published, key=lambda pair: abs(pair[0] - asked - flash), default=None)
        if same is not None and abs(same[0] - asked - flash) < 1.0:
            added.append(offset - same[1])
            seen.append(f"{offset * 1000:+.0f} of {same[1] * 1000:+.0f}")
    assert len(added) >= 3, (recorded, published)
    # a flash shows on the output frame nearest it: video up to half a frame early or late
    half_frame = 0.5 / 30
    assert -0.040 <= median(added) <= half_frame + 0.005, f"the composite moved audio: {seen} ms"
    # and the bound on what a viewer of the file sees, publisher's share included
    offsets = [offset for _, offset in recorded]
    assert abs(median(offsets)) <= 0.040, f"audio against video in the file: {seen} ms"


async def test_late_joiner_changes_the_grid_without_a_gap(livekit_server, service, lkapi):
    alice = await SdkPublisher(livekit_server, "late", "alice", color=RED, tone=RED_TONE).start()
    bob = None
    try:
        await asyncio.sleep(0.5)
        info = await lkapi.egress.start_room_composite_egress(file_request("late", "late.mp4"))
        started = time.monotonic()
        await wait_status(lkapi, info.egress_id, [egress_pb.EGRESS_ACTIVE])
        await asyncio.sleep(3.0 - (time.monotonic() - started))
        bob = await SdkPublisher(livekit_server, "late", "bob", color=BLUE, tone=BLUE_TONE).start()
        await asyncio.sleep(3.0)
        await bob.stop()
        bob = None
        await asyncio.sleep(3.0)
        await lkapi.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))
        final = await wait_status(lkapi, info.egress_id, DONE)
    finally:
        await alice.stop()
        if bob is not None:
            await bob.stop()
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    path = service.output_dir / "late.mp4"
    assert colors_close(region_color(frame_at(path, 1.5), *FULL), RED)
    together = frame_at(path, 5.0)
    assert colors_close(region_color(together, *TILE_LEFT), RED), region_color(together, *TILE_LEFT)
    assert colors_close(region_color(together, *TILE_RIGHT), BLUE)
    assert colors_close(region_color(frame_at(path, 8.0), *FULL), RED)
    assert max_pts_gap(path) <= 0.1, "the video has a gap"


def max_pts_gap(path) -> float:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        times = [
            float(p.pts * video.time_base) for p in container.demux(video) if p.pts is not None
        ]
    times.sort()
    return max(b - a for a, b in zip(times, times[1:], strict=False))


async def test_killed_server_fails_the_egress_and_keeps_the_file(livekit_server, service, lkapi):
    pub = await SdkPublisher(livekit_server, "crash", "alice", color=RED, tone=RED_TONE).start()
    try:
        await asyncio.sleep(0.5)
        info = await lkapi.egress.start_room_composite_egress(file_request("crash", "crash.mp4"))
        await wait_status(lkapi, info.egress_id, [egress_pb.EGRESS_ACTIVE])
        await asyncio.sleep(4)
        livekit_server.kill()
        killed = time.monotonic()
        final = await wait_status(lkapi, info.egress_id, DONE, timeout=15)
        ended_after = time.monotonic() - killed
    finally:
        await pub.stop()
    assert final.status == egress_pb.EGRESS_FAILED
    assert ended_after <= 10.0, f"the egress ended {ended_after:.1f} s after the server died"
    assert "LiveKit server" in final.error, final.error
    probe = ffprobe(service.output_dir / "crash.mp4")
    assert float(probe["format"]["duration"]) >= 3.0
    assert colors_close(region_color(frame_at(service.output_dir / "crash.mp4", 2.0), *FULL), RED)


async def test_dropped_signal_connection_is_resumed(livekit_server, tmp_path):
    """egresskit reaches the server through a relay that resets every connection mid-recording:
    the session is resumed (ICE restarted), the recording goes on live and ends COMPLETE."""
    async with SignalRelay(livekit_server) as relay:
        service = await Service(livekit_server, tmp_path / "out", livekit_url=relay.url).start()
        lkapi = api.LiveKitAPI(service.url, API_KEY, API_SECRET)
        pub = await SdkPublisher(
            livekit_server, "cut", "alice", color=RED, tone=1000.0, flash_every=2.0
        ).start()
        try:
            await asyncio.sleep(0.5)
            asked = time.monotonic()
            info = await lkapi.egress.start_room_composite_egress(file_request("cut", "cut.mp4"))
            await wait_status(lkapi, info.egress_id, [egress_pb.EGRESS_ACTIVE])
            started = time.monotonic()
            await asyncio.sleep(2)
            relay.cut()
            cut_at = time.monotonic() - asked
            await asyncio.sleep(5)  # the publisher flashes every 2 s
            stopping = time.monotonic()
            await lkapi.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))
            stopped = time.monotonic()
            final = await wait_status(lkapi, info.egress_id, DONE)
        finally:
            await pub.stop()
            await lkapi.aclose()
            log = await service.stop()
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    assert "session resumed" in log, log[-3000:]
    assert "Traceback" not in log, log[-4000:]
    path = tmp_path / "out" / "cut.mp4"
    duration = float(ffprobe(path)["format"]["duration"])
    # wall time: at least from ACTIVE to the stop request, at most from start to stopped
    shortest, longest = stopping - started, stopped - asked
    assert 0.98 * shortest <= duration <= 1.02 * longest, (duration, shortest, longest)
    assert max_pts_gap(path) <= 0.1, "the video has a gap"
    flashes = flash_times(path, FULL)
    assert [f for f in flashes if f > cut_at + 1.0], f"no live picture after the cut: {flashes}"


async def test_browser_publisher_is_in_the_composite(livekit_server, service, lkapi):
    from livekit_browser import livekit_browser_publisher
    from livekit_browser import unavailable_reason as browser_unavailable

    if browser_unavailable():
        pytest.skip(browser_unavailable())
    green = (40, 200, 60)
    alice = await SdkPublisher(livekit_server, "browser", "alice", color=RED, tone=RED_TONE).start()
    token = livekit_server.token("browser", "chromium", can_publish=True)
    try:
        async with livekit_browser_publisher(livekit_server.url, token, green) as browser:
            await browser.wait_published()
            await asyncio.sleep(1.0)
            info = await lkapi.egress.start_room_composite_egress(
                file_request("browser", "browser.mp4")
            )
            await wait_status(lkapi, info.egress_id, [egress_pb.EGRESS_ACTIVE])
            await asyncio.sleep(5)
            await lkapi.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))
            final = await wait_status(lkapi, info.egress_id, DONE)
    finally:
        await alice.stop()
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    image = frame_at(service.output_dir / "browser.mp4", 4.0)
    assert colors_close(region_color(image, *TILE_LEFT), RED), region_color(image, *TILE_LEFT)
    right = region_color(image, *TILE_RIGHT)
    assert colors_close(right, green), f"the browser's tile is {right}"


async def test_deleted_room_ends_the_egress_cleanly(livekit_server, service, lkapi):
    pub = await SdkPublisher(livekit_server, "gone", "alice", color=RED, tone=RED_TONE).start()
    server_api = api.LiveKitAPI(
        livekit_server.http_url, livekit_server.api_key, livekit_server.api_secret
    )
    try:
        await asyncio.sleep(0.5)
        info = await lkapi.egress.start_room_composite_egress(file_request("gone", "gone.mp4"))
        await wait_status(lkapi, info.egress_id, [egress_pb.EGRESS_ACTIVE])
        await asyncio.sleep(3)
        await server_api.room.delete_room(api.DeleteRoomRequest(room="gone"))
        final = await wait_status(lkapi, info.egress_id, DONE, timeout=15)
    finally:
        await server_api.aclose()
        await pub.stop()
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    assert "LiveKit room ended" in final.details, final.details
    assert float(ffprobe(service.output_dir / "gone.mp4")["format"]["duration"]) >= 2.5
