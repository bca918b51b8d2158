"""No regret: a forecast's level is followed only as far as it has recently beaten persistence.

Before its quantiles go to the planner, every forecast is scored against persistence (the load
observed at each past origin, the reactive policy's implicit forecast). Over the forecasts made
in the last ``window_s`` whose targets have since been observed, the model's mean absolute
error (of its median) is compared with persistence's:

    w = clip(2 - MAE_model / MAE_persistence, 0, 1)

and the whole forecast distribution is moved towards the observed load by ``1 - w`` of its
level error: ``q' = q - (1 - w) * (median - observed)``. A model at least as good as
persistence is followed unchanged; one twice as bad or worse keeps its spread (its calibrated
uncertainty) around the observed load instead of its own level. A forecast misled by
yesterday (a quiet day after an event day, whose day-before lags replay the event) thus loses
its level within the hour, and the plan falls back towards what the reactive policy underneath
would do instead of paying for a surge that is not coming. Until ``min_points`` targets are
scored (the first hour), the model is followed.

Leak-free: only forecasts made before ``now`` and actuals observed up to ``now`` are read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

WINDOW_S = 3600.0
"""Forecasts made this long before now are scored (s)."""

MIN_POINTS = 30
"""Scored targets needed before the weight moves from 1."""


@dataclass(frozen=True)
class PastForecast:
    """A forecast made earlier, as the model made it (before gating).

    Attributes:
        cutoff: the last observed step when it was made.
        observed_rps: the load observed at the cutoff (persistence's forecast).
        step_s: its step (s).
        quantiles: per probability, the model's loads for steps 1..H after the cutoff.
    """

    cutoff: pd.Timestamp
    observed_rps: float
    step_s: float
    quantiles: Mapping[float, np.ndarray]


@dataclass(frozen=True)
class Trust:
    """What the gate decided for one forecast."""

    weight: float
    """The model's weight (1: followed, 0: its level replaced by the observed load)."""
    points: int
    """Targets scored."""
    model_mae: float | None = None
    persistence_mae: float | None = None

    def to_dict(self) -> dict:
        return {
            "weight": round(self.weight, 3),
            "points": self.points,
            "model_mae": None if self.model_mae is None else round(self.model_mae, 4),
            "persistence_mae": (
                None if self.persistence_mae is None else round(self.persistence_mae, 4)
            ),
        }


def gate(
    quantiles: Mapping[float, np.ndarray],
    observed_rps: float,
    past: Sequence[PastForecast],
    actual: pd.Series,
    now: pd.Timestamp,
    *,
    window_s: float = WINDOW_S,
    min_points: int = MIN_POINTS,
) -> tuple[dict[float, np.ndarray], Trust]:
    """The quantiles to plan with, and why.

    Args:
        quantiles: the model's forecast now (probability -> loads of steps 1..H); its 0.5
            quantile is the level.
        observed_rps: the load observed now.
        past: earlier forecasts (any order; those older than ``window_s`` or not before
            ``now`` are ignored, as are those without a 0.5 quantile).
        actual: the observed load per step (a time-indexed series; nothing after ``now`` is
            read).
        now: the time of this forecast.
    """
    actual = actual.loc[:now]
    lookup = actual.to_dict()
    start = now - pd.Timedelta(seconds=window_s)
    model_err: list[float] = []
    naive_err: list[float] = []
    for fc in past:
        if not start <= fc.cutoff < now or not math.isfinite(fc.observed_rps):
            continue
        if not _has(fc.quantiles, 0.5):
            continue
        median = np.asarray(_get(fc.quantiles, 0.5), dtype=np.float64)
        step = pd.Timedelta(seconds=fc.step_s)
        for h, pred in enumerate(median):
            y = lookup.get(fc.cutoff + (h + 1) * step)
            if y is None or not math.isfinite(y):
                continue
            model_err.append(abs(float(pred) - y))
            naive_err.append(abs(fc.observed_rps - y))
    points = len(model_err)
    out = {float(q): np.asarray(v, dtype=np.float64) for q, v in quantiles.items()}
    if points < min_points or not _has(quantiles, 0.5):
        return out, Trust(1.0, points)
    lm, ln = float(np.mean(model_err)), float(np.mean(naive_err))
    if lm <= ln:
        w = 1.0
    else:
        w = float(np.clip(2.0 - lm / ln, 0.0, 1.0)) if ln > 0 else 0.0
    if w < 1.0:
        level = np.asarray(_get(quantiles, 0.5), dtype=np.float64)
        shift = (1.0 - w) * (level - observed_rps)
        out = {q: np.maximum(v - shift, 0.0) for q, v in out.items()}
    return out, Trust(w, points, lm, ln)


def _has(quantiles: Mapping, q: float) -> bool:
    return any(math.isclose(float(k), q) for k in quantiles)


def _get(quantiles: Mapping, q: float):
    return next(v for k, v in quantiles.items() if math.isclose(float(k), q))
