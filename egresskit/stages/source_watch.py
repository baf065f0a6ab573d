"""SourceWatch: ends a graph that follows a participant or tracks once they are gone."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from egresskit.pipeline import EOS, SourceClosed, Stage
from egresskit.rooms.events import ParticipantLeft, TrackUnpublished
from egresskit.rooms.local import LocalRoom


class SourceWatch(Stage):
    """Ends its graph (drained, COMPLETE) once the followed participant or tracks are gone.

    Follows a participant by identity, or a set of track ids (the graph
    ends when none of them is published any more). Posts `SourceClosed`
    with the reason before stopping the graph.
    """

    def __init__(
        self,
        room: LocalRoom,
        *,
        identity: str | None = None,
        track_sids: Iterable[str] = (),
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        self.room = room
        self.identity = identity
        self.track_sids = frozenset(track_sids)
        self._stopper: asyncio.Task | None = None

    def _gone(self) -> str | None:
        if self.identity is not None and self.identity not in self.room.participants:
            return "participant left"
        if self.track_sids and all(self.room.track(sid) is None for sid in self.track_sids):
            return "track unpublished"
        return None

    async def run(self) -> None:
        events = self.room.subscribe_events()
        try:
            reason = self._gone()
            while reason is None:
                event = await self.next_unless_stopping(events)
                if self.stopping.is_set():
                    return
                if event is EOS:
                    reason = "room closed"
                elif isinstance(event, ParticipantLeft | TrackUnpublished):
                    reason = self._gone()
        finally:
            self.room.unsubscribe_events(events)
        self.post(SourceClosed(self, reason))
        assert self.graph is not None
        # Kept so the task is not collected; it outlives this stage, which it also waits for.
        self._stopper = asyncio.create_task(self.graph.stop())
