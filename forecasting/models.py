"""Forecasters: the leak-free CEEMDAN hybrid and the baselines, with conformal quantiles.

Every model follows one protocol: ``fit(history)`` learns from an RPS history (everything it is
given lies before the origin of any forecast it will make), ``forecast(history, cutoff)`` reads
only the points up to ``cutoff`` and returns a :class:`Forecast`: a mean over the horizon and the
quantiles 0.5, 0.9, 0.95, 0.99 (non-crossing, >= 0).

Quantiles are split-conformal per horizon step: ``fit`` first trains on the history minus its
last ``calibration_days``, forecasts every origin of that held-out span, keeps the residuals
(divided by the local level at the origin, since the error grows with the load), then trains
again on the whole history. A forecast adds the residual quantiles, scaled by the current level,
to its mean. Only past residuals are used, so the quantiles are leak-free too.

A model that fails to fit or predict answers with the seasonal naive forecast, and the Forecast
says so in ``fallback``.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from forecasting import DEFAULT_MODEL  # noqa: F401  (re-exported)
from forecasting.errors import BadInputError

QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99)
DEFAULT_HORIZON = 15


@dataclass(frozen=True)
class Forecast:
    """A forecast made at ``cutoff`` (DESIGN section 2).

    Attributes:
        cutoff: last observation used; nothing later was read.
        step: spacing of the horizon.
        mean: mean forecast (rps), indexed by target time cutoff + h*step, h = 1..H.
        quantiles: quantile forecasts (rps), same index, columns = probabilities; non-crossing,
            >= 0.
        model: name of the model that made it.
        fallback: why the seasonal naive forecast answered instead of ``model``, or None.
    """

    cutoff: pd.Timestamp
    step: pd.Timedelta
    mean: pd.Series
    quantiles: pd.DataFrame
    model: str
    fallback: str | None = None

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "cutoff": _iso(self.cutoff),
            "step_s": self.step.total_seconds(),
            "fallback": self.fallback,
            "ds": [_iso(t) for t in self.mean.index],
            "mean": [float(v) for v in self.mean],
            "quantiles": {
                str(q): [float(v) for v in self.quantiles[q]] for q in self.quantiles.columns
            },
        }


def _iso(ts: pd.Timestamp) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------
# history handling


def steps_per_day(step: pd.Timedelta) -> int:
    return round(pd.Timedelta(days=1) / step)


def causal_fill(values: np.ndarray) -> np.ndarray:
    """Fill NaN from the past side only where needed: interior runs linearly, a leading run with
    the first value, a trailing run with the last (all values given are before the origin)."""
    values = np.asarray(values, dtype=np.float64)
    missing = ~np.isfinite(values)
    if not missing.any():
        return values
    if missing.all():
        raise BadInputError("rps: no data in the history (all missing)")
    idx = np.arange(values.size)
    return np.interp(idx, idx[~missing], values[~missing])


def _step_of(history: pd.Series) -> pd.Timedelta:
    if len(history.index) < 2:
        raise BadInputError(f"{history.name or 'rps'}: need at least 2 points")
    step = history.index[1] - history.index[0]
    if step <= pd.Timedelta(0):
        raise BadInputError(f"{history.name or 'rps'}: timestamps must increase")
    return step


def _check_history(history: pd.Series) -> None:
    if not isinstance(history.index, pd.DatetimeIndex) or history.index.tz is None:
        raise BadInputError(f"{history.name or 'rps'}: index must be a tz-aware DatetimeIndex")
    if history.empty:
        raise BadInputError(f"{history.name or 'rps'}: empty history")


# --------------------------------------------------------------------------------------------
# the model protocol


@dataclass
class Forecaster(ABC):
    """Base class: public ``fit``/``forecast`` check and calibrate; ``_fit``/``_predict`` work.

    Attributes:
        horizon: forecast steps.
        calibration_days: held-out span at the end of the history for conformal residuals.
        calibration_every: steps between calibration origins.
        seed: seed of everything stochastic.
    """

    horizon: int = DEFAULT_HORIZON
    calibration_days: float = 1.0
    calibration_every: int = 10
    seed: int = 0
    name: str = field(default="model", init=False)

    # fitted state
    step_: pd.Timedelta | None = field(default=None, init=False, repr=False)
    season_: int = field(default=1440, init=False, repr=False)
    residuals_: np.ndarray | None = field(default=None, init=False, repr=False)
    fit_error_: str | None = field(default=None, init=False, repr=False)

    # ---- what subclasses provide
    @property
    def context_steps(self) -> int:
        """Points before the cutoff that ``_predict`` reads."""
        return self.season_ + 1

    @property
    def min_history_steps(self) -> int:
        """Points a fit needs (training + calibration)."""
        first = max(self.context_steps, self.season_ + 60)
        return first + self._calibration_steps() + self.horizon + 60

    @abstractmethod
    def _fit(self, values: np.ndarray, index: pd.DatetimeIndex) -> None:
        """Learn from gap-filled ``values`` observed at ``index``."""

    @abstractmethod
    def _predict(self, values: np.ndarray, index: pd.DatetimeIndex) -> np.ndarray:
        """Mean forecast for the ``horizon`` steps after ``index[-1]`` (rps)."""

    # ---- public API
    def fit(self, history: pd.Series) -> Forecaster:
        """Fit on ``history`` (RPS contract; NaN gaps allowed) with conformal calibration."""
        _check_history(history)
        self.step_ = _step_of(history)
        self.season_ = steps_per_day(self.step_)
        values = causal_fill(history.to_numpy(dtype=np.float64))
        if values.size < self.min_history_steps:
            raise BadInputError(
                f"{history.name or 'rps'}: history too short for {self.name}: need "
                f"{self.min_history_steps} points, have {values.size}"
            )
        index = history.index
        self.fit_error_ = None
        cal = self._calibration_steps()
        try:
            self._fit(values[:-cal], index[:-cal])
            self.residuals_ = self._calibration_residuals(values, index, cal)
            self._fit(values, index)
        except (ValueError, ArithmeticError, RuntimeError, np.linalg.LinAlgError) as exc:
            self.fit_error_ = f"{type(exc).__name__}: {exc}"
            self.residuals_ = _SeasonalNaiveCore(self.season_, self.horizon).residuals(
                values, cal, self.calibration_every
            )
        return self

    def forecast(self, history: pd.Series, cutoff: pd.Timestamp | None = None) -> Forecast:
        """Forecast the ``horizon`` steps after ``cutoff`` (default: the last point)."""
        if self.step_ is None or self.residuals_ is None:
            raise RuntimeError(f"{self.name}: call fit() before forecast()")
        _check_history(history)
        if cutoff is not None:
            history = history.loc[:cutoff]  # read nothing after the cutoff
        need = max(self.context_steps, self.season_ + 1)
        if len(history) < need:
            raise BadInputError(
                f"{history.name or 'rps'}: {self.name} needs {need} points up to the cutoff, "
                f"have {len(history)}"
            )
        recent = history.iloc[-need:]
        values = causal_fill(recent.to_numpy(dtype=np.float64))
        fallback = self.fit_error_
        mean = None
        if fallback is None:
            try:
                ctx = slice(values.size - self.context_steps, values.size)
                mean = np.asarray(self._predict(values[ctx], recent.index[ctx]), dtype=np.float64)
                if mean.shape != (self.horizon,) or not np.all(np.isfinite(mean)):
                    raise ValueError("non-finite or misshaped forecast")
            except (ValueError, ArithmeticError, RuntimeError, np.linalg.LinAlgError) as exc:
                fallback = f"{type(exc).__name__}: {exc}"
        if fallback is not None:
            mean = _SeasonalNaiveCore(self.season_, self.horizon).predict(values)
        mean = np.maximum(mean, 0.0)
        quantiles = self._quantiles(mean, values)
        target = recent.index[-1] + self.step_ * np.arange(1, self.horizon + 1)
        return Forecast(
            cutoff=recent.index[-1],
            step=self.step_,
            mean=pd.Series(mean, index=target, name="rps"),
            quantiles=pd.DataFrame(quantiles, index=target, columns=list(QUANTILES)),
            model=self.name,
            fallback=None if fallback is None else f"seasonal naive answered: {fallback}",
        )

    # ---- conformal machinery
    def _calibration_steps(self) -> int:
        return max(self.calibration_every * 12, round(self.calibration_days * self.season_))

    def _calibration_residuals(self, values: np.ndarray, index: pd.DatetimeIndex, cal: int):
        """Scaled out-of-sample residuals (origins x horizon) over the last ``cal`` points."""
        n = values.size
        rows = []
        for origin in range(n - cal, n - self.horizon, self.calibration_every):
            ctx = slice(origin + 1 - self.context_steps, origin + 1)
            pred = self._predict(values[ctx], index[ctx])
            actual = values[origin + 1 : origin + 1 + self.horizon]
            rows.append((actual - pred) / _level(values[: origin + 1]))
        return np.array(rows)

    def _quantiles(self, mean: np.ndarray, values: np.ndarray) -> np.ndarray:
        level = _level(values)
        cached = getattr(self, "_spread", None)
        if cached is None or cached[0] is not self.residuals_:
            table = np.column_stack([conformal_quantile(self.residuals_, q) for q in QUANTILES])
            cached = self._spread = (self.residuals_, table)
        out = mean[:, None] + level * cached[1]
        out = np.maximum(out, 0.0)
        return np.maximum.accumulate(out, axis=1)


EVENT_ORIGINS = 12
"""Consecutive calibration origins one event is taken to span (two hours at the default
cadence of one origin every 10 minutes)."""


def conformal_quantile(residuals: np.ndarray, q: float, block: int = EVENT_ORIGINS) -> np.ndarray:
    """Per horizon step, the split-conformal ``q`` quantile of the calibration residuals
    (origins x horizon), unless one event alone sets it.

    The finite-sample rank is ceil((n + 1) q) / n, capped at the largest residual. With one
    day of origins every 10 minutes (144), q0.99 is the largest residual, so one flash crowd
    in the calibration day would be the next day's q0.99 (and lift q0.95): every plan of that
    day would pay for a spike that has passed. So each quantile above the median is also
    computed with every run of ``block`` consecutive origins left out; where leaving one run
    out at least halves the spread above the median residual, that run was one event setting
    the quantile, and the quantile without it is used.
    Elsewhere (tails spread over the day) the quantile is the plain conformal one. The reactive
    layers, not the forecast's spread, answer spikes unlike the past.
    """
    res = np.asarray(residuals, dtype=np.float64)
    n = res.shape[0]
    rank = min(1.0, math.ceil((n + 1) * q) / n)
    plain = np.quantile(res, rank, axis=0, method="higher")
    if q <= 0.5 or n < 3 * block:
        return plain
    without = plain
    for start in range(0, n - block + 1):
        kept = np.concatenate([res[:start], res[start + block :]])
        m = kept.shape[0]
        rank = min(1.0, math.ceil((m + 1) * q) / m)
        without = np.minimum(without, np.quantile(kept, rank, axis=0, method="higher"))
    centre = np.median(res, axis=0)
    one_event = (plain - centre) > 2.0 * np.maximum(without - centre, 0.0)
    return np.where(one_event, without, plain)


def _level(values: np.ndarray) -> float:
    """Local load level that scales residuals: mean of the last hour, floored."""
    recent = values[-60:]
    return max(float(np.mean(recent)), 1e-3 * max(float(np.mean(values)), 1e-9), 1e-9)


# --------------------------------------------------------------------------------------------
# baselines


class _SeasonalNaiveCore:
    def __init__(self, season: int, horizon: int) -> None:
        self.season = season
        self.horizon = horizon

    def predict(self, values: np.ndarray) -> np.ndarray:
        n = values.size
        h = np.arange(1, self.horizon + 1)
        idx = n - 1 + h - self.season
        if idx[0] < 0:
            return np.full(self.horizon, values[-1])
        return values[idx]

    def residuals(self, values: np.ndarray, cal: int, every: int) -> np.ndarray:
        n = values.size
        rows = []
        for origin in range(n - cal, n - self.horizon, every):
            past = values[: origin + 1]
            actual = values[origin + 1 : origin + 1 + self.horizon]
            rows.append((actual - self.predict(past)) / _level(past))
        return np.array(rows)


@dataclass
class Naive(Forecaster):
    """Last value, for every step."""

    def __post_init__(self) -> None:
        self.name = "naive"

    @property
    def context_steps(self) -> int:
        return 61

    def _fit(self, values, index) -> None:
        return None

    def _predict(self, values, index) -> np.ndarray:
        return np.full(self.horizon, values[-1])


@dataclass
class SeasonalNaive(Forecaster):
    """The value one season (one day) before each target."""

    def __post_init__(self) -> None:
        self.name = "seasonal_naive"

    def _fit(self, values, index) -> None:
        return None

    def _predict(self, values, index) -> np.ndarray:
        return _SeasonalNaiveCore(self.season_, self.horizon).predict(values)


@dataclass
class ExponentialSmoothing(Forecaster):
    """statsmodels Holt's damped-trend exponential smoothing.

    ``fit`` estimates the smoothing parameters on the last ``fit_days`` of history; a forecast
    runs the smoother with those parameters over the last ``context`` points (no optimisation at
    forecast time, so the live pipeline can forecast every few minutes).
    """

    fit_days: float = 1.0
    context: int = 240

    def __post_init__(self) -> None:
        self.name = "ets"
        self.params_: dict | None = None

    @property
    def context_steps(self) -> int:
        return self.context

    def _fit(self, values, index) -> None:
        from statsmodels.tools.sm_exceptions import ConvergenceWarning
        from statsmodels.tsa.holtwinters import Holt

        span = values[-int(self.fit_days * self.season_) :]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", ConvergenceWarning)
            res = Holt(span, damped_trend=True, initialization_method="estimated").fit()
        p = res.params
        self.params_ = {
            "smoothing_level": float(p["smoothing_level"]),
            "smoothing_trend": float(p["smoothing_trend"]),
            "damping_trend": float(p["damping_trend"]),
        }

    def _predict(self, values, index) -> np.ndarray:
        return _holt_forecast(values, self.horizon, **self.params_)


def _holt_forecast(
    values: np.ndarray,
    horizon: int,
    smoothing_level: float,
    smoothing_trend: float,
    damping_trend: float,
) -> np.ndarray:
    from statsmodels.tsa.holtwinters import Holt

    with warnings.catch_warnings():
        # A flat stretch (zero error sum) makes statsmodels warn while computing AIC/BIC,
        # which a forecast does not use.
        warnings.simplefilter("ignore", RuntimeWarning)
        model = Holt(values, damped_trend=True, initialization_method="heuristic")
        res = model.fit(
            smoothing_level=smoothing_level,
            smoothing_trend=smoothing_trend,
            damping_trend=damping_trend,
            optimized=False,
        )
        return np.asarray(res.forecast(horizon), dtype=np.float64)


# --------------------------------------------------------------------------------------------
# LightGBM direct multi-horizon models


LAGS = (1, 2, 3, 5, 10, 15, 30, 60)


def _calendar(origin: pd.Timestamp, step: pd.Timedelta, horizon: int) -> np.ndarray:
    """Minute of the hour, hour of the day and day of the week of each target (rows h)."""
    seconds = origin.value // 10**9 + step.total_seconds() * np.arange(1, horizon + 1)
    minute = (seconds // 60) % 60
    hour = (seconds // 3600) % 24
    dow = (seconds // 86400 + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)
    return np.column_stack([minute, hour, dow]).astype(np.float64)


def _raw_features(values: np.ndarray, origin: int, season: int, horizon: int) -> np.ndarray:
    """Features at one origin for every step h (rows h = 1..H), free of the load's scale.

    Every feature is a change divided by the local level (the mean of the last hour), so a
    level shift (a client moving over, a traffic doubling) leaves them where the model has
    seen them. The day-before feature is yesterday's own movement: how the load moved from
    the origin's time of day to the target's, relative to yesterday's level at the origin. A
    surge yesterday is thus read as "the load rose at this time yesterday", never as "the load
    will be at yesterday's level": after event days, a quiet day is not forecast to replay the
    event. (A ratio of today's level to yesterday's was tried and dropped: it was worse on
    every validation span, and after a level shift it sits outside anything seen for a day.)
    """
    last = values[origin]
    level = _level(values[: origin + 1])
    lag_diffs = [(last - values[origin - lag]) / level for lag in LAGS]
    recent = values[origin - 14 : origin + 1]
    base = [
        last,
        float(np.std(recent)) / level,
        (float(np.max(recent)) - last) / level,
        *lag_diffs,
    ]
    h = np.arange(1, horizon + 1)
    yesterday = values[origin - season]
    before = _level(values[: origin - season + 1])
    seasonal_target = (values[origin + h - season] - yesterday) / before
    return np.column_stack(
        [np.tile(base, (horizon, 1)), h, seasonal_target]
    ).astype(np.float64)


@dataclass
class _DirectLightGBM(Forecaster):
    """A direct multi-horizon LightGBM on the change from the last value (h is a feature)."""

    train_days: float = 7.0
    train_every: int = 5
    n_estimators: int = 300

    @property
    def context_steps(self) -> int:
        return self.season_ + 1

    def _origin_features(self, values, index, origin) -> np.ndarray:
        feats = _raw_features(values, origin, self.season_, self.horizon)
        return np.column_stack([feats, _calendar(index[origin], self.step_, self.horizon)])

    def _training_origins(self, n: int) -> range:
        first = max(self.context_steps, self.season_ + 60, n - int(self.train_days * self.season_))
        return range(first, n - self.horizon, self.train_every)

    def _fit(self, values, index) -> None:
        import lightgbm as lgb

        xs, ys, ws = [], [], []
        for origin in self._training_origins(values.size):
            xs.append(self._origin_features(values, index, origin))
            scale = self._scale(values[: origin + 1])
            ys.append((values[origin + 1 : origin + 1 + self.horizon] - values[origin]) / scale)
            ws.append(np.full(self.horizon, scale))
        if not xs:
            raise ValueError("no training samples")
        params = {
            # Absolute-error objective: the point forecast is a conditional median, which is
            # what MAE and MASE reward on surge-shaped load (a mean is pulled up by the chance
            # of a surge and misses both the flat and the surge minutes).
            "objective": "regression_l1",
            "learning_rate": 0.05,
            "num_leaves": 31,
            "min_data_in_leaf": 20,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
            "feature_fraction": 0.8,
            "seed": self.seed,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": 1,
            "verbose": -1,
        }
        # Weighted by the scale, the absolute error in scaled units is the error in rps.
        data = lgb.Dataset(
            np.vstack(xs), np.concatenate(ys), weight=np.concatenate(ws), params={"verbose": -1}
        )
        self.model_ = lgb.train(params, data, num_boost_round=self.n_estimators)

    def _predict(self, values, index) -> np.ndarray:
        x = self._origin_features(values, index, values.size - 1)
        return values[-1] + self._scale(values) * self.model_.predict(x)

    def _scale(self, past: np.ndarray) -> float:
        """What the target (the change from the last value) is divided by when learnt."""
        return 1.0


@dataclass
class LightGBMLags(_DirectLightGBM):
    """LightGBM on lags and calendar features, without decomposition (a baseline).

    It learns the change over the horizon relative to the local level, from features that are
    relative too (:func:`_raw_features`), so what it learnt at one load level holds at another.
    """

    def __post_init__(self) -> None:
        self.name = "lgbm_lags"

    def _scale(self, past: np.ndarray) -> float:
        return _level(past)


@dataclass
class _ComponentLightGBM(_DirectLightGBM):
    """Direct multi-horizon LightGBM on CEEMDAN components of the trailing window.

    At every origin, training and forecasting alike, the trailing ``window`` points are
    decomposed with CEEMDAN into K IMFs + residue, so the model learns from components with the
    same end effects it sees live. Components are split by a fixed rule: a component whose mean
    period (from its zero crossings) exceeds twice the horizon completes less than half an
    oscillation before the last target, so a local damped-trend model (statsmodels Holt)
    extrapolates it; faster components oscillate within the horizon and LightGBM forecasts them
    from their end value and amplitude, with the calendar of the target.
    """

    window: int = 720
    n_imfs: int = 6
    trials: int = 20
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.name = "components"

    @property
    def context_steps(self) -> int:
        return max(self.season_ + 1, self.window)

    def _origin_features(self, values, index, origin) -> np.ndarray:
        window = values[origin + 1 - self.window : origin + 1]
        key = (index[origin], hash(window.tobytes()))
        comp = self._cache.get(key)
        if comp is None:
            comp = self._component_features(window)
            if len(self._cache) > 20000:
                self._cache.clear()
            self._cache[key] = comp
        h = np.arange(1, self.horizon + 1, dtype=np.float64)
        calendar = _calendar(index[origin], self.step_, self.horizon)
        return np.column_stack([h, calendar, np.full(self.horizon, values[origin]), comp])

    def _component_features(self, window: np.ndarray) -> np.ndarray:
        from forecasting.decomposition import CeemdanSettings, ceemdan, fixed_imfs

        if np.std(window) == 0:
            rows = np.vstack((np.zeros((self.n_imfs, window.size)), window))
        else:
            cfg = CeemdanSettings(trials=self.trials, seed=self.seed, max_imf=self.n_imfs)
            rows = fixed_imfs(ceemdan(window, cfg), self.n_imfs)
        cols = []
        for comp in rows:
            end = comp[-1]
            if _mean_period(comp) > 2 * self.horizon:
                fc = _holt_forecast(comp[-120:], self.horizon, 0.5, 0.3, 0.9) - end
            else:
                fc = np.zeros(self.horizon)
            cols.append(np.tile([end, float(np.std(comp[-60:]))], (self.horizon, 1)))
            cols.append(fc[:, None])
        return np.hstack(cols)


@dataclass
class CeemdanHybrid(Forecaster):
    """The CEEMDAN hybrid (TempoScale's idea, done leak-free).

    Two learners forecast every step of the horizon: one from the CEEMDAN components of the
    trailing window (:class:`_ComponentLightGBM`), one from raw lags and calendar features (the
    same learner as the ``lgbm_lags`` baseline). A learned combiner fuses them with one convex
    weight, fitted to the absolute error on the last ``combiner_days`` of the training span,
    which both learners did not see (they are trained before it, then refitted on everything).
    The combiner is shrunk towards the raw learner: it takes the smallest weight whose error is
    within ``combiner_tolerance`` of the best, so the components must earn their weight out of
    sample; when they add nothing the hybrid answers like the raw learner.
    """

    window: int = 720
    n_imfs: int = 6
    trials: int = 20
    train_every: int = 5
    train_days: float = 7.0
    combiner_days: float = 1.0
    combiner_tolerance: float = 0.01

    def __post_init__(self) -> None:
        self.name = "hybrid"
        self.weights_: float | None = None
        kwargs = {
            "horizon": self.horizon,
            "seed": self.seed,
            "train_every": self.train_every,
            "train_days": self.train_days,
        }
        self.raw_ = LightGBMLags(**kwargs)
        self.comp_ = _ComponentLightGBM(
            window=self.window, n_imfs=self.n_imfs, trials=self.trials, **kwargs
        )

    @property
    def context_steps(self) -> int:
        return max(self.season_ + 1, self.window)

    @property
    def min_history_steps(self) -> int:
        return super().min_history_steps + self._combiner_steps()

    def _combiner_steps(self) -> int:
        return max(self.calibration_every * 12, round(self.combiner_days * self.season_))

    def reuse_decompositions(self, previous: CeemdanHybrid) -> CeemdanHybrid:
        """Start from ``previous``'s memo of window decompositions, so that a refit on history
        that overlaps the last one decomposes only the windows it has not seen.

        The memo maps a window (its end time and its values) to its components, a pure
        function of that window for fixed window length, K, trials and seed; it is shared only
        when those agree, so the refit's result is unchanged.
        """
        same = (self.window, self.n_imfs, self.trials, self.seed) == (
            previous.window,
            previous.n_imfs,
            previous.trials,
            previous.seed,
        )
        if same:
            self.comp_._cache = previous.comp_._cache
        return self

    def _learners(self) -> tuple[_DirectLightGBM, _DirectLightGBM]:
        for learner in (self.raw_, self.comp_):
            learner.step_ = self.step_
            learner.season_ = self.season_
        return self.raw_, self.comp_

    def _fit(self, values, index) -> None:
        raw, comp = self._learners()
        split = values.size - self._combiner_steps()
        raw._fit(values[:split], index[:split])
        comp._fit(values[:split], index[:split])
        preds_raw, preds_comp, actual = [], [], []
        for origin in range(split, values.size - self.horizon, self.calibration_every):
            ctx = slice(origin + 1 - self.context_steps, origin + 1)
            preds_raw.append(raw._predict(values[ctx], index[ctx]))
            preds_comp.append(comp._predict(values[ctx], index[ctx]))
            actual.append(values[origin + 1 : origin + 1 + self.horizon])
        self.weights_ = _convex_weight(
            np.array(preds_comp), np.array(preds_raw), np.array(actual), self.combiner_tolerance
        )
        raw._fit(values, index)
        comp._fit(values, index)

    def _predict(self, values, index) -> np.ndarray:
        raw, comp = self._learners()
        w = self.weights_
        return w * comp._predict(values, index) + (1.0 - w) * raw._predict(values, index)


def _convex_weight(
    first: np.ndarray, second: np.ndarray, actual: np.ndarray, tolerance: float
) -> float:
    """The weight w in [0, 1] (grid of 0.05) on ``first`` for ``w * first + (1 - w) * second``:
    the smallest whose mean absolute error is within ``tolerance`` (relative) of the best."""
    grid = np.linspace(0.0, 1.0, 21)
    errors = np.array([np.mean(np.abs(w * first + (1 - w) * second - actual)) for w in grid])
    return float(grid[np.argmax(errors <= errors.min() * (1.0 + tolerance))])


def _mean_period(comp: np.ndarray) -> float:
    centred = comp - comp.mean()
    crossings = int(np.count_nonzero(centred[:-1] * centred[1:] < 0))
    return math.inf if crossings < 2 else 2.0 * comp.size / crossings


ADAPTIVE_MEMBERS: tuple[str, ...] = ("naive", "seasonal_naive", "ets", "lgbm_lags")
"""The models :class:`Adaptive` weighs, in this order (the columns of its error record)."""


@dataclass
class Adaptive(Forecaster):
    """Weighs naive, seasonal naive, ETS and LightGBM by their recent out-of-sample errors.

    At every forecast, each member's forecasts made at earlier origins (one every
    ``score_every`` steps over the last ``lookback`` steps, all after the members' fit, so out
    of sample) are scored against what has been observed since: the absolute error of every
    realised step, divided by the load level at its origin, averaged with weights that halve
    every ``half_life`` steps of the target's age. The combination weighs each member by the
    inverse square of that score; a member scoring worse than ``cutoff`` times the best gets
    no weight (in the spirit of inverse-MSE forecast combination, Bates and Granger 1969,
    made local in time). A member misled by yesterday (an event day's seasonal lag, a level
    shift) loses its weight as soon as a few of its forecasts have been scored, within the
    hour.

    Right after a fit no live origin is scored yet, so ``fit`` trains the members on all but
    the last ``prior_steps`` of the history, records their errors on that held-out span (the
    prior, ageing like any other score) and trains them again on everything.

    Only points up to the cutoff are read: a score uses a target only once it is observed.
    """

    half_life: int = 720
    shock_half_life: int = 15
    shock: float = 2.5
    lookback: int = 720
    score_every: int = 5
    prior_steps: int = 720
    cutoff: float = 1.05
    train_days: float = 7.0
    train_every: int = 5

    def __post_init__(self) -> None:
        self.name = "adaptive"
        self.members_: dict[str, Forecaster] = {
            "naive": Naive(horizon=self.horizon, seed=self.seed),
            "seasonal_naive": SeasonalNaive(horizon=self.horizon, seed=self.seed),
            "ets": ExponentialSmoothing(horizon=self.horizon, seed=self.seed),
            "lgbm_lags": LightGBMLags(
                horizon=self.horizon,
                seed=self.seed,
                train_days=self.train_days,
                train_every=self.train_every,
            ),
        }
        self.fit_end_: int | None = None  # ns of the last point the members were trained on
        self.prior_times_: np.ndarray = np.zeros(0, dtype=np.int64)
        self.prior_errors_: np.ndarray = np.zeros((0, len(ADAPTIVE_MEMBERS)))
        self._memo: dict = {}

    def _members(self) -> dict[str, Forecaster]:
        for member in self.members_.values():
            member.step_ = self.step_
            member.season_ = self.season_
        return self.members_

    @property
    def _member_context(self) -> int:
        return max(m.context_steps for m in self._members().values())

    @property
    def context_steps(self) -> int:
        return self._member_context + self.lookback + 1

    @property
    def min_history_steps(self) -> int:
        return super().min_history_steps + self.prior_steps

    def _fit_members(self, values, index) -> None:
        for member in self._members().values():
            member._fit(values, index)
        self.fit_end_ = int(index[-1].value)

    def _fit(self, values, index) -> None:
        split = values.size - self.prior_steps
        self._fit_members(values[:split], index[:split])
        times, errors = [], []
        ctx = self._member_context
        for origin in range(split, values.size - 1, self.score_every):
            preds = self._member_predictions(values, index, origin, ctx)
            t, e = self._realised(values, index, origin, values.size - 1, preds)
            times.append(t)
            errors.append(e)
        self.prior_times_ = np.concatenate(times) if times else np.zeros(0, dtype=np.int64)
        self.prior_errors_ = (
            np.vstack(errors) if errors else np.zeros((0, len(ADAPTIVE_MEMBERS)))
        )
        self._memo = {}
        self._fit_members(values, index)

    def _member_predictions(self, values, index, origin: int, ctx: int) -> np.ndarray:
        """Every member's forecast at ``origin`` (members x horizon), memoised by the origin's
        time and the values the members read."""
        window = values[origin + 1 - ctx : origin + 1]
        key = (int(index[origin].value), self.fit_end_, hash(window.tobytes()))
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        span = index[origin + 1 - ctx : origin + 1]
        rows = []
        for member in self._members().values():
            m = member.context_steps
            rows.append(np.asarray(member._predict(window[-m:], span[-m:]), dtype=np.float64))
        preds = np.vstack(rows)
        if len(self._memo) > 50_000:
            self._memo.clear()
        self._memo[key] = preds
        return preds

    def _realised(self, values, index, origin: int, end: int, preds: np.ndarray):
        """Target times and scaled absolute errors (steps x members) of the forecasts made
        at ``origin`` whose targets are observed by ``end``."""
        steps = min(self.horizon, end - origin)
        actual = values[origin + 1 : origin + 1 + steps]
        level = _level(values[: origin + 1])
        errors = np.abs(preds[:, :steps] - actual).T / level
        times = index[origin + 1 : origin + 1 + steps].as_unit("ns").asi8
        return times, errors

    def weights(self, values: np.ndarray, index: pd.DatetimeIndex) -> np.ndarray:
        """The members' weights for a forecast made after ``index[-1]`` (sums to 1)."""
        ctx = self._member_context
        end = values.size - 1
        step_ns = int(self.step_.value)
        times, errors = [], []
        first = max(ctx - 1, end - self.lookback)
        for origin in range(first, end):
            stamp = int(index[origin].value)
            if stamp <= self.fit_end_ or (stamp // step_ns) % self.score_every:
                continue
            preds = self._member_predictions(values, index, origin, ctx)
            t, e = self._realised(values, index, origin, end, preds)
            times.append(t)
            errors.append(e)
        horizon_start = int(index[end].value) - self.lookback * step_ns
        old = self.prior_times_ >= horizon_start
        times.append(self.prior_times_[old])
        errors.append(self.prior_errors_[old])
        times = np.concatenate(times)
        errors = np.vstack(errors)
        if times.size == 0:
            return np.full(len(self.members_), 1.0 / len(self.members_))
        age = (int(index[end].value) - times) / step_ns
        # Each step's errors relative to the members' mean error at that step: a minute in
        # which every member missed (a flash crowd) does not decide the weights for a day.
        errors = errors / np.maximum(errors.mean(axis=1, keepdims=True), 1e-9)
        long, short = (
            (d @ errors) / d.sum()
            for d in (0.5 ** (age / self.half_life), 0.5 ** (age / self.shock_half_life))
        )
        # A member whose last minutes went badly wrong (shock x the best member's recent error)
        # is set aside at once, however good its long record: it is misled by now.
        shocked = short > self.shock * max(float(np.min(short)), 1e-12)
        return _inverse_square_weights(np.where(shocked, np.inf, long), self.cutoff)

    def member_weights(self, history: pd.Series, cutoff: pd.Timestamp) -> dict[str, float]:
        """The weight of each member in the forecast made at ``cutoff`` (reads nothing later)."""
        if self.step_ is None or self.fit_end_ is None:
            raise RuntimeError(f"{self.name}: call fit() before member_weights()")
        recent = history.loc[:cutoff].iloc[-self.context_steps :]
        if len(recent) < self.context_steps:
            raise BadInputError(
                f"{history.name or 'rps'}: {self.name} needs {self.context_steps} points up "
                f"to the cutoff, have {len(recent)}"
            )
        values = causal_fill(recent.to_numpy(dtype=np.float64))
        w = self.weights(values, recent.index)
        return {name: float(x) for name, x in zip(ADAPTIVE_MEMBERS, w, strict=True)}

    def _predict(self, values, index) -> np.ndarray:
        w = self.weights(values, index)
        preds = self._member_predictions(values, index, values.size - 1, self._member_context)
        return w @ preds


def _inverse_square_weights(score: np.ndarray, cutoff: float) -> np.ndarray:
    """Weights proportional to score**-2 among the scores within ``cutoff`` x the best."""
    best = float(np.min(score))
    if not np.isfinite(best):  # every score is infinite or NaN
        raise ValueError("non-finite member scores")
    floor = max(best, 1e-12)
    kept = score <= cutoff * floor
    with np.errstate(divide="ignore"):
        inv = np.where(kept, (floor / np.maximum(score, floor)) ** 2, 0.0)
    return inv / inv.sum()


MODELS: dict[str, type[Forecaster]] = {
    "naive": Naive,
    "seasonal_naive": SeasonalNaive,
    "ets": ExponentialSmoothing,
    "lgbm_lags": LightGBMLags,
    "hybrid": CeemdanHybrid,
    "adaptive": Adaptive,
}
BASELINES: tuple[str, ...] = ("naive", "seasonal_naive", "ets", "lgbm_lags")


def make_model(name: str, **kwargs) -> Forecaster:
    """A fresh, unfitted model by registered name."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise BadInputError(f"model: unknown {name!r}; choose from {', '.join(MODELS)}") from None
    return cls(**kwargs)
