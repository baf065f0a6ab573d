"""The graph's bus: state changes, errors and stage events, seen by whoever runs it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BusMessage:
    """One thing a stage or the graph reports: `kind` says what, `data` says the rest."""

    kind: str  # "state", "error", or a stage-specific name such as "first_media"
    source: str
    data: dict[str, Any] = field(default_factory=dict)


Listener = Callable[[BusMessage], None]


class Bus:
    """Synchronous fan-out of messages to listeners.

    Listeners are called in the loop thread and must not block; a listener
    that raises is logged and kept, so one bad observer cannot end a graph.
    """

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def clear(self) -> None:
        """Forget every listener (the graph has ended; they hold its owner alive)."""
        self._listeners.clear()

    def post(self, kind: str, source: str, **data: Any) -> None:
        message = BusMessage(kind, source, data)
        for listener in list(self._listeners):
            try:
                listener(message)
            except Exception:
                log.exception("bus listener failed on %s from %s", kind, source)
