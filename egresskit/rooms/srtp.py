"""SRTP with libsrtp directly, in reused buffers: a video frame's packets protected in one, received packets unprotected in another.

pylibsrtp's `Session.protect` takes and returns `bytes`: per packet it
checks its argument, allocates a length cell, copies the packet into the
session's buffer, calls libsrtp and copies the result out again. A WHEP
fan-out protects every packet of every frame once per viewer (about 2,800
packets a second for ten viewers of a 720p track), and those steps cost
about as much as the encryption. `FrameBuffer` lays a frame's packets out
back to back, room left for each one's RTP header and SRTP trailer, once
per track and trailer length (`FrameLayout`); per viewer one copy puts the
payloads in place, and per packet only the header is written and libsrtp
protects the packet in place. The socket gets the protected packets as one
view with the runs to send (`egresskit.rooms.udp.DatagramSender.send`),
worked out with the layout.

Receiving has the same per-packet steps in `Session.unprotect`: measured
with 4 WHIP publishers it was 12% of the event loop's receive path, most of
it the wrapper's. `Unprotect` copies each packet into one buffer per
socket reader and unprotects it there; the caller parses it in place.

pylibsrtp internals touched (pylibsrtp 1.0): its cffi `_binding` (`ffi`,
`lib.srtp_protect`, `lib.srtp_unprotect`) and `Session._srtp`, the libsrtp
session.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from itertools import accumulate

from pylibsrtp import SRTP_MAX_TRAILER_LEN, Error, Session
from pylibsrtp._binding import ffi, lib

from egresskit.rooms.udp import datagram_runs

INITIAL_BYTES = 64 * 1024
_MARKER = 0x80


class FrameLayout:
    """Where a frame's packets lie once protected, for one RTP header size and SRTP trailer length.

    The first packet starts the buffer; `image` is what follows it before
    protection (each later packet: room for its header, its payload, room
    for its trailer), copied to `start` for each viewer.
    """

    def __init__(
        self, payloads: Sequence[bytes], header_size: int, trailer: int, cdata: object
    ) -> None:
        sizes = [header_size + len(payload) + trailer for payload in payloads]
        offsets = list(accumulate(sizes, initial=0))
        self.runs = datagram_runs(sizes)
        self.start, self.end = offsets[1], offsets[-1]
        self.last_size = sizes[-1]
        header, trailing = bytes(header_size), bytes(trailer)
        self.image = b"".join(part for p in payloads[1:] for part in (header, p, trailing))
        last = len(payloads) - 1
        # (where libsrtp gets it, where its header goes, its size unprotected, its marker bit)
        self.packets = [
            (cdata + offsets[i], offsets[i], sizes[i] - trailer, _MARKER if i == last else 0)  # type: ignore[operator]
            for i in range(1, len(payloads))
        ]


class FrameBuffer:
    """Room for one frame's SRTP packets, reused for one viewer after another."""

    def __init__(self) -> None:
        self._allocate(INITIAL_BYTES)
        self._length = ffi.new("int *")
        self._payloads: Sequence[bytes] = ()
        self._layouts: dict[tuple[int, int], FrameLayout] = {}

    def _allocate(self, size: int) -> None:
        self._cdata = ffi.new("char[]", size)
        self._view = memoryview(ffi.buffer(self._cdata))

    def protect_frame(
        self,
        session: Session,
        header: struct.Struct,
        first_byte: int,
        payload_type: int,
        sequence: int,
        timestamp: int,
        tail: bytes,
        payloads: Sequence[bytes],
    ) -> tuple[memoryview, list[tuple[int, int, int]]]:
        """The frame's SRTP packets back to back, and the runs to send them in.

        Packet i has the RTP header `header` packs from the first byte, the
        payload type (with the marker bit on the last packet), sequence number
        `sequence + i`, the timestamp and the tail (SSRC and header
        extensions). The view stays valid until the next call.
        """
        if payloads is not self._payloads:  # a new frame
            self._payloads, self._layouts = payloads, {}
            needed = sum(map(len, payloads)) + len(payloads) * (header.size + SRTP_MAX_TRAILER_LEN)
            if needed > len(self._view):
                self._allocate(2 * needed)
        view, cdata, length, pack = self._view, self._cdata, self._length, header.pack_into
        protect, srtp = lib.srtp_protect, session._srtp[0]
        # The first packet goes first: the trailer libsrtp gives it places the others.
        marker = _MARKER if len(payloads) == 1 else 0
        pack(view, 0, first_byte, marker | payload_type, sequence, timestamp, tail)
        end = header.size + len(payloads[0])
        view[header.size : end] = payloads[0]
        length[0] = end
        if status := protect(srtp, cdata, length):
            raise Error(f"libsrtp could not protect a packet (status {status})")
        key = (header.size, length[0] - end)
        layout = self._layouts.get(key)
        if layout is None:
            layout = self._layouts[key] = FrameLayout(payloads, *key, cdata)
        view[layout.start : layout.end] = layout.image
        for packet, offset, size, marker in layout.packets:
            sequence = (sequence + 1) & 0xFFFF
            pack(view, offset, first_byte, marker | payload_type, sequence, timestamp, tail)
            length[0] = size
            if status := protect(srtp, packet, length):
                raise Error(f"libsrtp could not protect a packet (status {status})")
        if length[0] != layout.last_size:
            raise Error("libsrtp gave a frame's packets trailers of different lengths")
        return view[: layout.end], layout.runs


class Unprotect:
    """Received SRTP packets of one session unprotected in a reused buffer, `view`."""

    def __init__(self, session: Session, size: int = 1 << 16) -> None:
        self.session = session
        self._srtp = session._srtp
        self._cdata = ffi.new("char[]", size)
        self.view = memoryview(ffi.buffer(self._cdata))
        self._length = ffi.new("int *")

    def __call__(self, packet: bytes) -> int:
        """Unprotect `packet` into `view`; returns the RTP packet's length there."""
        size = len(packet)
        if size > len(self.view):
            raise Error("packet is too long")
        self.view[:size] = packet
        self._length[0] = size
        if status := lib.srtp_unprotect(self._srtp[0], self._cdata, self._length):
            raise Error(f"libsrtp could not unprotect a packet (status {status})")
        return int(self._length[0])
