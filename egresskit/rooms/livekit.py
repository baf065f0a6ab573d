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

`ended` resolves when the room is over for egresskit: with None when the
server ends the session (`leave` DISCONNECT, room deleted), with a readable
reason when the server or the connection to it is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

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

from egresskit.rooms.encoded import EncodedReceiver
from egresskit.rooms.local import LocalRoom, LocalTrack
from egresskit.rooms.signal import SignalClient, SignalClosed, SignalError, recorder_token

log = logging.getLogger(__name__)

# What aiortc can receive (RED audio is answered as plain Opus, the server strips RED).
SUPPORTED_MIME_TYPES = frozenset({"audio/opus", "audio/red", "video/vp8", "video/h264"})
# Tracks arrive in another codec than they were published in: RED is stripped for us.
PUBLISHED_AS = {"audio/red": "audio/opus"}
# Bound on a server offer being applied and answered.
NEGOTIATION_TIMEOUT_S = 15.0
# Bound on the first connection of the subscriber PC, which later offers wait for.
CONNECT_TIMEOUT_S = 15.0

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

    async def recv(self):
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
        self._mids: dict[str, str] = {}  # mid -> track sid it carries now
        self._ssrcs: dict[str, int] = {}  # mid -> media SSRC it carries now
        self._speaking: dict[str, float] = {}  # participant sid -> level, as the server said
        self._pending_candidates: list[rtc_pb.TrickleRequest] = []
        self._negotiated = asyncio.Event()
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
        if joined.room.sid:
            self.sid = joined.room.sid
        # max-bundle: with aiortc's default (balanced), the second m-line of a kind created
        # by the same offer keeps a transport that bundling then discards, and never starts
        self._pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        self._watch_pc(self._pc)
        self._tasks.append(asyncio.create_task(self._signal_loop(), name=f"livekit {self.name}"))
        await self._update_participants(joined.other_participants)

    def _watch_pc(self, pc: RTCPeerConnection) -> None:
        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState == "failed" and not self._closing:
                self._end("media connection to the LiveKit server failed")

    async def _signal_loop(self) -> None:
        offers: asyncio.Queue[rtc_pb.SessionDescription] = asyncio.Queue()
        negotiator = asyncio.create_task(self._negotiate_offers(offers))
        try:
            while True:
                response = await self._signal.recv()
                which = response.WhichOneof("message")
                if which == "offer":
                    offers.put_nowait(response.offer)
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
                    self._left(response.leave)
                    return
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
        except SignalClosed as exc:
            if not self._closing:
                self._end(f"lost the LiveKit server: {exc.reason}")
        except Exception as exc:
            log.exception("LiveKit room %s: signalling failed", self.name)
            self._end(f"LiveKit signalling failed: {exc}")
        finally:
            negotiator.cancel()

    def _left(self, leave: rtc_pb.LeaveRequest) -> None:
        reason = models.DisconnectReason.Name(leave.reason)
        if leave.action == rtc_pb.LeaveRequest.DISCONNECT:
            log.info("LiveKit room %s: the server ended the session (%s)", self.name, reason)
            self._end(None)
        else:
            # Resuming needs a new signalling connection and PC; egresskit does not
            # rejoin yet, so the recording ends with what it has, said plainly.
            self._end(f"the LiveKit server asked egresskit to reconnect ({reason}); it did not")

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

    async def _update_participants(self, participants) -> None:
        to_subscribe: dict[str, list[str]] = {}
        for info in sorted(participants, key=lambda p: p.joined_at_ms or p.joined_at * 1000):
            if info.identity == self.identity:
                continue
            if info.state == models.ParticipantInfo.DISCONNECTED:
                await self._participant_left(info)
                continue
            self.join(info.identity, name=info.name, metadata=info.metadata, kind=info.kind, sid=info.sid)
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
        self._infos.pop(sid, None)
        self._subscribed.discard(sid)
        self._skipped.discard(sid)
        await self.unpublish(sid)
        self._changed.set()

    def _speakers_changed(self, changes) -> None:
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

    async def _negotiate_offers(self, offers: asyncio.Queue[rtc_pb.SessionDescription]) -> None:
        first = True
        while True:
            offer = await offers.get()
            if not first:
                await self._wait_connected()
            first = False
            try:
                await asyncio.wait_for(self._answer(offer), NEGOTIATION_TIMEOUT_S)
            except Exception as exc:
                log.exception("LiveKit room %s: cannot answer an offer", self.name)
                self._end(f"cannot negotiate media with the LiveKit server: {exc}")
                return

    async def _wait_connected(self) -> None:
        """Later offers wait until DTLS is up, or aiortc leaves their receivers unstarted."""
        pc = self._pc
        assert pc is not None
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

    async def _answer(self, offer: rtc_pb.SessionDescription) -> None:
        pc = self._pc
        assert pc is not None
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
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
            if media is None:
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
            if c.name.lower() != "rtx"
        ]
        receiver.transport._register_rtp_receiver(receiver, parameters)
        if rtx is not None:
            receiver._RTCRtpReceiver__rtx_ssrc[rtx] = ssrc  # type: ignore[attr-defined]

    async def _publish(self, transceiver: RTCRtpTransceiver, sid: str) -> LocalTrack | None:
        known = self._infos.get(sid)
        if known is None or sid not in self._subscribed:
            return None  # a track the server sends unasked, or already gone: not recorded
        participant, info = known
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
        self.join(participant.identity, name=participant.name, kind=participant.kind, sid=participant.sid)
        track = await self.publish(
            _SignalledTrack(transceiver.kind),
            identity=participant.identity,
            source=source,
            name=info.name,
            mime_type=mime_type,
            encoded=EncodedReceiver(transceiver.receiver),
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
        await super().close()
        if self._pc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pc.close(), 5.0)
        if not self.ended.done():
            self.ended.set_result(None)
