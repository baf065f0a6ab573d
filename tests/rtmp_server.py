"""A real RTMP server for tests and benchmarks: nginx with the rtmp module, recording to FLV.

nginx runs in the foreground on 127.0.0.1 with a random free port, its
config, logs, pid and recordings in a private directory; only the rtmp
block is configured (no http server). Each published stream `live/<key>`
is recorded as `<record_dir>/<key>.flv`, finalised when the publisher
disconnects.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

RTMP_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

CONFIG = """\
load_module {module};
daemon off;
master_process off;
user root;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 64; }}
rtmp {{
    server {{
        listen 127.0.0.1:{port};
        chunk_size 4096;
        application live {{
            live on;
            record all;
            record_path {records};
            record_unique off;
        }}
    }}
}}
"""


def unavailable_reason() -> str | None:
    """Why nginx-rtmp cannot run here, or None when it can."""
    if not os.path.exists(NGINX):
        return "nginx is not installed (apt-get install nginx)"
    if not RTMP_MODULE.exists():
        return "nginx's rtmp module is missing (apt-get install libnginx-mod-rtmp)"
    return None


def run_nginx(prefix: Path, config: Path, port: int, what: str) -> subprocess.Popen[bytes]:
    """A private nginx (prefix `prefix`, its own config) once it listens on `port`."""
    process = subprocess.Popen(
        [NGINX, "-p", str(prefix), "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        if process.poll() is not None:
            log = (prefix / "error.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{what} exited with {process.returncode}: {log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                process.wait(10)
                raise RuntimeError(f"{what} did not listen within 10 s") from None
            time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RtmpServer:
    """nginx-rtmp on 127.0.0.1; `url(key)` names a stream, `recording(key)` its FLV."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self._own_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="nginx-rtmp-"))
        self.records = self.dir / "records"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, key: str) -> str:
        return f"rtmp://127.0.0.1:{self.port}/live/{key}"

    def recording(self, key: str) -> Path:
        return self.records / f"{key}.flv"

    def start(self) -> RtmpServer:
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        self.records.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = self.dir / "nginx.conf"
        config.write_text(
            CONFIG.format(module=RTMP_MODULE, dir=self.dir, port=self.port, records=self.records)
        )
        self.process = run_nginx(self.dir, config, self.port, "nginx-rtmp")
        return self

    def kill(self) -> None:
        """Die at once, like a crashed server: open connections are reset."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """Quit gracefully (recordings of open streams are finalised)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RtmpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
