"""The lowest layer: stages, bounded links, graphs, the bus and the graph clock."""

from egresskit.pipeline.bus import Bus, BusMessage
from egresskit.pipeline.clock import GraphClock
from egresskit.pipeline.graph import Graph, GraphError, GraphState
from egresskit.pipeline.link import EOS, Link, LinkPolicy
from egresskit.pipeline.stage import InputPort, OutputPort, Stage

__all__ = [
    "EOS",
    "Bus",
    "BusMessage",
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
