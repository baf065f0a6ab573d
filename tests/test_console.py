"""The web console at /, used in a real browser against `egresskit serve` as users run it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import aiohttp
import pytest
from console_browser import chromium_page, egresskit_service, playwright_missing
from livekit import api
from livekit.protocol import egress as egress_pb
from publishers import SyntheticVideoTrack, colors_close, make_publisher_token, whip_publish
from service_fixtures import join, service_config
from test_update_layout import probe_series

from egresskit.service.app import MANAGER, create_app
from egresskit.service.config import DEV_API_KEY, DEV_API_SECRET

pytestmark = [
    pytest.mark.chromium,
    pytest.mark.skipif(playwright_missing() is not None, reason=str(playwright_missing())),
]

WAIT_MS = 30_000
# Where the screenshot goes: scripts/console-screenshot.sh sets it to docs/console.png.
SCREENSHOT = os.environ.get("EGRESSKIT_CONSOLE_SCREENSHOT")


def ffprobe(path: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
        capture_output=True,
        check=True,
        text=True,
    )
    return json.loads(out.stdout)


async def test_publish_record_and_play_back(tmp_path: Path):
    output = tmp_path / "out"
    output.mkdir()
    async with egresskit_service(output, "--dev") as base, chromium_page() as page:
        await page.goto(f"{base}/")
        await page.click("#publish-start")
        await page.wait_for_selector(
            '#room-list li.room[data-room="demo"] li.participant[data-identity="browser"]',
            timeout=WAIT_MS,
        )
        await page.wait_for_selector('li.participant[data-identity="browser"] li.track >> nth=1')
        # the page watches its own camera back over WHEP
        await page.click("#watch-start")
        await page.wait_for_function(
            "document.getElementById('watch-video').currentTime > 0.5", timeout=WAIT_MS
        )

        await page.select_option("#record-layout", "grid")
        await page.click("#record-start")
        row = page.locator("#egress-list tr")
        await row.locator("td.status", has_text="ACTIVE").wait_for(timeout=WAIT_MS)
        await asyncio.sleep(5)
        # progress arrives from the event stream while recording
        assert await row.locator("td.bytes").inner_text() != "0 B"
        if SCREENSHOT:
            await page.screenshot(path=SCREENSHOT, full_page=True)
        await row.locator("button.stop").click()

        recording = page.locator("#recording-list li.recording", has_text="complete")
        await recording.wait_for(timeout=WAIT_MS)
        await recording.locator("button.play").first.click()
        player = page.locator("#player")
        await page.wait_for_function(
            "document.getElementById('player').currentTime > 0.5", timeout=WAIT_MS
        )
        first = await player.evaluate("v => v.currentTime")
        await asyncio.sleep(1.0)
        assert await player.evaluate("v => v.currentTime") > first
        assert await player.evaluate("v => v.videoWidth") == 1280

        async with page.expect_download() as download_info:
            await recording.locator("button.download").first.click()
        download = await download_info.value
        saved = tmp_path / "downloaded.mp4"
        await download.save_as(saved)
        probe = await asyncio.to_thread(ffprobe, saved)
        video = next(s for s in probe["streams"] if s["codec_type"] == "video")
        assert (video["width"], video["height"]) == (1280, 720)
        assert float(probe["format"]["duration"]) >= 4.0
        assert await page.locator("#error").is_hidden()


async def test_watch_shows_an_aiortc_publishers_colour(tmp_path: Path):
    output = tmp_path / "out"
    output.mkdir()
    async with egresskit_service(output, "--dev") as base, chromium_page() as page:
        token = make_publisher_token(DEV_API_KEY, DEV_API_SECRET, "demo", "painter")
        async with await whip_publish(base, "demo", token, [SyntheticVideoTrack(ORANGE)]):
            await page.goto(f"{base}/")
            await page.wait_for_selector('li.participant[data-identity="painter"]', timeout=WAIT_MS)
            await page.fill("#watch-participant", "painter")
            await page.click("#watch-start")
            await page.wait_for_function(
                "document.getElementById('watch-video').currentTime > 1", timeout=WAIT_MS
            )
            color = await page.evaluate(SAMPLE_CENTRE, "watch-video")
            assert colors_close(tuple(color), ORANGE), color
            size = await page.evaluate(
                "[...['videoWidth', 'videoHeight']].map(k => document.getElementById('watch-video')[k])"
            )
            assert size == [640, 360]
            assert await page.locator("#error").is_hidden()


ORANGE = (240, 140, 20)
# The colour at a quarter of the frame's height (the moving block runs through the middle).
SAMPLE_CENTRE = """(id) => {
  const video = document.getElementById(id);
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  const context = canvas.getContext("2d");
  context.drawImage(video, 0, 0);
  const pixel = context.getImageData(canvas.width / 2, canvas.height / 4, 1, 1).data;
  return [pixel[0], pixel[1], pixel[2]];
}"""


async def test_console_is_off_without_dev_or_console(tmp_path: Path):
    output = tmp_path / "out"
    output.mkdir()
    flags = ("--api-key", "key", "--api-secret", "a-secret-of-sufficient-length-1234")
    async with egresskit_service(output, *flags) as base, aiohttp.ClientSession() as http:
        for path in ("/", "/console/config.json", "/console/events", "/files/x.mp4"):
            async with http.get(f"{base}{path}") as response:
                assert response.status == 404, path


async def test_wrong_secret_shows_twirp_errors_and_starts_nothing(tmp_path: Path):
    output = tmp_path / "out"
    output.mkdir()
    key, secret = "key", "a-secret-of-sufficient-length-1234"
    flags = ("--console", "--api-key", key, "--api-secret", secret)
    async with egresskit_service(output, *flags) as base, chromium_page() as page:
        await page.goto(f"{base}/")
        config = await page.evaluate("fetch('/console/config.json').then(r => r.json())")
        assert config == {"dev": False}  # no secret is handed to the page
        await page.fill("#api-key", key)
        await page.fill("#api-secret", "wrong-secret-of-sufficient-length-99")
        await page.click("#sign-in")
        error = page.locator("#error")
        bad_signature = "unauthenticated: invalid token: "
        await error.filter(has_text=bad_signature).wait_for(timeout=WAIT_MS)

        for button in ("#recordings-refresh", "#record-start"):
            await page.evaluate("document.getElementById('error').textContent = ''")
            await page.click(button)
            await error.filter(has_text=bad_signature).wait_for(timeout=WAIT_MS)
        await page.click("#publish-start")
        await error.filter(has_text="WHIP 401: ").wait_for(timeout=WAIT_MS)
        await page.click("#watch-start")
        await error.filter(has_text="WHEP 401: ").wait_for(timeout=WAIT_MS)

        client = api.LiveKitAPI(base, key, secret)
        try:
            egresses = await client.egress.list_egress(egress_pb.ListEgressRequest())
            rooms = await client.room.list_rooms(api.ListRoomsRequest())
        finally:
            await client.aclose()
        assert list(egresses.items) == [] and list(rooms.rooms) == []
        assert list(output.iterdir()) == []


async def test_update_layout_from_the_page_within_200_ms(aiohttp_server, tmp_path: Path):
    """In-process service: the measurement reads the egress's own clock, as
    tests/test_update_layout.py does; the page drives it through the same Twirp API."""
    app = create_app(service_config(tmp_path, dev=True))
    server = await aiohttp_server(app, host="127.0.0.1")
    base = str(server.make_url("")).rstrip("/")
    sessions = [
        await join(base, "switch", "alice", (220, 40, 40), 440.0),
        await join(base, "switch", "bob", (40, 60, 220), 1000.0),
    ]
    try:
        async with chromium_page() as page:
            await page.goto(f"{base}/")
            await page.fill("#record-room", "switch")
            await page.select_option("#record-layout", "grid")
            await page.click("#record-start")
            row = page.locator("#egress-list tr")
            await row.locator("td.status", has_text="ACTIVE").wait_for(timeout=WAIT_MS)
            session = app[MANAGER].active()[0]
            clock = session.plan.graph.clock
            await row.locator("select.layout").select_option("speaker")
            await clock.sleep_until(2.0)
            # Media time of the frame being drawn at the click: the clock's time when the
            # compositor keeps up; behind it on a loaded machine, where drawing lags.
            called_at = session.plan.compositor.frames_out / session.plan.compositor.fps
            # a DOM click: Playwright's own actionability checks are not the page's latency
            await page.evaluate("document.querySelector('button.update-layout').click()")
            await clock.sleep_until(clock.now() + 2.0)
            assert session.info.room_composite.layout == "speaker"
            await row.locator("button.stop").click()
            recording = page.locator("#recording-list li.recording", has_text="complete")
            await recording.wait_for(timeout=WAIT_MS)
            assert await page.locator("#error").is_hidden()
    finally:
        for publisher in sessions:
            await publisher.close()

    writer = session.plan.files[0].writer
    series = await asyncio.to_thread(probe_series, writer.path)
    called_at -= writer.first_pts_s  # the file's time 0
    before = [b for t, _, b in series if 0.5 < t < called_at - 0.5]
    assert before and max(before) < 40, "grid should leave the probe on the dark background"
    switched = [t for t, _, b in series if t >= called_at and b > 60]
    assert switched, "the layout never changed"
    assert switched[0] - called_at <= 0.2, (
        f"switched {switched[0] - called_at:.3f} s after the click"
    )


async def test_hls_recording_plays_in_the_page(tmp_path: Path):
    output = tmp_path / "out"
    output.mkdir()
    async with egresskit_service(output, "--dev") as base, chromium_page() as page:
        token = make_publisher_token(DEV_API_KEY, DEV_API_SECRET, "demo", "painter")
        async with await whip_publish(base, "demo", token, [SyntheticVideoTrack(ORANGE)]):
            await page.goto(f"{base}/")
            await page.wait_for_selector('li.participant[data-identity="painter"]', timeout=WAIT_MS)
            await page.select_option("#record-output", "hls")
            await page.click("#record-start")
            row = page.locator("#egress-list tr")
            await row.locator("td.status", has_text="ACTIVE").wait_for(timeout=WAIT_MS)
            await asyncio.sleep(5)  # two segments: a full one (4 s by default) and the rest
            await row.locator("button.stop").click()
            recording = page.locator("#recording-list li.recording", has_text="complete")
            await recording.wait_for(timeout=WAIT_MS)
        playlist = recording.locator('li.file[data-file$=".m3u8"]')
        await playlist.locator("button.play").click()
        await page.wait_for_function(
            "document.getElementById('player').currentTime > 1", timeout=WAIT_MS
        )
        assert await page.locator("#player").evaluate("v => v.videoWidth") == 1280
        assert await page.locator("#error").is_hidden()
