"""Audio mixing modes of audio-only composites, checked on the decoded channels."""

from __future__ import annotations

import asyncio

import av
import numpy as np
import pytest
from livekit.protocol.models import ParticipantInfo
from media_checks import tone_strengths
from publishers import SineAudioTrack

from egresskit import AudioMixer, FileOutput, GraphState, Mixing, composite_graph
from egresskit.stages.mixer import _TrackBuffer

AGENT_TONE, HUMAN_TONE, GUEST_TONE = 440.0, 1000.0, 2500.0
TONES = [AGENT_TONE, HUMAN_TONE, GUEST_TONE]
AUDIBLE = 50.0  # a tone's peak over the spectrum's median
PRESENT, ABSENT = 0.3, 0.01  # share of the loudest tone in the channel


def channels(path, start: float, end: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Left and right samples between two times, decoded with PyAV."""
    left, right, rate = [], [], 0
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.audio[0]):
            rate = frame.sample_rate
            if frame.time is None or not start <= frame.time <= end:
                continue
            data = frame.to_ndarray()
            if frame.format.is_packed:
                data = data.reshape(-1, len(frame.layout.channels)).T
            left.append(data[0])
            right.append(data[1])
    assert left, f"no audio between {start} and {end} s"
    return np.concatenate(left).astype(float), np.concatenate(right).astype(float), rate


def heard(samples: np.ndarray, rate: int) -> set[float]:
    """Which of the test tones a channel carries; fails on anything in between.

    Levels are relative to the channel's strongest tone: a tone that is not
    there must be 40 dB down (the codec leaks a trace across channels).
    """
    levels = tone_strengths(samples, rate, TONES)
    loudest = max(levels)
    assert loudest > AUDIBLE, f"no tone at all: {levels}"
    for tone, level in zip(TONES, levels, strict=True):
        assert level > loudest * PRESENT or level < loudest * ABSENT, (
            f"{tone} Hz at an unclear level: {levels}"
        )
    return {tone for tone, level in zip(TONES, levels, strict=True) if level > loudest * PRESENT}


@pytest.mark.slow
async def test_mixing_modes_place_tracks_on_their_channels(rooms, tmp_path):
    room = rooms.get_or_create("call")
    room.join("agent", kind=ParticipantInfo.Kind.AGENT)
    # published in this order: the alternate mode puts them left, right, left
    await room.publish(SineAudioTrack(AGENT_TONE), identity="agent")
    await room.publish(SineAudioTrack(HUMAN_TONE), identity="human")
    await room.publish(SineAudioTrack(GUEST_TONE), identity="guest")
    modes = {
        "default": Mixing.DEFAULT,
        "agent": Mixing.DUAL_CHANNEL_AGENT,
        "alternate": "dual_channel_alternate",  # the enum's string works too
    }
    graphs = {}
    for name, mixing in modes.items():
        graph, _ = composite_graph(
            room, [FileOutput(tmp_path / f"{name}.mp4")], video=None, audio_mixing=mixing, name=name
        )
        graphs[name] = graph
    for graph in graphs.values():
        await graph.start()
    await asyncio.sleep(2.5)
    for graph in graphs.values():
        assert await graph.stop() is GraphState.COMPLETE

    expected = {
        "default": (set(TONES), set(TONES)),
        "agent": ({AGENT_TONE}, {HUMAN_TONE, GUEST_TONE}),
        "alternate": ({AGENT_TONE, GUEST_TONE}, {HUMAN_TONE}),
    }
    for name, (want_left, want_right) in expected.items():
        left, right, rate = channels(tmp_path / f"{name}.mp4", 0.5, 2.3)
        assert heard(left, rate) == want_left, f"{name}: left channel"
        assert heard(right, rate) == want_right, f"{name}: right channel"


def test_unknown_mixing_is_refused():
    with pytest.raises(ValueError):
        AudioMixer(mixing=7)


def test_a_frame_placed_earlier_than_the_buffer_end_replaces_what_it_overlaps():
    """When a track's timing moves earlier, its sound starts where the new timing says."""
    buffer = _TrackBuffer(None, None)  # type: ignore[arg-type]  # its info is only kept

    def frame(level: int) -> av.AudioFrame:
        samples = np.full((1, 960 * 2), level, np.int16)  # 20 ms, interleaved stereo
        out = av.AudioFrame.from_ndarray(samples, format="s16", layout="stereo")
        out.sample_rate = 48_000
        return out

    buffer.push(frame(1), 0)
    buffer.push(frame(2), 960)
    assert buffer.take(0, 480)[:, 0].tolist() == [1] * 480  # mixed: it stays
    # the timing moved 35 ms earlier: the new frame starts at 240, of which 240-480 was mixed
    buffer.push(frame(3), 240)
    assert buffer.take(480, 960)[:, 0].tolist() == [3] * 720 + [0] * 240
    buffer.push(frame(4), -2000)  # all of it before what was mixed: dropped
    assert buffer.take(1440, 960)[:, 0].tolist() == [0] * 960
