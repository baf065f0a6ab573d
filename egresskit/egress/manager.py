"""EgressManager: every egress of a service, by id, from start request to retention."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
import string
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.message import Message
from livekit.protocol import egress as egress_pb

from egresskit.egress.admission import Admission
from egresskit.egress.errors import (
    EgressEnded,
    EgressNotFound,
    NoCapacity,
    NotSupported,
    RoomNotFound,
)
from egresskit.egress.livekit_rooms import LiveKitServer, SingleRoom, follow_room, join_room
from egresskit.egress.planner import plan
from egresskit.egress.session import SHUTDOWN, STOP_API, EgressSession
from egresskit.egress.spec import EgressSpec, RoomCompositeSource, WebSource
from egresskit.egress.templates import template_page_url, template_token
from egresskit.egress.validation import Caller, check_caller, check_layout, validate
from egresskit.protos import egress_pb2 as extension_pb
from egresskit.rooms.local import RoomManager
from egresskit.rooms.signal import SignalError, set_participant_metadata
from egresskit.stages.page import START_SIGNAL_TIMEOUT_S
from egresskit.storage.base import Storage
from egresskit.storage.registry import storage_from_spec
from egresskit.storage.upload import RetryPolicy

log = logging.getLogger(__name__)

RETENTION_S = 24 * 3600
_ID_ALPHABET = string.ascii_letters + string.digits

# Which EgressInfo `request` field carries each type of start request (StartEgress's
# request stays a StartEgressRequest whatever its source, so the type decides, not the kind).
_REQUEST_FIELDS = {
    f.message_type.full_name: f.name
    for f in egress_pb.EgressInfo.DESCRIPTOR.oneofs_by_name["request"].fields
    if f.message_type is not None
}

EventSink = Callable[[str, EgressSession], None]


@dataclass(frozen=True, slots=True)
class EndedEgress:
    """What is kept of an egress once it has ended: its final EgressInfo, for ListEgress.

    The session, its plan and its graph are dropped when the egress ends, so
    a service keeps no codec, frame or thread of an egress that has ended.
    """

    info: egress_pb.EgressInfo
    public: egress_pb.EgressInfo
    ended_monotonic: float
    upload_bytes: int

    @property
    def egress_id(self) -> str:
        return self.info.egress_id

    @property
    def active(self) -> bool:
        return False

    def public_info(self) -> egress_pb.EgressInfo:
        return self.public


def new_egress_id() -> str:
    return "EG_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))


class EgressManager:
    """Starts, stops, lists and retires egresses; the service's only door to graphs."""

    def __init__(
        self,
        rooms: RoomManager,
        output_dir: Path,
        *,
        default_storage: dict[str, Any] | None = None,
        backup_storage: dict[str, Any] | None = None,
        max_duration_s: float = 0.0,
        max_concurrent: int = 0,
        admission: Admission | None = None,
        retry: RetryPolicy | None = None,
        on_event: EventSink | None = None,
        livekit: LiveKitServer | None = None,
        web_start_timeout_s: float = START_SIGNAL_TIMEOUT_S,
        template_key: tuple[str, str] | None = None,
    ) -> None:
        """With `livekit`, room names name that server's rooms, not the embedded `rooms`.

        `web_start_timeout_s`: how long a web egress with `await_start_signal`
        (and a custom template) waits for its page's START_RECORDING before it
        fails. `template_key` (API key, secret) signs the tokens custom
        template pages of embedded rooms subscribe with.
        """
        self.rooms = rooms
        self.livekit = livekit
        self.web_start_timeout_s = web_start_timeout_s
        self.template_key = template_key
        self.output_dir = output_dir.resolve()
        self.default_storage = dict(default_storage or {})
        self._backup: Storage | None = storage_from_spec(backup_storage) if backup_storage else None
        self.max_duration_s = max_duration_s
        self.max_concurrent = max_concurrent
        # not `admission or ...`: an Admission with nothing running is falsy (its __len__)
        self.admission = admission if admission is not None else Admission()
        self.retry = retry or RetryPolicy()
        self._on_event = on_event
        self._sessions: dict[str, EgressSession | EndedEgress] = {}
        self._followers: set[asyncio.Task[None]] = set()  # LiveKit rooms of running egresses
        self._accepting = True
        self.started: dict[str, int] = {}  # kind -> egresses started
        self.ended: dict[tuple[str, str], int] = {}  # (kind, final status) -> egresses ended
        self._ended_dropped = 0  # frames dropped by egresses that have ended

    # --- starting ---------------------------------------------------------------------------

    async def start(
        self,
        request: Message,
        caller: Caller | None = None,
        *,
        egress_id: str = "",
        room_id: str = "",
        estimated_cpu: float = 0.0,
        service_url: str = "",
    ) -> egress_pb.EgressInfo:
        """Validate, admit, plan and start; returns the STARTING EgressInfo (redacted).

        `caller` is who sent the request through the API: its destinations,
        storage and webhook keys are held to the caller rules. None is the
        operator's own request (auto egress from the server's config).
        `egress_id` and `room_id` are given when another server (livekit-server's
        psrpc dispatch) named the egress already; otherwise egresskit names it.
        `estimated_cpu` (cores), when given, replaces the nominal cost of the
        request's kind in admission (a worker's StartEgress request carries one).
        `service_url` is where this service answers (custom template pages of
        embedded rooms reach it there).
        """
        if not self._accepting:
            raise NoCapacity("the service is shutting down")
        if self.max_concurrent and len(self.admission) >= self.max_concurrent:
            raise NoCapacity(f"at most {self.max_concurrent} egresses run at once")
        spec = validate(request)
        if caller is not None:
            spec = check_caller(spec, caller)
        if egress_id in self._sessions:
            raise EgressEnded(f"egress {egress_id} already exists")
        egress_id = egress_id or new_egress_id()
        cost = estimated_cpu if estimated_cpu > 0 else self.admission.costs.of(spec)
        self.admission.admit(egress_id, spec.kind, cost)
        try:
            source = spec.source
            if isinstance(source, RoomCompositeSource) and source.custom_base_url:
                spec = self._template_page(spec, source, egress_id, service_url)
            return await self._start(egress_id, room_id, spec, request)
        except BaseException:
            self.admission.release(egress_id)
            raise

    async def _start(
        self, egress_id: str, room_id: str, spec: EgressSpec, request: Message
    ) -> egress_pb.EgressInfo:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        livekit_room = None
        rooms: RoomManager | SingleRoom = self.rooms
        if self.livekit is not None and spec.page is None:  # a page joins a room itself
            livekit_room = await join_room(self.livekit, spec, egress_id)
            rooms = SingleRoom(livekit_room)
        try:
            planned = plan(
                spec,
                egress_id,
                rooms,
                self.output_dir,
                self.default_storage,
                web_start_timeout_s=self.web_start_timeout_s,
            )
        except BaseException:
            if livekit_room is not None:
                await livekit_room.close()
            raise
        info = egress_pb.EgressInfo(
            egress_id=egress_id,
            room_id=room_id or (planned.room.sid if planned.room else ""),
            room_name=planned.room.name if planned.room else spec.room_name,
            source_type=egress_pb.EGRESS_SOURCE_TYPE_SDK,
        )
        if isinstance(request, extension_pb.RoomCompositeEgressRequest):
            request = request.request  # EgressInfo carries LiveKit's own request
        getattr(info, _REQUEST_FIELDS[request.DESCRIPTOR.full_name]).CopyFrom(request)
        session = EgressSession(
            info,
            planned,
            listener=self._event,
            kind=spec.kind,
            max_duration_s=self.max_duration_s,
            retry=self.retry,
            backup=self._backup,
        )
        session.webhooks = spec.webhooks
        session.signing_key = spec.caller_key
        self._sessions[egress_id] = session
        try:
            await session.start()
        except Exception:
            self._sessions.pop(egress_id, None)
            await planned.graph.cancel()
            planned.graph.release()
            if livekit_room is not None:
                await livekit_room.close()
            raise
        if livekit_room is not None:
            follower = asyncio.create_task(follow_room(session, livekit_room))
            self._followers.add(follower)
            follower.add_done_callback(self._followers.discard)
            session.set_details("; ".join(livekit_room.warnings))
        return session.public_info()

    def _template_page(
        self, spec: EgressSpec, source: RoomCompositeSource, egress_id: str, service_url: str
    ) -> EgressSpec:
        """A custom template request becomes the recording of its page, from its start signal."""
        if self.livekit is not None:
            server = self.livekit.url
            key, secret = self.livekit.api_key, self.livekit.api_secret
        else:
            if self.rooms.get(spec.room_name) is None:
                raise RoomNotFound(spec.room_name)
            if not service_url or self.template_key is None:
                raise NotSupported("custom templates outside the Egress API (no service address)")
            server = service_url
            key, secret = self.template_key
        token = template_token(key, secret, spec.room_name, egress_id)
        url = template_page_url(source.custom_base_url, server, source.layout, token)
        page = WebSource(url, await_start_signal=True, room_name=source.room_name)
        return dataclasses.replace(spec, source=dataclasses.replace(source, page=page))

    def _event(self, event: str, session: EgressSession) -> None:
        if event == "egress_started":
            self.started[session.kind] = self.started.get(session.kind, 0) + 1
        elif event == "egress_ended":
            key = (session.kind, egress_pb.EgressStatus.Name(session.info.status))
            self.ended[key] = self.ended.get(key, 0) + 1
        if self._on_event is not None:
            self._on_event(event, session)
        if event == "egress_ended":
            self.admission.release(session.egress_id)
            self._keep_info_only(session)

    def _keep_info_only(self, session: EgressSession) -> None:
        """Replace an ended session by its EndedEgress, counting what the metrics need."""
        self._ended_dropped += sum(link.dropped for link in session.plan.graph.links)
        if self._sessions.get(session.egress_id) is session:
            self._sessions[session.egress_id] = EndedEgress(
                session.info,
                session.public_info(),
                session.ended_monotonic or time.monotonic(),
                session.upload_bytes,
            )

    # --- steering ---------------------------------------------------------------------------

    def __contains__(self, egress_id: str) -> bool:
        return egress_id in self._sessions

    def get(self, egress_id: str) -> EgressSession | EndedEgress:
        session = self._sessions.get(egress_id)
        if session is None:
            raise EgressNotFound(egress_id)
        return session

    def _running(self, egress_id: str) -> EgressSession:
        """The session of an egress that can still be steered (EgressEnded otherwise)."""
        session = self.get(egress_id)
        if not isinstance(session, EgressSession) or session.info.status == egress_pb.EGRESS_ENDING:
            raise EgressEnded(f"egress {egress_id} has ended")
        return session

    def stop(self, egress_id: str, *, discard: bool = False) -> egress_pb.EgressInfo:
        """Begin draining; the info returned is ENDING (final state by webhook / ListEgress).

        With `discard`, everything written and uploaded is deleted and the
        egress ends ABORTED (see EgressSession.discard).
        """
        session = self.get(egress_id)
        if not isinstance(session, EgressSession) or (
            session.info.status != egress_pb.EGRESS_ACTIVE
            and session.info.status != egress_pb.EGRESS_STARTING
        ):
            status = egress_pb.EgressStatus.Name(session.info.status)
            raise EgressEnded(f"egress {egress_id} cannot be stopped: it is {status}")
        if discard:
            session.discard()
        else:
            session.end(STOP_API)
        return session.public_info()

    def pause(self, egress_id: str) -> egress_pb.EgressInfo:
        """Write nothing until resume (EgressSession.pause); pausing twice changes nothing."""
        session = self._running(egress_id)
        try:
            session.pause()
        except ValueError as exc:
            raise NotSupported(str(exc)) from None
        return session.public_info()

    def resume(self, egress_id: str) -> egress_pb.EgressInfo:
        """Go on writing after a pause; resuming an egress that is not paused changes nothing."""
        session = self._running(egress_id)
        try:
            session.resume()
        except ValueError as exc:
            raise NotSupported(str(exc)) from None
        return session.public_info()

    def update_participants(
        self, egress_id: str, include: list[str], exclude: list[str]
    ) -> egress_pb.EgressInfo:
        """Choose who a running room composite draws and mixes (lists checked by the caller)."""
        session = self._running(egress_id)
        try:
            session.choose_participants(include, exclude)
        except ValueError as exc:
            raise EgressEnded(f"egress {egress_id}: {exc}") from None
        return session.public_info()

    def update_layout(self, egress_id: str, layout: str) -> egress_pb.EgressInfo:
        """Switch a composite's layout; a custom template takes any name (InvalidRequest)."""
        known = self._sessions.get(egress_id)
        template = (
            isinstance(known, EgressSession) and known.plan.page is not None and known.kind != "web"
        )
        if not template:  # a bad name is refused before whether the egress runs is checked
            check_layout(layout)
        session = self._running(egress_id)
        try:
            session.update_layout(layout)
        except ValueError as exc:
            raise EgressEnded(f"egress {egress_id}: {exc}") from None
        if template and self.livekit is not None:
            # @livekit/egress-sdk follows its recorder's metadata, as LiveKit's egress sets it
            self._in_background(self._recorder_layout(session.info.room_name, egress_id, layout))
        return session.public_info()

    async def _recorder_layout(self, room: str, identity: str, layout: str) -> None:
        assert self.livekit is not None
        server = self.livekit
        try:
            await set_participant_metadata(
                server.url, server.api_key, server.api_secret, room, identity,
                json.dumps({"layout": layout}),
            )  # fmt: skip
        except SignalError as exc:
            log.warning("egress %s: the template page did not get its layout: %s", identity, exc)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._followers.add(task)
        task.add_done_callback(self._followers.discard)

    async def update_stream(
        self, egress_id: str, add: list[str], remove: list[str]
    ) -> egress_pb.EgressInfo:
        """Add and remove stream URLs of a running egress (ValueError for a bad change)."""
        session = self._running(egress_id)
        await session.update_stream(add, remove)
        return session.public_info()

    # --- listing ----------------------------------------------------------------------------

    def active(self) -> list[EgressSession]:
        return [s for s in self._sessions.values() if isinstance(s, EgressSession) and s.active]

    def list(
        self, *, room_name: str = "", egress_id: str = "", active: bool = False
    ) -> list[egress_pb.EgressInfo]:
        self._retire()
        sessions: Iterable[EgressSession | EndedEgress]
        if egress_id:
            sessions = [self._sessions[egress_id]] if egress_id in self._sessions else []
        else:
            sessions = self._sessions.values()
        return [
            s.public_info()
            for s in sessions
            if (not room_name or s.info.room_name == room_name) and (not active or s.active)
        ]

    def _retire(self) -> None:
        """Forget egresses that ended more than RETENTION_S ago."""
        cutoff = time.monotonic() - RETENTION_S
        for egress_id in [
            i
            for i, s in self._sessions.items()
            if s.ended_monotonic is not None and s.ended_monotonic < cutoff
        ]:
            del self._sessions[egress_id]

    def dropped_frames(self) -> int:
        running = (s for s in self._sessions.values() if isinstance(s, EgressSession))
        return self._ended_dropped + sum(
            link.dropped for s in running for link in s.plan.graph.links
        )

    def upload_bytes(self) -> int:
        return sum(s.upload_bytes for s in self._sessions.values())

    # --- shutting down ----------------------------------------------------------------------

    async def shutdown(self, timeout: float = 30.0) -> None:
        """Refuse new egresses, drain running ones to finished files, then return."""
        self._accepting = False
        running = self.active()
        for session in running:
            session.end(SHUTDOWN)
        if not running:
            return
        done, pending = await asyncio.wait(
            [asyncio.ensure_future(s.wait()) for s in running], timeout=timeout
        )
        for session in running:
            if not session.done.is_set():
                log.warning(
                    "egress %s did not drain in %.0f s: aborting", session.egress_id, timeout
                )
                await session.abort()
        for waiter in pending:
            waiter.cancel()
        if self._followers:  # the egresses' LiveKit rooms are left once they finished
            await asyncio.wait(set(self._followers), timeout=10.0)
