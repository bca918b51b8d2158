"""A lower bound on core-hours: perfect knowledge, the optimal shape every second, no cold start.

Every second of the span gets the cheapest replicas x cores x batch per stage that carries that
second's arrivals within the SLO (Themis's horizontal DP, :func:`planner.dp.horizontal`, sized
for the load itself, without the √λ headroom), paid for that second only. It knows the future
exactly, changes shape instantly (no cold start, no resize time, no stabilisation), never runs
a core it does not need, and changes the batch size at will (running pods cannot). A policy
that keeps every second within its ready capacity at the SLO cannot spend less; one that lets
requests miss the SLO can, and the report shows its violations beside its cost.

This replaces the comparison with surgecast fed the true future (``perfect-forecast``), which is
a policy, not a bound: it pays for cold starts, guards and a 5-minute cadence, so surgecast can
beat it on cost.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from planner.dp import horizontal
from planner.profiles import Pipeline

INTERVAL_S = 1
"""The bound's interval: the simulator's resolution (the finest any policy could act at)."""


@dataclass(frozen=True)
class LowerBound:
    """The bound over a span."""

    core_hours: float
    """Core-hours of the per-second optimal shapes."""
    peak_cores: int
    """The most cores any second needs."""
    infeasible_seconds: int
    """Seconds no shape within the replica bound carries at the SLO (billed at the most the
    bound allows; 0 on any span the bounds were sized for)."""
    interval_s: int = INTERVAL_S

    def to_json(self) -> dict:
        return {**asdict(self), "core_hours": round(self.core_hours, 3)}


def lower_bound(
    arrivals: np.ndarray, pipeline: Pipeline, slo_ms: float, *, max_replicas: int | None = None
) -> LowerBound:
    """The bound for per-second ``arrivals`` (requests in each second of the span).

    Arrivals are counts, so a span has few distinct values: each is solved once.
    """
    counts = np.asarray(arrivals, dtype=np.float64)
    values, inverse = np.unique(counts, return_inverse=True)
    cores = np.empty(len(values))
    feasible = np.empty(len(values), dtype=bool)
    for i, value in enumerate(values):
        decision = horizontal(
            pipeline, float(value), slo_ms, max_replicas=max_replicas, headroom=False
        )
        cores[i] = decision.cost_cores
        feasible[i] = decision.feasible
    per_second = cores[inverse]
    return LowerBound(
        core_hours=float(per_second.sum()) * INTERVAL_S / 3600.0,
        peak_cores=int(per_second.max(initial=0)),
        infeasible_seconds=int((~feasible[inverse]).sum()),
    )
