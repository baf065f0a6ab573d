"""What a caller holding `roomRecord` can make the service do with the destinations it names.

The service runs on 127.0.0.1 and is driven by the LiveKit SDK. Requests name
webhooks, stream URLs and storage; the network policy (`egress_network`),
the credential rule for request storage, the signing-key rule for webhooks
and the SRT option rules decide what the service does with them. The
credential test runs the service as its own process with canary AWS
credentials in its environment and a listener standing in for S3.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import jwt
import pytest
from aiohttp import web
from livekit import api
from livekit.protocol import egress as egress_pb
from livekit.protocol import models as models_pb
from service_fixtures import API_KEY, API_SECRET, join, service_config, wait_status

from egresskit.netpolicy import NetworkPolicy, parse_address
from egresskit.service.app import create_app
from egresskit.service.config import ConfigError, load_config

ROOM = "caller-rules"
OTHER_KEY, OTHER_SECRET = "second-key", "second-secret-long-enough-for-hs256-0123"
CANARY_KEY_ID = "AKIACANARY0000000001"
CANARY_SECRET = "canary-secret-do-not-use-0000000000000000"
DONE = (egress_pb.EGRESS_COMPLETE, egress_pb.EGRESS_FAILED, egress_pb.EGRESS_ABORTED)
ENCODING = egress_pb.EncodingOptions(width=320, height=180, framerate=15, video_bitrate=300)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def start_service(aiohttp_server, tmp_path: Path, **overrides) -> str:
    config = service_config(tmp_path / "out", **overrides)
    server = await aiohttp_server(create_app(config), host="127.0.0.1")
    return str(server.make_url("")).rstrip("/")


async def refusal(base: str, request, key: str = API_KEY, secret: str = API_SECRET):
    """The TwirpError a start request gets (fails the test if it is accepted)."""
    client = api.LiveKitAPI(base, key, secret)
    try:
        with pytest.raises(api.TwirpError) as refused:
            await client.egress.start_room_composite_egress(request)
        return refused.value
    finally:
        await client.aclose()


def room_request(**fields) -> egress_pb.RoomCompositeEgressRequest:
    fields.setdefault("file_outputs", [egress_pb.EncodedFileOutput(filepath="r.mp4")])
    return egress_pb.RoomCompositeEgressRequest(room_name=ROOM, advanced=ENCODING, **fields)


class FakeS3:
    """A listener on 127.0.0.1 answering like S3 and keeping every Authorization it sees."""

    def __init__(self) -> None:
        self.authorizations: list[str] = []
        self.puts: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.authorizations.append(request.headers.get("Authorization", ""))
        await request.read()
        if request.method == "PUT":
            self.puts.append(request.path)
        return web.Response(headers={"ETag": '"0123456789abcdef0123456789abcdef"'})


@pytest.fixture
async def fake_s3(aiohttp_server):
    s3 = FakeS3()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", s3.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    s3.url = str(server.make_url("")).rstrip("/")
    return s3


# --- request storage brings its own credentials (the service as its own process) ----------


@pytest.fixture
async def service_with_canary_credentials(tmp_path):
    """`egresskit serve` with canary AWS credentials in its environment, loopback allowed."""
    port = free_port()
    config = tmp_path / "egresskit.yaml"
    config.write_text(
        f"api_key: {API_KEY}\napi_secret: {API_SECRET}\noutput_dir: {tmp_path / 'out'}\n"
        "egress_network: {allow: [127.0.0.0/8]}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EGRESSKIT_", "AWS_"))}
    env.update(
        PYTHONPATH=str(Path(__file__).resolve().parents[1]),
        AWS_ACCESS_KEY_ID=CANARY_KEY_ID,
        AWS_SECRET_ACCESS_KEY=CANARY_SECRET,
        AWS_SESSION_TOKEN="canary-session-token",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "egresskit.cli",
        "serve",
        "--config",
        str(config),
        "--port",
        str(port),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                assert proc.returncode is None, (await proc.stderr.read()).decode()[-2000:]
                await asyncio.sleep(0.1)
        yield base
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 40)


async def test_request_storage_never_carries_the_servers_credentials(
    service_with_canary_credentials, fake_s3
):
    base = service_with_canary_credentials
    publisher = await join(base, ROOM, "alice", (200, 40, 40), 440.0)
    client = api.LiveKitAPI(base, API_KEY, API_SECRET)
    try:
        # No keys: refused before anything is sent anywhere.
        for upload in (
            egress_pb.S3Upload(bucket="rec", endpoint=fake_s3.url, force_path_style=True),
            egress_pb.S3Upload(bucket="rec", endpoint=fake_s3.url, access_key="AKIAONLYID"),
            egress_pb.S3Upload(bucket="rec"),  # AWS itself, with the server's role
        ):
            with pytest.raises(api.TwirpError) as refused:
                await client.egress.start_room_composite_egress(
                    room_request(
                        file_outputs=[egress_pb.EncodedFileOutput(filepath="r.mp4", s3=upload)]
                    )
                )
            assert refused.value.code == "invalid_argument"
            assert "own credentials" in refused.value.message
        # The caller's own keys: the upload is signed with them, never the canary's.
        info = await client.egress.start_room_composite_egress(
            room_request(
                file_outputs=[
                    egress_pb.EncodedFileOutput(
                        filepath="r.mp4",
                        s3=egress_pb.S3Upload(
                            bucket="rec",
                            endpoint=fake_s3.url,
                            force_path_style=True,
                            access_key="AKIACALLER0000000001",
                            secret="caller-secret",
                        ),
                    )
                ]
            )
        )
        await wait_status(client, info.egress_id, [egress_pb.EGRESS_ACTIVE])
        await asyncio.sleep(1.0)
        await client.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))
        final = await wait_status(client, info.egress_id, DONE)
    finally:
        await client.aclose()
        await publisher.close()
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    assert fake_s3.puts, "the recording was not uploaded"
    assert fake_s3.authorizations
    assert all("Credential=AKIACALLER0000000001/" in a for a in fake_s3.authorizations)
    assert not any(CANARY_KEY_ID in a for a in fake_s3.authorizations)


@pytest.mark.parametrize(
    ("field", "upload"),
    [
        ("gcp", egress_pb.GCPUpload(bucket="b")),
        ("azure", egress_pb.AzureBlobUpload(account_name="acct", container_name="c")),
        ("aliOSS", egress_pb.AliOSSUpload(bucket="b", region="cn-hangzhou")),
    ],
)
async def test_plugin_storage_in_requests_needs_its_own_credentials(
    aiohttp_server, tmp_path, field, upload
):
    base = await start_service(aiohttp_server, tmp_path)
    output = egress_pb.EncodedFileOutput(filepath="r.mp4")
    getattr(output, field).CopyFrom(upload)
    refused = await refusal(base, room_request(file_outputs=[output]))
    assert refused.code == "invalid_argument"
    assert "file_outputs[0]" in refused.message or f"file.{field}" in refused.message
    assert "own credentials" in refused.message


# --- the network policy for caller-supplied destinations ----------------------------------


DENIED_HOSTS = [
    "127.0.0.1",
    "2130706433",  # 127.0.0.1 in decimal
    "0177.0.0.1",  # octal
    "0x7f.0.0.1",  # hex
    "[::1]",
    "[::ffff:127.0.0.1]",
    "169.254.169.254",
    "10.1.2.3",
    "192.168.1.1",
    "0.0.0.0",
]


@pytest.mark.parametrize("host", DENIED_HOSTS)
async def test_default_policy_refuses_webhooks_to_local_networks(aiohttp_server, tmp_path, host):
    base = await start_service(aiohttp_server, tmp_path, egress_network={})
    request = room_request(webhooks=[models_pb.WebhookConfig(url=f"http://{host}:8080/hook")])
    refused = await refusal(base, request)
    assert refused.code == "invalid_argument"
    assert "webhooks[0].url" in refused.message


async def test_default_policy_refuses_local_streams_and_storage_endpoints(aiohttp_server, tmp_path):
    base = await start_service(aiohttp_server, tmp_path, egress_network={})
    keys = {"access_key": "AKIACALLER", "secret": "caller-secret"}
    cases = {
        "stream_outputs[0]": room_request(
            file_outputs=[],
            stream_outputs=[egress_pb.StreamOutput(urls=["rtmp://127.0.0.1:1935/live/key"])],
        ),
        "srt": room_request(
            file_outputs=[],
            stream_outputs=[egress_pb.StreamOutput(urls=["srt://0.0.0.0:9000"])],
        ),
        "endpoint": room_request(
            file_outputs=[
                egress_pb.EncodedFileOutput(
                    filepath="r.mp4",
                    s3=egress_pb.S3Upload(bucket="b", endpoint="http://169.254.169.254", **keys),
                )
            ]
        ),
        "proxy": room_request(
            file_outputs=[
                egress_pb.EncodedFileOutput(
                    filepath="r.mp4",
                    s3=egress_pb.S3Upload(
                        bucket="b", proxy=egress_pb.ProxyConfig(url="http://127.1:3128"), **keys
                    ),
                )
            ]
        ),
    }
    for name, request in cases.items():
        refused = await refusal(base, request)
        assert refused.code == "invalid_argument", name
        assert "network egress may not reach" in refused.message, (name, refused.message)


async def test_the_operator_can_allow_a_network(aiohttp_server, tmp_path):
    """`egress_network.allow` admits a private network the defaults deny."""
    base = await start_service(aiohttp_server, tmp_path, egress_network={"allow": ["10.9.0.0/16"]})
    allowed = room_request(webhooks=[models_pb.WebhookConfig(url="http://10.9.1.1/hook")])
    refused = await refusal(base, allowed)
    assert refused.code == "not_found"  # past the policy: the room does not exist
    denied = room_request(webhooks=[models_pb.WebhookConfig(url="http://10.8.1.1/hook")])
    assert (await refusal(base, denied)).code == "invalid_argument"


def test_address_spellings_and_the_setting():
    for host in ("2130706433", "0177.0.0.1", "0x7f.1", "::ffff:127.0.0.1", "64:ff9b::7f00:1"):
        assert str(parse_address(host)) == "127.0.0.1", host
    assert parse_address("example.com") is None
    policy = NetworkPolicy()
    assert not policy.allows(parse_address("::1"))
    assert not policy.allows(parse_address("fe80::1"))
    assert policy.allows(parse_address("8.8.8.8"))
    assert NetworkPolicy.from_config({}, dev=True).allows(parse_address("127.0.0.1"))
    only = NetworkPolicy.from_config({"deny": ["0.0.0.0/0", "::/0"], "allow": ["203.0.113.0/24"]})
    assert only.allows(parse_address("203.0.113.7")) and not only.allows(parse_address("8.8.8.8"))
    with pytest.raises(ConfigError, match="egress_network"):
        load_config({"api_key": "k", "api_secret": "s", "egress_network": {"allow": ["nope"]}})
    loaded = load_config(
        {"api_key": "k", "api_secret": "s"}, {"EGRESSKIT_EGRESS_NETWORK": "{allow: [10.0.0.0/8]}"}
    )
    assert loaded.network_policy.allows(parse_address("10.1.1.1"))
    dev = load_config({"dev": True})
    assert dev.network_policy.allows(parse_address("127.0.0.1"))


# Accepts connections and closes them at once, in its own process: FFmpeg's RTMP
# handshake holds this process's interpreter lock while it waits for an answer.
_CLOSER = """
import socket, sys
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)
while True:
    conn, _ = server.accept()
    print("accepted", flush=True)
    conn.close()
"""


class PortProbe:
    """A TCP port that accepts and closes at once, and a port where nothing listens."""

    async def __aenter__(self) -> PortProbe:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CLOSER, stdout=asyncio.subprocess.PIPE
        )
        self.open_port = int(await asyncio.wait_for(self.proc.stdout.readline(), 20))
        self.closed_port = free_port()
        return self

    async def accepted(self) -> int:
        """Connections accepted so far."""
        count = 0
        while True:
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), 0.5)
            except TimeoutError:
                return count
            if not line:
                return count
            count += 1

    async def __aexit__(self, *exc) -> None:
        self.proc.kill()
        await self.proc.wait()


async def test_stream_errors_do_not_tell_open_ports_from_closed_ones(aiohttp_server, tmp_path):
    base = await start_service(aiohttp_server, tmp_path)
    publisher = await join(base, ROOM, "alice", (200, 40, 40), 440.0)
    client = api.LiveKitAPI(base, API_KEY, API_SECRET)
    try:
        async with PortProbe() as probe:
            urls = [
                f"rtmp://127.0.0.1:{probe.open_port}/live/open-port",
                f"rtmp://127.0.0.1:{probe.closed_port}/live/closed-port",
            ]
            info = await client.egress.start_room_composite_egress(
                room_request(file_outputs=[], stream_outputs=[egress_pb.StreamOutput(urls=urls)])
            )
            final = await wait_status(client, info.egress_id, DONE, timeout=60)
    finally:
        await client.aclose()
        await publisher.close()
    errors = [result.error for result in final.stream_results]
    assert len(errors) == 2 and all(errors), errors
    assert errors[0] == errors[1], errors
    assert "refused" not in errors[0].lower() and "end of file" not in errors[0].lower()


async def test_names_that_resolve_to_loopback_are_refused_when_connecting(
    aiohttp_server, tmp_path, fake_s3
):
    """`localhost` passes request validation (it is a name) but never gets a connection."""
    base = await start_service(aiohttp_server, tmp_path, egress_network={})
    publisher = await join(base, ROOM, "alice", (200, 40, 40), 440.0)
    client = api.LiveKitAPI(base, API_KEY, API_SECRET)
    s3_by_name = fake_s3.url.replace("127.0.0.1", "localhost")
    try:
        async with PortProbe() as probe:
            info = await client.egress.start_room_composite_egress(
                room_request(
                    file_outputs=[
                        egress_pb.EncodedFileOutput(
                            filepath="r.mp4",
                            s3=egress_pb.S3Upload(
                                bucket="rec",
                                endpoint=s3_by_name,
                                force_path_style=True,
                                access_key="AKIACALLER0000000001",
                                secret="caller-secret",
                            ),
                        )
                    ],
                    stream_outputs=[
                        egress_pb.StreamOutput(
                            urls=[f"rtmp://localhost:{probe.open_port}/live/by-name"]
                        )
                    ],
                )
            )
            await asyncio.sleep(2.0)
            await client.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))
            final = await wait_status(client, info.egress_id, DONE, timeout=60)
            accepted = await probe.accepted()
    finally:
        await client.aclose()
        await publisher.close()
    assert accepted == 0
    assert fake_s3.authorizations == []
    assert final.stream_results[0].started_at == 0 and final.stream_results[0].error


# --- SRT: caller mode only, nothing bound here, no secret on a command line ----------------


@pytest.mark.parametrize(
    "query",
    [
        "mode=listener",
        "mode=rendezvous",
        "adapter=0.0.0.0",
        "bind=0.0.0.0:5000",
        "port=5000",
        "passphrase=short",
    ],
)
async def test_srt_options_that_bind_listen_or_cannot_work_are_refused(
    aiohttp_server, tmp_path, query
):
    base = await start_service(aiohttp_server, tmp_path)
    stream = egress_pb.StreamOutput(urls=[f"srt://127.0.0.1:9000?{query}"])
    refused = await refusal(base, room_request(file_outputs=[], stream_outputs=[stream]))
    assert refused.code == "invalid_argument"
    assert "stream_outputs[0].urls" in refused.message


def test_the_srt_caller_reads_no_local_options():
    from egresskit.stages import srt

    url = "srt://h:9000?mode=listener&adapter=10.0.0.1&bind=x&port=5&streamid=a/b&latency=200"
    assert srt.url_options(url) == [("streamid", "a/b"), ("latency", "200")]


# --- webhooks are signed with the caller's own key -----------------------------------------


async def test_a_caller_cannot_pick_another_keys_secret_for_its_webhooks(aiohttp_server, tmp_path):
    received: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(request.headers["Authorization"])
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    receiver = await aiohttp_server(app, host="127.0.0.1")
    hook_url = str(receiver.make_url("/hook"))
    base = await start_service(aiohttp_server, tmp_path, extra_keys={OTHER_KEY: OTHER_SECRET})
    # The second key's holder asks for the first key (the server's) and for an unknown key.
    for signing_key in (API_KEY, "no-such-key"):
        request = room_request(
            webhooks=[models_pb.WebhookConfig(url=hook_url, signing_key=signing_key)]
        )
        refused = await refusal(base, request, OTHER_KEY, OTHER_SECRET)
        assert refused.code == "invalid_argument"
        assert "webhooks[0].signing_key" in refused.message
    # Without a signing key, the caller's own key signs.
    publisher = await join(base, ROOM, "alice", (200, 40, 40), 440.0)
    client = api.LiveKitAPI(base, OTHER_KEY, OTHER_SECRET)
    try:
        info = await client.egress.start_room_composite_egress(
            room_request(webhooks=[models_pb.WebhookConfig(url=hook_url)])
        )
        await wait_status(client, info.egress_id, [egress_pb.EGRESS_ACTIVE])
        await client.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))
        await wait_status(client, info.egress_id, DONE)
    finally:
        await client.aclose()
        await publisher.close()
    for _ in range(100):
        if received:
            break
        await asyncio.sleep(0.05)
    assert received
    for token in received:
        assert jwt.decode(token, OTHER_SECRET, algorithms=["HS256"])["iss"] == OTHER_KEY
