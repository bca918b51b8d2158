"""The actuator's guards: each a small pure function, each with its own tests."""

from __future__ import annotations

from functools import partial

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actuator.guards import (
    Bounds,
    allowed_workload,
    hold_scale_in,
    limit_step,
    not_expired,
    reactive_floor,
    run_guards,
    within_bounds,
)
from planner.dp import StageConfig

shapes = st.builds(
    StageConfig,
    replicas=st.integers(1, 60),
    cores=st.integers(1, 32),
    batch=st.integers(1, 16),
)
bounds = st.builds(
    lambda lo, span, clo, cspan, b: Bounds(lo, lo + span, clo, clo + cspan, b),
    st.integers(1, 10),
    st.integers(0, 30),
    st.integers(1, 4),
    st.integers(0, 12),
    st.integers(1, 16),
)


@given(shapes, bounds)
def test_bounds_always_hold(wanted, limits):
    result = within_bounds(wanted, limits)
    got = result.config
    assert limits.min_replicas <= got.replicas <= limits.max_replicas
    assert limits.min_cores <= got.cores <= limits.max_cores
    assert 1 <= got.batch <= limits.max_batch
    assert (result.note is None) == (got == wanted)


def test_bounds_note_names_the_guard_and_both_shapes():
    result = within_bounds(StageConfig(40, 2, 4), Bounds(1, 12, 1, 16, 8))
    assert result.config == StageConfig(12, 2, 4)
    assert result.note.startswith("bounds:") and "40×2" in result.note and "12×2" in result.note


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (dict(min_replicas=0), "min_replicas"),
        (dict(min_replicas=5, max_replicas=4), "min_replicas"),
        (dict(min_cores=3, max_cores=2), "min_cores"),
        (dict(max_batch=0), "max_batch"),
    ],
)
def test_bounds_refuse_nonsense(bad, message):
    with pytest.raises(ValueError, match=message):
        Bounds(**bad)


@given(shapes, shapes, st.integers(1, 5), st.integers(1, 5))
def test_step_limit_moves_towards_the_target_by_at_most_the_step(wanted, current, rs, cs):
    got = limit_step(wanted, current, max_replica_step=rs, max_core_step=cs).config
    assert abs(got.replicas - current.replicas) <= rs
    assert abs(got.cores - current.cores) <= cs
    # Never overshoots, never moves the wrong way.
    assert (
        min(current.replicas, wanted.replicas)
        <= got.replicas
        <= max(current.replicas, wanted.replicas)
    )
    assert min(current.cores, wanted.cores) <= got.cores <= max(current.cores, wanted.cores)


def test_step_limit_none_is_unlimited():
    wanted = StageConfig(30, 8, 4)
    assert limit_step(wanted, StageConfig(2, 1, 4)).config == wanted


@given(shapes, shapes, st.integers(0, 1000), st.integers(0, 1000))
def test_no_scale_in_inside_the_stabilisation_window(wanted, current, since, window):
    now = 10_000
    got = hold_scale_in(
        wanted, current, now_s=now, last_scale_up_s=now - since, window_s=window
    ).config
    if since < window:
        assert got.replicas >= current.replicas and got.cores >= current.cores
    else:
        assert got == wanted


@given(shapes, shapes, st.integers(0, 1000))
def test_capacity_based_stabilisation_holds_any_change_to_less_capacity(wanted, current, since):
    def capacity(c: StageConfig) -> float:
        return c.replicas * c.cores * (1 + 0.1 * c.batch)

    got = hold_scale_in(
        wanted,
        current,
        now_s=5000,
        last_scale_up_s=5000 - since,
        window_s=300,
        capacity_rps=capacity,
    ).config
    if since < 300 and capacity(wanted) < capacity(current):
        assert got == current
    else:
        assert got == wanted


def test_scale_in_allowed_without_a_scale_up_on_record():
    wanted = StageConfig(1, 1, 1)
    assert (
        hold_scale_in(
            wanted, StageConfig(9, 4, 1), now_s=0, last_scale_up_s=None, window_s=300
        ).config
        == wanted
    )


def test_reactive_floor_raises_to_what_the_observed_load_needs():
    def capacity(c: StageConfig) -> float:
        return c.replicas * c.cores * 10.0

    floor = StageConfig(4, 2, 1)  # 80 rps
    low = reactive_floor(StageConfig(2, 2, 1), floor_rps=75, capacity_rps=capacity, floor=floor)
    assert capacity(low.config) >= 75 and "reactive floor" in low.note
    ok = reactive_floor(StageConfig(3, 3, 1), floor_rps=75, capacity_rps=capacity, floor=floor)
    assert ok.config == StageConfig(3, 3, 1) and ok.note is None


def test_expiry_and_allow_list():
    assert not_expired(now_s=100, created_s=50, expiry_s=600) is None
    assert "expired" in not_expired(now_s=1000, created_s=50, expiry_s=600)
    assert "future" in not_expired(now_s=0, created_s=50, expiry_s=600)
    assert allowed_workload("prod/resnet", ["prod/resnet"]) is None
    assert "allow-list" in allowed_workload("prod/other", ["prod/resnet"])


def test_guards_compose_in_order_and_keep_every_note():
    limits = Bounds(1, 10, 1, 8, 8)
    current = StageConfig(6, 4, 2)
    guards = [
        partial(within_bounds, bounds=limits),
        partial(limit_step, current=current, max_replica_step=2),
        partial(hold_scale_in, current=current, now_s=100, last_scale_up_s=50, window_s=300),
    ]
    got, notes = run_guards(StageConfig(40, 16, 2), guards)
    assert got == StageConfig(8, 8, 2)
    assert [n.split(":")[0] for n in notes] == ["bounds", "step limit"]
    got, notes = run_guards(StageConfig(1, 1, 2), guards)
    assert got == StageConfig(6, 4, 2)
    assert [n.split(":")[0] for n in notes] == ["step limit", "stabilisation"]
