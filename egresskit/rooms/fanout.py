"""One room track's encoded frames sent to many WebRTC viewers: packetized once, sent per viewer.

Why not aiortc's `RTCRtpSender`: per viewer it packetizes every frame again,
then builds an `RtpPacket` for each packet, reads the wall clock twice
through `datetime`, serializes header extensions and awaits four coroutines
down to the socket. Ten WHEP viewers of one 720p track (2.5 Mbps, about
2,800 packets a second in all) cost the service 0.11-0.24 core that way on
a busy 2-core machine (bench/whep_viewers.py). Here a `TrackFanout`
packetizes a frame once (H.264 fragments of one size, `_EqualFragments`),
and an `egresskit.rooms.srtp.FrameBuffer` lays its packets out once: the
payloads back to back, with room for each one's RTP header (whose
extensions are the same on every packet: the stream's MID) and SRTP
trailer. For each viewer's `ViewerStream` it copies them in at once, writes
the headers and protects the packets in place with the viewer's SRTP
session, and the socket gets the frame in one system call per slice
(`egresskit.rooms.udp.DatagramSender`, UDP GSO). In-process, with loopback
receivers at load 2-3, that costs 7-10 µs of CPU per packet and viewer,
about half of it libsrtp and most of the rest the kernel's sends (on
loopback they include the delivery to the viewer); with a header, payload
copy and size per packet and aiortc's fragments (two sizes per slice) it
was 8-11 µs (in the bench at load 6-8: 13 µs, and 21 µs with a `bytes`
object per packet and pylibsrtp's `Session.protect`). The bench sees about
twice the in-process figure per packet in the service (RTCP, ICE and the
event loop besides). No abs-send-time is sent: it only feeds the viewer's bandwidth
estimate, which a passthrough sender cannot act on.

aiortc still does SDP, ICE, DTLS and the SRTP keys, and parses the
viewer's RTCP, which it routes by SSRC to the stream: a NACK retransmits
from the stream's history (the payloads of the last frames sent, about 2 s;
as RTX when negotiated); PLI and FIR ask the
publisher for a key frame; receiver reports and REMB are not acted on.
Each stream sends a sender report (RFC 3550 section 6.4.1) about once a
second that pairs a frame's RTP timestamp with its capture time, so a
viewer lines audio up with video as the publisher captured them.

aiortc and aioice internals touched (aiortc 1.16, aioice 0.13), besides the
public `RtpPacket`, `HeaderExtensionsMap`, `wrap_rtx` and RTCP packet classes:

- `RTCRtpSender.send`, replaced on the instance by `ViewerStream.start`;
  aiortc calls it once DTLS is connected, with the negotiated parameters,
  so aiortc's own RTP and RTCP tasks for that sender never start (and its
  `stop()` has nothing to stop);
- `RTCRtpSender._ssrc` and `_rtx_ssrc`, the SSRCs its SDP announced;
- aiortc's packetizers `Vp8Encoder._packetize` and
  `H264Encoder._split_bitstream` / `_packetize`, whose call of
  `_packetize_fu_a` a subclass overrides (no codec is created);
- `RTCDtlsTransport._register_rtp_sender` / `_unregister_rtp_sender`
  (RTCP routing by SSRC: any object with `_ssrc` and a coroutine
  `_handle_rtcp_packet`) and `_tx_srtp` (the pylibsrtp session for sending,
  whose own internals `egresskit.rooms.srtp` lists);
- aioice's `Connection._nominated[1]` (through `RTCIceTransport._connection`):
  the selected candidate pair, whose `protocol.transport` (an asyncio
  datagram transport, whose socket is duplicated) and `remote_addr` are
  where packets go. Only UDP host candidates exist here: WHEP peer
  connections have no ICE servers.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import struct
import time
from collections import deque

from aiortc import RTCRtpSender
from aiortc.clock import current_ntp_time
from aiortc.codecs import is_rtx
from aiortc.codecs.h264 import FU_A_HEADER_SIZE, NAL_TYPE_FU_A, PACKET_MAX, H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtcrtpparameters import RTCRtpSendParameters
from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    AnyRtcpPacket,
    HeaderExtensionsMap,
    RtcpByePacket,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    RtpPacket,
    wrap_rtx,
)

from egresskit.pipeline.link import EOS, Link
from egresskit.rooms.encoded import EncodedFrame
from egresskit.rooms.local import LocalTrack
from egresskit.rooms.srtp import FrameBuffer
from egresskit.rooms.udp import DatagramSender

log = logging.getLogger(__name__)

# Packets a stream keeps for retransmission: about 2 s of 720p at 2.5 Mbps
# (aiortc keeps 128, less than one such key frame and what follows it).
HISTORY = 512
REPORT_INTERVAL_S = 1.0
_HEAD = struct.Struct("!BBHI")  # first byte, marker + payload type, sequence number, timestamp
_NTP_UNIT = 1 << 32


class _EqualFragments(H264Encoder):
    """aiortc's H.264 packetizer (single NAL units, STAP-A), with FU-A fragments of one size.

    aiortc cuts a large NAL unit into fragments one byte apart in size (the
    first ones a byte longer), so a slice's packets are two runs of equal
    size, two `sendmsg` with UDP GSO per slice and viewer
    (`egresskit.rooms.udp.DatagramSender`). Here every fragment but the
    last has the same size and the last is shorter or equal: one run, one
    `sendmsg`. The count of fragments is aiortc's (none over PACKET_MAX).
    Only the classmethods are used: no codec is built.
    """

    @staticmethod
    def _packetize_fu_a(data: bytes) -> list[bytes]:
        """RFC 6184 section 5.8: the NAL header's F and NRI in the FU indicator, its type in
        the FU header, with the start bit on the first fragment and the end bit on the last."""
        payload = len(data) - 1
        size = math.ceil(payload / math.ceil(payload / (PACKET_MAX - FU_A_HEADER_SIZE)))
        indicator = (data[0] & 0xE0) | NAL_TYPE_FU_A
        nal_type = data[0] & 0x1F
        starts = range(1, len(data), size)
        return [
            bytes((indicator, nal_type | (start == 1) << 7 | (start == starts[-1]) << 6))
            + data[start : start + size]
            for start in starts
        ]


class Packetizer:
    """RTP payloads of already encoded frames, with aiortc's packetizers (no codec is built)."""

    def __init__(self, mime_type: str) -> None:
        self.mime_type = mime_type.lower()
        if self.mime_type not in ("video/vp8", "video/h264", "audio/opus"):
            raise ValueError(f"cannot send {mime_type} without transcoding")
        self._picture_id = secrets.randbelow(1 << 15)
        self.frames = 0

    def pack(self, frame: EncodedFrame) -> list[bytes]:
        """The frame's RTP payloads, in order."""
        self.frames += 1
        if self.mime_type == "video/vp8":
            payloads = Vp8Encoder._packetize(frame.data, self._picture_id)
            self._picture_id = (self._picture_id + 1) % (1 << 15)
            return payloads
        if self.mime_type == "video/h264":
            return _EqualFragments._packetize(_EqualFragments._split_bitstream(frame.data))
        return [frame.data]


class OutgoingFrame:
    """One frame's RTP payloads as every viewer of the track gets them."""

    def __init__(self, payloads: list[bytes], timestamp: int, keyframe: bool) -> None:
        self.payloads = payloads
        self.timestamp = timestamp
        self.keyframe = keyframe
        self.size = sum(map(len, payloads))


class ViewerStream:
    """One viewer's RTP stream of a fanned-out track, sent through its aiortc sender's transport."""

    def __init__(self, sender: RTCRtpSender, fanout: TrackFanout) -> None:
        self._sender = sender
        self._fanout = fanout
        self._ssrc: int = sender._ssrc  # read by aiortc's RTCP router
        self._rtx_ssrc: int = sender._rtx_ssrc
        self._sequence = secrets.randbelow(1 << 15)  # low half: no early wrap (as aiortc)
        self._rtx_sequence = secrets.randbelow(1 << 15)
        self._timestamp_origin = secrets.randbits(32)
        # frames sent, newest last, while they hold at most HISTORY packets:
        # (first sequence number, RTP timestamp, payloads)
        self._history: deque[tuple[int, int, list[bytes]]] = deque()
        self._history_packets = 0
        self._extensions = HeaderExtensionsMap()
        self._first_byte = 0
        self._payload_type = 0
        self._rtx_payload_type: int | None = None
        self._tail = b""  # header after the timestamp: SSRC and extensions
        self._header = _HEAD  # the whole header, the tail as its last field
        self._cname = ""
        self._dtls = sender.transport  # until started: BUNDLE may give the sender another
        self._pair: object | None = None  # aioice's selected candidate pair, when last looked at
        self._sender_socket: DatagramSender | None = None
        self.started = False
        self.synced = False  # a key frame was sent: frames from here on decode
        self.last_timestamp = 0  # RTP timestamp of the last frame sent
        self.packets = 0
        self.octets = 0
        sender.send = self.start  # type: ignore[method-assign]

    async def start(self, parameters: RTCRtpSendParameters) -> None:
        """Called by aiortc in place of `RTCRtpSender.send`: the stream may send from now on."""
        if self.started or self._fanout.ended:
            return
        codec = parameters.codecs[0]
        assert codec.payloadType is not None  # negotiated codecs have their payload type
        self._payload_type = codec.payloadType
        for other in parameters.codecs:
            if is_rtx(other) and other.parameters.get("apt") == codec.payloadType:
                self._rtx_payload_type = other.payloadType
        self._extensions.configure(parameters)
        self._cname = parameters.rtcp.cname or ""
        template = RtpPacket(payload_type=self._payload_type, ssrc=self._ssrc)
        template.extensions.mid = parameters.muxId
        header = template.serialize(self._extensions)
        self._first_byte, self._tail = header[0], header[8:]
        self._header = struct.Struct(f"{_HEAD.format}{len(self._tail)}s")
        self._dtls = self._sender.transport
        self._dtls._register_rtp_sender(self, parameters)
        self.started = True
        self._fanout.attach(self)

    def close(self) -> None:
        """Stop sending (the peer connection is closing or gone)."""
        if self.started:
            self._dtls._unregister_rtp_sender(self)
        self.started = False
        if self._sender_socket is not None:
            self._sender_socket.close()
            self._pair = self._sender_socket = None
        self._fanout.remove(self)

    def _datagrams(self) -> DatagramSender | None:
        """Where to send: the selected candidate pair's socket and address (None: not yet)."""
        pair = self._dtls.transport._connection._nominated.get(1)
        if pair is not self._pair:
            if self._sender_socket is not None:
                self._sender_socket.close()
            self._pair = pair
            self._sender_socket = (
                None if pair is None else DatagramSender(pair.protocol.transport, pair.remote_addr)
            )
        return self._sender_socket

    def send_frame(self, frame: OutgoingFrame, buffer: FrameBuffer) -> bool:
        """Send one frame's packets, protected in `buffer`; False while waiting for a key frame."""
        if not self.synced:
            if not frame.keyframe:
                return False
            self.synced = True
        datagrams = self._datagrams()
        if datagrams is None:
            return True
        timestamp = (self._timestamp_origin + frame.timestamp) & 0xFFFFFFFF
        packed, runs = buffer.protect_frame(
            self._dtls._tx_srtp,
            self._header,
            self._first_byte,
            self._payload_type,
            self._sequence,
            timestamp,
            self._tail,
            frame.payloads,
        )
        datagrams.send(packed, runs)
        self._remember(self._sequence, timestamp, frame.payloads)
        count = len(frame.payloads)
        self._sequence = (self._sequence + count) & 0xFFFF
        self.last_timestamp = timestamp
        self.packets += count
        self.octets += frame.size
        return True

    def _remember(self, sequence: int, timestamp: int, payloads: list[bytes]) -> None:
        """Keep a frame sent for retransmission; forget the oldest beyond HISTORY packets."""
        self._history.append((sequence, timestamp, payloads))
        self._history_packets += len(payloads)
        while self._history_packets > HISTORY:
            self._history_packets -= len(self._history.popleft()[2])

    def _sent_packet(self, sequence: int) -> bytes | None:
        """The RTP packet sent with this sequence number, if still in the history."""
        for first, timestamp, payloads in reversed(self._history):
            index = (sequence - first) & 0xFFFF
            if index < len(payloads):
                marker = 0x80 if index == len(payloads) - 1 else 0
                head = _HEAD.pack(
                    self._first_byte, marker | self._payload_type, sequence, timestamp
                )
                return b"".join((head, self._tail, payloads[index]))
        return None

    def report(self, ntp_timestamp: int, timestamp: int) -> None:
        """Send a sender report: the frame with this (unwrapped) timestamp was captured then."""
        info = RtcpSenderInfo(
            ntp_timestamp=ntp_timestamp,
            rtp_timestamp=(self._timestamp_origin + timestamp) & 0xFFFFFFFF,
            packet_count=self.packets & 0xFFFFFFFF,
            octet_count=self.octets & 0xFFFFFFFF,
        )
        self._send_rtcp(
            RtcpSrPacket(ssrc=self._ssrc, sender_info=info),
            RtcpSdesPacket(
                chunks=[RtcpSourceInfo(ssrc=self._ssrc, items=[(1, self._cname.encode())])]
            ),
        )

    def end(self) -> None:
        """The track ended: say goodbye (RTCP BYE) and stop."""
        if self.started:
            self._send_rtcp(RtcpByePacket(sources=[self._ssrc]))
        self.close()

    def _send_rtcp(self, *packets: AnyRtcpPacket) -> None:
        datagrams = self._datagrams()
        if datagrams is not None:
            datagrams.send_one(self._dtls._tx_srtp.protect_rtcp(b"".join(map(bytes, packets))))

    async def _handle_rtcp_packet(self, packet: AnyRtcpPacket) -> None:
        """The viewer's RTCP for this stream, as aiortc routes it."""
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            for sequence in packet.lost:
                self._retransmit(sequence)
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            self._fanout.request_keyframe()

    def _retransmit(self, sequence: int) -> None:
        packet = self._sent_packet(sequence)
        datagrams = self._datagrams()
        if packet is None or datagrams is None:
            return
        if self._rtx_payload_type is not None:
            rtx = wrap_rtx(
                RtpPacket.parse(packet, self._extensions),
                payload_type=self._rtx_payload_type,
                sequence_number=self._rtx_sequence,
                ssrc=self._rtx_ssrc,
            )
            self._rtx_sequence = (self._rtx_sequence + 1) & 0xFFFF
            packet = rtx.serialize(self._extensions)
        datagrams.send_one(self._dtls._tx_srtp.protect(packet))


class TrackFanout:
    """Reads one track's encoded frames once and sends each to every started `ViewerStream`."""

    def __init__(self, source: LocalTrack) -> None:
        self.source = source
        self.packetizer = Packetizer(source.mime_type)
        self._streams: list[ViewerStream] = []
        self._link: Link = source.subscribe_encoded()
        self._buffer = FrameBuffer()
        self._next_report = 0.0
        self.ended = False
        self._task = asyncio.create_task(self._run(), name=f"fanout {source.sid}")

    @property
    def idle(self) -> bool:
        """No viewer stream is left."""
        return not self._streams

    def stream(self, sender: RTCRtpSender) -> ViewerStream:
        """A stream for this aiortc sender; it joins once aiortc starts the sender."""
        stream = ViewerStream(sender, self)
        self._streams.append(stream)
        return stream

    def attach(self, stream: ViewerStream) -> None:
        """A stream started: it gets frames from the next key frame, asked for now."""
        self.request_keyframe(throttled=False)

    def remove(self, stream: ViewerStream) -> None:
        if stream in self._streams:
            self._streams.remove(stream)

    def request_keyframe(self, *, throttled: bool = True) -> None:
        if self.source.encoded is not None:
            self.source.encoded.request_keyframe(throttled=throttled)

    async def close(self) -> None:
        self.source.unsubscribe_encoded(self._link)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        try:
            while (frame := await self._link.get()) is not EOS:
                self._send(frame)
        finally:
            self.ended = True
            for stream in list(self._streams):
                stream.end()

    def _send(self, frame: EncodedFrame) -> None:
        streams = [s for s in self._streams if s.started]
        if not streams:
            return
        outgoing = OutgoingFrame(self.packetizer.pack(frame), frame.timestamp, frame.keyframe)
        waiting = False
        for stream in streams:
            if not stream.send_frame(outgoing, self._buffer):
                waiting = True
        if waiting:
            self.request_keyframe()
        now = time.monotonic()
        if now >= self._next_report:
            self._next_report = now + REPORT_INTERVAL_S
            self._report(frame.timestamp, now)

    def _report(self, timestamp: int, now: float) -> None:
        """Sender reports for every synced stream, dated at the frame's capture time."""
        encoded = self.source.encoded
        captured = encoded.time_of(timestamp) if encoded is not None else now
        ntp = current_ntp_time() - round(max(0.0, now - captured) * _NTP_UNIT)
        for stream in self._streams:
            if stream.synced:
                stream.report(ntp, timestamp)
