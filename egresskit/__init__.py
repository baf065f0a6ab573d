"""egresskit: record and live-stream real-time rooms from Python.

The public names below compose into a pipeline in a few lines; see
examples/record_room.py.
"""

from egresskit.egress.graphs import (
    CompositeStages,
    FileOutput,
    ImageOutput,
    SegmentsOutput,
    StreamOutput,
    composite_graph,
)
from egresskit.egress.naming import ImageSuffix, SegmentSuffix
from egresskit.egress.track_graphs import participant_graph, track_composite_graph, track_graph
from egresskit.pipeline import EOS, Graph, GraphState, Link, LinkPolicy, Stage
from egresskit.rooms import LiveKitRoom, LocalRoom, RoomManager, whip_app
from egresskit.stages.compositor import VideoCompositor
from egresskit.stages.encoder import AudioEncoder, AudioEncoding, VideoEncoder, VideoEncoding
from egresskit.stages.mixer import AudioMixer, Mixing
from egresskit.stages.muxer import FileMuxer, Mp4Muxer
from egresskit.stages.participants import ParticipantChoice, ParticipantGate
from egresskit.stages.subscriber import RoomSubscriber
from egresskit.tokens import create_token

__all__ = [
    "LiveKitRoom",
    "EOS",
    "AudioEncoder",
    "AudioEncoding",
    "AudioMixer",
    "CompositeStages",
    "FileMuxer",
    "FileOutput",
    "Graph",
    "GraphState",
    "ImageOutput",
    "ImageSuffix",
    "Link",
    "LinkPolicy",
    "LocalRoom",
    "Mixing",
    "Mp4Muxer",
    "ParticipantChoice",
    "ParticipantGate",
    "RoomManager",
    "RoomSubscriber",
    "SegmentSuffix",
    "SegmentsOutput",
    "Stage",
    "StreamOutput",
    "VideoCompositor",
    "VideoEncoder",
    "VideoEncoding",
    "composite_graph",
    "create_token",
    "participant_graph",
    "track_composite_graph",
    "track_graph",
    "whip_app",
]
