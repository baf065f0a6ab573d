"""Received SRTP handled where it is read: several datagrams per wakeup, no queue or task hop.

aiortc receives through aioice: asyncio's datagram transport reads one
datagram per readiness event, aioice tries to parse each one as STUN (an
exception for every RTP packet) and puts it on a queue, and the DTLS
transport's task wakes up to take it, unprotect it and hand it to the RTP
receiver's coroutine. Measured with 20 passthrough track egresses, that
per-datagram machinery cost about as much as SRTP and RTP parsing together.

`install(pc)` replaces it, for each ICE socket of a receiving peer
connection, once its DTLS transport is connected (SRTP keys known): one
reader reads every datagram waiting (up to `MAX_DATAGRAMS_PER_WAKEUP`),
unprotects SRTP and SRTCP itself and calls the receiver's handlers at once.
A tapped receiver's media packets are unprotected in a reused buffer
(`egresskit.rooms.srtp.Unprotect`) and handled there by
`egresskit.rooms.media_packets.ReceiverPackets`, found by SSRC once aiortc's
router has routed that SSRC's first packet; the rest take aiortc's parser
and receiver coroutine. Everything else (STUN consent checks, DTLS) goes to aioice as before, and
on to the DTLS transport's own task.

It reaches into, besides aiortc's receiver (see `egresskit.rooms.encoded`
and `egresskit.rooms.media_packets`):

- asyncio's selector datagram transport: `_sock`, `_sock_fd` and
  `_conn_lost`, and the selector loop's `_remove_reader`/`_add_reader`
  (which the transport itself uses); replacing the reader on that fd keeps
  `close()` working (it removes whatever reader the fd has);
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
import logging
import socket
import struct
from typing import Any
from weakref import WeakSet

import pylibsrtp
from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import RTCDtlsTransport, State
from aiortc.rtp import RtpPacket

from egresskit.rooms.eager import run_now
from egresskit.rooms.media_packets import ReceiverPackets, now_ms
from egresskit.rooms.srtp import Unprotect

log = logging.getLogger(__name__)

# Datagrams read per readiness event: a burst of several tracks' frames, and
# a bound on how long one socket keeps the loop from everything else.
MAX_DATAGRAMS_PER_WAKEUP = 64
_MAX_DATAGRAM = 1 << 16
_SSRC = struct.Struct("!I")  # at offset 8 of an RTP header

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
    for protocol in list(getattr(dtls.transport._connection, "_protocols", [])):
        transport = getattr(protocol, "transport", None)
        sock: socket.socket | None = getattr(transport, "_sock", None)
        if transport is None or sock is None or transport.is_closing():
            continue
        fd = transport._sock_fd
        # the private forms: the public ones refuse an fd that a transport owns
        loop._remove_reader(fd)  # type: ignore[attr-defined]
        loop._add_reader(fd, _Reader(dtls, protocol, transport, sock))  # type: ignore[attr-defined]


class _Reader:
    """Reads one ICE socket: SRTP to the receivers at once, the rest to aioice."""

    __slots__ = ("_dtls", "_protocol", "_transport", "_sock", "_unprotect", "_handlers")

    def __init__(self, dtls: RTCDtlsTransport, protocol: Any, transport: Any, sock: socket.socket):
        self._dtls = dtls
        self._protocol = protocol
        self._transport = transport
        self._sock = sock
        self._unprotect: Unprotect | None = None
        self._handlers: dict[int, ReceiverPackets] = {}  # by SSRC

    def __call__(self) -> None:
        if self._transport._conn_lost:
            return
        recvfrom, protocol, dtls = self._sock.recvfrom, self._protocol, self._dtls
        srtp = dtls._rx_srtp
        unprotect = self._unprotect
        if srtp is not None and (unprotect is None or unprotect.session is not srtp):
            unprotect = self._unprotect = Unprotect(srtp)
        count = size = 0
        arrival_ms = 0  # when this batch was read: one clock reading for all of it
        try:
            for _ in range(MAX_DATAGRAMS_PER_WAKEUP):
                data, addr = recvfrom(_MAX_DATAGRAM)
                first = data[0] if data else 0
                if 127 < first < 192 and unprotect is not None:
                    if not count:
                        arrival_ms = now_ms()
                    count += 1
                    size += len(data)
                    self._srtp_received(unprotect, data, arrival_ms)
                else:
                    protocol.datagram_received(data, addr)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            protocol.error_received(exc)
        finally:
            dtls._RTCDtlsTransport__rx_packets += count  # type: ignore[attr-defined]
            dtls._RTCDtlsTransport__rx_bytes += size  # type: ignore[attr-defined]

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
