"""SrtCaller: an SRT caller socket on the system's libsrt, so no secret rides a command line.

PyAV's bundled FFmpeg has no libsrt, and `srt-live-transmit` takes the
passphrase only inside the URL on its command line, which every local user
can read in `ps`. libsrt itself (Debian `libsrt1.5-gnutls`, installed with
`srt-tools`) is called here through ctypes: options go straight to
`srt_setsockflag`, and blocking calls release the interpreter lock, so the
stream writer thread waits without holding up the event loop.

Only caller mode exists here: the URL's options that would bind or listen
locally are refused by request validation and never read.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import ipaddress
import socket
import struct
import threading
import time
from urllib.parse import parse_qsl, urlsplit

SRT_LIBRARIES = ("srt-gnutls", "srt-openssl", "srt")
CHUNK = 1316  # 7 MPEG-TS packets: one SRT live-mode message
# Closing drops what the receiver has not played out yet; wait this long first.
DRAIN_S = 1.0
TS_PACKET = 188
# An MPEG-TS null packet (PID 0x1FFF): demuxers skip it.
TS_NULL_PACKET = b"\x47\x1f\xff\x10" + b"\xff" * (TS_PACKET - 4)

# URL options that would make the sender bind or listen here; egress only calls out
# (request validation refuses them).
LOCAL_OPTIONS = frozenset({"mode", "adapter", "bind", "port"})
# URL options and their libsrt socket options (SRT_SOCKOPT in srt.h) with value types.
_INT, _INT64, _BOOL, _STR = "int", "int64", "bool", "str"
OPTIONS: dict[str, tuple[int, str]] = {
    "mss": (0, _INT),
    "fc": (4, _INT),
    "sndbuf": (5, _INT),
    "rcvbuf": (6, _INT),
    "maxbw": (16, _INT64),
    "latency": (23, _INT),
    "inputbw": (24, _INT64),
    "oheadbw": (25, _INT),
    "passphrase": (26, _STR),
    "pbkeylen": (27, _INT),
    "ipttl": (29, _INT),
    "iptos": (30, _INT),
    "tlpktdrop": (31, _BOOL),
    "snddropdelay": (32, _INT),
    "nakreport": (33, _BOOL),
    "conntimeo": (36, _INT),
    "lossmaxttl": (42, _INT),
    "rcvlatency": (43, _INT),
    "peerlatency": (44, _INT),
    "streamid": (46, _STR),
    "payloadsize": (49, _INT),
    "kmrefreshrate": (51, _INT),
    "kmpreannounce": (52, _INT),
    "enforcedencryption": (53, _BOOL),
    "peeridletimeo": (55, _INT),
}
_TRUE = {"1", "true", "yes", "on"}


class SrtError(OSError):
    """libsrt refused or lost the connection; the message is libsrt's."""


@functools.cache
def _library() -> ctypes.CDLL:
    for name in SRT_LIBRARIES:
        path = ctypes.util.find_library(name)
        if path:
            break
    else:
        raise SrtError("libsrt is not installed (Debian package libsrt1.5-gnutls or srt-tools)")
    lib = ctypes.CDLL(path)
    lib.srt_startup.restype = ctypes.c_int
    lib.srt_create_socket.restype = ctypes.c_int
    lib.srt_setsockflag.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    lib.srt_connect.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.srt_sendmsg2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p]
    lib.srt_close.argtypes = [ctypes.c_int]
    lib.srt_getlasterror_str.restype = ctypes.c_char_p
    if lib.srt_startup() < 0:
        raise SrtError("libsrt did not start")
    return lib


def available() -> bool:
    """Whether libsrt can be loaded here."""
    try:
        _library()
    except (SrtError, OSError):
        return False
    return True


def url_options(url: str) -> list[tuple[str, str]]:
    """The URL's socket options libsrt knows, as (name, value), others left out."""
    query = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    return [(name.lower(), value) for name, value in query if name.lower() in OPTIONS]


def _sockaddr(address: str, port: int) -> bytes:
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + ip.packed + bytes(8)
    return struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0) + ip.packed + bytes(4)


class SrtCaller:
    """One live-mode SRT connection to `address:port` with the URL's options.

    `write` takes MPEG-TS bytes in any amounts and sends whole 1316-byte
    messages; `finish` pads the tail with null packets and closes. `abort`
    may be called from another thread to unblock a stuck send.
    """

    def __init__(self, url: str, address: str, port: int) -> None:
        self._lib = _library()
        self._lock = threading.Lock()
        self._buffer = bytearray()
        self._sock = self._lib.srt_create_socket()
        if self._sock < 0:
            raise SrtError(self._error())
        try:
            for name, value in url_options(url):
                self._set(name, value)
            where = _sockaddr(address, port)
            if self._lib.srt_connect(self._sock, where, len(where)) < 0:
                raise SrtError(self._error())
        except BaseException:
            self.abort()
            raise

    def _set(self, name: str, value: str) -> None:
        option, kind = OPTIONS[name]
        if kind == _STR:
            raw = value.encode()
            data: ctypes.Array | ctypes._SimpleCData = ctypes.create_string_buffer(raw, len(raw))
            size = len(raw)
        else:
            try:
                number = int(value.lower() in _TRUE) if kind == _BOOL else int(value)
            except ValueError:
                raise SrtError(f"SRT option {name} must be a number") from None
            data = ctypes.c_int64(number) if kind == _INT64 else ctypes.c_int(number)
            size = ctypes.sizeof(data)
        if self._lib.srt_setsockflag(self._sock, option, ctypes.byref(data), size) < 0:
            raise SrtError(f"SRT option {name}: {self._error()}")

    def _error(self) -> str:
        return (self._lib.srt_getlasterror_str() or b"unknown error").decode(errors="replace")

    def write(self, data: bytes) -> int:
        self._buffer += data
        whole = len(self._buffer) - len(self._buffer) % CHUNK
        for start in range(0, whole, CHUNK):
            self._send(bytes(self._buffer[start : start + CHUNK]))
        del self._buffer[:whole]
        return len(data)

    def _send(self, message: bytes) -> None:
        if self._lib.srt_sendmsg2(self._sock, message, len(message), None) < 0:
            raise SrtError(self._error())

    def finish(self) -> None:
        """Send what is buffered (padded to a whole message), let it play out, and close."""
        try:
            if self._buffer:
                short = (-len(self._buffer)) % CHUNK
                self._send(bytes(self._buffer) + TS_NULL_PACKET * (short // TS_PACKET))
                self._buffer.clear()
            # The receiver plays packets out a latency after they arrive and drops what
            # it still holds when the connection closes: give it that time.
            time.sleep(DRAIN_S)
        finally:
            self.abort()

    def abort(self) -> None:
        """Close the socket now (safe from any thread, and more than once)."""
        with self._lock:
            sock, self._sock = self._sock, -1
        if sock >= 0:
            self._lib.srt_close(sock)
