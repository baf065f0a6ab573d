"""egresskit's psrpc against a real livekit-server on a real Redis, driven by the
livekit-api SDK: livekit-server dispatches StartEgress/StopEgress to egresskit's
handlers and stores what egresskit reports through IOInfo."""

from __future__ import annotations

import asyncio
import time

import pytest
from livekit import api
from livekit.protocol import egress as lk

from egresskit.psrpc import Bus, EgressServer, IOInfoClient
from egresskit.psrpc.protos.rpc_egress_pb2 import StartEgressRequest


@pytest.fixture(scope="module")
def livekit(redis_server):
    from livekit_redis import LiveKitRedisServer, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with LiveKitRedisServer(redis_server.address) as server:
        yield server


@pytest.fixture
async def lkapi(livekit):
    client = api.LiveKitAPI(livekit.http_url, livekit.api_key, livekit.api_secret)
    yield client
    await client.aclose()


@pytest.fixture
async def bus(redis_server):
    bus = Bus.from_url(redis_server.url)
    yield bus
    await bus.close()


def composite(room: str) -> api.RoomCompositeEgressRequest:
    return api.RoomCompositeEgressRequest(
        room_name=room, layout="speaker", file_outputs=[api.EncodedFileOutput(filepath="out.mp4")]
    )


async def test_livekit_server_dispatches_egress_to_egresskit(livekit, lkapi, bus):
    room = await lkapi.room.create_room(api.CreateRoomRequest(name="psrpc-e2e"))
    started: list[StartEgressRequest] = []
    stopped: list[lk.StopEgressRequest] = []
    updated: list[lk.UpdateStreamRequest] = []
    worker = EgressServer(bus)
    io = await IOInfoClient(bus).start()

    async def stop(request: lk.StopEgressRequest) -> lk.EgressInfo:
        stopped.append(request)
        return lk.EgressInfo(
            egress_id=request.egress_id,
            room_id=room.sid,
            room_name=room.name,
            status=lk.EGRESS_ENDING,
        )

    async def update_stream(request: lk.UpdateStreamRequest) -> lk.EgressInfo:
        updated.append(request)
        return lk.EgressInfo(egress_id=request.egress_id, status=lk.EGRESS_ACTIVE)

    async def start(request: StartEgressRequest) -> lk.EgressInfo:
        started.append(request)
        info = lk.EgressInfo(
            egress_id=request.egress_id,
            room_id=request.room_id,
            room_name=request.room_composite.room_name,
            status=lk.EGRESS_STARTING,
            room_composite=request.room_composite,
        )
        await io.create_egress(info)  # as a worker does; livekit-server ignores the duplicate
        await worker.add_egress(request.egress_id, stop, update_stream)
        return info

    await worker.serve(start, lambda _: 0.5, lambda: [r.egress_id for r in started])
    try:
        info = await lkapi.egress.start_room_composite_egress(composite("psrpc-e2e"))
        assert info.egress_id.startswith("EG_")
        assert info.status == lk.EGRESS_STARTING
        assert info.room_id == room.sid
        [request] = started
        assert request.egress_id == info.egress_id
        assert request.room_id == room.sid
        assert request.WhichOneof("request") == "room_composite"
        assert request.room_composite.room_name == "psrpc-e2e"
        assert request.room_composite.layout == "speaker"

        info.status = lk.EGRESS_ACTIVE
        info.started_at = time.time_ns()
        await io.update_egress(info)
        listed = await lkapi.egress.list_egress(api.ListEgressRequest(room_name="psrpc-e2e"))
        assert [(i.egress_id, i.status) for i in listed.items] == [
            (info.egress_id, lk.EGRESS_ACTIVE)
        ]
        assert (await io.get_egress(info.egress_id)).status == lk.EGRESS_ACTIVE

        url = "rtmp://127.0.0.1:1935/live/key"
        streamed = await lkapi.egress.update_stream(
            api.UpdateStreamRequest(egress_id=info.egress_id, add_output_urls=[url])
        )
        assert streamed.status == lk.EGRESS_ACTIVE
        assert [(u.egress_id, list(u.add_output_urls)) for u in updated] == [
            (info.egress_id, [url])
        ]

        ending = await lkapi.egress.stop_egress(api.StopEgressRequest(egress_id=info.egress_id))
        assert ending.status == lk.EGRESS_ENDING
        assert [s.egress_id for s in stopped] == [info.egress_id]

        info.status = lk.EGRESS_COMPLETE
        info.ended_at = time.time_ns()
        await io.update_egress(info)
        await io.update_metrics(info, avg_cpu_usage=0.25, max_cpu_usage=0.5)
        await worker.remove_egress(info.egress_id)

        listed = await lkapi.egress.list_egress(api.ListEgressRequest(room_name="psrpc-e2e"))
        assert [(i.egress_id, i.status) for i in listed.items] == [
            (info.egress_id, lk.EGRESS_COMPLETE)
        ]
        active = await lkapi.egress.list_egress(
            api.ListEgressRequest(room_name="psrpc-e2e", active=True)
        )
        assert list(active.items) == []
        # the egress id no longer routes to egresskit: livekit-server answers from its record
        with pytest.raises(api.TwirpError) as refused:
            await lkapi.egress.stop_egress(api.StopEgressRequest(egress_id=info.egress_id))
        assert refused.value.code == "failed_precondition"
        assert "EGRESS_COMPLETE cannot be stopped" in refused.value.message
        assert len(stopped) == 1
        assert f'"egressID": "{info.egress_id}", "avgCpu": 0.25' in livekit.log()
    finally:
        await io.close()
        await worker.close()


async def test_a_refusing_worker_leaves_livekit_server_unavailable(livekit, lkapi, bus):
    """A claim of -1 (draining, or the CPU cost does not fit) is no claim: livekit-server
    retries StartEgress three times, then answers 503 "no response from servers"."""
    await lkapi.room.create_room(api.CreateRoomRequest(name="psrpc-full"))
    asked: list[str] = []
    worker = EgressServer(bus)

    def affinity(request: StartEgressRequest) -> float:
        asked.append(request.egress_id)
        return -1.0

    async def start(request):
        raise AssertionError("a refused request must not start")

    await worker.serve(start, affinity, list)
    try:
        began = time.monotonic()
        with pytest.raises(api.TwirpError) as caught:
            await lkapi.egress.start_room_composite_egress(composite("psrpc-full"))
        elapsed = time.monotonic() - began
        assert caught.value.code == "unavailable"
        assert caught.value.message.endswith("no response from servers")
        assert len(asked) == 3 and len(set(asked)) == 1  # one egress id, three attempts
        print(f"refused StartEgress answered after {elapsed:.1f} s")
    finally:
        await asyncio.wait_for(worker.close(), 30)


async def test_livekit_server_prefers_a_busy_worker(livekit, lkapi, redis_server):
    """Two workers claim: the idle one 0.5, the busy one 1. livekit-server takes the 1."""
    await lkapi.room.create_room(api.CreateRoomRequest(name="psrpc-pick"))
    handled: dict[str, list[str]] = {"idle": [], "busy": []}
    buses = [Bus.from_url(redis_server.url) for _ in range(2)]
    workers = []
    for bus, name, affinity in zip(buses, ("idle", "busy"), (0.5, 1.0), strict=True):
        worker = EgressServer(bus)

        async def start(request, name=name):
            handled[name].append(request.egress_id)
            return lk.EgressInfo(egress_id=request.egress_id, status=lk.EGRESS_STARTING)

        await worker.serve(start, lambda _, a=affinity: a, list)
        workers.append(worker)
    try:
        info = await lkapi.egress.start_room_composite_egress(composite("psrpc-pick"))
        assert handled == {"idle": [], "busy": [info.egress_id]}
    finally:
        for worker, bus in zip(workers, buses, strict=True):
            await worker.close()
            await bus.close()
