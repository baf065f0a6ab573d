"""A real WebDAV server for tests: Debian's nginx with `dav_methods PUT`, on 127.0.0.1.

nginx runs in the foreground with a random free port, its config, logs, pid,
temp directories and stored files in a private directory. PUT stores a file
under `root` (creating directories), GET reads it back; a request without
the `Authorization` header the server was started with is refused with 401.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from rtmp_server import NGINX, free_port, run_nginx

CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    client_max_body_size 0;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{
            if ($http_authorization != "{authorization}") {{ return 401; }}
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
        }}
    }}
}}
"""


class WebDavServer:
    """nginx WebDAV on 127.0.0.1; files PUT to `url` land under `root`."""

    def __init__(self, authorization: str) -> None:
        self.authorization = authorization
        self.dir = Path(tempfile.mkdtemp(prefix="nginx-dav-"))
        self.root = self.dir / "root"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def access_log(self) -> str:
        return (self.dir / "access.log").read_text(errors="replace")

    def start(self) -> WebDavServer:
        if not shutil.which(NGINX) and not Path(NGINX).exists():
            raise RuntimeError("nginx is not installed (apt-get install nginx)")
        self.root.mkdir(parents=True)
        self.port = free_port()
        config = self.dir / "nginx.conf"
        config.write_text(
            CONFIG.format(
                dir=self.dir, port=self.port, root=self.root, authorization=self.authorization
            )
        )
        self.process = run_nginx(self.dir, config, self.port, "nginx (WebDAV)")
        return self

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> WebDavServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
