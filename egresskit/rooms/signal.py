"""LiveKit client signalling: the `/rtc` websocket of a livekit-server, as a hidden recorder.

One connection speaks protobuf `SignalRequest`/`SignalResponse`
(livekit-protocol) in binary frames, in the two-PeerConnection mode
(`/rtc`, where the server offers the subscriber PC). egresskit joins with a
token minted like LiveKit's own egress: identity = egress id, grants
`roomJoin`, `room`, `canSubscribe`, `hidden`, `recorder` and nothing to
publish; it asks for no automatic subscription and chooses its tracks with
`UpdateSubscription`. Pings go out on the server's interval; a server that
stops answering for its ping timeout, or closes the socket, ends the
connection, which `recv` reports as `SignalClosed`.

A session whose socket dropped is resumed on a new one: `/rtc` with
`reconnect=1` and the participant sid, answered with `ReconnectResponse`
(then the server sends the room's state and an ICE restart offer), or with
`leave` when the server no longer has the session (`ResumeRefused`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
from livekit.protocol import models
from livekit.protocol import rtc as rtc_pb

from egresskit.tokens import create_token

log = logging.getLogger(__name__)

# Client protocol version announced to the server (livekit-protocol's current one).
PROTOCOL_VERSION = 16
RECORDER_TOKEN_TTL_S = 24 * 3600
CONNECT_TIMEOUT_S = 10.0
# livekit-server's defaults, for when it does not say.
DEFAULT_PING_INTERVAL_S, DEFAULT_PING_TIMEOUT_S = 5.0, 15.0
# Responses waiting for the reader; the server never sends many at once.
RESPONSE_QUEUE = 256


class SignalError(Exception):
    """The server refused the connection (bad key, unknown room...) or broke the protocol."""


class ResumeRefused(SignalError):
    """The server cannot resume the session (it answered `leave`): join afresh."""


class SignalClosed(Exception):
    """The signalling connection ended; `reason` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def recorder_token(api_key: str, api_secret: str, room: str, identity: str) -> str:
    """A token for a hidden recorder that may subscribe and never publish."""
    return create_token(
        api_key,
        api_secret,
        identity=identity,
        video={
            "roomJoin": True,
            "room": room,
            "canSubscribe": True,
            "canPublish": False,
            "canPublishData": False,
            "hidden": True,
            "recorder": True,
        },
        ttl=RECORDER_TOKEN_TTL_S,
        extra={"kind": "egress"},
    )


def rtc_url(server_url: str, token: str, *, reconnect: bool = False, sid: str = "") -> str:
    """The `/rtc` websocket URL of a server given as ws(s):// or http(s)://."""
    parts = urlsplit(server_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise ValueError(
            f"LiveKit URL must be ws://, wss://, http:// or https://, not {server_url!r}"
        )
    query = {
        "access_token": token,
        "auto_subscribe": "0",
        "adaptive_stream": "0",
        "sdk": "python",
        "version": "egresskit",
        "protocol": str(PROTOCOL_VERSION),
    }
    if reconnect:
        query["reconnect"] = "1"
        query["sid"] = sid
    path = parts.path.rstrip("/") + "/rtc"
    return urlunsplit((scheme, parts.netloc, path, urlencode(query), ""))


class SignalClient:
    """One `/rtc` websocket: `connect` returns the JoinResponse, then `recv`/`send`."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._responses: asyncio.Queue[rtc_pb.SignalResponse | SignalClosed] = asyncio.Queue(
            RESPONSE_QUEUE
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._last_pong = 0.0
        self.rtt_ms = 0
        self.closed_reason = ""

    async def connect(
        self,
        server_url: str,
        token: str,
        *,
        reconnect: bool = False,
        sid: str = "",
        ping: tuple[float, float] = (DEFAULT_PING_INTERVAL_S, DEFAULT_PING_TIMEOUT_S),
        timeout: float = CONNECT_TIMEOUT_S,
    ) -> rtc_pb.JoinResponse | rtc_pb.ReconnectResponse:
        """Open the socket and wait for `join` (or `reconnect` when resuming session `sid`).

        `ping` is (interval, timeout) where the answer does not say (a
        ReconnectResponse): the ones the session's JoinResponse gave.
        """
        url = rtc_url(server_url, token, reconnect=reconnect, sid=sid)
        self._session = aiohttp.ClientSession()
        try:
            self._ws = await asyncio.wait_for(
                self._session.ws_connect(
                    url,
                    timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                    max_msg_size=0,
                    autoping=True,
                ),
                timeout,
            )
        except aiohttp.WSServerHandshakeError as exc:
            await self._session.close()
            raise SignalError(
                f"LiveKit server refused to join: HTTP {exc.status} {exc.message}"
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            await self._session.close()
            reason = str(exc).replace(token, "<token>")  # the URL carries it
            raise SignalError(f"cannot reach LiveKit server at {server_url}: {reason}") from None
        try:
            first = await asyncio.wait_for(self._read_one(), timeout)
        except (TimeoutError, SignalClosed) as exc:
            await self.close()
            raise SignalError(f"LiveKit server sent no join response: {exc}") from None
        which = first.WhichOneof("message")
        if which == "join":
            joined: rtc_pb.JoinResponse | rtc_pb.ReconnectResponse = first.join
            ping_interval: float = first.join.ping_interval
            ping_timeout: float = first.join.ping_timeout
        elif which == "reconnect":
            joined = first.reconnect
            ping_interval, ping_timeout = ping
        elif which == "leave":
            await self.close()
            reason = models.DisconnectReason.Name(first.leave.reason)
            if reconnect:
                raise ResumeRefused(f"LiveKit server cannot resume the session ({reason})")
            raise SignalError(f"LiveKit server refused to join: {reason}")
        else:
            await self.close()
            raise SignalError(f"LiveKit server answered the join with {which!r}")
        self._last_pong = time.monotonic()
        self._tasks = [
            asyncio.create_task(self._read_loop(), name="livekit signal reader"),
            asyncio.create_task(
                self._ping_loop(
                    ping_interval or DEFAULT_PING_INTERVAL_S, ping_timeout or DEFAULT_PING_TIMEOUT_S
                ),
                name="livekit ping",
            ),
        ]
        return joined

    async def recv(self) -> rtc_pb.SignalResponse:
        """The next server message; raises SignalClosed once the connection is gone."""
        item = await self._responses.get()
        if isinstance(item, SignalClosed):
            self._responses.put_nowait(item)  # every later call sees the end too
            raise item
        return item

    async def send(self, request: rtc_pb.SignalRequest) -> None:
        if self._ws is None or self._ws.closed:
            raise SignalClosed(self.closed_reason or "signalling connection is closed")
        await self._ws.send_bytes(request.SerializeToString())

    async def leave(self) -> None:
        """Tell the server we go (best effort), then close."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self.send(
                    rtc_pb.SignalRequest(
                        leave=rtc_pb.LeaveRequest(
                            reason=models.DisconnectReason.CLIENT_INITIATED,
                            action=rtc_pb.LeaveRequest.DISCONNECT,
                        )
                    )
                ),
                2.0,
            )
        await self.close()

    async def close(self) -> None:
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._session is not None:
            await self._session.close()
        self._end("closed by egresskit")

    async def _read_one(self) -> rtc_pb.SignalResponse:
        assert self._ws is not None
        while True:
            message = await self._ws.receive()
            if message.type == aiohttp.WSMsgType.BINARY:
                response = rtc_pb.SignalResponse()
                response.ParseFromString(message.data)
                return response
            if message.type in (
                aiohttp.WSMsgType.TEXT,
                aiohttp.WSMsgType.PING,
                aiohttp.WSMsgType.PONG,
            ):
                continue  # binary protocol only; control frames are aiohttp's
            reason = "LiveKit server closed the signalling connection"
            if message.type == aiohttp.WSMsgType.ERROR:
                reason = f"signalling connection failed: {message.data}"
            raise SignalClosed(reason)

    async def _read_loop(self) -> None:
        try:
            while True:
                response = await self._read_one()
                which = response.WhichOneof("message")
                if which in ("pong_resp", "pong"):
                    self._last_pong = time.monotonic()
                    if which == "pong_resp":
                        self.rtt_ms = (
                            int(time.time() * 1000) - response.pong_resp.last_ping_timestamp
                        )
                    continue
                await self._responses.put(response)
        except SignalClosed as exc:
            self._end(exc.reason)
        except Exception as exc:  # a broken socket or a frame that is not protobuf
            self._end(f"signalling connection failed: {exc}")

    async def _ping_loop(self, interval: float, timeout: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if time.monotonic() - self._last_pong > timeout:
                self._end(f"LiveKit server did not answer pings for {timeout:.0f} s")
                if self._ws is not None:
                    await self._ws.close()
                return
            ping = rtc_pb.Ping(timestamp=int(time.time() * 1000), rtt=self.rtt_ms)
            try:
                await self.send(rtc_pb.SignalRequest(ping_req=ping))
            except Exception:
                return  # the reader sees the end

    def _end(self, reason: str) -> None:
        if self.closed_reason:
            return
        self.closed_reason = reason
        with contextlib.suppress(asyncio.QueueFull):
            self._responses.put_nowait(SignalClosed(reason))


async def set_participant_metadata(
    server_url: str, api_key: str, api_secret: str, room: str, identity: str, metadata: str
) -> None:
    """RoomService.UpdateParticipant on a LiveKit server (Twirp, JSON); raises SignalError."""
    parts = urlsplit(server_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    url = f"{scheme}://{parts.netloc}/twirp/livekit.RoomService/UpdateParticipant"
    token = create_token(api_key, api_secret, video={"roomAdmin": True, "room": room}, ttl=60)
    body = {"room": room, "identity": identity, "metadata": metadata}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as response,
        ):
            if response.status != 200:
                text = await response.text()
                raise SignalError(f"UpdateParticipant answered {response.status}: {text}")
    except aiohttp.ClientError as exc:
        raise SignalError(f"UpdateParticipant failed: {exc}") from None
