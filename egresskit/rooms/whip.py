"""WHIP ingest: browsers and encoders publish into embedded rooms over WebRTC.

`POST /{room}` takes a complete SDP offer (no trickle ICE: the answer is sent
once ICE gathering has finished) and an access token, joins the token's
identity to the room and publishes every audio and video track of the offer.
The created resource, `{room}/{secret}`, ends the session on DELETE: the
secret is unguessable and known only to the publisher (the participant sid is
public through ListParticipants and webhooks). A session whose connection has
not come up within `connect_timeout_s` is closed and its participant leaves.
Every response carries CORS headers so a page on another origin can publish.

Track sources: video is `camera` and audio `microphone`, unless the query says
`?source=screen_share` (video becomes `screen_share`, audio
`screen_share_audio`) or a media section's msid (stream or track id) contains
"screen", which marks that one track as screen share. A token whose
`canPublishSources` grant is not empty may publish only those sources.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import cast
from urllib.parse import quote

from aiohttp import web
from aiohttp.typedefs import Handler
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpTransceiver, RTCSessionDescription
from aiortc import sdp as sdp_parser
from livekit.protocol import models

from egresskit.rooms import intake
from egresskit.rooms.encoded import EncodedReceiver
from egresskit.rooms.ice import gathering_on, host_address_override, own_addresses
from egresskit.rooms.local import LocalParticipant, LocalRoom, RoomManager
from egresskit.rooms.timeline import SenderClock
from egresskit.rooms.udp import enlarge_receive_buffers
from egresskit.tokens import Claims, TokenError, bearer_token, verify_token

log = logging.getLogger(__name__)

SDP_CONTENT_TYPE = "application/sdp"
# Bound on applying the offer and gathering ICE candidates for the answer.
NEGOTIATION_TIMEOUT_S = 10.0
# A session whose connection is not up by then is closed (its offer may name no
# reachable candidate, and aioice would wait for trickled ones for ever).
CONNECT_TIMEOUT_S = 30.0
# Media sections per offer: each costs a transceiver and its negotiation time.
MAX_MEDIA_SECTIONS = 16

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Expose-Headers": "Location, ETag, Link",
}

SCREEN_SOURCES = {
    "video": models.TrackSource.SCREEN_SHARE,
    "audio": models.TrackSource.SCREEN_SHARE_AUDIO,
}
CAMERA_SOURCES = {"video": models.TrackSource.CAMERA, "audio": models.TrackSource.MICROPHONE}
SOURCE_QUERY = {
    "camera": CAMERA_SOURCES,
    "microphone": CAMERA_SOURCES,
    "screen_share": SCREEN_SOURCES,
    "screen_share_audio": SCREEN_SOURCES,
}
# Codecs that only protect or repeat media; the negotiated codec is the first other one.
NON_MEDIA_CODECS = {"rtx", "red", "ulpfec", "flexfec-03"}


def whip_app(
    rooms: RoomManager,
    keys: Mapping[str, str],
    *,
    ice_addresses: Sequence[str] | None = None,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    max_token_ttl_s: float = 0,
) -> web.Application:
    """The WHIP endpoint, to mount with `app.add_subapp("/whip", whip_app(...))`.

    `ice_addresses` restricts the ICE host candidates of WHIP sessions to those
    addresses, while the application runs (see `egresskit.rooms.ice`; other
    peers of the process are not affected), and drops offered candidates that
    sockets on them must not reach (see `filter_candidates`). Tokens valid for
    longer than `max_token_ttl_s` (0 = no limit) are refused.
    """
    endpoint = WhipEndpoint(rooms, keys, ice_addresses, connect_timeout_s, max_token_ttl_s)
    app = web.Application(middlewares=[cors_headers])
    if ice_addresses is not None:
        app.cleanup_ctx.append(ice_override)
    app.router.add_route("POST", "/{room}", endpoint.publish, name="whip-endpoint")
    app.router.add_route("OPTIONS", "/{room}", preflight)
    app.router.add_route("DELETE", "/{room}/{resource}", endpoint.delete, name="whip-resource")
    app.router.add_route("PATCH", "/{room}/{resource}", trickle_not_supported)
    app.router.add_route("OPTIONS", "/{room}/{resource}", preflight)
    return app


async def ice_override(app: web.Application) -> AsyncIterator[None]:
    """Scope WHIP sessions' ICE gathering while the service runs; aioice is restored after."""
    with host_address_override():
        yield


@web.middleware
async def cors_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Put the CORS headers on every answer, errors included."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(CORS_HEADERS)
        raise
    response.headers.update(CORS_HEADERS)
    return response


async def preflight(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={"Accept-Post": SDP_CONTENT_TYPE})


async def trickle_not_supported(request: web.Request) -> web.Response:
    raise web.HTTPMethodNotAllowed(
        "PATCH",
        ["DELETE", "OPTIONS"],
        text="trickle ICE is not supported: send an offer with all candidates",
    )


class WhipEndpoint:
    """Turns WHIP requests into participants of the embedded rooms."""

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
        self._max_token_ttl_s = max_token_ttl_s
        self._ice_addresses = None if ice_addresses is None else list(ice_addresses)
        self._connect_timeout_s = connect_timeout_s
        # Live sessions by the secret of their resource URL.
        self._sessions: dict[str, LocalParticipant] = {}
        self._watchdogs: set[asyncio.Task[None]] = set()

    async def publish(self, request: web.Request) -> web.Response:
        room_name = request.match_info["room"]
        claims = self._authorize(request, room_name)
        if request.content_type != SDP_CONTENT_TYPE:
            raise web.HTTPUnsupportedMediaType(text=f"Content-Type must be {SDP_CONTENT_TYPE}")
        source_query = request.query.get("source", "").lower()
        if source_query and source_query not in SOURCE_QUERY:
            raise web.HTTPBadRequest(
                text=f"unknown source {source_query!r}; use one of {', '.join(SOURCE_QUERY)}"
            )
        offer_text = filter_candidates(await request.text(), self._ice_addresses)
        offer = parse_offer(offer_text)
        sources = track_sources(offer, SOURCE_QUERY.get(source_query))
        check_sources(claims, sources.values())

        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        participant: LocalParticipant | None = None
        published = False
        try:
            try:
                with gathering_on(self._ice_addresses):
                    answer = await asyncio.wait_for(
                        negotiate(pc, offer_text), NEGOTIATION_TIMEOUT_S
                    )
            except TimeoutError:
                raise web.HTTPServiceUnavailable(text="ICE gathering timed out") from None
            except Exception as exc:
                log.info("rejected a WHIP offer for room %r: %s", room_name, exc)
                raise web.HTTPBadRequest(text=f"cannot use this SDP offer: {exc}") from None
            room = self._rooms.get_or_create(room_name)
            participant = await self._replace_participant(room, claims, pc)
            await publish_tracks(room, participant, pc, answer, sources)
            published = True
        finally:
            if not published:
                if participant is not None:
                    await room.leave(participant.identity)  # closes pc too
                else:
                    await pc.close()
        resource = secrets.token_urlsafe(24)
        self._sessions[resource] = participant
        self._watch(participant, pc, resource)
        # The room is one path segment, whatever it contains ("/", ".."): percent-encoded.
        route = request.match_info.route.resource
        assert route is not None  # the request was routed here
        prefix = route.canonical.removesuffix("/{room}")
        location = f"{prefix}/{quote(room_name, safe='')}/{resource}"
        return web.Response(
            status=201,
            body=answer.encode(),
            content_type=SDP_CONTENT_TYPE,
            headers={"Location": location, "ETag": f'"{secrets.token_hex(8)}"'},
        )

    async def delete(self, request: web.Request) -> web.Response:
        """End a session; the unguessable resource URL is what authorizes it."""
        participant = self._sessions.get(request.match_info["resource"])
        if participant is None or participant.room.name != request.match_info["room"]:
            raise web.HTTPNotFound(text="no such WHIP session")
        await leave(participant)
        return web.Response(status=200, text="session ended")

    def _watch(self, participant: LocalParticipant, pc: RTCPeerConnection, resource: str) -> None:
        """The participant leaves when its connection fails, closes or never comes up."""
        settled = asyncio.Event()  # connected, or already failed or closed

        async def give_up_unless_connected() -> None:
            try:
                await asyncio.wait_for(settled.wait(), self._connect_timeout_s)
            except TimeoutError:
                log.info(
                    "WHIP session of %r in room %r did not connect in %.0f s; closing it",
                    participant.identity,
                    participant.room.name,
                    self._connect_timeout_s,
                )
                await leave(participant)

        watchdog = asyncio.create_task(give_up_unless_connected(), name=f"whip {resource[:6]}")
        self._watchdogs.add(watchdog)
        watchdog.add_done_callback(self._watchdogs.discard)

        @pc.on("connectionstatechange")
        async def on_state_change() -> None:
            if pc.connectionState == "connected":
                settled.set()
            elif pc.connectionState in ("failed", "closed"):
                settled.set()
                self._sessions.pop(resource, None)
                await leave(participant)

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
        if not claims.identity:
            raise web.HTTPUnauthorized(
                text="token has no identity (sub)", headers={"WWW-Authenticate": "Bearer"}
            )
        if claims.grant("roomJoin") is not True or claims.grant("room") != room_name:
            raise web.HTTPForbidden(text=f"token does not grant joining room {room_name!r}")
        if claims.grant("canPublish") is not True:
            raise web.HTTPForbidden(text="token does not grant publishing")
        allowed = claims.grant("canPublishSources")
        if allowed is not None and not (
            isinstance(allowed, list) and all(isinstance(a, str) for a in allowed)
        ):
            raise web.HTTPForbidden(text="token grant canPublishSources must be a list of names")
        return claims

    @staticmethod
    async def _replace_participant(
        room: LocalRoom, claims: Claims, pc: RTCPeerConnection
    ) -> LocalParticipant:
        """Join the token's identity; a session already using it leaves first."""
        while claims.identity in room.participants:
            await room.leave(claims.identity)
        # No await between the check above and the join: nobody can slip in.
        return room.join(
            claims.identity,
            name=claims.name,
            metadata=claims.metadata,
            kind=participant_kind(claims.kind),
            connection=pc,
        )


def parse_offer(text: str) -> sdp_parser.SessionDescription:
    """The offer, or 400 when it is not SDP, has too many media sections or publishes nothing."""
    if not text.lstrip().startswith("v=0"):
        raise web.HTTPBadRequest(text="the body is not an SDP offer (it must start with v=0)")
    sections = sum(1 for line in text.splitlines() if line.startswith("m="))
    if sections > MAX_MEDIA_SECTIONS:
        raise web.HTTPBadRequest(
            text=f"the SDP offer has {sections} media sections (m-lines); "
            f"at most {MAX_MEDIA_SECTIONS} are accepted"
        )
    try:
        offer = sdp_parser.SessionDescription.parse(text)
    except Exception as exc:
        raise web.HTTPBadRequest(text=f"malformed SDP offer: {exc}") from None
    if not any(is_published(m) for m in offer.media):
        raise web.HTTPBadRequest(text="the SDP offer sends no audio or video")
    return offer


def is_published(media: sdp_parser.MediaDescription) -> bool:
    return media.kind in ("audio", "video") and media.direction in (None, "sendonly", "sendrecv")


def filter_candidates(offer: str, ice_addresses: Sequence[str] | None) -> str:
    """The offer without candidates that sockets on `ice_addresses` must not reach.

    mDNS names are never resolved (that would send multicast queries). A
    service on loopback reaches only this machine: it keeps a candidate on
    loopback or on one of the machine's own addresses, which loopback sockets
    reach without leaving the machine (a same-host publisher such as aiortc
    offers only its interface addresses), and drops any other. Filtered as
    text, so the rest of the offer reaches aiortc untouched.
    """
    if ice_addresses is None:
        return offer
    loopback_only = all(ipaddress.ip_address(a).is_loopback for a in ice_addresses)
    local = own_addresses() if loopback_only else set()
    kept = []
    for line in offer.splitlines():
        if line.startswith("a=candidate:"):
            fields = line.split()
            try:
                address = ipaddress.ip_address(fields[4])
            except (IndexError, ValueError):  # malformed, or an mDNS name
                continue
            if loopback_only and not (address.is_loopback or address in local):
                continue
        kept.append(line)
    return "\r\n".join(kept) + "\r\n"


async def negotiate(pc: RTCPeerConnection, offer: str) -> str:
    """Apply the offer and answer it; aiortc gathers every candidate before returning."""
    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    return pc.localDescription.sdp


def track_sources(
    offer: sdp_parser.SessionDescription, query: Mapping[str, models.TrackSource] | None
) -> dict[str, models.TrackSource]:
    """The source of each published media section, by mid (see the module docstring)."""
    sources = {}
    for media in offer.media:
        if not is_published(media) or media.rtp.muxId is None:
            continue
        if query is not None:
            chosen = query
        elif offered_as_screen(media):
            chosen = SCREEN_SOURCES
        else:
            chosen = CAMERA_SOURCES
        sources[media.rtp.muxId] = chosen[media.kind]
    return sources


def check_sources(claims: Claims, sources: Iterable[models.TrackSource]) -> None:
    """403 unless the token's `canPublishSources` (when not empty) lists every source."""
    allowed = claims.grant("canPublishSources")
    if not allowed:
        return
    names = {name.lower() for name in allowed}
    refused = sorted({models.TrackSource.Name(s).lower() for s in sources} - names)
    if refused:
        raise web.HTTPForbidden(
            text=f"token does not grant publishing {', '.join(refused)} "
            f"(canPublishSources: {', '.join(sorted(names))})"
        )


async def publish_tracks(
    room: LocalRoom,
    participant: LocalParticipant,
    pc: RTCPeerConnection,
    answer: str,
    sources: Mapping[str, models.TrackSource],
) -> None:
    answered = {m.rtp.muxId: m for m in sdp_parser.SessionDescription.parse(answer).media}
    sender = SenderClock()  # one publisher: its tracks share one clock
    enlarge_receive_buffers(pc)
    intake.install(pc)
    for transceiver in pc.getTransceivers():
        track, mid = transceiver.receiver.track, transceiver.mid
        if track is None or mid is None or mid not in sources:
            continue
        await room.publish(
            track,
            identity=participant.identity,
            source=sources[mid],
            mime_type=negotiated_mime_type(answered.get(mid)),
            release=receiver_stopper(transceiver),
            # encoded frames for track egress; decoding only while someone wants frames
            encoded=EncodedReceiver(transceiver.receiver, sender),
        )


def receiver_stopper(transceiver: RTCRtpTransceiver) -> Callable[[], Awaitable[None]]:
    async def stop_receiver() -> None:
        await transceiver.receiver.stop()

    return stop_receiver


def offered_as_screen(media: sdp_parser.MediaDescription | None) -> bool:
    return media is not None and "screen" in (media.msid or "").lower()


def negotiated_mime_type(media: sdp_parser.MediaDescription | None) -> str | None:
    """The first media codec of the answer: the one the publisher sends."""
    if media is None:
        return None
    for codec in media.rtp.codecs:
        if codec.name.lower() not in NON_MEDIA_CODECS:
            return codec.mimeType
    return None


def participant_kind(kind: str) -> models.ParticipantInfo.Kind:
    """The token's `kind` claim (e.g. "agent") as a participant kind; standard if unknown."""
    try:
        # protoc's stubs say Value() gives an int; it is one of Kind's values
        return cast(models.ParticipantInfo.Kind, models.ParticipantInfo.Kind.Value(kind.upper()))
    except ValueError:
        return models.ParticipantInfo.Kind.STANDARD


async def leave(participant: LocalParticipant) -> None:
    """The participant leaves its room (closing its connection), unless it already has."""
    room = participant.room
    if room.participants.get(participant.identity) is participant:
        await room.leave(participant.identity)
