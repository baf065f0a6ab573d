"""Start*Egress request validation and the normalised EgressSpec it produces."""

from __future__ import annotations

import pytest
from google.protobuf import json_format
from livekit.protocol import egress as egress_pb

from egresskit.egress.encoding import InvalidRequest
from egresskit.egress.validation import stream_protocol, validate

S3 = egress_pb.S3Upload(bucket="rec", access_key="AK", secret="SK")


def _room(**fields) -> egress_pb.RoomCompositeEgressRequest:
    return json_format.ParseDict(
        {"room_name": "studio", **fields}, egress_pb.RoomCompositeEgressRequest()
    )


def _invalid(request) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        validate(request)
    assert str(caught.value).startswith("request has missing or invalid field: ")
    return caught.value


def test_room_composite_file_defaults_to_mp4_with_aac():
    spec = validate(
        _room(file_outputs=[{"filepath": "rec/{room_name}.mp4", "s3": {"bucket": "b"}}])
    )
    assert spec.kind == "room_composite" and spec.room_name == "studio"
    assert spec.audio and spec.video
    assert spec.file.file_type == "mp4" and spec.file.filepath == "rec/{room_name}.mp4"
    assert spec.file.storage == egress_pb.S3Upload(bucket="b")
    assert (spec.encoding.audio_codec, spec.encoding.video_codec) == ("aac", "h264")
    assert (spec.stream, spec.segments, spec.images) == (None, None, ())


def test_audio_only_defaults_to_ogg_opus_unless_another_output_needs_aac():
    spec = validate(_room(audio_only=True, file_outputs=[{}]))
    assert (spec.audio, spec.video) == (True, False)
    assert spec.file.file_type == "ogg" and spec.encoding.audio_codec == "opus"
    spec = validate(_room(audio_only=True, file_outputs=[{}], segment_outputs=[{}]))
    assert spec.file.file_type == "mp4" and spec.encoding.audio_codec == "aac"
    spec = validate(_room(audio_only=True, file_outputs=[{}], advanced={"audio_codec": "AAC"}))
    assert spec.file.file_type == "mp4"
    spec = validate(_room(audio_only=True, file_outputs=[{}], advanced={"audio_codec": "AC_MP3"}))
    assert spec.file.file_type == "mp3" and spec.encoding.audio_codec == "mp3"
    spec = validate(_room(audio_only=True, file_outputs=[{"file_type": "MP3"}]))
    assert spec.encoding.audio_codec == "mp3"


def test_deprecated_single_outputs_and_lists_combine():
    spec = validate(
        _room(
            file={"filepath": "a.mp4"},
            stream_outputs=[{"urls": ["rtmp://live.example/app/key"]}],
            segment_outputs=[{"filename_prefix": "hls/x", "segment_duration": 6}],
            image_outputs=[{"capture_interval": 5}, {"width": 320, "height": 180}],
        )
    )
    assert spec.file.filepath == "a.mp4"
    assert spec.stream.protocol == "rtmp" and spec.stream.urls == ("rtmp://live.example/app/key",)
    assert spec.segments.segment_duration_s == 6
    assert spec.encoding.key_frame_interval_s == 6.0  # HLS: key frames at segment boundaries
    assert [i.capture_interval_s for i in spec.images] == [5, 10]
    assert (spec.images[1].width, spec.images[1].height) == (320, 180)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"file": {}, "file_outputs": [{}]}, "file_outputs[0]"),
        ({"file_outputs": [{}, {}]}, "file_outputs[1]"),
        (
            {"stream": {"urls": ["rtmp://h/a/k"]}, "stream_outputs": [{"urls": ["rtmp://h/a/j"]}]},
            "stream_outputs[0]",
        ),
        ({"segment_outputs": [{}, {}]}, "segment_outputs[1]"),
        ({}, "output"),
        ({"audio_only": True, "video_only": True, "file_outputs": [{}]}, "video_only"),
        ({"file_outputs": [{}], "advanced": {"width": 1281}}, "advanced.width"),
        ({"file_outputs": [{}], "advanced": {"video_codec": "VP8"}}, "file_outputs[0]"),
        ({"file_outputs": [{"file_type": "OGG"}]}, "file_outputs[0]"),
        ({"video_only": True, "file_outputs": [{"file_type": "MP3"}]}, "file_outputs[0]"),
        (
            {
                "audio_only": True,
                "file_outputs": [{"file_type": "OGG"}],
                "advanced": {"audio_codec": "AAC"},
            },
            "file_outputs[0]",
        ),
        ({"segment_outputs": [{}], "advanced": {"audio_codec": "OPUS"}}, "segment_outputs[0]"),
        (
            {"stream_outputs": [{"urls": ["rtmp://h/a/k"]}], "advanced": {"audio_codec": "OPUS"}},
            "stream_outputs[0]",
        ),
        ({"stream_outputs": [{"urls": []}]}, "stream_outputs[0].urls"),
        ({"stream_outputs": [{"urls": ["http://h/x"]}]}, "stream_outputs[0].urls"),
        ({"stream_outputs": [{"urls": ["rtmp://h/a/k", "srt://h:9"]}]}, "stream_outputs[0].urls"),
        (
            {"stream_outputs": [{"urls": ["rtmp://h/a/k", "rtmp://h/a/k"]}]},
            "stream_outputs[0].urls",
        ),
        (
            {"stream_outputs": [{"protocol": "SRT", "urls": ["rtmp://h/a/k"]}]},
            "stream_outputs[0].protocol",
        ),
        ({"audio_only": True, "image_outputs": [{}]}, "image_outputs[0]"),
        ({"image_outputs": [{"width": 8}]}, "image_outputs[0].width"),
        ({"image_outputs": [{"image_codec": 7}]}, "image_outputs[0].image_codec"),
        ({"file_outputs": [{"s3": {"access_key": "x"}}]}, "file_outputs[0].s3.bucket"),
        (
            {"file_outputs": [{"azure": {"account_name": "a"}}]},
            "file_outputs[0].azure.container_name",
        ),
        ({"file_outputs": [{}], "layout": "mosaic"}, "layout"),
        ({"file_outputs": [{}], "webhooks": [{"url": "ftp://x"}]}, "webhooks[0].url"),
        ({"file_outputs": [{}], "preset": "PASSTHROUGH"}, "preset"),
    ],
)
def test_invalid_room_composites(fields, field):
    assert _invalid(_room(**fields)).field == field


def test_room_name_is_required():
    assert _invalid(egress_pb.RoomCompositeEgressRequest(file_outputs=[{}])).field == "room_name"
    track = egress_pb.TrackEgressRequest(track_id="TR_1", websocket_url="ws://h/x")
    assert _invalid(track).field == "room_name"
    participant = egress_pb.ParticipantEgressRequest(identity="alice", file_outputs=[{}])
    assert _invalid(participant).field == "room_name"
    composite = egress_pb.TrackCompositeEgressRequest(audio_track_id="TR_a", file_outputs=[{}])
    assert _invalid(composite).field == "room_name"


def test_layouts():
    for layout in ("", "grid", "speaker-light", "single-speaker-dark", "grid-dark"):
        assert validate(_room(layout=layout, file_outputs=[{}])).source.layout == layout


def test_track_composite_audio_or_video():
    spec = validate(
        egress_pb.TrackCompositeEgressRequest(
            room_name="r", audio_track_id="TR_a", file_outputs=[egress_pb.EncodedFileOutput()]
        )
    )
    assert (spec.audio, spec.video, spec.file.file_type) == (True, False, "ogg")
    spec = validate(
        egress_pb.TrackCompositeEgressRequest(
            room_name="r",
            audio_track_id="TR_a",
            video_track_id="TR_v",
            file=egress_pb.EncodedFileOutput(),
        )
    )
    assert (spec.source.audio_track_id, spec.source.video_track_id, spec.file.file_type) == (
        "TR_a",
        "TR_v",
        "mp4",
    )
    neither = egress_pb.TrackCompositeEgressRequest(room_name="r", file_outputs=[{}])
    assert _invalid(neither).field == "audio_track_id"


def test_participant_and_web():
    spec = validate(
        egress_pb.ParticipantEgressRequest(
            room_name="r", identity="alice", screen_share=True, file_outputs=[{}]
        )
    )
    assert (spec.kind, spec.source.identity, spec.source.screen_share) == (
        "participant",
        "alice",
        True,
    )
    assert (
        _invalid(egress_pb.ParticipantEgressRequest(room_name="r", file_outputs=[{}])).field
        == "identity"
    )
    spec = validate(egress_pb.WebEgressRequest(url="https://example.com/page", file_outputs=[{}]))
    assert (spec.kind, spec.page.url, spec.room_name) == ("web", "https://example.com/page", "")
    assert (
        _invalid(egress_pb.WebEgressRequest(url="file:///etc/passwd", file_outputs=[{}])).field
        == "url"
    )


def test_track_egress():
    spec = validate(
        egress_pb.TrackEgressRequest(room_name="r", track_id="TR_1", websocket_url="wss://h/ws")
    )
    assert (spec.kind, spec.source.websocket_url, spec.encoding) == ("track", "wss://h/ws", None)
    spec = validate(
        egress_pb.TrackEgressRequest(
            room_name="r", track_id="TR_1", file=egress_pb.DirectFileOutput(filepath="t/", s3=S3)
        )
    )
    assert spec.file.file_type == "" and spec.file.storage == S3
    assert _invalid(egress_pb.TrackEgressRequest(room_name="r", track_id="TR_1")).field == "output"
    bad_ws = egress_pb.TrackEgressRequest(
        room_name="r", track_id="TR_1", websocket_url="rtmp://h/a/k"
    )
    assert _invalid(bad_ws).field == "websocket_url"


def test_start_egress_template_with_request_and_output_storage():
    request = egress_pb.StartEgressRequest(
        room_name="studio",
        template=egress_pb.TemplateSource(layout="speaker", audio_only=False),
        outputs=[
            egress_pb.Output(file=egress_pb.FileOutput(filepath="a.mp4")),
            egress_pb.Output(
                images=egress_pb.ImageOutput(filename_prefix="snap"),
                storage=egress_pb.StorageConfig(gcp=egress_pb.GCPUpload(bucket="g")),
            ),
        ],
        storage=egress_pb.StorageConfig(s3=S3),
        preset=egress_pb.H264_1080P_30,
    )
    spec = validate(request)
    assert (spec.kind, spec.source.layout) == ("room_composite", "speaker")
    assert spec.file.storage is None and spec.request_storage == S3  # request-level default
    assert spec.images[0].storage == egress_pb.GCPUpload(bucket="g")  # per-output override
    assert (spec.encoding.width, spec.encoding.audio_codec) == (1920, "aac")


def test_start_egress_media_and_web_sources():
    media = egress_pb.StartEgressRequest(
        room_name="r",
        media=egress_pb.MediaSource(
            participant_video=egress_pb.ParticipantVideo(identity="alice"),
            audio=egress_pb.AudioConfig(
                routes=[egress_pb.AudioRoute(participant_identity="alice")]
            ),
        ),
        outputs=[egress_pb.Output(file=egress_pb.FileOutput())],
    )
    spec = validate(media)
    assert (spec.kind, spec.audio, spec.video, spec.source.participant_identity) == (
        "media",
        True,
        True,
        "alice",
    )
    assert spec.source.audio_config.routes[0].participant_identity == "alice"
    audio_only = egress_pb.StartEgressRequest(
        room_name="r",
        media=egress_pb.MediaSource(audio=egress_pb.AudioConfig(capture_all=True)),
        outputs=[egress_pb.Output(file=egress_pb.FileOutput())],
    )
    assert validate(audio_only).file.file_type == "ogg"
    web = egress_pb.StartEgressRequest(
        web=egress_pb.WebSource(url="http://page", audio_only=True),
        outputs=[egress_pb.Output(segments=egress_pb.SegmentedFileOutput())],
    )
    assert (validate(web).kind, validate(web).video) == ("web", False)


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"room_name": "r", "outputs": [{"file": {}}]}, "source"),
        ({"room_name": "r", "media": {}, "outputs": [{"file": {}}]}, "media"),
        (
            {"room_name": "r", "media": {"audio": {"routes": [{}]}}, "outputs": [{"file": {}}]},
            "media.audio.routes[0]",
        ),
        ({"template": {}, "outputs": [{"file": {}}]}, "room_name"),
        ({"room_name": "r", "template": {}, "outputs": [{}]}, "outputs[0]"),
        (
            {"room_name": "r", "template": {}, "outputs": [{"file": {}}, {"file": {}}]},
            "outputs[1].file",
        ),
        (
            {"room_name": "r", "template": {}, "outputs": [{"file": {}, "storage": {"s3": {}}}]},
            "outputs[0].storage.s3.bucket",
        ),
        (
            {
                "room_name": "r",
                "template": {"audio_only": True, "video_only": True},
                "outputs": [{"file": {}}],
            },
            "template.video_only",
        ),
        ({"web": {"url": "x"}, "outputs": [{"file": {}}]}, "web.url"),
    ],
)
def test_invalid_start_egress(request_fields, field):
    request = json_format.ParseDict(request_fields, egress_pb.StartEgressRequest())
    assert _invalid(request).field == field


def test_stream_protocols_for_update_stream():
    assert stream_protocol("rtmps://h/app/key") == "rtmp"
    assert stream_protocol("srt://h:9000?streamid=x") == "srt"
    assert stream_protocol("wss://h/x") == "websocket"
    for url in ("https://h/x", "rtmp:///nohost", "rtmp://[::1"):
        with pytest.raises(InvalidRequest):
            stream_protocol(url, "add_output_urls")


def test_only_start_requests_are_accepted():
    with pytest.raises(TypeError):
        validate(egress_pb.StopEgressRequest(egress_id="EG_x"))
