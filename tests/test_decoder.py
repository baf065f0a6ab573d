"""TrackDecoder alone: what subscribers of a WebRTC track get, and what it does with bad frames."""

from __future__ import annotations

import asyncio
import threading
from fractions import Fraction

import av
import numpy as np

from egresskit.rooms.decoder import OPUS_ENCODER_DELAY, TrackDecoder
from egresskit.rooms.encoded import EncodedFrame


def opus_packets(count: int, onset: int = 0) -> list[bytes]:
    """Packets of a 440 Hz tone that starts at sample `onset`, encoded as WebRTC senders do."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = 48_000, "stereo", "s16"
    encoder.time_base = Fraction(1, 48_000)
    encoder.open()
    tone = (np.sin(np.arange(960 * count) * 2 * np.pi * 440 / 48_000) * 8000).astype(np.int16)
    tone[:onset] = 0
    packets = []
    for index in range(count):
        samples = np.repeat(tone[index * 960 : (index + 1) * 960], 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="stereo")
        frame.sample_rate, frame.pts = 48_000, index * 960
        packets += [bytes(p) for p in encoder.encode(frame)]
    return packets


async def test_opus_frames_come_out_as_48k_stereo_s16_stamped_with_their_capture_time():
    frames, errors = [], []
    decoder = TrackDecoder("audio", frames.extend, lambda: errors.append(True))
    for index, data in enumerate(opus_packets(5)):
        decoder.put(EncodedFrame(data, 1000 + index * 960, 48_000, True, "audio/opus"))
    assert not errors
    # the RTP time of each packet, less the encoder's delay
    assert [f.pts for f in frames] == [
        1000 - OPUS_ENCODER_DELAY + i * 960 for i in range(len(frames))
    ]
    assert len(frames) >= 4
    frame = frames[0]
    assert (frame.format.name, frame.layout.name, frame.sample_rate, frame.samples) == (
        "s16",
        "stereo",
        48_000,
        960,
    )
    assert frame.time_base == Fraction(1, 48_000)


async def test_a_sound_decodes_at_the_time_it_was_sent():
    """A tone starting at sample 4000 of the sender's timeline is heard there, not 6.5 ms later."""
    onset = 4000
    frames = []
    decoder = TrackDecoder("audio", frames.extend, lambda: None)
    for index, data in enumerate(opus_packets(10, onset)):
        decoder.put(EncodedFrame(data, index * 960, 48_000, True, "audio/opus"))
    loud = [
        frame.pts + int(np.flatnonzero(np.abs(samples) > 2000)[0]) // 2
        for frame in frames
        if np.any(np.abs(samples := frame.to_ndarray()[0]) > 2000)
    ]
    assert abs(loud[0] - onset) <= 48, f"heard at sample {loud[0]}, sent at {onset}"


def vp8_packets(count: int) -> list[bytes]:
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 64, 48, "yuv420p"
    encoder.time_base = Fraction(1, 30)
    encoder.options = {"deadline": "realtime", "lag-in-frames": "0"}
    encoder.open()
    packets = []
    for index in range(count):
        frame = av.VideoFrame.from_ndarray(
            np.full((48, 64, 3), 40 * index, np.uint8), format="rgb24"
        )
        frame.pts = index
        packets += [bytes(p) for p in encoder.encode(frame.reformat(format="yuv420p"))]
    return packets + [bytes(p) for p in encoder.encode(None)]


async def test_video_is_decoded_on_its_own_thread_and_bad_frames_ask_for_a_key_frame():
    frames: list[av.VideoFrame] = []
    threads: set[str] = set()
    errors = asyncio.Event()
    three = asyncio.Event()

    def on_frames(decoded: list[av.VideoFrame]) -> None:
        threads.add(threading.current_thread().name)  # delivered in the loop's thread
        frames.extend(decoded)
        if len(frames) >= 3:
            three.set()

    decoder = TrackDecoder("video", on_frames, errors.set)
    assert "decode video" in {t.name for t in threading.enumerate()}
    try:
        for index, data in enumerate(vp8_packets(3)):
            decoder.put(EncodedFrame(data, index * 3000, 90_000, index == 0, "video/VP8"))
        await asyncio.wait_for(three.wait(), 5)
        assert [(f.width, f.height, f.pts) for f in frames] == [
            (64, 48, i * 3000) for i in range(3)
        ]
        assert frames[0].time_base == Fraction(1, 90_000)
        assert threads == {threading.current_thread().name}
        assert decoder.codec_name == "vp8"
        assert not errors.is_set()

        decoder.put(EncodedFrame(b"\x00" * 20, 9000, 90_000, False, "video/VP8"))
        await asyncio.wait_for(errors.wait(), 5)
        errors.clear()
        decoder.put(EncodedFrame(b"\x00" * 20, 12000, 90_000, True, "video/AV1"))
        await asyncio.wait_for(errors.wait(), 5)  # a codec it cannot decode: the same answer
    finally:
        decoder.close()
