"""Who is speaking: audio levels in, one steady active speaker out.

The mixer measures every track on each 20 ms tick and reports the levels;
a room whose server detects speakers itself (LiveKit's `speakers_changed`)
announces them through the compositor; the compositor asks for the active
speaker when it draws a frame. Both sources meet here, under one rule. They
share one SpeakerTracker object rather than a link: the compositor only
ever needs the latest answer, at its own pace, and a link would need a
drain task and would hand it a backlog of stale levels. The tracker is
guarded by a lock, so it does not matter which threads the two stages call
it from.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Levels below this are silence (a quiet talker is around -40 dBFS, the noise floor far below).
SPEAKING_DB = -50.0
# Smoothing of levels: rise fast so speech is seen at once, fall slowly over gaps between words.
ATTACK_S = 0.05
RELEASE_S = 0.2
# How long someone must lead before they take the floor from a current speaker...
SWITCH_AFTER_S = 0.5
# ... and before they get it when nobody has spoken yet.
FIRST_AFTER_S = 0.2
# While the current speaker still talks, a challenger must be this much louder.
FLOOR_MARGIN_DB = 10.0
SILENCE_DB = -100.0


def rms_db(rms: float) -> float:
    """dBFS of an RMS level on a 0..1 scale."""
    return 20 * math.log10(rms) if rms > 1e-5 else SILENCE_DB


@dataclass(slots=True)
class _Level:
    db: float = SILENCE_DB
    at: float = 0.0


class SpeakerTracker:
    """Smoothed per-participant levels and an active speaker with hysteresis.

    A participant becomes the active speaker once they have been the
    loudest speaking participant for `switch_after` seconds (FIRST_AFTER_S
    when nobody has the floor yet); while the current speaker keeps
    talking, a challenger must also be `floor_margin` dB louder the whole
    time. A speaker who falls silent keeps the floor until someone else
    talks, so the picture does not jump back and forth.
    """

    def __init__(
        self,
        *,
        switch_after: float = SWITCH_AFTER_S,
        first_after: float = FIRST_AFTER_S,
        floor_margin: float = FLOOR_MARGIN_DB,
    ) -> None:
        self.switch_after = switch_after
        self.first_after = first_after
        self.floor_margin = floor_margin
        self._lock = threading.Lock()
        self._levels: dict[str, _Level] = {}
        self._active: str | None = None
        self._announced: dict[str, float] = {}  # identity -> dBFS, as the server last said
        self._measured = False
        self.announcements = 0
        self._challenger: str | None = None
        self._challenge_since = 0.0
        self.switches = 0

    @property
    def active(self) -> str | None:
        """The identity with the floor, or None before anyone has spoken."""
        with self._lock:
            return self._active

    def speaking(self, identity: str) -> bool:
        with self._lock:
            return self._db(identity) > SPEAKING_DB

    def observe(self, at: float, levels: Mapping[str, float]) -> None:
        """One tick of RMS levels (0..1) per identity at media time `at` (seconds)."""
        with self._lock:
            self._measured = True
            for identity, rms in levels.items():
                self._smooth(identity, rms_db(rms), at)
            for identity in self._levels:
                if identity not in levels:
                    self._smooth(identity, SILENCE_DB, at)
            self._decide(at)

    def announce(self, speakers: Iterable[tuple[str, float]]) -> None:
        """The server's current speakers, (identity, level 0..1 linear like RMS); replaces the last."""
        with self._lock:
            self._announced = {identity: rms_db(level) for identity, level in speakers}
            self.announcements += 1
            if self._measured or not self._announced:
                return
            loudest = max(self._announced, key=self._announced.__getitem__)
            if loudest != self._active:
                self._active = loudest
                self.switches += 1

    def forget(self, identity: str) -> None:
        """A participant left: its level goes, and so does the floor if it held it."""
        with self._lock:
            self._levels.pop(identity, None)
            self._announced.pop(identity, None)
            if self._active == identity:
                self._active = None
            if self._challenger == identity:
                self._challenger = None

    def _smooth(self, identity: str, db: float, at: float) -> None:
        level = self._levels.setdefault(identity, _Level(SILENCE_DB, at))
        dt = max(0.0, at - level.at)
        tau = ATTACK_S if db > level.db else RELEASE_S
        level.db += (db - level.db) * (1 - math.exp(-dt / tau)) if dt else 0.0
        level.at = at

    def _db(self, identity: str) -> float:
        level = self._levels.get(identity)
        measured = level.db if level is not None else SILENCE_DB
        return max(measured, self._announced.get(identity, SILENCE_DB))

    def _decide(self, at: float) -> None:
        heard = {i: self._db(i) for i in self._levels.keys() | self._announced.keys()}
        speaking = {i: db for i, db in heard.items() if db > SPEAKING_DB}
        if not speaking:
            self._challenger = None
            return
        loudest = max(speaking, key=speaking.__getitem__)
        if loudest == self._active:
            self._challenger = None
            return
        current = speaking.get(self._active) if self._active is not None else None
        if current is not None and speaking[loudest] < current + self.floor_margin:
            self._challenger = None
            return
        if loudest != self._challenger:
            self._challenger, self._challenge_since = loudest, at
        wait = self.first_after if self._active is None else self.switch_after
        if at - self._challenge_since >= wait:
            self._active, self._challenger = loudest, None
            self.switches += 1
