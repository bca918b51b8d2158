"""The no-regret forecast gate: followed when it beats persistence, its level replaced by the
observed load when it is misled, back within the hour, and leak-free."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forecasting.trust import MIN_POINTS, WINDOW_S, PastForecast, gate

T0 = pd.Timestamp("2024-01-01T00:00:00Z")
MIN = pd.Timedelta(minutes=1)
H = 15
QS = (0.5, 0.9, 0.99)


def actual_series(minutes: int, level=lambda t: 100.0 + 0.5 * t, seed=0) -> pd.Series:
    rng = np.random.default_rng(seed)
    t = np.arange(minutes)
    return pd.Series(level(t) + rng.normal(0, 3.0, minutes), index=T0 + t * MIN)


def past_forecasts(actual: pd.Series, until: int, bias: float, every: int = 5):
    """Forecasts every ``every`` minutes up to minute ``until``: the truth plus ``bias``,
    with a spread of +-10 rps around it."""
    out = []
    for c in range(0, until, every):
        cutoff = T0 + c * MIN
        truth = actual.reindex(cutoff + MIN * np.arange(1, H + 1)).to_numpy()
        truth = np.nan_to_num(truth, nan=float(actual.iloc[c]))
        out.append(PastForecast(cutoff, float(actual.iloc[c]), 60.0, {
            0.5: truth + bias, 0.9: truth + bias + 6.0, 0.99: truth + bias + 10.0,
        }))
    return out


def now_quantiles(value: float) -> dict[float, np.ndarray]:
    return {0.5: np.full(H, value), 0.9: np.full(H, value + 6.0), 0.99: np.full(H, value + 10)}


def test_a_forecast_that_beats_persistence_is_followed_unchanged():
    actual = actual_series(200)
    now = T0 + 120 * MIN
    quantiles = now_quantiles(170.0)
    got, trust = gate(quantiles, float(actual.loc[now]), past_forecasts(actual, 120, 0.0),
                      actual, now)
    assert trust.points >= MIN_POINTS and trust.weight == 1.0
    for q in QS:
        np.testing.assert_array_equal(got[q], quantiles[q])


def test_a_forecast_misled_by_yesterday_falls_back_to_the_reactive_quantiles():
    flat = actual_series(200, level=lambda t: 100.0 + 0 * t)
    now = T0 + 120 * MIN
    observed = float(flat.loc[now])
    got, trust = gate(now_quantiles(250.0), observed, past_forecasts(flat, 120, 150.0), flat, now)
    assert trust.weight == 0.0 and trust.model_mae > 2 * trust.persistence_mae
    # the level is the observed load; the spread (the model's uncertainty) is kept
    np.testing.assert_allclose(got[0.5], observed)
    np.testing.assert_allclose(got[0.9] - got[0.5], 6.0)
    np.testing.assert_allclose(got[0.99] - got[0.5], 10.0)


def test_too_few_scored_targets_leave_the_forecast_alone():
    actual = actual_series(60)
    now = T0 + 10 * MIN
    quantiles = now_quantiles(400.0)
    got, trust = gate(quantiles, 100.0, past_forecasts(actual, 10, 150.0), actual, now)
    assert trust.points < MIN_POINTS and got[0.5][0] == 400.0


def test_the_weight_comes_back_within_the_hour_once_the_model_is_right_again():
    flat = actual_series(400, level=lambda t: 100.0 + 0 * t)
    past = past_forecasts(flat, 120, 150.0)  # misled for two hours ...
    past += [p for p in past_forecasts(flat, 300, 0.0) if p.cutoff >= T0 + 120 * MIN]
    weights = {}
    for minute in (130, 150, 170, 120 + int(WINDOW_S // 60)):
        now = T0 + minute * MIN
        weights[minute] = gate(now_quantiles(100.0), 100.0, past, flat, now)[1].weight
    assert weights[130] < 0.5
    assert weights[120 + int(WINDOW_S // 60)] == 1.0  # ... and followed again an hour later


def test_nothing_after_now_is_read():
    actual = actual_series(300)
    now = T0 + 120 * MIN
    past = past_forecasts(actual, 200, 80.0)  # includes forecasts made after now
    a = gate(now_quantiles(150.0), 160.0, past, actual, now)
    later = actual.copy()
    later.loc[now + MIN :] *= 5.0
    b = gate(now_quantiles(150.0), 160.0, past[: 120 // 5], later, now)
    for q in QS:
        np.testing.assert_array_equal(a[0][q], b[0][q])
    assert a[1] == b[1]


@pytest.mark.parametrize("bias", [20.0, 40.0])
def test_a_partly_wrong_forecast_is_partly_followed(bias):
    flat = actual_series(200, level=lambda t: 100.0 + 0 * t)
    now = T0 + 120 * MIN
    got, trust = gate(now_quantiles(100.0 + bias), 100.0, past_forecasts(flat, 120, bias), flat,
                      now)
    w = trust.weight
    assert 0.0 <= w < 1.0
    assert got[0.5][0] == pytest.approx(100.0 + w * bias)
