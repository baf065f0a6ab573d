"""The egress worker's psrpc services, as livekit-server routes them.

Served by the worker: `EgressInternal.StartEgress` (affinity + claim, on the
worker's cluster id topic, "" by default), `EgressInternal.ListActiveEgress`
(multi), and `EgressHandler.StopEgress` / `UpdateStream` (claim + queue) on
each running egress id's topic. Called by the worker: livekit-server's
`IOInfo` (claim + queue, no topic) to create and update its egress records.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from google.protobuf import empty_pb2
from livekit.protocol import egress as lk

from egresskit.psrpc.bus import Bus
from egresskit.psrpc.protos import rpc_egress_pb2, rpc_io_pb2
from egresskit.psrpc.rpc import (
    ErrorCode,
    Method,
    PsrpcError,
    Req,
    Resp,
    RPCClient,
    RPCServer,
    Selection,
)

log = logging.getLogger(__name__)

START_EGRESS = Method(
    "EgressInternal",
    "StartEgress",
    rpc_egress_pb2.StartEgressRequest,
    lk.EgressInfo,
    affinity=True,
    claim=True,
)
LIST_ACTIVE_EGRESS = Method(
    "EgressInternal",
    "ListActiveEgress",
    rpc_egress_pb2.ListActiveEgressRequest,
    rpc_egress_pb2.ListActiveEgressResponse,
    multi=True,
)
STOP_EGRESS = Method(
    "EgressHandler", "StopEgress", lk.StopEgressRequest, lk.EgressInfo, claim=True, queue=True
)
UPDATE_STREAM = Method(
    "EgressHandler", "UpdateStream", lk.UpdateStreamRequest, lk.EgressInfo, claim=True, queue=True
)


def _io(name: str, request: type[Req], response: type[Resp]) -> Method[Req, Resp]:
    return Method("IOInfo", name, request, response, claim=True, queue=True)


IO_CREATE_EGRESS = _io("CreateEgress", lk.EgressInfo, empty_pb2.Empty)
IO_UPDATE_EGRESS = _io("UpdateEgress", lk.EgressInfo, empty_pb2.Empty)
IO_GET_EGRESS = _io("GetEgress", rpc_io_pb2.GetEgressRequest, lk.EgressInfo)
IO_UPDATE_METRICS = _io("UpdateMetrics", rpc_io_pb2.UpdateMetricsRequest, empty_pb2.Empty)

# livekit-server's choice among StartEgress claims: 1 wins at once, otherwise
# the best claim above 0 half a second after the first, at most 1 s.
START_EGRESS_SELECTION = Selection(
    maximum_affinity=1.0, affinity_timeout_s=1.0, short_circuit_s=0.5
)

AFFINITY_REFUSE = -1.0
AFFINITY_IDLE = 0.5
AFFINITY_BUSY = 1.0


def start_affinity(*, draining: bool, fits: bool, active: int) -> float:
    """A worker's claim on a StartEgress: none when draining or the CPU cost does not
    fit, 0.5 when idle, 1 when it already runs egresses (packing work onto busy
    workers, as livekit's own worker does). livekit-server never picks a claim of 0."""
    if draining or not fits:
        return AFFINITY_REFUSE
    return AFFINITY_BUSY if active > 0 else AFFINITY_IDLE


StartHandler = Callable[[rpc_egress_pb2.StartEgressRequest], Awaitable[lk.EgressInfo]]
StartAffinity = Callable[[rpc_egress_pb2.StartEgressRequest], float]
StopHandler = Callable[[lk.StopEgressRequest], Awaitable[lk.EgressInfo]]
UpdateStreamHandler = Callable[[lk.UpdateStreamRequest], Awaitable[lk.EgressInfo]]
ListActive = Callable[[], list[str]]


class EgressServer:
    """The worker's side of EgressInternal and EgressHandler on one RPC server."""

    def __init__(self, bus: Bus, cluster_id: str = "", server_id: str | None = None) -> None:
        self.rpc = RPCServer(bus, server_id)
        self.topic = [cluster_id]

    async def serve(
        self, start: StartHandler, affinity: StartAffinity, list_active: ListActive
    ) -> None:
        """Take StartEgress requests (claims scored by `affinity`) and answer ListActiveEgress."""

        async def list_handler(
            _: rpc_egress_pb2.ListActiveEgressRequest,
        ) -> rpc_egress_pb2.ListActiveEgressResponse:
            return rpc_egress_pb2.ListActiveEgressResponse(egress_ids=list_active())

        await self.rpc.register(START_EGRESS, start, self.topic, affinity)
        await self.rpc.register(LIST_ACTIVE_EGRESS, list_handler, self.topic)

    async def stop_serving(self) -> None:
        """Stop taking StartEgress (draining); running egresses keep their handlers."""
        await self.rpc.deregister(START_EGRESS, self.topic)
        await self.rpc.deregister(LIST_ACTIVE_EGRESS, self.topic)

    async def add_egress(
        self, egress_id: str, stop: StopHandler, update_stream: UpdateStreamHandler
    ) -> None:
        """Answer StopEgress and UpdateStream for a started egress (topic = its id)."""
        await self.rpc.register(STOP_EGRESS, stop, [egress_id])
        await self.rpc.register(UPDATE_STREAM, update_stream, [egress_id])

    async def remove_egress(self, egress_id: str) -> None:
        """The egress has ended: its id no longer routes here."""
        await self.rpc.deregister(STOP_EGRESS, [egress_id])
        await self.rpc.deregister(UPDATE_STREAM, [egress_id])

    async def close(self) -> None:
        await self.rpc.close()


RETRYABLE = frozenset({ErrorCode.DEADLINE_EXCEEDED, ErrorCode.UNAVAILABLE})


class IOInfoClient:
    """livekit-server's egress records, as the worker reports to them.

    `update_egress` retries timeouts and unavailability with backoff (250 ms,
    doubling up to `max_backoff_s`) until `give_up_s` has passed, then raises.
    """

    def __init__(
        self,
        bus: Bus,
        create_timeout_s: float = 15.0,
        update_timeout_s: float = 30.0,
        max_backoff_s: float = 60.0,
        give_up_s: float = 600.0,
    ) -> None:
        self.rpc = RPCClient(bus, "IOInfo")
        self.create_timeout_s = create_timeout_s
        self.update_timeout_s = update_timeout_s
        self.max_backoff_s = max_backoff_s
        self.give_up_s = give_up_s

    async def start(self) -> IOInfoClient:
        await self.rpc.start()
        return self

    async def close(self) -> None:
        await self.rpc.close()

    async def __aenter__(self) -> IOInfoClient:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def create_egress(self, info: lk.EgressInfo) -> None:
        await self.rpc.call(IO_CREATE_EGRESS, info, timeout_s=self.create_timeout_s)

    async def update_egress(self, info: lk.EgressInfo) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.give_up_s
        backoff = 0.25
        while True:
            try:
                await self.rpc.call(IO_UPDATE_EGRESS, info, timeout_s=self.update_timeout_s)
                return
            except PsrpcError as exc:
                if exc.code not in RETRYABLE or loop.time() + backoff >= give_up:
                    raise
                log.warning(
                    "psrpc: UpdateEgress %s failed (%s), retrying in %.2f s",
                    info.egress_id,
                    exc,
                    backoff,
                )
            await asyncio.sleep(backoff * random.uniform(1.0, 1.25))
            backoff = min(backoff * 2, self.max_backoff_s)

    async def get_egress(self, egress_id: str) -> lk.EgressInfo:
        request = rpc_io_pb2.GetEgressRequest(egress_id=egress_id)
        return await self.rpc.call(IO_GET_EGRESS, request, timeout_s=self.create_timeout_s)

    async def update_metrics(
        self, info: lk.EgressInfo, avg_cpu_usage: float, max_cpu_usage: float
    ) -> None:
        request = rpc_io_pb2.UpdateMetricsRequest(
            info=info, avg_cpu_usage=avg_cpu_usage, max_cpu_usage=max_cpu_usage
        )
        await self.rpc.call(IO_UPDATE_METRICS, request, timeout_s=self.update_timeout_s)
