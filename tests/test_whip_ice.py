"""WHIP ICE as users meet it: `egresskit serve` as its own process, publishers in others.

An unmodified aiortc publisher offers only this machine's interface address
(aioice never gathers loopback); Chromium offers its interface addresses too.
A service on 127.0.0.1 answers with loopback and keeps those candidates, as
they belong to this machine. A service on 0.0.0.0 serves a publisher on
another machine, played here by a network namespace behind a veth pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import aioice.ice
import ifaddr
import numpy as np
import pytest
from aiohttp import web
from chromium import chromium_available, chromium_publisher
from livekit import api
from livekit.protocol import egress as egress_pb
from media_checks import frame_at, region_color
from publishers import colors_close, make_publisher_token
from service_fixtures import child_env, free_port, start, stop, wait_healthy, wait_status

from egresskit.rooms import RoomManager, whip_app
from egresskit.rooms.whip import filter_candidates
from egresskit.stages.labels import avatar_colour
from egresskit.stages.layout import DARK

DEV_KEY, DEV_SECRET = "devkey", "secret"
GREEN = (40, 200, 60)
TESTS_DIR = Path(__file__).parent
PUBLISH_TIMEOUT = 30.0
RECORD_S = 3.0
# The "other machine": a namespace at the far end of a veth pair in a private /30
# that exists only inside this machine's namespaces.
NETNS_HOST, NETNS_PEER = "10.199.77.1", "10.199.77.2"


# --- the service as its own process ------------------------------------------------------------


@contextlib.asynccontextmanager
async def serve(tmp_path: Path, bind: str = "127.0.0.1"):
    """`egresskit serve --dev` on a free port; yields (port, output directory)."""
    port, out = free_port(), tmp_path / "out"
    env = child_env(PYTHONPATH=str(TESTS_DIR.parent))  # this checkout's egresskit
    proc = await start(
        "serve", "--dev", "--bind", bind, "--port", str(port), "--output-dir", str(out), env=env
    )
    try:
        await wait_healthy(proc, port)
        yield port, out
    finally:
        await stop(proc)


@contextlib.asynccontextmanager
async def aiortc_publisher(base: str, room: str, identity: str, color, prefix: list[str] = ()):
    """tests/whip_child.py publishing `color`; yields the host addresses it offered."""
    token = make_publisher_token(DEV_KEY, DEV_SECRET, room, identity)
    env = child_env(PYTHONPATH=os.pathsep.join([str(TESTS_DIR), str(TESTS_DIR.parent)]))
    proc = await asyncio.create_subprocess_exec(
        *prefix,
        sys.executable,
        str(TESTS_DIR / "whip_child.py"),
        base,
        room,
        token,
        ",".join(map(str, color)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        lines: dict[str, str] = {}
        while "published" not in lines:
            line = await asyncio.wait_for(proc.stdout.readline(), PUBLISH_TIMEOUT)
            if not line:
                err = await proc.stderr.read()
                raise AssertionError(f"the publisher ended: {err.decode()[-2000:]}")
            word, _, rest = line.decode().strip().partition(" ")
            lines[word] = rest
        yield lines["offered"].split()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 10)
        await stop(proc)


async def record_composite(port: int, out: Path, room: str) -> np.ndarray:
    """A short room composite through livekit-api; the decoded picture near its end."""
    client = api.LiveKitAPI(f"http://127.0.0.1:{port}", DEV_KEY, DEV_SECRET)
    try:
        info = await client.egress.start_room_composite_egress(
            egress_pb.RoomCompositeEgressRequest(
                room_name=room, file_outputs=[egress_pb.EncodedFileOutput(filepath=f"{room}.mp4")]
            )
        )
        await wait_status(client, info.egress_id, [egress_pb.EGRESS_ACTIVE])
        await asyncio.sleep(RECORD_S)
        await client.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))
        done = await wait_status(
            client, info.egress_id, [egress_pb.EGRESS_COMPLETE, egress_pb.EGRESS_FAILED]
        )
        assert done.status == egress_pb.EGRESS_COMPLETE, done.error
    finally:
        await client.aclose()
    return frame_at(out / f"{room}.mp4", RECORD_S - 0.5)


def centre_color(picture: np.ndarray) -> tuple[int, int, int]:
    """The middle of the one tile a single participant gets."""
    height, width, _ = picture.shape
    return region_color(picture, width // 3, height // 3, 2 * width // 3, 2 * height // 3)


@pytest.mark.slow
async def test_unmodified_aiortc_publisher_in_another_process(tmp_path):
    async with (
        serve(tmp_path) as (port, out),
        aiortc_publisher(f"http://127.0.0.1:{port}", "same-host", "alice", GREEN) as offered,
    ):
        # What aioice offers by itself: this machine's interface addresses, never loopback.
        assert offered and not any(ipaddress.ip_address(a).is_loopback for a in offered)
        picture = await record_composite(port, out, "same-host")
    assert colors_close(centre_color(picture), GREEN, 60), centre_color(picture)


@pytest.mark.slow
@pytest.mark.chromium
@pytest.mark.skipif(not chromium_available(), reason="Debian chromium is not installed")
async def test_chromium_without_sdp_munging(tmp_path):
    async with serve(tmp_path) as (port, out):
        token = make_publisher_token(DEV_KEY, DEV_SECRET, "browser", "browser")
        async with chromium_publisher(f"http://127.0.0.1:{port}", "browser", token) as browser:
            await browser.wait_published(PUBLISH_TIMEOUT)
            (offered,) = [detail.split() for state, detail in browser.history if state == "offered"]
            assert offered and not any(ipaddress.ip_address(a).is_loopback for a in offered)
            picture = await record_composite(port, out, "browser")
    # The fake camera's picture (green, with a moving figure and a counter), not the
    # tile a participant without video gets: the theme's tile colour with the initials
    # in a circle of the avatar colour (a camera frame has almost none of those pixels;
    # the middle third of an initials tile is mostly the circle).
    height, width, _ = picture.shape
    tile = picture[height // 3 : 2 * height // 3, width // 3 : 2 * width // 3].reshape(-1, 3)
    placeholder = [DARK.tile, avatar_colour("browser")]
    near = sum((np.abs(tile.astype(int) - c).max(axis=1) <= 16).mean() for c in placeholder)
    assert near < 0.2, f"{near:.0%} of the browser's tile has the placeholder's {placeholder}"
    assert tile.std(axis=0).max() > 5, tile.std(axis=0)  # not one flat colour either


# --- another machine: a network namespace ------------------------------------------------------


def netns_unavailable() -> str | None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return "needs root and iproute2 for a network namespace"
    return None


@contextlib.contextmanager
def other_machine():
    """A network namespace reachable only through a veth pair; yields its name."""
    name = f"ek{uuid.uuid4().hex[:8]}"
    host_end, peer_end = f"{name}a", f"{name}b"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    ip("netns", "add", name)
    try:
        ip("link", "add", host_end, "type", "veth", "peer", "name", peer_end)
        ip("link", "set", peer_end, "netns", name)
        ip("addr", "add", f"{NETNS_HOST}/30", "dev", host_end)
        ip("link", "set", host_end, "up")
        ip("netns", "exec", name, "ip", "addr", "add", f"{NETNS_PEER}/30", "dev", peer_end)
        ip("netns", "exec", name, "ip", "link", "set", peer_end, "up")
        ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.mark.slow
async def test_publisher_on_another_machine_with_the_service_on_all_interfaces(tmp_path):
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    with other_machine() as netns:
        async with (
            serve(tmp_path, bind="0.0.0.0") as (port, out),
            aiortc_publisher(
                f"http://{NETNS_HOST}:{port}",
                "remote",
                "bob",
                GREEN,
                prefix=["ip", "netns", "exec", netns],
            ) as offered,
        ):
            assert offered == [NETNS_PEER]  # not an address of this namespace's machine
            picture = await record_composite(port, out, "remote")
    assert colors_close(centre_color(picture), GREEN, 60), centre_color(picture)


# --- in-process checks of the same rules ---------------------------------------------------------


async def test_whip_app_leaves_aioice_alone_outside_its_sessions(aiohttp_server):
    aioice_own = aioice.ice.get_host_addresses
    assert aioice_own.__module__ == "aioice.ice"  # importing egresskit patched nothing
    rooms = RoomManager()
    app = web.Application()
    app.add_subapp("/whip", whip_app(rooms, {"k": "s" * 32}, ice_addresses=["127.0.0.1"]))
    assert aioice.ice.get_host_addresses is aioice_own  # neither did building the app
    server = await aiohttp_server(app, host="127.0.0.1")
    # While it runs, peers other than its WHIP sessions gather as aioice does.
    assert aioice.ice.get_host_addresses(True, True) == aioice_own(True, True)
    await server.close()
    await rooms.close()
    assert aioice.ice.get_host_addresses is aioice_own  # and stopping it restored aioice


def test_loopback_service_keeps_candidates_of_this_machine_only():
    mine = sorted(
        ip.ip
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if ip.is_IPv4 and not ipaddress.ip_address(ip.ip).is_loopback
    )
    assert mine, "this machine has no interface address"
    lines = [f"a=candidate:{i} 1 udp 2130706431 {a} 5000 typ host" for i, a in enumerate(mine)]
    lines += [
        "a=candidate:8 1 udp 2130706431 127.0.0.1 5001 typ host",
        "a=candidate:9 1 udp 2130706431 203.0.113.7 5002 typ host",  # another machine
        "a=candidate:10 1 udp 2130706431 0b3c2a1f-7e1d.local 5003 typ host",  # mDNS
    ]
    offer = "v=0\r\n" + "\r\n".join(lines) + "\r\n"
    kept = [line.split()[4] for line in filter_candidates(offer, ["127.0.0.1"]).splitlines()[1:]]
    assert kept == [*mine, "127.0.0.1"]
    # A service on every interface does not filter (it may reach other machines).
    assert filter_candidates(offer, None) == offer
