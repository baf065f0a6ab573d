from livekit.protocol import egress as _livekit_egress_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetEgressRequest(_message.Message):
    __slots__ = ("egress_id",)
    EGRESS_ID_FIELD_NUMBER: _ClassVar[int]
    egress_id: str
    def __init__(self, egress_id: _Optional[str] = ...) -> None: ...

class UpdateMetricsRequest(_message.Message):
    __slots__ = ("info", "avg_cpu_usage", "max_cpu_usage")
    INFO_FIELD_NUMBER: _ClassVar[int]
    AVG_CPU_USAGE_FIELD_NUMBER: _ClassVar[int]
    MAX_CPU_USAGE_FIELD_NUMBER: _ClassVar[int]
    info: _livekit_egress_pb2.EgressInfo
    avg_cpu_usage: float
    max_cpu_usage: float
    def __init__(self, info: _Optional[_Union[_livekit_egress_pb2.EgressInfo, _Mapping]] = ..., avg_cpu_usage: _Optional[float] = ..., max_cpu_usage: _Optional[float] = ...) -> None: ...
