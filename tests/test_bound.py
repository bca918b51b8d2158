"""The lower bound on core-hours: per-second optimal shapes, checked against brute force, and
never above what a policy that meets the SLO spends."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from planner.dp import brute_force
from planner.profiles import bundled_profile, load_pipeline
from surgecast.offline.backtest import BacktestSettings, run_backtest
from surgecast.offline.bound import lower_bound

RESNET = load_pipeline(bundled_profile("resnet18"))


def test_each_second_costs_the_cheapest_shape_that_carries_it():
    rng = np.random.default_rng(3)
    arrivals = rng.poisson(rng.choice([5.0, 40.0, 120.0], size=600)).astype(float)
    got = lower_bound(arrivals, RESNET, 750.0, max_replicas=50)
    expected = 0.0
    for value in np.unique(arrivals):
        best = brute_force(RESNET, float(value), 750.0, max_replicas=50, headroom=False)
        expected += best.cost_cores * int((arrivals == value).sum())
    assert got.core_hours == pytest.approx(expected / 3600.0)
    assert got.infeasible_seconds == 0 and got.peak_cores >= 1


def test_a_replica_bound_too_low_for_a_second_is_counted():
    got = lower_bound(np.array([1.0, 5_000.0]), RESNET, 750.0, max_replicas=2)
    assert got.infeasible_seconds == 1


def test_no_policy_that_meets_the_slo_spends_less(tmp_path):
    index = pd.date_range("2024-01-01", periods=4 * 1440, freq="1min", tz="UTC")
    minutes = np.arange(len(index))
    rps = pd.Series(
        60.0 + 40.0 * np.sin(2 * np.pi * minutes / 1440.0) ** 2, index=index, name="rps"
    )
    start = index[0] + pd.Timedelta(days=3)
    result = run_backtest(
        rps,
        RESNET,
        BacktestSettings(
            policies=("static-peak", "themis"), start=start, end=start + pd.Timedelta(hours=2),
            train_days=3.0,
        ),
        trace_name="synthetic",
        profile_name="resnet18",
    )
    bound = result.bound.core_hours
    assert bound > 0
    meeting = {
        name: run.summary()["core_hours"]
        for name, run in result.runs.items()
        if run.summary()["violation_rate"] < 0.001
    }
    assert "static-peak" in meeting
    assert all(cost >= bound for cost in meeting.values()), (meeting, bound)
    assert result.runs["themis"].summary()["core_hours"] >= bound
    data = result.to_json()
    assert data["lower_bound"]["core_hours"] == pytest.approx(bound, abs=1e-3)
    ratio = data["policies"]["static-peak"]["core_hours_vs_lower_bound"]
    assert ratio == pytest.approx(result.runs["static-peak"].summary()["core_hours"] / bound,
                                  rel=1e-2)
