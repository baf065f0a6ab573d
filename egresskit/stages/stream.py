"""StreamSink: live streams to RTMP/RTMPS (FLV) and SRT (MPEG-TS) URLs, one writer thread each.

The sink never blocks its input: each URL has its own bounded packet queue
drained by its own thread, so a slow, hung or dead destination costs only
that destination. A URL that falls behind loses packets (counted) and
resumes at the next key frame; a dropped connection is reopened with
backoff, then the URL is FAILED. URLs come and go while the graph runs.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any
from urllib.parse import urlsplit

import av
from av.container import OutputContainer
from av.stream import Stream

from egresskit.masking import mask_url, scrub, url_secrets
from egresskit.netpolicy import NetworkPolicy
from egresskit.pipeline import EOS, InputPort, Stage, StageEvent
from egresskit.stages import srt
from egresskit.stages.media import (
    EncodedInput,
    EncodedItem,
    EncodedPacket,
    KeyFrameRequest,
    StreamHeader,
)
from egresskit.stages.muxer import private_packet

log = logging.getLogger(__name__)

# Containers by URL scheme.
STREAM_FORMATS = {"rtmp": "flv", "rtmps": "flv", "srt": "mpegts"}
DEFAULT_PORTS = {"rtmp": 1935, "rtmps": 443}
FORMAT_OPTIONS = {"flv": {"flvflags": "no_duration_filesize"}, "mpegts": {}}
# About three seconds of packets (video at 30 fps plus AAC frames) per URL.
URL_QUEUE_PACKETS = 256
CONNECT_TIMEOUT_S = 5.0
# What callers see when a destination fails, whatever the cause: a refused
# connection and an open port that speaks something else must look the same,
# or stream URLs become a port scanner. The details go to the service log.
STREAM_FAILED = "connection to the stream destination failed (details in the service log)"


class StreamStatus(enum.Enum):
    """Per-URL status, as reported in StreamInfo."""

    ACTIVE = "active"
    FINISHED = "finished"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """Waits before each reconnection of a stream URL; once they are used up the URL is FAILED
    (uploads retry by `egresskit.storage.RetryPolicy`)."""

    delays: tuple[float, ...] = (0.5, 1.0, 2.0)


@dataclass(frozen=True, slots=True, repr=False)
class StreamState:
    """A snapshot of one URL's stream. `url` is the real URL: never log it, log `safe_url`."""

    url: str
    status: StreamStatus = StreamStatus.ACTIVE
    started_at_ns: int = 0  # first packet delivered
    ended_at_ns: int = 0
    error: str = ""
    retries: int = 0
    dropped_packets: int = 0
    bytes_sent: int = 0

    @property
    def safe_url(self) -> str:
        return mask_url(self.url)

    def __repr__(self) -> str:
        return (
            f"StreamState({self.safe_url}, {self.status.value}, retries={self.retries}, "
            f"dropped={self.dropped_packets}, error={self.error!r})"
        )


@dataclass(frozen=True, slots=True, eq=False)
class StreamStateChanged(StageEvent):
    """One URL's stream changed (connected, retrying, finished, failed)."""

    state: StreamState


def stream_format(url: str) -> str:
    """The container a URL is streamed in; ValueError for a scheme that cannot be streamed here."""
    scheme = url.partition("://")[0].lower()
    if scheme not in STREAM_FORMATS:
        raise ValueError(f"unsupported stream URL scheme {scheme!r} in {mask_url(url)}")
    if scheme == "srt" and not srt.available():
        raise ValueError(
            "SRT streaming needs libsrt (Debian package libsrt1.5-gnutls): "
            "the FFmpeg inside PyAV is built without SRT"
        )
    return STREAM_FORMATS[scheme]


def _describe(exc: BaseException, url: str) -> str:
    """An error message with the URL (FFmpeg quotes it) and its secret parts masked."""
    return scrub(str(exc) or type(exc).__name__, url_secrets(url))


_STOP = object()


class _UrlWriter:
    """One destination: a bounded queue and a thread that owns the container.

    `offer` and `request_stop` run on the event loop and never block; every
    network call (connect, mux, close) happens on the writer thread. `headers`
    are the sink's stream headers, complete before the first packet is offered;
    `notify` and `ask_key_frame` are called on the loop.
    """

    def __init__(
        self,
        url: str,
        headers: Mapping[str, StreamHeader],
        retry: ReconnectPolicy,
        queue_packets: int,
        notify: Callable[[StreamState], None],
        ask_key_frame: Callable[[], None],
        network: NetworkPolicy | None = None,
    ) -> None:
        self.format = stream_format(url)
        self.url = url
        self.network = network
        self.headers = headers
        self.retry = retry
        self._notify = notify
        self._ask_key_frame = ask_key_frame
        self._queue: queue.Queue[Any] = queue.Queue(queue_packets)
        self._resync = False  # after a drop: wait for the next key frame
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._state = StreamState(url)
        self._finalised = False
        self._container: OutputContainer | None = None
        self._srt: srt.SrtCaller | None = None
        self._streams: dict[str, Stream] = {}
        self._offset = Fraction(0)
        self.thread = threading.Thread(target=self._run, name="stream-writer", daemon=True)
        self.done: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def state(self) -> StreamState:
        with self._lock:
            return self._state

    def _update(self, **changes: Any) -> StreamState:
        with self._lock:
            if self._finalised:
                return self._state
            self._state = replace(self._state, **changes)
            return self._state

    # --- event loop side -------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.done = asyncio.Event()
        self._loop = loop
        self.thread.start()

    @property
    def _needs_key(self) -> bool:
        """Whether a connection starts at a video key frame (else at any audio packet)."""
        return "video" in self.headers

    def offer(self, item: EncodedPacket) -> None:
        if self._stop.is_set() or self._finalised:
            return
        if self._resync:
            if self._needs_key and not (item.kind == "video" and item.packet.is_keyframe):
                self._count_drop()
                return
            self._resync = False
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._count_drop()
            self._resync = True

    def _count_drop(self) -> None:
        with self._lock:
            self._state = replace(self._state, dropped_packets=self._state.dropped_packets + 1)

    def request_stop(self) -> None:
        self._stop.set()
        while True:
            try:
                self._queue.put_nowait(_STOP)
                return
            except queue.Full:
                self._discard_queued()

    def give_up(self, reason: str) -> StreamState:
        """The thread did not finish in time: report FAILED now and leave it behind."""
        with self._lock:
            if not self._finalised:
                self._state = replace(
                    self._state,
                    status=StreamStatus.FAILED,
                    ended_at_ns=time.time_ns(),
                    error=reason,
                )
                self._finalised = True
            return self._state

    # --- writer thread ---------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        try:
            while (item := self._queue.get()) is not _STOP:
                try:
                    if self._container is None and not self._connect_at(item):
                        continue
                    sent = self._write(item)
                except Exception as exc:  # network and muxer errors alike: reconnect
                    self._drop_connection()
                    failures += 1
                    if failures > len(self.retry.delays):
                        log.warning(
                            "stream %s failed: %s", mask_url(self.url), _describe(exc, self.url)
                        )
                        self.finish(StreamStatus.FAILED, STREAM_FAILED)
                        return
                    self._backoff(exc, self.retry.delays[failures - 1])
                    continue
                if failures or not self.state.started_at_ns:
                    failures = 0
                    self._publish(
                        self._update(started_at_ns=self.state.started_at_ns or time.time_ns())
                    )
                self._update(bytes_sent=self.state.bytes_sent + sent)
            self._drop_connection()
            self.finish(StreamStatus.FINISHED, self.state.error)
        except Exception:  # a bug must not kill the thread silently
            log.exception("stream writer for %s failed", mask_url(self.url))
            self.finish(StreamStatus.FAILED, STREAM_FAILED)
        finally:
            self._drop_connection()
            self._signal_done()

    def _connect_at(self, item: EncodedPacket) -> bool:
        """Open the destination at a key frame (or any audio packet when there is no video)."""
        if self._needs_key and not (item.kind == "video" and item.packet.is_keyframe):
            return False
        address, port = self._preflight()
        target: Any = self.url
        if self.url.lower().startswith("srt://"):
            # MPEG-TS is muxed straight into libsrt: no sender process, no secret in argv.
            target = self._srt = srt.SrtCaller(self.url, address, port)
        container = av.open(target, "w", format=self.format, options=FORMAT_OPTIONS[self.format])
        try:
            self._streams = {kind: h.add_to(container) for kind, h in self.headers.items()}
        except Exception:
            container.close()
            raise
        self._container = container
        packet = item.packet
        self._offset = Fraction(packet.pts or 0) * (packet.time_base or Fraction(1))
        return True

    def _preflight(self) -> tuple[str, int]:
        """Resolve the destination (checked against the network policy) and reach RTMP hosts.

        Every address a caller's host resolves to is checked; SRT connects to
        the checked address itself. FFmpeg's own RTMP connect runs while PyAV
        holds the interpreter lock, so an unreachable host would freeze the
        whole process; a bounded TCP connect fails fast instead. Returns the
        address and port.
        """
        parts = urlsplit(self.url)
        scheme = parts.scheme.lower()
        host = parts.hostname or ""
        port = parts.port or DEFAULT_PORTS.get(scheme, 0)
        socktype = socket.SOCK_DGRAM if scheme == "srt" else socket.SOCK_STREAM
        if self.network is not None:
            infos = self.network.resolve(host, port, socktype)
        else:
            infos = socket.getaddrinfo(host, port, type=socktype)
        address = infos[0][4][0]
        if scheme in DEFAULT_PORTS:
            socket.create_connection((address, port), timeout=CONNECT_TIMEOUT_S).close()
        return address, port

    def _write(self, item: EncodedPacket) -> int:
        assert self._container is not None
        if item.kind not in self._streams:
            return 0
        if item.seconds < self._offset:
            return 0  # from before this connection's first key frame
        packet = private_packet(item.packet, self._streams[item.kind], shift=self._offset)
        self._container.mux(packet)
        return packet.size

    def _drop_connection(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()
            except Exception as exc:  # the peer is gone; nothing left to flush
                log.debug("closing stream %s: %s", mask_url(self.url), _describe(exc, self.url))
        caller, self._srt = self._srt, None
        if caller is not None:
            try:
                caller.finish()
            except OSError as exc:
                log.debug("closing stream %s: %s", mask_url(self.url), _describe(exc, self.url))

    def abort(self) -> None:
        """Unblock a writer stuck on a hung destination, where that is possible (SRT)."""
        caller = self._srt
        if caller is not None:
            caller.abort()

    def _backoff(self, exc: Exception, delay: float) -> None:
        state = self._update(retries=self.state.retries + 1, error=STREAM_FAILED)
        log.info(
            "stream %s lost (%s); retry %d in %.1f s",
            state.safe_url,
            _describe(exc, self.url),
            state.retries,
            delay,
        )
        self._publish(state)
        if self._stop.wait(delay):
            return
        self._discard_queued()  # stale by now: resume with fresh packets at a key frame
        self._on_loop(self._ask_key_frame)

    def _discard_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is _STOP:
                self._queue.put_nowait(_STOP)
                return
            self._count_drop()

    def finish(self, status: StreamStatus, error: str = "") -> None:
        """Record the final status once (later calls change nothing) and announce it."""
        with self._lock:
            if self._finalised:
                return
            self._state = replace(
                self._state, status=status, ended_at_ns=time.time_ns(), error=error
            )
            self._finalised = True
            state = self._state
        self._publish(state)

    def _publish(self, state: StreamState) -> None:
        self._on_loop(self._notify, state)

    def _on_loop(self, callback: Callable[..., None], *args: Any) -> None:
        if self._loop is None:  # never started: we are on the loop thread
            callback(*args)
            return
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is gone; nobody is listening any more
            pass

    def _signal_done(self) -> None:
        if self.done is not None and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self.done.set)
            except RuntimeError:
                pass


class StreamSink(Stage):
    """Streams the packets on its input to every URL; `add_url`/`remove_url` while running.

    Posts `StreamStateChanged` on every change of a URL. It never fails the
    graph because of a destination: a URL that cannot be reached ends FAILED
    and the other outputs go on. On end of stream every writer gets
    `close_timeout` seconds to flush and close. A writer that needs a key
    frame (a URL added, a connection lost) sends a KeyFrameRequest up the
    input link.
    """

    def __init__(
        self,
        urls: Sequence[str] = (),
        *,
        retry: ReconnectPolicy = ReconnectPolicy(),
        queue_packets: int = URL_QUEUE_PACKETS,
        close_timeout: float = 5.0,
        network: NetworkPolicy | None = None,
        name: str | None = None,
    ) -> None:
        """`network`: where URLs a caller named may connect (None for the operator's own)."""
        super().__init__(name)
        self.retry = retry
        self.queue_packets = queue_packets
        self.close_timeout = close_timeout
        self.network = network
        self.input: InputPort[EncodedItem] = self.add_input("input")
        self._packets = EncodedInput(self.input)  # its headers are shared with every writer
        self._writers: dict[str, _UrlWriter] = {}
        self._ended: list[StreamState] = []  # removed URLs, for results
        self._loop: asyncio.AbstractEventLoop | None = None
        for url in urls:
            self.add_url(url)

    # --- control (event loop) ----------------------------------------------------

    def add_url(self, url: str) -> StreamState:
        """Start streaming to one more URL (at the next key frame); ValueError if already there."""
        current = self._writers.get(url)
        if current is not None and current.state.status is StreamStatus.ACTIVE:
            raise ValueError(f"already streaming to {mask_url(url)}")
        writer = _UrlWriter(
            url,
            self._packets.headers,
            self.retry,
            self.queue_packets,
            self._on_state,
            self._ask_key_frame,
            self.network,
        )
        if current is not None:
            self._ended.append(current.state)
        self._writers[url] = writer
        if self._loop is not None:
            writer.start(self._loop)
            self._ask_key_frame()  # start the new destination now, not a GOP later
        self._on_state(writer.state)
        return writer.state

    async def remove_url(self, url: str) -> StreamState:
        """Stop streaming to `url` (bounded by `close_timeout`); KeyError if it is not streamed."""
        writer = self._writers.get(url)
        if writer is None:
            raise KeyError(f"not streaming to {mask_url(url)}")
        return await self._stop_writer(writer)

    @property
    def states(self) -> list[StreamState]:
        """Every URL this sink has streamed to, removed ones included, in order of addition."""
        return self._ended + [w.state for w in self._writers.values()]

    def state(self, url: str) -> StreamState:
        return self._writers[url].state

    @property
    def all_failed(self) -> bool:
        """Every URL streamed to has failed (a stream-only egress then fails)."""
        states = self.states
        return bool(states) and all(s.status is StreamStatus.FAILED for s in states)

    # --- stage ---------------------------------------------------------------------

    def _ask_key_frame(self) -> None:
        self.input.send_upstream(KeyFrameRequest())

    async def run(self) -> None:
        await self._packets.read_headers()
        if not self._packets.headers:
            raise ValueError(f"{self.name}: no encoded stream reached the stream sink")
        self._loop = asyncio.get_running_loop()
        for writer in self._writers.values():
            if writer.done is None:
                writer.start(self._loop)
        while (item := await self._packets.recv()) is not EOS:
            for writer in list(self._writers.values()):
                writer.offer(item)
        await asyncio.gather(*(self._stop_writer(w) for w in list(self._writers.values())))

    async def _stop_writer(self, writer: _UrlWriter) -> StreamState:
        writer.request_stop()
        if writer.done is not None:
            try:
                await asyncio.wait_for(writer.done.wait(), self.close_timeout)
            except TimeoutError:
                state = writer.give_up(f"did not close within {self.close_timeout:.0f} s")
                writer.abort()
                log.warning("stream %s: %s", state.safe_url, state.error)
                self._on_state(state)
        else:
            writer.finish(StreamStatus.FINISHED)
        return writer.state

    async def cleanup(self) -> None:
        for writer in self._writers.values():
            writer.request_stop()  # cancelled graph: threads finish on their own

    def release(self) -> None:
        """The headers keep their encoders' codec contexts alive (through the template
        streams); the writers share the same dict."""
        self._packets.headers.clear()

    def _on_state(self, state: StreamState) -> None:
        self.post(StreamStateChanged(self, state))

    def stats(self) -> dict[str, Any]:
        return {
            s.safe_url: {
                "status": s.status.value,
                "dropped": s.dropped_packets,
                "bytes": s.bytes_sent,
            }
            for s in self.states
        }
