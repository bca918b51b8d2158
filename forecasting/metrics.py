"""Accuracy metrics for point and quantile forecasts, on arrays and on the evaluation frame.

The evaluation frame (rolling-origin backtest output) is wide: one row per (cutoff, h) with
columns ``ds`` (target time, UTC), ``cutoff`` (forecast origin, UTC), ``h`` (horizon step,
1..H), ``y`` (actual rps, NaN where the trace had no data) and, per model ``M``, the mean
forecast ``M`` and the quantile forecasts ``M-q0.5``, ``M-q0.9``, ``M-q0.95``, ``M-q0.99``.

Every metric ignores pairs in which the actual or the forecast is NaN, and is NaN (or ``None``
in the JSON-ready summary) when no pair is left. Errors (MAE, RMSE, pinball) are in the unit of
``y`` (rps); sMAPE is in percent; MASE, coverage and rates are unitless.

Pure: numpy and pandas only, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from forecasting.errors import BadInputError

QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99)
"""Quantile levels reported by default (probabilities)."""

PLANNING_QUANTILE = 0.95
"""The quantile the planner sizes capacity for; its under-prediction rate causes SLO misses."""

MIN_SCALE_PAIRS = 10
"""Fewest valid seasonal pairs for the seasonal-naive MASE scale; fewer fall back to lag 1."""


# -- on arrays -------------------------------------------------------------------------------


def _valid_pairs(y: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Actuals and forecasts as float64 1-D arrays, keeping only pairs where neither is NaN."""
    y_arr = np.asarray(y, dtype=np.float64)
    f_arr = np.asarray(f, dtype=np.float64)
    if y_arr.shape != f_arr.shape:
        raise ValueError(f"actuals {y_arr.shape} and forecasts {f_arr.shape} differ in shape")
    keep = ~(np.isnan(y_arr) | np.isnan(f_arr))
    return y_arr[keep], f_arr[keep]


def _mean_or_nan(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def mae(y: np.ndarray, f: np.ndarray) -> float:
    """Mean absolute error.

    Args:
        y: actuals (rps), any shape; NaN pairs are ignored.
        f: forecasts (rps), same shape as ``y``.

    Returns:
        Mean of ``|y - f|`` in the unit of ``y``; NaN if no valid pair.
    """
    y_ok, f_ok = _valid_pairs(y, f)
    return _mean_or_nan(np.abs(y_ok - f_ok))


def rmse(y: np.ndarray, f: np.ndarray) -> float:
    """Root mean squared error.

    Args:
        y: actuals (rps); NaN pairs are ignored.
        f: forecasts (rps), same shape as ``y``.

    Returns:
        ``sqrt(mean((y - f)^2))`` in the unit of ``y``; NaN if no valid pair.
    """
    y_ok, f_ok = _valid_pairs(y, f)
    return float(np.sqrt(_mean_or_nan((y_ok - f_ok) ** 2)))


def smape(y: np.ndarray, f: np.ndarray) -> float:
    """Symmetric mean absolute percentage error.

    Per pair ``200 * |y - f| / (|y| + |f|)``, with ``0 / 0`` (both zero, e.g. an idle service
    forecast as idle) counted as 0 error.

    Args:
        y: actuals (rps); NaN pairs are ignored.
        f: forecasts (rps), same shape as ``y``.

    Returns:
        sMAPE in percent, 0..200; NaN if no valid pair.
    """
    y_ok, f_ok = _valid_pairs(y, f)
    denominator = np.abs(y_ok) + np.abs(f_ok)
    error_pct = np.divide(
        200.0 * np.abs(y_ok - f_ok),
        denominator,
        out=np.zeros_like(denominator),
        where=denominator > 0,
    )
    return _mean_or_nan(error_pct)


def mase(y: np.ndarray, f: np.ndarray, scale: float) -> float:
    """Mean absolute scaled error: MAE divided by an in-sample naive MAE.

    Args:
        y: actuals (rps); NaN pairs are ignored.
        f: forecasts (rps), same shape as ``y``.
        scale: the in-sample naive MAE (rps), > 0; see ``seasonal_naive_scale``.

    Returns:
        ``mae(y, f) / scale``, unitless; below 1 beats the in-sample naive forecast.

    Raises:
        ValueError: ``scale`` is not a positive finite number.
    """
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"MASE scale must be a positive finite number, got {scale}")
    return mae(y, f) / float(scale)


def pinball(y: np.ndarray, q_forecast: np.ndarray, q: float) -> float:
    """Mean pinball (quantile) loss.

    Per pair ``q * (y - f)`` when ``y >= f`` (under-prediction) and ``(1 - q) * (f - y)``
    otherwise.

    Args:
        y: actuals (rps); NaN pairs are ignored.
        q_forecast: forecasts of the ``q`` quantile (rps), same shape as ``y``.
        q: quantile level, strictly between 0 and 1.

    Returns:
        Mean pinball loss in the unit of ``y``; NaN if no valid pair.

    Raises:
        ValueError: ``q`` is not in (0, 1).
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile level must be in (0, 1), got {q}")
    y_ok, f_ok = _valid_pairs(y, q_forecast)
    diff = y_ok - f_ok
    return _mean_or_nan(np.maximum(q * diff, (q - 1.0) * diff))


def coverage(y: np.ndarray, q_forecast: np.ndarray) -> float:
    """Empirical coverage of an upper quantile forecast.

    Args:
        y: actuals (rps); NaN pairs are ignored.
        q_forecast: quantile forecasts (rps), same shape as ``y``.

    Returns:
        Share of pairs with ``y <= q_forecast``, 0..1 (a calibrated q0.95 gives about 0.95);
        NaN if no valid pair.
    """
    y_ok, f_ok = _valid_pairs(y, q_forecast)
    return _mean_or_nan((y_ok <= f_ok).astype(np.float64))


def under_rate(y: np.ndarray, q_forecast: np.ndarray) -> float:
    """Under-prediction rate: the share of pairs with ``y > q_forecast``, 0..1; NaN if none."""
    y_ok, f_ok = _valid_pairs(y, q_forecast)
    return _mean_or_nan((y_ok > f_ok).astype(np.float64))


# -- MASE scale ------------------------------------------------------------------------------


def _naive_mae(values: np.ndarray, lag_steps: int) -> tuple[float, int]:
    """Mean ``|y_t - y_{t-lag}|`` over pairs without NaN, and how many pairs there were."""
    if values.size <= lag_steps:
        return float("nan"), 0
    diffs = np.abs(values[lag_steps:] - values[:-lag_steps])
    diffs = diffs[~np.isnan(diffs)]
    return _mean_or_nan(diffs), int(diffs.size)


def seasonal_naive_scale(history: pd.Series, season_steps: int) -> float:
    """In-sample MAE of the seasonal-naive forecast: the MASE denominator.

    Mean of ``|y_t - y_{t-season}|`` over the history (pairs with NaN ignored). If fewer than
    ``MIN_SCALE_PAIRS`` pairs are valid or the mean is 0 (e.g. a flat history), the lag-1 naive
    MAE is used instead (any number of valid pairs, if > 0), and failing that 1.0, so that MASE
    is always defined.

    Args:
        history: the in-sample rps history (only data up to the first cutoff, to stay
            leak-free); NaN for missing points.
        season_steps: season length in steps, >= 1 (e.g. 1440 for a daily season at 1 min).

    Returns:
        The scale in the unit of ``history`` (rps), > 0.

    Raises:
        BadInputError: ``history`` is empty or ``season_steps`` < 1.
    """
    name = history.name if history.name is not None else "history"
    if len(history) == 0:
        raise BadInputError(f"{name}: empty history, cannot compute the MASE scale")
    if season_steps < 1:
        raise BadInputError(f"{name}: season_steps must be >= 1, got {season_steps}")
    values = history.to_numpy(dtype=np.float64, na_value=np.nan)
    seasonal, pairs = _naive_mae(values, season_steps)
    if pairs >= MIN_SCALE_PAIRS and seasonal > 0:
        return seasonal
    lag1, _ = _naive_mae(values, 1)
    if lag1 > 0:  # False for NaN (no valid pair) as well as for 0
        return lag1
    return 1.0


# -- on the evaluation frame -----------------------------------------------------------------


def quantile_column(model: str, q: float) -> str:
    """Column holding a quantile forecast: ``("hybrid", 0.95)`` -> ``"hybrid-q0.95"``."""
    return f"{model}-q{q:g}"


def quantile_key(q: float) -> str:
    """JSON key of a quantile level: ``0.5`` -> ``"0.5"``, ``0.95`` -> ``"0.95"``."""
    return f"{q:g}"


def _check_columns(frame: pd.DataFrame, models: Sequence[str], quantiles: Sequence[float]) -> None:
    needed = ["ds", "cutoff", "h", "y"]
    for model in models:
        needed += [model, *(quantile_column(model, q) for q in quantiles)]
    missing = [c for c in dict.fromkeys(needed) if c not in frame.columns]
    if missing:
        raise BadInputError(f"evaluation frame: missing columns {', '.join(missing)}")


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    """One column of the frame as float64 values, missing values as NaN."""
    return frame[name].to_numpy(dtype=np.float64, na_value=np.nan)


def _json_float(value: float) -> float | None:
    """A plain float for JSON, ``None`` for NaN (strict JSON has no NaN)."""
    value = float(value)
    return None if np.isnan(value) else value


def model_metrics(
    frame: pd.DataFrame,
    models: Sequence[str],
    scale: float,
    quantiles: Sequence[float] = QUANTILES,
) -> dict[str, dict]:
    """All accuracy metrics per model over the evaluation frame, ready for ``json.dumps``.

    Args:
        frame: the evaluation frame (see the module docstring); rows with NaN ``y`` are ignored.
        models: model names; each needs its mean column and one column per quantile, plus the
            planning quantile ``M-q0.95``.
        scale: MASE denominator (rps), > 0, from ``seasonal_naive_scale`` on the history before
            the test span.
        quantiles: quantile levels for pinball loss; coverage is reported for those above 0.5.

    Returns:
        ``{model: {"mae", "rmse", "smape", "mase", "pinball": {"0.5": ..}, "coverage":
        {"0.9": ..}, "under_rate_q95"}}``. Values are plain floats (MAE, RMSE, pinball in rps;
        sMAPE in percent; the rest unitless), ``None`` when no valid pair exists.

    Raises:
        BadInputError: a needed column is missing.
    """
    _check_columns(frame, models, [*quantiles, PLANNING_QUANTILE])
    y = _column(frame, "y")
    result: dict[str, dict] = {}
    for model in models:
        mean = _column(frame, model)

        def q_values(q: float, model: str = model) -> np.ndarray:
            return _column(frame, quantile_column(model, q))

        result[model] = {
            "mae": _json_float(mae(y, mean)),
            "rmse": _json_float(rmse(y, mean)),
            "smape": _json_float(smape(y, mean)),
            "mase": _json_float(mase(y, mean, scale)),
            "pinball": {
                quantile_key(q): _json_float(pinball(y, q_values(q), q)) for q in quantiles
            },
            "coverage": {
                quantile_key(q): _json_float(coverage(y, q_values(q))) for q in quantiles if q > 0.5
            },
            "under_rate_q95": _json_float(under_rate(y, q_values(PLANNING_QUANTILE))),
        }
    return result


def by_horizon(frame: pd.DataFrame, models: Sequence[str]) -> pd.DataFrame:
    """MAE of the mean forecast per horizon step.

    Args:
        frame: the evaluation frame; rows with NaN ``y`` are ignored.
        models: model names (mean-forecast columns).

    Returns:
        Index ``h`` (steps, ascending), one column per model, MAE in rps (NaN for a step without
        valid pairs).

    Raises:
        BadInputError: a needed column is missing.
    """
    _check_columns(frame, models, [])
    y = _column(frame, "y")
    errors_rps = pd.DataFrame({model: np.abs(y - _column(frame, model)) for model in models})
    result = errors_rps.groupby(frame["h"].to_numpy()).mean()  # mean skips NaN pairs
    result.index.name = "h"
    return result.sort_index()


def coverage_by_quantile(
    frame: pd.DataFrame, models: Sequence[str], quantiles: Sequence[float] = QUANTILES
) -> pd.DataFrame:
    """Empirical coverage of each quantile forecast, to compare with its nominal level.

    Args:
        frame: the evaluation frame; rows with NaN ``y`` are ignored.
        models: model names.
        quantiles: quantile levels (probabilities).

    Returns:
        Index ``quantile`` (the nominal levels, as given), one column per model, coverage 0..1.

    Raises:
        BadInputError: a needed column is missing.
    """
    _check_columns(frame, models, quantiles)
    y = _column(frame, "y")
    table = {
        model: [coverage(y, _column(frame, quantile_column(model, q))) for q in quantiles]
        for model in models
    }
    return pd.DataFrame(table, index=pd.Index([float(q) for q in quantiles], name="quantile"))


BOOTSTRAP_RESAMPLES = 2000


def relative_error_interval(
    errors: np.ndarray,
    reference: np.ndarray,
    block: int,
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> tuple[float, float, float]:
    """How much larger one model's total absolute error is than a reference's, with a 95 %
    moving-block bootstrap interval (Kunsch 1989): blocks of ``block`` consecutive origins are
    resampled, so that errors correlated across neighbouring origins (one surge seen by several)
    are not counted as independent evidence.

    Args:
        errors, reference: per origin, the sum of absolute errors over the horizon (the same
            origins, in time order).
        block: origins per block (e.g. one hour of origins); at most a fifth of them.
        seed: seed of the resampling.

    Returns:
        (relative, low, high): sum(errors) / sum(reference) - 1 and its 2.5 % and 97.5 %
        bootstrap percentiles. An interval that holds 0 is a tie.
    """
    errors = np.asarray(errors, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    n = len(errors)
    if n == 0 or n != len(reference) or reference.sum() <= 0:
        raise BadInputError("errors: need the same non-empty origins and a non-zero reference")
    block = max(1, min(int(block), n // 5))  # at least five blocks to resample
    rng = np.random.default_rng(seed)
    starts = np.arange(n - block + 1)
    blocks = -(-n // block)
    picks = rng.choice(starts, size=(resamples, blocks))
    idx = (picks[:, :, None] + np.arange(block)).reshape(resamples, -1)[:, :n]
    ratios = errors[idx].sum(axis=1) / np.maximum(reference[idx].sum(axis=1), 1e-300) - 1.0
    relative = float(errors.sum() / reference.sum() - 1.0)
    return relative, float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


def origin_errors(frame: pd.DataFrame, model: str) -> np.ndarray:
    """Per origin (in cutoff order), the sum of the model's absolute errors over the steps that
    have an actual."""
    err = (frame[model] - frame["y"]).abs()
    return err.groupby(frame["cutoff"]).sum(min_count=0).sort_index().to_numpy(np.float64)
