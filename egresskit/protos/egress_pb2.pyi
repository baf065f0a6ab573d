from livekit.protocol import egress as _livekit_egress_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RoomCompositeEgressRequest(_message.Message):
    __slots__ = ("request", "include_identities", "exclude_identities", "faststart", "video_codec")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    FASTSTART_FIELD_NUMBER: _ClassVar[int]
    VIDEO_CODEC_FIELD_NUMBER: _ClassVar[int]
    request: _livekit_egress_pb2.RoomCompositeEgressRequest
    include_identities: _containers.RepeatedScalarFieldContainer[str]
    exclude_identities: _containers.RepeatedScalarFieldContainer[str]
    faststart: bool
    video_codec: str
    def __init__(self, request: _Optional[_Union[_livekit_egress_pb2.RoomCompositeEgressRequest, _Mapping]] = ..., include_identities: _Optional[_Iterable[str]] = ..., exclude_identities: _Optional[_Iterable[str]] = ..., faststart: _Optional[bool] = ..., video_codec: _Optional[str] = ...) -> None: ...

class PauseEgressRequest(_message.Message):
    __slots__ = ("egress_id",)
    EGRESS_ID_FIELD_NUMBER: _ClassVar[int]
    egress_id: str
    def __init__(self, egress_id: _Optional[str] = ...) -> None: ...

class ResumeEgressRequest(_message.Message):
    __slots__ = ("egress_id",)
    EGRESS_ID_FIELD_NUMBER: _ClassVar[int]
    egress_id: str
    def __init__(self, egress_id: _Optional[str] = ...) -> None: ...

class StopEgressRequest(_message.Message):
    __slots__ = ("egress_id", "discard")
    EGRESS_ID_FIELD_NUMBER: _ClassVar[int]
    DISCARD_FIELD_NUMBER: _ClassVar[int]
    egress_id: str
    discard: bool
    def __init__(self, egress_id: _Optional[str] = ..., discard: _Optional[bool] = ...) -> None: ...

class UpdateParticipantsRequest(_message.Message):
    __slots__ = ("egress_id", "include_identities", "exclude_identities")
    EGRESS_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    egress_id: str
    include_identities: _containers.RepeatedScalarFieldContainer[str]
    exclude_identities: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, egress_id: _Optional[str] = ..., include_identities: _Optional[_Iterable[str]] = ..., exclude_identities: _Optional[_Iterable[str]] = ...) -> None: ...
