"""CPU-cost admission of one worker process: does this request's cost still fit?

The budget is `max_cpu_utilization` x the cores this process stands for. The
load is the cost of every running egress, and each accepted egress keeps its
cost for at least HOLD_S after acceptance (LiveKit's pending hold), so a burst
of requests cannot all be accepted before the first ones show any load.

Costs are egresskit's own (measured with bench/, cores per egress), under
livekit/egress's `cpu_cost` key names; `estimated_cpu` in a request wins.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from egresskit.egress.validation import EgressSpec

HOLD_S = 15.0
DEFAULT_MAX_UTILIZATION = 0.8

# livekit/egress's cpu_cost key -> egresskit's request class.
COST_KEYS = {
    "room_composite_cpu_cost": "room_composite",
    "audio_room_composite_cpu_cost": "audio_room_composite",
    "web_cpu_cost": "web",
    "audio_web_cpu_cost": "audio_web",
    "participant_cpu_cost": "participant",
    "track_composite_cpu_cost": "track_composite",
    "track_cpu_cost": "track",
}
# Cores one egress of each class uses here (720p30 H.264 composites, bench/).
DEFAULT_COSTS = {
    "room_composite": 0.7,
    "audio_room_composite": 0.1,
    "web": 0.7,
    "audio_web": 0.1,
    "participant": 0.4,
    "track_composite": 0.4,
    "track": 0.02,
}


def cost_class(spec: EgressSpec) -> str:
    """Which cost a validated request pays."""
    if spec.kind in ("room_composite", "web"):
        return spec.kind if spec.video else f"audio_{spec.kind}"
    if spec.kind == "media":
        return "participant"
    return spec.kind


@dataclass
class _Held:
    cost: float
    until: float  # monotonic time the cost is kept at least until
    running: bool = True


class Admission:
    """Running and just-accepted egresses' costs against one process's CPU budget."""

    def __init__(
        self,
        cores: float,
        max_utilization: float = DEFAULT_MAX_UTILIZATION,
        costs: Mapping[str, float] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget = cores * max_utilization
        self.costs = {**DEFAULT_COSTS, **(costs or {})}
        self._clock = clock
        self._held: dict[str, _Held] = {}

    def cost(self, spec: EgressSpec, estimated_cpu: float = 0.0) -> float:
        return estimated_cpu if estimated_cpu > 0 else self.costs[cost_class(spec)]

    def load(self) -> float:
        now = self._clock()
        for egress_id in [k for k, h in self._held.items() if not h.running and h.until <= now]:
            del self._held[egress_id]
        return sum(h.cost for h in self._held.values())

    def available(self) -> float:
        return max(0.0, self.budget - self.load())

    def fits(self, cost: float) -> bool:
        return self.load() + cost <= self.budget + 1e-9

    def accept(self, egress_id: str, cost: float) -> None:
        self._held[egress_id] = _Held(cost, self._clock() + HOLD_S)

    def cancel(self, egress_id: str) -> None:
        """The accepted egress never started (its request was refused): no hold."""
        self._held.pop(egress_id, None)

    def release(self, egress_id: str) -> None:
        """The egress ended; its cost stays counted until its hold is over."""
        held = self._held.get(egress_id)
        if held is not None:
            held.running = False
