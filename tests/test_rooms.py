"""Embedded rooms with in-process tracks: events, subscribers, the reader task."""

from __future__ import annotations

import asyncio
import re
from fractions import Fraction

import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from livekit.protocol import models
from publishers import SineAudioTrack, SyntheticVideoTrack, frame_color, next_frames

from egresskit.pipeline.link import EOS, Link, LinkPolicy
from egresskit.rooms import (
    LocalRoom,
    ParticipantJoined,
    ParticipantLeft,
    RoomManager,
    TrackMuted,
    TrackPublished,
    TrackUnpublished,
)

WAIT_S = 10.0


class FiniteVideoTrack(MediaStreamTrack):
    """`count` tiny frames as fast as they are read, then the end of the track."""

    kind = "video"

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count
        self.produced = 0

    async def recv(self) -> av.VideoFrame:
        await asyncio.sleep(0)
        if self.produced == self.count:
            self.stop()
            raise MediaStreamError
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        frame.pts = self.produced
        frame.time_base = Fraction(1, 30)
        self.produced += 1
        return frame


async def drain(link: Link, timeout: float = WAIT_S) -> list:
    """Everything a link delivers until EOS."""

    async def collect() -> list:
        return [item async for item in link]

    return await asyncio.wait_for(collect(), timeout)


async def next_event(link: Link, kind: type, timeout: float = WAIT_S):
    """Skip events until one of `kind` arrives."""
    while True:
        event = await asyncio.wait_for(link.get(), timeout)
        assert event is not EOS, f"event link ended while waiting for {kind.__name__}"
        if isinstance(event, kind):
            return event


async def test_publish_defaults_and_ids(rooms: RoomManager):
    room = rooms.get_or_create("lobby")
    assert rooms.get_or_create("lobby") is room
    assert rooms.get("nowhere") is None
    assert rooms.rooms() == [room]
    assert room.empty

    video = await room.publish(SyntheticVideoTrack(width=64, height=36), identity="alice")
    audio = await room.publish(SineAudioTrack(440), identity="alice")
    screen = await room.publish(
        SyntheticVideoTrack(width=64, height=36),
        identity="bob",
        source=models.TrackSource.SCREEN_SHARE,
        name="slides",
    )

    assert re.fullmatch(r"RM_[A-Za-z0-9]{12}", room.sid)
    alice = room.participants["alice"]
    assert re.fullmatch(r"PA_[A-Za-z0-9]{12}", alice.sid)
    assert alice.kind == models.ParticipantInfo.Kind.STANDARD
    assert set(alice.tracks) == {video.sid, audio.sid}
    assert re.fullmatch(r"TR_[A-Za-z0-9]{12}", video.sid)
    assert (video.kind, video.source, video.mime_type) == (
        models.TrackType.VIDEO,
        models.TrackSource.CAMERA,
        "video/VP8",
    )
    assert (audio.kind, audio.source, audio.mime_type) == (
        models.TrackType.AUDIO,
        models.TrackSource.MICROPHONE,
        "audio/opus",
    )
    assert (screen.source, screen.name, screen.participant.identity) == (
        models.TrackSource.SCREEN_SHARE,
        "slides",
        "bob",
    )
    assert room.track(screen.sid) is screen
    assert room.track("TR_unknown") is None
    assert {t.sid for t in room.tracks()} == {video.sid, audio.sid, screen.sid}
    assert not room.empty


async def test_events_in_order(rooms: RoomManager):
    room = rooms.get_or_create("events")
    events = room.subscribe_events()

    video = await room.publish(SyntheticVideoTrack(width=64, height=36), identity="alice")
    audio = await room.publish(SineAudioTrack(440), identity="alice")
    room.set_muted(video.sid, True)
    room.set_muted(video.sid, True)  # no change, no event
    room.set_muted(video.sid, False)
    await room.unpublish(video.sid)
    await room.leave("alice")

    alice = audio.participant
    seen = [events.get_nowait() for _ in range(events.qsize())]
    assert seen == [
        ParticipantJoined(room, alice),
        TrackPublished(room, video),
        TrackPublished(room, audio),
        TrackMuted(room, video, True),
        TrackMuted(room, video, False),
        TrackUnpublished(room, video),
        TrackUnpublished(room, audio),
        ParticipantLeft(room, alice),
    ]
    assert room.empty and room.tracks() == []
    with pytest.raises(KeyError):
        room.set_muted(video.sid, True)


async def test_event_subscription_replays_current_state(rooms: RoomManager):
    room = rooms.get_or_create("replay")
    room.join("watcher", metadata='{"role": "viewer"}')
    camera = await room.publish(SyntheticVideoTrack(width=64, height=36), identity="alice")
    mic = await room.publish(SineAudioTrack(440), identity="alice")

    events = room.subscribe_events()
    replay = [events.get_nowait() for _ in range(events.qsize())]
    watcher, alice = room.participants["watcher"], room.participants["alice"]
    assert replay == [
        ParticipantJoined(room, watcher),
        ParticipantJoined(room, alice),
        TrackPublished(room, camera),
        TrackPublished(room, mic),
    ]
    assert watcher.metadata == '{"role": "viewer"}'

    await room.leave("watcher")
    assert await next_event(events, ParticipantLeft) == ParticipantLeft(room, watcher)

    room.unsubscribe_events(events)
    await room.leave("alice")
    assert events.empty()


async def test_subscriber_gets_frames_then_eos(rooms: RoomManager):
    room = rooms.get_or_create("frames")
    track = await room.publish(
        SyntheticVideoTrack(color=(0, 200, 0), width=64, height=36), identity="alice"
    )
    link = track.subscribe()

    frames = await next_frames(link, 5)
    assert all(isinstance(f, av.VideoFrame) for f in frames)
    assert [(f.width, f.height) for f in frames] == [(64, 36)] * 5
    assert frame_color(frames[-1]) == (0, 200, 0)

    await room.unpublish(track.sid)
    assert link.closed
    await drain(link)  # ends: EOS arrived
    assert track.subscribe().get_nowait() is EOS  # subscribing to an ended track: EOS at once


async def test_track_that_ends_is_unpublished(rooms: RoomManager):
    room = rooms.get_or_create("ending")
    events = room.subscribe_events()
    media = SyntheticVideoTrack(width=64, height=36)
    track = await room.publish(media, identity="alice")
    link = track.subscribe()
    await next_frames(link, 2)

    media.stop()  # the publisher stops its track

    assert await next_event(events, TrackUnpublished) == TrackUnpublished(room, track)
    await drain(link)
    assert room.track(track.sid) is None
    assert "alice" in room.participants  # only the track went away


async def test_reader_drains_without_subscribers(rooms: RoomManager):
    room = rooms.get_or_create("drain")
    events = room.subscribe_events()
    media = FiniteVideoTrack(300)

    track = await room.publish(media, identity="alice")

    # Nobody subscribed, yet every frame was read and the end was noticed.
    assert await next_event(events, TrackUnpublished) == TrackUnpublished(room, track)
    assert media.produced == 300


async def test_drop_oldest_subscriber_counts_overflow(rooms: RoomManager):
    room = rooms.get_or_create("overflow")
    events = room.subscribe_events()
    track = await room.publish(FiniteVideoTrack(10), identity="alice")
    link = track.subscribe(maxsize=2, policy=LinkPolicy.DROP_OLDEST)

    await next_event(events, TrackUnpublished)

    # Ten frames through a link of two that nobody read: the newest frame and
    # EOS are left, everything older was dropped and counted.
    remaining = [link.get_nowait() for _ in range(link.qsize())]
    assert [r.pts for r in remaining[:-1]] == [9]
    assert remaining[-1] is EOS
    assert link.dropped == 9


async def test_block_subscriber_loses_nothing(rooms: RoomManager):
    room = rooms.get_or_create("block")
    track = await room.publish(FiniteVideoTrack(60), identity="alice")
    link = track.subscribe(maxsize=4, policy=LinkPolicy.BLOCK)

    received = []
    async for frame in link:
        received.append(frame.pts)
        await asyncio.sleep(0.001)  # a slow consumer

    assert received == list(range(60))
    assert link.dropped == 0


async def test_unsubscribed_link_gets_nothing_more(rooms: RoomManager):
    room = rooms.get_or_create("unsubscribe")
    track = await room.publish(SyntheticVideoTrack(width=64, height=36), identity="alice")
    kept, left = track.subscribe(), track.subscribe()
    await next_frames(left, 1)
    track.unsubscribe(left)
    while not left.empty():
        left.get_nowait()

    await next_frames(kept, 3)
    await room.unpublish(track.sid)

    assert left.empty() and not left.closed
    assert kept.closed


async def test_join_is_idempotent_and_publish_joins(rooms: RoomManager):
    room = rooms.get_or_create("join")
    events = room.subscribe_events()
    agent = room.join("bot", name="Bot", kind=models.ParticipantInfo.Kind.AGENT)
    assert room.join("bot") is agent
    await room.publish(SineAudioTrack(300), identity="bot")

    assert [type(e) for e in [events.get_nowait() for _ in range(events.qsize())]] == [
        ParticipantJoined,
        TrackPublished,
    ]
    assert (agent.name, agent.kind) == ("Bot", models.ParticipantInfo.Kind.AGENT)


async def test_manager_close_ends_everything():
    manager = RoomManager()
    room = manager.get_or_create("closing")
    events = room.subscribe_events()
    track = await manager.get_or_create("closing").publish(
        SyntheticVideoTrack(width=64, height=36), identity="alice"
    )
    frames = track.subscribe()

    await manager.close()

    assert manager.rooms() == []
    assert room.empty
    await drain(frames)
    kinds = [type(e) for e in await drain(events)]
    assert kinds == [ParticipantJoined, TrackPublished, TrackUnpublished, ParticipantLeft]


def test_room_is_plain_to_construct():
    room = LocalRoom("plain")
    assert room.name == "plain" and room.empty and room.created_at > 0
