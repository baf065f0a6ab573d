from livekit.protocol import egress as _livekit_egress_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StartEgressRequest(_message.Message):
    __slots__ = ("egress_id", "egress", "replay", "room_composite", "web", "participant", "track_composite", "track", "room_id", "room_name", "token", "ws_url", "cloud_backup_enabled", "estimated_cpu", "retry_count")
    EGRESS_ID_FIELD_NUMBER: _ClassVar[int]
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    REPLAY_FIELD_NUMBER: _ClassVar[int]
    ROOM_COMPOSITE_FIELD_NUMBER: _ClassVar[int]
    WEB_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    TRACK_COMPOSITE_FIELD_NUMBER: _ClassVar[int]
    TRACK_FIELD_NUMBER: _ClassVar[int]
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    ROOM_NAME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    WS_URL_FIELD_NUMBER: _ClassVar[int]
    CLOUD_BACKUP_ENABLED_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_CPU_FIELD_NUMBER: _ClassVar[int]
    RETRY_COUNT_FIELD_NUMBER: _ClassVar[int]
    egress_id: str
    egress: _livekit_egress_pb2.StartEgressRequest
    replay: _livekit_egress_pb2.ExportReplayRequest
    room_composite: _livekit_egress_pb2.RoomCompositeEgressRequest
    web: _livekit_egress_pb2.WebEgressRequest
    participant: _livekit_egress_pb2.ParticipantEgressRequest
    track_composite: _livekit_egress_pb2.TrackCompositeEgressRequest
    track: _livekit_egress_pb2.TrackEgressRequest
    room_id: str
    room_name: str
    token: str
    ws_url: str
    cloud_backup_enabled: bool
    estimated_cpu: float
    retry_count: int
    def __init__(self, egress_id: _Optional[str] = ..., egress: _Optional[_Union[_livekit_egress_pb2.StartEgressRequest, _Mapping]] = ..., replay: _Optional[_Union[_livekit_egress_pb2.ExportReplayRequest, _Mapping]] = ..., room_composite: _Optional[_Union[_livekit_egress_pb2.RoomCompositeEgressRequest, _Mapping]] = ..., web: _Optional[_Union[_livekit_egress_pb2.WebEgressRequest, _Mapping]] = ..., participant: _Optional[_Union[_livekit_egress_pb2.ParticipantEgressRequest, _Mapping]] = ..., track_composite: _Optional[_Union[_livekit_egress_pb2.TrackCompositeEgressRequest, _Mapping]] = ..., track: _Optional[_Union[_livekit_egress_pb2.TrackEgressRequest, _Mapping]] = ..., room_id: _Optional[str] = ..., room_name: _Optional[str] = ..., token: _Optional[str] = ..., ws_url: _Optional[str] = ..., cloud_backup_enabled: _Optional[bool] = ..., estimated_cpu: _Optional[float] = ..., retry_count: _Optional[int] = ...) -> None: ...

class ListActiveEgressRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListActiveEgressResponse(_message.Message):
    __slots__ = ("egress_ids",)
    EGRESS_IDS_FIELD_NUMBER: _ClassVar[int]
    egress_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, egress_ids: _Optional[_Iterable[str]] = ...) -> None: ...
