"""The receive path reads sockets on a tick, and each packet keeps the kernel's arrival time."""

from __future__ import annotations

import asyncio
import socket
import time
from types import SimpleNamespace
from typing import Any

import pylibsrtp
from aiortc.rtp import RtpPacket

from egresskit.rooms import arrival, intake
from egresskit.rooms.srtp import Unprotect

KEY = bytes(range(30))  # AES-CM-128 key + salt, both ends
LATE_S = 0.15  # how long after arriving the datagrams are read


class _Recording(intake._Reader):
    """A reader that notes what it would hand on instead of routing it."""

    __slots__ = ("seen",)

    def _srtp_received(self, unprotect: Unprotect, data: bytes, arrival_ms: int) -> None:
        length = unprotect(data)
        packet = RtpPacket.parse(bytes(unprotect.view[:length]))
        self.seen.append((packet.sequence_number, arrival_ms, arrival.now()))


class _Aioice:
    def __init__(self) -> None:
        self.datagrams: list[bytes] = []
        self.received = asyncio.Event()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.datagrams.append(data)
        self.received.set()

    def error_received(self, exc: Exception) -> None:
        raise exc


def _session(direction: int) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(key=KEY, ssrc_type=direction)
    return pylibsrtp.Session(policy=policy)


async def test_a_packet_read_late_keeps_the_kernels_arrival_time():
    receiving = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiving.bind(("127.0.0.1", 0))
    receiving.setblocking(False)
    sending = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        transport = SimpleNamespace(_conn_lost=0, _sock_fd=receiving.fileno())
        dtls = SimpleNamespace(
            _rx_srtp=_session(pylibsrtp.Policy.SSRC_ANY_INBOUND),
            _RTCDtlsTransport__rx_packets=0,
            _RTCDtlsTransport__rx_bytes=0,
        )
        aioice = _Aioice()
        reader = _Recording(dtls, aioice, transport, receiving)  # type: ignore[arg-type]
        reader.seen = []
        # Linux turns receive timestamps on for the host in the background when the first
        # socket asks: a datagram that arrives before that is stamped when it is read
        await asyncio.sleep(0.1)
        protect = _session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        sent = []
        for seq in range(3):
            packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=seq, ssrc=7)
            packet.payload = b"frame"
            before = time.monotonic()
            sending.sendto(protect.protect(packet.serialize()), receiving.getsockname())
            sent.append((before, time.monotonic()))
            await asyncio.sleep(0.05)
        sending.sendto(b"\x00\x01 a STUN message", receiving.getsockname())
        await asyncio.sleep(LATE_S)

        reader(intake._TickClock())
        read_at = time.monotonic()

        assert [seq for seq, _, _ in reader.seen] == [0, 1, 2]
        assert aioice.datagrams == [b"\x00\x01 a STUN message"]  # not SRTP: aioice's
        assert dtls._RTCDtlsTransport__rx_packets == 3
        for (_, _, arrived), (before, after) in zip(reader.seen, sent, strict=True):
            # loopback delivers within sendto; the read came LATE_S after the last one
            assert before - 0.005 <= arrived <= after + 0.005, (arrived - before, read_at - before)
        for (_, earlier_ms, _), (_, later_ms, _), (sent_1, _), (sent_2, _) in zip(
            reader.seen, reader.seen[1:], sent, sent[1:], strict=False
        ):  # on aiortc's ms clock as well
            assert abs(later_ms - earlier_ms - (sent_2 - sent_1) * 1000) <= 6
        assert arrival.now() >= read_at  # outside a read: the clock
    finally:
        receiving.close()
        sending.close()


async def test_the_tick_reads_a_socket_until_it_closes():
    receiving = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiving.bind(("127.0.0.1", 0))
    receiving.setblocking(False)
    sending = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    transport = SimpleNamespace(_conn_lost=0, _sock_fd=receiving.fileno())
    dtls = SimpleNamespace(
        _rx_srtp=None, _RTCDtlsTransport__rx_packets=0, _RTCDtlsTransport__rx_bytes=0
    )
    aioice = _Aioice()
    ticker = intake._Ticker()
    ticker.add(intake._Reader(dtls, aioice, transport, receiving))  # type: ignore[arg-type]
    try:
        sending.sendto(b"\x00\x01 consent", receiving.getsockname())
        await asyncio.wait_for(aioice.received.wait(), 2)
        assert aioice.datagrams == [b"\x00\x01 consent"]
    finally:
        transport._conn_lost = 1
        receiving.close()
        sending.close()
    assert ticker._task is not None
    await asyncio.wait_for(ticker._task, 2)  # nothing left to read: the tick stops
