"""Publishers into a real LiveKit room with the official `livekit` real-time SDK (libwebrtc).

A `SdkPublisher` joins a room and publishes a solid-colour camera and a
sine-tone microphone (of `volume`, 0 for silence), paced in real time.
`flash_every` makes the picture white and the tone loud for 100 ms at the same media instant every so many
seconds (for A/V offset checks).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from pathlib import Path

import numpy as np
from livekit import rtc

WIDTH, HEIGHT, FPS = 320, 240, 30
AUDIO_RATE = 48000
AUDIO_CHUNK = 480  # 10 ms
AUDIO_QUEUE_MS = 30


STAMP_BITS, STAMP_BLOCK = 12, 16


def write_stamp(image: np.ndarray, number: int) -> None:
    """The frame number as a row of black/white blocks along the top edge."""
    for bit in range(STAMP_BITS):
        value = 255 if number >> bit & 1 else 0
        image[:STAMP_BLOCK, bit * STAMP_BLOCK : (bit + 1) * STAMP_BLOCK, :3] = value


def read_stamp(rgb: np.ndarray) -> int:
    """The frame number `write_stamp` put into a decoded picture."""
    number = 0
    for bit in range(STAMP_BITS):
        block = rgb[4 : STAMP_BLOCK - 4, bit * STAMP_BLOCK + 4 : (bit + 1) * STAMP_BLOCK - 4]
        if block.mean() > 128:
            number |= 1 << bit
    return number


class SdkPublisher:
    def __init__(
        self,
        server,
        room: str,
        identity: str,
        *,
        color: tuple[int, int, int] | None = (255, 0, 0),
        tone: float | None = 440.0,
        video_codec: int = rtc.VideoCodec.VP8,
        size: tuple[int, int] = (WIDTH, HEIGHT),
        flash_every: float = 0.0,
        stamp: bool = False,
        volume: float = 0.05,
    ) -> None:
        self.server = server
        self.room_name = room
        self.identity = identity
        self.color = color
        self.tone = tone
        self.video_codec = video_codec
        self.width, self.height = size
        self.flash_every = flash_every
        self.stamp = stamp
        self.volume = volume
        self.room = rtc.Room()
        self.frames_sent = 0
        self.video_sid = ""
        self.audio_sid = ""
        self._tasks: list[asyncio.Task] = []
        self._video_source: rtc.VideoSource | None = None

    async def start(self) -> SdkPublisher:
        token = self.server.token(self.room_name, self.identity, can_publish=True)
        await self.room.connect(self.server.url, token, rtc.RoomOptions(auto_subscribe=False))
        self._started = time.monotonic()
        if self.color is not None:
            self.video_sid = await self.publish_camera(self.color, self.video_codec)
        if self.tone is not None:
            # a short queue: a chunk goes out about when it is made, so its time is known
            source = rtc.AudioSource(AUDIO_RATE, 1, queue_size_ms=AUDIO_QUEUE_MS)
            track = rtc.LocalAudioTrack.create_audio_track("mic", source)
            options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE, red=False)
            publication = await self.room.local_participant.publish_track(track, options)
            self.audio_sid = publication.sid
            self._tasks.append(asyncio.create_task(self._audio(source)))
        return self

    async def publish_camera(self, color: tuple[int, int, int], codec: int) -> str:
        """Publish a (new) camera track; returns its sid."""
        source = rtc.VideoSource(self.width, self.height)
        track = rtc.LocalVideoTrack.create_video_track("camera", source)
        options = rtc.TrackPublishOptions(
            source=rtc.TrackSource.SOURCE_CAMERA,
            video_codec=codec,
            simulcast=False,
            video_encoding=rtc.VideoEncoding(max_bitrate=600_000, max_framerate=FPS),
        )
        publication = await self.room.local_participant.publish_track(track, options)
        self.color = color
        self._tasks.append(asyncio.create_task(self._video(source)))
        return publication.sid

    async def unpublish(self, sid: str) -> None:
        await self.room.local_participant.unpublish_track(sid)

    def _flashing(self, t: float) -> bool:
        return bool(self.flash_every) and (t % self.flash_every) < 0.1

    async def _video(self, source: rtc.VideoSource) -> None:
        n = 0
        start = self._started
        while True:
            t = n / FPS
            color = (255, 255, 255) if self._flashing(t) else self.color
            rgba = np.empty((self.height, self.width, 4), np.uint8)
            rgba[:, :, :3] = color
            rgba[:, :, 3] = 255
            if self.stamp:
                write_stamp(rgba, self.frames_sent)
            frame = rtc.VideoFrame(
                self.width, self.height, rtc.VideoBufferType.RGBA, rgba.tobytes()
            )
            source.capture_frame(frame, timestamp_us=int(t * 1e6))
            self.frames_sent += 1
            n += 1
            delay = start + n / FPS - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    async def _audio(self, source: rtc.AudioSource) -> None:
        n = 0
        # on the video's timeline: media time 0 is when the first video frame was made
        offset = time.monotonic() - self._started
        while True:
            t0 = offset + n * AUDIO_CHUNK / AUDIO_RATE
            t = (np.arange(AUDIO_CHUNK) + n * AUDIO_CHUNK) / AUDIO_RATE
            amplitude = self.volume
            if self.flash_every:
                amplitude = 0.5 if self._flashing(t0) else 0.0
            pcm = (amplitude * 32767 * np.sin(2 * np.pi * self.tone * t)).astype(np.int16)
            frame = rtc.AudioFrame(pcm.tobytes(), AUDIO_RATE, 1, AUDIO_CHUNK)
            await source.capture_frame(frame)  # paced by the source's queue
            n += 1

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.room.disconnect()


class SdkPublisherProcess:
    """A flash + beep `SdkPublisher` in a process of its own, so a busy test process
    (the service recording in it) cannot hold its media back: `await start()`, `stop()`."""

    def __init__(self, server, room: str, identity: str, *, tone: float, flash_every: float):
        self.args = [server.url, server.api_key, server.api_secret, room, identity]
        self.args += [str(tone), str(flash_every)]
        self.video_sid = self.audio_sid = ""
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> SdkPublisherProcess:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__)), *self.args, stdout=asyncio.subprocess.PIPE
        )
        line = await asyncio.wait_for(self._process.stdout.readline(), 30)
        words = line.decode().split()
        assert words[:1] == ["published"], f"the publisher process said {line!r}"
        self.video_sid, self.audio_sid = words[1:3]
        return self

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self._process.wait(), 10)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()


class _Server:
    """What SdkPublisher needs of a LiveKitServer, in the publisher's own process."""

    def __init__(self, url: str, api_key: str, api_secret: str) -> None:
        self.url, self.api_key, self.api_secret = url, api_key, api_secret

    def token(self, room: str, identity: str, **grants) -> str:
        from livekit import api

        video = api.VideoGrants(room_join=True, room=room, **grants)
        access = api.AccessToken(self.api_key, self.api_secret).with_identity(identity)
        return access.with_name(identity).with_grants(video).to_jwt()


async def _publish_until_terminated(url, key, secret, room, identity, tone, flash_every) -> None:
    server = _Server(url, key, secret)
    publisher = SdkPublisher(
        server, room, identity, color=(220, 40, 40), tone=float(tone),
        flash_every=float(flash_every),
    )  # fmt: skip
    await publisher.start()
    print("published", publisher.video_sid, publisher.audio_sid, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await publisher.stop()


if __name__ == "__main__":
    asyncio.run(_publish_until_terminated(*sys.argv[1:8]))
