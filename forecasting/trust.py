"""No regret: a forecast is followed only as far as it has recently beaten persistence.

Before its quantiles go to the planner, every forecast is scored against a reactive stand-in:
persistence (the load observed at each past origin) plus the quantiles of its own recent
errors (a conformal interval over the last hour only, so a spike a day ago weighs nothing).
Over the forecasts made in the last ``window_s`` whose targets have since been observed, the
model's pinball loss at each quantile is compared with the stand-in's:

    w_q = clip(2 - L_model(q) / L_reactive(q), 0, 1)

The quantile the planner gets is ``reactive_q + w_q * (model_q - reactive_q)``: the model's
when it has been at least as good as persistence, the reactive one when it has been twice as
bad or worse, in between otherwise. A forecast misled by yesterday (a quiet day after an event
day, whose day-before lags replay the event) or by an inflated calibration (a q0.99 that is
yesterday's spike) loses its weight within the hour, and the plan falls back towards what the
reactive policy underneath would do, instead of paying for a surge that is not coming. Until
``min_points`` targets are scored (the first hour), the model is followed.

Leak-free: only forecasts made before ``now`` and actuals observed up to ``now`` are read.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

WINDOW_S = 3600.0
"""Forecasts made this long before now are scored (s)."""

MIN_POINTS = 30
"""Scored targets needed before the weights move from 1."""


@dataclass(frozen=True)
class PastForecast:
    """A forecast made earlier, as the planner received it from the model (before gating).

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

    weights: dict[float, float]
    """Per quantile, the model's weight (1: followed, 0: the reactive quantile)."""
    points: int
    """Targets scored."""
    model_loss: dict[float, float]
    reactive_loss: dict[float, float]

    def to_dict(self) -> dict:
        return {
            "weights": {str(q): round(w, 3) for q, w in self.weights.items()},
            "points": self.points,
            "model_pinball": {str(q): round(v, 4) for q, v in self.model_loss.items()},
            "reactive_pinball": {str(q): round(v, 4) for q, v in self.reactive_loss.items()},
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
        quantiles: the model's forecast now (probability -> loads of steps 1..H).
        observed_rps: the load observed now.
        past: earlier forecasts (any order; those older than ``window_s`` or not before
            ``now`` are ignored).
        actual: the observed load per step (a time-indexed series; nothing after ``now`` is
            read).
        now: the time of this forecast.
    """
    actual = actual.loc[:now]
    residuals: list[float] = []
    preds: dict[float, list[float]] = {float(q): [] for q in quantiles}
    ys: list[float] = []
    naive: list[float] = []
    lookup = actual.to_dict()
    start = now - pd.Timedelta(seconds=window_s)
    for fc in past:
        if not start <= fc.cutoff < now or not math.isfinite(fc.observed_rps):
            continue
        step = pd.Timedelta(seconds=fc.step_s)
        if not all(_has(fc.quantiles, q) for q in preds):
            continue
        n = min(len(np.asarray(_get(fc.quantiles, q))) for q in preds)
        for h in range(n):
            y = lookup.get(fc.cutoff + (h + 1) * step)
            if y is None or not math.isfinite(y):
                continue
            ys.append(float(y))
            naive.append(fc.observed_rps)
            residuals.append(float(y) - fc.observed_rps)
            for q in preds:
                preds[q].append(float(np.asarray(_get(fc.quantiles, q))[h]))
    points = len(ys)
    out: dict[float, np.ndarray] = {}
    weights: dict[float, float] = {}
    model_loss: dict[float, float] = {}
    reactive_loss: dict[float, float] = {}
    y_arr = np.asarray(ys)
    naive_arr = np.asarray(naive)
    for q, loads in quantiles.items():
        q = float(q)
        model_q = np.asarray(loads, dtype=np.float64)
        if points < min_points:
            out[q] = model_q
            weights[q] = 1.0
            continue
        offset = float(np.quantile(residuals, q))
        lm = _pinball(y_arr, np.asarray(preds[q]), q)
        ln = _pinball(y_arr, naive_arr + offset, q)
        w = 1.0 if lm <= ln else float(np.clip(2.0 - lm / ln, 0.0, 1.0)) if ln > 0 else 0.0
        reactive_q = np.full_like(model_q, max(0.0, observed_rps + offset))
        out[q] = np.maximum(reactive_q + w * (model_q - reactive_q), 0.0)
        weights[q], model_loss[q], reactive_loss[q] = w, lm, ln
    # Quantiles stay ordered: a higher probability never plans for less.
    levels = sorted(out)
    for lo, hi in itertools.pairwise(levels):
        out[hi] = np.maximum(out[hi], out[lo])
    return out, Trust(weights, points, model_loss, reactive_loss)


def _pinball(y: np.ndarray, f: np.ndarray, q: float) -> float:
    diff = y - f
    return float(np.mean(np.maximum(q * diff, (q - 1.0) * diff)))


def _has(quantiles: Mapping, q: float) -> bool:
    return any(math.isclose(float(k), q) for k in quantiles)


def _get(quantiles: Mapping, q: float):
    return next(v for k, v in quantiles.items() if math.isclose(float(k), q))
