"""A real livekit-server joined to a Redis, for the psrpc tests (egress dispatch).

Minimal on purpose: tests/livekit_server.py (the room source's fixture) is the
general one; this one adds `redis.address` so livekit-server routes egress
requests over psrpc on that Redis. The binary is the cached build of
scripts/install-test-deps.sh, /tmp/gobuild/server, or livekit-server on PATH.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

API_KEY = "egresskit-test"
API_SECRET = "egresskit-test-secret-0123456789abcdef0123456789"
CANDIDATES = [
    Path.home() / ".cache" / "egresskit-test-deps" / "bin" / "livekit-server",
    Path("/tmp/gobuild/server"),
]
START_TIMEOUT_S = 20.0


def binary() -> Path | None:
    configured = os.environ.get("EGRESSKIT_LIVEKIT_SERVER")
    if configured:
        return Path(configured)
    for path in CANDIDATES:
        if path.exists():
            return path
    found = shutil.which("livekit-server")
    return Path(found) if found else None


def unavailable_reason() -> str | None:
    if binary() is None:
        return "livekit-server is not installed (run scripts/install-test-deps.sh; it needs Go)"
    return None


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveKitRedisServer:
    """livekit-server with `redis` and `keys`; `http_url`, `api_key`, `api_secret`."""

    def __init__(self, redis_address: str) -> None:
        self.redis_address = redis_address
        self.api_key = API_KEY
        self.api_secret = API_SECRET
        self.port = free_port()
        self.http_url = f"http://127.0.0.1:{self.port}"
        self._dir = Path(tempfile.mkdtemp(prefix="egresskit-livekit-redis-"))
        self.log_path = self._dir / "server.log"
        self.process: subprocess.Popen | None = None

    def config(self) -> dict:
        return {
            "port": self.port,
            "bind_addresses": ["127.0.0.1"],
            "rtc": {
                "tcp_port": free_port(),
                "udp_port": free_port(socket.SOCK_DGRAM),
                "use_external_ip": False,
            },
            "redis": {"address": self.redis_address},
            # livekit-server wraps every psrpc client in its own retries (default 3
            # attempts); around the egress client's 3 StartEgress attempts that makes 9
            # (about 24 s before a refused egress is answered). One outer attempt keeps
            # the egress client's own behaviour and the tests short.
            "psrpc": {"max_attempts": 1},
            "keys": {self.api_key: self.api_secret},
            "logging": {"level": "info"},
        }

    def start(self) -> LiveKitRedisServer:
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

    def __enter__(self) -> LiveKitRedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
