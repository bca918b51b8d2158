"""The adaptive forecaster: weights that follow recent out-of-sample errors, and recovery after
the regime shifts of ``forecasting.stress`` (event days, a level shift, a flash crowd)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forecasting import stress
from forecasting.errors import BadInputError
from forecasting.evaluation import rolling_origin
from forecasting.model_state import dump_state, load_state, state_files, state_from_files
from forecasting.models import ADAPTIVE_MEMBERS, make_model

STEP = pd.Timedelta(minutes=5)
SMALL = {
    "horizon": 6,
    "calibration_every": 6,
    "lookback": 144,
    "prior_steps": 144,
    "half_life": 144,
    "score_every": 2,
    "shock_half_life": 3,  # 15 minutes at this 5-minute step
}


def periodic(days: int = 7, seed: int = 0) -> pd.Series:
    """A load that repeats every day (a daily wave and a surge at the same times each day)
    with little noise: the day before is the best forecast, so seasonal naive earns weight."""
    n = days * 288
    t = np.arange(n)
    daily = 60 + 30 * np.sin(2 * np.pi * t / 288)
    surges = 90.0 * ((t % 288 % 72) < 4)
    noise = np.random.default_rng(seed).normal(0, 0.5, n)
    index = pd.date_range("2024-03-04", periods=n, freq=STEP, tz="UTC")
    return pd.Series(daily + surges + noise, index=index, name="rps")


def test_a_member_misled_by_yesterday_loses_its_weight_within_the_hour() -> None:
    series = periodic()
    quiet_day = series.index[-1].normalize()
    stressed, t0 = stress.event_then_quiet(series, quiet_day, start="10:00", hours=8)
    model = make_model("adaptive", **SMALL).fit(stressed.loc[: quiet_day - STEP])
    before = model.member_weights(stressed, t0 - STEP)
    assert before["seasonal_naive"] > 0.5, before  # the day before is right until the event
    # Yesterday's event does not come today: seasonal naive replays it from t0 on.
    after = model.member_weights(stressed, t0 + pd.Timedelta(minutes=60))
    assert after["seasonal_naive"] == 0.0, after
    assert sum(after.values()) == pytest.approx(1.0)
    # ... and the forecast an hour in is not yesterday's event.
    fc = model.forecast(stressed, cutoff=t0 + pd.Timedelta(minutes=60))
    actual = stressed.reindex(fc.mean.index)
    event = stressed.loc[t0 - pd.Timedelta(days=1)] - series.loc[t0 - pd.Timedelta(days=1)]
    assert float(np.abs(fc.mean - actual).max()) < 0.2 * event


def test_weights_read_nothing_after_the_cutoff() -> None:
    series = periodic()
    model = make_model("adaptive", **SMALL).fit(series.iloc[:-300])
    cutoff = series.index[-120]
    tampered = series.copy()
    tampered[tampered.index > cutoff] = 1e6
    assert model.member_weights(series, cutoff) == model.member_weights(tampered, cutoff)


def test_every_member_has_a_weight_that_sums_to_one_and_is_stored_with_the_model() -> None:
    series = periodic(seed=1)
    model = make_model("adaptive", **SMALL).fit(series.iloc[:-200])
    weights = model.member_weights(series, series.index[-100])
    assert list(weights) == list(ADAPTIVE_MEMBERS)
    assert all(w >= 0 for w in weights.values()) and sum(weights.values()) == pytest.approx(1)
    state = dump_state(model)
    again = load_state(state_from_files(state.doc, state_files(state)))
    assert again.member_weights(series, series.index[-100]) == weights
    a = model.forecast(series, cutoff=series.index[-100])
    b = again.forecast(series, cutoff=series.index[-100])
    np.testing.assert_array_equal(a.quantiles.to_numpy(), b.quantiles.to_numpy())


def test_a_prior_that_does_not_fit_the_model_is_refused() -> None:
    from forecasting.model_state import ModelStateError

    model = make_model("adaptive", **SMALL).fit(periodic().iloc[:-200])
    state = dump_state(model)
    files = state_files(state)
    bad = state.prior.copy()
    bad[0, 1] = -1.0
    import io

    buf = io.BytesIO()
    np.save(buf, bad, allow_pickle=False)
    with pytest.raises(ModelStateError, match=r"prior\.npy: ages and errors"):
        load_state(state_from_files(state.doc, {**files, "prior.npy": buf.getvalue()}))
    with pytest.raises(ModelStateError, match=r"prior\.npy: must be a float64"):
        load_state(state_from_files(state.doc, {k: v for k, v in files.items()
                                                if k != "prior.npy"}))


# --------------------------------------------------------------------------------------------
# recovery on a real trace


@pytest.mark.parametrize("kind", ["event_then_quiet", "level_shift", "flash_crowd"])
def test_after_a_regime_shift_the_adaptive_forecast_recovers_within_an_hour(
    kind: str, twitter_1min: pd.Series
) -> None:
    """From one hour after the change, over the next five hours, the adaptive forecaster's
    error is within 15 % of the naive forecast's (the forecast that cannot be misled by the
    past), although before the change it forecasts like its LightGBM member."""
    rps = twitter_1min
    day = rps.index[-1].normalize() - pd.Timedelta(days=1)
    if kind == "event_then_quiet":
        stressed, t0 = stress.event_then_quiet(rps, day)
    elif kind == "level_shift":
        stressed, t0 = stress.level_shift(rps, day + pd.Timedelta(hours=10))
    else:
        stressed, t0 = stress.flash_crowd(rps, day + pd.Timedelta(hours=10, minutes=7))
    hour = pd.Timedelta(hours=1)
    # fitted an hour before the change (as a daily refit would be), scored from an hour after
    ev = rolling_origin(
        stressed.loc[: t0 + 7 * hour], ["naive", "adaptive"], test_start=t0 - hour,
        test_end=t0 + 6 * hour, every=5, refit_every=pd.Timedelta(days=10), horizon=15,
    )
    frame = ev.frame[ev.frame["cutoff"] >= t0 + hour].dropna(subset=["y"])
    mae = {m: float(np.mean(np.abs(frame[m] - frame["y"]))) for m in ("naive", "adaptive")}
    assert mae["adaptive"] <= 1.15 * mae["naive"], mae


def test_stress_refuses_a_time_outside_the_series(twitter_1min: pd.Series) -> None:
    with pytest.raises(BadInputError, match="not inside the series"):
        stress.level_shift(twitter_1min, pd.Timestamp("2030-01-01", tz="UTC"))
    with pytest.raises(BadInputError, match="not inside the series"):
        stress.flash_crowd(twitter_1min, twitter_1min.index[0])


def test_stress_changes_only_what_it_says(twitter_1min: pd.Series) -> None:
    rps = twitter_1min
    day = rps.index[-1].normalize() - pd.Timedelta(days=1)
    stressed, t0 = stress.event_then_quiet(rps, day, event_days=2, hours=8)
    changed = stressed.index[(stressed != rps) & rps.notna()]
    assert changed.min() == t0 - pd.Timedelta(days=2)
    assert changed.max() == t0 - pd.Timedelta(days=1) + pd.Timedelta(hours=8) - rps.index.freq
    assert stressed.loc[day:].equals(rps.loc[day:])  # the quiet day is the real one
    shifted, at = stress.level_shift(rps, day)
    assert np.allclose(shifted.loc[at:].dropna(), 1.8 * rps.loc[at:].dropna())
    assert shifted.loc[: at - rps.index.freq].equals(rps.loc[: at - rps.index.freq])


def test_the_rolling_origin_evaluation_records_the_weights_at_every_origin() -> None:
    series = periodic(seed=2)
    start = series.index[-150]
    ev = rolling_origin(
        series, ["naive", "adaptive"], test_start=start, test_end=series.index[-10], every=20,
        horizon=6, refit_every=pd.Timedelta(days=10),
        model_kwargs={"adaptive": {k: v for k, v in SMALL.items() if k != "horizon"}},
    )
    weights = ev.member_weights
    assert list(weights.columns) == list(ADAPTIVE_MEMBERS)
    assert list(weights.index) == sorted(ev.frame["cutoff"].unique())
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
