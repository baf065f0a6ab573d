"""egresskit: record and live-stream real-time rooms from Python.

The public names below compose into a pipeline in a few lines; see
examples/record_room.py, and examples/watermark.py for a stage of your own.
"""

from egresskit.egress.graphs import (
    CompositeStages,
    FileOutput,
    ImageOutput,
    OutputStages,
    SegmentsOutput,
    StreamOutput,
    composite_graph,
)
from egresskit.egress.naming import ImageSuffix, SegmentSuffix
from egresskit.egress.track_graphs import (
    participant_graph,
    track_composite_graph,
    track_graph,
    track_websocket_graph,
)
from egresskit.pipeline import (
    EOS,
    BusEvent,
    FirstMedia,
    Graph,
    GraphState,
    InputPort,
    Link,
    LinkPolicy,
    OutputPort,
    SourceClosed,
    SourceFailed,
    Stage,
    StageEvent,
    StageFailed,
    StateChanged,
    UpstreamEvent,
)
from egresskit.rooms import LiveKitRoom, LocalRoom, RoomManager, whip_app
from egresskit.stages.compositor import VideoCompositor
from egresskit.stages.encoder import AudioEncoder, AudioEncoding, VideoEncoder, VideoEncoding
from egresskit.stages.hls import PlaylistUpdated, SegmentClosed
from egresskit.stages.media import (
    EncodedItem,
    EncodedPacket,
    KeyFrameRequest,
    StreamHeader,
    TrackEnded,
    TrackFrame,
    TrackInfo,
    TrackItem,
    TrackMuteChanged,
    TrackStarted,
)
from egresskit.stages.mixer import AudioMixer, Mixing
from egresskit.stages.muxer import FileClosed, FileMuxer, Mp4Muxer
from egresskit.stages.participants import ParticipantChoice, ParticipantGate
from egresskit.stages.snapshot import ImageWritten
from egresskit.stages.stream import StreamStateChanged
from egresskit.stages.subscriber import RoomSubscriber
from egresskit.tokens import create_token

__all__ = [
    "EOS",
    "AudioEncoder",
    "AudioEncoding",
    "AudioMixer",
    "BusEvent",
    "CompositeStages",
    "EncodedItem",
    "EncodedPacket",
    "FileClosed",
    "FileMuxer",
    "FileOutput",
    "FirstMedia",
    "Graph",
    "GraphState",
    "ImageOutput",
    "ImageSuffix",
    "ImageWritten",
    "InputPort",
    "KeyFrameRequest",
    "Link",
    "LinkPolicy",
    "LiveKitRoom",
    "LocalRoom",
    "Mixing",
    "Mp4Muxer",
    "OutputPort",
    "OutputStages",
    "ParticipantChoice",
    "ParticipantGate",
    "PlaylistUpdated",
    "RoomManager",
    "RoomSubscriber",
    "SegmentClosed",
    "SegmentSuffix",
    "SegmentsOutput",
    "SourceClosed",
    "SourceFailed",
    "Stage",
    "StageEvent",
    "StageFailed",
    "StateChanged",
    "StreamHeader",
    "StreamOutput",
    "StreamStateChanged",
    "TrackEnded",
    "TrackFrame",
    "TrackInfo",
    "TrackItem",
    "TrackMuteChanged",
    "TrackStarted",
    "UpstreamEvent",
    "VideoCompositor",
    "VideoEncoder",
    "VideoEncoding",
    "composite_graph",
    "create_token",
    "participant_graph",
    "track_composite_graph",
    "track_graph",
    "track_websocket_graph",
    "whip_app",
]
