"""Active speaker: steady decisions from audio levels, and the large tile following them."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction

import av
import numpy as np
import pytest
from aiortc import AudioStreamTrack
from aiortc.mediastreams import MediaStreamError
from publishers import SyntheticVideoTrack, colors_close
from test_layouts import colour_in

from egresskit import FileOutput, GraphState, VideoEncoding, composite_graph
from egresskit.stages.layout import place
from egresskit.stages.media import PLAYOUT_DELAY_S
from egresskit.stages.speaker import SpeakerTracker

TICK = 0.02
LOUD, TALK, QUIET = 0.3, 0.05, 0.0


def run(tracker: SpeakerTracker, start: float, seconds: float, levels: dict[str, float]) -> float:
    """Feed the same levels for `seconds` of 20 ms ticks; returns the time after."""
    ticks = round(seconds / TICK)
    for i in range(ticks):
        tracker.observe(start + i * TICK, levels)
    return start + ticks * TICK


def test_first_talker_gets_the_floor_quickly():
    tracker = SpeakerTracker()
    t = run(tracker, 0.0, 1.0, {"a": QUIET, "b": QUIET})
    assert tracker.active is None
    t = run(tracker, t, 0.4, {"a": TALK, "b": QUIET})
    assert tracker.active == "a"
    assert tracker.speaking("a") and not tracker.speaking("b")


def test_short_interjections_do_not_take_the_floor():
    tracker = SpeakerTracker()
    t = run(tracker, 0.0, 1.0, {"a": TALK})
    for _ in range(5):  # b chimes in for 0.3 s at a time, a goes quiet meanwhile
        t = run(tracker, t, 0.3, {"a": QUIET, "b": TALK})
        t = run(tracker, t, 0.3, {"a": TALK, "b": QUIET})
    assert tracker.active == "a"
    assert tracker.switches == 1


def test_talking_over_the_speaker_needs_to_be_clearly_louder():
    tracker = SpeakerTracker()
    t = run(tracker, 0.0, 1.0, {"a": TALK})
    t = run(tracker, t, 2.0, {"a": TALK, "b": TALK * 1.5})
    assert tracker.active == "a", "a similar voice over the speaker took the floor"
    t = run(tracker, t, 1.0, {"a": TALK, "b": LOUD})
    assert tracker.active == "b"


def test_the_floor_moves_once_when_the_talker_changes():
    tracker = SpeakerTracker()
    t = run(tracker, 0.0, 1.0, {"a": LOUD, "b": QUIET})
    history = []
    for i in range(100):
        tracker.observe(t + i * TICK, {"a": QUIET, "b": LOUD})
        history.append(tracker.active)
    assert history[0] == "a" and history[-1] == "b"
    switch = history.index("b")
    assert all(h == "b" for h in history[switch:])
    assert 0.3 <= switch * TICK <= 1.0


def test_a_speaker_who_leaves_gives_up_the_floor():
    tracker = SpeakerTracker()
    run(tracker, 0.0, 0.5, {"a": TALK})
    tracker.forget("a")
    assert tracker.active is None


def test_a_servers_speakers_decide_when_nothing_is_measured():
    tracker = SpeakerTracker()
    tracker.announce([("b", LOUD), ("a", TALK)])
    assert tracker.active == "b" and tracker.speaking("a")
    tracker.announce([])
    assert tracker.active == "b" and not tracker.speaking(
        "b"
    )  # the floor stays until someone talks


def test_announced_speakers_join_measured_levels_under_the_same_rule():
    tracker = SpeakerTracker()
    t = run(tracker, 0.0, 1.0, {"a": TALK, "b": QUIET})
    assert tracker.active == "a"
    # the server hears c (whose audio this graph does not mix) clearly louder than a
    tracker.announce([("c", LOUD)])
    assert tracker.active == "a", "announcements wait for the measured clock's hysteresis"
    run(tracker, t, 0.6, {"a": TALK, "b": QUIET})
    assert tracker.active == "c"
    assert tracker.announcements == 1


class SwitchableTone(AudioStreamTrack):
    """A sine tone that can be switched on and off while it plays (silence when off)."""

    def __init__(self, freq_hz: float, on: bool) -> None:
        super().__init__()
        self.freq_hz = freq_hz
        self.on = on
        self._index = 0
        self._samples = 960
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        delay = self._start + self._index * 0.02 - now
        if delay > 0:
            await asyncio.sleep(delay)
        first = self._index * self._samples
        self._index += 1
        t = (first + np.arange(self._samples)) / 48_000
        level = 0.3 * 32767 if self.on else 0.0
        samples = (level * np.sin(2 * np.pi * self.freq_hz * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48_000
        frame.pts = first
        frame.time_base = Fraction(1, 48_000)
        return frame


RED, BLUE = (220, 40, 40), (40, 60, 220)


@pytest.mark.slow
async def test_the_large_tile_follows_the_voice(rooms, tmp_path):
    room = rooms.get_or_create("talk")
    # bob joins first, so he is large until someone speaks; alice talks first
    bob_voice, alice_voice = SwitchableTone(660.0, on=False), SwitchableTone(440.0, on=True)
    await room.publish(SyntheticVideoTrack(BLUE, 320, 180, fps=15), identity="bob")
    await room.publish(bob_voice, identity="bob")
    await room.publish(SyntheticVideoTrack(RED, 320, 180, fps=15), identity="alice")
    await room.publish(alice_voice, identity="alice")
    path = tmp_path / "talk.mp4"
    size = (640, 360)
    graph, _ = composite_graph(
        room,
        [FileOutput(path)],
        video=VideoEncoding(width=size[0], height=size[1]),
        layout="speaker",
    )
    await graph.start()
    await graph.clock.sleep_until(1.6)
    switched_at = graph.clock.now()
    alice_voice.on, bob_voice.on = False, True
    await graph.clock.sleep_until(3.4)
    assert await graph.stop() is GraphState.COMPLETE

    main = place("speaker", 2, *size).rects[0]
    large = []
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            colour = colour_in(frame.to_ndarray(format="rgb24"), main)
            who = (
                "alice"
                if colors_close(colour, RED)
                else "bob"
                if colors_close(colour, BLUE)
                else "?"
            )
            large.append((frame.time, who))
    # before the first camera frame arrives the tile is a placeholder; never after
    known = [(t, who) for t, who in large if who != "?"]
    assert known and known[0][0] < 0.5 and len(known) == len(large) - large.index(known[0])
    large = known
    first_alice = next(t for t, who in large if who == "alice")
    assert first_alice <= 1.0, f"alice became large only at {first_alice:.2f} s"
    after = [who for t, who in large if t >= first_alice]
    changes = sum(1 for a, b in zip(after, after[1:], strict=False) if a != b)
    assert changes == 1, f"the large tile changed {changes} times: {after}"
    first_bob = next(t for t, who in large if t >= first_alice and who == "bob")
    # bob's voice plays into the mix PLAYOUT_DELAY_S after it was captured
    late = first_bob - (switched_at + PLAYOUT_DELAY_S)
    assert late <= 1.0, f"bob became large {late:.2f} s after his voice played"
