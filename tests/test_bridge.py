"""The bridge's pure decision (actuator/bridge.py): known answers and its invariants."""

from __future__ import annotations

from collections import deque
from types import SimpleNamespace

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actuator.bridge import (
    DOWN,
    HOLD,
    UP,
    Envelope,
    StageNow,
    bridge_settings,
    carries,
    decide,
    envelope,
    held_by,
    need_cores,
)
from actuator.spec import BridgeSpec
from planner.plan import Plan, PlanStep
from planner.profiles import LatencyProfile

# Themis' ResNet18 fit (DESIGN section 4): at batch 1, l(c) = 34.89 / c + 3.09 ms, so one pod
# serves 26.3 rps on 1 core, 48.7 on 2, 84.7 on 4.
RESNET = LatencyProfile("resnet18", 28.08, 2.63, 6.81, 0.46, max_cores=16, max_batch=8,
                        memory_mb=1024)
YOLO = LatencyProfile("yolov5n", 39.91, 7.78, 1.83, 0.45, max_cores=16, max_batch=8,
                      memory_mb=1024)
S = BridgeSpec()


def stage(cores: int, ready: int, *, profile=RESNET, batch: int = 1, allocated=None) -> StageNow:
    m = (allocated or cores) * 1000
    return StageNow(profile, batch, (m,) * ready, cores)


def env(floor=(1,), ceiling=(16,)) -> Envelope:
    return Envelope(floor, ceiling, "test")


def run(stages, rps, e=None, *, now=1000.0, last_up=None, peak=0.0, start=0.0, s=S):
    return decide(s, stages, e or env((1,) * len(stages), (16,) * len(stages)), rps=rps,
                  slo_ms=750, now_s=now, last_up_s=last_up, window_peak_rps=peak,
                  window_start_s=start)


def test_a_surge_beyond_the_ready_pods_goes_up_at_once_to_the_fewest_cores_that_carry_it():
    # 2 pods of 1 core carry 52.6 rps; 60 rps needs 60 + sqrt(60) = 67.7, 33.9 per pod: 2 cores.
    assert carries([stage(1, 2)], 40, 750)
    assert not carries([stage(1, 2)], 60, 750)
    d = run([stage(1, 2)], 60.0)
    assert (d.direction, d.cores) == (UP, (2,))
    assert "exceeds" in d.reason
    # A last-up a second ago does not hold an up-move back.
    assert run([stage(1, 2)], 60.0, last_up=999.0).cores == (2,)


def test_a_carried_load_holds_and_a_down_move_waits_for_scale_down_after_s():
    pods = [stage(4, 2)]
    # 20 rps is carried by 1 core per pod; the plan's floor is 1.
    d = run(pods, 20.0, now=1000, last_up=980, start=0)
    assert (d.direction, d.cores) == (HOLD, (4,))
    assert "since the last up-move" in d.reason
    d = run(pods, 20.0, now=1000, last_up=None, start=970)
    assert d.direction == HOLD and "of signal behind it" in d.reason
    d = run(pods, 20.0, now=1000, last_up=900, start=900)
    assert (d.direction, d.cores) == (DOWN, (1,))
    # The window's peak sets how far down: 60 rps a while ago keeps 2 cores.
    d = run(pods, 20.0, now=1000, last_up=900, start=900, peak=60.0)
    assert (d.direction, d.cores) == (DOWN, (2,))


def test_never_below_the_plans_cores_nor_above_the_ceiling():
    d = run([stage(4, 2)], 5.0, env((3,), (8,)), last_up=None, start=0)
    assert d.cores == (3,)
    # 2 pods at the 8-core ceiling carry 2 x 128 = 256 rps; 400 rps is not carried: ceiling.
    d = run([stage(4, 2)], 400.0, env((3,), (8,)))
    assert d.cores == (8,) and d.direction == UP
    assert "the pipeline adds the replicas" in d.reason
    # A new pod from the template (1 core) rises to the plan's floor even when carried.
    assert run([stage(1, 2)], 1.0, env((3,), (8,))).cores == (3,)


def test_new_small_pods_among_grown_ones_get_their_even_share_of_cores():
    # After a scale-out, 4 pods grown to 2 cores and 3 new ones at the template's 1 core. A
    # Service sends each pod 1/7 of the load: of 160 rps with headroom (172.6) that is 24.7 rps,
    # which the 1-core pods (26.3 rps) carry; of 175 rps (188.2) it is 26.9, which they do not,
    # though the pods' summed throughput (4 x 48.7 + 3 x 26.3 = 273.7) covers it easily.
    mixed = [StageNow(RESNET, 1, (2000,) * 4 + (1000,) * 3, 2, 1)]
    assert carries(mixed, 160.0, 750)
    assert not carries(mixed, 175.0, 750)
    d = run(mixed, 175.0)
    assert (d.direction, d.cores) == (UP, (2,))
    # Carried: the small pods are left alone, and the grown ones wait to come down.
    d = run(mixed, 160.0, now=1000, last_up=990)
    assert d.direction == HOLD
    # Below the plan's floor a small pod rises to it, carried or not.
    assert run(mixed, 10.0, env((2,), (16,)), last_up=990).direction == UP


def test_unequal_pods_that_do_not_carry_their_shares_are_levelled_at_the_answer():
    # 4 pods grown to 4 cores, 3 new ones at 1: 175 rps needs 2 cores on every pod (see above).
    # Levelled, the big pods give back 8 cores and the small ones take 3: room on a full node.
    mixed = [StageNow(RESNET, 1, (4000,) * 4 + (1000,) * 3, 4, 1)]
    d = run(mixed, 175.0)
    assert (d.direction, d.cores, d.level) == (UP, (2,), (True,))
    assert d.levels(0) and "levelled" in d.reason
    # Carried, nothing is levelled; equal pods are never levelled.
    assert not run(mixed, 100.0, last_up=990).levels(0)
    d = run([stage(4, 7)], 300.0, last_up=990)
    assert (d.direction, d.level) == (HOLD, (False,))
    # Nothing inside the envelope carries the load: every pod to the ceiling, none down.
    d = run(mixed, 2000.0, env((1,), (8,)))
    assert (d.direction, d.cores, d.levels(0)) == (UP, (8,), False)


def test_no_ready_pods_means_nothing_to_resize():
    d = run([StageNow(RESNET, 1, (), 2)], 100.0)
    assert d.direction == HOLD and "no ready pods" in d.reason


def test_a_resize_in_progress_is_not_asked_again():
    # The pods ask for 2 cores but still run 1: not carried, nothing new to ask.
    d = run([stage(2, 2, allocated=1)], 60.0)
    assert (d.direction, d.cores) == (HOLD, (2,))
    assert "already ask" in d.reason


def test_two_stages_share_the_slo_at_the_least_cores():
    pods = [stage(1, 2, profile=YOLO), stage(1, 2)]
    cores, short = need_cores(pods, 60.0, 750, env((1, 1), (16, 16)))
    assert short is None
    # Per stage, the fewest cores that carry 67.7 rps over 2 pods.
    for p, c in zip((YOLO, RESNET), cores, strict=True):
        assert 2 * p.throughput_rps(1, c) >= 67.7
        assert 2 * p.throughput_rps(1, c - 1) < 67.7 or c == 1


def test_envelope_from_plan_and_without_one():
    at = pd.Timestamp("2026-01-01T00:00:00Z")
    steps = (
        PlanStep(at, at, (2,), (3,), (1,), "now", 10.0, 100.0, "hold"),
        PlanStep(at + pd.Timedelta(minutes=5), at + pd.Timedelta(minutes=4), (2,), (5,), (1,),
                 "later", 10.0, 100.0, "bridge"),
    )
    plan = Plan("svc", at, steps, 0.95, 750.0, ("resnet18",))
    kw = dict(min_cores=[1], max_cores=[16], template_cores=[7])
    e = envelope(plan, at + pd.Timedelta(minutes=1), bridge_max_cores=8, **kw)
    assert (e.floor_cores, e.ceiling_cores) == ((3,), (8,))
    e = envelope(plan, at + pd.Timedelta(minutes=4), bridge_max_cores=None, **kw)
    assert (e.floor_cores, e.ceiling_cores) == ((5,), (16,))
    e = envelope(None, at, bridge_max_cores=None, why_no_plan="plan expired", **kw)
    assert e.floor_cores == (7,) and "plan expired" in e.source


def test_bridge_settings_are_the_specs_bridge_table():
    assert bridge_settings(SimpleNamespace()) == BridgeSpec()
    table = BridgeSpec(interval_s=2.0, signal_window_s=10.0, scale_down_after_s=0.0,
                           max_cores=4, enabled=False)
    assert bridge_settings(SimpleNamespace(bridge=table)) is table
    with pytest.raises(ValueError, match=r"interval_s"):
        BridgeSpec(interval_s=0.1)


def test_held_by_reads_a_lease():
    lease = {"spec": {"holderIdentity": "pipeline-1", "leaseDurationSeconds": 180,
                      "renewTime": "2026-01-01T00:00:00.000000Z"}}
    t0 = pd.Timestamp("2026-01-01T00:00:00Z").timestamp()
    assert held_by(lease, t0 + 100) == "pipeline-1"
    assert held_by(lease, t0 + 181) is None
    assert held_by({"spec": {"holderIdentity": None}}, t0) is None
    assert held_by(None, t0) is None


# --------------------------------------------------------------------------------------------
# properties

stage_st = st.builds(
    lambda profile, cores, ready, batch: stage(cores, ready, profile=profile, batch=batch),
    st.sampled_from([RESNET, YOLO]),
    st.integers(1, 16),
    st.integers(1, 6),
    st.integers(1, 4),
)
envelope_st = st.builds(
    lambda lo, span: Envelope((lo,), (lo + span,), "prop"), st.integers(1, 8), st.integers(0, 8)
)
rps_st = st.floats(0, 3000, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(stage_st, envelope_st, rps_st, st.floats(0, 3000), st.floats(0, 500), st.floats(0, 500))
def test_property_always_within_the_envelope(s, e, rps, peak, since_up, covered):
    d = decide(S, [s], e, rps=rps, slo_ms=750, now_s=1000, last_up_s=1000 - since_up,
               window_peak_rps=peak, window_start_s=1000 - covered)
    assert e.floor_cores[0] <= d.cores[0] <= e.ceiling_cores[0]


@settings(max_examples=300, deadline=None)
@given(stage_st, envelope_st, rps_st, rps_st, st.floats(0, 3000), st.floats(0, 500))
def test_property_monotone_in_load(s, e, a, b, peak, since_up):
    low, high = sorted((a, b))
    kw = dict(slo_ms=750, now_s=1000, last_up_s=1000 - since_up, window_peak_rps=peak,
              window_start_s=0)
    assert (decide(S, [s], e, rps=low, **kw).cores[0]
            <= decide(S, [s], e, rps=high, **kw).cores[0])


@settings(max_examples=150, deadline=None)
@given(st.lists(rps_st, min_size=5, max_size=80), st.integers(1, 4),
       st.sampled_from([0.0, 10.0, 60.0]), st.sampled_from([1.0, 5.0]))
def test_property_no_down_move_within_scale_down_after_s_of_an_up_move(loads, ready, wait,
                                                                        every):
    """A controller loop on the pure decision: the pods follow each decision at once."""
    knobs = BridgeSpec(interval_s=every, scale_down_after_s=wait)
    e = Envelope((1,), (16,), "prop")
    cores, last_up, window = 1, None, deque()
    for k, rps in enumerate(loads):
        now = k * every
        window.append((now, rps))
        while window and window[0][0] < now - wait:
            window.popleft()
        d = decide(knobs, [stage(cores, ready)], e, rps=rps, slo_ms=750, now_s=now,
                   last_up_s=last_up, window_peak_rps=max(r for _, r in window),
                   window_start_s=0.0)
        if d.direction == DOWN:
            assert last_up is None or now - last_up >= wait
            # the lower shape carried every sample of the window
            assert all(carries([stage(d.cores[0], ready)], r, 750) or d.cores[0] == 1
                       for _, r in window)
        if d.direction == UP:
            last_up = now
        cores = d.cores[0]


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 1500, allow_nan=False), st.integers(1, 8))
def test_property_need_cores_is_the_vertical_dps_answer_at_a_fixed_batch(rps, ready):
    """At batch 1 (no batch-fill wait, no other batch to pick) the bridge answers exactly the
    planner's DP 2: the replicas fixed at the ready count, the least cores that carry λ + √λ."""
    from dataclasses import replace

    from planner.dp import MAX_CORES as DP_MAX_CORES
    from planner.dp import vertical
    from planner.profiles import Pipeline

    one = replace(RESNET, max_batch=1)
    dp = vertical(Pipeline("p", (one,)), rps, 750.0, [ready])
    cores, short = need_cores([stage(1, ready)], rps, 750.0, env((1,), (one.max_cores,)))
    if dp.binding == DP_MAX_CORES:  # the DP adds replicas; the bridge stops at the ceiling
        assert short is not None and cores == (one.max_cores,)
    else:
        assert dp.feasible and short is None and cores == dp.cores
