"""Queueing delay and the two DPs: known answers, and equality with the brute-force oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import gamma

from planner.dp import StageConfig, assess, brute_force, horizontal, vertical
from planner.errors import PlannerInputError
from planner.profiles import LatencyProfile, Pipeline, bundled_profile, load_pipeline
from planner.queueing import batch_fill_ms, batch_fill_ms_array, headroom_rps, load_within_headroom

RESNET = load_pipeline(bundled_profile("resnet18"))
VIDEO = load_pipeline(bundled_profile("video"))


# --------------------------------------------------------------------------------------------
# queueing


def test_batch_fill_known_answers() -> None:
    assert batch_fill_ms(1, 10.0) == 0.0
    assert batch_fill_ms(1, 0.0) == 0.0
    assert batch_fill_ms(4, 0.0) == math.inf
    # Batch 2 waits for one exponential inter-arrival: p99 = -ln(0.01) / λ.
    assert batch_fill_ms(2, 10.0) == pytest.approx(1000 * math.log(100) / 10)
    for b, rps in ((3, 7.5), (8, 250.0), (16, 1.0)):
        expected = 1000 * gamma.ppf(0.99, a=b - 1, scale=1 / rps)
        assert batch_fill_ms(b, rps) == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(
        batch_fill_ms_array(np.array([1, 2, 8]), 50.0),
        [batch_fill_ms(1, 50.0), batch_fill_ms(2, 50.0), batch_fill_ms(8, 50.0)],
        rtol=0,
    )


def test_headroom_known_answers() -> None:
    assert headroom_rps(0.0) == 0.0
    assert headroom_rps(100.0) == 110.0
    assert headroom_rps(2.25) == 3.75
    for rps in (0.0, 1.0, 37.5, 1e4):
        assert load_within_headroom(headroom_rps(rps)) == pytest.approx(rps, abs=1e-9)


@pytest.mark.parametrize(("batch", "rps"), [(0, 1.0), (1.5, 1.0), (2, -1.0), (2, math.nan)])
def test_queueing_bad_input(batch, rps) -> None:
    with pytest.raises(PlannerInputError):
        batch_fill_ms(batch, rps)


# --------------------------------------------------------------------------------------------
# known answers


def test_horizontal_known_answer_resnet18_150_rps() -> None:
    d = horizontal(RESNET, 150.0, 750.0)
    # λ̃ = 150 + √150 = 162.25; 3 replicas of 2 cores at batch 3 carry 167.1 rps.
    assert d.target_rps == pytest.approx(162.2474, abs=1e-4)
    assert d.stages == (StageConfig(replicas=3, cores=2, batch=3),)
    assert d.cost_cores == 6 and d.feasible and d.binding == "load"
    expected = RESNET.stages[0].latency_ms(3, 2) + batch_fill_ms(3, 150.0)
    assert d.latency_ms == pytest.approx(expected)


def test_zero_load_is_one_smallest_replica() -> None:
    d = horizontal(VIDEO, 0.0, 1000.0)
    assert d.stages == (StageConfig(1, 1, 1), StageConfig(1, 1, 1))
    assert d.feasible and d.cost_cores == 2


def test_tight_slo_pushes_cores_up() -> None:
    loose = horizontal(RESNET, 150.0, 750.0)
    tight = horizontal(RESNET, 150.0, 20.0)
    assert tight.feasible and tight.latency_ms <= 20.0
    assert tight.cost_cores > loose.cost_cores and tight.binding == "latency SLO"


def test_infeasible_slo_returns_the_fastest_shape() -> None:
    d = horizontal(RESNET, 100.0, 5.0)
    assert not d.feasible and d.binding == "latency SLO"
    assert d.stages[0].cores == 16 and d.stages[0].batch == 1
    assert d.capacity_rps >= d.target_rps
    assert "5 ms SLO" in d.detail


def test_max_replicas_binds() -> None:
    d = horizontal(RESNET, 1000.0, 750.0, max_replicas=3)
    assert not d.feasible and d.binding == "max replicas"
    assert d.replicas == (3,) and d.latency_ms <= 750.0
    assert d.capacity_rps < d.target_rps
    # No shape gives 3 replicas more capacity within the SLO.
    best = brute_force(RESNET, 0.0, 750.0, replicas=[3], headroom=False, fill_rps=1000.0)
    assert (
        d.capacity_rps
        >= max(
            3 * RESNET.stages[0].throughput_rps(b, c)
            for c in range(1, 17)
            for b in range(1, 9)
            if RESNET.stages[0].latency_ms(b, c) + batch_fill_ms(b, 1000.0) <= 750
        )
        - 1e-9
    )
    assert best.feasible


def test_vertical_resizes_in_place() -> None:
    d = vertical(RESNET, 150.0, 750.0, [1])
    assert d.replicas == (1,) and d.feasible and d.binding == "load"
    assert d.capacity_rps >= d.target_rps
    oracle = brute_force(RESNET, 150.0, 750.0, replicas=[1])
    assert d.cost_cores == oracle.cost_cores == 9


def test_vertical_falls_back_to_more_replicas() -> None:
    # One replica carries at most ~324 rps (the serial part β + ζ caps it); 1000 rps needs more.
    d = vertical(RESNET, 1000.0, 750.0, [1])
    assert d.feasible and d.binding == "max cores"
    assert d.replicas[0] > 1 and d.capacity_rps >= d.target_rps
    assert d.latency_ms <= 750.0
    assert "carry at most" in d.detail
    capped = vertical(RESNET, 1000.0, 750.0, [1], max_replicas=2)
    assert not capped.feasible and capped.binding == "max replicas" and capped.replicas == (2,)


def test_assess_reports_what_a_state_gives() -> None:
    d = assess(RESNET, [StageConfig(2, 1, 1)], 45.0, 750.0)
    assert d.capacity_rps == pytest.approx(2000 / 37.98)
    assert d.feasible  # 45 + √45 = 51.7 <= 52.7
    assert not assess(RESNET, [StageConfig(2, 1, 1)], 50.0, 750.0).feasible
    slow = assess(RESNET, [StageConfig(1, 1, 8)], 1.0, 750.0)
    assert not slow.feasible and slow.binding == "latency SLO"


@pytest.mark.parametrize(
    ("call", "problem"),
    [
        (lambda: horizontal(RESNET, -1.0, 750.0), "rps: must be >= 0"),
        (lambda: horizontal(RESNET, math.inf, 750.0), "rps: must be a finite"),
        (lambda: horizontal(RESNET, 10.0, 0.0), "slo_ms: must be a number > 0"),
        (lambda: horizontal(RESNET, 10.0, -5.0), "slo_ms"),
        (lambda: horizontal(RESNET, 10.0, 750.0, max_replicas=0), "max_replicas"),
        (lambda: horizontal("resnet18", 10.0, 750.0), "expected a Pipeline"),
        (lambda: vertical(RESNET, 10.0, 750.0, [1, 1]), "one count per stage"),
        (lambda: vertical(RESNET, 10.0, 750.0, [0]), "integers >= 1"),
        (lambda: assess(RESNET, [StageConfig(1, 17, 1)], 1.0, 750.0), "over the profile's limit"),
        (lambda: Pipeline("p", ()), "no stages"),
    ],
)
def test_bad_arguments_give_one_line(call, problem: str) -> None:
    with pytest.raises(PlannerInputError) as info:
        call()
    assert problem in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------
# equality with the oracle on random small cases


@st.composite
def profiles(draw) -> LatencyProfile:
    profile = LatencyProfile(
        name=f"m{draw(st.integers(0, 99))}",
        alpha=draw(st.floats(0.0, 200.0)),
        beta=draw(st.floats(0.0, 40.0)),
        gamma=draw(st.floats(0.0, 30.0)),
        zeta=draw(st.floats(0.05, 20.0)),
        max_cores=draw(st.integers(1, 4)),
        max_batch=draw(st.integers(1, 4)),
        memory_mb=1024.0,
    )
    return profile


pipelines = st.lists(profiles(), min_size=1, max_size=3).map(lambda s: Pipeline("p", tuple(s)))
loads = st.one_of(st.just(0.0), st.floats(0.0, 400.0))
slos = st.floats(1.0, 1500.0)


def _ticks(pipeline: Pipeline, decision) -> int:
    return sum(math.ceil(v) for v in decision.stage_latency_ms)


def _check_meets(pipeline: Pipeline, decision, slo_ms: float) -> None:
    assert decision.latency_ms <= slo_ms
    assert decision.capacity_rps >= decision.target_rps
    for profile, config, latency in zip(
        pipeline.stages, decision.stages, decision.stage_latency_ms, strict=True
    ):
        assert 1 <= config.cores <= profile.max_cores and 1 <= config.batch <= profile.max_batch
        assert config.replicas * profile.throughput_rps(config.batch, config.cores) >= (
            decision.target_rps
        )
        assert latency >= profile.latency_ms(config.batch, config.cores)


@settings(max_examples=300, deadline=None)
@given(pipeline=pipelines, rps=loads, slo_ms=slos, max_replicas=st.none() | st.integers(1, 30))
def test_horizontal_equals_brute_force(pipeline, rps, slo_ms, max_replicas) -> None:
    dp = horizontal(pipeline, rps, slo_ms, max_replicas=max_replicas)
    oracle = brute_force(pipeline, rps, slo_ms, max_replicas=max_replicas)
    assert dp.feasible == oracle.feasible
    if oracle.feasible:
        assert dp.cost_cores == oracle.cost_cores
        assert _ticks(pipeline, dp) == _ticks(pipeline, oracle)
        _check_meets(pipeline, dp, slo_ms)


@settings(max_examples=200, deadline=None)
@given(pipeline=pipelines, rps=loads, slo_ms=slos)
def test_rounding_costs_at_most_one_ms_per_stage(pipeline, rps, slo_ms) -> None:
    """exact(SLO) <= DP(SLO) <= exact(SLO - S ms): whole-ms rounding loses < 1 ms per stage."""
    dp = horizontal(pipeline, rps, slo_ms)
    exact = brute_force(pipeline, rps, slo_ms, round_ms=False)
    if dp.feasible:
        assert exact.feasible and exact.cost_cores <= dp.cost_cores
    tighter = slo_ms - len(pipeline.stages)
    if tighter > 0:
        exact_tight = brute_force(pipeline, rps, tighter, round_ms=False)
        if exact_tight.feasible:
            assert dp.feasible and dp.cost_cores <= exact_tight.cost_cores


@settings(max_examples=300, deadline=None)
@given(pipeline=pipelines, rps=loads, slo_ms=slos, data=st.data())
def test_vertical_equals_brute_force_or_falls_back(pipeline, rps, slo_ms, data) -> None:
    replicas = data.draw(
        st.lists(st.integers(1, 6), min_size=len(pipeline.stages), max_size=len(pipeline.stages))
    )
    dp = vertical(pipeline, rps, slo_ms, replicas)
    oracle = brute_force(pipeline, rps, slo_ms, replicas=replicas)
    if oracle.feasible:
        assert dp.feasible and dp.replicas == tuple(replicas)
        assert dp.cost_cores == oracle.cost_cores
        assert _ticks(pipeline, dp) == _ticks(pipeline, oracle)
        _check_meets(pipeline, dp, slo_ms)
        return
    if dp.binding == "latency SLO":
        assert not dp.feasible
        assert not brute_force(pipeline, 0.0, slo_ms, replicas=replicas, fill_rps=rps).feasible
        return
    # Fallback: the shapes are those for λ*, the most the current replicas carry; every stage
    # gets just the replicas it lacks.
    assert dp.binding == "max cores" and dp.feasible
    _check_meets(pipeline, dp, slo_ms)
    carried = _most_carried_by_brute_force(pipeline, replicas, rps, slo_ms)
    at_current = min(
        n * p.throughput_rps(c.batch, c.cores)
        for p, n, c in zip(pipeline.stages, replicas, dp.stages, strict=True)
    )
    assert at_current == pytest.approx(carried, rel=1e-12) or at_current >= carried
    for profile, n, config in zip(pipeline.stages, replicas, dp.stages, strict=True):
        h = profile.throughput_rps(config.batch, config.cores)
        assert config.replicas >= n
        assert config.replicas == n or (config.replicas - 1) * h < dp.target_rps


def _most_carried_by_brute_force(pipeline, replicas, rps, slo_ms) -> float:
    """λ*: the largest min_s n_s·h_s over every combination that meets the SLO in whole ms."""
    import itertools

    per_stage = []
    for profile, n in zip(pipeline.stages, replicas, strict=True):
        per_stage.append(
            [
                (
                    math.ceil(profile.latency_ms(b, c) + batch_fill_ms(b, rps)),
                    n * profile.throughput_rps(b, c),
                )
                for c in range(1, profile.max_cores + 1)
                for b in range(1, profile.max_batch + 1)
                if math.isfinite(profile.latency_ms(b, c) + batch_fill_ms(b, rps))
            ]
        )
    best = 0.0
    for combo in itertools.product(*per_stage):
        if sum(t for t, _ in combo) <= math.floor(slo_ms):
            best = max(best, min(cap for _, cap in combo))
    return best


@settings(max_examples=50, deadline=None)
@given(rps=st.floats(0.0, 2000.0), slo_ms=st.floats(50.0, 2000.0))
def test_video_pipeline_equals_brute_force_at_full_size(rps, slo_ms) -> None:
    """16 cores x 8 batch sizes per stage, as in the benchmark."""
    dp = horizontal(VIDEO, rps, slo_ms)
    oracle = brute_force(VIDEO, rps, slo_ms)
    assert dp.feasible == oracle.feasible
    if oracle.feasible:
        assert (dp.cost_cores, _ticks(VIDEO, dp)) == (oracle.cost_cores, _ticks(VIDEO, oracle))


def test_fill_rate_is_separate_from_the_load_sized_for() -> None:
    """Sizing for a peak while meeting the SLO at a lower rate (batches fill slower)."""
    at_peak = horizontal(RESNET, 300.0, 750.0)
    slow_fill = horizontal(RESNET, 300.0, 750.0, fill_rps=20.0)
    assert slow_fill.target_rps == at_peak.target_rps
    assert slow_fill.cost_cores >= at_peak.cost_cores
    assert slow_fill.latency_ms <= 750.0
