"""Start latency: StartRoomCompositeEgress call -> ACTIVE, and -> first media written.

An egresskit service runs in this process on 127.0.0.1 with a room holding
two publishers (synthetic 640x360@30 video + a tone each), in-process tracks
or, with `--whip`, aiortc peers publishing over WHIP (VP8 + Opus). Each
run starts a room composite to an MP4 through the real `livekit-api` client
(protobuf over HTTP), then measures from just before the call:

- response: the call returned its STARTING EgressInfo;
- first media: the moment the session went ACTIVE, i.e. the muxer wrote its
  first packet (the `updated_at` of the ACTIVE EgressInfo, stamped by the
  service when the graph bus posts `first_media`);
- ACTIVE seen: the `egress_updated` (ACTIVE) webhook reached a receiver
  (a client's view: first media + webhook signing and delivery).

Each egress is stopped and waited for (egress_ended) before the next run.
Target: median <= 300 ms. The machine is shared: read medians and p90.

Run: python bench/start_latency.py [--runs 20] [--whip] [--profile]
`--profile` also runs one more start under cProfile and prints where the
event loop spent the time between the call and the first media.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import TESTS_DIR
from aiohttp import web
from livekit import api
from livekit.protocol import egress as egress_pb

sys.path.insert(0, str(TESTS_DIR))
from publishers import SineAudioTrack, SyntheticVideoTrack  # noqa: E402
from service_fixtures import API_KEY, API_SECRET, join, service_config  # noqa: E402

from egresskit.service.app import ROOMS, create_app  # noqa: E402

ROOM = "bench"
TARGET_MS = 300.0


class HookTimes:
    """Arrival time (ns, this host's clock) of each (egress_id, event) webhook."""

    def __init__(self) -> None:
        self.arrived: dict[tuple[str, str], tuple[int, api.WebhookEvent]] = {}
        self._changed = asyncio.Condition()
        self._receiver = api.WebhookReceiver(api.TokenVerifier(API_KEY, API_SECRET))

    async def handle(self, request: web.Request) -> web.Response:
        now = time.time_ns()
        event = self._receiver.receive(await request.text(), request.headers["Authorization"])
        key = (event.egress_info.egress_id, event.event)
        if event.event == "egress_updated" and event.egress_info.status != egress_pb.EGRESS_ACTIVE:
            key = (
                key[0],
                "egress_updated:" + egress_pb.EgressStatus.Name(event.egress_info.status),
            )
        async with self._changed:
            self.arrived.setdefault(key, (now, event))
            self._changed.notify_all()
        return web.Response(text="ok")

    async def wait(self, egress_id: str, event: str, timeout: float = 30.0):
        async def found():
            async with self._changed:
                await self._changed.wait_for(lambda: (egress_id, event) in self.arrived)
                return self.arrived[(egress_id, event)]

        return await asyncio.wait_for(found(), timeout)


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # the port the OS chose
    return runner, f"http://127.0.0.1:{port}"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def one_start(lkapi: api.LiveKitAPI, hooks: HookTimes, index: int) -> dict[str, float]:
    request = egress_pb.RoomCompositeEgressRequest(
        room_name=ROOM,
        file_outputs=[egress_pb.EncodedFileOutput(filepath=f"run-{index}.mp4")],
    )
    t0 = time.time_ns()
    info = await lkapi.egress.start_room_composite_egress(request)
    t_response = time.time_ns()
    arrived, event = await hooks.wait(info.egress_id, "egress_updated")
    first_media = event.egress_info.updated_at
    await lkapi.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))
    _, ended = await hooks.wait(info.egress_id, "egress_ended")
    if ended.egress_info.status != egress_pb.EGRESS_COMPLETE:
        raise RuntimeError(
            f"run {index} ended {ended.egress_info.status}: {ended.egress_info.error}"
        )
    return {
        "response": (t_response - t0) / 1e6,
        "first media": (first_media - t0) / 1e6,
        "ACTIVE seen": (arrived - t0) / 1e6,
    }


async def main(runs: int, whip: bool, profile: bool) -> None:
    hooks = HookTimes()
    hook_app = web.Application()
    hook_app.router.add_post("/hook", hooks.handle)
    hook_runner, hook_base = await serve(hook_app)
    with tempfile.TemporaryDirectory() as out:
        app = create_app(service_config(Path(out), hook_base + "/hook"))
        runner, base = await serve(app)
        publishers = (("alice", (220, 40, 40), 440.0), ("bob", (40, 60, 220), 660.0))
        sessions = []
        if whip:
            sessions = [await join(base, ROOM, *publisher) for publisher in publishers]
        else:
            room = app[ROOMS].get_or_create(ROOM)
            for identity, color, tone in publishers:
                await room.publish(SyntheticVideoTrack(color), identity=identity)
                await room.publish(SineAudioTrack(tone), identity=identity)
        await asyncio.sleep(1.0)  # publishers are producing frames before the first start
        lkapi = api.LiveKitAPI(base, API_KEY, API_SECRET)
        try:
            await one_start(lkapi, hooks, -1)  # warm-up: imports, codec tables, first connection
            samples = [await one_start(lkapi, hooks, i) for i in range(runs)]
            source = "WHIP publishers" if whip else "in-process publishers"
            print(f"start latency, 2 {source}, {runs} runs (ms): median / p90 / min / max")
            for name in samples[0]:
                values = [s[name] for s in samples]
                print(
                    f"  {name:<12} {statistics.median(values):7.1f} / {pct(values, 0.9):7.1f}"
                    f" / {min(values):7.1f} / {max(values):7.1f}"
                )
            median_first = statistics.median(s["first media"] for s in samples)
            median_active = statistics.median(s["ACTIVE seen"] for s in samples)
            print(
                f"target {TARGET_MS:.0f} ms: first media {median_first / TARGET_MS:.2f}x target,"
                f" ACTIVE seen {median_active / TARGET_MS:.2f}x target"
            )
            if profile:
                profiler = cProfile.Profile()
                profiler.enable()
                await one_start(lkapi, hooks, runs)
                profiler.disable()
                pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
        finally:
            await lkapi.aclose()
            for session in sessions:
                await session.close()
            await runner.cleanup()
            await hook_runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--whip", action="store_true", help="publish over WHIP (WebRTC)")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.whip, args.profile))
