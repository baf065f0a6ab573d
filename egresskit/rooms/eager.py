"""Coroutines that rarely suspend, run where they are called instead of on a task.

aiortc's receiver handles each RTP and RTCP packet in a coroutine whose only
awaits send RTCP, which aioice does at once: the packet path runs them to
completion with `run_now`, without creating a task per packet, and should
one suspend after all, finishes it on a task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

_pending: set[asyncio.Task[None]] = set()  # suspended coroutines, kept from the collector


def run_now(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine until it suspends; the rest, if any, on a task."""
    try:
        waited = coroutine.send(None)
    except StopIteration:
        return
    task = asyncio.ensure_future(_finish(coroutine, waited))
    _pending.add(task)
    task.add_done_callback(_pending.discard)


async def _finish(coroutine: Coroutine[Any, Any, None], waited: Any) -> None:
    while True:
        try:
            await waited
        except BaseException as exc:  # handed to the coroutine, which awaited it
            try:
                waited = coroutine.throw(exc)
            except StopIteration:
                return
            continue
        try:
            waited = coroutine.send(None)
        except StopIteration:
            return
