"""Stages: async units of work with named input and output ports."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from egresskit.pipeline.events import StageEvent, UpstreamEvent
from egresskit.pipeline.link import EOS, EndOfStream, Link
from egresskit.pipeline.offload import OffloadThread

if TYPE_CHECKING:
    from egresskit.pipeline.bus import Bus
    from egresskit.pipeline.clock import GraphClock
    from egresskit.pipeline.graph import Graph

T = TypeVar("T")
R = TypeVar("R")


class OutputPort(Generic[T]):
    """Where a stage sends items; linked to one link per downstream consumer (a tee)."""

    def __init__(self, stage: Stage, name: str) -> None:
        self.stage = stage
        self.name = name
        self.links: list[Link[T]] = []
        self._closed = False

    def receive_upstream(self, event: UpstreamEvent) -> None:
        """A consumer sent an event back through one of this port's links."""
        self.stage.on_upstream(event, self)

    async def send(self, item: T) -> None:
        for link in self.links:
            await link.put(item)

    async def close(self) -> None:
        """Forward end of stream downstream, once."""
        if self._closed:
            return
        self._closed = True
        for link in self.links:
            await link.close()

    def __repr__(self) -> str:
        return f"{self.stage.name}.{self.name}"


class InputPort(Generic[T]):
    """Where a stage receives items; an unlinked input is at end of stream at once."""

    def __init__(self, stage: Stage, name: str) -> None:
        self.stage = stage
        self.name = name
        self.link: Link[T] | None = None

    async def recv(self) -> T | EndOfStream:
        if self.link is None:
            return EOS
        return await self.link.get()

    @property
    def producers(self) -> int:
        """How many output ports feed this input."""
        return self.link.producers if self.link is not None else 0

    def send_upstream(self, event: UpstreamEvent) -> None:
        """Send an event against the flow, to every stage feeding this input (loop thread)."""
        if self.link is not None:
            self.link.send_upstream(event)

    async def __aiter__(self) -> AsyncIterator[T]:
        if self.link is None:
            return
        async for item in self.link:
            yield item

    def __repr__(self) -> str:
        return f"{self.stage.name}.{self.name}"


class Stage:
    """Base of every pipeline stage.

    A source stage watches `stopping` (or overrides `on_stop`) and closes its
    outputs; any other stage runs until its inputs reach end of stream. The
    graph closes a stage's outputs when `run` returns, so end of stream always
    travels on.
    """

    # Whether the stage follows a paused graph clock (Graph.pause): stages timed by
    # something else (a track's own RTP clock) set this False.
    pausable = True

    def __init__(self, name: str | None = None) -> None:
        self.name = name or type(self).__name__
        self.graph: Graph | None = None
        self.stopping = asyncio.Event()
        self.inputs: dict[str, InputPort[Any]] = {}
        self.outputs: dict[str, OutputPort[Any]] = {}
        self._offload: OffloadThread | None = None

    def add_input(self, name: str) -> InputPort[Any]:
        """A new input; annotate the attribute it is kept in with its item type
        (`self.input: InputPort[av.VideoFrame] = self.add_input("input")`)."""
        port: InputPort[Any] = InputPort(self, name)
        self.inputs[name] = port
        return port

    def add_output(self, name: str) -> OutputPort[Any]:
        port: OutputPort[Any] = OutputPort(self, name)
        self.outputs[name] = port
        return port

    @property
    def clock(self) -> GraphClock:
        assert self.graph is not None, f"{self.name} is not in a graph"
        return self.graph.clock

    @property
    def bus(self) -> Bus:
        assert self.graph is not None, f"{self.name} is not in a graph"
        return self.graph.bus

    def post(self, event: StageEvent) -> None:
        """Tell whoever runs the graph (a no-op outside a graph)."""
        if self.graph is not None:
            self.graph.bus.post(event)

    def on_upstream(self, event: UpstreamEvent, port: OutputPort[Any]) -> None:
        """An event from downstream reached output `port`. By default it travels on to
        every stage feeding this one; a stage that can act on it (an encoder asked for a
        key frame) overrides this."""
        for input_port in self.inputs.values():
            input_port.send_upstream(event)

    async def run(self) -> None:
        raise NotImplementedError

    async def next_unless_stopping(self, link: Link[T]) -> T | EndOfStream:
        """The link's next item, or end of stream as soon as this stage is asked to stop.

        For sources that wait on something outside the graph (room events)
        and must still end promptly on stop.
        """
        get = asyncio.ensure_future(link.get())
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            done, _ = await asyncio.wait({get, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not get.done():
                get.cancel()
        return get.result() if get in done else EOS

    def on_stop(self) -> None:
        """A stop was requested: sources end their streams (default: set `stopping`)."""
        self.stopping.set()

    async def offload(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """Run blocking media work on this stage's own worker thread, in order.

        One thread per stage keeps codec calls serialized (codec contexts are
        not thread-safe) while the event loop stays free.
        """
        if self._offload is None:
            self._offload = OffloadThread(self.name)
        return await self._offload.run(functools.partial(fn, *args, **kwargs))

    async def cleanup(self) -> None:
        """Release resources after `run` ended for any reason (also on cancel)."""

    def release(self) -> None:
        """Drop what the stage holds (codec contexts, frames) once its whole graph has ended.

        Not `cleanup`: other stages may still need this one until the last
        of them ends (a muxer copies its encoder's stream when it opens a
        file). The stage never runs again afterwards.
        """

    def close_offload(self) -> None:
        """End the worker thread once its current call returns; calls not begun are cancelled."""
        if self._offload is not None:
            self._offload.close()
            self._offload = None

    def stats(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
