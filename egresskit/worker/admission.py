"""CPU-cost admission of one worker process: does this request's cost still fit?

The budget is `max_cpu_utilization` x the cores this process stands for; the
load is the cost of every egress accepted and not yet ended. livekit/egress
holds a just-accepted egress's cost for 15 s because its load is measured and
lags behind; here the load is the costs themselves, counted from the moment
of acceptance (before the room is even joined), so there is no lag to cover,
and an egress that ended frees its cost at once (back-to-back starts work).

Costs are egresskit's own (cores per egress), under livekit/egress's
`cpu_cost` key names; `estimated_cpu` in a request wins.
"""

from __future__ import annotations

from collections.abc import Mapping

from egresskit.egress.validation import EgressSpec

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


class Admission:
    """Accepted egresses' costs against one process's CPU budget."""

    def __init__(
        self,
        cores: float,
        max_utilization: float = DEFAULT_MAX_UTILIZATION,
        costs: Mapping[str, float] | None = None,
    ) -> None:
        self.budget = cores * max_utilization
        self.costs = {**DEFAULT_COSTS, **(costs or {})}
        self._accepted: dict[str, float] = {}  # egress id -> cost

    def cost(self, spec: EgressSpec, estimated_cpu: float = 0.0) -> float:
        return estimated_cpu if estimated_cpu > 0 else self.costs[cost_class(spec)]

    def load(self) -> float:
        return sum(self._accepted.values())

    def available(self) -> float:
        return max(0.0, self.budget - self.load())

    def fits(self, cost: float) -> bool:
        return self.load() + cost <= self.budget + 1e-9

    def accept(self, egress_id: str, cost: float) -> None:
        self._accepted[egress_id] = cost

    def release(self, egress_id: str) -> None:
        """The egress ended, or its start was refused: its cost is free again."""
        self._accepted.pop(egress_id, None)
