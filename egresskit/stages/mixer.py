"""AudioMixer: every audio track summed into one 48 kHz stereo stream on the graph clock."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
from collections import deque
from fractions import Fraction

import av
import numpy as np
from livekit.protocol.models import ParticipantInfo

from egresskit.pipeline import EOS, InputPort, OutputPort, Stage
from egresskit.stages.media import (
    PLAYOUT_DELAY_S,
    TrackEnded,
    TrackFrame,
    TrackInfo,
    TrackItem,
    TrackMuteChanged,
    TrackStarted,
)
from egresskit.stages.participants import ParticipantGate
from egresskit.stages.speaker import SpeakerTracker

SAMPLE_RATE = 48_000
CHANNELS = 2
# 40 ms: each tick's numpy work costs about the same for 20 or 40 ms of samples, and
# measured in a live 2x2 composite a tick cost ~0.7 ms of loop CPU (cold caches, the
# encoder busy beside it): half as many ticks, half that cost. Sound is placed by
# capture time whatever the tick, and the playout delay dwarfs it.
TICK_SAMPLES = 1920
PLAYOUT_DELAY_SAMPLES = round(PLAYOUT_DELAY_S * SAMPLE_RATE)
# At most this much backlog per track; older samples are dropped and counted.
MAX_BUFFER_SAMPLES = SAMPLE_RATE + PLAYOUT_DELAY_SAMPLES
# A frame this close to where the previous one ended continues it: timing
# rounding must not cut or pad the sound.
CONTIGUOUS_SAMPLES = 96  # 2 ms


LEFT, RIGHT = 0, 1


class _TrackBuffer:
    """Interleaved s16 stereo samples of one track, placed on the graph's timeline.

    Samples are kept as a queue of the frames' own arrays, contiguous from
    sample position `start` (48 kHz since the graph started): a WebRTC
    track delivers exactly one tick (960 samples) per frame, so a tick
    usually takes one array as it is, with no copy. A frame goes where its
    capture time puts it; a gap before it is silence. Where it overlaps
    samples not mixed yet, it replaces them: an overlap means the track's
    timing moved earlier (its sender's clock mapping tightened), and the
    newer placement is the truer one (cutting the new frame instead would
    move the start of a sound, a beep or a word, later by the move).
    Samples already mixed stay as they were.

    `channel` is None to mix the track in stereo, or LEFT / RIGHT to put
    its mono downmix on that channel only.
    """

    def __init__(self, info: TrackInfo, channel: int | None) -> None:
        self.info = info
        self.channel = channel
        self.resampler = av.AudioResampler(format="s16", layout="stereo", rate=SAMPLE_RATE)
        self.chunks: deque[np.ndarray] = deque()
        self.start: int | None = None
        self.size = 0
        self.taken = False  # mixed at least once: missing samples count as silence
        self.muted = False
        self.dropped = 0
        self.silence = 0

    @property
    def end(self) -> int | None:
        return None if self.start is None else self.start + self.size

    def push(self, frame: av.AudioFrame, position: int) -> None:
        """Add a frame whose first sample belongs at `position`."""
        if (
            frame.format.name == "s16"
            and frame.sample_rate == SAMPLE_RATE
            and frame.layout.name == "stereo"
        ):
            # what WebRTC's Opus decoder delivers: already the mix format
            outputs = [frame]
        else:
            outputs = self.resampler.resample(frame)
        for out in outputs:
            # the packed plane as it is (`to_ndarray` stacks planes: several times the cost)
            data = np.frombuffer(memoryview(out.planes[0]), np.int16, out.samples * CHANNELS)
            data = data.reshape(-1, CHANNELS)
            self._place(data, position)
            position += len(data)

    def _place(self, data: np.ndarray, position: int) -> None:
        end = self.end
        if end is None or abs(position - end) > MAX_BUFFER_SAMPLES:
            # the first samples, or a jump too far to bridge: start over here
            self.dropped += self.size
            self.chunks.clear()
            self.start, self.size = position, 0
            end = position
        elif abs(position - end) <= CONTIGUOUS_SAMPLES:
            position = end
        if position > end:
            self.chunks.append(np.zeros((position - end, CHANNELS), np.int16))
            self.size += position - end
        elif position < end:
            assert self.start is not None
            if position < self.start:
                if position + len(data) <= self.start:
                    self.dropped += len(data)  # all of it came too late to be mixed
                    return
                data = data[self.start - position :]  # already mixed
                position = self.start
            replaced = end - position
            self._drop_last(replaced)
            self.dropped += replaced
        if len(data):
            self.chunks.append(data)
            self.size += len(data)
        excess = self.size - MAX_BUFFER_SAMPLES
        if excess > 0:
            self._pop(excess)
            self.dropped += excess

    def _drop_last(self, count: int) -> None:
        """Forget the last `count` buffered samples."""
        while count > 0 and self.chunks:
            tail = self.chunks[-1]
            if len(tail) <= count:
                self.chunks.pop()
            else:
                self.chunks[-1] = tail[: len(tail) - count]
            removed = min(len(tail), count)
            count -= removed
            self.size -= removed

    def _pop(self, count: int) -> list[np.ndarray]:
        """The first `count` samples (fewer if there are not as many), as arrays in order."""
        parts = []
        while count > 0 and self.chunks:
            head = self.chunks[0]
            if len(head) <= count:
                parts.append(self.chunks.popleft())
            else:
                parts.append(head[:count])
                self.chunks[0] = head[count:]
            count -= len(parts[-1])
            self.size -= len(parts[-1])
            assert self.start is not None
            self.start += len(parts[-1])
        return parts

    def take(self, position: int, count: int) -> np.ndarray | None:
        """Samples `position` to `position + count`, silence where there are none; None if muted.

        Samples before `position` came too late to be mixed: they are dropped
        and counted. None too while the track has no sample at or before the
        end of the window (it has not begun).
        """
        if self.start is None or (not self.taken and self.start >= position + count):
            return None
        if self.start < position:
            late = min(position - self.start, self.size)
            self._pop(late)
            self.dropped += late
            if not self.size:
                self.start = position
        self.taken = True
        assert self.start is not None
        lead = min(max(0, self.start - position), count)
        parts = [np.zeros((lead, CHANNELS), np.int16)] if lead else []
        parts += self._pop(count - lead)
        missing = count - sum(len(part) for part in parts)
        if missing:
            parts.append(np.zeros((missing, CHANNELS), np.int16))
            self.start = position + count
        self.silence += lead + missing
        if self.muted:
            return None
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


class Mixing(enum.StrEnum):
    """How tracks are placed on the two channels (LiveKit's AudioMixing, by name)."""

    DEFAULT = "default"
    DUAL_CHANNEL_AGENT = "dual_channel_agent"
    DUAL_CHANNEL_ALTERNATE = "dual_channel_alternate"


class AudioMixer(Stage):
    """Mixes on 40 ms ticks of the graph clock, with saturation.

    The output never pauses: with nobody publishing it is silence, and a
    track that runs dry contributes counted silence, so the audio length
    equals wall time like the video's.

    `mixing` (a `Mixing` or its string): DEFAULT keeps every track in
    stereo; DUAL_CHANNEL_AGENT puts agent participants on the left and
    everyone else on the right; DUAL_CHANNEL_ALTERNATE puts each new track
    on the other channel than the one before. With `speakers`, the
    level of every participant is reported on each tick (active speaker).
    `participants` says who is heard: sound captured while its participant
    was left out is dropped at once, so it is never mixed (ParticipantGate).
    """

    def __init__(
        self,
        *,
        mixing: Mixing | str = Mixing.DEFAULT,
        speakers: SpeakerTracker | None = None,
        participants: ParticipantGate | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        self.mixing = Mixing(mixing)  # ValueError for anything else, LiveKit's integers too
        self.speakers = speakers
        self.participants = participants or ParticipantGate()
        self._next_channel = LEFT
        self.input: InputPort[TrackItem] = self.add_input("input")
        self.output: OutputPort[av.AudioFrame] = self.add_output("output")
        self.time_base = Fraction(1, SAMPLE_RATE)
        self._tracks: dict[str, _TrackBuffer] = {}
        self.frames_out = 0
        self.samples_out = 0
        self.silence_samples = 0
        self.dropped_samples = 0

    async def run(self) -> None:
        intake = asyncio.create_task(self._intake())
        try:
            await self._tick()
        finally:
            intake.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await intake

    async def _intake(self) -> None:
        while True:
            item = await self.input.recv()
            if item is EOS:
                return
            if isinstance(item, TrackFrame):
                buffer = self._tracks.get(item.track.sid)
                if (
                    buffer is not None
                    and isinstance(item.frame, av.AudioFrame)
                    and not self._paused_at(item.time)
                    and self.participants.admits(item.track.participant_identity, item.time)
                ):
                    # resampling 20 ms of audio takes microseconds: fine on the loop
                    buffer.push(item.frame, self._position(item.time, buffer))
            elif isinstance(item, TrackStarted):
                if item.track.sid not in self._tracks:
                    self._tracks[item.track.sid] = _TrackBuffer(
                        item.track, self._channel(item.track)
                    )
            elif isinstance(item, TrackEnded):
                buffer = self._tracks.pop(item.track.sid, None)
                if buffer is not None:
                    self._account(buffer)
                self._forget_speaker(item.track.participant_identity)
            elif isinstance(item, TrackMuteChanged):
                buffer = self._tracks.get(item.track.sid)
                if buffer is not None:
                    buffer.muted = item.muted

    def _paused_at(self, capture: float | None) -> bool:
        """Captured (or, untimed, arriving) while the recording was paused: never heard."""
        return self.clock.paused if capture is None else self.clock.in_pause(capture)

    def _position(self, capture: float | None, buffer: _TrackBuffer) -> int:
        """Where a frame's first sample goes: its capture time, delayed by the playout delay.

        An untimed frame continues the track, or starts now when the track
        has run dry.
        """
        if capture is None:
            now = round(self.clock.now() * SAMPLE_RATE)
            end = buffer.end
            return end if end is not None and end >= now - TICK_SAMPLES else now
        return round(self.clock.media_time(capture) * SAMPLE_RATE)

    def _channel(self, track: TrackInfo) -> int | None:
        if self.mixing is Mixing.DUAL_CHANNEL_AGENT:
            return LEFT if track.participant_kind == ParticipantInfo.Kind.AGENT else RIGHT
        if self.mixing is Mixing.DUAL_CHANNEL_ALTERNATE:
            channel, self._next_channel = self._next_channel, 1 - self._next_channel
            return channel
        return None

    def _forget_speaker(self, identity: str) -> None:
        if self.speakers is not None and not any(
            b.info.participant_identity == identity for b in self._tracks.values()
        ):
            self.speakers.forget(identity)

    def _account(self, buffer: _TrackBuffer) -> None:
        self.silence_samples += buffer.silence
        self.dropped_samples += buffer.dropped

    async def _tick(self) -> None:
        """Mix each tick once the graph clock has passed it; at the stop, the part up to it.

        So the sound ends where the recording stops, to the sample, whatever
        the tick's length.
        """
        n = 0
        while not self.stopping.is_set():
            await self.clock.sleep_until((n + 1) * TICK_SAMPLES / SAMPLE_RATE)
            if self.stopping.is_set():
                break
            await self._send(self._mix(n * TICK_SAMPLES, TICK_SAMPLES))
            n += 1
        rest = round(self.clock.now() * SAMPLE_RATE) - n * TICK_SAMPLES
        if 0 < rest < TICK_SAMPLES:
            await self._send(self._mix(n * TICK_SAMPLES, rest))

    async def _send(self, frame: av.AudioFrame) -> None:
        await self.output.send(frame)
        self.frames_out += 1
        self.samples_out += frame.samples

    def _mix(self, start: int, count: int) -> av.AudioFrame:
        """The mix of samples `start` to `start + count` of the recording (48 kHz from 0)."""
        total = np.zeros((count, CHANNELS), np.int32)
        levels: dict[str, float] = {}
        position = start - PLAYOUT_DELAY_SAMPLES
        for buffer in self._tracks.values():
            chunk = buffer.take(position, count)
            if chunk is None:
                continue
            if buffer.channel is None:
                total += chunk
            else:
                total[:, buffer.channel] += chunk.sum(axis=1, dtype=np.int32) // CHANNELS
            if self.speakers is not None:
                identity = buffer.info.participant_identity
                flat = chunk.astype(np.float32).ravel()  # a dot product: two numpy calls, not four
                rms = math.sqrt(float(np.dot(flat, flat)) / flat.size) / 32768
                levels[identity] = max(rms, levels.get(identity, 0.0))
        if self.speakers is not None:
            self.speakers.observe(start / SAMPLE_RATE, levels)
        mixed = np.clip(total, -32768, 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(mixed.reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = start
        frame.time_base = self.time_base
        return frame

    def release(self) -> None:
        """Drop the tracks' buffered audio, keeping their counts."""
        for buffer in self._tracks.values():
            self.silence_samples += buffer.silence
            self.dropped_samples += buffer.dropped
        self._tracks.clear()

    def stats(self) -> dict[str, int]:
        silence = self.silence_samples + sum(b.silence for b in self._tracks.values())
        dropped = self.dropped_samples + sum(b.dropped for b in self._tracks.values())
        return {
            "frames_out": self.frames_out,
            "samples_out": self.samples_out,
            "silence_samples": silence,
            "dropped_samples": dropped,
        }
