"""The lowest layer: stages, bounded links, graphs, the bus and the graph clock."""

from egresskit.pipeline.bus import Bus
from egresskit.pipeline.clock import GraphClock
from egresskit.pipeline.events import (
    BusEvent,
    FirstMedia,
    GraphEvent,
    Paused,
    Resumed,
    SourceClosed,
    SourceFailed,
    StageEvent,
    StageFailed,
    StateChanged,
    UpstreamEvent,
)
from egresskit.pipeline.graph import Graph, GraphError, GraphState
from egresskit.pipeline.link import EOS, EndOfStream, Link, LinkPolicy
from egresskit.pipeline.stage import InputPort, OutputPort, Stage

__all__ = [
    "EOS",
    "Bus",
    "BusEvent",
    "EndOfStream",
    "FirstMedia",
    "GraphEvent",
    "Paused",
    "Resumed",
    "SourceClosed",
    "SourceFailed",
    "StageEvent",
    "StageFailed",
    "StateChanged",
    "UpstreamEvent",
    "Graph",
    "GraphClock",
    "GraphError",
    "GraphState",
    "InputPort",
    "Link",
    "LinkPolicy",
    "OutputPort",
    "Stage",
]
