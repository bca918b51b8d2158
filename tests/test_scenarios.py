"""Stress scenarios: what each does to the arrivals, reproducibly, and that a backtest runs on
one and says so."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from forecasting.errors import BadInputError
from surgecast.cli import app
from surgecast.offline.scenarios import DAY_S, SCENARIOS, apply_scenario

RNG = np.random.default_rng(0)
BASE = RNG.poisson(20.0, size=3 * DAY_S).astype(float)  # two days of history, one span day
SPAN = 2 * DAY_S


def minute_means(counts: np.ndarray) -> np.ndarray:
    return counts[: len(counts) // 60 * 60].reshape(-1, 60).mean(axis=1)


@pytest.mark.parametrize("name", SCENARIOS)
def test_a_scenario_is_reproducible_from_its_seed(name):
    a = apply_scenario(name, BASE, SPAN, DAY_S, seed=4)
    b = apply_scenario(name, BASE, SPAN, DAY_S, seed=4)
    c = apply_scenario(name, BASE, SPAN, DAY_S, seed=5)
    assert np.array_equal(a.counts, b.counts) and a.description == b.description
    assert not np.array_equal(a.counts, c.counts)
    assert np.all(a.counts >= 0) and a.description


@pytest.mark.parametrize("seed", range(5))
def test_a_flash_crowd_is_10_to_50x_within_5_minutes(seed):
    got = apply_scenario("flash-crowd", BASE, SPAN, DAY_S, seed=seed)
    assert np.array_equal(got.counts[:SPAN], BASE[:SPAN])  # the history is left alone
    minutes = minute_means(got.counts[SPAN:])
    peak = int(np.argmax(minutes))
    assert 9.0 * 20.0 <= minutes[peak] <= 52.0 * 20.0
    m = got.multiplier[SPAN:]
    onset = int(np.argmax(m > 1.0))
    top = int(np.argmax(m >= m.max()))
    assert 60 <= top - onset <= 300  # from the first extra request to the top: 1-5 minutes


def test_an_event_day_then_a_quiet_day():
    got = apply_scenario("event-then-quiet", BASE, SPAN, DAY_S, seed=0)
    event = got.counts[DAY_S + 8 * 3600 : DAY_S + 20 * 3600].mean()
    assert event == pytest.approx(4 * 20.0, rel=0.02)
    assert np.array_equal(got.counts[SPAN:], BASE[SPAN:])  # the span itself is ordinary
    with pytest.raises(BadInputError, match="needs a day of history"):
        apply_scenario("event-then-quiet", BASE, 3600, DAY_S, seed=0)


def test_a_slow_ramp_ends_at_three_times_and_x3_is_three_times_throughout():
    ramp = apply_scenario("slow-ramp", BASE, SPAN, DAY_S, seed=0)
    assert ramp.counts[SPAN : SPAN + 3600].mean() == pytest.approx(20.0, rel=0.05)
    assert ramp.counts[-3600:].mean() == pytest.approx(3 * 20.0 * 0.99, rel=0.03)
    x3 = apply_scenario("x3", BASE, SPAN, DAY_S, seed=0)
    assert x3.counts.mean() == pytest.approx(60.0, rel=0.01)


def test_unknown_scenarios_and_short_spans_are_refused():
    with pytest.raises(BadInputError, match="--scenario: unknown 'storm'"):
        apply_scenario("storm", BASE, SPAN, DAY_S, seed=0)
    with pytest.raises(BadInputError, match="at least 30 minutes"):
        apply_scenario("flash-crowd", BASE, SPAN, 1200, seed=0)


def test_a_backtest_runs_a_scenario_and_records_it(tmp_path):
    index = pd.date_range("2024-01-01", periods=4 * 1440, freq="1min", tz="UTC")
    rps = pd.Series(30.0, index=index, name="rps")
    csv = tmp_path / "flat.csv"
    rps.to_csv(csv, index_label="timestamp")
    out = CliRunner().invoke(app, [
        "backtest", str(csv), "--policies", "hpa,static-peak", "--scenario", "flash-crowd",
        "--scenario-seed", "2", "--start", "2024-01-04T00:00:00Z", "--end",
        "2024-01-04T02:00:00Z", "--train-days", "3", "--out", str(tmp_path / "out"),
    ])
    assert out.exit_code == 0, out.output
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["scenario"].startswith("flash crowd: x")
    assert data["settings"]["scenario"] == "flash-crowd"
    # the static peak shape is sized for the crowd: it costs far more than the flat load needs
    assert data["policies"]["static-peak"]["core_hours"] > 5 * data["lower_bound"]["core_hours"]
    bad = CliRunner().invoke(app, ["backtest", str(csv), "--scenario", "storm"])
    assert bad.exit_code == 2 and "--scenario: unknown 'storm'" in bad.output
