"""A real livekit-server on 127.0.0.1 for tests, built by scripts/install-test-deps.sh.

Single node, no Redis: rooms, signalling and media only. The subscriber
peers of the tests (the `livekit` SDK's libwebrtc and egresskit's aiortc)
gather this machine's interface address rather than loopback, so the server
offers its interface and loopback candidates; its media never leaves the machine.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

API_KEY = "egresskit-test"
API_SECRET = "egresskit-test-secret-0123456789abcdef0123456789"
BINARY_NAMES = [
    Path.home() / ".cache" / "egresskit-test-deps" / "bin" / "livekit-server",
]
START_TIMEOUT_S = 15.0


def binary() -> Path | None:
    """The livekit-server binary: $EGRESSKIT_LIVEKIT_SERVER, the cached build, or PATH."""
    configured = os.environ.get("EGRESSKIT_LIVEKIT_SERVER")
    if configured:
        return Path(configured)
    for path in BINARY_NAMES:
        if path.exists():
            return path
    found = shutil.which("livekit-server")
    return Path(found) if found else None


def unavailable_reason() -> str:
    if binary() is None:
        return "livekit-server is not installed (run scripts/install-test-deps.sh; it needs Go)"
    return ""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveKitServer:
    """livekit-server as a child process; `url` (ws://), `http_url`, `api_key`, `api_secret`.

    `ice_lite` runs its ICE agents in lite mode, as many deployments do.
    """

    def __init__(self, log_level: str = "info", *, ice_lite: bool = False) -> None:
        self.api_key = API_KEY
        self.api_secret = API_SECRET
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.http_url = f"http://127.0.0.1:{self.port}"
        self._dir = Path(tempfile.mkdtemp(prefix="egresskit-livekit-"))
        self.log_path = self._dir / "server.log"
        self._log_level = log_level
        self._ice_lite = ice_lite
        self.process: subprocess.Popen | None = None

    def config(self) -> dict:
        return {
            "port": self.port,
            "bind_addresses": ["127.0.0.1"],
            "rtc": {
                "tcp_port": 0,  # no ICE over TCP: no listener on every interface
                "udp_port": free_port(socket.SOCK_DGRAM),
                "use_external_ip": False,
                "enable_loopback_candidate": True,
                "use_ice_lite": self._ice_lite,
            },
            "keys": {self.api_key: self.api_secret},
            "logging": {"level": self._log_level},
        }

    def start(self, attempts: int = 3) -> LiveKitServer:
        """Start on fresh ports; another process may take a port between choosing and binding."""
        for attempt in range(attempts):
            try:
                return self._start()
            except RuntimeError as exc:
                if "address already in use" not in str(exc) or attempt == attempts - 1:
                    raise
                self.port = free_port()
                self.url = f"ws://127.0.0.1:{self.port}"
                self.http_url = f"http://127.0.0.1:{self.port}"
        raise AssertionError("unreachable")

    def _start(self) -> LiveKitServer:
        config_path = self._dir / "livekit.yaml"
        config_path.write_text(yaml.safe_dump(self.config()))
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [str(binary()), "--config", str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"livekit-server exited:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.http_url, timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"livekit-server did not start:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL, as a crashed server."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(5)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        shutil.rmtree(self._dir, ignore_errors=True)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def token(self, room: str, identity: str, **grants) -> str:
        from livekit import api

        video = api.VideoGrants(room_join=True, room=room, **grants)
        return (
            api.AccessToken(self.api_key, self.api_secret)
            .with_identity(identity)
            .with_name(identity)
            .with_grants(video)
            .to_jwt()
        )

    def __enter__(self) -> LiveKitServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class SignalRelay:
    """A TCP relay on 127.0.0.1 to livekit-server's port, whose connections a test can cut.

    Clients given `url` reach the server through it (signalling websockets,
    Twirp); `cut()` resets every connection open at that moment, as a network
    that drops them would, and new connections go through again at once.
    """

    def __init__(self, server: LiveKitServer) -> None:
        self.server = server
        self.port = 0
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def __aenter__(self) -> SignalRelay:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        await self._server.wait_closed()

    def cut(self) -> None:
        """Reset every open connection (RST, not a clean close)."""
        self.cuts += 1
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.server.port)
        except OSError:
            writer.transport.abort()
            return
        self._open |= {writer, upstream}
        try:
            await asyncio.gather(_pipe(reader, upstream), _pipe(up_reader, writer))
        except OSError:
            pass
        finally:
            for w in (writer, upstream):
                self._open.discard(w)
                w.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
