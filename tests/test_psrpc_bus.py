"""psrpc over a real redis-server, egresskit on every side: queue lock, claims,
multi, errors, expiry, per-egress handlers and IOInfo retries.

Each Bus is its own Redis connection pair, as separate worker processes would be.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from google.protobuf import empty_pb2
from livekit.protocol import egress as lk
from psrpc_vectors import vector

from egresskit.psrpc import Bus, ErrorCode, IOInfoClient, PsrpcError, RPCClient, RPCServer
from egresskit.psrpc.bus import decode, encode, lock_key, now_ns, request_channel
from egresskit.psrpc.egress import (
    IO_UPDATE_EGRESS,
    START_EGRESS,
    START_EGRESS_SELECTION,
    STOP_EGRESS,
    EgressServer,
)
from egresskit.psrpc.protos.internal_pb2 import ClaimResponse, Request, Response
from egresskit.psrpc.protos.rpc_egress_pb2 import ListActiveEgressResponse, StartEgressRequest


@pytest.fixture
async def buses(redis_server):
    """A factory of buses on the test's Redis, all closed after the test."""
    made: list[Bus] = []

    def make() -> Bus:
        made.append(Bus.from_url(redis_server.url))
        return made[-1]

    yield make
    for bus in made:
        await bus.close()


async def drain(sub, quiet_s: float = 0.3) -> list:
    """Messages of `sub` until none arrives for `quiet_s`."""
    got = []
    while True:
        try:
            async with asyncio.timeout(quiet_s):
                got.append(await sub.get())
        except TimeoutError:
            return got


def starting(request: StartEgressRequest) -> lk.EgressInfo:
    return lk.EgressInfo(
        egress_id=request.egress_id, room_id=request.room_id, status=lk.EGRESS_STARTING
    )


async def test_queue_channel_delivers_each_message_to_one_receiver(buses, redis_server):
    a, b, publisher = buses(), buses(), buses()
    channel = "IOInfo|UpdateEgress|REQ"
    queue_a = await a.subscribe(channel, queue=True)
    queue_b = await b.subscribe(channel, queue=True)
    plain = await b.subscribe(channel)
    sent = [Request(request_id=f"REQ_{i:012d}", client_id="CLI_x") for i in range(20)]
    for request in sent:
        await publisher.publish(channel, request)
    got_a, got_b, got_plain = await asyncio.gather(drain(queue_a), drain(queue_b), drain(plain))
    ids = [m.request_id for m in got_a + got_b]
    assert sorted(ids) == sorted(r.request_id for r in sent)  # each once, none lost
    assert len(got_plain) == 20  # a plain subscriber sees everything
    ttl = await aioredis.Redis.from_url(redis_server.url).ttl(lock_key(encode(sent[0])))
    assert 0 < ttl <= 5


async def test_claim_goes_to_the_highest_affinity_and_only_it_runs(buses):
    handled: list[str] = []
    servers = []
    for affinity in (0.5, 0.8, 0.0, -1.0):
        server = RPCServer(buses())

        async def handler(request, server=server):
            handled.append(server.id)
            return starting(request)

        await server.register(START_EGRESS, handler, [""], lambda _, a=affinity: a)
        servers.append(server)
    async with RPCClient(buses(), "EgressInternal") as client:
        info = await client.call(
            START_EGRESS, StartEgressRequest(egress_id="EG_a"), [""], 5, START_EGRESS_SELECTION
        )
    assert info.egress_id == "EG_a" and info.status == lk.EGRESS_STARTING
    await asyncio.sleep(0.2)
    assert handled == [servers[1].id]
    for server in servers:
        await server.close()


async def test_claims_of_zero_and_below_are_never_chosen(buses):
    handled = []
    servers = []
    for affinity in (0.0, -1.0):
        server = RPCServer(buses())

        async def handler(request):
            handled.append(request)
            return starting(request)

        await server.register(START_EGRESS, handler, [""], lambda _, a=affinity: a)
        servers.append(server)
    async with RPCClient(buses(), "EgressInternal") as client:
        with pytest.raises(PsrpcError) as caught:
            await client.call(
                START_EGRESS, StartEgressRequest(egress_id="EG_b"), [""], 2, START_EGRESS_SELECTION
            )
    assert caught.value.code == ErrorCode.UNAVAILABLE
    assert caught.value.message == "no servers available (received 1 responses)"
    assert handled == []
    for server in servers:
        await server.close()


async def test_handler_errors_travel_as_psrpc_codes(buses):
    server = RPCServer(buses())

    async def handler(request):
        if request.egress_id == "EG_missing":
            raise PsrpcError(ErrorCode.NOT_FOUND, "egress EG_missing not found")
        raise RuntimeError("token sk-secret-123 rejected")

    await server.register(STOP_EGRESS, handler, ["EG_missing"])
    await server.register(STOP_EGRESS, handler, ["EG_broken"])
    async with RPCClient(buses(), "EgressHandler") as client:
        with pytest.raises(PsrpcError) as missing:
            await client.call(
                STOP_EGRESS, lk.StopEgressRequest(egress_id="EG_missing"), ["EG_missing"]
            )
        with pytest.raises(PsrpcError) as broken:
            await client.call(
                STOP_EGRESS, lk.StopEgressRequest(egress_id="EG_broken"), ["EG_broken"]
            )
    assert (missing.value.code, missing.value.message) == (
        "not_found",
        "egress EG_missing not found",
    )
    assert (broken.value.code, broken.value.message) == ("internal", "internal error")
    await server.close()


async def test_expired_request_is_dropped_and_a_live_one_claimed(buses):
    """livekit-server's captured StartEgress, replayed: as captured (long expired) nobody
    claims it; with a fresh expiry the server claims, is chosen and answers."""
    handled = []
    worker = EgressServer(buses())

    async def start(request):
        handled.append(request.egress_id)
        return starting(request)

    await worker.serve(start, lambda _: 0.5, list)
    captured = vector("EgressInternal|StartEgress|REQ")
    request = decode(captured)
    driver = buses()
    claims = await driver.subscribe(f"EgressInternal|{request.client_id}|CLAIM")
    responses = await driver.subscribe(f"EgressInternal|{request.client_id}|RES")

    await driver.redis.publish("EgressInternal|StartEgress|REQ", captured)
    assert await drain(claims, 0.5) == []

    request.sent_at = now_ns()
    request.expiry = request.sent_at + 5_000_000_000
    await driver.publish("EgressInternal|StartEgress|REQ", request)
    claim = await asyncio.wait_for(claims.get(), 5)  # the first claim, however busy the host
    assert (claim.request_id, claim.server_id, claim.affinity) == (
        request.request_id,
        worker.rpc.id,
        0.5,
    )
    await driver.publish(
        "EgressInternal|StartEgress|RCLAIM",
        ClaimResponse(request_id=request.request_id, server_id=worker.rpc.id),
    )
    [response] = await drain(responses)
    assert isinstance(response, Response) and response.code == ""
    info = lk.EgressInfo.FromString(response.raw_response)
    assert (info.egress_id, info.room_id) == ("EG_NDwdHiPNFGnH", "RM_HMwXMS5HS7V6")
    assert handled == ["EG_NDwdHiPNFGnH"]
    await worker.close()


async def test_list_active_egress_is_answered_by_every_worker_without_claims(buses):
    workers = []
    for ids in (["EG_1"], ["EG_2", "EG_3"]):
        worker = EgressServer(buses())
        await worker.serve(lambda r: None, lambda _: -1.0, lambda ids=ids: list(ids))
        workers.append(worker)
    driver = buses()
    responses = await driver.subscribe("EgressInternal|CLI_lister000000|RES")
    claims = await driver.subscribe("EgressInternal|CLI_lister000000|CLAIM")
    sent = now_ns()
    await driver.publish(
        request_channel("EgressInternal", "ListActiveEgress", [""]),
        Request(
            request_id="REQ_list00000000",
            client_id="CLI_lister000000",
            sent_at=sent,
            expiry=sent + 3_000_000_000,
            multi=True,
        ),
    )
    answers = await drain(responses)
    assert sorted(
        tuple(ListActiveEgressResponse.FromString(a.raw_response).egress_ids) for a in answers
    ) == [("EG_1",), ("EG_2", "EG_3")]
    assert await drain(claims, 0.1) == []
    for worker in workers:
        await worker.close()


async def test_egress_handlers_live_as_long_as_their_egress(buses):
    stops = []
    worker = EgressServer(buses())

    async def stop(request):
        stops.append(request.egress_id)
        return lk.EgressInfo(egress_id=request.egress_id, status=lk.EGRESS_ENDING)

    await worker.add_egress("EG_live", stop, stop)
    async with RPCClient(buses(), "EgressHandler") as client:
        info = await client.call(
            STOP_EGRESS, lk.StopEgressRequest(egress_id="EG_live"), ["EG_live"]
        )
        assert info.status == lk.EGRESS_ENDING
        with pytest.raises(PsrpcError, match="no response from servers"):
            await client.call(STOP_EGRESS, lk.StopEgressRequest(egress_id="EG_other"), ["EG_other"])
        await worker.remove_egress("EG_live")
        with pytest.raises(PsrpcError, match="no response from servers"):
            await client.call(STOP_EGRESS, lk.StopEgressRequest(egress_id="EG_live"), ["EG_live"])
    assert stops == ["EG_live"]
    await worker.close()


async def test_update_egress_retries_until_livekit_answers(buses):
    received = []
    io_server = RPCServer(buses())

    async def update(info):
        received.append(info.status)
        return empty_pb2.Empty()

    async with IOInfoClient(buses(), update_timeout_s=0.5, give_up_s=30) as io:
        task = asyncio.create_task(
            io.update_egress(lk.EgressInfo(egress_id="EG_r", status=lk.EGRESS_ACTIVE))
        )
        await asyncio.sleep(2.0)  # attempts fail: nobody serves IOInfo yet
        assert not task.done()
        await io_server.register(IO_UPDATE_EGRESS, update)
        async with asyncio.timeout(10):
            await task
    assert received == [lk.EGRESS_ACTIVE]
    await io_server.close()


async def test_update_egress_does_not_retry_a_refusal(buses):
    calls = []
    io_server = RPCServer(buses())

    async def update(info):
        calls.append(info.egress_id)
        raise PsrpcError(ErrorCode.NOT_FOUND, "egress not found")

    await io_server.register(IO_UPDATE_EGRESS, update)
    async with IOInfoClient(buses(), update_timeout_s=2) as io:
        with pytest.raises(PsrpcError, match="not_found"):
            await io.update_egress(lk.EgressInfo(egress_id="EG_gone"))
    assert calls == ["EG_gone"]
    await io_server.close()


async def test_a_worker_keeps_serving_across_a_redis_restart():
    from redis_server import RedisServer

    first = RedisServer().start()
    worker_bus, client_bus = Bus.from_url(first.url), Bus.from_url(first.url)
    second = None
    try:
        worker = EgressServer(worker_bus)

        async def stop(request):
            return lk.EgressInfo(egress_id=request.egress_id, status=lk.EGRESS_ENDING)

        await worker.add_egress("EG_restart", stop, stop)
        first.stop()
        second = RedisServer(first.port).start()  # same address: the buses reconnect to it
        async with RPCClient(client_bus, "EgressHandler") as client:
            for _ in range(20):  # until the worker's bus has reconnected and subscribed again
                try:
                    info = await client.call(
                        STOP_EGRESS, lk.StopEgressRequest(egress_id="EG_restart"), ["EG_restart"]
                    )
                    break
                except PsrpcError as exc:
                    assert exc.code == ErrorCode.UNAVAILABLE
            else:
                pytest.fail("the worker never answered after Redis came back")
        assert info.status == lk.EGRESS_ENDING
        await worker.close()
    finally:
        await worker_bus.close()
        await client_bus.close()
        if second is not None:
            second.stop()
        first.stop()
