"""WebsocketAudioSink: live PCM to a websocket, as track egress's `websocket_url` sends it.

Binary messages carry raw PCM S16LE, 48 kHz, stereo (one message per 20 ms
audio frame from the mixer); text messages `{"muted": true|false}` tell the
receiver when the track mutes or unmutes. The handshake says
`Content-Type: audio/x-raw`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import aiohttp
import av

from egresskit.masking import mask_url
from egresskit.netpolicy import NetworkPolicy, PolicyResolver
from egresskit.pipeline import FirstMedia, InputPort, Stage
from egresskit.stages.media import TrackItem, TrackMuteChanged

log = logging.getLogger(__name__)

PCM_CONTENT_TYPE = "audio/x-raw"
SAMPLE_RATE = 48_000
CONNECT_TIMEOUT_S = 10.0
# A receiver that takes longer than this to accept one message is treated as gone.
SEND_TIMEOUT_S = 10.0


class WebsocketError(Exception):
    """The websocket could not be opened, or it closed while audio was being sent."""


class WebsocketAudioSink(Stage):
    """Sends every audio frame of `input` as PCM, and each mute change seen on `events`.

    `input` takes audio frames (the mixer's 20 ms s16 stereo 48 kHz frames
    pass through as they are; anything else is resampled); `events` takes
    the subscriber's track items, of which only mute changes are used. A
    refused handshake, a connection the receiver closes, or a receiver that
    stops reading fails the graph with a message saying which.
    """

    def __init__(
        self, url: str, *, network: NetworkPolicy | None = None, name: str | None = None
    ) -> None:
        """`network`: where a caller's URL may connect (None for the operator's own)."""
        super().__init__(name)
        self.url = url
        self.network = network
        self.input: InputPort[av.AudioFrame] = self.add_input("input")
        self.events: InputPort[TrackItem] = self.add_input("events")
        self._where = mask_url(url)
        self._resampler: av.AudioResampler | None = None
        self._closing = False
        self.messages_sent = 0
        self.bytes_sent = 0

    async def run(self) -> None:
        connector = None
        if self.network is not None:
            connector = aiohttp.TCPConnector(resolver=PolicyResolver(self.network))
        async with aiohttp.ClientSession(connector=connector) as session:
            ws = await self._connect(session)
            tasks = {
                asyncio.create_task(self._send_audio(ws)),
                asyncio.create_task(self._watch(ws)),
            }
            mutes = asyncio.create_task(self._send_mutes(ws))
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            finally:
                self._closing = True
                for task in (*tasks, mutes):
                    task.cancel()
                await asyncio.gather(*tasks, mutes, return_exceptions=True)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), CONNECT_TIMEOUT_S)

    async def _connect(self, session: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
        try:
            if self.network is not None:
                self.network.check_url(self.url)  # addresses; names are checked as resolved
            return await asyncio.wait_for(
                session.ws_connect(self.url, headers={"Content-Type": PCM_CONTENT_TYPE}),
                CONNECT_TIMEOUT_S,
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise WebsocketError(
                f"websocket {self._where} refused the connection: HTTP {exc.status}"
            ) from None
        except TimeoutError:
            raise WebsocketError(
                f"websocket {self._where} did not answer in {CONNECT_TIMEOUT_S:.0f} s"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            # Refused, unreachable or denied look alike to the caller; the log says which.
            log.warning("websocket %s: %s", self._where, str(exc) or type(exc).__name__)
            raise WebsocketError(f"cannot connect to websocket {self._where}") from None

    async def _send_audio(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for frame in self.input:
            await self._send(ws, self._pcm(frame))
            if self.messages_sent == 1:
                self.post(FirstMedia(self))

    def _pcm(self, frame: av.AudioFrame) -> bytes:
        if (
            frame.format.name == "s16"
            and frame.layout.name == "stereo"
            and frame.sample_rate == SAMPLE_RATE
        ):
            return bytes(frame.planes[0])[: frame.samples * 4]
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="s16", layout="stereo", rate=SAMPLE_RATE)
        return b"".join(
            bytes(out.planes[0])[: out.samples * 4] for out in self._resampler.resample(frame)
        )

    async def _send_mutes(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for item in self.events:
            if isinstance(item, TrackMuteChanged):
                await self._send(ws, json.dumps({"muted": item.muted}))

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, message: bytes | str) -> None:
        if not message:
            return
        try:
            if isinstance(message, str):
                await asyncio.wait_for(ws.send_str(message), SEND_TIMEOUT_S)
            else:
                await asyncio.wait_for(ws.send_bytes(message), SEND_TIMEOUT_S)
        except TimeoutError:
            raise WebsocketError(
                f"websocket {self._where} stopped accepting audio for {SEND_TIMEOUT_S:.0f} s"
            ) from None
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise WebsocketError(f"websocket {self._where} dropped: {exc}") from None
        self.messages_sent += 1
        self.bytes_sent += len(message)

    async def _watch(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Reads what the receiver sends, which is how a close or a dropped connection shows."""
        while True:
            message = await ws.receive()
            if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                continue
            if self._closing:
                return
            if message.type == aiohttp.WSMsgType.ERROR:
                raise WebsocketError(f"websocket {self._where} failed: {ws.exception()}")
            raise WebsocketError(
                f"websocket {self._where} was closed by the receiver (code {ws.close_code})"
            )

    def stats(self) -> dict[str, int]:
        return {"messages_sent": self.messages_sent, "bytes_sent": self.bytes_sent}
