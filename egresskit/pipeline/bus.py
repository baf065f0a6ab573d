"""The graph's bus: state changes, errors and stage events, seen by whoever runs it."""

from __future__ import annotations

import logging
from collections.abc import Callable

from egresskit.pipeline.events import BusEvent

log = logging.getLogger(__name__)

Listener = Callable[[BusEvent], None]


class Bus:
    """Synchronous fan-out of events to listeners.

    Listeners are called in the loop thread and must not block; a listener
    that raises is logged and kept, so one bad observer cannot end a graph.
    """

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def clear(self) -> None:
        """Forget every listener (the graph has ended; they hold its owner alive)."""
        self._listeners.clear()

    def post(self, event: BusEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("bus listener failed on %r", event)
