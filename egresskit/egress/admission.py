"""Admission by CPU cost: an egress starts only if its cost fits what the machine has left.

LiveKit's egress workers decide the same way, with the same `cpu_cost`
setting names; the default costs here are egresskit's own, measured. The
rule: the budget is cores x `max_cpu_utilization`; every running egress
holds its nominal cost until it ends; a request is admitted if its cost
fits in what is left. An idle service admits any one egress (LiveKit
reports every core as available when idle), so no setting can make a kind
of egress impossible to start.

LiveKit also replaces a running egress's nominal cost by its measured use
after 15 s; egresskit keeps the nominal costs, so whether a request is
admitted depends only on what runs, not on how busy the machine was a
moment ago.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from egresskit.egress.errors import NotEnoughCpu
from egresskit.egress.spec import EgressSpec, MediaSource, RoomCompositeSource


@dataclass(frozen=True)
class CpuCosts:
    """Cores one egress of each kind holds while it runs, and the share of cores to fill.

    The figures below are CPU seconds per second of the service process,
    measured on the 2-core reference machine with WHIP publishers in another
    process and the default 720p30 H.264 encoding.
    """

    max_cpu_utilization: float = 0.8
    # A live 4-person 1280x720@30 grid: 0.54-0.60 core (README, bench/live_composite.py);
    # a 2-person grid of synthetic 640x480 sources 0.29. 0.7 leaves headroom for busy scenes.
    room_composite_cpu_cost: float = 0.7
    # Mixing and AAC/Opus encoding only: 0.06 core measured (4 at once, 2 publishers).
    audio_room_composite_cpu_cost: float = 0.1
    # A page in its own Chromium on Xvfb (web egress, custom templates): egresskit's capture and
    # encode took 0.27-0.46 core at 720p30 (bench/web_egress.py, on a loaded machine); the
    # page's Chromium + Xvfb + PulseAudio add 0.1 (a still page) to 0.8 (300 canvas balls),
    # which only the page decides. Raise it for busy pages.
    web_cpu_cost: float = 0.7
    # One participant's camera and microphone, composited to 720p30: 0.26 core measured
    # with a synthetic 640x480 source; real cameras cost x264 more, hence 0.4.
    participant_cpu_cost: float = 0.4
    # One video and one audio track to 720p30: 0.26 core measured, like a participant.
    track_composite_cpu_cost: float = 0.4
    # No decoding or encoding: 0.0139 core per track (README, bench/track_egress.py).
    track_cpu_cost: float = 0.02

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> CpuCosts:
        """Costs from a `cpu_cost:` mapping; ValueError names a bad or unknown key."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(map(str, unknown))}")
        costs: dict[str, float] = {}
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{key} must be a number, not {value!r}")
            number = float(value)
            if not math.isfinite(number) or number < 0:
                raise ValueError(f"{key} must be a non-negative number")
            if key == "max_cpu_utilization" and not 0 < number <= 1:
                raise ValueError("max_cpu_utilization must be above 0 and at most 1")
            costs[key] = number
        return cls(**costs)

    def of(self, spec: EgressSpec) -> float:
        """The nominal cost of a validated request."""
        source = spec.source
        template = isinstance(source, RoomCompositeSource) and source.custom_base_url
        if spec.page is not None or template:  # a browser records the page
            return self.web_cpu_cost
        if spec.kind == "room_composite":
            return (
                self.room_composite_cpu_cost if spec.video else self.audio_room_composite_cpu_cost
            )
        if spec.kind == "track":
            return self.track_cpu_cost
        if spec.kind == "participant" or (
            isinstance(source, MediaSource) and source.participant_identity
        ):
            return self.participant_cpu_cost
        return self.track_composite_cpu_cost  # track_composite, media tracks


class Admission:
    """The CPU budget of one process and the cost each running egress holds in it."""

    def __init__(self, costs: CpuCosts | None = None, cores: int | None = None) -> None:
        self.costs = costs or CpuCosts()
        self.cores = cores or os.cpu_count() or 1
        self._held: dict[str, float] = {}  # egress id -> cost

    @property
    def budget(self) -> float:
        return self.cores * self.costs.max_cpu_utilization

    @property
    def used(self) -> float:
        return sum(self._held.values())

    @property
    def available(self) -> float:
        """Cores a new egress may take now (every core while nothing runs)."""
        if not self._held:
            return float(self.cores)
        return max(0.0, self.budget - self.used)

    def __len__(self) -> int:
        """How many egresses hold a cost (those started and not yet ended)."""
        return len(self._held)

    def admit(self, egress_id: str, kind: str, cost: float) -> None:
        """Hold `cost` for the egress, or raise NotEnoughCpu saying what is left."""
        available = self.available
        if self._held and cost > available + 1e-9:
            raise NotEnoughCpu(
                f"not enough CPU for this {kind.replace('_', ' ')} egress: it needs "
                f"{cost:.2f} cores and {available:.2f} of the {self.budget:.2f} this service "
                f"may use are free ({len(self._held)} egresses running); retry later"
            )
        self._held[egress_id] = cost

    def release(self, egress_id: str) -> None:
        self._held.pop(egress_id, None)
