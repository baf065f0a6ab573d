"""WHEP playback: browsers, OBS and players receive a room's tracks over WebRTC, untranscoded.

`POST /{room}` takes a complete SDP offer (no trickle ICE, as for WHIP) and
an access token granting `roomJoin`, `room` and `canSubscribe`, and answers
with the room's tracks: by default the first publisher's camera and
microphone; `?participant=<identity>` picks another publisher,
`?track=<sid>` (repeatable) picks tracks. `DELETE {room}/{secret}` ends the
session. The viewer is not a room participant (it publishes nothing).

Passthrough: the `EncodedFrame`s the publisher sent (through
`EncodedReceiver`, the same tap as track egress) are packetized once per
track and sent to every viewer of it by `egresskit.rooms.fanout`; aiortc's
senders only negotiate, so no codec is ever created (tests/test_whep.py
checks that no encoder is built). A viewer's key frame request (PLI/FIR)
goes to the publisher.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from urllib.parse import quote

from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCRtpTransceiver
from livekit.protocol import models

from egresskit.rooms.fanout import TrackFanout, ViewerStream
from egresskit.rooms.ice import gathering_on, host_address_override
from egresskit.rooms.local import LocalRoom, LocalTrack, RoomManager
from egresskit.rooms.whip import (
    CONNECT_TIMEOUT_S,
    NEGOTIATION_TIMEOUT_S,
    SDP_CONTENT_TYPE,
    cors_headers,
    filter_candidates,
    negotiate,
    preflight,
)
from egresskit.tokens import Claims, TokenError, bearer_token, verify_token

log = logging.getLogger(__name__)

KINDS = {models.TrackType.VIDEO: "video", models.TrackType.AUDIO: "audio"}
DEFAULT_SOURCES = (models.TrackSource.CAMERA, models.TrackSource.MICROPHONE)


def choose_tracks(
    room: LocalRoom, participant: str | None, track_sids: Sequence[str]
) -> list[LocalTrack]:
    """The tracks a viewer asked for (see the module docstring); only WebRTC tracks qualify."""
    if track_sids:
        chosen = []
        for sid in track_sids:
            track = room.track(sid)
            if track is None:
                raise web.HTTPNotFound(text=f"no track {sid!r} in room {room.name!r}")
            chosen.append(track)
    else:
        if participant is not None:
            publisher = room.participants.get(participant)
            if publisher is None:
                raise web.HTTPNotFound(text=f"no participant {participant!r} in room {room.name!r}")
            publishers = [publisher]
        else:
            publishers = [p for p in room.participants.values() if p.tracks]
        chosen = []
        for publisher in publishers:
            tracks = [t for t in publisher.tracks.values() if t.has_encoded_media]
            preferred = [t for t in tracks if t.source in DEFAULT_SOURCES]
            chosen = _one_per_kind(preferred or tracks)
            if chosen:
                break
        if not chosen:
            who = f"participant {participant!r}" if participant else f"room {room.name!r}"
            raise web.HTTPNotFound(text=f"{who} publishes no WebRTC track to watch")
    for track in chosen:
        if not track.has_encoded_media:
            raise web.HTTPNotFound(text=f"track {track.sid} is not a WebRTC track")
    return chosen


def _one_per_kind(tracks: list[LocalTrack]) -> list[LocalTrack]:
    first: dict[int, LocalTrack] = {}
    for track in tracks:
        first.setdefault(track.kind, track)
    return list(first.values())


def whep_app(
    rooms: RoomManager,
    keys: Mapping[str, str],
    *,
    ice_addresses: Sequence[str] | None = None,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    max_token_ttl_s: float = 0,
) -> web.Application:
    """The WHEP endpoint, to mount with `app.add_subapp("/whep", whep_app(...))`.

    `ice_addresses` and `max_token_ttl_s` work as for `whip_app`.
    """
    endpoint = WhepEndpoint(rooms, keys, ice_addresses, connect_timeout_s, max_token_ttl_s)
    app = web.Application(middlewares=[cors_headers])
    app.cleanup_ctx.append(endpoint.lifetime)
    app.router.add_route("POST", "/{room}", endpoint.play, name="whep-endpoint")
    app.router.add_route("GET", "/{room}", endpoint.publishers)
    app.router.add_route("OPTIONS", "/{room}", preflight)
    app.router.add_route("DELETE", "/{room}/{resource}", endpoint.delete, name="whep-resource")
    app.router.add_route("OPTIONS", "/{room}/{resource}", preflight)
    return app


class WhepSession:
    """One viewer's peer connection and its streams of the room's tracks."""

    def __init__(self, room: str, pc: RTCPeerConnection) -> None:
        self.room = room
        self.pc = pc
        self.streams: list[ViewerStream] = []

    async def close(self) -> None:
        for stream in self.streams:
            stream.close()
        await self.pc.close()


class WhepEndpoint:
    """Turns WHEP requests into passthrough peer connections from the embedded rooms."""

    def __init__(
        self,
        rooms: RoomManager,
        keys: Mapping[str, str],
        ice_addresses: Sequence[str] | None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        max_token_ttl_s: float = 0,
    ) -> None:
        self._rooms = rooms
        self._keys = keys
        self._ice_addresses = None if ice_addresses is None else list(ice_addresses)
        self._connect_timeout_s = connect_timeout_s
        self._max_token_ttl_s = max_token_ttl_s
        self.sessions: dict[str, WhepSession] = {}
        self._fanouts: dict[str, TrackFanout] = {}  # by track sid, while someone watches
        self._tasks: set[asyncio.Task[None]] = set()

    async def lifetime(self, app: web.Application) -> AsyncIterator[None]:
        """Scope ICE gathering while the service runs; close every viewer at the end."""
        if self._ice_addresses is None:
            yield
        else:
            with host_address_override():
                yield
        sessions, self.sessions = list(self.sessions.values()), {}
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        await self._close_idle_fanouts()

    def _fanout(self, track: LocalTrack) -> TrackFanout:
        fanout = self._fanouts.get(track.sid)
        if fanout is None or fanout.ended:
            fanout = self._fanouts[track.sid] = TrackFanout(track)
        return fanout

    async def _close_session(self, session: WhepSession) -> None:
        await session.close()
        await self._close_idle_fanouts()

    async def _close_idle_fanouts(self) -> None:
        idle = [sid for sid, fanout in self._fanouts.items() if fanout.idle]
        for sid in idle:
            await self._fanouts.pop(sid).close()

    async def play(self, request: web.Request) -> web.Response:
        room_name = request.match_info["room"]
        self._authorize(request, room_name)
        if request.content_type != SDP_CONTENT_TYPE:
            raise web.HTTPUnsupportedMediaType(text=f"Content-Type must be {SDP_CONTENT_TYPE}")
        offer = filter_candidates(await request.text(), self._ice_addresses)
        if not offer.lstrip().startswith("v=0"):
            raise web.HTTPBadRequest(text="the body is not an SDP offer (it must start with v=0)")
        room = self._rooms.get(room_name)
        if room is None:
            raise web.HTTPNotFound(text=f"no room {room_name!r}")
        sources = choose_tracks(
            room, request.query.get("participant"), request.query.getall("track", [])
        )
        offered = {line.split()[0][2:] for line in offer.splitlines() if line.startswith("m=")}
        sources = [t for t in sources if KINDS[t.kind] in offered]
        if not sources:
            raise web.HTTPBadRequest(text="the SDP offer receives none of the chosen tracks' kinds")

        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # host candidates only
        session = WhepSession(room_name, pc)
        answered = False
        try:
            for track in sources:
                transceiver = pc.addTransceiver(KINDS[track.kind], direction="sendonly")
                prefer_codec(transceiver, track.mime_type)
                session.streams.append(self._fanout(track).stream(transceiver.sender))
            try:
                with gathering_on(self._ice_addresses):
                    answer = await asyncio.wait_for(negotiate(pc, offer), NEGOTIATION_TIMEOUT_S)
            except TimeoutError:
                raise web.HTTPServiceUnavailable(text="ICE gathering timed out") from None
            except Exception as exc:
                log.info("rejected a WHEP offer for room %r: %s", room_name, exc)
                raise web.HTTPBadRequest(
                    text=f"cannot use this SDP offer (the viewer must accept "
                    f"{', '.join(t.mime_type for t in sources)}): {exc}"
                ) from None
            answered = True
        finally:
            if not answered:
                await self._close_session(session)
        resource = secrets.token_urlsafe(24)
        self.sessions[resource] = session
        self._watch(session, resource)
        route = request.match_info.route.resource
        assert route is not None  # the request was routed here
        prefix = route.canonical.removesuffix("/{room}")
        return web.Response(
            status=201,
            body=answer.encode(),
            content_type=SDP_CONTENT_TYPE,
            headers={
                "Location": f"{prefix}/{quote(room_name, safe='')}/{resource}",
                "ETag": f'"{secrets.token_hex(8)}"',
            },
        )

    async def publishers(self, request: web.Request) -> web.Response:
        """GET: who a viewer may pick with `?participant=`, and their tracks (JSON).

        Not part of WHEP: a page showing a whole room (a custom template)
        needs the room's publishers, with the same token it plays them with.
        """
        room_name = request.match_info["room"]
        self._authorize(request, room_name)
        room = self._rooms.get(room_name)
        if room is None:
            raise web.HTTPNotFound(text=f"no room {room_name!r}")
        return web.json_response(
            [
                {
                    "identity": person.identity,
                    "name": person.name,
                    "tracks": [
                        {
                            "sid": track.sid,
                            "kind": KINDS[track.kind],
                            "source": models.TrackSource.Name(track.source).lower(),
                        }
                        for track in person.tracks.values()
                        if track.kind in KINDS
                    ],
                }
                for person in room.participants.values()
            ]
        )

    async def delete(self, request: web.Request) -> web.Response:
        """End a session; the unguessable resource URL is what authorizes it."""
        session = self.sessions.get(request.match_info["resource"])
        if session is None or session.room != request.match_info["room"]:
            raise web.HTTPNotFound(text="no such WHEP session")
        del self.sessions[request.match_info["resource"]]
        await self._close_session(session)
        return web.Response(status=200, text="session ended")

    def _watch(self, session: WhepSession, resource: str) -> None:
        """Close the session when its connection fails, closes or never comes up."""
        settled = asyncio.Event()

        async def end() -> None:
            if self.sessions.pop(resource, None) is not None:
                await self._close_session(session)

        async def give_up_unless_connected() -> None:
            try:
                await asyncio.wait_for(settled.wait(), self._connect_timeout_s)
            except TimeoutError:
                log.info("WHEP session in room %r did not connect; closing it", session.room)
                await end()

        task = asyncio.create_task(give_up_unless_connected(), name=f"whep {resource[:6]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

        @session.pc.on("connectionstatechange")
        async def on_state_change() -> None:
            if session.pc.connectionState == "connected":
                settled.set()
            elif session.pc.connectionState in ("failed", "closed"):
                settled.set()
                await end()

    def _authorize(self, request: web.Request, room_name: str) -> Claims:
        try:
            claims = verify_token(
                bearer_token(request.headers.get("Authorization")),
                self._keys,
                max_ttl=self._max_token_ttl_s,
            )
        except TokenError as exc:
            raise web.HTTPUnauthorized(
                text=str(exc), headers={"WWW-Authenticate": "Bearer"}
            ) from None
        if claims.grant("roomJoin") is not True or claims.grant("room") != room_name:
            raise web.HTTPForbidden(text=f"token does not grant joining room {room_name!r}")
        if claims.grant("canSubscribe") is not True:
            raise web.HTTPForbidden(text="token does not grant subscribing (canSubscribe)")
        return claims


def prefer_codec(transceiver: RTCRtpTransceiver, mime_type: str) -> None:
    """Negotiate only the codec the publisher sent (and its retransmissions)."""
    wanted = mime_type.lower()
    transceiver.setCodecPreferences(
        [
            codec
            for codec in RTCRtpSender.getCapabilities(transceiver.kind).codecs
            if codec.mimeType.lower() in (wanted, f"{transceiver.kind}/rtx")
        ]
    )
