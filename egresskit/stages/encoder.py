"""VideoEncoder and AudioEncoder: raw frames to packets with PyAV, off the event loop."""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction

import av
from av.container import OutputContainer
from av.stream import Stream

from egresskit.pipeline import EOS, Stage
from egresskit.stages.media import EncodedPacket

H264_PROFILES = {"baseline": "Constrained Baseline", "main": "Main", "high": "High"}
VIDEO_CODECS = {"h264": "libx264", "vp8": "libvpx"}
AUDIO_CODECS = {"aac": "aac", "opus": "libopus", "mp3": "libmp3lame"}


@dataclass(frozen=True, slots=True)
class VideoEncoding:
    codec: str = "h264"  # "h264" or "vp8"
    width: int = 1280
    height: int = 720
    fps: int = 30
    bitrate_kbps: int = 3000
    profile: str = "main"  # H.264 only: baseline, main or high
    keyframe_interval_s: float = 4.0
    preset: str = "veryfast"
    # zerolatency: no lookahead and no B-frames, so every frame reaches the file
    # as soon as it is drawn (crash safety, start latency, live streams)
    tune: str = "zerolatency"


@dataclass(frozen=True, slots=True)
class AudioEncoding:
    codec: str = "aac"  # "aac", "opus" or "mp3"
    bitrate_kbps: int = 128
    sample_rate: int = 48_000


class _Encoder(Stage):
    """Frames in, EncodedPacket out; codec calls run on the stage's worker thread."""

    kind = ""

    def __init__(self, name: str | None) -> None:
        super().__init__(name)
        self.input = self.add_input("input")
        self.output = self.add_output("output")
        self.packets_out = 0
        self.bytes_out = 0
        self.context: av.CodecContext

    def add_stream(self, container: OutputContainer) -> Stream:
        """Add the stream these packets belong to, to a muxer's container."""
        raise NotImplementedError

    async def run(self) -> None:
        while (frame := await self.input.recv()) is not EOS:
            for packet in await self.offload(self.context.encode, frame):
                await self._send(packet)
        for packet in await self.offload(self.context.encode, None):
            await self._send(packet)

    async def _send(self, packet: av.Packet) -> None:
        if not packet.duration and self.kind == "video":
            # one frame at constant frame rate: the muxer sizes the last sample from it
            packet.duration = 1
        self.packets_out += 1
        self.bytes_out += packet.size
        await self.output.send(EncodedPacket(self.kind, packet))

    def stats(self) -> dict[str, int]:
        return {"packets_out": self.packets_out, "bytes_out": self.bytes_out}


class VideoEncoder(_Encoder):
    """Encodes composited frames once; every muxer of the graph shares the packets.

    H.264 is emitted in Annex B with parameter sets before each key frame,
    which MP4, MPEG-TS and FLV muxers all accept, so no muxer needs an
    encoder of its own.
    """

    kind = "video"

    def __init__(
        self, encoding: VideoEncoding = VideoEncoding(), *, name: str | None = None
    ) -> None:
        super().__init__(name)
        if encoding.codec not in VIDEO_CODECS:
            raise ValueError(f"unsupported video codec {encoding.codec!r}")
        self.encoding = encoding
        self.time_base = Fraction(1, encoding.fps)
        self.context = self._open()

    def _open(self) -> av.VideoCodecContext:
        e = self.encoding
        ctx = av.CodecContext.create(VIDEO_CODECS[e.codec], "w")
        ctx.width = e.width
        ctx.height = e.height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = self.time_base
        ctx.framerate = Fraction(e.fps, 1)
        ctx.bit_rate = e.bitrate_kbps * 1000
        ctx.gop_size = max(1, round(e.keyframe_interval_s * e.fps))
        if e.codec == "h264":
            ctx.profile = H264_PROFILES[e.profile]
            ctx.options = {
                # libx264 reads the profile by name: the codec context's profile number
                # for Constrained Baseline is not mapped and silently gave High.
                "profile": e.profile,
                "preset": e.preset,
                "tune": e.tune,
                "x264-params": f"keyint={ctx.gop_size}:min-keyint={ctx.gop_size}:scenecut=0"
                f":vbv-maxrate={e.bitrate_kbps}:vbv-bufsize={e.bitrate_kbps * 2}",
            }
        else:
            ctx.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        ctx.open()
        return ctx

    def add_stream(self, container: OutputContainer) -> Stream:
        e = self.encoding
        return container.add_mux_stream(
            e.codec, rate=e.fps, width=e.width, height=e.height, time_base=self.time_base
        )


class AudioEncoder(_Encoder):
    """Encodes the mixed audio; PyAV resamples to the codec's format and frame size."""

    kind = "audio"

    def __init__(
        self, encoding: AudioEncoding = AudioEncoding(), *, name: str | None = None
    ) -> None:
        super().__init__(name)
        if encoding.codec not in AUDIO_CODECS:
            raise ValueError(f"unsupported audio codec {encoding.codec!r}")
        self.encoding = encoding
        # The codec context lives on a stream of a throwaway container so that
        # muxers can copy its parameters (extradata included) as a template.
        self._holder = av.open(io.BytesIO(), "w", format="matroska")
        self._template = self._holder.add_stream(
            AUDIO_CODECS[encoding.codec], rate=encoding.sample_rate
        )
        ctx = self._template.codec_context
        ctx.layout = "stereo"
        ctx.bit_rate = encoding.bitrate_kbps * 1000
        if encoding.codec == "aac":
            ctx.profile = "LC"  # also tells muxers copying this template which profile it is
        ctx.flags |= av.codec.context.Flags.global_header
        ctx.open()
        self.context = ctx

    def add_stream(self, container: OutputContainer) -> Stream:
        stream = container.add_stream_from_template(self._template)
        # The template copy leaves extradata out; without it FLV carries no AAC
        # sequence header and OGG no OpusHead, so players drop or refuse the audio.
        stream.codec_context.extradata = self.context.extradata
        return stream
