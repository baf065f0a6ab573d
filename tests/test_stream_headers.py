"""Codec parameters travel in-band: an encoder's StreamHeader before its packets, key-frame
requests back up the link; sinks need nothing but their links."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
from media_checks import ffprobe, stream

from egresskit import (
    EOS,
    EncodedItem,
    EncodedPacket,
    Graph,
    GraphState,
    InputPort,
    KeyFrameRequest,
    Link,
    Mp4Muxer,
    OutputPort,
    Stage,
    StreamHeader,
)
from egresskit.stages.encoder import AudioEncoder, AudioEncoding, VideoEncoder, VideoEncoding
from egresskit.stages.media import EncodedInput

SMALL = VideoEncoding(width=320, height=180, fps=15, keyframe_interval_s=10.0)


def picture(n: int) -> av.VideoFrame:
    image = np.full((180, 320, 3), (n * 7) % 256, np.uint8)
    frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
    frame.pts, frame.time_base = n, Fraction(1, 15)
    return frame


def sound(n: int) -> av.AudioFrame:
    silence = np.zeros((1, 960 * 2), np.int16)
    frame = av.AudioFrame.from_ndarray(silence, format="s16", layout="stereo")
    frame.sample_rate, frame.pts, frame.time_base = 48_000, n * 960, Fraction(1, 48_000)
    return frame


class Frames(Stage):
    """A source of `count` made-up pictures or sounds."""

    def __init__(self, make, count: int) -> None:
        super().__init__(f"frames-{make.__name__}")
        self.output: OutputPort[av.VideoFrame | av.AudioFrame] = self.add_output("output")
        self.make, self.count = make, count

    async def run(self) -> None:
        for n in range(self.count):
            await self.output.send(self.make(n))


class KeyFrameWatcher(Stage):
    """Asks for a key frame after `ask_after` packets; keeps whether each packet was one."""

    def __init__(self, ask_after: int) -> None:
        super().__init__("watcher")
        self.input: InputPort[EncodedItem] = self.add_input("input")
        self.items: list[EncodedItem] = []
        self.ask_after = ask_after

    async def run(self) -> None:
        while (item := await self.input.recv()) is not EOS:
            self.items.append(item)
            if len(self.items) == self.ask_after + 1:  # the header, then ask_after packets
                self.input.send_upstream(KeyFrameRequest())


async def test_muxer_opens_its_file_from_the_headers_on_its_link(tmp_path):
    graph = Graph("headers")
    pictures = graph.add(Frames(picture, 45))
    sounds = graph.add(Frames(sound, 150))
    video = graph.add(VideoEncoder(SMALL))
    audio = graph.add(AudioEncoder(AudioEncoding(codec="opus")))
    mp4 = graph.add(Mp4Muxer(tmp_path / "out.mp4"))  # no encoder in sight
    graph.link(pictures.output, video.input)
    graph.link(sounds.output, audio.input)
    graph.link(video.output, mp4.input, maxsize=120)
    graph.link(audio.output, mp4.input, maxsize=120)
    await graph.start()
    assert await graph.wait(20) is GraphState.COMPLETE, graph.error

    info = ffprobe(tmp_path / "out.mp4")
    v, a = stream(info, "video"), stream(info, "audio")
    assert (v["codec_name"], v["width"], v["height"]) == ("h264", 320, 180)
    assert (a["codec_name"], int(a["sample_rate"]), a["channels"]) == ("opus", 48_000, 2)
    assert abs(float(info["format"]["duration"]) - 3.0) < 0.2, info["format"]


async def test_packets_that_overtake_a_header_wait_for_it():
    video, audio = VideoEncoder(SMALL), AudioEncoder()
    audio_packets = [p for n in range(8) for p in audio.context.encode(sound(n))]
    port: InputPort[EncodedItem] = Stage("sink").add_input("input")
    link: Link[EncodedItem] = Link(16)
    port.link = link
    link.add_producer()
    link.add_producer()
    await link.put(audio.header())
    early = EncodedPacket("audio", audio_packets[0])
    await link.put(early)  # before the video encoder's header
    await link.put(video.header())
    await link.put(EncodedPacket("audio", audio_packets[1]))
    await link.close()
    await link.close()

    reader = EncodedInput(port)
    headers = await reader.read_headers()
    assert {kind: (h.kind, h.codec) for kind, h in headers.items()} == {
        "audio": ("audio", "aac"),
        "video": ("video", "libx264"),
    }
    assert isinstance(headers["video"], StreamHeader) and headers["video"].extradata
    assert (headers["video"].width, headers["video"].height) == (320, 180)
    assert await reader.recv() is early
    assert (await reader.recv()).packet is audio_packets[1]
    assert await reader.recv() is EOS
    assert await reader.recv() is EOS


async def test_a_sink_asks_its_encoder_for_a_key_frame_through_the_link():
    graph = Graph("keyframes")
    pictures = graph.add(Frames(picture, 60))
    video = graph.add(VideoEncoder(SMALL))  # a key frame every 10 s: only frame 0 unasked
    watcher = graph.add(KeyFrameWatcher(ask_after=20))
    graph.link(pictures.output, video.input, maxsize=1)
    graph.link(video.output, watcher.input, maxsize=1)
    await graph.start()
    assert await graph.wait(20) is GraphState.COMPLETE, graph.error

    header, *packets = watcher.items
    assert isinstance(header, StreamHeader)
    keys = [i for i, item in enumerate(packets) if item.packet.is_keyframe]
    # frame 0, then one soon after the request (frames already queued are not redone)
    assert keys[0] == 0 and len(keys) == 2, keys
    assert 20 <= keys[1] <= 24, keys
