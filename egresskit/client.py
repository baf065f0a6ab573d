"""A typed Python client of the egresskit.Egress extension methods.

The LiveKit methods are served unchanged and livekit-api's `LiveKitAPI`
calls them; this client calls the ones LiveKit has no method for, in the
same style (request messages in, LiveKit's EgressInfo out, one aiohttp
session, protobuf on the wire):

    async with EgressClient("http://127.0.0.1:7880", "devkey", "secret") as client:
        await client.pause_egress(PauseEgressRequest(egress_id=egress_id))
"""

from __future__ import annotations

import json
from types import TracebackType

import aiohttp
from google.protobuf.message import Message
from livekit.protocol import egress as egress_pb

from egresskit.protos.egress_pb2 import (
    PauseEgressRequest,
    ResumeEgressRequest,
    RoomCompositeEgressRequest,
    StopEgressRequest,
    UpdateParticipantsRequest,
)
from egresskit.tokens import create_token

__all__ = [
    "EgressClient",
    "EgressClientError",
    "PauseEgressRequest",
    "ResumeEgressRequest",
    "RoomCompositeEgressRequest",
    "StopEgressRequest",
    "UpdateParticipantsRequest",
]

SERVICE = "egresskit.Egress"
PROTOBUF = "application/protobuf"
# Each call signs a token of its own, valid this long (s).
TOKEN_TTL_S = 600


class EgressClientError(Exception):
    """The service refused a call: its Twirp error code and message, and the HTTP status."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class EgressClient:
    """Calls `POST {url}/twirp/egresskit.Egress/<Method>` with a `roomRecord` token."""

    def __init__(
        self,
        url: str,
        api_key: str,
        api_secret: str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
    ) -> None:
        """`session`: an aiohttp session to share (the client closes only one it made)."""
        self._base = url.rstrip("/").replace("ws://", "http://", 1).replace("wss://", "https://", 1)
        self._api_key = api_key
        self._api_secret = api_secret
        self._own_session = session is None
        self._session = session or aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout)
        )

    async def start_room_composite_egress(
        self, request: RoomCompositeEgressRequest
    ) -> egress_pb.EgressInfo:
        """A room composite with include/exclude, faststart and video_codec options."""
        return await self._call("StartRoomCompositeEgress", request)

    async def pause_egress(self, request: PauseEgressRequest) -> egress_pb.EgressInfo:
        return await self._call("PauseEgress", request)

    async def resume_egress(self, request: ResumeEgressRequest) -> egress_pb.EgressInfo:
        return await self._call("ResumeEgress", request)

    async def stop_egress(self, request: StopEgressRequest) -> egress_pb.EgressInfo:
        """Stop; with `discard`, everything written and uploaded is deleted."""
        return await self._call("StopEgress", request)

    async def update_participants(self, request: UpdateParticipantsRequest) -> egress_pb.EgressInfo:
        return await self._call("UpdateParticipants", request)

    async def _call(self, method: str, request: Message) -> egress_pb.EgressInfo:
        token = create_token(
            self._api_key, self._api_secret, video={"roomRecord": True}, ttl=TOKEN_TTL_S
        )
        async with self._session.post(
            f"{self._base}/twirp/{SERVICE}/{method}",
            data=request.SerializeToString(),
            headers={"Content-Type": PROTOBUF, "Authorization": f"Bearer {token}"},
        ) as response:
            body = await response.read()
            if response.status != 200:
                raise _error(response.status, body)
            return egress_pb.EgressInfo.FromString(body)

    async def aclose(self) -> None:
        if self._own_session:
            await self._session.close()

    async def __aenter__(self) -> EgressClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


def _error(status: int, body: bytes) -> EgressClientError:
    """A Twirp error body, or what a proxy in between answered instead."""
    try:
        data = json.loads(body)
        return EgressClientError(str(data["code"]), str(data.get("msg", "")), status)
    except (ValueError, KeyError, TypeError):
        return EgressClientError("unknown", f"HTTP {status}", status)
