"""A private X display (Xvfb) for one page, and the cookie that opens it.

Xvfb's socket is always /tmp/.X11-unix/X<n>, so the display is made
private by X authority: each display gets a random MIT-MAGIC-COOKIE-1, its
Xvfb reads only its own, and this process keeps every live display's cookie
in one authority file of its own (XAUTHORITY), which x11grab's libxcb
reads when it connects. No other local user can open the display.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import secrets
import shutil
import struct
import tempfile
import threading
from pathlib import Path

from egresskit.web.processes import AUTHORITY_DIR_PREFIX, WorkDir

# The screen is a margin larger than the page: a Chromium window exactly the size of its
# screen gets a viewport one pixel short each way (1279x719 for 1280x720), one smaller
# than its screen gets exactly the size asked.
SCREEN_MARGIN = 16
_FAMILY_WILD = 0xFFFF  # matches any host, so the entry is found for a local socket
_COOKIE_NAME = b"MIT-MAGIC-COOKIE-1"


def _entry(display: str, cookie: bytes) -> bytes:
    """One Xauthority record (X11's own binary format, big-endian lengths)."""

    def counted(data: bytes) -> bytes:
        return struct.pack(">H", len(data)) + data

    return (
        struct.pack(">H", _FAMILY_WILD)
        + counted(b"")
        + counted(display.encode())
        + counted(_COOKIE_NAME)
        + counted(cookie)
    )


class _Authority:
    """This process's authority file: one cookie per display it runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cookies: dict[str, bytes] = {}
        self._path: Path | None = None

    def add(self, display: str, cookie: bytes) -> None:
        with self._lock:
            self._cookies[display] = cookie
            self._write()

    def remove(self, display: str) -> None:
        with self._lock:
            if self._cookies.pop(display, None) is not None:
                self._write()

    def _write(self) -> None:
        if self._path is None:
            directory = tempfile.mkdtemp(prefix=AUTHORITY_DIR_PREFIX)
            Path(directory, "owner").write_text(str(os.getpid()))  # for reap_orphans
            atexit.register(shutil.rmtree, directory, True)
            self._path = Path(directory) / "Xauthority"
            os.environ["XAUTHORITY"] = str(self._path)  # read by libxcb on each connect
        staged = self._path.with_suffix(".new")
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(b"".join(_entry(d, c) for d, c in self._cookies.items()))
        os.replace(staged, self._path)


AUTHORITY = _Authority()


def _read_line(fd: int) -> bytes:
    """Up to a newline: Xvfb dies if -displayfd is closed before it wrote all it meant to."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(fd, 16)
        if not chunk:
            break
        line += chunk
    return line


class Display:
    """One Xvfb; `name` is ":N", a display number Xvfb picked as free (-displayfd)."""

    def __init__(self, work: WorkDir, width: int, height: int) -> None:
        self.work = work
        self.width = width
        self.height = height
        self.name = ""
        self.auth_file = work.path / "Xauthority"

    async def start(self, timeout: float = 10.0) -> None:
        cookie = secrets.token_bytes(16)
        self.auth_file.write_bytes(_entry("", cookie))  # Xvfb reads any record of the file
        read, write = os.pipe()
        try:
            screen = f"{self.width + SCREEN_MARGIN}x{self.height + SCREEN_MARGIN}x24"
            process = await self.work.spawn(
                "Xvfb",
                "-displayfd",
                str(write),
                "-screen",
                "0",
                screen,
                "-nolisten",
                "tcp",
                "-auth",
                str(self.auth_file),
                "-nocursor",
                "-noreset",  # a reset (last client gone) would write -displayfd again, and fail
                env=self.work.env(),
                keep_fd=write,
                log_name="xvfb",
            )
            os.close(write)
            write = -1
            try:
                number = await asyncio.wait_for(asyncio.to_thread(_read_line, read), timeout)
            except TimeoutError:
                raise RuntimeError("Xvfb did not start in time") from None
            if not number.strip():
                await process.wait()
                raise RuntimeError(f"Xvfb failed: {self.work.log_tail('xvfb')}")
        finally:
            os.close(read)
            if write >= 0:
                os.close(write)
        self.name = f":{int(number)}"
        # the clients' copy names the display (Chromium reads it through XAUTHORITY)
        self.auth_file.write_bytes(_entry(str(int(number)), cookie))
        AUTHORITY.add(str(int(number)), cookie)

    def close(self) -> None:
        if self.name:
            AUTHORITY.remove(self.name.lstrip(":"))
            self.name = ""
