"""The web console at /, used in a real browser against `egresskit serve` as users run it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import pytest
from console_browser import chromium_page, egresskit_service, playwright_missing

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
