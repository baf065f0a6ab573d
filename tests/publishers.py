"""Real publishers for tests: synthetic aiortc tracks, a WHIP client, and frame checks.

Every helper here talks real WebRTC with unmodified aiortc, which offers this
machine's interface addresses (never loopback); a WHIP service on 127.0.0.1
keeps those, as they belong to this machine, and answers with loopback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from fractions import Fraction

import aiohttp
import av
import numpy as np
from aiortc import (
    AudioStreamTrack,
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError
from yarl import URL

from egresskit.tokens import create_token

WHIP_API_KEY = "whipkey"
WHIP_API_SECRET = "whip-test-secret-of-sufficient-length"
VIDEO_CLOCK_RATE = 90_000
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=20)


class _Pacer:
    """Releases frame n at start + n * period, so frames flow in real time."""

    def __init__(self, rate: Fraction) -> None:
        self.period = 1 / rate
        self.index = 0
        self._start: float | None = None

    async def next(self) -> int:
        now = time.monotonic()
        if self._start is None:
            self._start = now
        delay = self._start + float(self.index * self.period) - now
        if delay > 0:
            await asyncio.sleep(delay)
        index = self.index
        self.index += 1
        return index


class SyntheticVideoTrack(VideoStreamTrack):
    """A solid colour with a small block moving left to right, paced at `fps`."""

    def __init__(
        self,
        color: tuple[int, int, int] = (255, 0, 0),
        width: int = 640,
        height: int = 360,
        fps: int = 30,
    ) -> None:
        super().__init__()
        self.color = color
        self.fps = fps
        self._background = np.full((height, width, 3), color, dtype=np.uint8)
        self._block = max(8, height // 8)
        self._block_color = np.array([255 - c for c in color], dtype=np.uint8)
        self._pacer = _Pacer(Fraction(fps))

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        index = await self._pacer.next()
        image = self._background.copy()
        height, width, _ = image.shape
        x = (index * 4) % max(1, width - self._block)
        y = (height - self._block) // 2
        image[y : y + self._block, x : x + self._block] = self._block_color
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = index * VIDEO_CLOCK_RATE // self.fps
        frame.time_base = Fraction(1, VIDEO_CLOCK_RATE)
        return frame


class SineAudioTrack(AudioStreamTrack):
    """A continuous sine tone in 20 ms mono s16 frames, paced in real time."""

    def __init__(self, freq_hz: float = 440.0, sample_rate: int = 48_000) -> None:
        super().__init__()
        self.freq_hz = freq_hz
        self.sample_rate = sample_rate
        self._samples = sample_rate // 50
        self._pacer = _Pacer(Fraction(sample_rate, self._samples))

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        index = await self._pacer.next()
        first = index * self._samples
        t = (first + np.arange(self._samples)) / self.sample_rate
        samples = (0.3 * 32767 * np.sin(2 * np.pi * self.freq_hz * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = first
        frame.time_base = Fraction(1, self.sample_rate)
        return frame


def make_publisher_token(
    key: str, secret: str, room: str, identity: str, *, can_publish: bool = True, ttl: float = 600
) -> str:
    """A token that lets `identity` join `room` and publish into it."""
    return create_token(
        key,
        secret,
        identity=identity,
        name=identity,
        video={"roomJoin": True, "room": room, "canPublish": can_publish},
        ttl=ttl,
    )


class WhipError(Exception):
    """The WHIP endpoint refused the offer."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"WHIP answered {status}: {text}")
        self.status = status
        self.text = text


@dataclass
class WhipSession:
    """A publishing peer connection and its WHIP resource."""

    pc: RTCPeerConnection
    location: str
    etag: str
    token: str

    async def close(self) -> int:
        """DELETE the resource (its status is returned) and close the peer connection."""
        try:
            async with (
                aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http,
                http.delete(
                    self.location, headers={"Authorization": f"Bearer {self.token}"}
                ) as response,
            ):
                return response.status
        finally:
            await self.pc.close()

    async def __aenter__(self) -> WhipSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def whip_publish(
    base_url: str | URL,
    room: str,
    token: str,
    tracks: list[MediaStreamTrack],
    *,
    source: str | None = None,
    video_codec: str | None = None,
    offer_filter: Callable[[str], Awaitable[str]] | None = None,
    answer_filter: Callable[[str], Awaitable[str]] | None = None,
) -> WhipSession:
    """Offer `tracks` to `{base_url}/whip/{room}` and apply the answer (non-trickle).

    `video_codec` (a MIME type such as "video/H264") offers only that codec for video.
    The filters may rewrite the offer sent and the answer applied (e.g. a relay's
    candidates).
    """
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        for track in tracks:
            transceiver = pc.addTransceiver(track, direction="sendonly")
            if video_codec is not None and track.kind == "video":
                transceiver.setCodecPreferences(
                    [
                        codec
                        for codec in RTCRtpSender.getCapabilities("video").codecs
                        if codec.mimeType.lower() in (video_codec.lower(), "video/rtx")
                    ]
                )
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp
        if offer_filter is not None:
            offer = await offer_filter(offer)
        url = URL(str(base_url)) / "whip" / room
        if source is not None:
            url = url.with_query(source=source)
        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"}
        async with (
            aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http,
            http.post(url, data=offer, headers=headers) as response,
        ):
            body = await response.text()
            if response.status != 201:
                raise WhipError(response.status, body)
            location = str(url.join(URL(response.headers["Location"])))
            etag = response.headers.get("ETag", "")
        if answer_filter is not None:
            body = await answer_filter(body)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    except BaseException:
        await pc.close()
        raise
    return WhipSession(pc=pc, location=location, etag=etag, token=token)


def frame_color(frame: av.VideoFrame) -> tuple[int, int, int]:
    """The dominant colour of a frame (per-channel median, so a small block doesn't count)."""
    image = frame.to_ndarray(format="rgb24")
    r, g, b = np.median(image.reshape(-1, 3), axis=0)
    return int(r), int(g), int(b)


def colors_close(a: tuple[int, int, int], b: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


def tone_frequency(frames: list[av.AudioFrame]) -> float:
    """The strongest frequency in the first channel of consecutive audio frames."""
    channels = [
        f.to_ndarray().reshape(-1, len(f.layout.channels))[:, 0]
        if f.format.is_packed
        else f.to_ndarray()[0]
        for f in frames
    ]
    samples = np.concatenate(channels).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    spectrum[0] = 0
    return float(np.argmax(spectrum) * frames[0].sample_rate / len(samples))


async def next_frames(link, count: int, timeout: float = 20.0) -> list:
    """The next `count` items of a subscriber link, waiting at most `timeout` seconds."""

    async def collect() -> list:
        items = []
        async for item in link:
            items.append(item)
            if len(items) == count:
                break
        return items

    items = await asyncio.wait_for(collect(), timeout)
    if len(items) < count:
        raise AssertionError(f"the link ended after {len(items)} of {count} frames")
    return items
