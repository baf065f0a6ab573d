"""Real storage servers for tests and benchmarks, each on 127.0.0.1 and a free port.

moto (S3) runs as a subprocess so it can be stopped and restarted on the same port for
fault tests and does not share the test's GIL. Azurite (npm) and gcp-storage-emulator
(PyPI) are subprocesses too. ``ForwardProxy`` is a small HTTP proxy that records what
passes through it. Every wait here is bounded.

The pytest fixtures at the end are shared: ``tests/conftest.py`` and each plugin's
``tests/conftest.py`` import them, so every suite starts its servers the same way.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.args}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"server on port {port} did not start within {timeout}s: {proc.args}")


class ServerProcess:
    """A server subprocess bound to one port; start() and stop() may be repeated."""

    def __init__(self, port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        self.proc = subprocess.Popen(
            self.command(),
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port(self.port, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class MotoServer(ServerProcess):
    """moto's S3 in server mode. ``enforce_auth`` makes it reject unknown credentials.

    ``endpoint_host`` names a host (reached through a ``ForwardProxy`` host entry) that
    moto treats as an S3 endpoint: path-style requests to it and virtual-hosted requests
    to its subdomains both find their bucket.
    """

    def __init__(
        self, port: int | None = None, enforce_auth: bool = False, endpoint_host: str = ""
    ) -> None:
        env = {"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if enforce_auth else {}
        super().__init__(port, env)
        if endpoint_host:
            self.env["MOTO_S3_CUSTOM_ENDPOINTS"] = f"http://{endpoint_host}:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    def boto3_client(self, **kwargs: object):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(s3={"addressing_style": "path"}),
            **kwargs,
        )

    def create_bucket(self, name: str) -> str:
        self.boto3_client().create_bucket(Bucket=name)
        return name


class MotoS3Only(MotoServer):
    """moto's S3 application alone, for clients whose signatures moto cannot route by.

    moto's server picks a service from each request's AWS signature scope; OSS-signed
    requests carry none it knows, so this serves the S3 app directly (signatures unchecked).
    """

    LAUNCHER = (
        "import sys; from werkzeug.serving import run_simple; "
        "from moto.moto_server.werkzeug_app import create_backend_app; "
        "run_simple('127.0.0.1', int(sys.argv[1]), create_backend_app('s3'), threaded=True)"
    )

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.LAUNCHER, str(self.port)]


class AzuriteBlob(ServerProcess):
    """Azurite's blob service from npm (``azurite-blob`` on PATH)."""

    ACCOUNT = "devstoreaccount1"
    # Azurite's documented, public development key (not a secret).
    KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

    def __init__(self) -> None:
        super().__init__()
        self.location = Path(tempfile.mkdtemp(prefix="egresskit-azurite-"))

    def command(self) -> list[str]:
        exe = shutil.which("azurite-blob")
        if exe is None:
            raise RuntimeError("azurite-blob not found: npm install -g azurite")
        return [
            exe,
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(self.port),
            "--location",
            str(self.location),
            "--skipApiVersionCheck",
            "--silent",
        ]

    @property
    def account_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.ACCOUNT}"

    def service_client(self):
        """azure-storage-blob's own (synchronous) client for this account."""
        from azure.storage.blob import BlobServiceClient

        credential = {"account_name": self.ACCOUNT, "account_key": self.KEY}
        return BlobServiceClient(self.account_url, credential=credential)

    def create_container(self, name: str) -> str:
        with self.service_client() as service:
            service.create_container(name)
        return name

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.location, ignore_errors=True)


class GcsEmulator(ServerProcess):
    """gcp-storage-emulator from PyPI, in memory."""

    def command(self) -> list[str]:
        exe = shutil.which("gcp-storage-emulator")
        if exe is None:
            raise RuntimeError("gcp-storage-emulator not found: pip install gcp-storage-emulator")
        return [exe, "start", "--host", "127.0.0.1", "--port", str(self.port), "--in-memory"]

    def create_bucket(self, name: str) -> str:
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status != 200:
                raise RuntimeError(f"cannot create bucket {name}: HTTP {response.status}")
        return name


@dataclass
class ProxyRequest:
    method: str
    target: str
    proxy_authorization: str | None


@dataclass
class ForwardProxy:
    """An HTTP proxy on the running loop: absolute-form forwarding and CONNECT tunnels.

    Hand-written because the test must see each request line and its Proxy-Authorization;
    after the first request of a connection the bytes are relayed untouched. ``hosts``
    works like resolver entries: a host equal to a key, or a subdomain of it, is reached
    at the key's address, so tests can name 127.0.0.1 services by DNS names.
    """

    hosts: dict[str, str] = field(default_factory=dict)
    requests: list[ProxyRequest] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def credentials(self) -> list[tuple[str, str]]:
        """The (username, password) pairs clients sent, decoded from Basic auth."""
        pairs = []
        for r in self.requests:
            if r.proxy_authorization and r.proxy_authorization.lower().startswith("basic "):
                user, _, pw = base64.b64decode(r.proxy_authorization[6:]).decode().partition(":")
                pairs.append((user, pw))
        return pairs

    async def __aenter__(self) -> ForwardProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await asyncio.wait_for(self._server.wait_closed(), 10)

    def _address(self, host: str) -> str:
        for name, address in self.hosts.items():
            if host == name or host.endswith("." + name):
                return address
        return host

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ", 2)
            headers = [line for line in lines[1:] if line]
            auth = next(
                (
                    h.split(":", 1)[1].strip()
                    for h in headers
                    if h.lower().startswith("proxy-authorization:")
                ),
                None,
            )
            self.requests.append(ProxyRequest(method, target, auth))
            kept = [h for h in headers if not h.lower().startswith("proxy-")]
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                up_reader, upstream = await asyncio.open_connection(self._address(host), int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                rest = target.split("://", 1)[1]
                hostport, _, path = rest.partition("/")
                host, _, port = hostport.partition(":")
                up_reader, upstream = await asyncio.open_connection(
                    self._address(host), int(port or 80)
                )
                request = "\r\n".join([f"{method} /{path} {version}", *kept]) + "\r\n\r\n"
                upstream.write(request.encode("latin-1"))
            await asyncio.gather(_relay(reader, upstream), _relay(up_reader, writer))
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            for w in (upstream, writer):
                if w is not None:
                    w.close()


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    finally:
        if writer.can_write_eof():
            try:
                writer.write_eof()
            except OSError:
                pass


def unique_name(request: pytest.FixtureRequest, prefix: str = "") -> str:
    """A bucket-safe name from the test's name, unique per call."""
    base = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    return f"{prefix}{base}-{uuid.uuid4().hex[:8]}"


# --- shared fixtures ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_server():
    """moto's S3 server on 127.0.0.1, shared by the storage tests."""
    with MotoServer() as server:
        yield server


@pytest.fixture
def s3_bucket(moto_server, request):
    """A fresh bucket on the shared moto server; yields its name."""
    return moto_server.create_bucket(unique_name(request))


@pytest.fixture(scope="session")
def gcs_emulator():
    """gcp-storage-emulator on 127.0.0.1."""
    with GcsEmulator() as server:
        yield server


@pytest.fixture
def gcs_emulator_env(gcs_emulator, monkeypatch):
    """The emulator, with ``STORAGE_EMULATOR_HOST`` pointing at it for this test.

    LiveKit's ``GCPUpload`` has no endpoint field; GCS clients (and egresskit-gcs)
    take an emulator's address from this variable.
    """
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
    return gcs_emulator


@pytest.fixture(scope="session")
def azurite():
    """Azurite's blob service on 127.0.0.1."""
    with AzuriteBlob() as server:
        yield server


@pytest.fixture
def azurite_env(azurite, monkeypatch):
    """Azurite, with ``EGRESSKIT_AZURE_ACCOUNT_URL`` pointing at it for this test.

    LiveKit's ``AzureBlobUpload`` has no endpoint field; egresskit-azure reads the
    account URL override from this variable.
    """
    monkeypatch.setenv("EGRESSKIT_AZURE_ACCOUNT_URL", azurite.account_url)
    return azurite


@pytest.fixture(scope="session")
def oss_target():
    """moto's S3 application alone, as the target of OSS-signed requests."""
    with MotoS3Only() as server:
        yield server
