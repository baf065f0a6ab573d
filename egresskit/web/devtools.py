"""Chromium's DevTools protocol over `--remote-debugging-pipe`.

A pipe, not a port: no other local program can drive the browser, and no
port has to be found free. Messages are JSON, each ended by a NUL byte.
Hand-written (about 80 lines) because the DevTools client libraries all
speak the websocket form and bring a browser launcher of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from typing import Any

EventHandler = Callable[[str, dict[str, Any], str], None]  # method, params, session id
MAX_MESSAGE = 64 * 1024 * 1024


class DevToolsError(Exception):
    """A DevTools command failed, or the browser went away."""


class DevTools:
    """Calls and events on one browser's DevTools pipe (flattened target sessions)."""

    def __init__(self, on_event: EventHandler) -> None:
        self._on_event = on_event
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._writer: asyncio.WriteTransport | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()
        # the fds the browser gets as its 3 (commands in) and 4 (replies out)
        self._to_browser = os.pipe()
        self._from_browser = os.pipe()

    @property
    def child_fds(self) -> tuple[int, int]:
        return self._to_browser[0], self._from_browser[1]

    async def connect(self) -> None:
        """After the browser started: close its ends here and start reading."""
        os.close(self._to_browser[0])
        os.close(self._from_browser[1])
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_MESSAGE)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(self._from_browser[0], "rb")
        )
        self._writer, _ = await loop.connect_write_pipe(
            asyncio.Protocol, os.fdopen(self._to_browser[1], "wb")
        )
        self._reader_task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                try:
                    raw = await reader.readuntil(b"\0")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                message = json.loads(raw[:-1])
                if "id" in message:
                    future = self._pending.pop(message["id"], None)
                    if future is not None and not future.done():
                        future.set_result(message)
                elif "method" in message:
                    self._on_event(
                        message["method"], message.get("params", {}), message.get("sessionId", "")
                    )
        finally:
            self.closed.set()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(DevToolsError("the browser closed its DevTools pipe"))
            self._pending.clear()

    async def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str = "",
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        if self._writer is None or self.closed.is_set():
            raise DevToolsError("the browser closed its DevTools pipe")
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = future
        self._writer.write(json.dumps(message).encode() + b"\0")
        try:
            reply = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self._pending.pop(message["id"], None)
            raise DevToolsError(
                f"{method}: no answer from the browser in {timeout:.0f} s"
            ) from None
        if "error" in reply:
            raise DevToolsError(f"{method}: {reply['error'].get('message', reply['error'])}")
        return reply.get("result", {})

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        else:
            for fd in (*self._to_browser, *self._from_browser):
                with contextlib.suppress(OSError):
                    os.close(fd)
