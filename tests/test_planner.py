"""Planning a validated request: where each output uploads, and the Python API's enum values."""

from __future__ import annotations

import pytest
from livekit.protocol import egress as egress_pb

from egresskit import ImageOutput, Mixing, SegmentsOutput, SegmentSuffix, composite_graph
from egresskit.egress.planner import plan
from egresskit.egress.spec import RoomCompositeSource
from egresskit.egress.validation import validate
from egresskit.rooms.local import RoomManager
from egresskit.storage.local import LocalStorage
from egresskit.storage.s3 import S3Storage


def _s3(bucket: str) -> egress_pb.StorageConfig:
    return egress_pb.StorageConfig(s3=egress_pb.S3Upload(bucket=bucket, access_key="k", secret="s"))


def test_each_output_uploads_to_its_own_then_the_requests_then_the_servers_storage(tmp_path):
    rooms = RoomManager()
    rooms.get_or_create("r")
    request = egress_pb.StartEgressRequest(
        room_name="r",
        template=egress_pb.TemplateSource(layout="grid"),
        outputs=[
            egress_pb.Output(file=egress_pb.FileOutput(filepath="a.mp4")),
            egress_pb.Output(
                segments=egress_pb.SegmentedFileOutput(filename_prefix="hls/a"),
                storage=_s3("own"),
            ),
        ],
        storage=_s3("request"),
    )
    default = {"local": {"root": str(tmp_path / "default")}}
    planned = plan(validate(request), "EG_a", rooms, tmp_path / "out", default)
    (file,), (segments,) = planned.files, planned.segments
    assert isinstance(file.storage, S3Storage) and file.storage.bucket == "request"
    assert isinstance(segments.storage, S3Storage) and segments.storage.bucket == "own"
    request.ClearField("storage")  # no request-level storage: the server's default takes the file
    planned = plan(validate(request), "EG_b", rooms, tmp_path / "out", default)
    assert isinstance(planned.files[0].storage, LocalStorage)
    assert planned.segments[0].storage.bucket == "own"


def test_livekit_enum_integers_become_python_enums_at_validation():
    request = egress_pb.RoomCompositeEgressRequest(
        room_name="r",
        audio_mixing=egress_pb.DUAL_CHANNEL_AGENT,
        segment_outputs=[egress_pb.SegmentedFileOutput(filename_suffix=egress_pb.TIMESTAMP)],
    )
    spec = validate(request)
    assert isinstance(spec.source, RoomCompositeSource)
    assert spec.source.audio_mixing is Mixing.DUAL_CHANNEL_AGENT
    assert spec.segments is not None and spec.segments.suffix is SegmentSuffix.TIMESTAMP


def test_the_python_api_refuses_livekit_integers_with_a_value_error(tmp_path):
    room = RoomManager().get_or_create("r")
    with pytest.raises(ValueError, match="SegmentSuffix"):
        composite_graph(room, [SegmentsOutput(tmp_path / "a", suffix=1)], video=None)
    with pytest.raises(ValueError, match="ImageSuffix"):
        composite_graph(room, [ImageOutput(tmp_path / "i", suffix=2)])
    with pytest.raises(ValueError, match="Mixing"):
        composite_graph(room, [SegmentsOutput(tmp_path / "a")], video=None, audio_mixing=1)
