"""What a graph's bus carries: small frozen events naming whoever posted them.

Listeners dispatch on the type (`isinstance`, `match`), so a misspelt kind
is a name error, not an event nobody hears. Stages define their own events
beside them (`SegmentClosed` in `stages.hls`, `FileClosed` in
`stages.muxer`, ...); the ones any graph or any stage may post live here.
Upstream events travel the other way, against the links, from a consumer
to the stages that feed it (a key-frame request, as GStreamer's
force-key-unit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from egresskit.pipeline.graph import Graph, GraphState
    from egresskit.pipeline.stage import Stage


@dataclass(frozen=True, slots=True, eq=False)
class BusEvent:
    """Base of everything posted on a bus."""


@dataclass(frozen=True, slots=True, eq=False)
class GraphEvent(BusEvent):
    """Something the graph itself reports."""

    graph: Graph


@dataclass(frozen=True, slots=True, eq=False)
class StateChanged(GraphEvent):
    state: GraphState
    error: str = ""  # why it failed, for FAILED


@dataclass(frozen=True, slots=True, eq=False)
class Paused(GraphEvent):
    media_time: float


@dataclass(frozen=True, slots=True, eq=False)
class Resumed(GraphEvent):
    media_time: float


@dataclass(frozen=True, slots=True, eq=False)
class StageEvent(BusEvent):
    """Something one stage reports; `stage` is the stage object, so listeners match it by
    identity, never by a name."""

    stage: Stage


@dataclass(frozen=True, slots=True, eq=False)
class StageFailed(StageEvent):
    """The stage raised; its graph is ending FAILED."""

    error: str


@dataclass(frozen=True, slots=True, eq=False)
class FirstMedia(StageEvent):
    """The first media reached this output (a file, a websocket)."""


@dataclass(frozen=True, slots=True, eq=False)
class SourceClosed(StageEvent):
    """What a source follows is gone (track unpublished, participant left, page ended):
    the recording ends normally."""

    reason: str


@dataclass(frozen=True, slots=True, eq=False)
class SourceFailed(StageEvent):
    """The source cannot go on: what was recorded is kept, the recording FAILED."""

    error: str


@dataclass(frozen=True, slots=True, eq=False)
class UpstreamEvent:
    """Base of what a consumer sends back to its producers through a link."""
