"""Checking Start*Egress requests and reducing them to one `EgressSpec`.

The wire has five request types, deprecated single-output fields beside the
output lists, and the newer StartEgress with its own shape. Planning should
see none of that: `validate` accepts any of them and returns one description
of the sources, encoding and outputs, or raises `InvalidRequest` naming the
field at fault. Storage messages are passed through untouched.

Container and codec rules follow what the muxers can write: MP4 takes H.264
(or egresskit's VP9 and AV1) with AAC, Opus or MP3; OGG only Opus audio; MP3
only MP3 audio; HLS (MPEG-TS) and RTMP (FLV) take H.264 with AAC or MP3, HLS
with fMP4 segments also VP9, AV1 and Opus; SRT (MPEG-TS) also Opus. VP8
therefore fits none of the encoded outputs except snapshots and websockets.
One encode feeds every output, so the codecs must fit all of them at once.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast
from urllib.parse import parse_qsl, urlsplit

from google.protobuf.message import Message
from livekit.protocol import egress as egress_pb
from livekit.protocol import models as models_pb

from egresskit.egress.encoding import (
    AudioCodecName,
    EncodingSettings,
    InvalidRequest,
    VideoCodecName,
    audio_codec_of,
)
from egresskit.egress.naming import ImageSuffix, SegmentSuffix
from egresskit.egress.spec import (
    EgressSpec,
    FileTarget,
    FileType,
    ImagesTarget,
    MediaSource,
    ParticipantSource,
    RoomCompositeSource,
    SegmentsTarget,
    StreamProtocol,
    StreamTarget,
    TrackCompositeSource,
    TrackSource,
    Upload,
    WebSource,
)
from egresskit.netpolicy import DestinationDenied, NetworkPolicy
from egresskit.protos import egress_pb2 as extension_pb
from egresskit.stages import srt
from egresskit.stages.mixer import Mixing
from egresskit.storage.registry import MissingCredentials, check_request_upload

DEFAULT_SEGMENT_DURATION_S = 4
MAX_IDENTITIES = 1000
MAX_IDENTITY_LENGTH = 256
DEFAULT_CAPTURE_INTERVAL_S = 10
MAX_IMAGE_DIMENSION = 4096

_SRT_CALLER_MODES = frozenset({"", "caller", "client"})
_STORAGE_FIELDS = {
    "S3Upload": "s3",
    "GCPUpload": "gcp",
    "AzureBlobUpload": "azure",
    "AliOSSUpload": "aliOSS",
}
_AZURE_ACCOUNT = re.compile(r"^[a-z0-9]{3,24}$")
_LAYOUT = re.compile(r"^(grid|speaker|single-speaker)(-(light|dark))?$")
_SCHEMES: dict[str, StreamProtocol] = {
    "rtmp": "rtmp",
    "rtmps": "rtmp",
    "srt": "srt",
    "ws": "websocket",
    "wss": "websocket",
}
_PROTOCOLS: dict[int, StreamProtocol] = {
    egress_pb.RTMP: "rtmp",
    egress_pb.SRT: "srt",
    egress_pb.WEBSOCKET: "websocket",
}
# LiveKit's enum values, as the Python API names them.
_MIXINGS: dict[int, Mixing] = {
    egress_pb.DEFAULT_MIXING: Mixing.DEFAULT,
    egress_pb.DUAL_CHANNEL_AGENT: Mixing.DUAL_CHANNEL_AGENT,
    egress_pb.DUAL_CHANNEL_ALTERNATE: Mixing.DUAL_CHANNEL_ALTERNATE,
}
_SEGMENT_SUFFIXES: dict[int, SegmentSuffix] = {
    egress_pb.INDEX: SegmentSuffix.INDEX,
    egress_pb.TIMESTAMP: SegmentSuffix.TIMESTAMP,
}
_IMAGE_SUFFIXES: dict[int, ImageSuffix] = {
    egress_pb.IMAGE_SUFFIX_INDEX: ImageSuffix.INDEX,
    egress_pb.IMAGE_SUFFIX_TIMESTAMP: ImageSuffix.TIMESTAMP,
    egress_pb.IMAGE_SUFFIX_NONE_OVERWRITE: ImageSuffix.NONE_OVERWRITE,
}
_FILE_TYPES: dict[int, FileType] = {
    egress_pb.MP4: "mp4",
    egress_pb.OGG: "ogg",
    egress_pb.MP3: "mp3",
}

# Which codecs each encoded output can carry (see the module docstring).
_AUDIO_FITS: dict[str, frozenset[str]] = {
    "mp4": frozenset({"aac", "opus", "mp3"}),
    "ogg": frozenset({"opus"}),
    "mp3": frozenset({"mp3"}),
    "segments": frozenset({"aac", "mp3"}),
    "fmp4": frozenset({"aac", "opus", "mp3"}),
    "rtmp": frozenset({"aac", "mp3"}),
    "srt": frozenset({"aac", "mp3", "opus"}),
}
_VIDEO_FITS: dict[str, frozenset[str]] = {
    "mp4": frozenset({"h264", "vp9", "av1"}),
    "ogg": frozenset(),
    "mp3": frozenset(),
    "segments": frozenset({"h264"}),
    "fmp4": frozenset({"h264", "vp9", "av1"}),
    "rtmp": frozenset({"h264"}),
    "srt": frozenset({"h264"}),
}
_LABELS = {
    "mp4": "MP4",
    "ogg": "OGG",
    "mp3": "MP3",
    "segments": "HLS",
    "fmp4": "HLS (fMP4)",
    "rtmp": "RTMP",
    "srt": "SRT",
}


@dataclass(frozen=True)
class Caller:
    """Who sent a request through the API, for the rules that depend on it."""

    api_key: str  # of the caller's token: the only key its webhooks may be signed with
    network: NetworkPolicy


# The request messages that carry outputs and encoding options, and their file outputs.
EncodedRequest = (
    egress_pb.RoomCompositeEgressRequest
    | egress_pb.TrackCompositeEgressRequest
    | egress_pb.ParticipantEgressRequest
    | egress_pb.WebEgressRequest
    | egress_pb.StartEgressRequest
)
FileMessage = egress_pb.EncodedFileOutput | egress_pb.FileOutput


@dataclass
class _Outputs:
    """Outputs gathered from a request before their codecs are checked."""

    files: list[tuple[str, FileMessage, Upload | None]] = dataclasses.field(default_factory=list)
    streams: list[tuple[str, egress_pb.StreamOutput]] = dataclasses.field(default_factory=list)
    segments: list[tuple[str, egress_pb.SegmentedFileOutput, Upload | None]] = dataclasses.field(
        default_factory=list
    )
    images: list[tuple[str, egress_pb.ImageOutput, Upload | None]] = dataclasses.field(
        default_factory=list
    )


def validate(request: Message) -> EgressSpec:
    """Check a start request of any kind and describe it; raise `InvalidRequest` if it is invalid."""
    if isinstance(request, egress_pb.RoomCompositeEgressRequest):
        return _room_composite(request)
    if isinstance(request, egress_pb.TrackCompositeEgressRequest):
        return _track_composite(request)
    if isinstance(request, egress_pb.ParticipantEgressRequest):
        return _participant(request)
    if isinstance(request, egress_pb.TrackEgressRequest):
        return _track(request)
    if isinstance(request, egress_pb.WebEgressRequest):
        return _web(request)
    if isinstance(request, egress_pb.StartEgressRequest):
        return _start_egress(request)
    if isinstance(request, extension_pb.RoomCompositeEgressRequest):
        return _extension_room_composite(request)
    raise TypeError(f"not an egress start request: {type(request).__name__}")


def stream_protocol(url: str, field: str = "url") -> StreamProtocol:
    """The protocol of a stream URL (`rtmp(s)://`, `srt://`, `ws(s)://`), for UpdateStream too."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise InvalidRequest(field, "not a valid URL") from None
    protocol = _SCHEMES.get(parts.scheme.lower())
    if protocol is None:
        raise InvalidRequest(
            field, "stream URLs must start with rtmp://, rtmps://, srt:// or ws(s)://"
        )
    if not host:
        raise InvalidRequest(field, "stream URL has no host")
    if protocol == "srt":
        _check_srt_options(parts.query, field)
    return protocol


def _check_srt_options(query: str, field: str) -> None:
    """Egress calls SRT listeners; options that would bind or listen here are refused."""
    options = dict(parse_qsl(query, keep_blank_values=True))
    if options.get("mode", "").lower() not in _SRT_CALLER_MODES:
        raise InvalidRequest(field, "SRT URLs must use caller mode: egress connects out")
    local = sorted(srt.LOCAL_OPTIONS - {"mode"} & options.keys())
    if local:
        raise InvalidRequest(field, f"SRT option(s) {', '.join(local)} are not allowed")
    if "passphrase" in options and not 10 <= len(options["passphrase"]) <= 79:
        raise InvalidRequest(field, "an SRT passphrase has 10 to 79 characters")


def check_caller(spec: EgressSpec, caller: Caller) -> EgressSpec:
    """Apply the rules for a caller's request: its destinations, storage and webhook keys.

    Literal addresses the network policy refuses are `InvalidRequest` here; names
    are checked again when connecting. Storage named in the request must bring its
    own credentials. Webhooks are signed with the caller's own key only.
    """
    for index, webhook in enumerate(spec.webhooks):
        field = f"webhooks[{index}]"
        check_destination(webhook.url, f"{field}.url", caller.network)
        if webhook.signing_key and webhook.signing_key != caller.api_key:
            raise InvalidRequest(
                f"{field}.signing_key", "must be empty or the API key of the request's token"
            )
    if spec.stream is not None:
        for url in spec.stream.urls:
            check_destination(url, "stream.urls", caller.network)
    source = spec.source
    if isinstance(source, TrackSource) and source.websocket_url:
        check_destination(source.websocket_url, "websocket_url", caller.network)
    if isinstance(source, RoomCompositeSource) and source.custom_base_url:
        check_destination(source.custom_base_url, "custom_base_url", caller.network)
    if isinstance(source, WebSource):
        # the page's first address only: what the page itself loads is Chromium's business
        check_destination(source.url, "url", caller.network)
    stored: list[tuple[str, Upload | None]] = [("storage", spec.request_storage)]
    stored += [(t.field, t.storage) for t in (spec.file, spec.segments) if t is not None]
    stored += [(t.field, t.storage) for t in spec.images]
    for field, storage in stored:
        if storage is not None:
            _check_caller_storage(storage, field, caller.network)
    return dataclasses.replace(spec, network=caller.network, caller_key=caller.api_key)


def check_destination(url: str, field: str, network: NetworkPolicy) -> None:
    """InvalidRequest if `url`'s host is an address `network` refuses."""
    try:
        network.check_url(url)
    except DestinationDenied as exc:
        raise InvalidRequest(field, str(exc)) from None
    except ValueError:
        raise InvalidRequest(field, "not a valid URL") from None


def _check_caller_storage(storage: Upload, field: str, network: NetworkPolicy) -> None:
    field = f"{field}.{_STORAGE_FIELDS[storage.DESCRIPTOR.name]}"
    try:
        check_request_upload(storage)
    except MissingCredentials as exc:
        raise InvalidRequest(field, str(exc)) from None
    if isinstance(storage, egress_pb.S3Upload | egress_pb.AliOSSUpload) and storage.endpoint:
        check_destination(storage.endpoint, f"{field}.endpoint", network)
    if isinstance(storage, egress_pb.S3Upload | egress_pb.GCPUpload) and storage.proxy.url:
        check_destination(storage.proxy.url, f"{field}.proxy.url", network)


def _room_composite(req: egress_pb.RoomCompositeEgressRequest) -> EgressSpec:
    _require(req.room_name, "room_name")
    if req.custom_base_url:  # the page draws the layout: any name it knows
        _check_web_url(req.custom_base_url, "custom_base_url")
    else:
        check_layout(req.layout, "layout")
    _check_audio_video_flags(req.audio_only, req.video_only)
    if req.audio_mixing not in _MIXINGS:
        raise InvalidRequest("audio_mixing", f"unknown audio mixing {req.audio_mixing}")
    source = RoomCompositeSource(
        req.room_name,
        layout=req.layout,
        audio_mixing=_MIXINGS[req.audio_mixing],
        custom_base_url=req.custom_base_url,
    )
    return _legacy(
        EgressSpec(
            source,
            audio=not req.video_only,
            video=not req.audio_only,
            webhooks=_webhooks(req.webhooks),
        ),
        req,
    )


def _extension_room_composite(req: extension_pb.RoomCompositeEgressRequest) -> EgressSpec:
    """egresskit.Egress/StartRoomCompositeEgress: LiveKit's request plus egresskit's options."""
    if not req.HasField("request"):
        raise InvalidRequest("request", "is required: LiveKit's RoomCompositeEgressRequest")
    spec = _room_composite(req.request)  # video_codec and faststart: checked by with_extensions
    include, exclude = check_identities(req.include_identities, req.exclude_identities)
    assert isinstance(spec.source, RoomCompositeSource)
    source = dataclasses.replace(
        spec.source, include_identities=include, exclude_identities=exclude
    )
    return dataclasses.replace(
        spec, source=source, faststart=req.faststart, video_codec=req.video_codec
    )


def check_identities(
    include: Sequence[str], exclude: Sequence[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Include and exclude lists of participant identities, checked (UpdateParticipants too)."""
    checked = []
    for field, identities in (("include_identities", include), ("exclude_identities", exclude)):
        if len(identities) > MAX_IDENTITIES:
            raise InvalidRequest(field, f"at most {MAX_IDENTITIES} identities")
        for index, identity in enumerate(identities):
            if not identity or len(identity) > MAX_IDENTITY_LENGTH:
                raise InvalidRequest(
                    f"{field}[{index}]", f"an identity has 1 to {MAX_IDENTITY_LENGTH} characters"
                )
        checked.append(tuple(dict.fromkeys(identities)))
    return checked[0], checked[1]


def _track_composite(req: egress_pb.TrackCompositeEgressRequest) -> EgressSpec:
    _require(req.room_name, "room_name")
    if not req.audio_track_id and not req.video_track_id:
        raise InvalidRequest("audio_track_id", "set audio_track_id, video_track_id or both")
    return _legacy(
        EgressSpec(
            TrackCompositeSource(req.room_name, req.audio_track_id, req.video_track_id),
            audio=bool(req.audio_track_id),
            video=bool(req.video_track_id),
            webhooks=_webhooks(req.webhooks),
        ),
        req,
    )


def _participant(req: egress_pb.ParticipantEgressRequest) -> EgressSpec:
    _require(req.room_name, "room_name")
    _require(req.identity, "identity")
    return _legacy(
        EgressSpec(
            ParticipantSource(req.room_name, req.identity, screen_share=req.screen_share),
            webhooks=_webhooks(req.webhooks),
        ),
        req,
    )


def _web(req: egress_pb.WebEgressRequest) -> EgressSpec:
    _check_web_url(req.url, "url")
    _check_audio_video_flags(req.audio_only, req.video_only)
    return _legacy(
        EgressSpec(
            WebSource(req.url, await_start_signal=req.await_start_signal),
            audio=not req.video_only,
            video=not req.audio_only,
            webhooks=_webhooks(req.webhooks),
        ),
        req,
    )


def _track(req: egress_pb.TrackEgressRequest) -> EgressSpec:
    _require(req.room_name, "room_name")
    _require(req.track_id, "track_id")
    source = TrackSource(req.room_name, req.track_id)
    spec = EgressSpec(source, encoding=None, webhooks=_webhooks(req.webhooks))
    output = req.WhichOneof("output")
    if output == "websocket_url":
        if stream_protocol(req.websocket_url, "websocket_url") != "websocket":
            raise InvalidRequest("websocket_url", "must start with ws:// or wss://")
        source = dataclasses.replace(source, websocket_url=req.websocket_url)
        return dataclasses.replace(spec, source=source)
    if output == "file":
        storage = _storage_of(req.file, "file")
        return dataclasses.replace(
            spec, file=FileTarget(req.file.filepath, "", req.file.disable_manifest, storage, "file")
        )
    raise InvalidRequest("output", "set file or websocket_url")


def _start_egress(req: egress_pb.StartEgressRequest) -> EgressSpec:
    source = req.WhichOneof("source")
    webhooks = _webhooks(req.webhooks)
    if source == "template":
        template = req.template
        _require(req.room_name, "room_name")
        if template.custom_base_url:
            _check_web_url(template.custom_base_url, "template.custom_base_url")
        else:
            check_layout(template.layout, "template.layout")
        _check_audio_video_flags(template.audio_only, template.video_only, "template.")
        source = RoomCompositeSource(
            req.room_name, layout=template.layout, custom_base_url=template.custom_base_url
        )
        spec = EgressSpec(
            source,
            audio=not template.video_only,
            video=not template.audio_only,
            webhooks=webhooks,
        )
    elif source == "web":
        web = req.web
        _check_web_url(web.url, "web.url")
        _check_audio_video_flags(web.audio_only, web.video_only, "web.")
        spec = EgressSpec(
            WebSource(web.url, web.await_start_signal, req.room_name),
            audio=not web.video_only,
            video=not web.audio_only,
            webhooks=webhooks,
        )
    elif source == "media":
        _require(req.room_name, "room_name")
        spec = _media_spec(req, webhooks)
    else:
        raise InvalidRequest("source", "set template, web or media")
    outputs = _Outputs()
    if req.HasField("storage"):
        spec = dataclasses.replace(spec, request_storage=_provider(req.storage, "storage"))
    for index, output in enumerate(req.outputs):
        field = f"outputs[{index}]"
        storage = _provider(output.storage, f"{field}.storage")
        config = output.WhichOneof("config")
        if config == "file":
            outputs.files.append((f"{field}.file", output.file, storage))
        elif config == "stream":
            outputs.streams.append((f"{field}.stream", output.stream))
        elif config == "segments":
            outputs.segments.append((f"{field}.segments", output.segments, storage))
        elif config == "images":
            outputs.images.append((f"{field}.images", output.images, storage))
        else:
            raise InvalidRequest(field, "set file, stream, segments or images")
    if req.WhichOneof("encoding") == "preset" and req.preset == egress_pb.PASSTHROUGH:
        return _passthrough(spec, outputs)
    return _encoded(spec, outputs, req, "encoding")


def _passthrough(spec: EgressSpec, outputs: _Outputs) -> EgressSpec:
    """A media source recorded without transcoding: one track to one file, like track egress."""
    source = spec.source
    if not isinstance(source, MediaSource):
        raise InvalidRequest("preset", "PASSTHROUGH records one track of a media source, by id")
    routes = source.audio_config.routes if source.audio_config is not None else ()
    tracks = [t for t in (source.video_track_id, *(r.track_id for r in routes)) if t]
    if len(tracks) != 1 or source.participant_identity:
        raise InvalidRequest("preset", "PASSTHROUGH records one track of a media source, by id")
    if outputs.streams or outputs.segments or outputs.images or len(outputs.files) != 1:
        raise InvalidRequest("outputs", "PASSTHROUGH writes exactly one file output")
    field, message, storage = outputs.files[0]
    return dataclasses.replace(
        spec,
        source=TrackSource(source.room_name, tracks[0]),
        file=FileTarget(message.filepath, "", message.disable_manifest, storage, field),
    )


def _media_spec(
    req: egress_pb.StartEgressRequest, webhooks: tuple[models_pb.WebhookConfig, ...]
) -> EgressSpec:
    media = req.media
    video = media.WhichOneof("video")
    if video == "participant_video":
        _require(media.participant_video.identity, "media.participant_video.identity")
    audio = media.HasField("audio") and (media.audio.capture_all or len(media.audio.routes) > 0)
    for index, route in enumerate(media.audio.routes):
        if route.WhichOneof("match") is None:
            raise InvalidRequest(
                f"media.audio.routes[{index}]",
                "set track_id, participant_identity or participant_kind",
            )
    if video is None and not audio:
        raise InvalidRequest("media", "select a video track, audio tracks or both")
    source = MediaSource(
        req.room_name,
        video_track_id=media.video_track_id,
        participant_identity=media.participant_video.identity,
        screen_share=media.participant_video.prefer_screen_share,
        audio_config=media.audio if audio else None,
    )
    return EgressSpec(source, audio=audio, video=video is not None, webhooks=webhooks)


def _legacy(
    spec: EgressSpec,
    req: egress_pb.RoomCompositeEgressRequest
    | egress_pb.TrackCompositeEgressRequest
    | egress_pb.ParticipantEgressRequest
    | egress_pb.WebEgressRequest,
) -> EgressSpec:
    """An older request's spec with its outputs and `options` encoding checked."""
    return _encoded(spec, _legacy_outputs(req), req, "options")


def _legacy_outputs(
    req: egress_pb.RoomCompositeEgressRequest
    | egress_pb.TrackCompositeEgressRequest
    | egress_pb.ParticipantEgressRequest
    | egress_pb.WebEgressRequest,
) -> _Outputs:
    """Outputs of the older requests: the deprecated single `file`/`stream`/`segments` plus lists."""
    outputs = _Outputs()
    if not isinstance(req, egress_pb.ParticipantEgressRequest):  # it has the lists only
        single = req.WhichOneof("output")
        if single == "file":
            outputs.files.append(("file", req.file, _storage_of(req.file, "file")))
        elif single == "stream":
            outputs.streams.append(("stream", req.stream))
        elif single == "segments":
            storage = _storage_of(req.segments, "segments")
            outputs.segments.append(("segments", req.segments, storage))
    for index, file in enumerate(req.file_outputs):
        field = f"file_outputs[{index}]"
        outputs.files.append((field, file, _storage_of(file, field)))
    for index, stream in enumerate(req.stream_outputs):
        outputs.streams.append((f"stream_outputs[{index}]", stream))
    for index, segments in enumerate(req.segment_outputs):
        field = f"segment_outputs[{index}]"
        outputs.segments.append((field, segments, _storage_of(segments, field)))
    for index, image in enumerate(req.image_outputs):
        field = f"image_outputs[{index}]"
        outputs.images.append((field, image, _storage_of(image, field)))
    return outputs


def _encoded(
    spec: EgressSpec, outputs: _Outputs, req: EncodedRequest, encoding_oneof: str
) -> EgressSpec:
    """Check the outputs of an encoding egress against each other and resolve the encoding."""
    for kind, items in (
        ("file", outputs.files),
        ("stream", outputs.streams),
        ("segments", outputs.segments),
    ):
        if len(items) > 1:
            raise InvalidRequest(items[1][0], f"at most one {kind} output is supported")
    if not (outputs.files or outputs.streams or outputs.segments or outputs.images):
        raise InvalidRequest("output", "at least one output is required")

    choice = req.WhichOneof(encoding_oneof)
    preset = req.preset if choice == "preset" else None
    advanced = req.advanced if choice == "advanced" else None
    explicit_codec = audio_codec_of(advanced)

    file = None
    if outputs.files:
        field, message, storage = outputs.files[0]
        file_type = _file_type(message, field, spec.video, explicit_codec, outputs)
        file = FileTarget(message.filepath, file_type, message.disable_manifest, storage, field)
    stream = None
    if outputs.streams:
        stream = _stream_target(*outputs.streams[0])
    segments = None
    if outputs.segments:
        segments = _segments_target(*outputs.segments[0])
    images = tuple(_images_target(*item) for item in outputs.images)
    if images and not spec.video:
        raise InvalidRequest(outputs.images[0][0], "image outputs need video")

    default_codec: AudioCodecName = "aac"
    if file is not None and file.file_type == "ogg":
        default_codec = "opus"
    elif file is not None and file.file_type == "mp3":
        default_codec = "mp3"
    encoding = EncodingSettings.from_request(preset, advanced, default_audio_codec=default_codec)
    if segments is not None and not (advanced and advanced.key_frame_interval):
        encoding = dataclasses.replace(
            encoding, key_frame_interval_s=float(segments.segment_duration_s)
        )

    containers: list[tuple[str, str]] = []
    if file is not None:
        containers.append((outputs.files[0][0], file.file_type))
    if segments is not None:
        containers.append((outputs.segments[0][0], _segments_container(segments)))
    if stream is not None and stream.protocol != "websocket":
        containers.append((outputs.streams[0][0], stream.protocol))
    for field, container in containers:
        _check_fit(field, container, spec, encoding)
    return dataclasses.replace(
        spec, encoding=encoding, file=file, stream=stream, segments=segments, images=images
    )


EXTENSION_VIDEO_CODECS = frozenset({"h264", "vp9", "av1"})


def with_extensions(spec: EgressSpec) -> EgressSpec:
    """Apply egresskit's own options (`video_codec`, `faststart`) to a checked spec.

    The codec replaces the encoding's and must fit every output as LiveKit's
    codecs do; faststart needs an MP4 file output. InvalidRequest otherwise.
    """
    if spec.faststart and (spec.file is None or spec.file.file_type != "mp4"):
        raise InvalidRequest("faststart", "faststart needs an MP4 file output")
    if not spec.video_codec:
        return spec
    if spec.video_codec not in EXTENSION_VIDEO_CODECS:
        raise InvalidRequest("video_codec", "must be h264, vp9 or av1")
    if spec.encoding is None or not spec.video:
        raise InvalidRequest("video_codec", "only encoded video outputs have a video codec")
    encoding = dataclasses.replace(
        spec.encoding, video_codec=cast(VideoCodecName, spec.video_codec)
    )
    containers: list[tuple[str, str]] = []
    if spec.file is not None:
        containers.append(("file", spec.file.file_type))
    if spec.segments is not None:
        containers.append(("segments", _segments_container(spec.segments)))
    if spec.stream is not None and spec.stream.protocol != "websocket":
        containers.append(("stream", spec.stream.protocol))
    for field, container in containers:
        _check_fit(field, container, spec, encoding)
    return dataclasses.replace(spec, encoding=encoding)


def _segments_container(target: SegmentsTarget) -> str:
    return "fmp4" if target.fragmented_mp4 else "segments"


def _file_type(
    message: FileMessage,
    field: str,
    video: bool,
    explicit_codec: AudioCodecName | None,
    outputs: _Outputs,
) -> FileType:
    if message.file_type != egress_pb.DEFAULT_FILETYPE:
        if message.file_type not in _FILE_TYPES:
            raise InvalidRequest(f"{field}.file_type", f"unknown file type {message.file_type}")
        return _FILE_TYPES[message.file_type]
    if video:
        return "mp4"
    if explicit_codec == "aac":
        return "mp4"
    if explicit_codec == "mp3":
        return "mp3"
    if explicit_codec == "opus":
        return "ogg"
    # Audio only, codec left to us: OGG/Opus, unless another output needs AAC anyway.
    return "mp4" if outputs.segments or outputs.streams else "ogg"


def _check_fit(field: str, container: str, spec: EgressSpec, encoding: EncodingSettings) -> None:
    label = _LABELS[container]
    if spec.video and encoding.video_codec not in _VIDEO_FITS[container]:
        if not _VIDEO_FITS[container]:
            raise InvalidRequest(field, f"{label} output cannot contain video; set audio_only")
        raise InvalidRequest(
            field, f"{label} output cannot carry {encoding.video_codec.upper()} video"
        )
    if spec.audio and encoding.audio_codec not in _AUDIO_FITS[container]:
        raise InvalidRequest(
            field, f"{label} output cannot carry {encoding.audio_codec.upper()} audio"
        )
    if not spec.audio and container in ("ogg", "mp3"):
        raise InvalidRequest(field, f"{label} output needs audio")


def _stream_target(field: str, message: egress_pb.StreamOutput) -> StreamTarget:
    urls = list(message.urls) + [d.url for d in message.destinations]
    if not urls:
        raise InvalidRequest(f"{field}.urls", "at least one URL is required")
    if len(set(urls)) != len(urls):
        raise InvalidRequest(f"{field}.urls", "URLs must be distinct")
    protocols = {stream_protocol(url, f"{field}.urls") for url in urls}
    if len(protocols) > 1:
        raise InvalidRequest(f"{field}.urls", "all URLs of one stream output must use one protocol")
    protocol = protocols.pop()
    if message.protocol != egress_pb.DEFAULT_PROTOCOL:
        declared = _PROTOCOLS.get(message.protocol)
        if declared != protocol:
            raise InvalidRequest(f"{field}.protocol", "does not match the URL scheme")
    return StreamTarget(protocol, tuple(urls))


def _segments_target(
    field: str, message: egress_pb.SegmentedFileOutput, storage: Upload | None
) -> SegmentsTarget:
    if message.filename_suffix not in _SEGMENT_SUFFIXES:
        raise InvalidRequest(f"{field}.filename_suffix", "unknown suffix")
    if message.protocol not in egress_pb.SegmentedFileProtocol.values():
        raise InvalidRequest(f"{field}.protocol", "unknown protocol")
    for name in ("playlist_name", "live_playlist_name"):
        if "/" in getattr(message, name):
            raise InvalidRequest(
                f"{field}.{name}", "must be a file name: playlists are written beside the segments"
            )
    return SegmentsTarget(
        filename_prefix=message.filename_prefix,
        playlist_name=message.playlist_name,
        live_playlist_name=message.live_playlist_name,
        segment_duration_s=message.segment_duration or DEFAULT_SEGMENT_DURATION_S,
        suffix=_SEGMENT_SUFFIXES[message.filename_suffix],
        fragmented_mp4=message.protocol == egress_pb.HLS_FMP4_PROTOCOL,
        disable_manifest=message.disable_manifest,
        storage=storage,
        field=field,
    )


def _images_target(
    field: str, message: egress_pb.ImageOutput, storage: Upload | None
) -> ImagesTarget:
    for name in ("width", "height"):
        value = getattr(message, name)
        if value and not 16 <= value <= MAX_IMAGE_DIMENSION:
            raise InvalidRequest(
                f"{field}.{name}", f"{value} must be 0 (source size) or between 16 and 4096"
            )
    if message.filename_suffix not in _IMAGE_SUFFIXES:
        raise InvalidRequest(f"{field}.filename_suffix", "unknown suffix")
    if message.image_codec not in (models_pb.IC_DEFAULT, models_pb.IC_JPEG):
        raise InvalidRequest(f"{field}.image_codec", "only JPEG images are supported")
    return ImagesTarget(
        capture_interval_s=message.capture_interval or DEFAULT_CAPTURE_INTERVAL_S,
        width=message.width,
        height=message.height,
        filename_prefix=message.filename_prefix,
        suffix=_IMAGE_SUFFIXES[message.filename_suffix],
        disable_manifest=message.disable_manifest,
        storage=storage,
        field=field,
    )


def _storage_of(message: Message, field: str) -> Upload | None:
    """The upload target of an output message with an `output` oneof (s3/gcp/azure/aliOSS)."""
    which = message.WhichOneof("output")
    if which is None:
        return None
    storage = getattr(message, which)
    _check_storage(storage, f"{field}.{which}")
    return storage


def _provider(config: egress_pb.StorageConfig, field: str) -> Upload | None:
    which = config.WhichOneof("provider")
    if which is None:
        return None
    storage = getattr(config, which)
    _check_storage(storage, f"{field}.{which}")
    return storage


def _check_storage(storage: Upload, field: str) -> None:
    if isinstance(storage, egress_pb.AzureBlobUpload):
        _require(storage.account_name, f"{field}.account_name")
        _require(storage.container_name, f"{field}.container_name")
        # The account name becomes the host name <account>.blob.core.windows.net.
        if not _AZURE_ACCOUNT.match(storage.account_name):
            raise InvalidRequest(
                f"{field}.account_name", "must be 3 to 24 lowercase letters and digits"
            )
    else:
        _require(storage.bucket, f"{field}.bucket")


def _webhooks(
    webhooks: Sequence[models_pb.WebhookConfig],
) -> tuple[models_pb.WebhookConfig, ...]:
    for index, webhook in enumerate(webhooks):
        _check_web_url(webhook.url, f"webhooks[{index}].url")
    return tuple(webhooks)


def _check_web_url(url: str, field: str) -> None:
    _require(url, field)
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise InvalidRequest(field, "not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise InvalidRequest(field, "must be an http:// or https:// URL")


def check_layout(layout: str, field: str = "layout") -> None:
    """Raise InvalidRequest unless `layout` is a layout name (empty means grid)."""
    if layout and not _LAYOUT.match(layout):
        raise InvalidRequest(
            field, "layout must be grid, speaker or single-speaker, optionally with -light or -dark"
        )


def _check_audio_video_flags(audio_only: bool, video_only: bool, prefix: str = "") -> None:
    if audio_only and video_only:
        raise InvalidRequest(f"{prefix}video_only", "audio_only and video_only cannot both be set")


def _require(value: str, field: str) -> None:
    if not value:
        raise InvalidRequest(field, "required")
