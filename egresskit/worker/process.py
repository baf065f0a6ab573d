"""One worker process: livekit-server's psrpc on Redis in front of an EgressManager.

livekit-server asks every worker to claim each StartEgress; this process
claims it (see `start_affinity`) only while not draining and while the
request's CPU cost fits its budget. The chosen worker joins the room as a
hidden recorder of its own (token minted from `api_key`/`api_secret`), runs
the egress with the same graphs as `egresskit serve`, answers StopEgress and
UpdateStream on the egress id's topic while it runs, and reports every status
change to livekit-server's IOInfo, in order, so the server's ListEgress and
webhooks follow it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable

from google.protobuf.message import Message
from livekit.protocol import egress as egress_pb

from egresskit.egress.admission import Admission
from egresskit.egress.encoding import InvalidRequest
from egresskit.egress.errors import (
    EgressError,
)
from egresskit.egress.livekit_rooms import LiveKitServer
from egresskit.egress.manager import EgressManager, EndedEgress, new_egress_id
from egresskit.egress.refusals import REFUSALS, refusal_code
from egresskit.egress.session import EgressSession
from egresskit.egress.validation import Caller, stream_protocol, validate
from egresskit.psrpc import Bus, EgressServer, ErrorCode, IOInfoClient, PsrpcError, start_affinity
from egresskit.psrpc.protos.rpc_egress_pb2 import StartEgressRequest
from egresskit.rooms.local import RoomManager
from egresskit.worker.config import WorkerConfig

log = logging.getLogger(__name__)

CPU_SAMPLE_S = 1.0
# Shutdown never waits on an unreachable Redis longer than this per step (and once a
# step went unanswered, the next get only a moment each)...
REDIS_STEP_TIMEOUT_S = 3.0
UNANSWERED_STEP_TIMEOUT_S = 0.2
# ...nor on the final reports of drained egresses longer than this.
REPORT_TIMEOUT_S = 60.0


async def _bounded(step: Awaitable[None], what: str, timeout: float = REDIS_STEP_TIMEOUT_S) -> bool:
    """Whether `step` finished within `timeout`; if not it is cancelled and a warning logged."""
    try:
        await asyncio.wait_for(step, timeout)
    except TimeoutError:
        log.warning("%s took longer than %.1f s (Redis unreachable?): going on", what, timeout)
        return False
    return True


def psrpc_error(exc: Exception) -> PsrpcError:
    """The psrpc error (and so the Twirp error at livekit-server) a refusal becomes."""
    return PsrpcError(ErrorCode(refusal_code(exc)), str(exc))


def inner_request(request: StartEgressRequest) -> Message:
    """The egress request inside livekit-server's StartEgressRequest."""
    which = request.WhichOneof("request")
    if which is None:
        raise PsrpcError(ErrorCode.INVALID_ARGUMENT, "StartEgressRequest carries no request")
    if which == "replay":
        raise PsrpcError(ErrorCode.UNIMPLEMENTED, "replay export is not implemented")
    return getattr(request, which)


class Reporter:
    """Sends each egress's status changes to livekit-server's IOInfo, one at a time, in order."""

    def __init__(self, io: IOInfoClient) -> None:
        self.io = io
        self._last: dict[str, asyncio.Task[None]] = {}

    def send(self, event: str, info: egress_pb.EgressInfo) -> None:
        copy = egress_pb.EgressInfo()
        copy.CopyFrom(info)
        previous = self._last.get(info.egress_id)
        task = asyncio.create_task(self._send(previous, event, copy))
        self._last[info.egress_id] = task

    async def _send(
        self, previous: asyncio.Task[None] | None, event: str, info: egress_pb.EgressInfo
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        try:
            if event == "egress_started":
                await self.io.create_egress(info)
            else:
                await self.io.update_egress(info)
        except PsrpcError as exc:
            log.error("reporting %s of %s to livekit-server failed: %s", event, info.egress_id, exc)

    async def flush(self, egress_id: str) -> None:
        """Wait until every report of the egress so far has been answered; forget it."""
        last = self._last.get(egress_id)
        if last is not None:
            await asyncio.wait([last])
            if self._last.get(egress_id) is last:
                del self._last[egress_id]


class WorkerProcess:
    """One psrpc server with its own claims, admission and egresses."""

    def __init__(self, config: WorkerConfig, cores: float) -> None:
        self.config = config
        self.draining = False
        self.manager = EgressManager(
            RoomManager(),
            config.output_dir,
            admission=Admission(config.cpu_costs, cores),  # type: ignore[arg-type]
            default_storage=dict(config.storage) or None,
            backup_storage=dict(config.backup_storage) or None,
            max_duration_s=config.max_duration_s,
            on_event=self._on_event,
            livekit=LiveKitServer(config.ws_url, config.api_key, config.api_secret),
        )
        self.bus: Bus | None = None
        self.server: EgressServer | None = None
        self.reporter: Reporter | None = None
        self._watchers: set[asyncio.Task[None]] = set()
        # egress id -> [sum, samples, max] of this process's CPU use (cores) while it ran
        self._cpu: dict[str, list[float]] = {}
        self._sampler: asyncio.Task[None] | None = None
        self._redis_unanswered = False  # a shutdown step timed out: do not wait on the next

    # --- lifetime ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.bus = Bus(self.config.redis.client())
        io = await IOInfoClient(self.bus).start()
        self.reporter = Reporter(io)
        self.server = EgressServer(self.bus, self.config.cluster_id)
        await self.server.serve(self._start, self._affinity, self._list_active)
        self._sampler = asyncio.create_task(self._sample_cpu())
        log.info(
            "egress worker %d serving on Redis (CPU budget %.2f)",
            os.getpid(),
            self.admission.budget,
        )

    async def drain(self) -> None:
        """Claim nothing more; let running egresses finish their files and report them."""
        self.draining = True  # from here on every claim is -1, whatever Redis does
        log.info("draining: %d egress(es) running", len(self.manager.active()))
        if self.server is not None:
            await self._leave_redis(self.server.stop_serving(), "leaving StartEgress")
        await self.manager.shutdown(self.config.drain_timeout_s)
        if self._watchers:  # their final UpdateEgress (retried while Redis is away)
            await asyncio.wait(set(self._watchers), timeout=REPORT_TIMEOUT_S)

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
        for watcher in self._watchers:
            watcher.cancel()
        if self.server is not None:
            await self._leave_redis(self.server.close(), "closing the psrpc server")
        if self.reporter is not None:
            await self._leave_redis(self.reporter.io.close(), "closing the IOInfo client")
        if self.bus is not None:
            await self._leave_redis(self.bus.close(), "closing the Redis connection")

    async def _leave_redis(self, step: Awaitable[None], what: str) -> None:
        """A shutdown step on Redis: once one went unanswered, Redis is taken as gone."""
        timeout = UNANSWERED_STEP_TIMEOUT_S if self._redis_unanswered else REDIS_STEP_TIMEOUT_S
        if not await _bounded(step, what, timeout):
            self._redis_unanswered = True

    # --- served -----------------------------------------------------------------------------

    def _list_active(self) -> list[str]:
        return [s.egress_id for s in self.manager.active()]

    @property
    def admission(self) -> Admission:
        return self.manager.admission

    def _fits(self, request: StartEgressRequest) -> bool:
        """Whether the request's CPU cost fits now (`estimated_cpu` wins over the kind's);
        an invalid request is claimed, so that its start answers why it is invalid."""
        try:
            spec = validate(inner_request(request))
        except (PsrpcError,) + REFUSALS:
            return True
        cost = request.estimated_cpu or self.admission.costs.of(spec)
        return len(self.admission) == 0 or cost <= self.admission.available + 1e-9

    def _affinity(self, request: StartEgressRequest) -> float:
        fits = self._fits(request)
        return start_affinity(draining=self.draining, fits=fits, active=len(self.manager.active()))

    async def _start(self, request: StartEgressRequest) -> egress_pb.EgressInfo:
        if self.draining:
            raise PsrpcError(ErrorCode.UNAVAILABLE, "this egress worker is shutting down")
        inner = inner_request(request)
        assert self.server is not None
        egress_id = request.egress_id or new_egress_id()
        # StopEgress and UpdateStream route here from the start: subscribing to their
        # channels (Redis round trips) runs while the room is joined, not after it.
        routing = None
        if egress_id not in self.manager:  # a known id is refused by manager.start
            routing = asyncio.create_task(
                self.server.add_egress(egress_id, self._stop, self._update_stream)
            )
        try:
            info = await self.manager.start(
                inner,
                # whoever asked livekit-server is a caller like any of the API's
                Caller(self.config.api_key, self.config.network_policy),
                egress_id=egress_id,
                room_id=request.room_id,
                estimated_cpu=request.estimated_cpu,
            )
        except BaseException as exc:
            if routing is not None:
                await asyncio.wait([routing])
                await _bounded(self.server.remove_egress(egress_id), "unrouting a failed egress")
            if isinstance(exc, REFUSALS):
                raise psrpc_error(exc) from None
            raise
        if routing is not None:
            await routing
        session = self.manager.get(info.egress_id)
        watcher = asyncio.create_task(self._watch(session))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        log.info("egress %s started (%s)", info.egress_id, info.WhichOneof("request"))
        return info

    async def _watch(self, session: EgressSession | EndedEgress) -> None:
        """Once the egress has ended and its end is reported, its id no longer routes here."""
        if isinstance(session, EgressSession):
            await session.wait()
        assert self.server is not None and self.reporter is not None
        await self.reporter.flush(session.egress_id)
        await self.server.remove_egress(session.egress_id)
        total, samples, peak = self._cpu.pop(session.egress_id, [0.0, 0, 0.0])
        if samples:
            try:
                await self.reporter.io.update_metrics(
                    session.public_info(), round(total / samples, 3), round(peak, 3)
                )
            except PsrpcError as exc:
                log.warning("UpdateMetrics of %s failed: %s", session.egress_id, exc)
        log.info(
            "egress %s ended %s",
            session.egress_id,
            egress_pb.EgressStatus.Name(session.info.status),
        )

    async def _stop(self, request: egress_pb.StopEgressRequest) -> egress_pb.EgressInfo:
        try:
            return self.manager.stop(request.egress_id)
        except EgressError as exc:
            raise psrpc_error(exc) from None

    async def _update_stream(self, request: egress_pb.UpdateStreamRequest) -> egress_pb.EgressInfo:
        try:
            for index, url in enumerate(request.add_output_urls):
                stream_protocol(url, f"add_output_urls[{index}]")
            return await self.manager.update_stream(
                request.egress_id, list(request.add_output_urls), list(request.remove_output_urls)
            )
        except (EgressError, InvalidRequest) as exc:
            raise psrpc_error(exc) from None
        except ValueError as exc:
            raise PsrpcError(ErrorCode.INVALID_ARGUMENT, str(exc)) from None

    # --- reported ---------------------------------------------------------------------------

    async def _sample_cpu(self) -> None:
        """This process's CPU use each second, credited to every egress running (UpdateMetrics:
        per process, which is per egress when one runs)."""
        loop = asyncio.get_running_loop()
        cpu, wall = time.process_time(), loop.time()
        while True:
            await asyncio.sleep(CPU_SAMPLE_S)
            now_cpu, now_wall = time.process_time(), loop.time()
            usage = (now_cpu - cpu) / max(now_wall - wall, 1e-6)
            cpu, wall = now_cpu, now_wall
            for session in self.manager.active():
                entry = self._cpu.setdefault(session.egress_id, [0.0, 0, 0.0])
                entry[0] += usage
                entry[1] += 1
                entry[2] = max(entry[2], usage)

    def _on_event(self, event: str, session: EgressSession) -> None:
        if self.reporter is not None:
            self.reporter.send(event, session.public_info())

    def status(self) -> dict[str, float]:
        """What /healthz and /metrics show of this process."""
        return {
            "pid": os.getpid(),
            "active_egress": len(self.manager.active()),
            "cpu_budget": round(self.admission.budget, 3),
            "available_cpu": round(self.admission.available, 3),
            "draining": int(self.draining),
            "dropped_frames": self.manager.dropped_frames(),
        }
