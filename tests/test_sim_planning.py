"""The one planning function the live plan stage and the backtest both call."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from planner.errors import PlannerInputError
from planner.policy import ClusterState, PolicySettings
from planner.profiles import bundled_profile, load_pipeline
from surgecast.planning import decision_steps, plan_cycle, replicas_reaching

RESNET = load_pipeline(bundled_profile("resnet18"))
CUTOFF = pd.Timestamp("2024-03-04T00:00:00Z")
SETTINGS = PolicySettings(slo_ms=750.0, cold_start_s=30.0, resize_s=2.0, quantile=0.9,
                          max_replicas=40)
STATE = ClusterState((2,), (1,), (1,))


def plan(quantiles, **kw):
    return plan_cycle("svc", RESNET, STATE, 20.0, quantiles, 60.0, CUTOFF, SETTINGS,
                      run_interval_s=300.0, **kw)


def test_the_horizon_recedes_to_what_the_next_run_could_no_longer_decide():
    assert decision_steps(300.0, 30.0, 60.0) == 7  # 5 min to the next run + 30 s, + 1 step
    flat = np.full(15, 20.0)
    late_surge = flat.copy()
    late_surge[7:] = 500.0  # beyond the decision steps: the next run plans it
    a = plan({0.9: flat, 0.99: flat})
    b = plan({0.9: late_surge, 0.99: late_surge})
    assert a.to_dict()["steps"] == b.to_dict()["steps"]
    early_surge = flat.copy()
    early_surge[3:] = 500.0
    c = plan({0.9: early_surge, 0.99: early_surge})
    assert max(s.replicas[0] for s in c.steps) > max(s.replicas[0] for s in a.steps)


def test_replicas_are_held_for_the_surge_quantile_and_cores_for_the_planning_one():
    calm, surge = np.full(15, 20.0), np.full(15, 1500.0)
    floor = replicas_reaching(RESNET, 1500.0, 750.0)
    with_floor = plan({0.9: calm, 0.99: surge})
    without = plan({0.9: calm, 0.99: surge}, surge_quantile=None)
    assert min(s.replicas[0] for s in with_floor.steps) >= floor > 2
    assert max(s.replicas[0] for s in without.steps) < floor
    # The cores follow the planning quantile: the floor's replicas are small pods.
    assert max(s.cores[0] for s in with_floor.steps) <= max(s.cores[0] for s in without.steps)


def test_a_forecast_without_the_planning_quantile_is_refused_with_one_line():
    with pytest.raises(PlannerInputError, match=r"no 0\.9 quantile") as info:
        plan({0.5: np.full(15, 20.0)})
    assert "\n" not in str(info.value)
