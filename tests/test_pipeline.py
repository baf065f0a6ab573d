"""The pipeline layer on its own: link policies, merges, drain, abort and bounded stop."""

from __future__ import annotations

import asyncio
import functools
import threading
from dataclasses import dataclass
from typing import Any

import pytest

from egresskit.pipeline import (
    EOS,
    BusEvent,
    Graph,
    GraphError,
    GraphState,
    Link,
    LinkPolicy,
    OutputPort,
    Stage,
    StageFailed,
    StateChanged,
    UpstreamEvent,
)
from egresskit.pipeline.clock import GraphClock
from egresskit.pipeline.offload import OffloadThread


async def test_leaky_link_drops_the_oldest_and_counts():
    link: Link[int] = Link(3, LinkPolicy.DROP_OLDEST)
    for i in range(10):
        await link.put(i)
    assert link.dropped == 7
    assert [link.get_nowait() for _ in range(3)] == [7, 8, 9]


async def test_blocking_link_waits_for_room():
    link: Link[int] = Link(1, LinkPolicy.BLOCK)
    await link.put(1)
    second = asyncio.create_task(link.put(2))
    await asyncio.sleep(0.05)
    assert not second.done()
    assert await link.get() == 1
    await asyncio.wait_for(second, 1)
    assert await link.get() == 2 and link.dropped == 0


async def test_a_merge_ends_after_its_last_producer():
    link: Link[int] = Link(8)
    link.add_producer()
    link.add_producer()
    await link.put(1)
    await link.close()
    await link.put(2)
    await link.close()
    assert [item async for item in link] == [1, 2]


class Counter(Stage):
    """A source: counts until asked to stop."""

    def __init__(self) -> None:
        super().__init__("counter")
        self.output = self.add_output("output")

    async def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            await self.output.send(n)
            n += 1
            await asyncio.sleep(0.001)


class Collector(Stage):
    def __init__(self, hang: bool = False) -> None:
        super().__init__("collector")
        self.input = self.add_input("input")
        self.items: list[int] = []
        self.hang = hang
        self.cleaned = False

    async def run(self) -> None:
        async for item in self.input:
            self.items.append(item)
        if self.hang:
            await asyncio.Event().wait()

    async def cleanup(self) -> None:
        self.cleaned = True


def pipeline(collector: Collector) -> Graph:
    graph = Graph("test")
    counter = graph.add(Counter())
    graph.add(collector)
    graph.link(counter.output, collector.input, maxsize=4)
    return graph


async def test_stop_drains_everything_sent():
    collector = Collector()
    graph = pipeline(collector)
    await graph.start()
    await asyncio.sleep(0.1)
    assert await graph.stop() is GraphState.COMPLETE
    assert collector.items == list(range(len(collector.items))) and collector.items
    assert collector.cleaned


async def test_cancel_aborts_and_still_cleans_up():
    collector = Collector(hang=True)
    graph = pipeline(collector)
    await graph.start()
    await asyncio.sleep(0.05)
    assert await asyncio.wait_for(graph.cancel(), 2) is GraphState.CANCELLED
    assert collector.cleaned


async def test_a_stage_that_never_drains_fails_the_stop_in_bounded_time():
    collector = Collector(hang=True)
    graph = pipeline(collector)
    await graph.start()
    state = await asyncio.wait_for(graph.stop(timeout=0.5), 5)
    assert state is GraphState.FAILED
    assert "collector" in str(graph.error)


async def test_an_unlinked_input_is_at_end_of_stream():
    collector = Collector()
    Graph("alone").add(collector)
    assert await collector.input.recv() is EOS


@dataclass(frozen=True)
class Rewind(UpstreamEvent):
    to: int


class Relay(Stage):
    """Passes items on; knows nothing of upstream events, which travel on through it."""

    def __init__(self) -> None:
        super().__init__("relay")
        self.input = self.add_input("input")
        self.output = self.add_output("output")

    async def run(self) -> None:
        async for item in self.input:
            await self.output.send(item)


class Listening(Counter):
    def __init__(self) -> None:
        super().__init__()
        self.heard: list[tuple[UpstreamEvent, OutputPort[Any]]] = []

    def on_upstream(self, event: UpstreamEvent, port: OutputPort[Any]) -> None:
        self.heard.append((event, port))


async def test_an_upstream_event_travels_through_stages_to_the_source():
    graph = Graph("upstream")
    source, relay, collector = graph.add(Listening()), graph.add(Relay()), graph.add(Collector())
    graph.link(source.output, relay.input, maxsize=4)
    graph.link(relay.output, collector.input, maxsize=4)
    collector.input.send_upstream(Rewind(3))
    assert source.heard == [(Rewind(3), source.output)]


async def test_the_bus_names_the_failed_stage_and_the_state():
    events: list[BusEvent] = []
    collector = Collector()
    graph = pipeline(collector)
    graph.bus.subscribe(events.append)

    async def explode() -> None:
        raise RuntimeError("boom")

    collector.run = explode  # type: ignore[method-assign]
    await graph.start()
    assert await graph.wait(2) is GraphState.FAILED
    failed = [e for e in events if isinstance(e, StageFailed)]
    assert [(e.stage, e.error) for e in failed] == [(collector, "boom")]
    states = [(e.graph, e.state) for e in events if isinstance(e, StateChanged)]
    assert states == [(graph, GraphState.RUNNING), (graph, GraphState.FAILED)]


class Ticker(Stage):
    """A source on the graph clock: sends the media time of each 10 ms tick."""

    def __init__(self) -> None:
        super().__init__("ticker")
        self.output = self.add_output("output")

    async def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            await self.clock.sleep_until(n * 0.01)
            if self.stopping.is_set():
                break
            await self.output.send(n)
            n += 1


async def test_a_paused_graph_writes_nothing_and_resumes_without_a_gap():
    graph = Graph("paused")
    ticker = graph.add(Ticker())
    collector = graph.add(Collector())
    graph.link(ticker.output, collector.input, maxsize=4)
    await graph.start()
    await asyncio.sleep(0.2)
    assert graph.pause() and not graph.pause()  # pausing twice changes nothing
    paused_at = graph.clock.now()
    await asyncio.sleep(0.05)  # what was already due drains
    count = len(collector.items)
    await asyncio.sleep(0.3)
    assert len(collector.items) == count and graph.clock.now() == paused_at
    assert graph.resume() and not graph.resume()
    assert graph.clock.resumes == [paused_at]
    await asyncio.sleep(0.2)
    assert await graph.stop() is GraphState.COMPLETE
    assert collector.items == list(range(len(collector.items)))
    # media time left out the pause: about 0.4 s of ticks for 0.7 s of wall time
    assert 0.3 < len(collector.items) * 0.01 < 0.5, len(collector.items)


async def test_a_paused_graph_stops_at_once():
    graph = Graph("paused-stop")
    ticker = graph.add(Ticker())
    graph.add(Collector())
    graph.link(ticker.output, graph.stages[1].inputs["input"], maxsize=4)
    await graph.start()
    graph.pause()
    assert await asyncio.wait_for(graph.stop(), 2) is GraphState.COMPLETE


async def test_a_graph_with_a_stage_that_cannot_pause_refuses_to():
    graph = pipeline(Collector())
    graph.stages[0].pausable = False
    await graph.start()
    try:
        with pytest.raises(GraphError, match="counter cannot pause"):
            graph.pause()
        assert not graph.paused
    finally:
        await graph.stop()


def test_clock_media_time_leaves_pauses_out():
    clock = GraphClock()
    clock.start()
    t0 = clock._t0
    clock._pauses = [(t0 + 2.0, t0 + 5.0, 2.0)]  # paused from 2 s to 5 s of wall time
    clock._paused_total = 3.0
    assert clock.media_time(t0 + 1.0) == 1.0
    assert clock.media_time(t0 + 3.0) == 2.0 and clock.in_pause(t0 + 3.0)
    assert clock.media_time(t0 + 6.0) == 3.0 and not clock.in_pause(t0 + 6.0)
    assert clock.wall_ns(1.0) == clock.started_at_ns + 1_000_000_000
    assert clock.wall_ns(3.0) == clock.started_at_ns + 6_000_000_000


async def test_offloaded_calls_run_in_order_on_one_thread_and_closing_cancels_the_rest():
    worker = OffloadThread("offload-test")
    threads: list[str] = []
    gate = threading.Event()

    def call(value: int) -> int:
        threads.append(threading.current_thread().name)
        gate.wait(5)
        return value * 2

    first = asyncio.ensure_future(worker.run(functools.partial(call, 1)))
    second = asyncio.ensure_future(worker.run(functools.partial(call, 2)))
    gate.set()
    assert await asyncio.gather(first, second) == [2, 4]
    assert threads == ["offload-test", "offload-test"]

    def fails() -> None:
        raise ValueError("bad frame")

    with pytest.raises(ValueError, match="bad frame"):
        await worker.run(fails)

    gate.clear()
    running = asyncio.ensure_future(worker.run(functools.partial(call, 3)))
    queued = asyncio.ensure_future(worker.run(functools.partial(call, 4)))
    await asyncio.sleep(0.05)  # the first has begun and waits on the gate
    worker.close()
    gate.set()
    assert await running == 6  # a call that had begun ends normally
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert threads.count("offload-test") == 3  # the queued call never ran
    with pytest.raises(RuntimeError, match="closed"):
        await worker.run(functools.partial(call, 5))
