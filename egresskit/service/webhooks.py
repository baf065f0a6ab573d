"""Signed egress webhooks, delivered in order per target and never in an egress's way.

Each target (URL + signing key) has its own bounded queue and worker, so a
slow or dead receiver delays only its own events. `notify` never blocks:
when a target's queue is full the event is dropped, counted and logged.
Bodies are `WebhookEvent` protojson (lowerCamelCase, zero fields omitted),
signed like LiveKit's: `Authorization: <JWT>` whose `sha256` claim is the
base64 SHA-256 of the exact body, so `livekit.api.WebhookReceiver` verifies it.

A request's own webhooks are the caller's destinations: they are signed with
the caller's API key only, reach only where the network policy allows (names
are checked as they resolve) and, like every webhook, are never redirected.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import secrets
import string
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import aiohttp
from google.protobuf import json_format
from livekit.protocol import egress as egress_pb
from livekit.protocol import models as models_pb
from livekit.protocol import webhook as webhook_pb

from egresskit.egress.redact import redact
from egresskit.netpolicy import DestinationDenied, NetworkPolicy, PolicyResolver
from egresskit.tokens import create_token

logger = logging.getLogger(__name__)

CONTENT_TYPE = "application/webhook+json"
TOKEN_TTL_S = 5 * 60
MAX_TARGETS = 256  # distinct (url, key) pairs with a live worker at a time
_ID_ALPHABET = string.ascii_letters + string.digits


@dataclass
class WebhookStats:
    """Counters for metrics: events handed over, delivered, given up on, dropped on overflow."""

    queued: int = 0
    delivered: int = 0
    failed: int = 0
    dropped: int = 0


@dataclass(frozen=True)
class _Target:
    url: str
    api_key: str
    from_request: bool = False  # a caller's URL: subject to the network policy


class WebhookNotifier:
    """Posts egress events to the server-wide URLs and each request's own webhooks."""

    def __init__(
        self,
        api_key: str,
        api_secret: str,
        urls: Sequence[str],
        *,
        keys: Mapping[str, str] | None = None,
        network: NetworkPolicy | None = None,
        queue_size: int = 256,
        attempts: int = 3,
        backoff: float = 0.5,
        timeout: float = 5.0,
        idle_timeout: float = 60.0,
    ) -> None:
        """`keys` (API key -> secret) sign requests' webhooks, each with its caller's key.

        `network` is where requests' webhook URLs may be (None: anywhere).
        """
        if attempts < 1 or queue_size < 1:
            raise ValueError("attempts and queue_size must be at least 1")
        self._api_key = api_key
        self._keys = {**(keys or {}), api_key: api_secret}
        self._network = network
        self._urls = tuple(urls)
        self._queue_size = queue_size
        self._attempts = attempts
        self._backoff = backoff
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._idle_timeout = idle_timeout
        self._queues: dict[_Target, asyncio.Queue[str]] = {}
        self._workers: dict[_Target, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._request_session: aiohttp.ClientSession | None = None
        self._closing = False
        self.stats = WebhookStats()

    def start(self) -> None:
        """Open the HTTP session; call from the running event loop before `notify`."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
            connector = None
            if self._network is not None:
                connector = aiohttp.TCPConnector(resolver=PolicyResolver(self._network))
            self._request_session = aiohttp.ClientSession(
                timeout=self._timeout, connector=connector
            )

    async def close(self, drain_timeout: float = 5.0) -> None:
        """Stop accepting events, deliver what is queued for up to `drain_timeout` s, then stop."""
        self._closing = True
        workers = list(self._workers.values())
        if workers:
            _, pending = await asyncio.wait(
                [asyncio.ensure_future(q.join()) for q in self._queues.values()],
                timeout=drain_timeout,
            )
            for waiter in pending:
                waiter.cancel()
            undelivered = sum(q.qsize() for q in self._queues.values())
            if undelivered:
                logger.warning("webhooks: %d events not delivered before shutdown", undelivered)
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        for session in (self._session, self._request_session):
            if session is not None:
                await session.close()
        self._session = self._request_session = None

    def notify(
        self,
        event: str,
        egress_info: egress_pb.EgressInfo,
        extra_targets: Sequence[models_pb.WebhookConfig] = (),
        signing_key: str = "",
    ) -> None:
        """Queue `event` for every target; returns at once, whatever the receivers do.

        `extra_targets` (a request's webhooks) are signed with `signing_key`, the
        caller's API key (empty: the server's key, for the operator's own egresses).
        """
        if self._accepting(event, egress_info.egress_id):
            body = encode_event(event, egress_info)
            for target in self._targets(extra_targets, signing_key):
                self._enqueue(target, body, event, egress_info.egress_id)

    def notify_room(
        self,
        event: str,
        room: models_pb.Room,
        participant: models_pb.ParticipantInfo | None = None,
        track: models_pb.TrackInfo | None = None,
    ) -> None:
        """Queue a room event (participant_joined, track_published, ...) for the server-wide URLs."""
        if self._accepting(event, room.name):
            body = encode_room_event(event, room, participant, track)
            for target in self._targets((), ""):
                self._enqueue(target, body, event, room.name)

    def _accepting(self, event: str, subject: str) -> bool:
        if self._closing:
            self.stats.dropped += 1
            logger.warning("webhooks: %s for %s after shutdown dropped", event, subject)
            return False
        if self._session is None:
            raise RuntimeError("WebhookNotifier.start() was not called")
        return True

    def _targets(self, extra: Sequence[models_pb.WebhookConfig], signing_key: str) -> list[_Target]:
        targets = [_Target(url, self._api_key) for url in self._urls]
        api_key = signing_key or self._api_key
        if extra and api_key not in self._keys:  # a key removed since: never another key
            logger.warning("webhooks: signing key of a request is gone; its webhooks dropped")
            extra = ()
        targets += [_Target(config.url, api_key, from_request=True) for config in extra]
        return list(dict.fromkeys(targets))  # one delivery per distinct target

    def _enqueue(self, target: _Target, body: str, event: str, egress_id: str) -> None:
        queue = self._queues.get(target)
        if queue is None:
            if len(self._queues) >= MAX_TARGETS:
                self.stats.dropped += 1
                logger.warning("webhooks: too many targets, %s for %s dropped", event, egress_id)
                return
            queue = self._queues[target] = asyncio.Queue(self._queue_size)
            self._workers[target] = asyncio.create_task(
                self._deliver_loop(target, queue), name=f"webhooks {target.url}"
            )
        try:
            queue.put_nowait(body)
        except asyncio.QueueFull:
            self.stats.dropped += 1
            logger.warning(
                "webhooks: queue for %s full, %s for %s dropped", target.url, event, egress_id
            )
            return
        self.stats.queued += 1

    async def _deliver_loop(self, target: _Target, queue: asyncio.Queue[str]) -> None:
        try:
            while True:
                try:
                    body = await asyncio.wait_for(queue.get(), self._idle_timeout)
                except TimeoutError:
                    if queue.empty():  # idle: free the worker; a later event starts a new one
                        return
                    continue
                try:
                    await self._deliver(target, body)
                except Exception:  # a bug here must not stop later events to this target
                    self.stats.failed += 1
                    logger.exception("webhooks: delivery to %s failed", target.url)
                finally:
                    queue.task_done()
        finally:
            if self._workers.get(target) is asyncio.current_task():
                del self._workers[target]
                del self._queues[target]

    async def _deliver(self, target: _Target, body: str) -> None:
        session = self._request_session if target.from_request else self._session
        assert session is not None
        if target.from_request and self._network is not None:
            try:
                self._network.check_url(target.url)  # addresses; names are checked as resolved
            except (DestinationDenied, ValueError) as exc:
                self.stats.failed += 1
                logger.warning("webhooks: %s refused: %s", target.url, exc)
                return
        for attempt in range(1, self._attempts + 1):
            headers = {
                "Content-Type": CONTENT_TYPE,
                "Authorization": sign(body, target.api_key, self._keys[target.api_key]),
            }
            try:
                async with session.post(
                    target.url, data=body.encode(), headers=headers, allow_redirects=False
                ) as resp:
                    if 200 <= resp.status < 300:
                        self.stats.delivered += 1
                        return
                    reason = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = type(exc).__name__
            if attempt < self._attempts:
                logger.info("webhooks: %s failed (%s), retrying", target.url, reason)
                await asyncio.sleep(self._backoff * 2 ** (attempt - 1))
        self.stats.failed += 1
        logger.warning(
            "webhooks: giving up on %s after %d attempts (%s)", target.url, self._attempts, reason
        )


def encode_event(event: str, egress_info: egress_pb.EgressInfo) -> str:
    """The JSON body of one egress webhook (secrets redacted)."""
    message = webhook_pb.WebhookEvent(
        event=event,
        room=models_pb.Room(sid=egress_info.room_id, name=egress_info.room_name),
        egress_info=redact(egress_info),
    )
    return _encode(message)


def encode_room_event(
    event: str,
    room: models_pb.Room,
    participant: models_pb.ParticipantInfo | None = None,
    track: models_pb.TrackInfo | None = None,
) -> str:
    """The JSON body of one room webhook."""
    message = webhook_pb.WebhookEvent(event=event, room=room)
    if participant is not None:
        message.participant.CopyFrom(participant)
    if track is not None:
        message.track.CopyFrom(track)
    return _encode(message)


def _encode(message: webhook_pb.WebhookEvent) -> str:
    message.id = "EV_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))
    message.created_at = int(time.time())
    return json_format.MessageToJson(message, indent=None)


def sign(body: str, api_key: str, api_secret: str) -> str:
    """The `Authorization` value for `body`: a short-lived JWT with the body's SHA-256."""
    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    return create_token(api_key, api_secret, ttl=TOKEN_TTL_S, extra={"sha256": digest})
