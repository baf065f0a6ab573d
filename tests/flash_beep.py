"""A WHIP publisher process for lip-sync tests: a white flash and a 1 kHz beep together.

Every `PERIOD_S` seconds, video turns white for `FLASH_S` and audio beeps
for as long, from the same media instant: both tracks are paced from one
shared start time, so flash n and beep n leave this process together.
Between flashes the picture is dark grey and the audio is silence.

Run as `python3 flash_beep.py BASE_URL ROOM TOKEN`; it prints "published"
once the answer is applied and publishes until killed (SIGTERM/SIGINT).
"""

from __future__ import annotations

import asyncio
import math
import signal
import sys
import time
from fractions import Fraction

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from publishers import whip_publish

PERIOD_S = 2.0
FLASH_S = 0.1
BEEP_HZ = 1000.0
FPS = 30
WIDTH, HEIGHT = 320, 180  # small: the encoder's delay stays small too
SAMPLE_RATE = 48_000
AUDIO_FRAME = 960  # 20 ms
VIDEO_CLOCK = 90_000
DARK, WHITE = 40, 235  # luma


class _SharedPace:
    """Media time zero for every track of the publisher."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    async def wait_for(self, media_time: float) -> None:
        delay = self.start + media_time - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def index_now(self, period: float) -> int:
        """The first frame index not yet due (a track starting late skips what it missed)."""
        return max(0, math.ceil((time.monotonic() - self.start) / period))


def flashing(media_time: float) -> bool:
    return (media_time % PERIOD_S) < FLASH_S - 1e-9


class FlashTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, pace: _SharedPace) -> None:
        super().__init__()
        self._pace = pace
        self._index: int | None = None
        self._images = {}
        for level in (DARK, WHITE):
            image = np.full((HEIGHT * 3 // 2, WIDTH), 128, np.uint8)  # yuv420p: Y, then U and V
            image[:HEIGHT] = level
            self._images[level] = image

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._index is None:
            self._index = self._pace.index_now(1 / FPS)
        index, self._index = self._index, self._index + 1
        media_time = index / FPS
        await self._pace.wait_for(media_time)
        image = self._images[WHITE if flashing(media_time) else DARK]
        frame = av.VideoFrame.from_ndarray(image, format="yuv420p")
        frame.pts = index * VIDEO_CLOCK // FPS
        frame.time_base = Fraction(1, VIDEO_CLOCK)
        return frame


class BeepTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, pace: _SharedPace) -> None:
        super().__init__()
        self._pace = pace
        self._index: int | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._index is None:
            self._index = self._pace.index_now(AUDIO_FRAME / SAMPLE_RATE)
        index, self._index = self._index, self._index + 1
        first = index * AUDIO_FRAME
        await self._pace.wait_for(first / SAMPLE_RATE)
        times = (first + np.arange(AUDIO_FRAME)) / SAMPLE_RATE
        on = (times % PERIOD_S) < FLASH_S - 1e-9
        samples = np.where(on, 0.5 * 32767 * np.sin(2 * np.pi * BEEP_HZ * times), 0)
        frame = av.AudioFrame.from_ndarray(
            samples.astype(np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = SAMPLE_RATE
        frame.pts = first
        frame.time_base = Fraction(1, SAMPLE_RATE)
        return frame


async def main(base_url: str, room: str, token: str) -> None:
    # TODO: remove once WHIP ICE works between processes without this (the
    # service's own fix for same-host ICE): until then this process gathers on
    # loopback only, in its own process, so the service can reach it.
    from egresskit.rooms import restrict_ice_addresses

    restrict_ice_addresses(["127.0.0.1"])
    pace = _SharedPace()
    session = await whip_publish(base_url, room, token, [FlashTrack(pace), BeepTrack(pace)])
    print("published", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await session.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
