"""The lean media packet path: what it parses matches aiortc, and what it leaves to aiortc."""

from __future__ import annotations

import pytest
from aiortc import (
    RTCCertificate,
    RTCDtlsTransport,
    RTCIceGatherer,
    RTCIceTransport,
    RTCRtpReceiver,
)
from aiortc.codecs.vpx import vp8_depayload
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpDecodingParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpReceiveParameters,
    RTCRtpRtxParameters,
)
from aiortc.rtcrtpreceiver import RemoteStreamTrack
from aiortc.rtp import HeaderExtensionsMap, RtpPacket, wrap_rtx

from egresskit.rooms.encoded import EncodedReceiver
from egresskit.rooms.media_packets import ReceiverPackets, parse_media_packet, vp8_frame_bytes

ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
EXTENSIONS = [
    RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
    RTCRtpHeaderExtensionParameters(id=3, uri=ABS_SEND_TIME),
    RTCRtpHeaderExtensionParameters(id=4, uri="urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
]
VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90_000, payloadType=96)
RTX = RTCRtpCodecParameters(
    mimeType="video/rtx", clockRate=90_000, payloadType=97, parameters={"apt": 96}
)
MEDIA_SSRC, RTX_SSRC = 1111, 2222


def extensions_map() -> HeaderExtensionsMap:
    extensions = HeaderExtensionsMap()
    extensions.configure(RTCRtpReceiveParameters(headerExtensions=EXTENSIONS))
    return extensions


def rtp_packet(
    seq: int = 7, *, csrc: int = 0, padding: int = 0, extensions: bool = True
) -> RtpPacket:
    packet = RtpPacket(
        payload_type=96, marker=1, sequence_number=seq, timestamp=0xFFFF_FFF0, ssrc=MEDIA_SSRC,
        payload=b"\x90\x80\x05" + bytes(range(40)),
    )  # fmt: skip
    packet.csrc = list(range(1, csrc + 1))
    packet.padding_size = padding
    if extensions:
        packet.extensions.mid = "0"
        packet.extensions.abs_send_time = 0x123456
        packet.extensions.audio_level = (True, 42)
    return packet


@pytest.mark.parametrize("csrc", [0, 2])
@pytest.mark.parametrize("padding", [0, 5])
@pytest.mark.parametrize("extensions", [False, True])
def test_header_fields_match_aiortc(csrc: int, padding: int, extensions: bool) -> None:
    data = rtp_packet(csrc=csrc, padding=padding, extensions=extensions).serialize(extensions_map())
    theirs = RtpPacket.parse(data, extensions_map())
    # parsed from a buffer longer than the packet, as from the reader's unprotect buffer
    buffer = bytearray(data + b"\xee" * 64)
    ours = parse_media_packet(buffer, len(data), 3)
    for field in ("payload_type", "marker", "sequence_number", "timestamp", "ssrc", "padding_size"):
        assert getattr(ours, field) == getattr(theirs, field), field
    assert ours.abs_send_time == theirs.extensions.abs_send_time
    assert bytes(buffer[ours.payload_start : ours.payload_end]) == theirs.payload
    assert parse_media_packet(data, len(data), None).abs_send_time is None


def test_bad_packets_are_refused_like_aiortc() -> None:
    good = rtp_packet(csrc=2, padding=5).serialize(extensions_map())
    bad = [
        good[:11],  # shorter than a header
        bytes([good[0] & 0x3F]) + good[1:],  # version 0
        good[:16],  # truncated CSRC list
        good[:-1] + b"\xff",  # padding longer than the packet
    ]
    for data in bad:
        with pytest.raises(ValueError):
            RtpPacket.parse(data)
        with pytest.raises(ValueError):
            parse_media_packet(data, len(data), 3)


@pytest.mark.parametrize(
    "descriptor",
    [b"\x10", b"\x90\x80\x05", b"\x90\x80\x81\x02", b"\x90\xe0\x81\x02\x07\x40", b"\x80\x10\x01"],
)
def test_vp8_bytes_match_aiortc(descriptor: bytes) -> None:
    payload = descriptor + b"\x9d\x01\x2a frame"
    assert vp8_frame_bytes(payload, 0, len(payload)) == vp8_depayload(payload)
    with pytest.raises(ValueError):
        vp8_depayload(descriptor[:-1] or b"")
    with pytest.raises(ValueError):
        vp8_frame_bytes(descriptor, 0, len(descriptor) - 1)


async def test_a_tapped_receiver_takes_media_packets_and_leaves_rtx_to_aiortc() -> None:
    dtls = RTCDtlsTransport(
        RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()]
    )
    receiver = RTCRtpReceiver("video", dtls)
    receiver._track = RemoteStreamTrack("video")  # as RTCPeerConnection gives its receivers
    await receiver.receive(
        RTCRtpReceiveParameters(
            codecs=[VP8, RTX],
            headerExtensions=EXTENSIONS,
            encodings=[
                RTCRtpDecodingParameters(
                    ssrc=MEDIA_SSRC, payloadType=96, rtx=RTCRtpRtxParameters(RTX_SSRC)
                )
            ],
        )
    )
    try:
        # not tapped yet: aiortc's path
        assert ReceiverPackets.of(dtls, receiver, MEDIA_SSRC, 96) is None
        encoded = EncodedReceiver(receiver)
        encoded.decoding = True  # the bandwidth estimate runs
        assert ReceiverPackets.of(dtls, receiver, RTX_SSRC, 97) is None
        handler = ReceiverPackets.of(dtls, receiver, MEDIA_SSRC, 96)
        assert handler is not None

        rtx = wrap_rtx(rtp_packet(), payload_type=97, sequence_number=1, ssrc=RTX_SSRC)
        rtx_data = rtx.serialize(extensions_map())
        assert not handler.handle(rtx_data, len(rtx_data), 1000)

        arrival_ms = 1_000_000
        for seq in (7, 9):  # 8 is lost
            data = rtp_packet(seq).serialize(extensions_map())
            assert handler.handle(data, len(data), arrival_ms)
        stats = receiver._RTCRtpReceiver__remote_streams[MEDIA_SSRC]  # type: ignore[attr-defined]
        assert (stats.packets_received, stats.base_seq, stats.max_seq) == (2, 7, 9)
        assert [s.source for s in receiver.getSynchronizationSources()] == [MEDIA_SSRC]
        nack = receiver._RTCRtpReceiver__nack_generator  # type: ignore[attr-defined]
        assert nack.missing == {8}
        # packet 7 was a whole frame (marker bit): it was handed on, depayloaded
        assert encoded.frames_received == 1
    finally:
        await receiver.stop()
