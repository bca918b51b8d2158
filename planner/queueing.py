"""Queueing delay of batch formation, and Poisson headroom (Themis; DESIGN section 4).

A replica that runs batches of ``b`` waits for ``b - 1`` more arrivals after the first request of
a batch. With Poisson arrivals at rate λ that wait is Gamma(b - 1, scale 1/λ) distributed; the
planner budgets its p99. The Gamma scale factors out: ppf(q; a, 1/λ) = ppf(q; a, 1) / λ, so the
unit ppf is computed once per batch size and divided by λ.
"""

from __future__ import annotations

import math
from functools import cache, lru_cache

import numpy as np
from scipy.stats import gamma

from planner.errors import PlannerInputError

FILL_QUANTILE = 0.99
"""The batch-fill delay is budgeted at its p99, the percentile of the latency profiles."""


@cache
def _unit_fill_s(batch: int) -> float:
    """p99 of Gamma(batch - 1, scale 1): the fill time, in seconds, at 1 request per second."""
    if batch <= 1:
        return 0.0
    return float(gamma.ppf(FILL_QUANTILE, a=batch - 1, scale=1.0))


@lru_cache(maxsize=64)
def _unit_fill_table(max_batch: int) -> np.ndarray:
    """``_unit_fill_s(b)`` for b = 1..max_batch, indexed by b - 1 (read-only)."""
    table = np.array([_unit_fill_s(b) for b in range(1, max_batch + 1)], dtype=np.float64)
    table.flags.writeable = False
    return table


def batch_fill_ms(batch: int, rps: float) -> float:
    """p99 time (ms) to fill a batch of ``batch`` requests arriving at ``rps``.

    ``1000 * gamma.ppf(0.99, a=batch - 1, scale=1/rps)``; 0 for batch 1 (nothing to wait for) and
    infinite for batch > 1 when no requests arrive.

    Raises:
        PlannerInputError: batch < 1, or rps negative or not finite.
    """
    if int(batch) != batch or batch < 1:
        raise PlannerInputError(f"batch: must be an integer >= 1, got {batch}")
    check_rps(rps, "rps")
    if batch == 1:
        return 0.0
    if rps == 0:
        return math.inf
    return 1000.0 * _unit_fill_s(int(batch)) / rps


def batch_fill_ms_array(batch: np.ndarray, rps: float) -> np.ndarray:
    """:func:`batch_fill_ms` for an integer array of batch sizes (no argument checks)."""
    batch = np.asarray(batch)
    unit = _unit_fill_table(int(batch.max()))[batch - 1]
    if rps > 0:
        with np.errstate(over="ignore"):  # a vanishing rate gives an infinite fill time
            return 1000.0 * unit / rps
    return np.where(batch == 1, 0.0, np.inf)


def headroom_rps(rps: float) -> float:
    """The load to size for: λ + √λ, one Poisson standard deviation above the rate λ."""
    check_rps(rps, "rps")
    return rps + math.sqrt(rps)


def load_within_headroom(capacity_rps: float) -> float:
    """The largest rate λ whose headroom λ + √λ fits in ``capacity_rps`` (inverse of headroom)."""
    if capacity_rps <= 0:
        return 0.0
    root = (math.sqrt(1.0 + 4.0 * capacity_rps) - 1.0) / 2.0
    return root * root


def check_rps(rps: float, what: str) -> None:
    """Raise PlannerInputError unless ``rps`` is a finite number >= 0 (``what`` names it)."""
    if not isinstance(rps, int | float | np.floating | np.integer) or not math.isfinite(rps):
        raise PlannerInputError(f"{what}: must be a finite number of requests/s, got {rps}")
    if rps < 0:
        raise PlannerInputError(f"{what}: must be >= 0, got {rps}")
