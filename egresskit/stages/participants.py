"""Who a composite records, and since when: the gate its compositor and mixer share."""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ParticipantChoice:
    """Who a composite records: only `include` (empty: everyone), never anyone in `exclude`."""

    include: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()

    @classmethod
    def of(cls, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> ParticipantChoice:
        return cls(frozenset(include), frozenset(exclude))

    def admits(self, identity: str) -> bool:
        return identity not in self.exclude and (not self.include or identity in self.include)


EVERYONE = ParticipantChoice()

# How long a replaced choice is remembered: longer than any frame is held before it is
# played (the playout delay, a late frame), so every frame meets the choice of its instant.
HISTORY_S = 10.0


class ParticipantGate:
    """The choices made over time, asked per frame by the moment the frame was captured.

    A composite stays subscribed to everyone and lets through only what was
    captured while its participant was chosen. Media is played a playout
    delay after its capture, so gating by capture time is what makes a
    change exact on the recording: someone let in at instant T is drawn and
    heard from the media of T on, in step with everyone else's media of T,
    with nothing from before T; someone left out at T keeps what they said
    before T and nothing after. Instants are `time.monotonic()`, as
    `TrackFrame.time`.
    """

    def __init__(self, choice: ParticipantChoice = EVERYONE) -> None:
        self._since: list[float] = [float("-inf")]
        self._choices: list[ParticipantChoice] = [choice]

    @property
    def choice(self) -> ParticipantChoice:
        """The choice in force from now on."""
        return self._choices[-1]

    def choose(self, choice: ParticipantChoice, at: float | None = None) -> None:
        """Let `choice` decide for media captured from `at` (default: now) on."""
        at = time.monotonic() if at is None else at
        while len(self._since) > 1 and self._since[1] < at - HISTORY_S:
            del self._since[0], self._choices[0]
        self._since.append(at)
        self._choices.append(choice)

    def admits(self, identity: str, captured: float | None = None) -> bool:
        """Whether media of `identity` captured at `captured` (None: now) is recorded."""
        if captured is None:
            return self.choice.admits(identity)
        index = bisect.bisect_right(self._since, captured) - 1
        return self._choices[max(index, 0)].admits(identity)
