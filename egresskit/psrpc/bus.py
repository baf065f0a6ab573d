"""psrpc's Redis transport: envelopes, channel names, ids and the queue lock.

livekit-server and its egress workers talk through Redis PUBLISH/SUBSCRIBE
using the psrpc library. This module speaks the same bytes: every payload is a
`google.protobuf.Any`-shaped envelope around one of psrpc's four messages,
channels are `|`-joined names with every character outside `[0-9A-Za-z_]`
escaped, and a message on a queue channel is handled by the one receiver that
wins a Redis SETNX lock on its hash. It knows nothing of methods or services.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import secrets
import string
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any as AnyType

import redis.asyncio as aioredis
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message

from egresskit.psrpc.protos.internal_pb2 import ClaimRequest, ClaimResponse, Request, Response

log = logging.getLogger(__name__)

# psrpc's four messages, the only ones its envelopes carry
Envelope = Request | Response | ClaimRequest | ClaimResponse

TYPE_URL_PREFIX = "type.googleapis.com/"
ENVELOPE_TYPES: dict[str, type[Envelope]] = {
    TYPE_URL_PREFIX + cls.DESCRIPTOR.full_name: cls
    for cls in (Request, Response, ClaimRequest, ClaimResponse)
}
LOCK_EXPIRY_S = 5
SUBSCRIBE_TIMEOUT_S = 10.0
SUBSCRIPTION_SIZE = 1000
ID_ALPHABET = string.ascii_letters + string.digits
ID_LENGTH = 12


class EnvelopeError(ValueError):
    """A payload that is not one of psrpc's envelope messages."""


# --- envelopes -----------------------------------------------------------------------------


def encode(message: Message) -> bytes:
    """The bytes psrpc publishes for `message`: Any{type_url, value}."""
    return any_pb2.Any(
        type_url=TYPE_URL_PREFIX + message.DESCRIPTOR.full_name,
        value=message.SerializeToString(),
    ).SerializeToString()


def decode(payload: bytes) -> Envelope:
    """The message inside a psrpc envelope; EnvelopeError for anything else."""
    envelope = any_pb2.Any()
    try:
        envelope.ParseFromString(payload)
    except DecodeError as exc:
        raise EnvelopeError(f"not a psrpc envelope: {exc}") from exc
    cls = ENVELOPE_TYPES.get(envelope.type_url)
    if cls is None:
        raise EnvelopeError(f"unexpected envelope type {envelope.type_url!r}")
    message = cls()
    try:
        message.ParseFromString(envelope.value)
    except DecodeError as exc:
        raise EnvelopeError(f"bad {cls.DESCRIPTOR.full_name}: {exc}") from exc
    return message


# --- ids and clocks ------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    """A psrpc id: `prefix` + 12 characters from [a-zA-Z0-9] (CLI_, SRV_, REQ_)."""
    return prefix + "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_LENGTH))


def now_ns() -> int:
    """Wall clock in unix ns, the unit of `sent_at` and `expiry`."""
    return time.time_ns()


def expired(request: Request, now: int | None = None) -> bool:
    """psrpc servers drop a request once the clock reaches its expiry."""
    return (now_ns() if now is None else now) >= request.expiry


# --- channel names -------------------------------------------------------------------------


def sanitise(part: str) -> str:
    """A channel segment as psrpc writes it: other characters become u+hhhh / U+hhhhhhhh."""
    out = []
    for char in part:
        code = ord(char)
        if char.isascii() and (char.isalnum() or char == "_"):
            out.append(char)
        elif code < 0x10000:
            out.append(f"u+{code:04x}")
        else:
            out.append(f"U+{code:08x}")
    return "".join(out)


def _join(parts: Sequence[str | Sequence[str]]) -> str:
    # psrpc writes a delimiter before a part when the previous part wrote
    # something, then the (sanitised) part; a topic list is joined the same way
    # inside. So empty topic segments vanish but do not drop the delimiter
    # already written before them.
    buf: list[str] = []
    wrote = False
    for part in parts:
        if wrote:
            buf.append("|")
        text = sanitise(part) if isinstance(part, str) else _join(part)
        buf.append(text)
        wrote = bool(text)
    return "".join(buf)


def request_channel(service: str, method: str, topic: Sequence[str] = ()) -> str:
    """Where a client publishes a Request: `Svc|Method|topic...|REQ`."""
    return _join([service, method, list(topic), "REQ"])


def claim_response_channel(service: str, method: str, topic: Sequence[str] = ()) -> str:
    """Where a client names the chosen server: `Svc|Method|topic...|RCLAIM`."""
    return _join([service, method, list(topic), "RCLAIM"])


def claim_request_channel(service: str, client_id: str) -> str:
    """Where servers offer to handle a client's request: `Svc|<clientID>|CLAIM`."""
    return _join([service, client_id, "CLAIM"])


def response_channel(service: str, client_id: str) -> str:
    """Where servers answer a client: `Svc|<clientID>|RES`."""
    return _join([service, client_id, "RES"])


def lock_key(payload: bytes) -> str:
    """The SETNX key psrpc queue receivers race for: base64(sha256(payload))."""
    return base64.b64encode(hashlib.sha256(payload).digest()).decode("ascii")


# --- the bus -------------------------------------------------------------------------------


class Subscription:
    """Decoded messages of one channel, in arrival order, through a bounded queue.

    A queue subscription hands over only the messages whose lock it won, so
    among all psrpc receivers of that channel exactly one handles each message.
    """

    def __init__(self, bus: Bus, channel: str, queue: bool, size: int) -> None:
        self.bus = bus
        self.channel = channel
        self.queue = queue
        self._payloads: asyncio.Queue[bytes | None] = asyncio.Queue(size)
        self.dropped = 0

    def _deliver(self, payload: bytes) -> None:
        try:
            self._payloads.put_nowait(payload)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("psrpc: %s: slow consumer, message dropped", self.channel)

    def _end(self) -> None:
        # messages not taken yet are dropped, as psrpc does on close
        while not self._payloads.empty():
            self._payloads.get_nowait()
        self._payloads.put_nowait(None)

    async def get(self) -> Envelope | None:
        """The next message (None once closed); malformed payloads are skipped."""
        while True:
            payload = await self._payloads.get()
            if payload is None:
                return None
            if self.queue:
                try:
                    if not await self.bus.acquire_lock(payload):
                        continue
                except aioredis.RedisError as exc:
                    log.warning(
                        "psrpc: %s: queue lock failed, message skipped: %s", self.channel, exc
                    )
                    continue
            try:
                return decode(payload)
            except EnvelopeError as exc:
                log.warning("psrpc: %s: %s", self.channel, exc)

    def __aiter__(self) -> AsyncIterator[Envelope]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Envelope]:
        while (message := await self.get()) is not None:
            yield message

    async def close(self) -> None:
        await self.bus._unsubscribe(self)
        self._end()


class Bus:
    """One Redis pub/sub connection shared by every subscription, plus publishing.

    `subscribe` returns only once Redis has confirmed the subscription, so a
    request published after it cannot overtake it. When Redis goes away the
    reader retries, and redis-py subscribes the channels again on reconnecting.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self.redis = client
        self._pubsub = client.pubsub()
        self._subs: dict[str, list[Subscription]] = {}
        self._next: dict[str, int] = {}
        self._confirm: dict[str, asyncio.Future[None]] = {}
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: str, **kwargs: AnyType) -> Bus:
        """A bus on `redis://host:port/db` (redis-py's URL forms and options)."""
        return cls(aioredis.Redis.from_url(url, **kwargs))

    async def publish(self, channel: str, message: Message) -> None:
        await self.redis.publish(channel, encode(message))

    async def subscribe(
        self, channel: str, *, queue: bool = False, size: int = SUBSCRIPTION_SIZE
    ) -> Subscription:
        sub = Subscription(self, channel, queue, size)
        async with self._lock:
            subs = self._subs.setdefault(channel, [])
            subs.append(sub)
            if len(subs) == 1:
                confirmed = asyncio.get_running_loop().create_future()
                self._confirm[channel] = confirmed
                try:
                    async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                        await self._pubsub.subscribe(channel)
                        if self._reader is None:
                            self._reader = asyncio.create_task(
                                self._read(), name="psrpc-bus-reader"
                            )
                        await confirmed
                except BaseException:
                    self._confirm.pop(channel, None)
                    subs.remove(sub)
                    if not subs:
                        del self._subs[channel]
                    raise
        return sub

    async def _unsubscribe(self, sub: Subscription) -> None:
        async with self._lock:
            subs = self._subs.get(sub.channel, [])
            if sub in subs:
                subs.remove(sub)
            if not subs and self._subs.pop(sub.channel, None) is not None:
                self._next.pop(sub.channel, None)
                with contextlib.suppress(aioredis.ConnectionError):
                    await self._pubsub.unsubscribe(sub.channel)

    async def acquire_lock(self, payload: bytes) -> bool:
        """psrpc's queue lock: the first receiver to SETNX the payload's hash (5 s) wins."""
        return bool(
            await self.redis.set(lock_key(payload), secrets.randbits(63), nx=True, ex=LOCK_EXPIRY_S)
        )

    async def _read(self) -> None:
        delay = 0.1
        while True:
            try:
                message = await self._pubsub.get_message(timeout=None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep reading: every subscription depends on this loop
                log.warning("psrpc: redis pub/sub read failed: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.1
            if message is not None:
                self._dispatch(message)

    def _dispatch(self, message: dict[str, AnyType]) -> None:
        channel = message["channel"]
        if isinstance(channel, bytes):
            channel = channel.decode()
        if message["type"] == "subscribe":
            confirmed = self._confirm.pop(channel, None)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
            return
        if message["type"] != "message":
            return
        subs = self._subs.get(channel, [])
        plain = [s for s in subs if not s.queue]
        queued = [s for s in subs if s.queue]
        for sub in plain:
            sub._deliver(message["data"])
        if queued:
            # psrpc hands a queue message to one local subscriber in turn.
            turn = self._next.get(channel, 0) % len(queued)
            self._next[channel] = turn + 1
            queued[turn]._deliver(message["data"])

    async def close(self) -> None:
        """Stop reading, end every subscription and close the connections."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        for subs in list(self._subs.values()):
            for sub in subs:
                sub._end()
        self._subs.clear()
        await self._pubsub.aclose()
        await self.redis.aclose()
