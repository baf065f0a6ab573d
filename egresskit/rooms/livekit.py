"""LiveKitRoom: a room of a LiveKit server, joined as a hidden recorder, as a room source.

A `LiveKitRoom` is a `LocalRoom` whose roster is kept by LiveKit's
signalling (`egresskit.rooms.signal`) and whose tracks arrive on one aiortc
subscriber PeerConnection: the graph builders and stages use it exactly as
an embedded room (roster and events, decoded frames on demand, encoded
frames for passthrough through `egresskit.rooms.encoded`).

Participants are in the roster as soon as the server announces them, and
so are the speakers it hears (`speakers_changed`, as `LocalRoom.speakers`); a
track is published in the roster once it is subscribed and its m-line is
negotiated, under LiveKit's own track sid. Only the tracks that `wanted`
admits are subscribed. Tracks in codecs aiortc cannot receive (VP9, AV1,
H.265) are never subscribed, since one such m-line makes aiortc reject the
whole offer; each gets a line in `warnings`.

aiortc traps handled here:

- A later offer applied while DTLS is still connecting leaves its receivers
  unstarted (aiortc starts receivers only from the connect task that sees
  DTLS connected), so offers after the first wait for `connected`.
- LiveKit reuses transceivers: a new track can arrive on an m-line that
  carried an old one, with a new SSRC, and aiortc neither starts that
  receiver again nor emits a track event. After each offer every m-line is
  compared with the track it carried; a reused, already started receiver is
  registered again for the new SSRCs (aiortc's RTP router and RTX map), and
  the new track is published in the roster with a fresh encoded tap.

A session whose signalling breaks, or that the server asks to resume or
reconnect, is got back (`_reconnect`): resumed on a new socket with the
same PC (the server restarts ICE, which aiortc cannot: `restart_ice`), or
joined afresh with a new PC when the server no longer has it (its tracks stay in the
roster and go on with the new PC's media, so their recordings do too).

`ended` resolves when the room is over for egresskit: with None when the
server ends the session (`leave` DISCONNECT, room deleted), with a readable
reason when the server or the connection to it is lost and cannot be got
back within RECONNECT_WINDOW_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Callable, Iterable
from typing import NoReturn

import aioice
import aioice.ice
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc import sdp as sdp_parser
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpDecodingParameters, RTCRtpReceiveParameters
from aiortc.sdp import candidate_from_sdp
from livekit.protocol import models
from livekit.protocol import rtc as rtc_pb

from egresskit.rooms import intake
from egresskit.rooms.encoded import EncodedReceiver
from egresskit.rooms.local import LocalRoom, LocalTrack
from egresskit.rooms.signal import (
    DEFAULT_PING_INTERVAL_S,
    DEFAULT_PING_TIMEOUT_S,
    ResumeRefused,
    SignalClient,
    SignalClosed,
    SignalError,
    recorder_token,
)
from egresskit.rooms.udp import enlarge_receive_buffers

log = logging.getLogger(__name__)

# What aiortc can receive (RED audio is answered as plain Opus, the server strips RED).
SUPPORTED_MIME_TYPES = frozenset({"audio/opus", "audio/red", "video/vp8", "video/h264"})
# Tracks arrive in another codec than they were published in: RED is stripped for us.
PUBLISHED_AS = {"audio/red": "audio/opus"}
# Bound on a server offer being applied and answered.
NEGOTIATION_TIMEOUT_S = 15.0
# Bound on the first connection of the subscriber PC, which later offers wait for.
CONNECT_TIMEOUT_S = 15.0
# How long a lost session is tried to be got back (resumed, or joined afresh) before
# the room ends: a server gone for good ends an egress within 10 s of going.
RECONNECT_WINDOW_S = 6.0
# Bound on one attempt (a dead server refuses at once; an unreachable one never answers),
# and the first pause between attempts, doubling up to a second.
RECONNECT_ATTEMPT_TIMEOUT_S = 2.0
RECONNECT_BACKOFF_S = 0.25
# After joining afresh, how long a track of the lost session may take to come back
# before it is unpublished (its recordings end).
REJOIN_TRACK_WAIT_S = 10.0

WantedTrack = Callable[[models.ParticipantInfo, models.TrackInfo], bool]


class LiveKitError(Exception):
    """Joining the LiveKit room failed (unreachable server, refused token, timeout)."""


class _SignalledTrack(MediaStreamTrack):
    """The roster's handle on a subscribed track: it ends when signalling says so.

    Media goes through the encoded tap, never through `recv`, which only
    waits for the end (that is how `LocalTrack` learns its track is over).
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._ended = asyncio.Event()

    async def recv(self) -> NoReturn:
        await self._ended.wait()
        raise MediaStreamError

    def stop(self) -> None:
        super().stop()
        self._ended.set()


def track_mime_type(info: models.TrackInfo) -> str:
    """The codec a track is published in (the first one for multi-codec publishing)."""
    if info.mime_type:
        return info.mime_type.lower()
    if info.codecs:
        return info.codecs[0].mime_type.lower()
    return ""


def restart_ice(pc: RTCPeerConnection) -> None:
    """Take the new ICE credentials of a restart offer just applied to `pc`.

    aiortc 1.16 has no ICE restart: its ICE transport keeps the remote
    credentials of the first offer, so after livekit-server restarts ICE
    (every resumed session) the server rejects our consent checks and ours
    reject its checks, and media stops. The transport's aioice `Connection`
    (`RTCIceTransport._connection`) builds and checks STUN messages from its
    `remote_username`/`remote_password` attributes on each use, so setting
    them from the applied description (`_RTCPeerConnection__remoteIce`) is
    the restart; our own credentials stay (the server accepts an answer that
    keeps them). With a remote that is ICE-lite, only a check nominating the
    pair makes it select one again, so the pair in use is nominated anew.
    """
    remote_ice = getattr(pc, "_RTCPeerConnection__remoteIce", {})
    for transceiver in pc.getTransceivers():
        parameters = remote_ice.get(transceiver)
        connection = transceiver.receiver.transport.transport._connection
        if parameters is None or connection.remote_username in (
            None,
            parameters.usernameFragment,
        ):
            continue
        connection.remote_username = parameters.usernameFragment
        connection.remote_password = parameters.password
        log.info("ICE restarted by the LiveKit server (new remote credentials)")
        if parameters.iceLite and connection.ice_controlling:
            for pair in list(connection._nominated.values()):
                task = asyncio.ensure_future(_nominate(connection, pair))
                _nominations.add(task)
                task.add_done_callback(_nominations.discard)


_nominations: set[asyncio.Future[None]] = set()  # running tasks are kept from the collector


async def _nominate(connection: aioice.Connection, pair: aioice.ice.CandidatePair) -> None:
    """Nominate a working pair again (a lite remote selects pairs only when nominated)."""
    with contextlib.suppress(Exception):
        await pair.protocol.request(
            connection.build_request(pair, nominate=True),
            pair.remote_addr,
            integrity_key=(connection.remote_password or "").encode("utf8"),
        )


class LiveKitRoom(LocalRoom):
    """A LiveKit room seen by a hidden recorder: `await LiveKitRoom.connect(...)`, then `close()`."""

    def __init__(
        self,
        url: str,
        api_key: str,
        api_secret: str,
        name: str,
        *,
        identity: str,
        wanted: WantedTrack | None = None,
    ) -> None:
        super().__init__(name)
        self.url = url
        self.identity = identity
        self.warnings: list[str] = []
        self.ended: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._token = recorder_token(api_key, api_secret, name, identity)
        self._wanted = wanted
        self._signal = SignalClient()
        self._pc: RTCPeerConnection | None = None
        # track sid -> (participant, TrackInfo) for every track the server announced
        self._infos: dict[str, tuple[models.ParticipantInfo, models.TrackInfo]] = {}
        self._subscribed: set[str] = set()
        self._skipped: set[str] = set()
        # tracks of a lost session waiting to come back on the new PC (see `_rejoin`)
        self._held: dict[str, LocalTrack] = {}
        self._mids: dict[str, str] = {}  # mid -> track sid it carries now
        self._ssrcs: dict[str, int] = {}  # mid -> media SSRC it carries now
        self._speaking: dict[str, float] = {}  # participant sid -> level, as the server said
        self._pending_candidates: list[rtc_pb.TrickleRequest] = []
        self._negotiated = asyncio.Event()
        self._offers: asyncio.Queue[rtc_pb.SessionDescription] = asyncio.Queue()
        self._negotiator: asyncio.Task[None] | None = None
        self._participant_sid = ""
        self._ping = (DEFAULT_PING_INTERVAL_S, DEFAULT_PING_TIMEOUT_S)
        # sessions got back after the signalling connection broke or the server asked
        self.resumed = 0
        self.rejoined = 0
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    @classmethod
    async def connect(
        cls,
        url: str,
        api_key: str,
        api_secret: str,
        name: str,
        *,
        identity: str,
        wanted: WantedTrack | None = None,
        timeout: float = 10.0,
    ) -> LiveKitRoom:
        """Join `name` on the server at `url` and subscribe to the tracks `wanted` admits.

        Returns once every admitted track present at joining is in the roster
        (or `timeout` passed: tracks that come later are added as they come).
        """
        room = cls(url, api_key, api_secret, name, identity=identity, wanted=wanted)
        try:
            await room._connect()
            await room.wait_subscribed(timeout)
        except BaseException:
            await room.close()
            raise
        return room

    async def wait_subscribed(self, timeout: float) -> bool:
        """Wait until every subscribed track is in the roster; False on timeout."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not self._all_published():
                    self._changed.clear()
                    await self._changed.wait()
                return True
        return False

    def announced(self) -> list[tuple[models.ParticipantInfo, models.TrackInfo]]:
        """Every track the server says is published in the room, subscribed or not."""
        return list(self._infos.values())

    def _all_published(self) -> bool:
        return all(self.track(sid) is not None for sid in self._subscribed)

    # --- connection ---------------------------------------------------------------------------

    async def _connect(self) -> None:
        try:
            joined = await self._signal.connect(self.url, self._token)
        except (SignalError, ValueError) as exc:
            raise LiveKitError(str(exc)) from None
        assert isinstance(joined, rtc_pb.JoinResponse)
        await self._joined(joined)
        self._tasks.append(asyncio.create_task(self._signal_loop(), name=f"livekit {self.name}"))

    async def _joined(self, joined: rtc_pb.JoinResponse) -> None:
        """A (new) session: its ids, a fresh subscriber PC, and the tracks to subscribe."""
        if joined.room.sid:
            self.sid = joined.room.sid
        self._participant_sid = joined.participant.sid
        self._ping = (
            joined.ping_interval or DEFAULT_PING_INTERVAL_S,
            joined.ping_timeout or DEFAULT_PING_TIMEOUT_S,
        )
        # max-bundle: with aiortc's default (balanced), the second m-line of a kind created
        # by the same offer keeps a transport that bundling then discards, and never starts
        self._pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        self._watch_pc(self._pc)
        self._mids.clear()
        self._ssrcs.clear()
        self._pending_candidates.clear()
        self._negotiated = asyncio.Event()
        if self._negotiator is not None:
            self._negotiator.cancel()
        self._offers = asyncio.Queue()
        self._negotiator = asyncio.create_task(self._negotiate_offers(self._pc, self._offers))
        await self._update_participants(joined.other_participants)

    def _watch_pc(self, pc: RTCPeerConnection) -> None:
        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState == "failed" and pc is self._pc and not self._closing:
                self._end("media connection to the LiveKit server failed")

    async def _signal_loop(self) -> None:
        """Follow the session; when it breaks, get it back (`_reconnect`) or end the room."""
        try:
            while True:
                try:
                    action, why = await self._follow_signal()
                except SignalClosed as exc:
                    if self._closing:
                        return
                    action, why = rtc_pb.LeaveRequest.RESUME, exc.reason
                if action == rtc_pb.LeaveRequest.DISCONNECT:
                    log.info("LiveKit room %s: the server ended the session (%s)", self.name, why)
                    self._end(None)
                    return
                if not await self._reconnect(action, why):
                    return
        except Exception as exc:
            log.exception("LiveKit room %s: signalling failed", self.name)
            self._end(f"LiveKit signalling failed: {exc}")

    async def _follow_signal(self) -> tuple[int, str]:
        """Handle server messages until `leave`: returns its action and reason."""
        while True:
            response = await self._signal.recv()
            which = response.WhichOneof("message")
            if which == "offer":
                self._offers.put_nowait(response.offer)
            elif which == "trickle":
                await self._remote_candidate(response.trickle)
            elif which == "update":
                await self._update_participants(response.update.participants)
            elif which == "track_unpublished":
                await self._forget_track(response.track_unpublished.track_sid)
            elif which == "speakers_changed":
                self._speakers_changed(response.speakers_changed.speakers)
            elif which == "mute":
                self._muted(response.mute.sid, response.mute.muted)
            elif which == "leave":
                leave = response.leave
                action = leave.action
                if action == rtc_pb.LeaveRequest.DISCONNECT and leave.can_reconnect:
                    action = rtc_pb.LeaveRequest.RECONNECT  # a server older than actions
                return action, models.DisconnectReason.Name(leave.reason)
            elif which == "room_update" and response.room_update.room.sid:
                self.sid = response.room_update.room.sid
            elif which == "subscription_response" and response.subscription_response.err:
                err = response.subscription_response
                self._warn(
                    f"track {err.track_sid} could not be subscribed: "
                    f"{models.SubscriptionError.Name(err.err)}"
                )
            elif which == "refresh_token":
                self._token = response.refresh_token

    async def _reconnect(self, action: int, why: str) -> bool:
        """Get the session back after `why`; False once given up (the room has ended).

        RESUME (and a signalling connection that broke) first tries to resume
        the session on a new socket: the subscriber PC and its tracks stay,
        the server restarts ICE with a new offer. RECONNECT, or a server that
        no longer has the session, joins afresh: new PC, tracks subscribed
        again (the roster's tracks stay and go on with the new PC's media).
        Attempts go on for RECONNECT_WINDOW_S, so a server that went away for
        good still ends the room promptly, with a readable reason.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECONNECT_WINDOW_S
        resume = action == rtc_pb.LeaveRequest.RESUME and bool(self._participant_sid)
        log.warning(
            "LiveKit room %s: %s; %s", self.name, why, "resuming" if resume else "joining again"
        )
        await self._signal.close()
        failure = why
        for attempt in itertools.count():
            remaining = deadline - loop.time()
            if remaining <= 0 or self._closing:
                break
            if attempt:
                await asyncio.sleep(min(RECONNECT_BACKOFF_S * 2 ** (attempt - 1), 1.0, remaining))
            signal = SignalClient()
            timeout = max(0.1, min(RECONNECT_ATTEMPT_TIMEOUT_S, deadline - loop.time()))
            try:
                if resume:
                    await signal.connect(
                        self.url,
                        self._token,
                        reconnect=True,
                        sid=self._participant_sid,
                        ping=self._ping,
                        timeout=timeout,
                    )
                else:
                    joined = await signal.connect(self.url, self._token, timeout=timeout)
            except ResumeRefused as exc:
                failure, resume = str(exc), False
                log.info("LiveKit room %s: %s; joining again", self.name, exc)
                continue
            except SignalError as exc:
                failure = str(exc)
                continue
            self._signal = signal
            if self._closing:
                await signal.close()
                return False
            if resume:
                self.resumed += 1
                log.info("LiveKit room %s: session resumed", self.name)
            else:
                assert isinstance(joined, rtc_pb.JoinResponse)
                await self._rejoin(joined)
                self.rejoined += 1
                log.info("LiveKit room %s: joined again", self.name)
            return True
        self._end(f"lost the LiveKit server ({why}) and could not reconnect: {failure}")
        return False

    async def _rejoin(self, joined: rtc_pb.JoinResponse) -> None:
        """A fresh session replaces the lost one: its PC goes, every track is subscribed again.

        The roster's tracks stay while they come back on the new PC (`_publish`
        rebinds each to its new receiver, so a recording of it goes on); one
        that the new session does not bring back within REJOIN_TRACK_WAIT_S
        is unpublished.
        """
        old = self._pc
        for track in self.tracks():
            if track.encoded is not None:
                track.encoded.detach()  # closing the old PC must not end the track
            self._held[track.sid] = track
        present = {p.identity for p in joined.other_participants}
        for identity in [i for i in self.participants if i not in present]:
            await self.leave(identity)
        self._infos.clear()
        self._subscribed.clear()
        self._speaking.clear()
        self.set_speakers(())
        await self._joined(joined)
        for sid in [sid for sid in self._held if sid not in self._subscribed]:
            await self._unpublish_held(sid)
        if self._held:
            self._tasks.append(asyncio.create_task(self._expire_held(list(self._held))))
        if old is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.close(), 5.0)

    async def _expire_held(self, sids: list[str]) -> None:
        await asyncio.sleep(REJOIN_TRACK_WAIT_S)
        for sid in sids:
            await self._unpublish_held(sid)

    async def _unpublish_held(self, sid: str) -> None:
        if self._held.pop(sid, None) is not None:
            await self.unpublish(sid)

    def _end(self, reason: str | None) -> None:
        if not self.ended.done():
            if reason:
                log.warning("LiveKit room %s: %s", self.name, reason)
            self.ended.set_result(reason)
        if not self._closing:
            self._tasks.append(asyncio.create_task(self._drop_tracks()))

    async def _drop_tracks(self) -> None:
        """The server is gone: every track ends, so graphs following them finish."""
        for track in self.tracks():
            await self.unpublish(track.sid)

    # --- roster -------------------------------------------------------------------------------

    async def _update_participants(self, participants: Iterable[models.ParticipantInfo]) -> None:
        to_subscribe: dict[str, list[str]] = {}
        for info in sorted(participants, key=lambda p: p.joined_at_ms or p.joined_at * 1000):
            if info.identity == self.identity:
                continue
            if info.state == models.ParticipantInfo.DISCONNECTED:
                await self._participant_left(info)
                continue
            self.join(
                info.identity, name=info.name, metadata=info.metadata, kind=info.kind, sid=info.sid
            )
            participant = self.participants[info.identity]
            participant.name, participant.metadata = info.name, info.metadata
            current = {t.sid for t in info.tracks}
            for sid, (owner, _) in list(self._infos.items()):
                if owner.identity == info.identity and sid not in current:
                    await self._forget_track(sid)
            for track in info.tracks:
                self._infos[track.sid] = (info, track)
                self._muted(track.sid, track.muted)
                if track.sid in self._subscribed or track.sid in self._skipped:
                    continue
                if self._wanted is not None and not self._wanted(info, track):
                    continue
                mime_type = track_mime_type(track)
                if mime_type and mime_type not in SUPPORTED_MIME_TYPES:
                    self._skipped.add(track.sid)
                    self._warn(
                        f"track {track.sid} of {info.identity!r} is {mime_type}, which egresskit "
                        "cannot receive; it is not recorded"
                    )
                    continue
                self._subscribed.add(track.sid)
                to_subscribe.setdefault(info.sid, []).append(track.sid)
        if to_subscribe:
            await self._subscribe(to_subscribe)
        self._changed.set()

    async def _participant_left(self, info: models.ParticipantInfo) -> None:
        for sid, (owner, _) in list(self._infos.items()):
            if owner.identity == info.identity:
                await self._forget_track(sid)
        if info.identity in self.participants:
            await self.leave(info.identity)
        if self._speaking.pop(info.sid, None) is not None:
            self._speakers_changed(())

    async def _forget_track(self, sid: str) -> None:
        self._held.pop(sid, None)
        self._infos.pop(sid, None)
        self._subscribed.discard(sid)
        self._skipped.discard(sid)
        await self.unpublish(sid)
        self._changed.set()

    def _speakers_changed(self, changes: Iterable[models.SpeakerInfo]) -> None:
        """The server sends only the speakers that changed; the roster gets the whole list."""
        for speaker in changes:
            if speaker.active:
                self._speaking[speaker.sid] = speaker.level
            else:
                self._speaking.pop(speaker.sid, None)
        identities = {p.sid: p.identity for p in self.participants.values()}
        self.set_speakers(
            tuple(
                (identities[sid], level)
                for sid, level in sorted(self._speaking.items(), key=lambda item: -item[1])
                if sid in identities
            )
        )

    def _muted(self, sid: str, muted: bool) -> None:
        if self.track(sid) is not None:
            self.set_muted(sid, muted)

    def _warn(self, message: str) -> None:
        log.warning("LiveKit room %s: %s", self.name, message)
        self.warnings.append(message)

    async def _subscribe(self, tracks: dict[str, list[str]]) -> None:
        """Subscribe to exactly these tracks, video at its highest quality (no adaptive stream)."""
        sids = [sid for group in tracks.values() for sid in group]
        await self._signal.send(
            rtc_pb.SignalRequest(
                subscription=rtc_pb.UpdateSubscription(
                    track_sids=sids,
                    subscribe=True,
                    participant_tracks=[
                        models.ParticipantTracks(participant_sid=p, track_sids=t)
                        for p, t in tracks.items()
                    ],
                )
            )
        )
        for sid in sids:
            _, info = self._infos[sid]
            if info.type == models.TrackType.VIDEO:
                await self._signal.send(
                    rtc_pb.SignalRequest(
                        track_setting=rtc_pb.UpdateTrackSettings(
                            track_sids=[sid],
                            disabled=False,
                            quality=models.VideoQuality.HIGH,
                            width=info.width,
                            height=info.height,
                        )
                    )
                )

    # --- subscriber PeerConnection ------------------------------------------------------------

    async def _negotiate_offers(
        self, pc: RTCPeerConnection, offers: asyncio.Queue[rtc_pb.SessionDescription]
    ) -> None:
        first = True
        while True:
            offer = await offers.get()
            if not first:
                await self._wait_connected(pc)
            first = False
            try:
                await asyncio.wait_for(self._answer(pc, offer), NEGOTIATION_TIMEOUT_S)
            except SignalClosed:
                # the answer did not go out; a resumed session gets a new offer
                continue
            except Exception as exc:
                log.exception("LiveKit room %s: cannot answer an offer", self.name)
                self._end(f"cannot negotiate media with the LiveKit server: {exc}")
                return

    @staticmethod
    async def _wait_connected(pc: RTCPeerConnection) -> None:
        """Later offers wait until DTLS is up, or aiortc leaves their receivers unstarted."""
        if pc.connectionState == "connected":
            return
        connected = asyncio.Event()

        def check() -> None:
            if pc.connectionState in ("connected", "failed", "closed"):
                connected.set()

        pc.on("connectionstatechange", check)
        try:
            check()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(connected.wait(), CONNECT_TIMEOUT_S)
        finally:
            pc.remove_listener("connectionstatechange", check)

    async def _answer(self, pc: RTCPeerConnection, offer: rtc_pb.SessionDescription) -> None:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
        restart_ice(pc)
        await pc.setLocalDescription(await pc.createAnswer())
        enlarge_receive_buffers(pc)
        intake.install(pc)
        await self._signal.send(
            rtc_pb.SignalRequest(
                answer=rtc_pb.SessionDescription(
                    type="answer", sdp=pc.localDescription.sdp, id=offer.id
                )
            )
        )
        self._negotiated.set()
        for trickle in self._pending_candidates:
            await self._remote_candidate(trickle)
        self._pending_candidates.clear()
        await self._map_tracks(offer)

    async def _remote_candidate(self, trickle: rtc_pb.TrickleRequest) -> None:
        if trickle.target != rtc_pb.SUBSCRIBER or self._pc is None:
            return
        if not self._negotiated.is_set():
            self._pending_candidates.append(trickle)
            return
        init = json.loads(trickle.candidateInit or "{}")
        line = init.get("candidate", "")
        if not line:
            return
        candidate = candidate_from_sdp(line.removeprefix("candidate:"))
        candidate.sdpMid = init.get("sdpMid")
        candidate.sdpMLineIndex = init.get("sdpMLineIndex")
        with contextlib.suppress(Exception):  # a candidate aiortc cannot use is only ignored
            await self._pc.addIceCandidate(candidate)

    async def _map_tracks(self, offer: rtc_pb.SessionDescription) -> None:
        """Match each m-line with the track it carries now and publish new ones in the roster."""
        pc = self._pc
        assert pc is not None
        parsed = sdp_parser.SessionDescription.parse(offer.sdp)
        media_by_mid = {m.rtp.muxId: m for m in parsed.media}
        mid_to_track = dict(offer.mid_to_track_id)
        new: list[tuple[RTCRtpTransceiver, str]] = []
        for transceiver in pc.getTransceivers():
            mid = transceiver.mid
            media = media_by_mid.get(mid) if mid is not None else None
            if mid is None or media is None:
                continue
            sid = ""
            if media.direction in ("sendonly", "sendrecv"):
                sid = mid_to_track.get(mid) or parsed.webrtc_track_id(media) or ""
            old = self._mids.get(mid)
            ssrc = media.ssrc[0].ssrc if media.ssrc else None
            if old == sid and (not sid or self._ssrcs.get(mid) == ssrc):
                continue
            if old and old != sid:
                await self.unpublish(old)
            self._mids[mid] = sid
            if not sid:
                continue
            if ssrc is not None:
                self._ssrcs[mid] = ssrc
            self._reroute(transceiver, media)
            if old != sid:
                new.append((transceiver, sid))
        # in the order participants joined, as layouts place them (not the m-lines' order)
        new.sort(key=lambda pair: self._join_order(pair[1]))
        for transceiver, sid in new:
            await self._publish(transceiver, sid)
        self._changed.set()

    def _join_order(self, sid: str) -> tuple[int, str, str]:
        known = self._infos.get(sid)
        if known is None:
            return (0, "", sid)
        participant, _ = known
        return (participant.joined_at_ms or participant.joined_at * 1000, participant.sid, sid)

    @staticmethod
    def _reroute(transceiver: RTCRtpTransceiver, media: sdp_parser.MediaDescription) -> None:
        """A started receiver of a reused m-line: route its new SSRCs (aiortc only does it once)."""
        receiver = transceiver.receiver
        if not getattr(receiver, "_RTCRtpReceiver__started", False) or not media.ssrc:
            return
        ssrc = media.ssrc[0].ssrc
        rtx = media.ssrc[1].ssrc if len(media.ssrc) > 1 else None
        parameters = RTCRtpReceiveParameters(
            codecs=transceiver._codecs,
            headerExtensions=transceiver._headerExtensions,
            muxId=media.rtp.muxId,
            rtcp=media.rtp.rtcp,
        )
        parameters.encodings = [
            RTCRtpDecodingParameters(ssrc=ssrc, payloadType=c.payloadType)
            for c in transceiver._codecs
            if c.name.lower() != "rtx" and c.payloadType is not None
        ]
        receiver.transport._register_rtp_receiver(receiver, parameters)
        if rtx is not None:
            receiver._RTCRtpReceiver__rtx_ssrc[rtx] = ssrc  # type: ignore[attr-defined]

    async def _publish(self, transceiver: RTCRtpTransceiver, sid: str) -> LocalTrack | None:
        known = self._infos.get(sid)
        if known is None or sid not in self._subscribed:
            return None  # a track the server sends unasked, or already gone: not recorded
        participant, info = known
        held = self._held.pop(sid, None)
        if held is not None and held.encoded is not None and held.kind == info.type:
            held.encoded.rebind(transceiver.receiver)
            log.info("LiveKit room %s: track %s is back after joining again", self.name, sid)
            self._muted(sid, info.muted)
            return held
        if held is not None:
            await self.unpublish(sid)
        if info.source in (models.TrackSource.UNKNOWN,):
            source = (
                models.TrackSource.CAMERA
                if transceiver.kind == "video"
                else models.TrackSource.MICROPHONE
            )
        else:
            source = info.source
        # What the publisher sends, not aiortc's first negotiated codec: every
        # m-line of a LiveKit offer lists all codecs.
        mime_type = PUBLISHED_AS.get(info.mime_type.lower(), info.mime_type) or next(
            (c.mimeType for c in transceiver._codecs if c.name.lower() != "rtx"), None
        )
        self.join(
            participant.identity, name=participant.name, kind=participant.kind, sid=participant.sid
        )
        track = await self.publish(
            _SignalledTrack(transceiver.kind),
            identity=participant.identity,
            source=source,
            name=info.name,
            mime_type=mime_type,
            # the track ends when signalling says so, not with its receiver (see `_rejoin`)
            encoded=EncodedReceiver(transceiver.receiver, end_with_receiver=False),
            sid=sid,
        )
        if info.muted:
            self.set_muted(sid, True)
        return track

    # --- ending -------------------------------------------------------------------------------

    async def close(self) -> None:
        """Leave the LiveKit room; every track ends and event subscribers get EOS."""
        self._closing = True
        await self._signal.leave()
        for task in self._tasks:
            task.cancel()
        if self._negotiator is not None:
            self._negotiator.cancel()
        await super().close()
        if self._pc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pc.close(), 5.0)
        if not self.ended.done():
            self.ended.set_result(None)
