"""What a long-running service costs: no memory or threads left by ended egresses, and
admission by CPU cost, checked on `egresskit serve` as its own process."""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import sys
from pathlib import Path

import aiohttp
import psutil
import pytest
from livekit import api
from livekit.api.twirp_client import TwirpError
from livekit.protocol import egress as egress_pb
from service_fixtures import API_KEY, API_SECRET, Served, join, serve, wait_status

from egresskit.egress.admission import Admission, CpuCosts
from egresskit.egress.errors import NotEnoughCpu
from egresskit.egress.validation import validate
from egresskit.service.config import ConfigError, load_config

RED, BLUE = (220, 40, 40), (40, 60, 220)
DONE = (egress_pb.EGRESS_COMPLETE, egress_pb.EGRESS_FAILED, egress_pb.EGRESS_ABORTED)


class ServiceProcess:
    """`egresskit serve` in a child process (service_fixtures.serve), drained on exit."""

    def __init__(self, output_dir: Path, *extra: str) -> None:
        self.output_dir = output_dir
        self.extra = extra
        self.served: Served | None = None

    async def __aenter__(self) -> ServiceProcess:
        self.served = await serve(self.output_dir, "--log-level", "warning", *self.extra)
        self.proc = self.served.process
        self.port = self.served.port
        self.base = self.served.url
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.served is not None
        await self.served.terminate()

    @property
    def process(self) -> psutil.Process:
        assert self.proc is not None
        return psutil.Process(self.proc.pid)

    async def health(self) -> dict | None:
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
                http.get(f"{self.base}/healthz") as response,
            ):
                return await response.json()
        except aiohttp.ClientConnectionError:
            return None


TIME_HEALTHZ = """
import http.client, sys, time
connection = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
for _ in range(int(sys.argv[2])):
    began = time.perf_counter()
    connection.request("GET", "/healthz")
    connection.getresponse().read()
    print(time.perf_counter() - began, flush=True)
    time.sleep(0.05)
"""


async def healthz_latencies(port: int, count: int) -> list[float]:
    """Seconds each of `count` GET /healthz took, over one keep-alive connection."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", TIME_HEALTHZ, str(port), str(count), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    return [float(line) for line in out.decode().split()]


def composite(filepath: str) -> egress_pb.RoomCompositeEgressRequest:
    """A room composite at the default encoding: 1280x720, 30 fps, H.264."""
    return egress_pb.RoomCompositeEgressRequest(
        room_name="call", file_outputs=[egress_pb.EncodedFileOutput(filepath=filepath)]
    )


# --- ended egresses leave nothing behind -----------------------------------------------------


@pytest.mark.slow
async def test_start_stop_cycles_leave_memory_and_threads_flat(tmp_path):
    """50 start/stop cycles of a 720p room composite on one service process."""
    cycles, settle = 50, 5
    async with ServiceProcess(tmp_path / "out") as service:
        publishers = [
            await join(service.base, "call", "alice", RED, 440.0),
            await join(service.base, "call", "bob", BLUE, 1000.0),
        ]
        lkapi = api.LiveKitAPI(service.base, API_KEY, API_SECRET)
        process = service.process
        try:
            # Baselines after a few cycles: the first ones start what stays for the process
            # (a decoding thread per published video track, asyncio's default executor).
            threads_settled = rss_settled = 0
            for cycle in range(1, cycles + 1):
                info = await lkapi.egress.start_room_composite_egress(composite(f"c{cycle}.mp4"))
                await wait_status(lkapi, info.egress_id, [egress_pb.EGRESS_ACTIVE])
                await lkapi.egress.stop_egress(
                    egress_pb.StopEgressRequest(egress_id=info.egress_id)
                )
                final = await wait_status(lkapi, info.egress_id, DONE)
                assert final.status == egress_pb.EGRESS_COMPLETE, final.error
                if cycle == settle:
                    rss_settled = process.memory_info().rss
                    threads_settled = process.num_threads()
            rss_last = process.memory_info().rss
            threads_last = process.num_threads()
            listed = await lkapi.egress.list_egress(egress_pb.ListEgressRequest())
        finally:
            await lkapi.aclose()
            for publisher in publishers:
                await publisher.close()
    growth_mb = (rss_last - rss_settled) / 1e6
    print(
        f"\nRSS after {settle} cycles {rss_settled / 1e6:.1f} MB, after {cycles} "
        f"{rss_last / 1e6:.1f} MB (+{growth_mb:.1f} MB); threads {threads_settled} after "
        f"{settle}, {threads_last} after {cycles}"
    )
    assert len(listed.items) == cycles  # ended egresses are still listed
    assert all(item.status == egress_pb.EGRESS_COMPLETE for item in listed.items)
    assert growth_mb < 50
    assert abs(threads_last - threads_settled) <= 5


# --- admission by CPU cost -----------------------------------------------------------------------


@pytest.mark.slow
async def test_room_composites_past_the_cpu_budget_are_refused(tmp_path):
    """Default costs: as many 720p composites as fit cores x 0.8, then resource_exhausted."""
    costs = CpuCosts()
    cores = os.cpu_count() or 1
    fit = max(1, math.floor(cores * costs.max_cpu_utilization / costs.room_composite_cpu_cost))
    async with ServiceProcess(tmp_path / "out") as service:
        publisher = await join(service.base, "call", "alice", RED, 440.0)
        lkapi = api.LiveKitAPI(service.base, API_KEY, API_SECRET)
        try:
            idle = await service.health()
            assert idle["cpu_available"] == cores and idle["cpu_budget"] == pytest.approx(
                cores * costs.max_cpu_utilization
            )
            running = [
                await lkapi.egress.start_room_composite_egress(composite(f"fit-{i}.mp4"))
                for i in range(fit)
            ]
            with pytest.raises(TwirpError) as refused:
                await lkapi.egress.start_room_composite_egress(composite("one-too-many.mp4"))
            assert refused.value.code == "resource_exhausted"
            assert "not enough CPU" in refused.value.message
            assert f"needs {costs.room_composite_cpu_cost:.2f} cores" in refused.value.message

            # Saturated: health answers at once and shows what is left. Timed from another
            # process: this one's loop is busy sending the publisher's media.
            latencies = await healthz_latencies(service.port, 10)
            print(
                f"\n/healthz while saturated: {', '.join(f'{t * 1e3:.0f}' for t in latencies)} ms"
            )
            assert statistics.median(latencies) < 0.1
            health = await service.health()
            assert health["active_egress"] == fit
            available = cores * costs.max_cpu_utilization - fit * costs.room_composite_cpu_cost
            assert health["cpu_available"] == pytest.approx(available, abs=1e-3)
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"{service.base}/metrics") as response,
            ):
                assert f"egresskit_cpu_available {round(available, 3):g}" in await response.text()

            # What is admitted still records, and ending one frees its share.
            await wait_status(lkapi, running[0].egress_id, [egress_pb.EGRESS_ACTIVE])
            await lkapi.egress.stop_egress(
                egress_pb.StopEgressRequest(egress_id=running[0].egress_id)
            )
            final = await wait_status(lkapi, running[0].egress_id, DONE)
            assert final.status == egress_pb.EGRESS_COMPLETE, final.error
            again = await lkapi.egress.start_room_composite_egress(composite("after.mp4"))
            for info in [*running[1:], again]:
                await lkapi.egress.stop_egress(
                    egress_pb.StopEgressRequest(egress_id=info.egress_id)
                )
        finally:
            await lkapi.aclose()
            await publisher.close()


async def test_max_concurrent_still_caps(tmp_path):
    """A cap below the CPU budget is what refuses (unavailable, as before)."""
    async with ServiceProcess(tmp_path / "out", "--max-concurrent", "1") as service:
        publisher = await join(service.base, "call", "alice", RED, 440.0)
        lkapi = api.LiveKitAPI(service.base, API_KEY, API_SECRET)
        try:
            request = egress_pb.RoomCompositeEgressRequest(
                room_name="call",
                audio_only=True,
                file_outputs=[egress_pb.EncodedFileOutput(filepath="a.ogg")],
            )
            first = await lkapi.egress.start_room_composite_egress(request)
            with pytest.raises(TwirpError) as refused:
                await lkapi.egress.start_room_composite_egress(request)
            assert refused.value.code == "unavailable"
            assert "at most 1 egresses" in refused.value.message
            await lkapi.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=first.egress_id))
        finally:
            await lkapi.aclose()
            await publisher.close()


def test_costs_by_kind():
    costs = CpuCosts()
    audio = validate(
        egress_pb.RoomCompositeEgressRequest(
            room_name="r", audio_only=True, file_outputs=[egress_pb.EncodedFileOutput()]
        )
    )
    track = validate(
        egress_pb.TrackEgressRequest(
            room_name="r", track_id="TR_x", file=egress_pb.DirectFileOutput(filepath="t.webm")
        )
    )
    participant = validate(
        egress_pb.ParticipantEgressRequest(
            room_name="r", identity="a", file_outputs=[egress_pb.EncodedFileOutput()]
        )
    )
    assert costs.of(validate(composite("x.mp4"))) == costs.room_composite_cpu_cost
    assert costs.of(audio) == costs.audio_room_composite_cpu_cost
    assert costs.of(track) == costs.track_cpu_cost
    assert costs.of(participant) == costs.participant_cpu_cost


def test_admission_budget_idle_rule_and_release():
    admission = Admission(CpuCosts(max_cpu_utilization=0.5), cores=2)
    admission.admit("EG_a", "room_composite", 3.0)  # idle: any one egress, whatever its cost
    with pytest.raises(NotEnoughCpu, match="needs 0.10 cores and 0.00 of the 1.00"):
        admission.admit("EG_b", "room_composite", 0.1)
    admission.release("EG_a")
    assert admission.available == 2
    admission.admit("EG_c", "track", 0.4)
    admission.admit("EG_d", "track", 0.6)  # exactly the budget
    assert admission.available == 0 and len(admission) == 2


def test_cpu_cost_setting(tmp_path):
    path = tmp_path / "egresskit.yaml"
    path.write_text("cpu_cost:\n  max_cpu_utilization: 0.5\n  track_cpu_cost: 1\n")
    config = load_config({"dev": True}, yaml_path=path)
    costs = CpuCosts.from_mapping(config.cpu_cost)
    assert costs.max_cpu_utilization == 0.5 and costs.track_cpu_cost == 1.0
    assert costs.room_composite_cpu_cost == CpuCosts().room_composite_cpu_cost
    for bad, message in (
        ("cpu_cost:\n  room_cost: 1\n", "unknown key"),
        ("cpu_cost:\n  track_cpu_cost: -1\n", "non-negative"),
        ("cpu_cost:\n  max_cpu_utilization: 2\n", "at most 1"),
        ("cpu_cost: 3\n", "must be a mapping"),
    ):
        path.write_text(bad)
        with pytest.raises(ConfigError, match=f"cpu_cost.*{message}"):
            load_config({"dev": True}, yaml_path=path)
