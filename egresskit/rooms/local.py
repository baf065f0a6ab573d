"""Embedded rooms: participants publish media tracks, stages subscribe to their frames.

A room lives in this process. Tracks come from WHIP publishers (see
`egresskit.rooms.whip`) or from any in-process `aiortc.MediaStreamTrack`.
An in-process track has exactly one reader task, which drains the track for
as long as it is published and fans each frame out to bounded subscriber
links.

A WebRTC track offers its encoded frames (`subscribe_encoded`, through
`egresskit.rooms.encoded`), and is decoded (by `egresskit.rooms.decoder`)
only while it has decoded subscribers: a track that is only recorded as it
arrives costs no decoding. Its decoded frames arrive from the decoder by
a callback in the loop and are fanned out without waiting: a full BLOCK subscriber link
loses the frame (counted). Its reader task only waits for the track's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import string
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av.frame import Frame
from livekit.protocol import models

from egresskit.pipeline.link import Link, LinkPolicy
from egresskit.rooms.decoder import DecodedFrames
from egresskit.rooms.encoded import ENCODED_QUEUE, EncodedReceiver
from egresskit.rooms.events import (
    ParticipantJoined,
    ParticipantLeft,
    RoomEvent,
    SpeakersChanged,
    TrackMuted,
    TrackPublished,
    TrackUnpublished,
)

log = logging.getLogger(__name__)

SID_ALPHABET = string.ascii_letters + string.digits

# A BLOCK subscriber that stops reading must not stall the reader for ever:
# the reader is the only thing keeping the remote track's buffer small.
BLOCKED_SUBSCRIBER_WAIT_S = 2.0
# An in-process track whose pts and arrival times part by more is timed afresh.
IN_PROCESS_RESYNC_S = 1.0
# Bound on tearing down a publisher's connection or receiver.
RELEASE_TIMEOUT_S = 5.0
# A room empty this long, that nobody watches, is dropped (LiveKit's default empty_timeout).
EMPTY_ROOM_TIMEOUT_S = 300.0

DEFAULT_MIME_TYPES = {"video": "video/VP8", "audio": "audio/opus"}
TRACK_TYPES = {"video": models.TrackType.VIDEO, "audio": models.TrackType.AUDIO}
DEFAULT_SOURCES = {"video": models.TrackSource.CAMERA, "audio": models.TrackSource.MICROPHONE}


def new_sid(prefix: str) -> str:
    """A LiveKit-style id: a type prefix and 12 random alphanumerics."""
    return prefix + "".join(secrets.choice(SID_ALPHABET) for _ in range(12))


class Closable(Protocol):
    """What a participant's connection must offer so leaving can end it."""

    async def close(self) -> None: ...


class NoEncodedMedia(Exception):
    """The track offers decoded frames only (an in-process track, not a WebRTC one)."""


class LocalTrack:
    """A published track; subscribers get its frames, decoded or encoded, through their own links."""

    def __init__(
        self,
        media: MediaStreamTrack,
        participant: LocalParticipant,
        *,
        source: models.TrackSource,
        name: str,
        mime_type: str,
        release: Callable[[], Awaitable[None]] | None,
        encoded: EncodedReceiver | None = None,
        sid: str | None = None,
    ) -> None:
        self.sid = sid or new_sid("TR_")
        self.kind = TRACK_TYPES[media.kind]
        self.source = source
        self.name = name
        self.mime_type = mime_type
        self.muted = False
        self.participant = participant
        self.published_at = time.time()
        self._media = media
        self._release = release
        self._encoded = encoded
        if encoded is not None:
            encoded.on_decoded = self._fan_out
        self._subscribers: list[Link] = []
        self._reader: asyncio.Task[None] | None = None
        self._ended = False
        # in-process frames: (pts in seconds, monotonic arrival) of the frame timing them
        self._anchor: tuple[float, float] | None = None

    def __repr__(self) -> str:
        return f"LocalTrack({self.sid}, {self.mime_type}, {self.participant.identity!r})"

    def subscribe(self, maxsize: int = 30, policy: LinkPolicy = LinkPolicy.DROP_OLDEST) -> Link:
        """A link receiving each decoded frame from now on, then EOS when the track ends."""
        link: Link = Link(maxsize, policy, name=self.sid)
        if self._ended:
            link.close_nowait()
        else:
            self._subscribers.append(link)
            self._update_decoding()
        return link

    def unsubscribe(self, link: Link) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(link)
        self._update_decoding()

    def frame_time(self, frame: Frame | av.Packet) -> float | None:
        """When a frame of this track was captured, on `time.monotonic()`; None if unknown.

        WebRTC frames are timed by their sender (`egresskit.rooms.timeline`);
        in-process frames by their pts, from the arrival of the frame that
        anchored it (see `_anchor_time`).
        """
        if frame.pts is None or frame.time_base is None:
            return None
        if self._encoded is not None:
            return self._encoded.time_of(frame.pts)
        if self._anchor is None:
            return None
        pts, arrival = self._anchor
        return arrival + float(frame.pts * frame.time_base) - pts

    def _anchor_time(self, frame: Frame | av.Packet) -> None:
        """Time in-process frames from their pts, re-anchored when pts and arrival part by 1 s."""
        if frame.pts is None or frame.time_base is None:
            return
        now = time.monotonic()
        timed = self.frame_time(frame)
        if timed is None or abs(timed - now) > IN_PROCESS_RESYNC_S:
            self._anchor = (float(frame.pts * frame.time_base), now)

    @property
    def has_encoded_media(self) -> bool:
        return self._encoded is not None

    @property
    def encoded(self) -> EncodedReceiver | None:
        """Where encoded frames come from (WebRTC tracks only), with its counters."""
        return self._encoded

    def subscribe_encoded(self, maxsize: int = ENCODED_QUEUE) -> Link:
        """A link of `EncodedFrame`s from the next key frame on (requested now), then EOS."""
        if self._encoded is None:
            raise NoEncodedMedia(
                f"track {self.sid} has no encoded media (it is not a WebRTC track)"
            )
        if self._ended:
            link: Link = Link(1, LinkPolicy.BLOCK, name=self.sid)
            link.close_nowait()
            return link
        return self._encoded.subscribe(maxsize)

    def unsubscribe_encoded(self, link: Link) -> None:
        if self._encoded is not None:
            self._encoded.unsubscribe(link)

    def _update_decoding(self) -> None:
        """Decode only while someone wants decoded frames."""
        if self._encoded is not None:
            self._encoded.decoding = bool(self._subscribers)

    def _start(self, on_end: Callable[[LocalTrack], None]) -> None:
        self._reader = asyncio.create_task(self._read(on_end), name=f"read {self.sid}")

    async def _read(self, on_end: Callable[[LocalTrack], None]) -> None:
        while True:
            try:
                frame = await self._media.recv()
            except MediaStreamError:
                break
            except Exception:
                log.exception("track %s failed; unpublishing it", self.sid)
                break
            self._anchor_time(frame)
            # A copy: subscribers may come and go while a BLOCK link makes us wait.
            for link in list(self._subscribers):
                if link.policy is LinkPolicy.BLOCK:
                    try:
                        await asyncio.wait_for(link.put(frame), BLOCKED_SUBSCRIBER_WAIT_S)
                    except TimeoutError:
                        link.dropped += 1
                else:
                    link.put_nowait(frame)
        await self._close_subscribers()
        on_end(self)

    def _fan_out(self, frames: DecodedFrames) -> None:
        """Decoded frames of a WebRTC track, to every subscriber without waiting."""
        for frame in frames:
            for link in self._subscribers:
                link.put_nowait(frame)  # a full BLOCK link counts the loss itself

    def _stop(self) -> None:
        """No more frames: stop the reader (unless it is the caller) and the media track."""
        self._ended = True
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        self._media.stop()

    async def _close_subscribers(self) -> None:
        """EOS to every subscriber; a BLOCK link first gets a bounded wait for room.

        Waiting by polling: `Link.close` cannot be abandoned half way, and a
        BLOCK link must not lose its last frames to `close_nowait`.
        """
        links, self._subscribers = self._subscribers, []
        self._update_decoding()
        if self._encoded is not None:
            self._encoded.close()
        deadline = time.monotonic() + BLOCKED_SUBSCRIBER_WAIT_S
        for link in links:
            if link.policy is LinkPolicy.BLOCK:
                while link.qsize() >= link.maxsize and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.005)
            link.close_nowait()

    async def _finish(self) -> None:
        """After `_stop`: wait for the reader, end the subscribers, release the source."""
        if self._reader is not None and self._reader is not asyncio.current_task():
            # asyncio.wait: the reader's own cancellation must not look like ours.
            await asyncio.wait({self._reader}, timeout=RELEASE_TIMEOUT_S)
        await self._close_subscribers()
        if self._release is not None:
            release, self._release = self._release, None
            try:
                await asyncio.wait_for(release(), RELEASE_TIMEOUT_S)
            except Exception:
                log.warning("releasing track %s failed", self.sid, exc_info=True)


class LocalParticipant:
    """Someone in a room, owning its published tracks and, for WHIP, its connection."""

    def __init__(
        self,
        room: LocalRoom,
        identity: str,
        *,
        name: str,
        metadata: str,
        kind: models.ParticipantInfo.Kind,
        connection: Closable | None,
        sid: str | None = None,
    ) -> None:
        self.sid = sid or new_sid("PA_")
        self.identity = identity
        self.name = name
        self.metadata = metadata
        self.kind = kind
        self.joined_at = time.time()
        self.tracks: dict[str, LocalTrack] = {}
        self.room = room
        self.connection = connection

    def __repr__(self) -> str:
        return f"LocalParticipant({self.sid}, {self.identity!r})"


class LocalRoom:
    """Participants and tracks of one embedded room, and the subscribers to its events."""

    def __init__(self, name: str, on_event: Callable[[RoomEvent], None] | None = None) -> None:
        self.name = name
        self.sid = new_sid("RM_")
        self.created_at = time.time()
        self.participants: dict[str, LocalParticipant] = {}
        # time.monotonic() since when the room has had no participant; None while it has one.
        self.empty_since: float | None = time.monotonic()
        # Who the room's server says is speaking (identity, level 0..1), loudest first;
        # embedded rooms have no such server, their levels are measured by the mixer.
        self.speakers: tuple[tuple[str, float], ...] = ()
        self._event_links: list[Link] = []
        self._on_event = on_event

    def __repr__(self) -> str:
        return f"LocalRoom({self.name!r}, {len(self.participants)} participants)"

    @property
    def empty(self) -> bool:
        return not self.participants

    @property
    def watched(self) -> bool:
        """Whether something (an egress waiting for publishers) follows the room's events."""
        return bool(self._event_links)

    def join(
        self,
        identity: str,
        *,
        name: str = "",
        metadata: str = "",
        kind: models.ParticipantInfo.Kind = models.ParticipantInfo.Kind.STANDARD,
        connection: Closable | None = None,
        sid: str | None = None,
    ) -> LocalParticipant:
        """Add a participant; joining with an identity already present returns that participant.

        `connection` (a WHIP peer connection) is closed when the participant
        leaves; it cannot be attached to an existing participant. `sid` keeps
        an id given elsewhere (a LiveKit server's); by default one is made.
        """
        existing = self.participants.get(identity)
        if existing is not None:
            if connection is not None:
                raise ValueError(f"participant {identity!r} is already in room {self.name!r}")
            return existing
        participant = LocalParticipant(
            self, identity, name=name, metadata=metadata, kind=kind, connection=connection, sid=sid
        )
        self.participants[identity] = participant
        self.empty_since = None
        self._emit(ParticipantJoined(self, participant))
        return participant

    async def publish(
        self,
        track: MediaStreamTrack,
        *,
        identity: str,
        source: models.TrackSource | None = None,
        name: str = "",
        mime_type: str | None = None,
        release: Callable[[], Awaitable[None]] | None = None,
        encoded: EncodedReceiver | None = None,
        sid: str | None = None,
    ) -> LocalTrack:
        """Publish a media track for `identity`, joining it if needed.

        The room takes the track over: unpublishing stops it. `mime_type` is
        the codec it arrived in (WebRTC); in-process tracks default to what a
        WebRTC publisher would send. `release` is awaited after unpublishing,
        so a publisher can stop what feeds the track (a WebRTC receiver).
        `encoded` offers the track's encoded frames and decodes on demand.
        `sid` keeps an id given elsewhere (a LiveKit server's).
        This coroutine never suspends, so a caller can publish several tracks
        with no other task changing the room in between.
        """
        if track.kind not in TRACK_TYPES:
            raise ValueError(f"cannot publish a {track.kind!r} track")
        participant = self.join(identity)
        local = LocalTrack(
            track,
            participant,
            source=DEFAULT_SOURCES[track.kind] if source is None else source,
            name=name,
            mime_type=mime_type or DEFAULT_MIME_TYPES[track.kind],
            release=release,
            encoded=encoded,
            sid=sid,
        )
        participant.tracks[local.sid] = local
        local._start(self._remove_track)
        self._emit(TrackPublished(self, local))
        return local

    async def unpublish(self, track_sid: str) -> None:
        """Remove a track: its subscribers get EOS; unknown ids are ignored."""
        track = self.track(track_sid)
        if track is None:
            return
        self._remove_track(track)
        await track._finish()

    async def leave(self, identity: str) -> None:
        """Unpublish every track of the participant, then it leaves and its connection closes."""
        participant = self.participants.get(identity)
        if participant is None:
            return
        for track_sid in list(participant.tracks):
            await self.unpublish(track_sid)
        # Another task may have replaced the participant while tracks were released.
        if self.participants.get(identity) is participant:
            del self.participants[identity]
            if not self.participants:
                self.empty_since = time.monotonic()
            self._emit(ParticipantLeft(self, participant))
        if participant.connection is not None:
            connection, participant.connection = participant.connection, None
            try:
                await asyncio.wait_for(connection.close(), RELEASE_TIMEOUT_S)
            except Exception:
                log.warning("closing the connection of %s failed", identity, exc_info=True)

    def set_muted(self, track_sid: str, muted: bool) -> None:
        track = self.track(track_sid)
        if track is None:
            raise KeyError(f"no track {track_sid!r} in room {self.name!r}")
        if track.muted != muted:
            track.muted = muted
            self._emit(TrackMuted(self, track, muted))

    def set_speakers(self, speakers: tuple[tuple[str, float], ...]) -> None:
        """The server's list of speakers changed (identity, level 0..1), loudest first."""
        if speakers != self.speakers:
            self.speakers = speakers
            self._emit(SpeakersChanged(self, speakers))

    def track(self, sid: str) -> LocalTrack | None:
        for participant in self.participants.values():
            track = participant.tracks.get(sid)
            if track is not None:
                return track
        return None

    def tracks(self) -> list[LocalTrack]:
        return [t for p in self.participants.values() for t in p.tracks.values()]

    def subscribe_events(self, maxsize: int = 256) -> Link:
        """A link of room events: the current state first, then live events.

        Events are put without waiting; when the link is full the oldest is
        dropped and counted (`link.dropped`), so a consumer that sees drops
        should re-read the room's state.
        """
        link: Link = Link(maxsize, LinkPolicy.DROP_OLDEST, name=f"events {self.name}")
        for participant in self.participants.values():
            link.put_nowait(ParticipantJoined(self, participant))
            for track in participant.tracks.values():
                link.put_nowait(TrackPublished(self, track))
        if self.speakers:
            link.put_nowait(SpeakersChanged(self, self.speakers))
        self._event_links.append(link)
        return link

    def unsubscribe_events(self, link: Link) -> None:
        with contextlib.suppress(ValueError):
            self._event_links.remove(link)

    async def close(self) -> None:
        """Every participant leaves; event subscribers then get EOS."""
        for identity in list(self.participants):
            await self.leave(identity)
        for link in self._event_links:
            link.close_nowait()
        self._event_links.clear()

    def _emit(self, event: RoomEvent) -> None:
        for link in self._event_links:
            link.put_nowait(event)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                log.exception("room event observer failed on %s", type(event).__name__)

    def _remove_track(self, track: LocalTrack) -> None:
        """Unpublish now: on request, or when the media ended by itself."""
        if track.participant.tracks.pop(track.sid, None) is None:
            return
        track._stop()
        self._emit(TrackUnpublished(self, track))


class RoomManager:
    """The embedded rooms of a process, by name, created on first use.

    A room that has been empty for `empty_timeout_s`, with nothing following
    its events, is dropped (checked whenever rooms are looked up), so rooms
    named once by a publisher do not stay listed, and held, for ever.
    """

    def __init__(
        self,
        on_event: Callable[[RoomEvent], None] | None = None,
        *,
        empty_timeout_s: float = EMPTY_ROOM_TIMEOUT_S,
    ) -> None:
        """`on_event` sees every event of every room (webhooks, auto egress); it must not block."""
        self._rooms: dict[str, LocalRoom] = {}
        self._on_event = on_event
        self._empty_timeout_s = empty_timeout_s

    def get_or_create(self, name: str) -> LocalRoom:
        room = self.get(name)
        if room is None:
            room = self._rooms[name] = LocalRoom(name, self._on_event)
        return room

    def get(self, name: str) -> LocalRoom | None:
        self._drop_abandoned()
        return self._rooms.get(name)

    def rooms(self) -> list[LocalRoom]:
        self._drop_abandoned()
        return list(self._rooms.values())

    def _drop_abandoned(self) -> None:
        now = time.monotonic()
        for name, room in list(self._rooms.items()):
            since = room.empty_since
            if since is not None and now - since >= self._empty_timeout_s and not room.watched:
                del self._rooms[name]

    async def close(self) -> None:
        """Close every room: participants leave and their peer connections close."""
        rooms, self._rooms = list(self._rooms.values()), {}
        for room in rooms:
            await room.close()
