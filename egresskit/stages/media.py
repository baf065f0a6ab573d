"""The items that flow between media stages."""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from fractions import Fraction

import av
from av.container import OutputContainer
from av.stream import Stream

from egresskit.pipeline import EOS, EndOfStream, InputPort, UpstreamEvent

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TrackInfo:
    """What a stage needs to know about a room track, without holding the room."""

    sid: str
    kind: int  # livekit.protocol.models.TrackType
    source: int  # livekit.protocol.models.TrackSource
    participant_identity: str
    participant_name: str = ""
    mime_type: str = ""
    participant_kind: int = 0  # livekit.protocol.models.ParticipantInfo.Kind (0: STANDARD)


@dataclass(frozen=True, slots=True)
class TrackStarted:
    """A track joined the stream: a compositor gives it a tile, a mixer a buffer."""

    track: TrackInfo


@dataclass(frozen=True, slots=True)
class TrackEnded:
    """A track left: its tile or buffer goes away."""

    track: TrackInfo


# How long after its capture a frame is played into a composite (see TrackFrame.time).
# It covers the network, the jitter buffer, decoding and the hops to the
# compositor and mixer, so audio and video meet at the capture times the
# sender gave them; a frame later than this is shown late (video) or dropped
# (audio, counted). Half a second also rides out a publisher or a loop held
# up for a while on a busy machine, which 0.3 s did not in tests. Recordings
# keep their length: the first PLAYOUT_DELAY_S of output shows the media as
# soon as there is any.
PLAYOUT_DELAY_S = 0.5


@dataclass(frozen=True, slots=True)
class TrackFrame:
    """One decoded frame of one track, in the order it arrived.

    `time` is when it was captured, on `time.monotonic()` (see
    `egresskit.rooms.timeline`); None means now, when it arrives.
    """

    track: TrackInfo
    frame: av.VideoFrame | av.AudioFrame
    time: float | None = None


@dataclass(frozen=True, slots=True)
class TrackMuteChanged:
    track: TrackInfo
    muted: bool


@dataclass(frozen=True, slots=True)
class SpeakersAnnounced:
    """The room's server says who is speaking: (identity, level 0..1 linear), loudest first."""

    speakers: tuple[tuple[str, float], ...]


TrackItem = TrackStarted | TrackEnded | TrackFrame | TrackMuteChanged
# What a roster port carries: the tracks without frames, and who the server hears speaking.
RosterItem = TrackStarted | TrackEnded | TrackMuteChanged | SpeakersAnnounced


@dataclass(slots=True)
class EncodedPacket:
    """A compressed packet and which elementary stream ("video" or "audio") it belongs to."""

    kind: str
    packet: av.Packet

    @property
    def seconds(self) -> float:
        pts = self.packet.pts or 0
        tb = self.packet.time_base or Fraction(1, 1)
        return float(pts * tb)


@dataclass(frozen=True, slots=True, eq=False)
class StreamHeader:
    """What a muxer needs to add an encoder's stream to a container, sent in-band by the
    encoder before its first packet (as GStreamer sends caps), so sinks need only their link.

    `template` is the encoder's stream in a throwaway container, holding the codec's
    parameters; sinks only copy from it (every sink thread may at once), and drop their
    headers in `release`, since it keeps the encoder's codec context alive.
    """

    kind: str  # "video" or "audio", as the packets' EncodedPacket.kind
    codec: str  # FFmpeg's codec name: libx264, aac, libopus...
    template: Stream
    extradata: bytes  # avcC, AudioSpecificConfig, OpusHead: what the container header carries
    time_base: Fraction
    width: int = 0
    height: int = 0
    frame_rate: int = 0  # video: frames per second (the encoders are constant frame rate)

    def add_to(self, container: OutputContainer) -> Stream:
        """Add this stream to a container being written (on the writing thread)."""
        stream = container.add_stream_from_template(self.template)
        # The template copy leaves extradata out; without it FLV carries no sequence
        # headers and OGG no OpusHead, so players drop or refuse the stream.
        stream.codec_context.extradata = self.extradata or None
        if isinstance(context := stream.codec_context, av.VideoCodecContext):
            # the template copy carries the stream's size from before it was set (640x480)
            context.width = self.width
            context.height = self.height
        return stream


EncodedItem = EncodedPacket | StreamHeader


@dataclass(frozen=True, slots=True, eq=False)
class KeyFrameRequest(UpstreamEvent):
    """A sink needs a key frame soon (a new stream destination starts, a connection was
    lost): sent upstream through its link, to the encoder, as GStreamer's force-key-unit."""


class EncodedInput:
    """Reads an input port of encoded streams: every producer's StreamHeader, then packets.

    Encoders send their header as the first thing they do, so packets of one
    encoder seldom overtake another's header; those that do are kept (a few
    at most) and come first from `recv`.
    """

    def __init__(self, port: InputPort[EncodedItem]) -> None:
        self.port = port
        self.headers: dict[str, StreamHeader] = {}
        self._early: deque[EncodedPacket] = deque()
        self._ended = False

    async def read_headers(self) -> dict[str, StreamHeader]:
        """The headers by kind, once every producer sent one (fewer if the input ends first)."""
        received = 0
        while received < self.port.producers and not self._ended:
            item = await self.port.recv()
            if item is EOS:
                self._ended = True
            elif isinstance(item, StreamHeader):
                self.headers[item.kind] = item
                received += 1
            else:
                self._early.append(item)
        return self.headers

    async def recv(self) -> EncodedPacket | EndOfStream:
        if self._early:
            return self._early.popleft()
        while not self._ended:
            item = await self.port.recv()
            if item is EOS:
                self._ended = True
            elif isinstance(item, StreamHeader):
                log.debug("%s: a late stream header is ignored", self.port)
            else:
                return item
        return EOS
