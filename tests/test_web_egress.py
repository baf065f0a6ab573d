"""Web egress: test pages recorded by Chromium on Xvfb through the Egress API (livekit-api).

Every test checks that no Xvfb, PulseAudio, parec or Chromium process and
no web egress directory is left once its egresses have ended. One browser
runs at a time except in the concurrency test: the machine is small.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest
from livekit import api
from livekit.protocol import egress as egress_pb
from media_checks import audio_samples, ffprobe, frame_at, region_color, stream
from service_fixtures import API_KEY, API_SECRET, join, serve, service_config, wait_status
from web_pages import EGRESS_SDK, LIVEKIT_CLIENT, browser_leftovers, page_server, read_counter

from egresskit.service.app import ROOMS, create_app
from egresskit.web import missing_packages

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(missing_packages()), reason="needs chromium, xvfb and pulseaudio"),
]

DONE = (egress_pb.EGRESS_COMPLETE, egress_pb.EGRESS_FAILED, egress_pb.EGRESS_ABORTED)
# `egresskit serve`'s egress_network for the tests' pages and receivers on loopback
LOOPBACK_ONLY = "{allow: [127.0.0.0/8]}"


@pytest.fixture
async def pages():
    async with page_server() as server:
        yield server


@pytest.fixture
async def service(aiohttp_server, tmp_path):
    out = tmp_path / "out"
    app = create_app(service_config(out, web_start_timeout_s=3.0))
    server = await aiohttp_server(app, host="127.0.0.1")
    server.output_dir = out
    client = api.LiveKitAPI(str(server.make_url("")).rstrip("/"), API_KEY, API_SECRET)
    server.client = client
    yield server
    await client.aclose()


async def no_leftovers(timeout: float = 10.0) -> None:
    """The egresses have ended: every helper process and directory goes within `timeout`."""
    for _ in range(int(timeout / 0.2)):
        left = browser_leftovers()
        if not left:
            return
        await asyncio.sleep(0.2)
    assert not browser_leftovers(), f"left behind: {browser_leftovers()}"


def web_request(url: str, **outputs) -> egress_pb.WebEgressRequest:
    return egress_pb.WebEgressRequest(url=url, **outputs)


def counters(path: Path) -> list[int]:
    with av.open(str(path)) as container:
        return [read_counter(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]


async def test_page_to_mp4_at_constant_frame_rate_with_its_tone(service, pages):
    client = service.client
    info = await client.egress.start_web_egress(
        web_request(
            str(pages.make_url("/counter")),
            file_outputs=[egress_pb.EncodedFileOutput(filepath="page.mp4")],
        )
    )
    assert info.status == egress_pb.EGRESS_STARTING
    # when the first media was written, by the service's clock (not when the poll saw it)
    active = (await wait_status(client, info.egress_id, [egress_pb.EGRESS_ACTIVE])).updated_at
    await asyncio.sleep(10 - (time.time_ns() - active) / 1e9)
    stopped = time.time_ns()
    await client.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))
    final = await wait_status(client, info.egress_id, DONE)
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    await no_leftovers()

    path = service.output_dir / "page.mp4"
    probed = ffprobe(path)
    video = stream(probed, "video")
    assert (video["width"], video["height"]) == (1280, 720)
    assert video["r_frame_rate"] == video["avg_frame_rate"] == "30/1"
    duration = float(video["duration"])
    wall = (stopped - active) / 1e9
    assert abs(duration - wall) <= 0.02 * wall, (duration, wall)
    assert int(video["nb_read_frames"]) == round(duration * 30)
    seen = counters(path)
    advancing = sum(b > a for a, b in zip(seen, seen[1:], strict=False))
    assert advancing >= 0.95 * (len(seen) - 1), (
        f"counter advanced in {advancing}/{len(seen) - 1} frames: {seen}"
    )
    samples, rate = audio_samples(path, 1.0, duration - 0.5)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    strongest = np.argmax(spectrum) * rate / len(samples)
    assert abs(strongest - 440) < 3, strongest


async def test_one_page_to_hls_rtmp_and_images_with_update_stream(service, pages, rtmp_server):
    client = service.client
    first, second = rtmp_server.url("web-one"), rtmp_server.url("web-two")
    info = await client.egress.start_web_egress(
        web_request(
            str(pages.make_url("/counter")),
            segment_outputs=[
                egress_pb.SegmentedFileOutput(
                    filename_prefix="web/hls/part", playlist_name="index.m3u8", segment_duration=2
                )
            ],
            stream_outputs=[egress_pb.StreamOutput(urls=[first])],
            image_outputs=[egress_pb.ImageOutput(filename_prefix="web/img/i", capture_interval=2)],
        )
    )
    await wait_status(client, info.egress_id, [egress_pb.EGRESS_ACTIVE])
    await asyncio.sleep(2)
    await client.egress.update_stream(
        egress_pb.UpdateStreamRequest(egress_id=info.egress_id, add_output_urls=[second])
    )
    await asyncio.sleep(5)
    await client.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))
    final = await wait_status(client, info.egress_id, DONE)
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    await no_leftovers()

    playlist = (service.output_dir / "web/hls/index.m3u8").read_text()
    segments = [line for line in playlist.splitlines() if line.endswith(".ts")]
    assert len(segments) >= 3 and "#EXT-X-ENDLIST" in playlist
    assert stream(ffprobe(service.output_dir / "web/hls" / segments[0]), "video")["width"] == 1280
    images = sorted((service.output_dir / "web/img").glob("*.jpeg"))
    assert len(images) >= 3 and final.image_results[0].image_count == len(images)
    rtmp_server.stop()
    for key, least in (("web-one", 6.0), ("web-two", 3.0)):
        probed = ffprobe(rtmp_server.recording(key))
        assert stream(probed, "video")["width"] == 1280 and stream(probed, "audio")
        assert float(probed["format"]["duration"]) >= least
    assert [r.status for r in final.stream_results] == [egress_pb.StreamInfo.FINISHED] * 2


async def test_start_egress_web_source_records_the_sound_only(service, pages):
    """StartEgress with a `web` source, audio_only: the page's tone and no picture."""
    client = service.client
    info = await client.egress.start_egress(
        egress_pb.StartEgressRequest(
            web=egress_pb.WebSource(url=str(pages.make_url("/counter")), audio_only=True),
            outputs=[egress_pb.Output(file=egress_pb.FileOutput(filepath="tone.ogg"))],
        )
    )
    await wait_status(client, info.egress_id, [egress_pb.EGRESS_ACTIVE])
    await asyncio.sleep(3)
    await client.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))
    final = await wait_status(client, info.egress_id, DONE)
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    await no_leftovers()
    path = service.output_dir / "tone.ogg"
    assert [s["codec_type"] for s in ffprobe(path)["streams"]] == ["audio"]
    samples, rate = audio_samples(path, 0.5, 2.5)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    assert abs(np.argmax(spectrum) * rate / len(samples) - 440) < 3


async def test_pages_that_fail_end_failed_with_the_reason(service, pages):
    client = service.client
    cases = {
        "http://no-such-host.invalid/": "ERR_NAME_NOT_RESOLVED",
        str(pages.make_url("/missing")): "HTTP 404",
    }
    for url, reason in cases.items():
        info = await client.egress.start_web_egress(
            web_request(url, file_outputs=[egress_pb.EncodedFileOutput(filepath="failed.mp4")])
        )
        final = await wait_status(client, info.egress_id, DONE)
        assert final.status == egress_pb.EGRESS_FAILED, url
        assert reason in final.error and url in final.error, final.error
        await no_leftovers()
    # a page that never logs START_RECORDING (the service waits 3 s here)
    info = await client.egress.start_web_egress(
        web_request(
            str(pages.make_url("/signal?after=60")),
            await_start_signal=True,
            file_outputs=[egress_pb.EncodedFileOutput(filepath="never.mp4")],
        )
    )
    final = await wait_status(client, info.egress_id, DONE)
    assert final.status == egress_pb.EGRESS_FAILED
    assert "no START_RECORDING from the page within 3 s" in final.error
    await no_leftovers()


def chromium_leader() -> int:
    """The pid of the Chromium a browser source started (its process group's leader)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        pid = int(entry.name)
        if (
            b"EGRESSKIT_WEB_DIR=" in environ
            and b"--remote-debugging-pipe" in cmdline
            and os.getpgid(pid) == pid
        ):
            return pid
    raise AssertionError("no Chromium of a browser source is running")


async def test_chromium_killed_mid_recording_fails_and_keeps_the_file(service, pages):
    client = service.client
    info = await client.egress.start_web_egress(
        web_request(
            str(pages.make_url("/counter")),
            file_outputs=[egress_pb.EncodedFileOutput(filepath="killed.mp4")],
        )
    )
    await wait_status(client, info.egress_id, [egress_pb.EGRESS_ACTIVE])
    await asyncio.sleep(3)
    os.kill(chromium_leader(), signal.SIGKILL)
    final = await wait_status(client, info.egress_id, DONE)
    assert final.status == egress_pb.EGRESS_FAILED
    assert "Chromium exited" in final.error, final.error
    await no_leftovers()
    probed = ffprobe(service.output_dir / "killed.mp4")
    assert float(stream(probed, "video")["duration"]) >= 2.5
    assert int(stream(probed, "video")["nb_read_frames"]) >= 75


async def test_two_pages_at_once_each_on_its_own_display(service, pages):
    client = service.client
    colours = {"red": "ff0000", "blue": "0000ff"}
    started = {}
    for name, colour in colours.items():
        started[name] = await client.egress.start_web_egress(
            web_request(
                str(pages.make_url(f"/colour?c={colour}")),
                video_only=True,
                file_outputs=[egress_pb.EncodedFileOutput(filepath=f"{name}.mp4")],
            )
        )
    for info in started.values():
        await wait_status(client, info.egress_id, [egress_pb.EGRESS_ACTIVE])
    await asyncio.sleep(2)
    for info in started.values():
        await client.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))
    for info in started.values():
        final = await wait_status(client, info.egress_id, DONE)
        assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    await no_leftovers()
    for name, expected in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        path = service.output_dir / f"{name}.mp4"
        assert [s["codec_type"] for s in ffprobe(path)["streams"]] == ["video"]
        seen = region_color(frame_at(path, 1.0), 100, 100, 1180, 620)
        assert all(abs(a - b) < 40 for a, b in zip(seen, expected, strict=True)), (name, seen)


# --- custom templates ------------------------------------------------------------------------


def assert_template_recording(path: Path, duration: float) -> None:
    """Alice (red) left and Bob (blue) right at first; after UpdateLayout "speaker", Alice alone."""
    picture = frame_at(path, 1.0)
    assert picture.shape[:2] == (360, 640)
    left = region_color(picture, 20, 50, 300, 150)
    right = region_color(picture, 340, 50, 620, 150)
    assert left[0] > 150 and left[2] < 90, left
    assert right[2] > 150 and right[0] < 90, right
    right = region_color(frame_at(path, duration - 0.3), 340, 50, 620, 150)
    assert right[0] > 150 and right[2] < 90, f"UpdateLayout did not reach the page: {right}"


async def record_template(client, room: str, url, **request) -> egress_pb.EgressInfo:
    """A 640x360 composite of `room` through the template at `url`: 3 s, then speaker, 2 s more."""
    info = await client.egress.start_room_composite_egress(
        egress_pb.RoomCompositeEgressRequest(
            room_name=room,
            custom_base_url=str(url),
            # small: the publishers' VP8 encoders share the machine's two cores
            advanced=egress_pb.EncodingOptions(width=640, height=360, framerate=15),
            file_outputs=[egress_pb.EncodedFileOutput(filepath="{room_name}.mp4")],
            **request,
        )
    )
    active = await wait_status(client, info.egress_id, [egress_pb.EGRESS_ACTIVE, *DONE])
    assert active.status == egress_pb.EGRESS_ACTIVE, active.error
    await asyncio.sleep(3)
    await client.egress.update_layout(
        egress_pb.UpdateLayoutRequest(egress_id=info.egress_id, layout="speaker")
    )
    await asyncio.sleep(2)
    await client.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))
    final = await wait_status(client, info.egress_id, DONE)
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    return final


async def test_a_template_page_that_fails_never_shows_its_token(service, pages):
    """The page's address carries the recorder token the service made: errors show it masked."""
    service.app[ROOMS].get_or_create("quiet")
    client = service.client
    info = await client.egress.start_room_composite_egress(
        egress_pb.RoomCompositeEgressRequest(
            room_name="quiet",
            custom_base_url=str(pages.make_url("/signal?after=60")),  # never starts
            file_outputs=[egress_pb.EncodedFileOutput(filepath="never.mp4")],
        )
    )
    final = await wait_status(client, info.egress_id, DONE)
    assert final.status == egress_pb.EGRESS_FAILED
    assert "no START_RECORDING from the page within 3 s" in final.error, final.error
    assert "&token={ey..." in final.error, final.error  # masked the way stream keys are
    assert "eyJ" not in str(final)  # no JWT anywhere in what callers see
    await no_leftovers()


async def test_custom_template_of_an_embedded_room_records_both_publishers(service, pages):
    """A page on /sdk/template.js plays two WHIP publishers over WHEP; both are recorded."""
    client = service.client
    base = str(service.make_url("")).rstrip("/")
    publishers = [
        await join(base, "tpl", "alice", (220, 30, 30), 440.0),
        await join(base, "tpl", "bob", (30, 30, 220), 660.0),
    ]
    try:
        final = await record_template(client, "tpl", pages.make_url("/template"), layout="grid")
        assert final.room_composite.layout == "speaker"
    finally:
        for publisher in publishers:
            await publisher.close()
    await no_leftovers()
    path = service.output_dir / "tpl.mp4"
    assert_template_recording(path, float(stream(ffprobe(path), "video")["duration"]))
    samples, rate = audio_samples(path, 0.5, 2.5)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    bins = rate / len(samples)
    assert spectrum[round(440 / bins)] > 10 * np.median(spectrum)
    assert spectrum[round(660 / bins)] > 10 * np.median(spectrum)


async def test_custom_template_of_a_livekit_room_with_the_egress_sdk(tmp_path, pages):
    """An @livekit/egress-sdk page records two SDK publishers of a livekit-server's room."""
    from livekit_publishers import SdkPublisher
    from livekit_server import LiveKitServer
    from livekit_server import unavailable_reason as livekit_unavailable

    if livekit_unavailable() or not LIVEKIT_CLIENT.exists() or not EGRESS_SDK.exists():
        pytest.skip("needs livekit-server and tests/node (scripts/install-test-deps.sh)")
    with LiveKitServer() as livekit:
        service = await serve(
            tmp_path,
            "--livekit-url",
            livekit.url,
            "--livekit-api-key",
            livekit.api_key,
            EGRESSKIT_LIVEKIT_API_SECRET=livekit.api_secret,
            EGRESSKIT_EGRESS_NETWORK=LOOPBACK_ONLY,
        )
        client = api.LiveKitAPI(service.url, API_KEY, API_SECRET)
        publishers = []
        try:
            people = (("alice", (220, 30, 30), 440.0), ("bob", (30, 30, 220), 660.0))
            for identity, colour, tone in people:
                publishers.append(
                    await SdkPublisher(livekit, "lk-tpl", identity, color=colour, tone=tone).start()
                )
            await record_template(client, "lk-tpl", pages.make_url("/livekit-template"))
        finally:
            for publisher in publishers:
                await publisher.stop()
            await client.aclose()
            await service.stop()
    await no_leftovers()
    path = tmp_path / "lk-tpl.mp4"
    assert_template_recording(path, float(stream(ffprobe(path), "video")["duration"]))


# --- egresskit serve in its own process -------------------------------------------------------


async def test_serve_awaits_start_signal_and_ends_on_end_recording(tmp_path, pages):
    """The page is red until it logs START_RECORDING after 2 s (green), END_RECORDING 3 s later."""
    out = tmp_path / "out"
    service = await serve(out, EGRESSKIT_EGRESS_NETWORK=LOOPBACK_ONLY)
    client = api.LiveKitAPI(service.url, API_KEY, API_SECRET)
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{service.url}/healthz") as response,
        ):
            assert (await response.json())["browser"] == {"available": True, "missing_packages": []}
        info = await client.egress.start_web_egress(
            web_request(
                str(pages.make_url("/signal?after=2&end=3")),
                await_start_signal=True,
                file_outputs=[egress_pb.EncodedFileOutput(filepath="signal.mp4")],
            )
        )
        final = await wait_status(client, info.egress_id, DONE, timeout=40)
        assert final.status == egress_pb.EGRESS_COMPLETE, final.error
        await no_leftovers()
    finally:
        await client.aclose()
        await service.stop()
    path = out / "signal.mp4"
    duration = float(stream(ffprobe(path), "video")["duration"])
    assert 2.5 <= duration <= 4.0, duration
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            r, g, _ = region_color(frame.to_ndarray(format="rgb24"), 0, 0, 1280, 720)
            assert g > 200 and r < 60, f"a frame before START_RECORDING at {frame.time} s"


async def test_serve_without_a_browser_answers_unavailable(tmp_path):
    service = await serve(tmp_path / "out", PATH=str(tmp_path))
    client = api.LiveKitAPI(service.url, API_KEY, API_SECRET)
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{service.url}/healthz") as response,
        ):
            browser = (await response.json())["browser"]
        assert browser["available"] is False and "chromium" in browser["missing_packages"]
        with pytest.raises(api.TwirpError) as refused:
            await client.egress.start_web_egress(
                web_request(
                    "https://example.com/",
                    file_outputs=[egress_pb.EncodedFileOutput(filepath="x.mp4")],
                )
            )
        assert refused.value.code == "unavailable"
        assert "chromium" in refused.value.message and "xvfb" in refused.value.message
        # the rest of egresskit still works
        listed = await client.egress.list_egress(egress_pb.ListEgressRequest())
        assert list(listed.items) == []
    finally:
        await client.aclose()
        await service.stop()


async def test_a_killed_service_leaves_nothing_once_restarted(tmp_path, pages):
    """SIGKILL mid-recording: the helpers die with the service; the next start clears the rest."""
    # short: Chromium's and PulseAudio's sockets live there (a socket path has <= 107 bytes)
    short = Path(tempfile.mkdtemp(prefix="ek-", dir="/tmp"))
    # the service's web egress directories go to TMPDIR
    env = {"EGRESSKIT_EGRESS_NETWORK": LOOPBACK_ONLY, "TMPDIR": str(short)}
    service = await serve(tmp_path, **env)
    client = api.LiveKitAPI(service.url, API_KEY, API_SECRET)
    try:
        info = await client.egress.start_web_egress(
            web_request(
                str(pages.make_url("/counter")),
                file_outputs=[egress_pb.EncodedFileOutput(filepath="killed.mp4")],
            )
        )
        active = await wait_status(client, info.egress_id, [egress_pb.EGRESS_ACTIVE, *DONE])
        assert active.status == egress_pb.EGRESS_ACTIVE, active.error
        assert list(short.glob("egresskit-web-*"))
        service.process.kill()
        await service.process.wait()
        for _ in range(50):
            if not [p for p in browser_leftovers() if not p.startswith("/")]:
                break
            await asyncio.sleep(0.2)
        assert not [p for p in browser_leftovers() if not p.startswith("/")]
        assert list(short.glob("egresskit-web-*")), "nothing left for the watchdog to find"
        service = await serve(tmp_path, port=service.port, **env)
        assert not list(short.glob("egresskit-web-*"))
    finally:
        await client.aclose()
        await service.stop()
        shutil.rmtree(short, ignore_errors=True)
    await no_leftovers()
