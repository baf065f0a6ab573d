"""Track egress to a websocket: live PCM and mute changes, received by a real aiohttp server."""

from __future__ import annotations

import asyncio
import json
import socket

import numpy as np
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer
from livekit.protocol import models
from publishers import (
    WHIP_API_KEY,
    WHIP_API_SECRET,
    SineAudioTrack,
    make_publisher_token,
    whip_publish,
)
from test_track_egress import published_track

from egresskit.egress.track_graphs import track_websocket_graph
from egresskit.pipeline import GraphState, SourceClosed
from egresskit.rooms import RoomManager
from egresskit.stages.mixer import SAMPLE_RATE as MIX_RATE

ROOM = "live-audio"
WAIT_S = 20.0
RATE = 48_000
BYTES_PER_SAMPLE = 4  # s16, two channels
SECRET_QUERY = "token=do-not-leak-me"


class PcmReceiver:
    """What the websocket server got: the handshake headers and every message in order."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour  # "accept", "refuse" or "drop"
        self.headers: dict[str, str] = {}
        self.messages: list[bytes | str] = []
        self.first_audio = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.headers = dict(request.headers)
        if self.behaviour == "refuse":
            return web.Response(status=403, text="no")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        loop = asyncio.get_running_loop()
        opened = loop.time()
        async for message in ws:
            if message.type == WSMsgType.BINARY:
                self.messages.append(message.data)
                self.first_audio.set()
            elif message.type == WSMsgType.TEXT:
                self.messages.append(message.data)
            if self.behaviour == "drop" and loop.time() - opened > 1.0:
                await ws.close(code=1011, message=b"receiver gone")
        return ws

    @property
    def pcm(self) -> list[bytes]:
        return [m for m in self.messages if isinstance(m, bytes)]

    @property
    def texts(self) -> list[dict]:
        return [json.loads(m) for m in self.messages if isinstance(m, str)]


async def pcm_server(aiohttp_server, behaviour: str) -> tuple[TestServer, PcmReceiver]:
    receiver = PcmReceiver(behaviour)
    app = web.Application()
    app.router.add_get("/audio", receiver.handle)
    return await aiohttp_server(app, host="127.0.0.1"), receiver


async def at_graph_time(graph, seconds: float) -> None:
    await graph.clock.sleep_until(seconds)


async def test_pcm_and_mute_changes_reach_the_websocket(
    aiohttp_server, whip_server: TestServer, rooms: RoomManager
):
    server, receiver = await pcm_server(aiohttp_server, "accept")
    token = make_publisher_token(WHIP_API_KEY, WHIP_API_SECRET, ROOM, "speaker")
    session = await whip_publish(whip_server.make_url("/"), ROOM, token, [SineAudioTrack(440)])
    room = rooms.get(ROOM)
    track = await published_track(room, "speaker", models.TrackType.AUDIO)

    url = str(server.make_url("/audio").with_query(SECRET_QUERY)).replace("http", "ws", 1)
    graph, stages = track_websocket_graph(room, track.sid, url)
    ended_at: list[float] = []
    messages = []

    def watch(message) -> None:
        messages.append(message)
        if isinstance(message, SourceClosed):
            ended_at.append(graph.clock.now())

    graph.bus.subscribe(watch)
    await graph.start()
    await asyncio.wait_for(receiver.first_audio.wait(), WAIT_S)
    await at_graph_time(graph, 1.5)
    room.set_muted(track.sid, True)
    await at_graph_time(graph, 3.0)
    room.set_muted(track.sid, False)
    await at_graph_time(graph, 5.0)
    await session.close()  # the track is unpublished: the egress ends by itself

    assert await graph.wait(WAIT_S) is GraphState.COMPLETE, graph.error
    assert receiver.headers.get("Content-Type") == "audio/x-raw"
    assert receiver.texts == [{"muted": True}, {"muted": False}]

    pcm = b"".join(receiver.pcm)
    assert len(pcm) % BYTES_PER_SAMPLE == 0
    samples = len(pcm) // BYTES_PER_SAMPLE
    (wall,) = ended_at
    assert abs(samples / RATE - wall) <= 0.03 * wall, (samples / RATE, wall)
    # nothing lost on the way: every tick the mixer made, resampled to the socket's rate
    assert samples == stages.mixer.samples_out * RATE // MIX_RATE
    assert any(isinstance(m, SourceClosed) for m in messages)

    audio = np.frombuffer(pcm, np.int16).reshape(-1, 2)
    assert np.array_equal(audio[:, 0], audio[:, 1])  # mono source, both channels
    unmuted = audio[int(0.4 * RATE) : int(1.4 * RATE), 0].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(unmuted * np.hanning(len(unmuted))))
    assert abs(np.argmax(spectrum) * RATE / len(unmuted) - 440) < 440 * 0.03

    first_mute = receiver.messages.index('{"muted": true}')
    unmute = receiver.messages.index('{"muted": false}')
    while_muted = receiver.messages[first_mute + 1 : unmute]
    silent = [m for m in while_muted if not np.frombuffer(m, np.int16).any()]
    assert len(silent) >= 0.8 * len(while_muted) > 0


@pytest.mark.parametrize(
    "behaviour, expected",
    [
        ("refuse", "refused the connection: HTTP 403"),
        ("nothing listening", "cannot connect to websocket"),
        ("drop", "was closed by the receiver (code 1011)"),
    ],
)
async def test_a_refused_or_dropped_websocket_fails_the_egress(
    aiohttp_server, rooms: RoomManager, behaviour: str, expected: str
):
    room = rooms.get_or_create(ROOM)
    track = await room.publish(SineAudioTrack(), identity="speaker")
    if behaviour == "nothing listening":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        url = f"ws://127.0.0.1:{port}/audio?{SECRET_QUERY}"
    else:
        server, _ = await pcm_server(aiohttp_server, behaviour)
        url = str(server.make_url("/audio").with_query(SECRET_QUERY)).replace("http", "ws", 1)

    graph, _ = track_websocket_graph(room, track.sid, url)
    await graph.start()

    assert await graph.wait(WAIT_S) is GraphState.FAILED
    error = str(graph.error)
    assert expected in error and "/audio" in error, error
    assert "do-not-leak-me" not in error
    assert room.track(track.sid) is track  # the room and its track are untouched
