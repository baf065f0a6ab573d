"""A graph of stages joined by links: one per egress request."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from typing import Any, TypeVar

from egresskit.pipeline.bus import Bus
from egresskit.pipeline.clock import GraphClock
from egresskit.pipeline.events import Paused, Resumed, StageFailed, StateChanged
from egresskit.pipeline.link import Link, LinkPolicy
from egresskit.pipeline.stage import InputPort, OutputPort, Stage

log = logging.getLogger(__name__)

S = TypeVar("S", bound=Stage)
T = TypeVar("T")


class GraphState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    STOPPING = "stopping"
    COMPLETE = "complete"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        return self in (GraphState.COMPLETE, GraphState.FAILED, GraphState.CANCELLED)


class GraphError(Exception):
    """A graph could not be built or started as asked."""


class Graph:
    """Runs its stages as tasks; the first stage error ends the graph with that error.

    `stop` drains: sources emit end of stream and every stage finishes what
    it holds. `cancel` aborts. Both are bounded in time.
    """

    def __init__(self, name: str = "graph") -> None:
        self.name = name
        self.clock = GraphClock()
        self.bus = Bus()
        self.stages: list[Stage] = []
        self.links: list[Link[Any]] = []
        self.state = GraphState.CREATED
        self.error: BaseException | None = None
        self.failed_stage: str | None = None
        self._tasks: dict[Stage, asyncio.Task[None]] = {}
        self._done = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    def add(self, stage: S) -> S:
        if stage.graph is not None:
            raise GraphError(f"{stage.name} already belongs to a graph")
        stage.graph = self
        self.stages.append(stage)
        return stage

    def link(
        self,
        out: OutputPort[T],
        into: InputPort[T],
        *,
        maxsize: int = 8,
        policy: LinkPolicy = LinkPolicy.BLOCK,
    ) -> Link[T]:
        """Join an output to an input; several outputs may feed one input (a merge)."""
        for port in (out, into):
            if port.stage.graph is not self:
                raise GraphError(f"{port} is not in graph {self.name}")
        if into.link is None:
            into.link = Link(maxsize, policy, name=f"{out}->{into}")
            self.links.append(into.link)
        into.link.add_producer(out.receive_upstream)
        out.links.append(into.link)
        return into.link

    async def start(self) -> None:
        if self.state is not GraphState.CREATED:
            raise GraphError(f"graph {self.name} was already started")
        self.clock.start()
        self._set_state(GraphState.RUNNING)
        for stage in self.stages:
            self._tasks[stage] = asyncio.create_task(
                self._run_stage(stage), name=f"{self.name}/{stage.name}"
            )
        self._watcher = asyncio.create_task(self._watch(), name=f"{self.name}/watch")

    async def _run_stage(self, stage: Stage) -> None:
        try:
            await stage.run()
            for port in stage.outputs.values():
                await port.close()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any stage error ends this graph only
            log.warning("graph %s: stage %s failed: %s", self.name, stage.name, exc, exc_info=exc)
            self._fail(stage, exc)
        finally:
            try:
                await asyncio.shield(stage.cleanup())
            except Exception:
                log.exception("graph %s: cleanup of %s failed", self.name, stage.name)
            stage.close_offload()

    def _fail(self, stage: Stage, exc: BaseException) -> None:
        if self.state.ended or self.error is not None:
            return
        self.error = exc
        self.failed_stage = stage.name
        self.bus.post(StageFailed(stage, str(exc) or type(exc).__name__))
        for other, task in self._tasks.items():
            if other is not stage:
                task.cancel()

    async def _watch(self) -> None:
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if self.error is not None:
            self._set_state(GraphState.FAILED)
        elif self.state is not GraphState.CANCELLED:
            self._set_state(GraphState.COMPLETE)
        self._done.set()

    def _set_state(self, state: GraphState) -> None:
        if self.state is state:
            return
        self.state = state
        error = "" if self.error is None else str(self.error) or type(self.error).__name__
        self.bus.post(StateChanged(self, state, error))

    def pause(self) -> bool:
        """Write nothing from now on, keeping every stage and connection; False if already paused.

        Media time stands still until `resume` (see GraphClock): the stages
        that tick on the clock wait, and media arriving meanwhile is dropped.
        GraphError if the graph is not running or has a stage that cannot pause.
        """
        if self.state is not GraphState.RUNNING:
            raise GraphError(f"graph {self.name} is {self.state.value}, not running")
        fixed = [stage.name for stage in self.stages if not stage.pausable]
        if fixed:
            raise GraphError(f"{', '.join(fixed)} cannot pause")
        if not self.clock.pause():
            return False
        self.bus.post(Paused(self, self.clock.now()))
        return True

    def resume(self) -> bool:
        """Go on recording where `pause` stopped, timestamps continuous; False if not paused."""
        if self.state is not GraphState.RUNNING:
            raise GraphError(f"graph {self.name} is {self.state.value}, not running")
        if not self.clock.resume():
            return False
        self.bus.post(Resumed(self, self.clock.now()))
        return True

    @property
    def paused(self) -> bool:
        return self.clock.paused

    async def stop(self, timeout: float = 15.0) -> GraphState:
        """Drain through end of stream; abort whatever has not finished by `timeout`."""
        if self.state is GraphState.RUNNING:
            self._set_state(GraphState.STOPPING)
            for stage in self.stages:
                stage.on_stop()
            self.clock.stop()
        if self.state is GraphState.CREATED:
            self._set_state(GraphState.CANCELLED)
            self._done.set()
            return self.state
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
        except TimeoutError:
            stuck = [s.name for s, t in self._tasks.items() if not t.done()]
            self._fail(
                self.stages[0],
                TimeoutError(f"stages did not drain in {timeout:.0f} s: {', '.join(stuck)}"),
            )
            for task in self._tasks.values():
                task.cancel()
            await self._done.wait()
        return self.state

    async def cancel(self) -> GraphState:
        """Abort now: stages are cancelled and clean up (muxers still close their files)."""
        if self.state is GraphState.CREATED:
            self._set_state(GraphState.CANCELLED)
            self._done.set()
            return self.state
        if not self.state.ended:
            self._set_state(GraphState.CANCELLED)
            for task in self._tasks.values():
                task.cancel()
        await self._done.wait()
        return self.state

    async def wait(self, timeout: float | None = None) -> GraphState:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), timeout)
        return self.state

    def release(self) -> None:
        """After the end: free every stage's media resources at once and forget the stages.

        Stages, ports and the graph refer to each other, so without this a
        finished graph's codec contexts and frames (tens of MB, and the
        threads some codecs keep) would live until a full garbage collection.
        """
        if not self.state.ended:
            raise GraphError(f"graph {self.name} is still {self.state.value}")
        for link in self.links:
            link.clear()  # items a stopped stage never read: decoded frames, packets
        for stage in self.stages:
            stage.release()
            stage.graph = None
        self.stages.clear()
        self.links.clear()
        self._tasks.clear()
        self._watcher = None
        self.bus.clear()

    def __repr__(self) -> str:
        return f"<Graph {self.name} {self.state.value}>"

    def stats(self) -> dict[str, Any]:
        return {
            "links": {
                link.name: {"dropped": link.dropped, "passed": link.passed} for link in self.links
            },
            "stages": {stage.name: stage.stats() for stage in self.stages},
        }
