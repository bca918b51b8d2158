"""Tests for forecasting.metrics: known answers worked out by hand on tiny arrays."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from forecasting.errors import BadInputError
from forecasting.metrics import (
    by_horizon,
    coverage,
    coverage_by_quantile,
    mae,
    mase,
    model_metrics,
    pinball,
    rmse,
    seasonal_naive_scale,
    smape,
    under_rate,
)

NAN = float("nan")
T0 = pd.Timestamp("2024-01-01T00:00:00Z")


def history(values) -> pd.Series:
    index = pd.date_range(T0, periods=len(values), freq="1min")
    return pd.Series(np.asarray(values, dtype="float64"), index=index, name="rps")


# -- array metrics ---------------------------------------------------------------------------


def test_mae_and_rmse_known_answer():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    f = np.array([2.0, 2.0, 1.0, 4.0])  # errors 1, 0, 2, 0
    assert mae(y, f) == pytest.approx(3 / 4)
    assert rmse(y, f) == pytest.approx(np.sqrt(5 / 4))


def test_smape_counts_zero_over_zero_as_no_error():
    y = np.array([0.0, 0.0, 100.0, 50.0])
    f = np.array([0.0, 10.0, 100.0, 150.0])
    # per pair: 0/0 -> 0; 200*10/10 = 200; 0; 200*100/200 = 100
    assert smape(y, f) == pytest.approx((0 + 200 + 0 + 100) / 4)


def test_smape_stays_within_0_and_200_percent():
    rng = np.random.default_rng(0)
    y = rng.uniform(0, 10, 200) * (rng.uniform(size=200) > 0.2)
    f = rng.uniform(0, 10, 200) * (rng.uniform(size=200) > 0.2)
    assert 0.0 <= smape(y, f) <= 200.0


def test_mase_is_mae_over_scale():
    y = np.array([10.0, 20.0])
    f = np.array([12.0, 16.0])  # MAE 3
    assert mase(y, f, 2.0) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="scale"):
        mase(y, f, 0.0)


def test_pinball_known_answer():
    y = np.array([10.0, 10.0])
    f = np.array([8.0, 13.0])
    # q = 0.9: under by 2 -> 0.9 * 2 = 1.8; over by 3 -> 0.1 * 3 = 0.3; mean 1.05
    assert pinball(y, f, 0.9) == pytest.approx(1.05)
    # q = 0.5 is half the absolute error
    assert pinball(y, f, 0.5) == pytest.approx(0.5 * mae(y, f))
    with pytest.raises(ValueError, match="quantile level"):
        pinball(y, f, 1.0)


def test_coverage_counts_equality_as_covered():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    q = np.array([1.0, 3.0, 2.0, 3.0])  # covered, covered, under, under
    assert coverage(y, q) == pytest.approx(0.5)
    assert under_rate(y, q) == pytest.approx(0.5)


def test_nan_pairs_are_ignored_by_every_metric():
    y = np.array([1.0, NAN, 3.0, 5.0])
    f = np.array([2.0, 7.0, NAN, 5.0])  # valid pairs: (1, 2), (5, 5)
    assert mae(y, f) == pytest.approx(0.5)
    assert rmse(y, f) == pytest.approx(np.sqrt(0.5))
    assert smape(y, f) == pytest.approx(200 * 1 / 3 / 2)
    assert pinball(y, f, 0.9) == pytest.approx(0.1 * 1 / 2)
    assert coverage(y, f) == pytest.approx(1.0)


def test_no_valid_pair_gives_nan():
    y = np.array([NAN, 1.0])
    f = np.array([1.0, NAN])
    for value in (mae(y, f), rmse(y, f), smape(y, f), coverage(y, f), pinball(y, f, 0.5)):
        assert np.isnan(value)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shape"):
        mae(np.zeros(3), np.zeros(4))


# -- seasonal_naive_scale --------------------------------------------------------------------


def test_seasonal_scale_known_answer():
    # season 2: y_t - y_{t-2} alternates +1, +3 -> mean 2 over 12 pairs
    values = [0.0, 0.0]
    for _ in range(6):
        values += [values[-2] + 1, values[-1] + 3]
    assert seasonal_naive_scale(history(values), 2) == pytest.approx(2.0)


def test_seasonal_scale_ignores_nan_pairs():
    values = np.arange(20, dtype=float) * 2.0  # |y_t - y_{t-1}| = 2 everywhere
    values[5] = NAN
    assert seasonal_naive_scale(history(values), 1) == pytest.approx(2.0)


def test_too_few_seasonal_pairs_fall_back_to_lag_1():
    # 12 points, season 5 -> 7 pairs < 10: lag-1 scale |diff| = 3
    values = np.arange(12, dtype=float) * 3.0
    assert seasonal_naive_scale(history(values), 5) == pytest.approx(3.0)


def test_zero_seasonal_scale_falls_back_to_lag_1():
    # a perfectly periodic series: seasonal differences are all 0, lag-1 differences are 4
    values = np.tile([0.0, 4.0], 10)
    assert seasonal_naive_scale(history(values), 2) == pytest.approx(4.0)


def test_flat_or_single_point_history_falls_back_to_one():
    assert seasonal_naive_scale(history([5.0] * 30), 7) == 1.0
    assert seasonal_naive_scale(history([5.0]), 7) == 1.0
    assert seasonal_naive_scale(history([NAN, NAN, NAN]), 1) == 1.0


def test_empty_history_is_refused():
    with pytest.raises(BadInputError, match="empty history") as err:
        seasonal_naive_scale(history([]), 1440)
    assert "\n" not in str(err.value)


# -- on the evaluation frame -----------------------------------------------------------------


def tiny_frame() -> pd.DataFrame:
    """Two origins x H = 2, one model "m"; the last row has no actual."""
    cutoffs = [T0, T0, T0 + pd.Timedelta("1min"), T0 + pd.Timedelta("1min")]
    frame = pd.DataFrame(
        {
            "ds": [c + pd.Timedelta(minutes=h) for c, h in zip(cutoffs, [1, 2, 1, 2], strict=True)],
            "cutoff": cutoffs,
            "h": [1, 2, 1, 2],
            "y": [10.0, 20.0, 20.0, NAN],
            "m": [11.0, 16.0, 20.0, 99.0],
        }
    )
    frame["m-q0.5"] = frame["m"]
    frame["m-q0.9"] = [12.0, 18.0, 21.0, 99.0]
    frame["m-q0.95"] = [13.0, 21.0, 22.0, 99.0]
    frame["m-q0.99"] = [14.0, 22.0, 23.0, 99.0]
    return frame


def test_model_metrics_known_answer_and_keys():
    result = model_metrics(tiny_frame(), ["m"], scale=2.0)
    m = result["m"]
    assert list(m) == ["mae", "rmse", "smape", "mase", "pinball", "coverage", "under_rate_q95"]
    assert list(m["pinball"]) == ["0.5", "0.9", "0.95", "0.99"]
    assert list(m["coverage"]) == ["0.9", "0.95", "0.99"]
    # valid rows: errors 1, 4, 0 (the NaN row with its wild forecast is ignored)
    assert m["mae"] == pytest.approx(5 / 3)
    assert m["rmse"] == pytest.approx(np.sqrt(17 / 3))
    assert m["mase"] == pytest.approx(5 / 6)
    # q0.9 forecasts 12, 18, 21 vs 10, 20, 20: over 2 (0.1*2), under 2 (0.9*2), over 1 (0.1*1)
    assert m["pinball"]["0.9"] == pytest.approx((0.2 + 1.8 + 0.1) / 3)
    assert m["coverage"]["0.9"] == pytest.approx(2 / 3)
    assert m["coverage"]["0.95"] == pytest.approx(1.0)
    assert m["under_rate_q95"] == pytest.approx(0.0)


def test_model_metrics_round_trips_through_strict_json():
    frame = tiny_frame()
    frame["empty"] = NAN  # a model with no valid pair: its metrics are None, not NaN
    for q in (0.5, 0.9, 0.95, 0.99):
        frame[f"empty-q{q:g}"] = NAN
    result = model_metrics(frame, ["m", "empty"], scale=2.0)
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    assert result["empty"]["mae"] is None
    assert all(type(v) is float for v in (result["m"]["mae"], result["m"]["pinball"]["0.99"]))


def test_model_metrics_names_missing_columns():
    frame = tiny_frame().drop(columns=["m-q0.95"])
    with pytest.raises(BadInputError, match=r"missing columns m-q0\.95"):
        model_metrics(frame, ["m"], scale=1.0)


def test_by_horizon_is_mae_per_step():
    table = by_horizon(tiny_frame(), ["m"])
    assert table.index.name == "h"
    assert list(table.index) == [1, 2]
    assert list(table.columns) == ["m"]
    assert table.loc[1, "m"] == pytest.approx(0.5)  # errors 1 and 0
    assert table.loc[2, "m"] == pytest.approx(4.0)  # error 4; the NaN row is ignored


def test_coverage_by_quantile_matches_coverage():
    frame = tiny_frame()
    table = coverage_by_quantile(frame, ["m"], (0.5, 0.9, 0.99))
    assert table.index.name == "quantile"
    assert list(table.index) == [0.5, 0.9, 0.99]
    assert table.loc[0.5, "m"] == pytest.approx(2 / 3)  # 11 >= 10, 16 < 20, 20 >= 20
    assert table.loc[0.9, "m"] == pytest.approx(2 / 3)
    assert table.loc[0.99, "m"] == pytest.approx(1.0)
