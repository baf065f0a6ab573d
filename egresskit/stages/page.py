"""PageSource: a web page's picture and sound, on the graph clock, as raw frames.

The page runs in a `PageBrowser` (Chromium on Xvfb with a PulseAudio
sink). The picture is grabbed with PyAV's x11grab on a thread of its own
and placed on a constant frame-rate grid of the graph clock from t0, the
first grab (the sound starts there too): each grab takes the next slot if
that is within GRAB_SLACK_FRAMES of its own time; slots no grab reached
repeat the previous picture and grabs too early for a slot are dropped. So
the output is constant frame rate and as long as wall time. The grab thread
also converts each picture to yuv420p, beside the encoder's thread. The
sound is the sink's monitor, read with `parec`; what PulseAudio dropped
while this process was starved is filled with silence, so the sound too
lasts as long as wall time. Both feed the same encoders as a composite's
compositor and mixer.

Recording starts when the page has loaded, or with `await_start_signal`
when it logs START_RECORDING. END_RECORDING posts `SourceClosed` (the
egress ends COMPLETE); a page that fails to load, crashes, never signals
or whose browser exits posts `SourceFailed` with the reason, and the
stage ends its streams, so what was recorded is finalized and plays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from egresskit.masking import mask_url, scrub, url_secrets
from egresskit.pipeline import OutputPort, SourceClosed, SourceFailed, Stage, StageEvent
from egresskit.web.audio import BYTES_PER_SAMPLE, CHANNELS, SAMPLE_RATE
from egresskit.web.browser import PageBrowser, PageFailed

log = logging.getLogger(__name__)

# How far (frame periods) a grab may be placed from its own time on the frame grid.
GRAB_SLACK_FRAMES = 1
AUDIO_CHUNK_SAMPLES = 960  # 20 ms, as the mixer's ticks
# PulseAudio drops what a recording client does not read in time (a starved process): when
# the sound lags the clock by more than this, the gap is filled with silence.
AUDIO_MAX_LAG_S = 0.3
START_SIGNAL_TIMEOUT_S = 30.0
LAYOUT_EVENT = "egresskit:layout"  # UpdateLayout, dispatched on the page's window


@dataclass(frozen=True, slots=True, eq=False)
class RecordingStarted(StageEvent):
    """The page's first picture is on the frame grid: the recording has begun."""

    waited_s: float  # from the start of the stage


class PageSource(Stage):
    """Outputs `video` (yuv420p frames, pts n in 1/fps) and `audio` (s16 stereo 48 kHz)."""

    def __init__(
        self,
        url: str,
        *,
        width: int = 1280,
        height: int = 720,
        fps: int = 30,
        video: bool = True,
        audio: bool = True,
        await_start_signal: bool = False,
        start_timeout_s: float = START_SIGNAL_TIMEOUT_S,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if not (video or audio):
            raise ValueError("a page source records video, audio or both")
        self.url = url
        self.width = width
        self.height = height
        self.fps = fps
        self.want_video = video
        self.want_audio = audio
        self.await_start_signal = await_start_signal
        self.start_timeout_s = start_timeout_s
        self.video: OutputPort[av.VideoFrame] = self.add_output("video")
        self.audio: OutputPort[av.AudioFrame] = self.add_output("audio")
        self.browser = PageBrowser(url, width, height, audio=audio)
        self.frames_out = 0
        self.frames_repeated = 0
        self.frames_dropped = 0
        self.audio_samples = 0
        self.silence_samples = 0
        self.first_frame_s: float | None = None  # from run() to the first frame, seconds
        self._halt = threading.Event()  # stop grabbing: the recording ends
        self._abort = threading.Event()  # stop sending too: the graph is being torn down
        self._stop_at = 0.0  # the media time the recording ended
        # set at the first picture grabbed: the sound before it is not recorded
        self._origin = asyncio.Event()
        self._layout_tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        began = time.monotonic()
        try:
            await self.browser.open()
            if self.await_start_signal:
                await self._await_start()
        except PageFailed as exc:
            self._failed(str(exc))
            return
        if self.stopping.is_set():
            return
        loop = asyncio.get_running_loop()
        captures = []
        if self.want_video:
            captures.append(self._grab_thread(loop, began))
        if self.want_audio:
            captures.append(asyncio.ensure_future(self._record_audio(began)))
        try:
            reason = await self._until_end()
        finally:
            self._stop_at = self.clock.now()
            self._halt.set()
            results = await asyncio.gather(*captures, return_exceptions=True)
        if reason == "end":
            self.post(SourceClosed(self, "the page logged END_RECORDING"))
        elif reason == "failed":
            self._failed(self.browser.error)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result

    def _failed(self, reason: str) -> None:
        """Posts SourceFailed, the page's URL and its secrets (a template's token) masked."""
        reason = scrub(reason, url_secrets(self.url))
        self.post(SourceFailed(self, f"web page {mask_url(self.url)}: {reason}"))

    async def _await_start(self) -> None:
        browser = self.browser
        waiters = [
            asyncio.ensure_future(e.wait())
            for e in (browser.start_signal, browser.failed, self.stopping)
        ]
        try:
            await asyncio.wait(
                waiters, timeout=self.start_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
        if browser.failed.is_set():
            raise PageFailed(browser.error)
        if not (browser.start_signal.is_set() or self.stopping.is_set()):
            raise PageFailed(f"no START_RECORDING from the page within {self.start_timeout_s:g} s")

    async def _until_end(self) -> str:
        """Wait for the egress to stop, the page to end recording or the browser to fail."""
        browser = self.browser
        events = {"stop": self.stopping, "end": browser.end_signal, "failed": browser.failed}
        waiters = {asyncio.ensure_future(e.wait()): name for name, e in events.items()}
        try:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        names = {waiters[w] for w in done}
        return next(n for n in ("failed", "end", "stop") if n in names)

    # --- picture: a worker thread -------------------------------------------------------

    def _grab_thread(self, loop: asyncio.AbstractEventLoop, began: float) -> asyncio.Future[None]:
        """Run `_grab` on a thread of its own: it lasts the whole recording, so it must not
        hold one of the loop's default executor threads, which short jobs share."""
        done: asyncio.Future[None] = loop.create_future()

        def settle(error: BaseException | None) -> None:
            if done.done():
                return
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

        def target() -> None:
            error: BaseException | None = None
            try:
                self._grab(loop, began)
            except BaseException as exc:  # reported to the stage, which raises it
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(settle, error)

        threading.Thread(target=target, name=f"{self.name} grab", daemon=True).start()
        return done

    def _grab(self, loop: asyncio.AbstractEventLoop, began: float) -> None:
        assert self.browser.display is not None
        container = av.open(
            self.browser.display.name,
            format="x11grab",
            options={
                "framerate": str(self.fps),
                "video_size": f"{self.width}x{self.height}",
                "draw_mouse": "0",
            },
        )
        time_base = Fraction(1, self.fps)
        previous: av.VideoFrame | None = None
        t0 = 0.0  # the media time of slot 0: the first grab
        n = 0  # the next grid slot to fill
        try:
            for grabbed in container.decode(video=0):
                if self._halt.is_set():
                    break
                if previous is None:
                    t0 = self.clock.now()
                    loop.call_soon_threadsafe(self._begin, began)
                # The slot this grab's time falls on; a grab may take a slot up to
                # GRAB_SLACK_FRAMES early or late, so a late grab followed by a quick one
                # (the thread was descheduled) fills two slots instead of a repeat and a drop.
                wall = round((self.clock.now() - t0) * self.fps)
                if wall < n - GRAB_SLACK_FRAMES:
                    self.frames_dropped += 1
                    continue
                slot = max(n, wall - GRAB_SLACK_FRAMES)
                # converted here, not on the encoder's thread: two threads share the work
                picture = grabbed.reformat(format="yuv420p")
                if previous is None:
                    self.first_frame_s = time.monotonic() - began
                    previous = picture
                while n < slot:  # slots no grab reached show the previous picture
                    self._send(loop, _copy(previous), n, time_base)
                    self.frames_repeated += 1
                    n += 1
                self._send(loop, picture, n, time_base)
                previous = picture
                n += 1
        finally:
            container.close()
        # An encoder slower than real time holds the grab back; the slots up to the end
        # still get a picture, so the recording lasts as long as the page was recorded.
        while previous is not None and n < round((self._stop_at - t0) * self.fps):
            if not self._send(loop, _copy(previous), n, time_base):
                break
            self.frames_repeated += 1
            n += 1

    def _send(
        self, loop: asyncio.AbstractEventLoop, frame: av.VideoFrame, n: int, time_base: Fraction
    ) -> bool:
        """Send frame n (waiting while the link is full); False if the graph is torn down."""
        frame.pts = n
        frame.time_base = time_base
        sent = asyncio.run_coroutine_threadsafe(self.video.send(frame), loop)
        while True:  # a full link holds the grab back (the encoder is behind)
            try:
                sent.result(timeout=0.5)
                break
            except TimeoutError:
                if self._abort.is_set():
                    sent.cancel()
                    return False
        self.frames_out = n + 1
        return True

    # --- sound -------------------------------------------------------------------------

    def _begin(self, began: float) -> None:
        """The recording's first moment (in the loop thread): the egress is ACTIVE from here."""
        self._origin.set()
        self.post(RecordingStarted(self, round(time.monotonic() - began, 3)))

    async def _record_audio(self, began: float) -> None:
        sink = self.browser.sink
        assert sink is not None
        parec = await sink.record()
        assert parec.stdout is not None
        time_base = Fraction(1, SAMPLE_RATE)
        chunk = AUDIO_CHUNK_SAMPLES * BYTES_PER_SAMPLE
        position = 0  # samples sent
        t0: float | None = None  # the media time of the first sample sent
        halt = asyncio.ensure_future(self.stopping.wait())
        try:
            while not self._halt.is_set():
                read = asyncio.ensure_future(parec.stdout.readexactly(chunk))
                done, _ = await asyncio.wait({read, halt}, return_when=asyncio.FIRST_COMPLETED)
                if read not in done:
                    read.cancel()
                    break
                try:
                    data = read.result()
                except asyncio.IncompleteReadError:
                    break
                if not self.want_video and not self._origin.is_set():
                    self._begin(began)
                if not self._origin.is_set():
                    continue
                if t0 is None:
                    t0 = self.clock.now() - AUDIO_CHUNK_SAMPLES / SAMPLE_RATE
                behind = round((self.clock.now() - t0) * SAMPLE_RATE) - position
                if behind > AUDIO_MAX_LAG_S * SAMPLE_RATE:
                    gap = behind - AUDIO_CHUNK_SAMPLES
                    await self._send_audio(np.zeros(gap * CHANNELS, np.int16), position, time_base)
                    position += gap
                    self.silence_samples += gap
                await self._send_audio(np.frombuffer(data, np.int16), position, time_base)
                position += AUDIO_CHUNK_SAMPLES
                self.audio_samples = position
        finally:
            halt.cancel()
            with contextlib.suppress(ProcessLookupError):
                parec.kill()
            # what is left unread keeps the pipe open (its reader paused): read it to the end
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(parec.stdout.read(), 5.0)
            await parec.wait()

    async def _send_audio(self, samples: np.ndarray, position: int, time_base: Fraction) -> None:
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = position
        frame.time_base = time_base
        await self.audio.send(frame)

    def set_layout(self, layout: str) -> None:
        """Tell the page its new layout: the `egresskit:layout` event (/sdk/template.js)."""
        task = asyncio.ensure_future(self.browser.dispatch(LAYOUT_EVENT, layout))
        self._layout_tasks.add(task)
        task.add_done_callback(self._layout_done)

    def _layout_done(self, task: asyncio.Task[None]) -> None:
        self._layout_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s: the page did not take its new layout: %s", self.name, task.exception())

    async def cleanup(self) -> None:
        self._halt.set()
        self._abort.set()
        await self.browser.close()

    def stats(self) -> dict[str, int]:
        return {
            "frames_out": self.frames_out,
            "frames_repeated": self.frames_repeated,
            "frames_dropped": self.frames_dropped,
            "audio_samples": self.audio_samples,
            "silence_samples": self.silence_samples,
        }


def _copy(frame: av.VideoFrame) -> av.VideoFrame:
    """A new frame with the same picture (a repeat needs its own pts)."""
    copy = av.VideoFrame(frame.width, frame.height, frame.format.name)
    for source, target in zip(frame.planes, copy.planes, strict=True):
        target.update(source)  # type: ignore[arg-type]  # any buffer; the stub says bytes
    return copy
