"""Rolling-origin evaluation: forecasts at origins across a test span, refits on a cadence.

Every refit sees only the data up to its origin, every forecast only the data up to its cutoff,
so the evaluation is leak-free by construction. The output has the shape of statsforecast's
``cross_validation``: rows ``ds, cutoff, h, y`` and per model ``M``, ``M-q0.5`` ... ``M-q0.99``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from forecasting.errors import BadInputError
from forecasting.models import QUANTILES, Adaptive, Forecaster, make_model

ONE_DAY = pd.Timedelta(days=1)


@dataclass
class Evaluation:
    """What a rolling-origin run produced.

    Attributes:
        frame: one row per (cutoff, h): ds, cutoff, h, y, and per model its mean and quantiles.
        models: model names, in column order.
        refits: origins at which the models were refitted.
        fallbacks: per model, how many forecasts the seasonal naive fallback answered.
        calibration_mae: per model, mean absolute calibration residual at the last refit before
            the first origin (scaled by level; out of sample, past only): the selection score.
        fit_errors: per model, the error of any failed fit.
        hybrid_weights: the hybrid's combiner weight on its component learner at each refit.
        member_weights: the adaptive model's member weights at each origin (rows: cutoffs,
            columns: members); empty without an adaptive model.
    """

    frame: pd.DataFrame
    models: list[str]
    refits: list[pd.Timestamp] = field(default_factory=list)
    fallbacks: dict[str, int] = field(default_factory=dict)
    calibration_mae: dict[str, float] = field(default_factory=dict)
    fit_errors: dict[str, str] = field(default_factory=dict)
    hybrid_weights: list[float] = field(default_factory=list)
    member_weights: pd.DataFrame = field(default_factory=pd.DataFrame)


def quantile_column(model: str, q: float) -> str:
    return f"{model}-q{q}"


def rolling_origin(
    history: pd.Series,
    model_names: Sequence[str],
    *,
    test_start: pd.Timestamp,
    test_end: pd.Timestamp,
    every: int = 5,
    refit_every: pd.Timedelta = ONE_DAY,
    horizon: int = 15,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    model_kwargs: dict[str, dict] | None = None,
) -> Evaluation:
    """Forecast at origins ``test_start, test_start + every*step, ... <= test_end``.

    Args:
        history: the whole RPS series (gaps as NaN); ``y`` for scoring is read from it.
        model_names: registered model names (see ``forecasting.models.MODELS``).
        test_start, test_end: first and last origin (tz-aware UTC).
        every: steps between origins.
        refit_every: refit cadence; the first refit is at the first origin.
        horizon: steps per forecast.
        seed: seed of every model.
        progress: called with (origins done, origins total).
        model_kwargs: per model name, extra settings for its constructor.
    """
    if history.empty:
        raise BadInputError(f"{history.name or 'rps'}: empty history")
    step = history.index[1] - history.index[0]
    origins = history.loc[test_start:test_end].index[::every]
    if len(origins) == 0:
        raise BadInputError(
            f"{history.name or 'rps'}: no origin between {test_start} and {test_end}"
        )
    models: dict[str, Forecaster] = {
        name: make_model(name, horizon=horizon, seed=seed, **(model_kwargs or {}).get(name, {}))
        for name in model_names
    }
    result = Evaluation(frame=pd.DataFrame(), models=list(model_names))
    result.fallbacks = dict.fromkeys(model_names, 0)
    rows: list[dict] = []
    weights: dict[pd.Timestamp, dict[str, float]] = {}
    last_refit: pd.Timestamp | None = None
    for i, origin in enumerate(origins):
        if last_refit is None or origin - last_refit >= refit_every:
            past = history.loc[:origin]
            for name, model in models.items():
                model.fit(past)
                if model.fit_error_:
                    result.fit_errors[name] = model.fit_error_
                if name == "hybrid" and getattr(model, "weights_", None) is not None:
                    result.hybrid_weights.append(float(model.weights_))
                if last_refit is None:
                    result.calibration_mae[name] = float(np.mean(np.abs(model.residuals_)))
            result.refits.append(origin)
            last_refit = origin
        targets = origin + step * np.arange(1, horizon + 1)
        actual = history.reindex(targets).to_numpy(dtype=np.float64)
        block = {
            "ds": targets,
            "cutoff": np.repeat(origin, horizon),
            "h": np.arange(1, horizon + 1),
            "y": actual,
        }
        for name, model in models.items():
            fc = model.forecast(history, cutoff=origin)
            if fc.fallback is not None:
                result.fallbacks[name] += 1
            block[name] = fc.mean.to_numpy()
            if isinstance(model, Adaptive) and fc.fallback is None:
                weights[origin] = model.member_weights(history, origin)
            for q in QUANTILES:
                block[quantile_column(name, q)] = fc.quantiles[q].to_numpy()
        rows.append(pd.DataFrame(block))
        if progress is not None:
            progress(i + 1, len(origins))
    result.frame = pd.concat(rows, ignore_index=True)
    if weights:
        result.member_weights = pd.DataFrame.from_dict(weights, orient="index")
    return result


def select_model(calibration_mae: dict[str, float]) -> tuple[str, str]:
    """The model with the lowest out-of-sample calibration error, and a sentence saying why."""
    ranked = sorted(calibration_mae.items(), key=lambda kv: kv[1])
    best, score = ranked[0]
    others = ", ".join(f"{name} {value:.4f}" for name, value in ranked[1:])
    reason = (
        f"{best} had the lowest mean absolute error on the held-out calibration day before the "
        f"first origin (scaled by load level: {score:.4f}; {others}); this uses past data only."
    )
    return best, reason
