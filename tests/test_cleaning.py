"""Tests for forecasting.cleaning: contract checks, resampling and leak-free gap filling."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forecasting.cleaning import (
    CleanWindow,
    clean_window,
    infer_step,
    resample_mean,
    validate_rps,
)
from forecasting.errors import BadInputError
from surgecast.offline.sources import bundled_trace, load_rps_csv

SHARED_TRACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "traces"
T0 = pd.Timestamp("2024-01-01T00:00:00Z")


def series(values, *, start: pd.Timestamp = T0, step: str = "1min") -> pd.Series:
    index = pd.date_range(start, periods=len(values), freq=step)
    return pd.Series(np.asarray(values, dtype="float64"), index=index, name="rps")


def refused(fn, *args, **kwargs) -> str:
    """The one-line message of the BadInputError that ``fn`` raises."""
    with pytest.raises(BadInputError) as err:
        fn(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


# -- infer_step ------------------------------------------------------------------------------


def test_infer_step_is_the_most_common_difference():
    index = pd.DatetimeIndex(
        ["2024-01-01T00:00Z", "2024-01-01T00:01Z", "2024-01-01T00:02Z", "2024-01-01T00:05Z"]
    )
    assert infer_step(index) == pd.Timedelta("1min")


def test_infer_step_needs_two_points():
    assert "need at least 2 timestamps" in refused(infer_step, pd.DatetimeIndex([T0]))


# -- resample_mean ---------------------------------------------------------------------------


def test_resample_anchors_bins_at_whole_minutes():
    # 10 s data starting at 00:00:05: bins [00:00, 00:01), [00:01, 00:02), ...
    rps = series(np.arange(18.0), start=T0 + pd.Timedelta("5s"), step="10s")
    out = resample_mean(rps, "1min", "test")
    assert list(out.index) == [T0, T0 + pd.Timedelta("1min"), T0 + pd.Timedelta("2min")]
    np.testing.assert_allclose(out.to_numpy(), [2.5, 8.5, 14.5])
    assert out.name == "rps" and out.dtype == np.float64


def test_resample_skips_nan_and_marks_empty_bins():
    values = [1, np.nan, 3, np.nan, np.nan, np.nan, 5, 7, 9]
    out = resample_mean(series(values, step="20s"), pd.Timedelta("1min"), "test")
    np.testing.assert_array_equal(out.to_numpy(), [2.0, np.nan, 7.0])


def test_resample_to_the_native_step_is_the_identity():
    rps = series([1.0, np.nan, 3.0])
    pd.testing.assert_series_equal(resample_mean(rps, "1min", "test"), rps)


@pytest.mark.parametrize(
    ("step", "problem"),
    [
        ("5s", "step 5 s is finer than the native step 10 s"),
        ("15s", "step 15 s is not a whole multiple of the native step 10 s"),
        ("0s", "step must be a positive duration"),
        ("often", "cannot parse step 'often'"),
    ],
)
def test_resample_refuses_bad_steps(step, problem):
    rps = series([1.0, 2.0, 3.0], step="10s")
    message = refused(resample_mean, rps, step, "svc-a")
    assert message.startswith("svc-a: ")
    assert problem in message


# -- contract checks -------------------------------------------------------------------------


def contract_breakers() -> dict[str, tuple[pd.Series, str]]:
    good = series([1.0, 2.0, 3.0, 4.0])
    index = good.index
    return {
        "int_dtype": (good.astype("int64"), "values must be float"),
        "naive_index": (good.tz_localize(None), "index has no time zone"),
        "non_utc_index": (good.tz_convert("Europe/London"), "time zone Europe/London, not UTC"),
        "not_datetime": (good.reset_index(drop=True), "index must be a DatetimeIndex"),
        "unsorted": (
            good.set_axis(index[[0, 2, 1, 3]]),
            "not strictly increasing at position 2 "
            "(2024-01-01T00:01:00Z after 2024-01-01T00:02:00Z)",
        ),
        "duplicate": (
            good.set_axis(index[[0, 1, 1, 2]]),
            "duplicate timestamp at position 2 (2024-01-01T00:01:00Z, same as position 1)",
        ),
        "irregular": (
            good.set_axis(index[:3].append(pd.DatetimeIndex([T0 + pd.Timedelta("150s")]))),
            "not regular at the 1 min step",
        ),
        "negative": (series([1.0, -0.5, 3.0, 4.0]), "negative rps -0.5 at 2024-01-01T00:01:00Z"),
        "infinite": (series([1.0, np.inf, 3.0, 4.0]), "infinite rps inf at 2024-01-01T00:01:00Z"),
    }


@pytest.mark.parametrize("case", sorted(contract_breakers()))
def test_contract_breakers_are_refused(case):
    rps, problem = contract_breakers()[case]
    for fn in (validate_rps, clean_window):
        kwargs = {"window_steps": 4} if fn is clean_window else {}
        message = refused(fn, rps, source="svc-a", **kwargs)
        assert message.startswith("svc-a: ")
        assert problem in message


def test_other_utc_tzinfos_are_accepted():
    rps = series([1.0, 2.0]).tz_convert(dt.UTC)
    assert validate_rps(rps) == pd.Timedelta("1min")


# -- clean_window: refusals ------------------------------------------------------------------


def test_history_too_short():
    rps = series(np.ones(10))
    message = refused(
        clean_window, rps, end=T0 + pd.Timedelta("5min"), window_steps=8, source="svc-a"
    )
    assert message == (
        "svc-a: history too short: need 8 points of 1 min up to 2024-01-01T00:05:00Z, have 6"
    )


def test_end_before_the_first_point():
    message = refused(
        clean_window, series(np.ones(5)), end=T0 - pd.Timedelta("1min"), window_steps=2
    )
    assert "end 2023-12-31T23:59:00Z is before the first point 2024-01-01T00:00:00Z" in message


def test_end_after_the_last_point():
    message = refused(clean_window, series(np.ones(5)), end=T0 + pd.Timedelta("1h"), window_steps=2)
    assert "end 2024-01-01T01:00:00Z is after the last point 2024-01-01T00:04:00Z" in message


@pytest.mark.parametrize(
    ("end", "problem"),
    [
        (pd.Timestamp("2024-01-01T00:03:00"), "has no time zone"),
        (pd.Timestamp("2024-01-01T02:03:00+02:00"), "not UTC"),
    ],
)
def test_end_must_be_utc(end, problem):
    assert problem in refused(clean_window, series(np.ones(5)), end=end, window_steps=2)


def test_long_gap_is_refused_naming_start_and_length():
    values = np.ones(20)
    values[5:9] = np.nan
    message = refused(clean_window, series(values), window_steps=20, max_gap_steps=3, source="s")
    assert message.startswith("s: gap of 4 missing points (4 min) from 2024-01-01T00:05:00Z")
    assert "to 2024-01-01T00:08:00Z" in message
    assert "longer than max_gap_steps=3" in message


def test_gap_of_exactly_max_gap_steps_is_filled():
    values = np.ones(20)
    values[5:8] = np.nan
    cleaned = clean_window(series(values), window_steps=20, max_gap_steps=3)
    assert cleaned.filled_points == 3
    assert cleaned.longest_gap_steps == 3


def test_all_nan_window_is_refused():
    values = np.r_[np.ones(5), np.full(5, np.nan)]
    message = refused(clean_window, series(values), window_steps=4, max_gap_steps=10, source="s")
    assert message.startswith("s: no data in the window of 4 points of 1 min ending")
    assert "all NaN from 2024-01-01T00:06:00Z" in message


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"window_steps": 0}, "window_steps must be an integer >= 1"),
        ({"window_steps": 3, "max_gap_steps": -1}, "max_gap_steps must be an integer >= 0"),
    ],
)
def test_bad_window_arguments(kwargs, problem):
    assert problem in refused(clean_window, series(np.ones(5)), **kwargs)


# -- clean_window: filling -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected", "longest"),
    [
        ([1, np.nan, np.nan, 4], [1, 2, 3, 4], 2),  # interior: linear
        ([np.nan, np.nan, 3, 5], [3, 3, 3, 5], 2),  # touching the start: first valid value
        ([1, 2, np.nan, np.nan], [1, 2, 2, 2], 2),  # touching the end: carried forward
        ([np.nan, 2, np.nan, 4, np.nan], [2, 2, 3, 4, 4], 1),
        ([1, 2, 3, 4], [1, 2, 3, 4], 0),
    ],
)
def test_known_fills(values, expected, longest):
    cleaned = clean_window(series(values), window_steps=len(values))
    assert isinstance(cleaned, CleanWindow)
    np.testing.assert_array_equal(cleaned.rps.to_numpy(), expected)
    assert cleaned.filled_points == int(np.isnan(values).sum())
    assert cleaned.longest_gap_steps == longest
    assert cleaned.rps.name == "rps" and cleaned.rps.dtype == np.float64


def test_window_is_the_trailing_points_at_or_before_end():
    rps = series(np.arange(10.0))
    cleaned = clean_window(rps, end=T0 + pd.Timedelta("6min30s"), window_steps=3)
    assert list(cleaned.rps) == [4.0, 5.0, 6.0]
    assert cleaned.rps.index[-1] == T0 + pd.Timedelta("6min")


def test_default_end_is_the_last_point():
    cleaned = clean_window(series(np.arange(10.0)), window_steps=4)
    assert list(cleaned.rps) == [6.0, 7.0, 8.0, 9.0]


def test_nothing_after_end_leaks_into_the_window():
    rng = np.random.default_rng(0)
    values = rng.uniform(10, 100, 200)
    values[[50, 51, 52, 97, 98, 99]] = np.nan  # an interior gap and a gap ending at `end`
    end = T0 + pd.Timedelta("99min")
    before = clean_window(series(values), end=end, window_steps=80)
    changed = values.copy()
    changed[100:] = rng.uniform(1000, 2000, 100)  # a huge future
    changed[100:103] = np.nan
    changed[150] = -5.0  # even values that would be refused
    changed[160] = np.inf
    after = clean_window(series(changed), end=end, window_steps=80)
    pd.testing.assert_series_equal(before.rps, after.rps)
    assert before.filled_points == after.filled_points == 6
    # The trailing gap is carried forward from 96 min, not interpolated towards the future.
    assert after.rps.iloc[-3:].tolist() == [values[96]] * 3


def test_twitter_day_with_the_daily_gap_is_filled():
    rps = load_rps_csv(bundled_trace("twitter_1min.csv"))
    end = pd.Timestamp("2024-01-03T00:00:00Z")
    cleaned = clean_window(rps, end=end, window_steps=1440, source="twitter_1min.csv")
    assert len(cleaned.rps) == 1440
    assert cleaned.rps.index[-1] == end
    assert not cleaned.rps.isna().any()
    # 29 minutes of the 23:31-23:59 daily gap plus a short archive gap.
    assert 25 <= cleaned.filled_points <= 31
    assert 28 <= cleaned.longest_gap_steps <= 30


def test_nasa_window_ending_in_the_july_outage_is_refused():
    path = SHARED_TRACES / "nasa_http_1995_1min.csv"
    if not path.exists():
        pytest.skip(f"shared trace folder absent ({SHARED_TRACES.name}): NASA is not bundled")
    rps = load_rps_csv(path)
    message = refused(
        clean_window,
        rps,
        end=pd.Timestamp("1995-07-29T00:00:00Z"),
        window_steps=1440,
        source=str(path),
    )
    assert message.startswith(f"{path}: gap of 389 missing points")
    assert "from 1995-07-28T17:32:00Z" in message
    assert "longer than max_gap_steps=60" in message


# -- property test ---------------------------------------------------------------------------

MAX_GAP = 6


@st.composite
def gappy_series(draw) -> tuple[np.ndarray, int]:
    """Non-negative values with NaN runs of at most MAX_GAP, at least one valid value."""
    n = draw(st.integers(min_value=2, max_value=120))
    values = np.array(
        draw(
            st.lists(
                st.floats(min_value=0, max_value=1e6, allow_nan=False),
                min_size=n,
                max_size=n,
            )
        )
    )
    starts = draw(st.lists(st.integers(0, n - 1), max_size=10))
    for start in starts:
        length = draw(st.integers(1, MAX_GAP))
        values[start : start + length] = np.nan
    # Runs may merge; split any run longer than MAX_GAP with a valid point.
    run = 0
    for i in range(n):
        run = run + 1 if np.isnan(values[i]) else 0
        if run > MAX_GAP:
            values[i] = draw(st.floats(min_value=0, max_value=1e6))
            run = 0
    if np.isnan(values).all():
        values[draw(st.integers(0, n - 1))] = 1.0
    window_steps = draw(st.integers(1, n))
    return values, window_steps


@settings(max_examples=200, deadline=None)
@given(gappy_series())
def test_cleaning_fills_every_gap_and_keeps_every_valid_value(case):
    values, window_steps = case
    rps = series(values)
    tail = values[-window_steps:]
    if np.isnan(tail).all():
        assert "no data in the window" in refused(
            clean_window, rps, window_steps=window_steps, max_gap_steps=MAX_GAP
        )
        return
    cleaned = clean_window(rps, window_steps=window_steps, max_gap_steps=MAX_GAP)
    out = cleaned.rps.to_numpy()
    valid = ~np.isnan(tail)
    assert len(out) == window_steps
    assert not np.isnan(out).any()
    np.testing.assert_array_equal(out[valid], tail[valid])
    assert cleaned.filled_points == int(np.isnan(tail).sum())
    assert 0 <= cleaned.longest_gap_steps <= MAX_GAP
    # Filled values stay inside the range of the valid values (interpolation or carrying).
    assert out.min() >= tail[valid].min() and out.max() <= tail[valid].max()
