"""Forecasters: the shared contract, leak-freedom, determinism, bad input and fallbacks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forecasting.errors import BadInputError
from forecasting.evaluation import rolling_origin, select_model
from forecasting.models import (
    MODELS,
    QUANTILES,
    Forecast,
    causal_fill,
    conformal_quantile,
    make_model,
)

# Synthetic 5-minute series keep the tests fast: one season (day) is 288 steps.
STEP = pd.Timedelta(minutes=5)
HORIZON = 6
SMALL = {
    "hybrid": {"window": 576, "trials": 5, "n_imfs": 4, "train_every": 12},
    "adaptive": {"lookback": 144, "prior_steps": 144, "half_life": 144, "score_every": 2},
}


def synthetic(days: float = 6.0, seed: int = 0) -> pd.Series:
    n = int(days * 288)
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    daily = 50 + 30 * np.sin(2 * np.pi * t / 288)
    surges = 80.0 * ((t % 72) < 3)  # a short surge every 6 hours
    values = np.maximum(daily + surges + rng.normal(0, 3, n), 0)
    index = pd.date_range("2024-03-04", periods=n, freq=STEP, tz="UTC")
    return pd.Series(values, index=index, name="rps")


def model(name: str, **kwargs):
    return make_model(
        name, horizon=HORIZON, calibration_every=6, **{**SMALL.get(name, {}), **kwargs}
    )


@pytest.fixture(scope="module")
def series() -> pd.Series:
    return synthetic()


@pytest.fixture(scope="module")
def fitted(series: pd.Series) -> dict:
    cutoff = series.index[-200]
    return {name: model(name).fit(series.loc[:cutoff]) for name in MODELS}


@pytest.mark.parametrize("name", list(MODELS))
def test_contract(name: str, series: pd.Series, fitted: dict) -> None:
    cutoff = series.index[-100]
    fc = fitted[name].forecast(series, cutoff=cutoff)
    assert isinstance(fc, Forecast)
    assert fc.model == name and fc.fallback is None
    assert fc.cutoff == cutoff and fc.step == STEP
    expected = pd.date_range(cutoff + STEP, periods=HORIZON, freq=STEP)
    assert fc.mean.index.equals(expected) and fc.quantiles.index.equals(expected)
    assert list(fc.quantiles.columns) == list(QUANTILES)
    q = fc.quantiles.to_numpy()
    assert np.all(np.isfinite(q)) and np.all(q >= 0)
    assert np.all(np.diff(q, axis=1) >= 0), "quantiles cross"
    assert np.all(fc.mean.to_numpy() >= 0)
    assert fc.to_dict()["quantiles"]["0.95"] == pytest.approx(list(fc.quantiles[0.95]))


@pytest.mark.parametrize("name", list(MODELS))
def test_leak_free(name: str, series: pd.Series, fitted: dict) -> None:
    """Perturbing any value after the cutoff leaves the forecast made there unchanged."""
    cutoff = series.index[-100]
    before = fitted[name].forecast(series, cutoff=cutoff)
    tampered = series.copy()
    later = tampered.index > cutoff
    tampered[later] = np.random.default_rng(5).uniform(0, 1e5, later.sum())
    tampered.iloc[-10:] = np.nan
    after = fitted[name].forecast(tampered, cutoff=cutoff)
    pd.testing.assert_series_equal(before.mean, after.mean, check_exact=True)
    pd.testing.assert_frame_equal(before.quantiles, after.quantiles, check_exact=True)
    # Fitting on the history up to the cutoff does not depend on what comes after it either.
    refit = model(name).fit(tampered.loc[: series.index[-200]])
    again = refit.forecast(tampered, cutoff=cutoff)
    pd.testing.assert_series_equal(before.mean, again.mean, check_exact=True)


def test_rolling_origin_is_leak_free(series: pd.Series) -> None:
    kwargs = {"every": 24, "refit_every": pd.Timedelta(days=1), "horizon": HORIZON}
    start, end = series.index[-420], series.index[-20]
    names = ["naive", "seasonal_naive", "ets"]
    base = rolling_origin(series, names, test_start=start, test_end=end, **kwargs)
    first_day = base.frame["cutoff"] < base.refits[1]
    tampered = series.copy()
    tampered[tampered.index > base.frame.loc[first_day, "cutoff"].max()] *= 7.0
    other = rolling_origin(tampered, names, test_start=start, test_end=end, **kwargs)
    cols = names + [f"{n}-q{q}" for n in names for q in QUANTILES]
    pd.testing.assert_frame_equal(
        base.frame.loc[first_day, cols], other.frame.loc[first_day, cols], check_exact=True
    )
    assert list(base.frame.columns[:4]) == ["ds", "cutoff", "h", "y"]
    assert len(base.frame) == len(base.frame["cutoff"].unique()) * HORIZON
    best, reason = select_model(base.calibration_mae)
    assert best in names and best in reason


@pytest.mark.parametrize("name", ["lgbm_lags", "hybrid"])
def test_deterministic(name: str, series: pd.Series) -> None:
    cutoff = series.index[-150]
    a = model(name).fit(series.loc[:cutoff]).forecast(series, cutoff=cutoff)
    b = model(name).fit(series.loc[:cutoff]).forecast(series, cutoff=cutoff)
    pd.testing.assert_frame_equal(a.quantiles, b.quantiles, check_exact=True)
    c = model(name, seed=1).fit(series.loc[:cutoff]).forecast(series, cutoff=cutoff)
    assert not np.array_equal(a.quantiles.to_numpy(), c.quantiles.to_numpy())


@pytest.mark.parametrize("name", list(MODELS))
def test_too_short_history_is_refused(name: str, series: pd.Series) -> None:
    with pytest.raises(BadInputError, match="too short") as err:
        model(name).fit(series.iloc[:300])
    assert "\n" not in str(err.value)


def test_all_gaps_is_refused(series: pd.Series) -> None:
    empty = pd.Series(np.nan, index=series.index, name="rps")
    with pytest.raises(BadInputError, match="no data"):
        model("naive").fit(empty)


@pytest.mark.parametrize("name", list(MODELS))
def test_constant_series_gives_the_constant(name: str, series: pd.Series) -> None:
    """Documented behaviour: a constant load is forecast as that constant, with zero-width bands."""
    flat = pd.Series(42.0, index=series.index, name="rps")
    fc = model(name).fit(flat.iloc[:-50]).forecast(flat)
    np.testing.assert_allclose(fc.mean, 42.0)
    np.testing.assert_allclose(fc.quantiles.to_numpy(), 42.0)


@pytest.mark.parametrize("name", list(MODELS))
def test_huge_spike_gives_a_sane_forecast(name: str, series: pd.Series) -> None:
    spiky = series.copy()
    spiky.iloc[-30] = 1e7
    fc = model(name).fit(spiky.iloc[:-20]).forecast(spiky)
    q = fc.quantiles.to_numpy()
    assert np.all(np.isfinite(q)) and np.all(q >= 0) and np.all(np.diff(q, axis=1) >= 0)


def test_failing_model_falls_back_to_seasonal_naive(series: pd.Series) -> None:
    broken = model("ets").fit(series.iloc[:-100])

    def fail(values, index):
        raise RuntimeError("solver diverged")

    broken._predict = fail
    fc = broken.forecast(series, cutoff=series.index[-100])
    assert fc.fallback is not None and "solver diverged" in fc.fallback
    reference = model("seasonal_naive").fit(series.iloc[:-100])
    expected = reference.forecast(series, cutoff=series.index[-100])
    np.testing.assert_allclose(fc.mean, expected.mean)


def test_causal_fill_uses_only_the_given_past() -> None:
    filled = causal_fill(np.array([np.nan, 1.0, np.nan, 3.0, np.nan, np.nan]))
    np.testing.assert_array_equal(filled, [1.0, 1.0, 2.0, 3.0, 3.0, 3.0])


def test_unknown_model_is_refused() -> None:
    with pytest.raises(BadInputError, match="unknown 'prophet'"):
        make_model("prophet")


def test_combiner_weight_prefers_the_raw_learner_unless_components_earn_it() -> None:
    from forecasting.models import _convex_weight

    actual = np.arange(20.0).reshape(10, 2)
    good = actual + 0.1
    bad = actual + 5.0
    assert _convex_weight(good, bad, actual, 0.01) == 1.0  # the components are much better
    assert _convex_weight(bad, good, actual, 0.01) == 0.0  # they are much worse
    # Nearly equal: the smallest weight within the tolerance wins (shrunk to the raw learner).
    assert _convex_weight(actual + 1.0, actual + 1.005, actual, 0.01) == 0.0


def test_hybrid_combiner_weight_is_fitted(series: pd.Series, fitted: dict) -> None:
    weight = fitted["hybrid"].weights_
    assert 0.0 <= weight <= 1.0


def test_a_hybrid_refit_that_reuses_decompositions_gives_the_same_model(
    series: pd.Series, fitted: dict
) -> None:
    """Sharing the memo of window decompositions between refits is a pure speed-up."""
    later = series.index[-150]
    cold = model("hybrid").fit(series.loc[:later])
    warm = model("hybrid").reuse_decompositions(fitted["hybrid"])
    seen = len(warm.comp_._cache)
    warm.fit(series.loc[:later])
    assert seen > 0 and len(warm.comp_._cache) > seen  # reused, then extended
    cutoff = series.index[-120]
    a, b = cold.forecast(series, cutoff=cutoff), warm.forecast(series, cutoff=cutoff)
    pd.testing.assert_series_equal(a.mean, b.mean)
    pd.testing.assert_frame_equal(a.quantiles, b.quantiles)
    # Different decomposition settings never share the memo.
    other = model("hybrid", trials=6).reuse_decompositions(fitted["hybrid"])
    assert other.comp_._cache is not fitted["hybrid"].comp_._cache


def _plain_conformal(res: np.ndarray, q: float) -> np.ndarray:
    n = res.shape[0]
    return np.quantile(res, min(1.0, np.ceil((n + 1) * q) / n), axis=0, method="higher")


def test_conformal_quantile_is_the_plain_one_when_no_single_event_sets_it() -> None:
    rng = np.random.default_rng(3)
    res = rng.normal(0.0, 0.2, size=(144, 15))
    for q in QUANTILES:
        np.testing.assert_array_equal(conformal_quantile(res, q), _plain_conformal(res, q))


def test_one_spike_in_the_calibration_day_does_not_set_the_next_days_quantiles() -> None:
    rng = np.random.default_rng(4)
    res = rng.normal(0.0, 0.1, size=(144, 15))
    spiked = res.copy()
    spiked[70:73] += 30.0  # a 30x flash crowd over three origins (half an hour)
    q99 = conformal_quantile(spiked, 0.99)
    assert np.all(_plain_conformal(spiked, 0.99) > 10)  # the plain q0.99 is the spike
    assert np.all(q99 < 1.0)
    # ... and stays close to what the day without the spike gives (a little lower: leaving an
    # hour out also leaves out the ordinary residuals in it)
    assert np.all(np.abs(q99 - _plain_conformal(res, 0.99)) < 0.2)


def test_events_in_several_blocks_are_the_tail_and_stay() -> None:
    rng = np.random.default_rng(5)
    res = rng.normal(0.0, 0.1, size=(144, 15))
    res[[5, 40, 75, 110, 140]] += 5.0  # five surges through the day: the trace's own tail
    q99 = conformal_quantile(res, 0.99)
    np.testing.assert_array_equal(q99, _plain_conformal(res, 0.99))
    assert np.all(q99 > 4.0)


def test_a_spike_before_a_refit_leaves_the_next_days_spread_as_without_it(
    series: pd.Series,
) -> None:
    spiked = series.copy()
    at = len(spiked) - 600  # inside the calibration day, ten hours before its end
    spiked.iloc[at : at + 20] *= 30.0
    plain = make_model("seasonal_naive").fit(series).forecast(series)
    after = make_model("seasonal_naive").fit(spiked).forecast(spiked)
    spread = lambda f: (f.quantiles[0.99] - f.quantiles[0.5]).to_numpy()  # noqa: E731
    assert np.all(spread(after) <= 1.5 * spread(plain) + 1e-9)
