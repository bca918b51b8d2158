"""The 1-second cluster simulator: known answers, cold starts, resizes, and agreement with a
request-level discrete-event simulation (``des.py``) over light load, near-SLO, overload,
recovery, cold-start and resize windows, against a bar fixed before the windows were run."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache, partial

import numpy as np
import pandas as pd
import pytest
from des import ReplicaTimeline, timeline_latencies_ms

from actuator.guards import Bounds, within_bounds
from planner.dp import StageConfig
from planner.profiles import LatencyProfile, Pipeline
from surgecast.offline.simulator import (
    SimulationSettings,
    batch_service_ms,
    count_violations,
    latency_tail,
    simulate,
)

# A profile with round numbers: l(b, c) = 40·b/c + 10 ms, so one core at batch 1 serves 20 rps.
PROFILE = LatencyProfile(
    name="toy",
    alpha=40.0,
    beta=0.0,
    gamma=0.0,
    zeta=10.0,
    max_cores=8,
    max_batch=8,
    memory_mb=512.0,
)
TOY = Pipeline(name="toy", stages=(PROFILE,))
RESNET = LatencyProfile(
    name="resnet18",
    alpha=28.08,
    beta=2.63,
    gamma=6.81,
    zeta=0.46,
    max_cores=16,
    max_batch=8,
    memory_mb=1024.0,
)


def no_guards(stage, view, now_s, last_up):
    return ()


class Scripted:
    """Asks for given shapes at given seconds."""

    name = "scripted"

    def __init__(self, script: dict[int, StageConfig]) -> None:
        self.script = script

    def decide(self, view):
        shape = self.script.get(view.now_s)
        return None if shape is None else [shape]


def run(
    counts,
    shape,
    script=None,
    slo_ms=500.0,
    cold_start_s=30,
    resize_s=2,
    guards=no_guards,
    routing="round-robin",
):
    return simulate(
        np.asarray(counts, dtype=float),
        TOY,
        Scripted(script or {}),
        [shape],
        SimulationSettings(
            slo_ms=slo_ms, cold_start_s=cold_start_s, resize_s=resize_s, routing=routing
        ),
        guards,
    )


def test_light_load_no_backlog_almost_no_violations_and_cost_is_cores_times_time():
    result = run(np.full(600, 30.0), StageConfig(2, 1, 1), routing="pooled")  # 40 rps
    assert result.served.sum() == pytest.approx(30.0 * 600)
    # No backlog; Poisson bursts within a second leave a tail over 500 ms (ten service times)
    # of a few requests in 10^5 when both replicas share one queue (an M/D/2 queue at 75 %).
    assert result.violations.sum() / (30.0 * 600) < 1e-4
    summary = result.summary()
    assert summary["core_hours"] == pytest.approx(2 * 600 / 3600)
    assert summary["mean_utilisation"] == pytest.approx(30 / 40)
    assert summary["violation_minutes"] == 0 and summary["actions"] == 0
    # Routed at random, each replica is an M/D/1 queue at 75 %: a share ρ = 0.75 waits, and
    # the wait's tail is far longer than the shared queue's (0.6 % over 500 ms, measured).
    # A queue-aware router shares the load about as well as one queue does.
    routed = run(np.full(600, 30.0), StageConfig(2, 1, 1)).violations.sum() / (30.0 * 600)
    least = run(np.full(600, 30.0), StageConfig(2, 1, 1), routing="least-outstanding")
    assert 0.002 < routed < 0.02
    assert least.violations.sum() / (30.0 * 600) < 1e-4


def test_overload_wait_grows_and_violations_match_the_fluid_queue():
    # 30 rps into 20 rps of capacity (batch 1, l = 50 ms): the backlog grows by 10 per second
    # and a request arriving at time t waits t·(30 − 20)/20 = t/2 s, then 50 to 100 ms of
    # service. With a 600 ms SLO it is late once t/2 + 0.05·(1 + U) > 0.6: everyone after
    # t = 1.0 s, none before 0.9 s, half of them in between.
    n = 300
    result = run(np.full(n, 30.0), StageConfig(1, 1, 1), slo_ms=600.0)
    assert result.served.sum() == pytest.approx(20.0 * n)
    expected = 30.0 * (n - 0.95)
    assert result.violations.sum() == pytest.approx(expected, rel=0.002)


def test_cold_start_serves_nothing_but_costs_cores():
    counts = np.full(120, 30.0)
    result = run(counts, StageConfig(1, 1, 1), script={10: StageConfig(3, 1, 1)}, cold_start_s=30)
    assert result.capacity_rps[9] == pytest.approx(20.0)
    assert result.capacity_rps[10:40].max() == pytest.approx(20.0)  # still starting
    assert result.capacity_rps[40] == pytest.approx(60.0)  # ready after 30 s
    assert result.cost_cores[10] == 3  # paid from scheduling on
    assert result.actions == 1


def test_in_place_resize_takes_effect_after_the_delay_and_pays_the_larger_size():
    counts = np.full(60, 10.0)
    result = run(counts, StageConfig(1, 1, 1), script={5: StageConfig(1, 4, 1)}, resize_s=2)
    assert result.capacity_rps[6] == pytest.approx(20.0)
    assert result.capacity_rps[7] == pytest.approx(1000 / (40 / 4 + 10))
    assert result.cost_cores[5] == 4 and result.cost_cores[4] == 1
    assert result.cores[5] == 4


def test_bridge_then_consolidate_is_make_before_break():
    # Grow 2 pods in place now (bridge), then ask for 6 small pods (consolidate): the bridged
    # pods keep their size until the 4 new ones are ready, then shrink.
    counts = np.full(120, 10.0)
    script = {10: StageConfig(2, 4, 1), 11: StageConfig(6, 1, 1)}
    result = run(counts, StageConfig(2, 1, 1), script=script, cold_start_s=30, resize_s=2)
    big = 1000 / (40 / 4 + 10)
    assert result.capacity_rps[12] == pytest.approx(2 * big)  # the bridge took effect
    assert result.capacity_rps[40] == pytest.approx(2 * big)  # new pods still starting
    assert result.capacity_rps[41] == pytest.approx(2 * big + 4 * 20.0)  # new pods ready
    assert result.capacity_rps[44] == pytest.approx(6 * 20.0)  # bridged pods shrank
    assert result.cost_cores[20] == 2 * 4 + 4 * 1


def test_fewer_larger_pods_keep_the_surplus_until_the_others_have_grown():
    counts = np.full(60, 10.0)
    result = run(counts, StageConfig(4, 1, 1), script={10: StageConfig(2, 4, 1)}, resize_s=2)
    assert result.capacity_rps[11] == pytest.approx(4 * 20.0)
    assert result.capacity_rps[12] == pytest.approx(2 * 1000 / (40 / 4 + 10))
    assert result.replicas[12] == 2


def test_scale_in_removes_starting_replicas_first():
    counts = np.full(100, 10.0)
    script = {5: StageConfig(3, 1, 1), 10: StageConfig(2, 1, 1)}
    result = run(counts, StageConfig(2, 1, 1), script=script)
    # Both ready replicas stay: capacity never drops below 2 ready replicas.
    assert result.capacity_rps.min() == pytest.approx(40.0)
    assert result.replicas[10] == 2 and result.actions == 2


def test_every_decision_passes_the_guards():
    bounds = Bounds(1, 3, 1, 2, 8)
    guards = lambda s, v, t, up: (partial(within_bounds, bounds=bounds),)  # noqa: E731
    result = run(
        np.full(60, 10.0), StageConfig(1, 1, 1), script={5: StageConfig(9, 8, 1)}, guards=guards
    )
    assert result.replicas.max() == 3 and result.cores.max() == 2
    assert any("bounds" in note for _, note in result.guard_notes)


def test_violation_count_is_zero_when_departures_keep_up():
    arrivals = np.array([5.0, 7.0, 0.0, 3.0])
    assert count_violations(arrivals, arrivals, np.zeros(4), 100.0).sum() == 0


def test_service_time_alone_can_break_the_slo():
    arrivals = np.full(10, 4.0)
    late = count_violations(arrivals, arrivals, np.full(10, 600.0), 500.0)
    assert late.sum() == pytest.approx(40.0)
    # Latency uniform in [l, 2l] = [300, 600] ms: a third of the requests exceed 500 ms.
    late = count_violations(arrivals, arrivals, np.full(10, 300.0), 500.0)
    assert late.sum() == pytest.approx(40.0 / 3)


def test_greedy_batches_grow_with_the_per_replica_rate():
    # l(k, 1) = 40·k + 10 ms: at 15 rps a replica forms batches of k = 15·10/(1000 − 15·40)
    # (below 1, so 1); at 24 rps k = 240/40 = 6; at 30 rps it saturates at the batch size.
    assert batch_service_ms(PROFILE, 8, 1, 15.0) == pytest.approx(50.0)
    assert batch_service_ms(PROFILE, 8, 1, 24.0) == pytest.approx(40 * 6 + 10)
    assert batch_service_ms(PROFILE, 8, 1, 30.0) == pytest.approx(40 * 8 + 10)
    result = run(np.full(60, 48.0), StageConfig(2, 1, 8))
    assert result.service_ms[30] == pytest.approx(250.0)


# -- agreement with a request-level simulation ---------------------------------------------------
#
# The bar, fixed before any case was run, from what the planner and the backtest need of the
# share of requests over the SLO (the quantity the planner's p99 target and the backtest's
# violation_rate and violation minutes are about):
#
# * share >= 5 % (overload, a backlog draining): the queue dominates and the fluid model is
#   meant to be exact about it; |fluid - des| / des <= 0.2, so that a policy that is twice as
#   bad in a surge reads as worse, never as better.
# * 0.1 % <= share < 5 % (near the SLO, where a p99 target lives): within a factor of 2
#   (|ln(fluid / des)| <= ln 2; this applies as soon as either share reaches 0.1 %), so that
#   a shape whose true share is 0.5 % never reads as above the 1 % line and one at 2 % never
#   reads as below it. The
#   request-level share of a 10-minute window has a sampling spread of about 10-20 % at 1 %.
# * both below 0.1 %: |fluid - des| <= 0.05 percentage points (a few requests in 10 minutes).

SHARE_FLOOR = 0.001
"""Below this share over the SLO only an absolute bar is meaningful."""
HIGH_SHARE = 0.05
"""From this share of the request-level simulation on, the relative bar applies."""
QUEUE_REL_BAR = 0.2
"""|fluid - des| / des allowed where des >= HIGH_SHARE."""
TAIL_FACTOR_BAR = 2.0
"""fluid / des must lie in [1/2, 2] where a share lies in [SHARE_FLOOR, HIGH_SHARE)."""
ABS_BAR = 0.0005
"""|fluid - des| allowed where both shares are below SHARE_FLOOR."""
DRAIN_S = 180
"""Seconds without arrivals appended to every window, so that both simulations serve every
request and no request is counted late merely for being cut off at the end of the span."""
RESNET_PIPELINE = Pipeline("resnet18", (RESNET,))


def agrees(fluid: float, des: float) -> bool:
    """Whether two shares of requests over the SLO agree within the bar above."""
    if max(fluid, des) < SHARE_FLOOR:
        return abs(fluid - des) <= ABS_BAR
    if des >= HIGH_SHARE:
        return abs(fluid - des) <= QUEUE_REL_BAR * des
    if fluid <= 0 or des <= 0:
        return False  # one sees 0.1 % or more over the SLO, the other none
    return abs(math.log(fluid / des)) <= math.log(TAIL_FACTOR_BAR)


def relative_error(fluid: float, des: float) -> float:
    return abs(fluid - des) / des if des > 0 else (0.0 if fluid == 0 else math.inf)


def test_the_bar_itself():
    assert agrees(0.0, 0.0) and agrees(0.0004, 0.0) and not agrees(0.0009, 0.0002)
    assert agrees(0.019, 0.01) and not agrees(0.021, 0.01) and not agrees(0.0049, 0.01)
    assert not agrees(0.0015, 0.0) and not agrees(0.0, 0.0012) and agrees(0.0009, 0.0011)
    assert agrees(0.59, 0.5) and not agrees(0.61, 0.5) and not agrees(0.39, 0.5)


def fixed(replicas: int, cores: int, batch: int) -> tuple[ReplicaTimeline, ...]:
    return (ReplicaTimeline(cores, batch),) * replicas


def capacity_rps(replicas: int, cores: int, batch: int) -> float:
    return replicas * float(RESNET.throughput_rps(batch, cores))


@dataclass(frozen=True)
class Window:
    """One validation window: a load, a cluster and what happens to it.

    Attributes:
        regime: what the window exercises (the table groups by it).
        name: a short label.
        rates_rps: mean arrival rate of each second; the arrivals are Poisson at that rate.
        initial: the cluster's shape at second 0 (warm).
        slo_ms: the SLO; for ``slo_quantile`` windows it is derived (see there).
        slo_quantile: when set, the SLO is the request-level simulation's latency at this
            quantile (ms, rounded up), so that its share over the SLO is 1 - quantile by
            construction: the near-SLO regime, placed where a planner's target is.
        script: second -> shape asked of the fluid simulator.
        replicas: the same changes, written as request-level replica timelines.
        cold_start_s: seconds before a new replica serves.
        resize_s: seconds an in-place resize takes.
        known_gap: empty when the fluid model meets the bar; otherwise why it does not (the
            case is then an expected failure of the bar, strict: a fix must update it).
    """

    regime: str
    name: str
    rates_rps: np.ndarray
    initial: StageConfig
    replicas: tuple[ReplicaTimeline, ...]
    slo_ms: float = 0.0
    slo_quantile: float | None = None
    script: dict[int, StageConfig] = field(default_factory=dict)
    cold_start_s: int = 30
    resize_s: int = 2
    known_gap: str = ""


def steady(rho: float, replicas: int, cores: int, batch: int, seconds: int = 600) -> np.ndarray:
    return np.full(seconds, rho * capacity_rps(replicas, cores, batch))


def surge(base: float, peak: float, capacity: float, seconds: int, start_s: int, end_s: int = 0):
    """``base`` x ``capacity`` rps, ``peak`` x ``capacity`` from ``start_s`` to ``end_s``
    (to the end when 0)."""
    rates = np.full(seconds, base * capacity)
    rates[start_s : end_s or seconds] = peak * capacity
    return rates


NEAR_SLO_SHAPES = [  # (replicas, cores, batch): batch 1, small and large batches, slow and fast
    (8, 1, 1),
    (6, 2, 2),
    (4, 2, 4),
    (4, 1, 4),
    (3, 4, 8),
    (2, 1, 8),
    (1, 16, 8),
]
NEAR_SLO_QUANTILES = (0.96, 0.99, 0.998)  # shares over the SLO of 4 %, 1 % and 0.2 %
NEAR_SLO_LOAD = 0.85  # of the shape's capacity at its batch size: a typical planning target
OVER = (
    "fluid too high: several replicas are modelled as one server picking up every l(k)/n, "
    "which waits too long when a replica could pick up at once; worst at the far tail"
)
NEAR_SLO_GAPS = {  # measured; the table printed by test_agreement_table has the figures
    (6, 2, 2, 0.998): OVER,  # 0.383 % vs 0.179 % (2.1x)
    (4, 2, 4, 0.998): OVER,  # 0.632 % vs 0.193 % (3.3x)
    (4, 1, 4, 0.998): OVER,  # 0.611 % vs 0.189 % (3.2x)
    (2, 1, 8, 0.99): OVER,  # 2.16 % vs 0.98 % (2.2x)
    (2, 1, 8, 0.998): OVER,  # 1.13 % vs 0.197 % (5.8x)
}


def windows() -> list[Window]:
    """Every validation window, by regime."""
    out = [
        Window(
            "light",
            "4x2c b4 at 30 %",
            steady(0.3, 4, 2, 4),
            StageConfig(4, 2, 4),
            fixed(4, 2, 4),
            slo_ms=200.0,
        )
    ]
    for r, c, b in NEAR_SLO_SHAPES:
        for q in NEAR_SLO_QUANTILES:
            out.append(
                Window(
                    "near SLO",
                    f"{r}x{c}c b{b} at 85 %, p{100 * q:g}",
                    steady(NEAR_SLO_LOAD, r, c, b),
                    StageConfig(r, c, b),
                    fixed(r, c, b),
                    slo_quantile=q,
                    known_gap=NEAR_SLO_GAPS.get((r, c, b, q), ""),
                )
            )
    out += [
        Window(
            "overload",
            "2x4c b8: 70 % then 110 % for 120 s",
            surge(0.7, 1.1, capacity_rps(2, 4, 8), 300, 120),
            StageConfig(2, 4, 8),
            fixed(2, 4, 8),
            slo_ms=750.0,
        ),
        Window(
            "overload",
            "8x1c b1: 80 % then 103 % for 180 s",
            surge(0.8, 1.03, capacity_rps(8, 1, 1), 300, 120),
            StageConfig(8, 1, 1),
            fixed(8, 1, 1),
            slo_ms=400.0,
        ),
        Window(
            "overload",
            "3x4c b8: ramp 80 % to 115 %",
            capacity_rps(3, 4, 8) * np.linspace(0.8, 1.15, 600),
            StageConfig(3, 4, 8),
            fixed(3, 4, 8),
            slo_ms=200.0,
        ),
        Window(
            "recovery",
            "6x2c b2: 150 % for 30 s, back to 60 %",
            surge(0.6, 1.5, capacity_rps(6, 2, 2), 300, 60, 90),
            StageConfig(6, 2, 2),
            fixed(6, 2, 2),
            slo_ms=400.0,
        ),
        Window(
            "recovery",
            "4x1c b4: 130 % for 60 s, back to 70 %",
            surge(0.7, 1.3, capacity_rps(4, 1, 4), 300, 60, 120),
            StageConfig(4, 1, 4),
            fixed(4, 1, 4),
            slo_ms=750.0,
        ),
        Window(
            "cold start",
            "2 -> 4 x2c b4 at a surge to 160 %, 30 s start",
            surge(0.6, 1.6, capacity_rps(2, 2, 4), 300, 60),
            StageConfig(2, 2, 4),
            fixed(2, 2, 4) + (ReplicaTimeline(2, 4, ready_s=90),) * 2,
            slo_ms=750.0,
            script={60: StageConfig(4, 2, 4)},
        ),
        Window(
            "cold start",
            "3 -> 6 x1c b8 at a surge to 130 %, 60 s start",
            surge(0.5, 1.3, capacity_rps(3, 1, 8), 360, 60),
            StageConfig(3, 1, 8),
            fixed(3, 1, 8) + (ReplicaTimeline(1, 8, ready_s=120),) * 3,
            slo_ms=750.0,
            script={60: StageConfig(6, 1, 8)},
            cold_start_s=60,
        ),
        Window(
            "resize",
            "2x 1c -> 4c b4 at a surge to 200 %",
            surge(0.6, 2.0, capacity_rps(2, 1, 4), 300, 60),
            StageConfig(2, 1, 4),
            (ReplicaTimeline(1, 4, resizes=((65.0, 4, 4),)),) * 2,
            slo_ms=400.0,
            script={63: StageConfig(2, 4, 4)},
        ),
        Window(
            "resize",
            "3x 2c b2 -> 4c b8 at a surge to 160 %",
            surge(0.5, 1.6, capacity_rps(3, 2, 2), 300, 60),
            StageConfig(3, 2, 2),
            (ReplicaTimeline(2, 2, resizes=((64.0, 4, 8),)),) * 3,
            slo_ms=750.0,
            script={62: StageConfig(3, 4, 8)},
        ),
    ]
    return out


WINDOWS = windows()


@dataclass(frozen=True)
class Agreement:
    slo_ms: float
    requests: int
    fluid_share: float
    des_share: float
    des_latencies_ms: np.ndarray
    fluid_result: object

    @classmethod
    def of(cls, fluid, counts: np.ndarray, latencies: np.ndarray, slo_ms: float) -> Agreement:
        """The fluid run's share over the SLO beside the request-level one."""
        return cls(
            slo_ms=slo_ms,
            requests=int(counts.sum()),
            fluid_share=float(fluid.violations.sum() / counts.sum()),
            des_share=float(np.mean(latencies > slo_ms)),
            des_latencies_ms=latencies,
            fluid_result=fluid,
        )


@cache
def compare(index: int, routing: str = "pooled") -> Agreement:
    """Runs window ``index`` through both simulations (seeded; the same per-second counts),
    both with one queue per stage (``pooled``) or both with a queue per replica and the same
    routing."""
    window = WINDOWS[index]
    rng = np.random.default_rng(100 + index)
    counts = np.concatenate([rng.poisson(window.rates_rps).astype(float), np.zeros(DRAIN_S)])
    des_routing = None if routing == "pooled" else routing
    _, latencies = timeline_latencies_ms(
        counts, RESNET, window.replicas, seed=index, routing=des_routing
    )
    if window.slo_quantile is None:
        slo_ms = window.slo_ms
    else:
        slo_ms = float(math.ceil(np.quantile(latencies, window.slo_quantile)))
    fluid = simulate(
        counts,
        RESNET_PIPELINE,
        Scripted(window.script),
        [window.initial],
        SimulationSettings(
            slo_ms=slo_ms,
            cold_start_s=window.cold_start_s,
            resize_s=window.resize_s,
            routing=routing,
        ),
        no_guards,
    )
    # Both served every request before the span ended: the drain is long enough.
    assert fluid.served.sum() == pytest.approx(counts.sum())
    return Agreement.of(fluid, counts, latencies, slo_ms)


def _params():
    for i, w in enumerate(WINDOWS):
        if w.regime == "light":
            continue
        marks = [pytest.mark.xfail(strict=True, reason=w.known_gap)] if w.known_gap else []
        yield pytest.param(i, id=f"{w.regime}: {w.name}", marks=marks)


@pytest.mark.parametrize("index", list(_params()))
def test_fluid_simulator_agrees_with_a_request_level_simulation(index):
    """Share of requests over the SLO, fluid 1-s simulator vs request-level simulation.

    The bar is the one in the comment above ``SHARE_FLOOR`` (fixed before the cases were run).
    Arrivals are Poisson at each window's rate: the per-second counts are drawn once and both
    simulations see them; the request-level one places each request uniformly at random within
    its second.

    Measured (``pytest -s`` prints the table): where a backlog sets the share (overload,
    recovery, cold starts and in-place resizes during a surge; shares of 2.6 % to 68 %) the
    fluid model is within 7 % of the request-level share. Near the SLO at a steady 85 % of
    capacity (7 shapes x SLOs at the request-level p96, p99, p99.8) it meets the factor-2 bar
    in 16 of 21 windows (fluid/des 0.55 to 2.0) through the within-second queue
    (``simulator.latency_tail``); the 5 others read too high, by 2.1x to 5.8x, all at the far
    tail of slow replicas with batches (``NEAR_SLO_GAPS``, strict expected failures).
    """
    window = WINDOWS[index]
    result = compare(index)
    assert result.requests > 10_000
    assert agrees(result.fluid_share, result.des_share), (
        f"{window.regime} {window.name}: SLO {result.slo_ms:g} ms, fluid "
        f"{result.fluid_share:.4%} vs request-level {result.des_share:.4%}"
    )


def test_light_load_both_see_no_request_over_the_slo_with_room_to_spare():
    """At 30 % of capacity neither simulation has a request over a 200 ms SLO, and the zero is
    not marginal: it holds at half the SLO too (both simulations' slowest request is under
    100 ms, about 5 times the 20.5 ms batch-1 service time on 2 cores)."""
    (index,) = [i for i, w in enumerate(WINDOWS) if w.regime == "light"]
    result = compare(index)
    assert result.requests > 30_000
    assert result.fluid_share == 0 and result.des_share == 0
    half = WINDOWS[index].slo_ms / 2
    assert result.des_latencies_ms.max() < half
    fluid = result.fluid_result
    late_at_half = count_violations(fluid.arrivals, fluid.served, fluid.service_ms, half)
    assert late_at_half.sum() == 0
    # Requests do queue behind each other now and then (the request-level tail is real, just
    # short): the slowest request took more than two batch-1 service times.
    assert result.des_latencies_ms.max() > 2 * RESNET.latency_ms(1, 2)


def _near_slo_p99() -> list[int]:
    return [i for i, w in enumerate(WINDOWS) if w.regime == "near SLO" and w.slo_quantile == 0.99]


def test_near_slo_tail_comes_from_sub_second_poisson_bursts():
    """Why the fluid backlog alone misses the near-SLO bar, and that the within-second queue
    supplies the tail.

    Fed the same per-second counts spread evenly within each second (the fluid backlog's
    assumption), the request-level simulation keeps at most a third of the share over its own
    Poisson p99 in every shape (measured 0 to 0.29 of it): most of the tail near the SLO is
    queueing behind sub-second bursts. At a constant rate the fluid backlog and the batch
    service alone (``count_violations`` without tails) put no request over that SLO in any
    shape; the simulator with the within-second queue puts between half and twice the
    request-level share there.
    """
    for index in _near_slo_p99():
        window = WINDOWS[index]
        result = compare(index)
        rng = np.random.default_rng(100 + index)
        counts = np.concatenate([rng.poisson(window.rates_rps).astype(float), np.zeros(DRAIN_S)])
        _, even = timeline_latencies_ms(counts, RESNET, window.replicas, seed=index, even=True)
        assert np.mean(even > result.slo_ms) <= result.des_share / 3, window.name
        steady_counts = np.concatenate(
            [np.full(len(window.rates_rps), np.round(window.rates_rps[0])), np.zeros(DRAIN_S)]
        )
        fluid = simulate(
            steady_counts,
            RESNET_PIPELINE,
            Scripted({}),
            [window.initial],
            SimulationSettings(slo_ms=result.slo_ms, routing="pooled"),
            no_guards,
        )
        backlog_only = count_violations(
            fluid.arrivals, fluid.served, fluid.service_ms, result.slo_ms
        )
        assert backlog_only.sum() == 0, window.name
        share = fluid.violations.sum() / steady_counts.sum()
        assert 0.5 <= share / result.des_share <= TAIL_FACTOR_BAR * 1.2, window.name


def test_within_second_queue_of_one_replica_at_batch_1_is_m_d_1():
    """One replica at batch 1 is an M/D/1 queue, where the chain is exact: a request waits with
    probability ρ, and the mean wait is ρ·D / (2·(1 − ρ)) (Pollaczek-Khinchine; Kleinrock,
    Queueing Systems vol. 1, 1975, eq. 5.76 with a deterministic service time D)."""
    service_ms = PROFILE.latency_ms(1, 1)  # 50 ms: 20 rps
    for rho in (0.3, 0.7, 0.9):
        tail = latency_tail(PROFILE, 1, 1, 1, rho * 20.0, horizon_ms=20_000.0)
        expected = service_ms + rho * service_ms / (2 * (1 - rho))
        assert tail.mean_ms == pytest.approx(expected, rel=0.01), rho
        # Everyone takes at least D; a share ρ waits first.
        assert tail.ccdf[int(service_ms) - 1] == pytest.approx(1.0)
        assert tail.ccdf[int(service_ms) + 1] == pytest.approx(rho, rel=0.02), rho
    # More replicas or larger batches at the same load wait less.
    single = latency_tail(PROFILE, 1, 1, 1, 14.0, 2000.0)
    assert latency_tail(PROFILE, 4, 1, 1, 56.0, 2000.0).ccdf[120] < single.ccdf[120]
    assert latency_tail(PROFILE, 1, 1, 4, 14.0, 2000.0).ccdf[120] < single.ccdf[120]


def test_agreement_table():
    """Prints every window (run with ``-s``) and checks the table as a whole: every regime is
    covered, no window has both shares at 0 except the light-load one, and the worst error of
    the windows that meet the bar is within it."""
    rows = []
    for index, window in enumerate(WINDOWS):
        result = compare(index)
        rows.append((window, result, relative_error(result.fluid_share, result.des_share)))
    print()
    print(f"{'regime':<11}{'window':<46}{'SLO ms':>7}{'fluid':>9}{'DES':>9}{'rel err':>9}  bar")
    for window, result, rel in rows:
        verdict = "ok" if agrees(result.fluid_share, result.des_share) else "MISS"
        print(
            f"{window.regime:<11}{window.name:<46}{result.slo_ms:>7.0f}"
            f"{result.fluid_share:>9.3%}{result.des_share:>9.3%}{rel:>9.2f}  {verdict}"
        )
    # Worst errors where the bar is met, per tier of the bar, and in the known gaps.
    queue = [rel for w, r, rel in rows if not w.known_gap and r.des_share >= HIGH_SHARE]
    tail = [
        abs(math.log(r.fluid_share / r.des_share))
        for w, r, _ in rows
        if not w.known_gap and SHARE_FLOOR <= max(r.fluid_share, r.des_share)
        if r.des_share < HIGH_SHARE
    ]
    gaps = [r.fluid_share / r.des_share for w, r, _ in rows if w.known_gap and r.des_share > 0]
    print(
        f"bar met: worst |fluid - des| / des at >= {HIGH_SHARE:.0%}: {max(queue):.3f}; worst "
        f"fluid/des factor at {SHARE_FLOOR:.1%}-{HIGH_SHARE:.0%}: {math.exp(max(tail)):.2f}; "
        f"known gaps ({len(gaps)} windows): fluid/des from {min(gaps):.3f} to {max(gaps):.1f}"
    )
    regimes = {w.regime for w, _, _ in rows}
    assert regimes == {"light", "near SLO", "overload", "recovery", "cold start", "resize"}
    for window, result, _ in rows:
        if window.regime != "light":
            assert max(result.fluid_share, result.des_share) >= SHARE_FLOOR, window.name
    assert max(queue) <= QUEUE_REL_BAR
    assert max(tail) <= math.log(TAIL_FACTOR_BAR)


def test_request_level_simulation_known_answers():
    """The request-level simulation on hand-checked cases: one request a second at mid-second,
    one 1-core replica (l(1, 1) = 37.98 ms, l(2, 1) = 68.69 ms)."""
    counts = np.ones(6)
    one = RESNET.latency_ms(1, 1)
    _, lat = timeline_latencies_ms(counts, RESNET, fixed(1, 1, 1), even=True)
    assert lat == pytest.approx(np.full(6, one))
    # Cold start: not ready before 2.0 s, so the requests of 0.5 s and 1.5 s go as one batch
    # of 2 at 2.0 s.
    _, lat = timeline_latencies_ms(counts, RESNET, (ReplicaTimeline(1, 2, ready_s=2.0),), even=True)
    two = RESNET.latency_ms(2, 1)
    assert lat[:2] == pytest.approx([1500 + two, 500 + two])
    assert lat[2:] == pytest.approx(np.full(4, one))
    # An in-place resize to 4 cores from 3.0 s on: later batches run at l(1, 4).
    _, lat = timeline_latencies_ms(
        counts, RESNET, (ReplicaTimeline(1, 1, resizes=((3.0, 4, 1),)),), even=True
    )
    assert lat == pytest.approx([one] * 3 + [RESNET.latency_ms(1, 4)] * 3)


# -- per-replica queues: both routings against the request-level simulation ---------------------
#
# The same windows and the same bar, with a queue per replica in both simulations and the same
# routing: ``round-robin`` (the request-level one picks a ready replica uniformly at random,
# as kube-proxy's iptables rules do; the fluid one splits each second's inflow equally) and
# ``least-outstanding`` (the request-level one picks the replica with the fewest outstanding
# requests relative to its throughput; the fluid one water-fills the second's inflow).

ROUTED = ("round-robin", "least-outstanding")
SAMPLED = (
    "fluid too low at p99.8 of fast replicas without large batches: over 10 minutes the "
    "request-level share that far out rests on a few multi-second excursions of single "
    "replicas' queues; over 5,000 s the 8x1c b1 shape at 85 % puts 0.015 % over the same "
    "1,070 ms (fluid 0.023 %)"
)
BATCH_TAIL = (
    "fluid too high at the far tail of slow replicas with large batches: the bulk-service "
    "chain's batch a request rides in (its place in the queue plus those expected behind it) "
    "is too large there"
)
POOLED_TAIL = (
    "fluid too high: the replicas a queue-aware router keeps busy are modelled as one server "
    "picking up every l(k)/n, which waits too long when a replica could pick up at once "
    "(the pooled model's gap, with batches of 4-8)"
)
ROUTED_GAPS = {  # (routing, replicas, cores, batch, quantile): measured, fluid/des in comments
    ("round-robin", 8, 1, 1, 0.998): SAMPLED,  # 0.023 % vs 0.199 % (0.12x)
    ("round-robin", 6, 2, 2, 0.998): SAMPLED,  # 0.061 % vs 0.200 % (0.30x)
    ("round-robin", 4, 1, 4, 0.998): BATCH_TAIL,  # 0.449 % vs 0.198 % (2.3x)
    ("round-robin", 2, 1, 8, 0.99): BATCH_TAIL,  # 2.13 % vs 0.99 % (2.2x)
    ("round-robin", 2, 1, 8, 0.998): BATCH_TAIL,  # 1.13 % vs 0.194 % (5.8x)
    ("least-outstanding", 8, 1, 1, 0.998): SAMPLED,  # 0.070 % vs 0.177 % (0.40x)
    ("least-outstanding", 6, 2, 2, 0.998): SAMPLED,  # 0.077 % vs 0.180 % (0.42x)
    ("least-outstanding", 4, 1, 4, 0.998): POOLED_TAIL,  # 0.450 % vs 0.195 % (2.3x)
    ("least-outstanding", 3, 4, 8, 0.96): POOLED_TAIL,  # 15.9 % vs 3.97 % (4.0x)
    ("least-outstanding", 3, 4, 8, 0.99): POOLED_TAIL,  # 3.30 % vs 0.95 % (3.5x)
    ("least-outstanding", 2, 1, 8, 0.96): POOLED_TAIL,  # 10.7 % vs 3.99 % (2.7x)
    ("least-outstanding", 2, 1, 8, 0.99): POOLED_TAIL,  # 2.83 % vs 0.98 % (2.9x)
    ("least-outstanding", 2, 1, 8, 0.998): POOLED_TAIL,  # 0.694 % vs 0.200 % (3.5x)
}


def routed_gap(window: Window, routing: str) -> str:
    if window.slo_quantile is None:
        return ""
    shape = window.initial
    return ROUTED_GAPS.get(
        (routing, shape.replicas, shape.cores, shape.batch, window.slo_quantile), ""
    )


def _routed_params():
    for routing in ROUTED:
        for i, w in enumerate(WINDOWS):
            gap = routed_gap(w, routing)
            marks = [pytest.mark.xfail(strict=True, reason=gap)] if gap else []
            yield pytest.param(i, routing, id=f"{routing}, {w.regime}: {w.name}", marks=marks)


@pytest.mark.parametrize(("index", "routing"), list(_routed_params()))
def test_per_replica_queues_agree_with_a_request_level_simulation(index, routing):
    """Share of requests over the SLO with a queue per replica, fluid vs request-level, for
    both routings (the bar above ``SHARE_FLOOR``). The near-SLO windows put the SLO at the
    request-level p96, p99 and p99.8, so they check those percentiles: at the request-level
    p99 the fluid share must be within a factor 2 of 1 %.

    Measured (``pytest -s test_per_replica_agreement_table`` prints it): where a backlog sets
    the share (overload, recovery, cold starts, resizes) within 4.1 % (round-robin) and 5.8 %
    (least-outstanding); near the SLO round-robin meets the bar in 16 of 21 windows
    (fluid/des 0.77-1.75), least-outstanding in 13 of 21 (0.58-1.55); ``ROUTED_GAPS`` says
    why the others miss.
    """
    window = WINDOWS[index]
    result = compare(index, routing)
    assert result.requests > 10_000
    assert agrees(result.fluid_share, result.des_share), (
        f"{routing} {window.regime} {window.name}: SLO {result.slo_ms:g} ms, fluid "
        f"{result.fluid_share:.4%} vs request-level {result.des_share:.4%}"
    )


def test_per_replica_agreement_table():
    """Prints both routings' tables (run with ``-s``); the worst error of the windows that meet
    the bar is within it, per tier."""
    print()
    for routing in ROUTED:
        queue, tail = [], []
        for index, window in enumerate(WINDOWS):
            r = compare(index, routing)
            rel = relative_error(r.fluid_share, r.des_share)
            gap = routed_gap(window, routing)
            verdict = "ok" if agrees(r.fluid_share, r.des_share) else "MISS"
            print(
                f"{routing:<18}{window.regime:<11}{window.name:<46}{r.slo_ms:>7.0f}"
                f"{r.fluid_share:>9.3%}{r.des_share:>9.3%}{rel:>9.2f}  {verdict}"
            )
            if gap:
                assert verdict == "MISS", (routing, window.name)  # a fixed gap is unlisted
                continue
            if r.des_share >= HIGH_SHARE:
                queue.append(rel)
            elif max(r.fluid_share, r.des_share) >= SHARE_FLOOR:
                tail.append(abs(math.log(r.fluid_share / r.des_share)))
        print(
            f"{routing}: worst |fluid - des| / des at >= {HIGH_SHARE:.0%}: {max(queue):.3f}; "
            f"worst factor at {SHARE_FLOOR:.1%}-{HIGH_SHARE:.0%}: {math.exp(max(tail)):.2f}"
        )
        assert max(queue) <= QUEUE_REL_BAR
        assert max(tail) <= math.log(TAIL_FACTOR_BAR)


# -- a slow replica: what routing does with it ------------------------------------------------
#
# Four pods of 4 cores at batch 4, one of which is resized in place to 1 core at the start
# (through the pods/resize subresource of the backtest's cluster model; effective at 2 s): 3 x
# 98.1 rps + 30.7 rps. The fluid side is the backtest's engine on that model (the capacity comes
# from the pods as the kubelet runs them), the request-level side the same four replicas.

HETERO_START = pd.Timestamp("2024-03-04T00:00:00Z")
HETERO_REPLICAS = (ReplicaTimeline(4, 4),) * 3 + (ReplicaTimeline(4, 4, resizes=((2.0, 1, 4),)),)
HETERO_DRAIN_S = 240


class _ShrinkOnePod:
    """Resizes the first pod (by name) of the Deployment to 1 core, once, at the start."""

    name, period_s, offset_s = "shrink-one", 1e9, 0.0

    def __init__(self, port) -> None:
        self.port = port

    def tick(self, now) -> None:
        pods = self.port.pods("inference", {"app": "resnet"})
        first = sorted(p["metadata"]["name"] for p in pods)[0]
        cpu = {"cpu": "1"}
        body = {"spec": {"containers": [
            {"name": "server", "resources": {"requests": cpu, "limits": cpu}}
        ]}}
        self.port.patch_resize("inference", first, body, dry_run=False)


def _hetero_capacity() -> float:
    return 3 * float(RESNET.throughput_rps(4, 4)) + float(RESNET.throughput_rps(4, 1))


@cache
def hetero_compare(load: float, seconds: int, routing: str, slo_ms: float = 0.0,
                   quantile: float = 0.0) -> Agreement:
    """The slow-replica cluster at ``load`` of its capacity for ``seconds``, both ways."""
    from surgecast.offline.cluster import Clock, ClusterModel, Node
    from surgecast.offline.engine import Engine, StageBinding
    from surgecast.offline.port import SimPort

    rng = np.random.default_rng(7)
    rates = np.full(seconds, load * _hetero_capacity())
    counts = np.concatenate([rng.poisson(rates).astype(float), np.zeros(HETERO_DRAIN_S)])
    _, latencies = timeline_latencies_ms(counts, RESNET, HETERO_REPLICAS, seed=5, routing=routing)
    if quantile:
        slo_ms = float(math.ceil(np.quantile(latencies, quantile)))
    model = ClusterModel(Clock(HETERO_START.timestamp()), start_delay_s=30.0,
                         resize_delay_s=2.0, nodes=[Node("node-1", 64_000)], follow_clock=False)
    model.add_deployment("inference", "resnet", replicas=4, cores=4, batch_env="BATCH", batch=4)
    engine = Engine(counts, RESNET_PIPELINE, model, "inference",
                    [StageBinding("resnet", batch_env="BATCH")], slo_ms=slo_ms, routing=routing)
    engine.controllers.append(_ShrinkOnePod(SimPort(model)))
    fluid = engine.run()
    assert fluid.capacity_rps[1] > fluid.capacity_rps[2] == pytest.approx(_hetero_capacity())
    assert fluid.served.sum() == pytest.approx(counts.sum())
    return Agreement.of(fluid, counts, latencies, slo_ms)


@pytest.mark.parametrize("routing", ROUTED)
def test_a_slow_replica_behind_each_routing_agrees_with_a_request_level_simulation(routing):
    """At half the four pods' capacity (SLO 300 ms): round-robin gives the 1-core pod a
    quarter of the load, 40.6 rps on 30.7 rps, so its queue grows for the whole window and a
    quarter of all requests go over the SLO (measured: fluid 24.8 %, request-level 24.6 %);
    least-outstanding sends it only what it can take and nobody is late (both 0)."""
    result = hetero_compare(0.5, 300, routing, slo_ms=300.0)
    assert result.requests > 40_000
    assert agrees(result.fluid_share, result.des_share), (
        f"{routing}: fluid {result.fluid_share:.4%} vs request-level {result.des_share:.4%}"
    )


def test_round_robin_is_late_where_least_outstanding_is_not_with_a_slow_replica():
    robin = hetero_compare(0.5, 300, "round-robin", slo_ms=300.0)
    least = hetero_compare(0.5, 300, "least-outstanding", slo_ms=300.0)
    assert robin.fluid_share > 0.2 and robin.des_share > 0.2
    assert least.fluid_share < SHARE_FLOOR and least.des_share < SHARE_FLOOR
    # The slow pod's queue is real in the fluid model: its backlog ends the load's 300 s at
    # about (40.6 - 30.7) rps x 300 s, and it alone serves it.
    backlog_s = robin.fluid_result.served[300:] > 0
    assert 80 <= backlog_s.sum() <= 120


HETERO_NEAR_GAPS = {
    0.99: "fluid too low: 3 fast pods pooled stand for 3 fast + 1 slow (0.50x, 0.49 % vs 0.98 %)",
    0.998: "fluid too low: 3 fast pods pooled stand for 3 fast + 1 slow (0.46x)",
}


@pytest.mark.parametrize(
    "quantile",
    [
        pytest.param(q, marks=[pytest.mark.xfail(strict=True, reason=HETERO_NEAR_GAPS[q])]
                     if q in HETERO_NEAR_GAPS else [])
        for q in NEAR_SLO_QUANTILES
    ],
)
def test_a_slow_replica_near_the_slo_behind_least_outstanding(quantile):
    """At 85 % of the four pods' capacity, the SLO at the request-level p96, p99, p99.8:
    least-outstanding keeps the slow pod out of the tail; the fluid tail, the fastest shape
    pooled, is within the bar at p96 (0.91x) and a little too low beyond."""
    result = hetero_compare(0.85, 600, "least-outstanding", quantile=quantile)
    assert agrees(result.fluid_share, result.des_share), (
        f"p{100 * quantile:g}: fluid {result.fluid_share:.4%} vs {result.des_share:.4%}"
    )


# -- per-replica queues: known answers ------------------------------------------------------------


def _backlog_then_a_second_replica(routing):
    # One 20-rps replica under 30 rps builds a backlog of 10 per second; a second replica asked
    # for at 0 is ready at 60 s, when the first holds 600 requests.
    counts = np.full(300, 30.0)
    return run(counts, StageConfig(1, 1, 1), script={0: StageConfig(2, 1, 1)}, cold_start_s=60,
               slo_ms=2000.0, routing=routing)


def test_a_new_replica_joins_with_an_empty_queue_and_round_robin_leaves_the_old_one_its_own():
    """Round-robin: each replica gets 15 rps; the old one drains its 600 at 20 - 15 = 5 per
    second (120 s) while the new one idles at 75 %, so 35 rps are served where one shared queue
    would serve 40 (and drain in 60 s). The requests sent to the new replica meet no queue."""
    robin = _backlog_then_a_second_replica("round-robin")
    pooled = _backlog_then_a_second_replica("pooled")
    assert robin.served[:60] == pytest.approx(np.full(60, 20.0))
    assert robin.served[61:179] == pytest.approx(np.full(118, 35.0))
    assert robin.served[181:] == pytest.approx(np.full(119, 30.0))
    assert pooled.served[61:119] == pytest.approx(np.full(58, 40.0))
    assert pooled.served[121:] == pytest.approx(np.full(179, 30.0))
    # Over a 2 s SLO: round-robin's late requests are the old replica's 15 rps while its wait
    # (600 - 5τ)/20 s exceeds 2 s, τ < 112 s: 1,680; the new replica's half is on time. One
    # shared queue makes all 30 rps late while (600 - 10τ)/40 > 2, τ < 52 s: 1,560.
    assert robin.violations[60:180].sum() == pytest.approx(15 * 112, rel=0.01)
    assert pooled.violations[60:180].sum() == pytest.approx(30 * 52, rel=0.01)


def test_least_outstanding_fills_the_new_replica_until_the_queues_even_out():
    """Least-outstanding sends every request to the empty replica first (30 rps into 20: its
    queue grows by 10/s while the old one drains at 20/s), so both serve at full speed and the
    600 are gone in 60 s, as with one shared queue."""
    least = _backlog_then_a_second_replica("least-outstanding")
    assert least.served[61:119] == pytest.approx(np.full(58, 40.0))
    assert least.served[121:] == pytest.approx(np.full(179, 30.0))


def test_a_replica_removed_at_once_loses_its_queue_and_it_counts_over_the_slo():
    """The shape-driven cluster removes replicas at once: the queue of the one removed (two
    replicas at 60 rps for 10 s: 10 queued each per second, 100 each) is never served and
    counts over the SLO."""
    counts = np.concatenate([np.full(10, 60.0), np.zeros(50)])
    result = run(counts, StageConfig(2, 1, 1), script={10: StageConfig(1, 1, 1)},
                 slo_ms=60_000.0)
    assert result.served.sum() == pytest.approx(counts.sum() - 100.0)
    assert result.violations.sum() == pytest.approx(100.0, rel=0.02)


def test_a_terminating_pod_drains_its_queue_during_its_grace_period():
    """On the cluster model a pod scaled away terminates for its 30 s grace period: out of the
    Service at once (no new requests), it serves what it queued. Two 20-rps pods under 60 rps
    for 30 s hold 300 each; scaled to 1 at 30 s with no more arrivals, both serve at full speed
    until empty (15 s), and nothing is lost."""
    from simtoy import setup

    counts = np.concatenate([np.full(30, 60.0), np.zeros(60)])

    class ScaleToOne:
        name, period_s, offset_s = "scale-to-one", 1e9, 30.0

        def tick(self, now):
            port.patch_scale("inference", "toy", {"spec": {"replicas": 1}}, dry_run=False)

    model, port, engine = setup(counts, replicas=2, controllers=[ScaleToOne()])
    result = engine.run()
    assert result.served.sum() == pytest.approx(counts.sum())
    # One pod is ready (20 rps of capacity), yet 40 rps leave: the terminating one drains too.
    assert result.capacity_rps[31:44] == pytest.approx(np.full(13, 20.0))
    assert result.served[31:44] == pytest.approx(np.full(13, 40.0))
    assert len(model.pods_of("inference", "toy")) == 1  # gone once its grace period ended
    assert result.violations[:30].sum() > 0  # the backlog made them late, but all were served
