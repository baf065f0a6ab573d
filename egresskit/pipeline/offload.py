"""OffloadThread: one thread that runs a stage's blocking calls in order, answering the loop.

Not `loop.run_in_executor` with a one-thread `ThreadPoolExecutor`: each of
its calls goes through a `concurrent.futures.Future` (a Python `Condition`),
the executor's idle `Semaphore` and `wrap_future` chaining two futures.
Measured on this project's 2-core host, a round trip cost ~85-120 us of
process CPU that way and ~46 us here (one `SimpleQueue.put`, one asyncio
future, one `call_soon_threadsafe`); a live 2x2 composite makes ~190 such
calls a second (compositor, two encoders, muxer).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

R = TypeVar("R")

# (loop, future, function) of one call; None stops the thread.
_Call = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]


class OffloadThread:
    """Runs calls one at a time on its own thread; `run` awaits one in the caller's loop.

    A call whose awaiting task was cancelled still runs to its end if it had
    begun (a codec call cannot be interrupted); `close` cancels the calls
    that had not begun and lets the thread end after the current one.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    async def run(self, fn: Callable[[], R]) -> R:
        if self._closed:
            raise RuntimeError(f"{self.name}: offload thread closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._calls.put((loop, future, fn))
        return await future

    def close(self) -> None:
        """Cancel what has not begun; the thread ends after the call it is in."""
        self._closed = True
        self._calls.put(None)

    def _work(self) -> None:
        while (call := self._calls.get()) is not None:
            loop, future, fn = call
            if self._closed:
                _answer(loop, future.cancel)
                continue
            try:
                result = fn()
            except BaseException as exc:  # handed to the awaiting coroutine
                _answer(loop, _set_exception, future, exc)
            else:
                _answer(loop, _set_result, future, result)
        # calls queued behind the end are cancelled too
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                return
            if call is not None:
                _answer(call[0], call[1].cancel)


def _answer(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # the loop is closed: nobody waits any more
        pass


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():  # not cancelled meanwhile
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if isinstance(exc, StopIteration):  # a future refuses it (it would end the awaiting coroutine)
        exc = RuntimeError(f"offloaded call raised {exc!r}")
    if not future.done():
        future.set_exception(exc)
