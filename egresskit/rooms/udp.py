"""Room in the kernel for media that arrives while the event loop is busy.

A WHIP peer connection receives on aioice's UDP sockets, read by the event
loop one datagram at a time. Linux's default receive buffer (208 KiB, about
a second of one 1 Mbps track) overflows whenever the loop is held up a
little longer, and the kernel then drops what arrives: lost packets, NACKs,
retransmissions and key frame requests, which load the loop further.
`enlarge_receive_buffers` gives each socket up to `RECEIVE_BUFFER_BYTES`
(the kernel caps it at net.core.rmem_max).

It reaches the sockets through aiortc's `RTCIceTransport._connection` (the
aioice `Connection`) and aioice's `Connection._protocols` (one datagram
protocol per local candidate).
"""

from __future__ import annotations

import logging
import socket

from aiortc import RTCPeerConnection

log = logging.getLogger(__name__)

RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024


def enlarge_receive_buffers(pc: RTCPeerConnection, size: int = RECEIVE_BUFFER_BYTES) -> None:
    """Ask for `size` bytes of receive buffer on every UDP socket of `pc`'s ICE transports."""
    for transceiver in pc.getTransceivers():
        ice = transceiver.receiver.transport.transport
        for protocol in getattr(ice._connection, "_protocols", []):
            transport = getattr(protocol, "transport", None)
            sock = transport.get_extra_info("socket") if transport is not None else None
            if sock is None:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
            except OSError as exc:
                log.debug("cannot enlarge a receive buffer: %s", exc)
