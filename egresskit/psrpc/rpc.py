"""psrpc calls over the bus: servers that claim and answer, clients that choose.

A method is routed by its flags, as psrpc registers them: `claim` methods go
through the claim flow (servers offer with an affinity, the client names one,
only that one runs the handler), `queue` methods are taken by one server per
process group through the bus lock, `multi` methods are answered by every
server. Errors travel as psrpc code strings (`unavailable`, `not_found`...).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar

from google.protobuf.message import DecodeError, Message
from redis.exceptions import RedisError

from egresskit.psrpc.bus import (
    Bus,
    Subscription,
    claim_request_channel,
    claim_response_channel,
    expired,
    new_id,
    now_ns,
    request_channel,
    response_channel,
)
from egresskit.psrpc.protos.internal_pb2 import ClaimRequest, ClaimResponse, Request, Response

log = logging.getLogger(__name__)

# a method's request and response messages
Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


class ErrorCode(StrEnum):
    """psrpc's error code strings, as they travel in Response.code."""

    CANCELED = "canceled"
    MALFORMED_REQUEST = "malformed_request"
    MALFORMED_RESPONSE = "malformed_result"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    UNAVAILABLE = "unavailable"
    UNKNOWN = "unknown"
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    NOT_ACCEPTABLE = "not_acceptable"
    ALREADY_EXISTS = "already_exists"
    PERMISSION_DENIED = "permission_denied"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    FAILED_PRECONDITION = "failed_precondition"
    ABORTED = "aborted"
    OUT_OF_RANGE = "out_of_range"
    UNIMPLEMENTED = "unimplemented"
    INTERNAL = "internal"
    DATA_LOSS = "data_loss"
    UNAUTHENTICATED = "unauthenticated"
    UNPROCESSABLE_ENTITY = "unprocessable_entity"
    UPSTREAM_SERVER_ERROR = "upstream_server_error"
    UPSTREAM_CLIENT_ERROR = "upstream_client_error"


class PsrpcError(Exception):
    """An error with a psrpc code: raised by handlers, and by clients for error responses."""

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True)
class Method(Generic[Req, Resp]):
    """One psrpc method: its service, name, message types and routing flags."""

    service: str
    name: str
    request: type[Req]
    response: type[Resp]
    affinity: bool = False
    multi: bool = False
    claim: bool = False
    queue: bool = False


@dataclass(frozen=True)
class Selection:
    """How a client picks among claims (psrpc's SelectionOpts).

    A claim of at least `maximum_affinity` (when > 0), or any claim with
    `accept_first`, wins at once; otherwise the highest claim above 0 wins when
    `short_circuit_s` has passed since the first claim or `affinity_timeout_s`
    since the request.
    """

    minimum_affinity: float = 0.0
    maximum_affinity: float = 0.0
    accept_first: bool = False
    affinity_timeout_s: float = 1.0
    short_circuit_s: float = 0.0


def default_selection(method: Method[Any, Any]) -> Selection:
    """psrpc's defaults: affinity methods wait for the best claim (200 ms after the
    first, 1 s at most); the others take the first claim."""
    if method.affinity:
        return Selection(affinity_timeout_s=1.0, short_circuit_s=0.2)
    return Selection(accept_first=True)


Handler = Callable[[Req], Awaitable[Resp]]
Affinity = Callable[[Req], float]


def error_response_fields(exc: BaseException) -> tuple[str, str]:
    """(code, message) for a Response; unexpected exceptions say only `internal`."""
    if isinstance(exc, PsrpcError):
        return str(exc.code), exc.message
    if isinstance(exc, TimeoutError):
        return ErrorCode.DEADLINE_EXCEEDED, "request timed out"
    return ErrorCode.INTERNAL, "internal error"


# --- server --------------------------------------------------------------------------------


@dataclass
class _Registration(Generic[Req, Resp]):
    method: Method[Req, Resp]
    topic: tuple[str, ...]
    handler: Handler[Req, Resp]
    affinity: Affinity[Req] | None
    requests: Subscription
    claims: Subscription | None
    pending: dict[str, asyncio.Future[ClaimResponse]] = field(default_factory=dict)
    tasks: set[asyncio.Task] = field(default_factory=set)
    loops: list[asyncio.Task] = field(default_factory=list)


class RPCServer:
    """Serves psrpc methods under one server id (`SRV_...`).

    `register` subscribes to a method's request channel for a topic (and to its
    claim channel for claim methods); `deregister` stops taking new requests
    there, letting the ones in hand finish.
    """

    def __init__(self, bus: Bus, server_id: str | None = None) -> None:
        self.bus = bus
        self.id = server_id or new_id("SRV_")
        # each entry serves its own method's messages
        self._registrations: dict[tuple[str, str, tuple[str, ...]], _Registration[Any, Any]] = {}

    async def register(
        self,
        method: Method[Req, Resp],
        handler: Handler[Req, Resp],
        topic: Sequence[str] = (),
        affinity: Affinity[Req] | None = None,
    ) -> None:
        key = (method.service, method.name, tuple(topic))
        if key in self._registrations:
            raise ValueError(f"{method.service}.{method.name} {list(topic)} is already served")
        requests = await self.bus.subscribe(
            request_channel(method.service, method.name, topic), queue=method.queue
        )
        claims = None
        if method.claim:
            claims = await self.bus.subscribe(
                claim_response_channel(method.service, method.name, topic)
            )
        reg = _Registration(method, tuple(topic), handler, affinity, requests, claims)
        reg.loops.append(asyncio.create_task(self._serve(reg)))
        if claims is not None:
            reg.loops.append(asyncio.create_task(self._route_claims(reg)))
        self._registrations[key] = reg

    async def deregister(self, method: Method[Any, Any], topic: Sequence[str] = ()) -> None:
        reg = self._registrations.pop((method.service, method.name, tuple(topic)), None)
        if reg is not None:
            await self._close(reg)

    async def close(self) -> None:
        """Deregister everything, waiting for requests in hand."""
        regs, self._registrations = list(self._registrations.values()), {}
        await asyncio.gather(*(self._close(reg) for reg in regs))

    async def _close(self, reg: _Registration[Any, Any]) -> None:
        await reg.requests.close()
        if reg.tasks:
            await asyncio.gather(*reg.tasks, return_exceptions=True)
        if reg.claims is not None:
            await reg.claims.close()
        for loop in reg.loops:
            loop.cancel()
        await asyncio.gather(*reg.loops, return_exceptions=True)

    async def _serve(self, reg: _Registration[Any, Any]) -> None:
        async for request in reg.requests:
            if not isinstance(request, Request) or expired(request):
                continue
            task = asyncio.create_task(self._handle_logged(reg, request))
            reg.tasks.add(task)
            task.add_done_callback(reg.tasks.discard)

    async def _route_claims(self, reg: _Registration[Any, Any]) -> None:
        assert reg.claims is not None
        async for claim in reg.claims:
            if not isinstance(claim, ClaimResponse):
                continue
            waiter = reg.pending.get(claim.request_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(claim)

    async def _handle_logged(self, reg: _Registration[Any, Any], request: Request) -> None:
        try:
            await self._handle(reg, request)
        except Exception:  # an affinity function or Redis failed: the client times out
            log.exception(
                "psrpc: %s.%s request %s dropped",
                reg.method.service,
                reg.method.name,
                request.request_id,
            )

    async def _handle(self, reg: _Registration[Req, Resp], request: Request) -> None:
        method = reg.method
        body = method.request()
        try:
            body.ParseFromString(request.raw_request)
        except DecodeError as exc:
            await self._respond(method, request, error=(ErrorCode.MALFORMED_REQUEST, str(exc)))
            return
        if method.claim and not await self._claim(reg, request, body):
            return
        remaining = max(0.0, (request.expiry - now_ns()) / 1e9)
        try:
            async with asyncio.timeout(remaining):
                response = await reg.handler(body)
        except Exception as exc:  # every failure becomes an error response
            if not isinstance(exc, PsrpcError):
                log.exception("psrpc: %s.%s failed", method.service, method.name)
            await self._respond(method, request, error=error_response_fields(exc))
            return
        await self._respond(method, request, response=response)

    async def _claim(self, reg: _Registration[Req, Resp], request: Request, body: Req) -> bool:
        affinity = 1.0
        if reg.affinity is not None:
            affinity = reg.affinity(body)
            if affinity < 0:
                return False
        waiter: asyncio.Future[ClaimResponse] = asyncio.get_running_loop().create_future()
        reg.pending[request.request_id] = waiter
        try:
            await self.bus.publish(
                claim_request_channel(reg.method.service, request.client_id),
                ClaimRequest(request_id=request.request_id, server_id=self.id, affinity=affinity),
            )
            remaining = max(0.0, (request.expiry - now_ns()) / 1e9)
            try:
                async with asyncio.timeout(remaining):
                    chosen = await waiter
            except TimeoutError:
                return False
            return chosen.server_id == self.id
        finally:
            reg.pending.pop(request.request_id, None)

    async def _respond(
        self,
        method: Method[Any, Any],
        request: Request,
        response: Message | None = None,
        error: tuple[str, str] | None = None,
    ) -> None:
        answer = Response(request_id=request.request_id, server_id=self.id, sent_at=now_ns())
        if error is not None:
            answer.code, answer.error = error
        elif response is not None:
            answer.raw_response = response.SerializeToString()
        await self.bus.publish(response_channel(method.service, request.client_id), answer)


# --- client --------------------------------------------------------------------------------


class RPCClient:
    """Calls one service's methods under one client id (`CLI_...`).

    `start` subscribes to the client's claim and response channels; `call`
    publishes a Request, runs the claim selection for claim methods and waits
    for the Response until the timeout.
    """

    def __init__(self, bus: Bus, service: str, client_id: str | None = None) -> None:
        self.bus = bus
        self.service = service
        self.id = client_id or new_id("CLI_")
        self._claims: dict[str, asyncio.Queue[ClaimRequest]] = {}
        self._responses: dict[str, asyncio.Future[Response]] = {}
        self._subs: list[Subscription] = []
        self._loops: list[asyncio.Task] = []

    async def start(self) -> RPCClient:
        responses = await self.bus.subscribe(response_channel(self.service, self.id))
        claims = await self.bus.subscribe(claim_request_channel(self.service, self.id))
        self._subs = [responses, claims]
        self._loops = [
            asyncio.create_task(self._route(responses)),
            asyncio.create_task(self._route(claims)),
        ]
        return self

    async def close(self) -> None:
        for sub in self._subs:
            await sub.close()
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._subs, self._loops = [], []

    async def __aenter__(self) -> RPCClient:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _route(self, sub: Subscription) -> None:
        async for message in sub:
            if isinstance(message, Response):
                waiter = self._responses.get(message.request_id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(message)
            elif isinstance(message, ClaimRequest):
                claims = self._claims.get(message.request_id)
                if claims is not None:
                    with contextlib.suppress(asyncio.QueueFull):
                        claims.put_nowait(message)

    async def call(
        self,
        method: Method[Req, Resp],
        request: Req,
        topic: Sequence[str] = (),
        timeout_s: float = 3.0,
        selection: Selection | None = None,
    ) -> Resp:
        """The method's response; PsrpcError for an error response or no answer in time."""
        if method.service != self.service:
            raise ValueError(f"{method.service}.{method.name} is not a {self.service} method")
        if method.multi:
            raise ValueError(f"{method.service}.{method.name} gathers many answers; call takes one")
        selection = selection or default_selection(method)
        request_id = new_id("REQ_")
        sent = now_ns()
        envelope = Request(
            request_id=request_id,
            client_id=self.id,
            sent_at=sent,
            expiry=sent + int(timeout_s * 1e9),
            raw_request=request.SerializeToString(),
        )
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Response] = loop.create_future()
        self._responses[request_id] = answer
        if method.claim:
            self._claims[request_id] = asyncio.Queue(100)
        try:
            async with asyncio.timeout(timeout_s):
                await self.bus.publish(
                    request_channel(method.service, method.name, topic), envelope
                )
                if method.claim:
                    server_id = await self._select(request_id, answer, selection)
                    await self.bus.publish(
                        claim_response_channel(method.service, method.name, topic),
                        ClaimResponse(request_id=request_id, server_id=server_id),
                    )
                response = await answer
        except TimeoutError:
            raise PsrpcError(ErrorCode.DEADLINE_EXCEEDED, "request timed out") from None
        except RedisError as exc:
            raise PsrpcError(ErrorCode.UNAVAILABLE, f"redis: {exc}") from exc
        finally:
            self._responses.pop(request_id, None)
            self._claims.pop(request_id, None)
        if response.error or response.code:
            raise PsrpcError(response.code or ErrorCode.UNKNOWN, response.error)
        body = method.response()
        try:
            body.ParseFromString(response.raw_response)
        except DecodeError as exc:
            raise PsrpcError(ErrorCode.MALFORMED_RESPONSE, str(exc)) from exc
        return body

    async def _select(
        self, request_id: str, answer: asyncio.Future[Response], selection: Selection
    ) -> str:
        claims = self._claims[request_id]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + selection.affinity_timeout_s
        best_id, best, count, shorted = "", 0.0, 0, False
        watch: set[asyncio.Future] = {answer}
        while (left := deadline - loop.time()) > 0:
            getter = asyncio.ensure_future(claims.get())
            done, _ = await asyncio.wait(
                watch | {getter}, timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
            if getter not in done:
                getter.cancel()
            if answer in done:
                watch.discard(answer)
                if answer.result().error:
                    # only a malformed request is answered before any claim
                    result = answer.result()
                    raise PsrpcError(result.code or ErrorCode.UNKNOWN, result.error)
            if getter not in done:
                continue
            claim = getter.result()
            count += 1
            if selection.minimum_affinity > 0 and claim.affinity < selection.minimum_affinity:
                continue
            if selection.accept_first or (
                selection.maximum_affinity > 0 and claim.affinity >= selection.maximum_affinity
            ):
                return claim.server_id
            if claim.affinity > best:
                best_id, best = claim.server_id, claim.affinity
            if selection.short_circuit_s > 0 and not shorted:
                shorted = True
                deadline = min(deadline, loop.time() + selection.short_circuit_s)
        if best_id:
            return best_id
        if count:
            raise PsrpcError(
                ErrorCode.UNAVAILABLE, f"no servers available (received {count} responses)"
            )
        raise PsrpcError(ErrorCode.UNAVAILABLE, "no response from servers")
