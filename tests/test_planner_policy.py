"""The two-stage policy: scenarios with known timelines, and properties of every plan."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.errors import PlannerInputError
from planner.plan import Plan, PlanStep
from planner.policy import ClusterState, PolicySettings, plan_two_stage
from planner.profiles import bundled_profile, load_pipeline
from planner.queueing import batch_fill_ms, headroom_rps

RESNET = load_pipeline(bundled_profile("resnet18"))
VIDEO = load_pipeline(bundled_profile("video"))
CUTOFF = pd.Timestamp("2024-01-01T07:30:00Z")
SURGE = np.array([50, 50, 50, 50, 240, 280, 260, 100, 50, 50, 50, 50, 50, 50, 50.0])


def _plan(state, observed, forecast, cutoff=CUTOFF, pipeline=RESNET, **kw) -> Plan:
    last_up = kw.pop("last_scale_up_at", None)
    return plan_two_stage(
        "svc",
        pipeline,
        state,
        observed,
        np.asarray(forecast, float),
        60.0,
        cutoff,
        PolicySettings(**{"slo_ms": 750.0, **kw}),
        last_scale_up_at=last_up,
    )


def test_replicas_start_one_cold_start_before_the_surge() -> None:
    plan = _plan(ClusterState((3,), (1,), (1,)), 45.0, SURGE)
    (step,) = plan.steps
    assert step.kind == "scale-out"
    assert step.effective_at == pd.Timestamp("2024-01-01T07:35:00Z")  # the 240 rps step
    assert step.apply_at == pd.Timestamp("2024-01-01T07:34:30Z")
    assert step.capacity_rps >= headroom_rps(280.0)  # sized for the window's peak
    assert step.reason.startswith("240 rps forecast at 07:35 (q0.95), peak 280 rps at 07:36;")
    assert "+7 replicas at 07:34:30 for a 30 s cold start" in step.reason


def test_a_surge_sooner_than_a_cold_start_is_bridged_then_consolidated() -> None:
    plan = _plan(ClusterState((3,), (1,), (1,)), 45.0, SURGE, cold_start_s=400.0)
    bridge, consolidate = plan.steps
    assert bridge.kind == "bridge" and consolidate.kind == "consolidate"
    assert bridge.apply_at == CUTOFF and bridge.effective_at == CUTOFF + pd.Timedelta(seconds=2)
    assert bridge.replicas == (3,) and bridge.cores[0] > 1  # in place, bigger pods
    assert consolidate.apply_at == CUTOFF
    assert consolidate.effective_at == CUTOFF + pd.Timedelta(seconds=400)
    assert consolidate.capacity_rps >= headroom_rps(280.0)
    assert consolidate.cost_cores < bridge.cost_cores * 4


def test_scale_in_waits_for_the_stabilisation_window() -> None:
    big = ClusterState((12,), (2,), (1,))
    quiet = np.full(15, 40.0)
    recent = CUTOFF - pd.Timedelta(seconds=60)
    plan = _plan(big, 40.0, quiet, last_scale_up_at=recent)
    (step,) = plan.steps
    assert step.kind == "scale-in"
    assert step.apply_at == recent + pd.Timedelta(seconds=300)
    assert step.cost_cores < 24
    long_ago = _plan(big, 40.0, quiet, last_scale_up_at=CUTOFF - pd.Timedelta(hours=1))
    assert long_ago.steps[0].apply_at == CUTOFF
    short = _plan(big, 40.0, quiet[:2], last_scale_up_at=recent)
    assert short.steps[0].kind == "hold" and "waits for the 300 s stabilisation" in (
        short.steps[0].reason
    )


def test_pods_shrink_in_place_after_the_shorter_resize_window() -> None:
    # 3 pods bridged to 8 cores, a quiet forecast, a scale-up 90 s ago: replicas must stay for
    # the 300 s window, but the pods may shrink in place once the 60 s resize window passed.
    big = ClusterState((3,), (8,), (4,))
    quiet = np.full(15, 40.0)
    recent = CUTOFF - pd.Timedelta(seconds=90)
    policy = PolicySettings(slo_ms=750.0, resize_stabilisation_s=60.0)
    plan = plan_two_stage(
        "svc", RESNET, big, 40.0, quiet, 60.0, CUTOFF, policy, last_scale_up_at=recent
    )
    shrink, later = plan.steps
    assert shrink.kind == "scale-in" and shrink.replicas == (3,) and shrink.cores[0] < 8
    assert shrink.apply_at == CUTOFF and "shrink in place" in shrink.reason
    assert shrink.capacity_rps >= headroom_rps(40.0)
    # The replicas themselves wait for the full window.
    assert later.apply_at == recent + pd.Timedelta(seconds=300)
    # Without a resize window everything waits for the full window.
    held = plan_two_stage(
        "svc",
        RESNET,
        big,
        40.0,
        quiet,
        60.0,
        CUTOFF,
        PolicySettings(slo_ms=750.0),
        last_scale_up_at=recent,
    )
    assert [s.apply_at for s in held.steps] == [recent + pd.Timedelta(seconds=300)]
    # A scale-up 10 s ago: the pods wait for the resize window too.
    fresh_up = CUTOFF - pd.Timedelta(seconds=10)
    fresh = plan_two_stage(
        "svc", RESNET, big, 40.0, quiet, 60.0, CUTOFF, policy, last_scale_up_at=fresh_up
    )
    assert fresh.steps[0].apply_at == fresh_up + pd.Timedelta(seconds=60)


def test_hold_when_the_current_state_is_right() -> None:
    optimum = _plan(ClusterState((3,), (2,), (3,)), 150.0, np.full(10, 150.0))
    (step,) = optimum.steps
    assert step.kind == "hold" and step.replicas == (3,) and step.apply_at == CUTOFF
    assert "carries the q0.95 peak of 150 rps" in step.reason


def test_the_observed_load_is_a_floor() -> None:
    plan = _plan(ClusterState((1,), (1,), (1,)), 200.0, np.zeros(10))
    assert plan.steps[0].apply_at == CUTOFF
    for step in plan.steps:
        assert step.capacity_rps >= headroom_rps(200.0) or step.kind == "bridge"
    assert plan.steps[-1].capacity_rps >= headroom_rps(200.0)


def test_plan_json_round_trip() -> None:
    plan = _plan(
        ClusterState((3, 2), (1, 1), (1, 1)), 45.0, SURGE, pipeline=VIDEO, cold_start_s=90.0
    )
    text = json.dumps(plan.to_dict())
    again = Plan.from_dict(json.loads(text))
    assert again == plan
    assert json.loads(text)["steps"][0]["apply_at"].endswith("Z")
    assert again.stage_names == ("yolov5n", "resnet18")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"steps": "x"}, "steps must be a list"),
        ({"bogus": 1}, "unknown key(s) bogus"),
        ({"cutoff": "2024-01-01T00:00:00"}, "no time zone"),
    ],
)
def test_plan_from_bad_dict_is_one_line(change: dict, problem: str) -> None:
    data = _plan(ClusterState((3,), (1,), (1,)), 45.0, SURGE).to_dict() | change
    with pytest.raises(PlannerInputError) as info:
        Plan.from_dict(data)
    assert problem in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"forecast": []}, "forecast_rps: empty"),
        ({"forecast": [1.0, -2.0]}, "forecast_rps: step 2"),
        ({"forecast": [1.0, math.nan]}, "forecast_rps: step 2"),
        ({"observed": -1.0}, "observed_rps"),
        ({"cutoff": pd.Timestamp("2024-01-01T07:30:00")}, "no time zone"),
        ({"state": ClusterState((1, 1), (1, 1), (1, 1))}, "state: 2 stage(s)"),
        ({"state": ClusterState((1,), (32,), (1,))}, "over the profile's limit"),
    ],
)
def test_bad_policy_inputs_give_one_line(kwargs: dict, problem: str) -> None:
    args = {"state": ClusterState((1,), (1,), (1,)), "observed": 10.0, "forecast": [10.0]}
    args |= kwargs
    cutoff = args.pop("cutoff", CUTOFF)
    with pytest.raises(PlannerInputError) as info:
        _plan(args["state"], args["observed"], args["forecast"], cutoff=cutoff)
    assert problem in str(info.value) and "\n" not in str(info.value)


def test_bad_settings() -> None:
    with pytest.raises(PlannerInputError, match="slo_ms"):
        PolicySettings(slo_ms=0)
    with pytest.raises(PlannerInputError, match="max_replicas"):
        PolicySettings(slo_ms=100, min_replicas=3, max_replicas=2)
    with pytest.raises(PlannerInputError, match="apply_at is after"):
        PlanStep(CUTOFF, CUTOFF + pd.Timedelta(seconds=1), (1,), (1,), (1,), "", 1.0, 1.0, "hold")


# --------------------------------------------------------------------------------------------
# properties of every plan


@st.composite
def scenarios(draw):
    pipeline = draw(st.sampled_from([RESNET, VIDEO]))
    stages = len(pipeline.stages)
    max_replicas = draw(st.none() | st.integers(4, 40))
    top = 8 if max_replicas is None else min(8, max_replicas)
    state = ClusterState(
        tuple(draw(st.integers(1, top)) for _ in range(stages)),
        tuple(draw(st.integers(1, 16)) for _ in range(stages)),
        tuple(draw(st.integers(1, 8)) for _ in range(stages)),
    )
    horizon = draw(st.integers(1, 20))
    forecast = np.array(draw(st.lists(st.floats(0, 600), min_size=horizon, max_size=horizon)))
    observed = draw(st.floats(0, 300))
    policy = PolicySettings(
        slo_ms=draw(st.floats(150, 2000)),
        cold_start_s=draw(st.sampled_from([0.0, 10.0, 30.0, 90.0, 240.0])),
        resize_s=draw(st.sampled_from([0.0, 2.0, 5.0])),
        stabilisation_s=draw(st.sampled_from([0.0, 120.0, 300.0])),
        resize_stabilisation_s=draw(st.sampled_from([None, 0.0, 60.0])),
        max_replicas=max_replicas,
    )
    last_up = draw(st.none() | st.integers(0, 900).map(lambda s: CUTOFF - pd.Timedelta(seconds=s)))
    return pipeline, state, observed, forecast, policy, last_up


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_every_plan_keeps_its_promises(scenario) -> None:
    pipeline, state, observed, forecast, policy, last_up = scenario
    plan = plan_two_stage(
        "svc", pipeline, state, observed, forecast, 60.0, CUTOFF, policy, last_scale_up_at=last_up
    )
    assert plan.steps
    times = [CUTOFF + pd.Timedelta(minutes=h + 1) for h in range(len(forecast))]
    loads = np.maximum(forecast, observed)
    order = [(s.effective_at, s.apply_at) for s in plan.steps]
    assert order == sorted(order)
    surged = any(s.kind in ("scale-out", "bridge") for s in plan.steps)
    for step in plan.steps:
        assert CUTOFF <= step.apply_at <= step.effective_at
        # Bounds hold on every stage.
        assert all(
            1 <= n and (policy.max_replicas is None or n <= policy.max_replicas)
            for n in step.replicas
        )
        for profile, c, b in zip(pipeline.stages, step.cores, step.batch, strict=True):
            assert 1 <= c <= profile.max_cores and 1 <= b <= profile.max_batch
        # The step's own numbers follow from the model (batches fill at the observed rate).
        latency = sum(
            p.latency_ms(b, c) + batch_fill_ms(b, observed)
            for p, c, b in zip(pipeline.stages, step.cores, step.batch, strict=True)
        )
        capacity = min(
            n * p.throughput_rps(b, c)
            for p, n, c, b in zip(
                pipeline.stages, step.replicas, step.cores, step.batch, strict=True
            )
        )
        assert step.expected_latency_ms == pytest.approx(latency)
        assert step.capacity_rps == pytest.approx(capacity)
        if not step.feasible:
            continue
        # SLO under its own model; headroom for what it is sized for; never below the floor.
        assert latency <= policy.slo_ms
        assert capacity >= headroom_rps(step.load_rps) * (1 - 1e-12)
        assert capacity >= headroom_rps(observed) * (1 - 1e-12)
        if step.kind != "bridge":
            later = [ld for t, ld in zip(times, loads, strict=True) if t >= step.effective_at]
            assert capacity >= headroom_rps(max([observed, *later])) * (1 - 1e-12)
        # Scale-in never inside the stabilisation window: the full one when replicas go, the
        # resize window when pods only shrink in place.
        if step.kind == "scale-in" or (not surged and step.cost_cores < _cost(state)):
            in_place = list(step.replicas) == list(state.replicas)
            # The in-place window never exceeds the full one: a shrink in place is also
            # allowed whenever replicas could go.
            window = (
                min(policy.resize_stabilisation_s, policy.stabilisation_s)
                if in_place and policy.resize_stabilisation_s is not None
                else policy.stabilisation_s
            )
            assert last_up is None or step.apply_at >= last_up + pd.Timedelta(seconds=window)
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def _cost(state: ClusterState) -> int:
    return sum(n * c for n, c in zip(state.replicas, state.cores, strict=True))
