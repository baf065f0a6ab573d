"""VideoEncoder and AudioEncoder: raw frames to packets with PyAV, off the event loop."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Generic, TypeVar, cast

import av
from av.container import OutputContainer
from av.stream import Stream
from av.video.frame import PictureType

from egresskit.pipeline import EOS, InputPort, OutputPort, Stage, UpstreamEvent
from egresskit.stages.media import EncodedItem, EncodedPacket, KeyFrameRequest, StreamHeader

H264_PROFILES = {"baseline": "Constrained Baseline", "main": "Main", "high": "High"}
VIDEO_CODECS = {"h264": "libx264", "vp8": "libvpx", "vp9": "libvpx-vp9", "av1": "libsvtav1"}
# Realtime settings of the libvpx and SVT-AV1 encoders: no lookahead (every frame leaves the
# encoder as it is drawn, as with x264's zerolatency) and their fastest speed levels, so a
# 720p30 composite keeps up on one core (bench/video_codecs.py has the CPU per codec).
LIBVPX_REALTIME = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
# pred-struct=1 is SVT-AV1's low-delay prediction, which takes only CBR rate control (rc=2);
# lp=1 one thread per encoder, as for x264.
SVTAV1_REALTIME = {"preset": "12", "svtav1-params": "pred-struct=1:rc=2:lp=1"}
# SVT-AV1 prints a dozen lines of banner per encoder to stderr unless told to keep to errors.
os.environ.setdefault("SVT_LOG", "1")
# Up to this many pixels per second (1280x720 at 30 fps) one x264 thread encodes several
# times faster than real time, and spends ~5% less CPU than x264's sliced threads, which
# synchronise on every frame (bench/encoder_threads.py). Larger pictures get x264's own count.
SINGLE_THREAD_PIXEL_RATE = 1280 * 720 * 30
AUDIO_CODECS = {"aac": "aac", "opus": "libopus", "mp3": "libmp3lame"}


def gop_frames(keyframe_interval_s: float, fps: int) -> int:
    """Frames from one key frame to the next: the one home of the GOP length."""
    return max(1, round(keyframe_interval_s * fps))


@dataclass(frozen=True, slots=True)
class VideoEncoding:
    codec: str = "h264"  # "h264", "vp8", "vp9" or "av1"
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


F = TypeVar("F", av.VideoFrame, av.AudioFrame)


class _Encoder(Stage, Generic[F]):
    """Frames in; a StreamHeader, then EncodedPackets out. Codec calls run on the stage's
    worker thread."""

    kind = ""
    context: av.CodecContext  # narrowed by each encoder

    def __init__(self, name: str | None) -> None:
        super().__init__(name)
        self.input: InputPort[F] = self.add_input("input")
        self.output: OutputPort[EncodedItem] = self.add_output("output")
        self.packets_out = 0
        self.bytes_out = 0
        self._holder: OutputContainer | None = None
        self._template: Stream | None = None

    def _template_context(self, codec: str, rate: int) -> av.CodecContext:
        """A codec context living on a stream of a throwaway container.

        Muxers copy that stream as a template, so every container gets the
        codec's parameters and extradata (avcC, AudioSpecificConfig,
        OpusHead) in its header without opening an encoder of its own.
        """
        self._holder = av.open(io.BytesIO(), "w", format="matroska")
        self._template = self._holder.add_stream(codec, rate=rate)
        ctx = self._template.codec_context
        ctx.flags |= av.codec.context.Flags.global_header
        return ctx

    def header(self) -> StreamHeader:
        """What sinks need to add this encoder's stream: sent before the first packet."""
        if self._template is None:
            raise RuntimeError(f"{self.name} has been released: its graph has ended")
        return StreamHeader(
            kind=self.kind,
            codec=self.context.name,
            template=self._template,
            extradata=bytes(self.context.extradata or b""),
            time_base=self._time_base(),
            **self._picture(),
        )

    def _time_base(self) -> Fraction:
        raise NotImplementedError

    def _picture(self) -> dict[str, int]:
        """The header's width, height and frame rate (video only)."""
        return {}

    def _encode(self, frame: F | None) -> list[av.Packet]:
        """Encode on the worker thread (None: flush the codec)."""
        raise NotImplementedError

    def on_upstream(self, event: UpstreamEvent, port: OutputPort[Any]) -> None:
        """Encoders answer key-frame requests (VideoEncoder) and send nothing further up."""

    def release(self) -> None:
        """Free the codec context: an x264 720p context holds ~20 MB, an AAC one the two
        threads of its resampler. PyAV frees a context with its last reference."""
        holder, self._holder, self._template = self._holder, None, None
        if holder is not None:
            holder.close()
        del self.context  # using it after this is a bug: let it fail loudly

    def _prepare(self, frame: F) -> None:
        """Adjust a frame before it is encoded (key frame decisions)."""

    async def run(self) -> None:
        await self.output.send(self.header())
        while (frame := await self.input.recv()) is not EOS:
            self._prepare(frame)
            for packet in await self.offload(self._encode, frame):
                await self._send(packet)
        for packet in await self.offload(self._encode, None):
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


class VideoEncoder(_Encoder[av.VideoFrame]):
    """Encodes composited frames once; every muxer of the graph shares the packets.

    H.264 parameter sets go both into the extradata (for MP4 and FLV
    headers) and before each key frame (for MPEG-TS and late joiners), so
    no muxer needs an encoder of its own.
    """

    kind = "video"
    context: av.VideoCodecContext

    def __init__(
        self, encoding: VideoEncoding = VideoEncoding(), *, name: str | None = None
    ) -> None:
        super().__init__(name)
        if encoding.codec not in VIDEO_CODECS:
            raise ValueError(f"unsupported video codec {encoding.codec!r}")
        self.encoding = encoding
        self.time_base = Fraction(1, encoding.fps)
        self.gop = gop_frames(encoding.keyframe_interval_s, encoding.fps)
        self._keyframe_wanted = False
        self._resumes_seen = 0
        self.context = self._open()

    def _open(self) -> av.VideoCodecContext:
        e = self.encoding
        ctx = cast(av.VideoCodecContext, self._template_context(VIDEO_CODECS[e.codec], e.fps))
        ctx.width = e.width
        ctx.height = e.height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = self.time_base
        ctx.framerate = Fraction(e.fps, 1)
        ctx.bit_rate = e.bitrate_kbps * 1000
        ctx.gop_size = self.gop
        if e.codec == "h264":
            if e.width * e.height * e.fps <= SINGLE_THREAD_PIXEL_RATE:
                ctx.thread_count = 1
            ctx.profile = H264_PROFILES[e.profile]
            ctx.options = {
                # libx264 reads the profile by name: the codec context's profile number
                # for Constrained Baseline is not mapped and silently gave High.
                "profile": e.profile,
                "preset": e.preset,
                "tune": e.tune,
                # Key frames are placed by `_prepare`, on a fixed cadence of media time
                # plus on request, so an extra one never shifts HLS segment boundaries.
                "x264-params": "keyint=infinite:scenecut=0:repeat-headers=1"
                f":vbv-maxrate={e.bitrate_kbps}:vbv-bufsize={e.bitrate_kbps * 2}",
            }
        elif e.codec == "av1":
            ctx.options = dict(SVTAV1_REALTIME)
        else:
            ctx.options = dict(LIBVPX_REALTIME)
            if e.codec == "vp9":
                ctx.options |= {"row-mt": "1"}
        ctx.open()
        return ctx

    def _time_base(self) -> Fraction:
        return self.time_base

    def _picture(self) -> dict[str, int]:
        e = self.encoding
        return {"width": e.width, "height": e.height, "frame_rate": e.fps}

    def _encode(self, frame: av.VideoFrame | None) -> list[av.Packet]:
        return self.context.encode(frame)

    def on_upstream(self, event: UpstreamEvent, port: OutputPort[Any]) -> None:
        if isinstance(event, KeyFrameRequest):
            self._keyframe_wanted = True  # the next frame drawn is a key frame

    def _prepare(self, frame: av.VideoFrame) -> None:
        if self._keyframe_wanted or (frame.pts or 0) % self.gop == 0 or self._resumed(frame):
            self._keyframe_wanted = False
            frame.pict_type = PictureType.I
        else:
            frame.pict_type = PictureType.NONE

    def _resumed(self, frame: av.VideoFrame) -> bool:
        """The first frame at or after a resume of the graph clock (Graph.resume) is a key
        frame: players start there cleanly, and HLS puts its discontinuity there."""
        resumes = self.clock.resumes if self.graph is not None else []
        if self._resumes_seen >= len(resumes):
            return False
        if float((frame.pts or 0) * self.time_base) < resumes[self._resumes_seen]:
            return False
        self._resumes_seen = len(resumes)
        return True


class AudioEncoder(_Encoder[av.AudioFrame]):
    """Encodes the mixed audio; PyAV resamples to the codec's format and frame size."""

    kind = "audio"
    context: av.AudioCodecContext

    def __init__(
        self, encoding: AudioEncoding = AudioEncoding(), *, name: str | None = None
    ) -> None:
        super().__init__(name)
        if encoding.codec not in AUDIO_CODECS:
            raise ValueError(f"unsupported audio codec {encoding.codec!r}")
        self.encoding = encoding
        ctx = cast(
            av.AudioCodecContext,
            self._template_context(AUDIO_CODECS[encoding.codec], encoding.sample_rate),
        )
        ctx.layout = "stereo"
        ctx.bit_rate = encoding.bitrate_kbps * 1000
        if encoding.codec == "aac":
            ctx.profile = "LC"  # also tells muxers copying this template which profile it is
        ctx.open()
        self.context = ctx

    def _time_base(self) -> Fraction:
        return Fraction(1, self.encoding.sample_rate)

    def _encode(self, frame: av.AudioFrame | None) -> list[av.Packet]:
        return self.context.encode(frame)
