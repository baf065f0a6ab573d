"""Bounded queues between stages, each with a declared overflow policy."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Callable
from typing import Final, Generic, TypeVar

from egresskit.pipeline.events import UpstreamEvent

T = TypeVar("T")


class EndOfStream(enum.Enum):
    """In-band end-of-stream marker: a stage that receives it drains and forwards it.

    An enum of one member, so `item is not EOS` narrows `T | EndOfStream` to `T`
    for a type checker.
    """

    EOS = "EOS"

    def __repr__(self) -> str:
        return "EOS"


EOS: Final = EndOfStream.EOS
# A producer's handler of upstream events (OutputPort.receive_upstream).
UpstreamHandler = Callable[[UpstreamEvent], None]


class LinkPolicy(enum.Enum):
    """What a full link does with a new item."""

    BLOCK = "block"  # the producer waits: encoded media into muxers and uploaders
    DROP_OLDEST = "drop_oldest"  # the oldest item is discarded and counted: live raw video


class Link(Generic[T]):
    """A bounded queue joining producers to one consumer.

    End of stream reaches the consumer once every producer has closed, so a
    link can merge several upstream ports.
    """

    def __init__(
        self, maxsize: int = 8, policy: LinkPolicy = LinkPolicy.BLOCK, name: str = ""
    ) -> None:
        if maxsize < 1:
            raise ValueError("a link needs room for at least one item")
        self.name = name
        self.policy = policy
        self.maxsize = maxsize
        self.dropped = 0
        self.passed = 0
        self._queue: asyncio.Queue[T | EndOfStream] = asyncio.Queue(maxsize)
        self._producers = 0
        self._upstream: list[UpstreamHandler] = []
        self._closed_producers = 0
        self._eos_queued = False

    def add_producer(self, upstream: UpstreamHandler | None = None) -> None:
        """One more producer; `upstream` receives the events the consumer sends back."""
        self._producers += 1
        if upstream is not None:
            self._upstream.append(upstream)

    @property
    def producers(self) -> int:
        return self._producers

    def send_upstream(self, event: UpstreamEvent) -> None:
        """Hand an event to every producer (on the loop thread; it must not block)."""
        for handler in list(self._upstream):
            handler(event)

    @property
    def closed(self) -> bool:
        return self._eos_queued

    def qsize(self) -> int:
        return self._queue.qsize()

    async def put(self, item: T) -> None:
        """Queue an item; a BLOCK link waits for room, a leaky one drops the oldest."""
        if self._eos_queued:
            return
        if self.policy is LinkPolicy.BLOCK:
            await self._queue.put(item)
        else:
            self._put_leaky(item)
        self.passed += 1

    def put_nowait(self, item: T) -> bool:
        """Queue without waiting; on a full BLOCK link the item is refused (returns False)."""
        if self._eos_queued:
            return False
        if self.policy is LinkPolicy.BLOCK:
            if self._queue.full():
                self.dropped += 1
                return False
            self._queue.put_nowait(item)
        else:
            self._put_leaky(item)
        self.passed += 1
        return True

    def _put_leaky(self, item: T | EndOfStream) -> None:
        while self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(item)

    async def close(self) -> None:
        """One producer is done; the last one to close queues end of stream."""
        self._closed_producers += 1
        if self._closed_producers < max(self._producers, 1) or self._eos_queued:
            return
        self._eos_queued = True
        if self.policy is LinkPolicy.BLOCK:
            await self._queue.put(EOS)
        else:
            self._put_leaky(EOS)

    def close_nowait(self) -> None:
        """Queue end of stream at once, dropping the oldest item if the link is full."""
        if self._eos_queued:
            return
        self._closed_producers = max(self._producers, 1)
        self._eos_queued = True
        self._put_leaky(EOS)

    async def get(self) -> T | EndOfStream:
        return await self._queue.get()

    def get_nowait(self) -> T | EndOfStream:
        return self._queue.get_nowait()

    def clear(self) -> None:
        """Discard whatever is still queued (its consumer has ended and never reads it)."""
        while not self._queue.empty():
            self._queue.get_nowait()

    def empty(self) -> bool:
        return self._queue.empty()

    async def __aiter__(self) -> AsyncIterator[T]:
        while True:
            item = await self._queue.get()
            if item is EOS:
                return
            yield item
