"""Received SRTP handled where it is read: sockets read on a tick, no queue or task hop.

aiortc receives through aioice: asyncio's datagram transport reads one
datagram per readiness event, aioice tries to parse each one as STUN (an
exception for every RTP packet) and puts it on a queue, and the DTLS
transport's task wakes up to take it, unprotect it and hand it to the RTP
receiver's coroutine. Measured with 20 passthrough track egresses, that
per-datagram machinery cost about as much as SRTP and RTP parsing together.

`install(pc)` replaces it, for each ICE socket of a receiving peer
connection, once its DTLS transport is connected (SRTP keys known). Every
`RECEIVE_TICK_S` one task per event loop reads every such socket that has
data, all of it (up to `MAX_DATAGRAMS_PER_READ`), unprotects SRTP and SRTCP
itself and calls the receiver's handlers at once. Not on each readiness
event: the loop woke ~280 times a second for ~600 packets of a live 2x2
composite, each wakeup with cold caches, and the reader cost ~500 us per
wakeup. Measured on bench/live_composite.py, the recording process's event
loop used 0.18-0.195 core read every 30 ms, 0.20-0.21 every 20 ms, and
0.26-0.28 every 5 ms as on readiness.

A socket whose video waits for a missing packet (`encoded._VideoFrames`:
a NACK asked for it again) is read on readiness as well until the hole
is filled or given up: a retransmission read up to a tick late ate into
the wait, and with 100 ms of jitter and 2 % loss a flash came two frames
late in a lip-sync test read every 30 ms (never on readiness).

Each datagram keeps its own arrival time, the kernel's receive timestamp
(SO_TIMESTAMPNS): the bandwidth estimate, the receiver statistics (jitter)
and the tracks' timelines (`egresskit.rooms.arrival`) see when it arrived,
not when the tick read it.

A tapped receiver's media packets are unprotected in a reused buffer
(`egresskit.rooms.srtp.Unprotect`) and handled there by
`egresskit.rooms.media_packets.ReceiverPackets`, found by SSRC once aiortc's
router has routed that SSRC's first packet; the rest take aiortc's parser
and receiver coroutine. Everything else (STUN consent checks, DTLS) goes to
aioice as before, and on to the DTLS transport's own task.

It reaches into, besides aiortc's receiver (see `egresskit.rooms.encoded`
and `egresskit.rooms.media_packets`):

- asyncio's selector datagram transport: `_sock`, `_sock_fd` and
  `_conn_lost`, and the selector loop's `_add_reader`/`_remove_reader`
  (which the transport itself uses; its `close()` still closes the socket
  and removes a readiness reader, and the tick forgets a socket whose
  transport lost its connection);
- aioice: `Connection._protocols` (one `StunProtocol` per local candidate,
  with its `transport`) and `StunProtocol.datagram_received`/`error_received`;
- aiortc's `RTCDtlsTransport`: `_rx_srtp` (pylibsrtp session),
  `_rtp_header_extensions_map`, `_rtp_router.route_rtp`,
  `_handle_rtcp_data(data)` and the receiver's
  `_handle_rtp_packet(packet, arrival_time_ms)` coroutines, and its counters
  `_RTCDtlsTransport__rx_bytes`/`__rx_packets` (its transport stats).

The receiver coroutines do not suspend (their only awaits send RTCP, which
aioice does at once): `egresskit.rooms.eager.run_now` runs them in the reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import selectors
import socket
import struct
import sys
import time
from typing import Any
from weakref import WeakKeyDictionary, WeakSet

import pylibsrtp
from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import RTCDtlsTransport, State
from aiortc.rtp import RtpPacket

from egresskit.rooms import arrival
from egresskit.rooms.eager import run_now
from egresskit.rooms.media_packets import ReceiverPackets, now_ms
from egresskit.rooms.srtp import Unprotect

log = logging.getLogger(__name__)

# How often the sockets are read (see the module docstring); one with a hole waited
# for is read on readiness too.
RECEIVE_TICK_S = 0.03
# Datagrams read from one socket per tick: a tick of a ~100 Mbps sender, and a bound
# on how long one socket keeps the loop from everything else.
MAX_DATAGRAMS_PER_READ = 256
# What a socket may hold between two reads (asked for; the kernel caps it at net.core.rmem_max).
RECEIVE_BUFFER_BYTES = 1 << 20
_MAX_DATAGRAM = 1 << 16
_SSRC = struct.Struct("!I")  # at offset 8 of an RTP header
# The kernel's receive timestamp of each datagram (Linux: SO_TIMESTAMPNS, a struct timespec).
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35 if sys.platform == "linux" else None)
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY_SIZE = socket.CMSG_SPACE(_TIMESPEC.size)

_installed: WeakSet[RTCDtlsTransport] = WeakSet()


def install(pc: RTCPeerConnection) -> None:
    """Read `pc`'s received media in batches once DTLS is up (now if it is; idempotent)."""
    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport
        if dtls is None or dtls in _installed:
            continue
        _installed.add(dtls)
        if dtls._state == State.CONNECTED:
            _take_over(dtls)
            continue

        def connected(dtls: RTCDtlsTransport = dtls) -> None:
            if dtls._state == State.CONNECTED:
                dtls.remove_listener("statechange", connected)
                _take_over(dtls)
            elif dtls._state in (State.CLOSED, State.FAILED):
                dtls.remove_listener("statechange", connected)

        dtls.on("statechange", connected)


def _take_over(dtls: RTCDtlsTransport) -> None:
    loop = asyncio.get_running_loop()
    ticker = _tickers.get(loop)
    if ticker is None:
        ticker = _tickers[loop] = _Ticker()
    for protocol in list(getattr(dtls.transport._connection, "_protocols", [])):
        transport = getattr(protocol, "transport", None)
        sock: socket.socket | None = getattr(transport, "_sock", None)
        if transport is None or sock is None or transport.is_closing():
            continue
        loop._remove_reader(transport._sock_fd)  # type: ignore[attr-defined]
        ticker.add(_Reader(dtls, protocol, transport, sock))


class _TickClock:
    """The clocks read once per tick, to place each datagram's kernel timestamp on them."""

    __slots__ = ("unix", "ms", "monotonic_offset")

    def __init__(self) -> None:
        self.unix = time.time()
        self.ms = now_ms()  # aiortc's arrival clock (ms since 1900)
        self.monotonic_offset = time.monotonic() - self.unix


class _Ticker:
    """Reads the taken-over sockets of one event loop that have data, every RECEIVE_TICK_S."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._task: asyncio.Task[None] | None = None

    def add(self, reader: _Reader) -> None:
        self._forget_closed()  # a closed socket's descriptor may be this one's
        self._selector.register(reader.fd, selectors.EVENT_READ, reader)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    def _forget_closed(self) -> None:
        for key in list(self._selector.get_map().values()):
            if key.data.closed:
                self._selector.unregister(key.fd)

    async def _run(self) -> None:
        while True:
            self._forget_closed()
            if not self._selector.get_map():
                return  # a later socket starts the tick again
            await asyncio.sleep(RECEIVE_TICK_S)
            ready = self._selector.select(0)
            if not ready:
                continue
            clock = _TickClock()
            for key, _ in ready:
                try:
                    key.data(clock)
                except Exception:
                    log.exception("reading %s failed", key.data)


_tickers: WeakKeyDictionary[asyncio.AbstractEventLoop, _Ticker] = WeakKeyDictionary()


class _Reader:
    """Reads one ICE socket: SRTP to the receivers at once, the rest to aioice."""

    __slots__ = (
        "_dtls", "_protocol", "_transport", "_sock", "_unprotect", "_handlers", "fd",
        "_on_readiness",
    )  # fmt: skip

    def __init__(self, dtls: RTCDtlsTransport, protocol: Any, transport: Any, sock: socket.socket):
        self._dtls = dtls
        self._protocol = protocol
        self._transport = transport
        self._sock = sock
        self.fd: int = transport._sock_fd
        self._unprotect: Unprotect | None = None
        self._handlers: dict[int, ReceiverPackets] = {}  # by SSRC
        self._on_readiness = False  # also read as soon as data comes (a hole waited for)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        if _SO_TIMESTAMPNS is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            except OSError as exc:  # then a datagram's arrival is when the tick read it
                log.debug("no receive timestamps on %s: %s", sock, exc)

    @property
    def closed(self) -> bool:
        return bool(self._transport._conn_lost) or self._sock.fileno() != self.fd

    def __repr__(self) -> str:
        return f"_Reader(fd={self.fd})"

    def __call__(self, clock: _TickClock) -> None:
        if self._transport._conn_lost:
            return
        recvmsg, protocol, dtls = self._sock.recvmsg, self._protocol, self._dtls
        srtp = dtls._rx_srtp
        unprotect = self._unprotect
        if srtp is not None and (unprotect is None or unprotect.session is not srtp):
            unprotect = self._unprotect = Unprotect(srtp)
        count = size = 0
        try:
            for _ in range(MAX_DATAGRAMS_PER_READ):
                data, ancillary, _flags, addr = recvmsg(_MAX_DATAGRAM, _ANCILLARY_SIZE)
                first = data[0] if data else 0
                if 127 < first < 192 and unprotect is not None:
                    count += 1
                    size += len(data)
                    if ancillary:
                        seconds, nanoseconds = _TIMESPEC.unpack(ancillary[0][2])
                        received = seconds + nanoseconds * 1e-9
                    else:
                        received = clock.unix
                    arrival.handling(received + clock.monotonic_offset)
                    arrival_ms = clock.ms - int((clock.unix - received) * 1000)
                    self._srtp_received(unprotect, data, arrival_ms)
                else:
                    protocol.datagram_received(data, addr)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            protocol.error_received(exc)
        finally:
            arrival.handling(None)
            dtls._RTCDtlsTransport__rx_packets += count  # type: ignore[attr-defined]
            dtls._RTCDtlsTransport__rx_bytes += size  # type: ignore[attr-defined]
        self._read_on_readiness(any(handler.waiting for handler in self._handlers.values()))

    def _read_on_readiness(self, wanted: bool) -> None:
        """Read as soon as data comes while a hole is waited for, else on the tick only."""
        if wanted == self._on_readiness or self._transport.is_closing():
            return  # a closing transport has removed the loop's reader itself
        self._on_readiness = wanted
        loop = asyncio.get_running_loop()
        if wanted:
            loop._add_reader(self.fd, self._ready)  # type: ignore[attr-defined]
        else:
            loop._remove_reader(self.fd)  # type: ignore[attr-defined]

    def _ready(self) -> None:
        try:
            self(_TickClock())
        except Exception:
            log.exception("reading %s failed", self)

    def _srtp_received(self, unprotect: Unprotect, data: bytes, arrival_ms: int) -> None:
        """What aiortc's DTLS transport does with an SRTP or SRTCP datagram, without waiting."""
        dtls = self._dtls
        try:
            if len(data) > 1 and 191 < data[1] < 209:  # aiortc's is_rtcp, inline
                run_now(dtls._handle_rtcp_data(unprotect.session.unprotect_rtcp(data)))
                return
            length = unprotect(data)
        except pylibsrtp.Error as exc:
            log.debug("SRTP unprotect failed: %s", exc)
            return
        view = unprotect.view
        handler = self._handlers.get(_SSRC.unpack_from(view, 8)[0]) if length >= 12 else None
        if handler is not None and handler.handle(view, length, arrival_ms):
            return
        try:
            packet = RtpPacket.parse(bytes(view[:length]), dtls._rtp_header_extensions_map)
        except ValueError as exc:
            log.debug("RTP parsing failed: %s", exc)
            return
        receiver = dtls._rtp_router.route_rtp(packet)
        if receiver is None:
            return
        run_now(receiver._handle_rtp_packet(packet, arrival_time_ms=arrival_ms))
        if handler is None or handler.receiver is not receiver:
            handler = ReceiverPackets.of(dtls, receiver, packet.ssrc, packet.payload_type)
            if handler is not None:
                self._handlers[packet.ssrc] = handler
