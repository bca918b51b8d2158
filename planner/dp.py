"""The joint horizontal/vertical dynamic programmes of Themis (DESIGN section 4).

For a pipeline of stages s, choose per stage a shape (cores c_s, batch b_s) and a replica count
n_s so that

    Σ_s [ l_s(b_s, c_s) + q(b_s, λ) ] <= SLO      (end-to-end tail latency)
    n_s · h_s(b_s, c_s) >= λ̃                       (every stage carries the load, with headroom)

at the least cost Σ_s n_s · c_s cores. Here λ is the load, λ̃ = λ + √λ the load sized for, q the
p99 batch-fill delay (:mod:`planner.queueing`), l and h the latency and throughput of a replica
(:mod:`planner.profiles`).

Both programmes are a multiple-choice knapsack over the latency budget in whole milliseconds:
every shape of a stage is an item with an integer latency ceil(l + q) and a cost, and the
programme adds one item per stage. Rounding each stage's latency up keeps every answer within the
real SLO; the price is that a solution whose stages fit only thanks to fractions of a millisecond
is missed (at most one millisecond per stage). Per stage, only shapes that are cheaper than every
faster shape can be in an optimum, so the rest are pruned first; what remains is a min-plus
convolution of the stage's items with the best cost per latency so far, vectorised over the
budget.

* :func:`horizontal` (DP 1, stable load): replicas follow from the shape, n_s = ceil(λ̃ / h_s).
* :func:`vertical` (DP 2, surge): the replicas are fixed at their current counts and only the
  shapes change in place; when even the largest shapes cannot carry λ̃, a binary search finds the
  largest load λ* the current replicas carry and replicas are added for the excess.
* :func:`brute_force`: the oracle, every combination of shapes, for tests and the benchmark.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from planner.errors import PlannerInputError
from planner.profiles import LatencyProfile, Pipeline
from planner.queueing import batch_fill_ms, batch_fill_ms_array, check_rps, headroom_rps

LOAD = "load"
LATENCY_SLO = "latency SLO"
MAX_CORES = "max cores"
MAX_REPLICAS = "max replicas"
CAPACITY = "capacity"  # assess(): the given state carries less than the load


@dataclass(frozen=True)
class StageConfig:
    """One stage: ``replicas`` pods with ``cores`` CPU cores each, running batches of ``batch``."""

    replicas: int
    cores: int
    batch: int


@dataclass(frozen=True)
class Decision:
    """A configuration of every stage and what it gives.

    Attributes:
        stages: one config per pipeline stage.
        latency_ms: end-to-end tail latency, Σ_s l_s + q_s (ms, not rounded).
        cost_cores: Σ_s replicas_s · cores_s.
        capacity_rps: the load the pipeline carries, min_s replicas_s · h_s.
        feasible: meets the SLO and carries the load it was sized for within the bounds.
        binding: the constraint that set the answer: "load" (cheapest shape for the load, the SLO
            has slack), "latency SLO", "max cores" (the current replicas cannot carry the load
            even at the largest shapes) or "max replicas".
        target_rps: the load it was sized for (λ̃ with headroom, else λ).
        stage_latency_ms: l_s + q_s per stage (ms).
        detail: one readable sentence on an infeasible or fallback answer, else "".
    """

    stages: tuple[StageConfig, ...]
    latency_ms: float
    cost_cores: int
    capacity_rps: float
    feasible: bool
    binding: str
    target_rps: float = 0.0
    stage_latency_ms: tuple[float, ...] = ()
    detail: str = ""

    @property
    def replicas(self) -> tuple[int, ...]:
        return tuple(s.replicas for s in self.stages)

    @property
    def cores(self) -> tuple[int, ...]:
        return tuple(s.cores for s in self.stages)

    @property
    def batch(self) -> tuple[int, ...]:
        return tuple(s.batch for s in self.stages)


# --------------------------------------------------------------------------------------------
# shapes and items


@dataclass(frozen=True)
class _Shapes:
    """Every (cores, batch) shape of one profile, flattened; read-only arrays of equal length."""

    cores: np.ndarray
    batch: np.ndarray
    proc_ms: np.ndarray
    throughput_rps: np.ndarray


@lru_cache(maxsize=256)
def _shapes(profile: LatencyProfile) -> _Shapes:
    cores, batch = np.meshgrid(
        np.arange(1, profile.max_cores + 1), np.arange(1, profile.max_batch + 1), indexing="ij"
    )
    cores, batch = cores.ravel(), batch.ravel()
    proc = profile.latency_ms(batch, cores)
    arrays = (cores, batch, proc, 1000.0 * batch / proc)
    for array in arrays:
        array.flags.writeable = False
    return _Shapes(*arrays)


@dataclass(frozen=True)
class _Items:
    """The candidate shapes of one stage after pruning, sorted by latency (all arrays length K)."""

    shape: np.ndarray  # index into _Shapes
    latency_ms: np.ndarray  # l + q, float
    ticks: np.ndarray  # ceil(l + q), int
    replicas: np.ndarray
    cost: np.ndarray


def _replicas_for(target_rps: float, throughput_rps: np.ndarray) -> np.ndarray:
    """Smallest n with n·h >= target, exactly in floating point (the capacity test of the DP)."""
    n = np.ceil(target_rps / throughput_rps)
    n += n * throughput_rps < target_rps
    return n.astype(np.int64)


def _items(
    profile: LatencyProfile,
    target_rps: float,
    fill_rps: float,
    budget: int,
    *,
    replicas: int | None,
    min_replicas: int,
    max_replicas: int | None,
) -> _Items:
    """A stage's shapes that fit the budget and carry ``target_rps``, Pareto-pruned.

    With ``replicas`` None the replica count follows from the shape (horizontal); otherwise it is
    fixed and a shape must carry the target with it (vertical).
    """
    shapes = _shapes(profile)
    latency = shapes.proc_ms + batch_fill_ms_array(shapes.batch, fill_rps)
    # Only latencies within the budget matter; the rest become budget + 1 (also inf and huge).
    ticks = np.ceil(np.where(latency <= budget, latency, budget + 1)).astype(np.int64)
    if replicas is None:
        n = np.maximum(_replicas_for(target_rps, shapes.throughput_rps), min_replicas)
        ok = ticks <= budget
        if max_replicas is not None:
            ok &= n <= max_replicas
    else:
        n = np.full(shapes.cores.shape, replicas, dtype=np.int64)
        ok = (ticks <= budget) & (n * shapes.throughput_rps >= target_rps)
    cost = n * shapes.cores
    keep = _pareto(ticks, cost, n, np.flatnonzero(ok))
    return _Items(keep, latency[keep], ticks[keep], n[keep], cost[keep])


def _pareto(ticks: np.ndarray, cost: np.ndarray, n: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The shapes among ``idx`` that are cheaper than every faster one, fastest first.

    Ties (same latency and cost) go to fewer replicas: the same cores in fewer pods need less
    memory.
    """
    idx = idx[np.lexsort((n[idx], cost[idx], ticks[idx]))]
    if idx.size == 0:
        return idx
    c = cost[idx]
    cheapest_before = np.concatenate(([np.iinfo(np.int64).max], np.minimum.accumulate(c)[:-1]))
    return idx[c < cheapest_before]


# --------------------------------------------------------------------------------------------
# the min-plus programme


def _solve(items: Sequence[_Items], budget: int) -> list[int] | None:
    """Pick one item per stage: least total cost within ``budget`` ticks, then least latency.

    ``best[t]`` is the least cost of the stages so far with latencies summing to exactly t; a
    stage turns it into ``min_k best[t - ticks_k] + cost_k``. Returns the picked item per stage,
    or None when no combination fits.
    """
    if any(it.ticks.size == 0 for it in items):
        return None
    span = min(budget, sum(int(it.ticks[-1]) for it in items))
    if sum(int(it.ticks[0]) for it in items) > span:
        return None
    t = np.arange(span + 1)
    best = np.full(span + 1, np.inf)
    best[0] = 0.0
    picks = []
    for it in items:
        src = t[None, :] - it.ticks[:, None]
        cand = np.where(src >= 0, best[np.maximum(src, 0)], np.inf) + it.cost[:, None]
        pick = np.argmin(cand, axis=0)
        best = cand[pick, t]
        picks.append(pick)
    end = int(np.argmin(best))  # first minimum: the least latency among the cheapest
    if not np.isfinite(best[end]):
        return None
    chosen = []
    for it, pick in zip(reversed(items), reversed(picks), strict=True):
        k = int(pick[end])
        chosen.append(k)
        end -= int(it.ticks[k])
    return chosen[::-1]


def _decision(
    pipeline: Pipeline,
    items: Sequence[_Items],
    chosen: Sequence[int],
    *,
    target_rps: float,
    binding: str,
) -> Decision:
    configs, latency = [], []
    for profile, it, k in zip(pipeline.stages, items, chosen, strict=True):
        shapes = _shapes(profile)
        s = int(it.shape[k])
        configs.append(StageConfig(int(it.replicas[k]), int(shapes.cores[s]), int(shapes.batch[s])))
        latency.append(float(it.latency_ms[k]))
    return _assess(pipeline, configs, target_rps, latency, binding, True, "")


def _assess(
    pipeline: Pipeline,
    configs: Sequence[StageConfig],
    target_rps: float,
    stage_latency: Sequence[float],
    binding: str,
    feasible: bool,
    detail: str,
) -> Decision:
    capacity = min(p.capacity_rps(c) for p, c in zip(pipeline.stages, configs, strict=True))
    return Decision(
        stages=tuple(configs),
        latency_ms=float(sum(stage_latency)),
        cost_cores=sum(c.replicas * c.cores for c in configs),
        capacity_rps=capacity,
        feasible=feasible,
        binding=binding,
        target_rps=target_rps,
        stage_latency_ms=tuple(float(v) for v in stage_latency),
        detail=detail,
    )


# --------------------------------------------------------------------------------------------
# public programmes


def horizontal(
    pipeline: Pipeline,
    rps: float,
    slo_ms: float,
    *,
    max_replicas: int | None = None,
    min_replicas: int = 1,
    headroom: bool = True,
    fill_rps: float | None = None,
) -> Decision:
    """DP 1: the cheapest shapes and replica counts for a stable load.

    Args:
        pipeline: the stages.
        rps: the load (requests per second) to size for; 0 gives the smallest shape that meets
            the SLO, one replica per stage.
        slo_ms: end-to-end latency SLO (ms).
        max_replicas, min_replicas: bounds on the replicas of every stage.
        headroom: size for λ + √λ (default) instead of λ.
        fill_rps: the rate at which batches fill, for the queueing delay; default ``rps``. A
            caller that must meet the SLO over a window of loads passes the lowest.

    Returns:
        The optimum, or, when nothing meets the constraints, an infeasible Decision: the fastest
        shapes when the SLO is out of reach, the most the allowed replicas carry when
        ``max_replicas`` binds.

    Raises:
        PlannerInputError: negative or non-finite rps, slo_ms <= 0, inconsistent bounds.
    """
    target, fill, budget = _check_args(pipeline, rps, slo_ms, fill_rps, headroom)
    _check_bounds(min_replicas, max_replicas)
    items = [
        _items(
            p,
            target,
            fill,
            budget,
            replicas=None,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
        )
        for p in pipeline.stages
    ]
    chosen = _solve(items, budget)
    if chosen is not None:
        binding = _binding(pipeline, items, chosen, target, fill, None, min_replicas, max_replicas)
        return _decision(pipeline, items, chosen, target_rps=target, binding=binding)
    too_slow = _slo_out_of_reach(pipeline, target, fill, slo_ms, budget, max_replicas, min_replicas)
    if too_slow is not None:
        return too_slow
    # The SLO is reachable, so the replica bound is what fails: show what it carries at most.
    capped = _most_carried(pipeline, [max_replicas] * len(pipeline.stages), fill, budget)
    assert capped is not None  # the SLO is reachable with one replica of some shape per stage
    carried, decision = capped
    return replace(
        decision,
        feasible=False,
        binding=MAX_REPLICAS,
        target_rps=target,
        detail=f"{max_replicas} replicas per stage carry at most {carried:.1f} of "
        f"{target:.1f} rps within the SLO",
    )


def vertical(
    pipeline: Pipeline,
    rps: float,
    slo_ms: float,
    replicas: Sequence[int],
    *,
    max_replicas: int | None = None,
    headroom: bool = True,
    fill_rps: float | None = None,
) -> Decision:
    """DP 2: resize the current replicas in place, at the least cores, to carry a surge.

    When no shapes let the current replicas carry the load (binding "max cores"), a binary search
    finds the largest load λ* they carry within the SLO; the stages keep the cheapest shapes for
    λ* and get the replicas they lack for the rest, ceil(λ̃ / h_s) - n_s each, which is never more
    than ceil((λ̃ - λ*) / h_s). The answer is infeasible only if that exceeds ``max_replicas``
    (binding "max replicas") or the SLO is out of reach at any shape ("latency SLO").

    Args:
        replicas: current replica count per stage (each >= 1).
        Other arguments as :func:`horizontal`.

    Raises:
        PlannerInputError: as :func:`horizontal`, or ``replicas`` not one integer >= 1 per stage.
    """
    target, fill, budget = _check_args(pipeline, rps, slo_ms, fill_rps, headroom)
    _check_bounds(1, max_replicas)
    current = _check_replicas(pipeline, replicas)
    items = [
        _items(p, target, fill, budget, replicas=n, min_replicas=1, max_replicas=None)
        for p, n in zip(pipeline.stages, current, strict=True)
    ]
    chosen = _solve(items, budget)
    if chosen is not None:
        binding = _binding(pipeline, items, chosen, target, fill, current)
        return _decision(pipeline, items, chosen, target_rps=target, binding=binding)
    too_slow = _slo_out_of_reach(pipeline, target, fill, slo_ms, budget, max_replicas)
    if too_slow is not None:
        return too_slow
    return _add_replicas_for_excess(pipeline, current, target, fill, budget, max_replicas)


def _add_replicas_for_excess(
    pipeline: Pipeline,
    current: Sequence[int],
    target: float,
    fill: float,
    budget: int,
    max_replicas: int | None,
) -> Decision:
    """The fallback of DP 2: shapes for λ*, the most the current replicas carry, plus replicas."""
    found = _most_carried(pipeline, current, fill, budget)
    assert found is not None  # the caller checked that the SLO is reachable
    carried, at_most = found
    configs = []
    for profile, config in zip(pipeline.stages, at_most.stages, strict=True):
        h = float(profile.throughput_rps(config.batch, config.cores))
        n = max(config.replicas, int(_replicas_for(target, np.array([h]))[0]))
        configs.append(StageConfig(n, config.cores, config.batch))
    added = sum(c.replicas for c in configs) - sum(current)
    capped = max_replicas is not None and any(c.replicas > max_replicas for c in configs)
    if capped:
        configs = [StageConfig(min(c.replicas, max_replicas), c.cores, c.batch) for c in configs]
    detail = (
        f"the current {_counts(current)} replicas carry at most {carried:.1f} of {target:.1f} rps "
        f"at any shape within the SLO; +{added} replica(s) for the excess"
    )
    if capped:
        detail += f", capped at {max_replicas}"
    return _assess(
        pipeline,
        configs,
        target,
        at_most.stage_latency_ms,
        MAX_REPLICAS if capped else MAX_CORES,
        not capped,
        detail,
    )


def _most_carried(
    pipeline: Pipeline, replicas: Sequence[int], fill: float, budget: int
) -> tuple[float, Decision] | None:
    """λ*: the largest load the given replicas carry within the budget, and the cheapest shapes.

    Feasibility only gets harder as the load rises (the queueing delay depends on the fill rate,
    not on the load sized for), so a binary search over the candidate capacities n_s·h_s is
    exact. Returns None if no shape meets the budget at all.
    """
    candidates = np.unique(
        np.concatenate(
            [n * _shapes(p).throughput_rps for p, n in zip(pipeline.stages, replicas, strict=True)]
        )
    )

    def solve(load: float) -> tuple[list[_Items], list[int] | None]:
        items = [
            _items(p, load, fill, budget, replicas=n, min_replicas=1, max_replicas=None)
            for p, n in zip(pipeline.stages, replicas, strict=True)
        ]
        return items, _solve(items, budget)

    lo, hi = 0, len(candidates) - 1  # invariant: candidates[lo - 1] is feasible (or lo == 0)
    if solve(float(candidates[0]))[1] is None:
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if solve(float(candidates[mid]))[1] is not None:
            lo = mid
        else:
            hi = mid - 1
    carried = float(candidates[lo])
    items, chosen = solve(carried)
    assert chosen is not None
    return carried, _decision(pipeline, items, chosen, target_rps=carried, binding=LOAD)


def brute_force(
    pipeline: Pipeline,
    rps: float,
    slo_ms: float,
    *,
    replicas: Sequence[int] | None = None,
    max_replicas: int | None = None,
    min_replicas: int = 1,
    headroom: bool = True,
    fill_rps: float | None = None,
    round_ms: bool = True,
) -> Decision:
    """The oracle: try every combination of shapes, keep the cheapest, then the fastest.

    With ``replicas`` None it answers DP 1's question; with fixed ``replicas`` DP 2's (without
    the fallback: no combination gives an infeasible answer). With ``round_ms`` (default) each
    stage's latency is rounded up to whole ms as in the DPs, so the answers must be equal;
    without it the exact latencies are compared with the SLO, which bounds the DPs' rounding.

    It computes everything from the scalar formulas and enumerates the full product of the
    stages' shapes with numpy broadcasting (128³ = 2.1 M combinations for 3 stages of 16 cores
    by 8 batch sizes).
    """
    target, fill, _ = _check_args(pipeline, rps, slo_ms, fill_rps, headroom)
    per_stage = []
    for s, profile in enumerate(pipeline.stages):
        rows = []
        for cores, batch in itertools.product(
            range(1, profile.max_cores + 1), range(1, profile.max_batch + 1)
        ):
            latency = float(profile.latency_ms(batch, cores)) + batch_fill_ms(batch, fill)
            h = float(profile.throughput_rps(batch, cores))
            if replicas is None:
                n = max(min_replicas, math.ceil(target / h))
                while n * h < target:
                    n += 1
                ok = max_replicas is None or n <= max_replicas
            else:
                n = int(replicas[s])
                ok = n * h >= target
            if ok and math.isfinite(latency):
                ticks = float(math.ceil(latency)) if round_ms else latency
                rows.append((ticks, n * cores, latency, StageConfig(n, cores, batch)))
        per_stage.append(rows)
    return _best_combination(pipeline, per_stage, slo_ms, target)


def _best_combination(
    pipeline: Pipeline, per_stage: list[list[tuple]], slo_ms: float, target: float
) -> Decision:
    if any(not rows for rows in per_stage):
        return _no_combination(pipeline, target)
    dims = len(per_stage)
    total_ticks = 0.0
    total_cost = 0
    for axis, rows in enumerate(per_stage):
        shape = [1] * dims
        shape[axis] = len(rows)
        total_ticks = total_ticks + np.array([r[0] for r in rows]).reshape(shape)
        total_cost = total_cost + np.array([r[1] for r in rows], dtype=np.int64).reshape(shape)
    total_ticks, total_cost = np.broadcast_arrays(total_ticks, total_cost)
    ok = total_ticks <= slo_ms
    if not ok.any():
        return _no_combination(pipeline, target)
    # Least cost, then least latency: lexsort over the feasible combinations.
    flat = np.flatnonzero(ok)
    best = flat[np.lexsort((total_ticks.ravel()[flat], total_cost.ravel()[flat]))[0]]
    picks = np.unravel_index(best, total_ticks.shape)
    rows = [per_stage[s][int(k)] for s, k in enumerate(picks)]
    return _assess(pipeline, [r[3] for r in rows], target, [r[2] for r in rows], LOAD, True, "")


def _no_combination(pipeline: Pipeline, target: float) -> Decision:
    configs = [StageConfig(1, 1, 1) for _ in pipeline.stages]
    latency = [float(p.latency_ms(1, 1)) for p in pipeline.stages]
    return _assess(pipeline, configs, target, latency, LATENCY_SLO, False, "no combination fits")


def assess(
    pipeline: Pipeline,
    configs: Sequence[StageConfig],
    rps: float,
    slo_ms: float,
    *,
    headroom: bool = True,
    fill_rps: float | None = None,
) -> Decision:
    """What a given configuration gives at a load: latency, cost, capacity, and whether it fits.

    Raises:
        PlannerInputError: as :func:`horizontal`, or configs not one valid config per stage.
    """
    target, fill, _ = _check_args(pipeline, rps, slo_ms, fill_rps, headroom)
    configs = _check_configs(pipeline, configs)
    latency = [
        float(p.latency_ms(c.batch, c.cores)) + batch_fill_ms(c.batch, fill)
        for p, c in zip(pipeline.stages, configs, strict=True)
    ]
    decision = _assess(pipeline, configs, target, latency, LOAD, True, "")
    fits_slo = decision.latency_ms <= slo_ms
    carries = decision.capacity_rps >= target
    binding = LOAD if carries else CAPACITY
    if not fits_slo:
        binding = LATENCY_SLO
    return replace(decision, feasible=fits_slo and carries, binding=binding)


# --------------------------------------------------------------------------------------------
# bindings and infeasible answers


def _binding(
    pipeline: Pipeline,
    items: Sequence[_Items],
    chosen: Sequence[int],
    target: float,
    fill: float,
    replicas: Sequence[int] | None,
    min_replicas: int = 1,
    max_replicas: int | None = None,
) -> str:
    """ "load" if the answer costs what the load alone needs (the SLO has slack), else
    "latency SLO": compares with the cheapest shapes under no latency budget at all."""
    fixed = [None] * len(pipeline.stages) if replicas is None else replicas
    unbounded = [
        _items(
            p,
            target,
            fill,
            _NO_BUDGET,
            replicas=n,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
        )
        for p, n in zip(pipeline.stages, fixed, strict=True)
    ]
    cheapest = sum(int(it.cost.min()) for it in unbounded if it.cost.size)
    cost = sum(int(it.cost[k]) for it, k in zip(items, chosen, strict=True))
    return LOAD if cost <= cheapest else LATENCY_SLO


_NO_BUDGET = 10**12  # ticks: a budget no latency reaches, to find the cost the load alone sets


def _slo_out_of_reach(
    pipeline: Pipeline,
    target: float,
    fill: float,
    slo_ms: float,
    budget: int,
    max_replicas: int | None,
    min_replicas: int = 1,
) -> Decision | None:
    """The fastest shapes, as an infeasible Decision, if even they miss the SLO; else None."""
    fastest = []
    for profile in pipeline.stages:
        shapes = _shapes(profile)
        latency = shapes.proc_ms + batch_fill_ms_array(shapes.batch, fill)
        fastest.append(int(np.argmin(latency)))
    ticks = [
        math.ceil(_shapes(p).proc_ms[k] + batch_fill_ms(int(_shapes(p).batch[k]), fill))
        for p, k in zip(pipeline.stages, fastest, strict=True)
    ]
    if sum(ticks) <= budget:
        return None
    configs, latency = [], []
    for profile, k in zip(pipeline.stages, fastest, strict=True):
        shapes = _shapes(profile)
        n = int(_replicas_for(target, shapes.throughput_rps[k : k + 1])[0])
        n = max(min_replicas, n if max_replicas is None else min(n, max_replicas))
        batch = int(shapes.batch[k])
        configs.append(StageConfig(n, int(shapes.cores[k]), batch))
        latency.append(float(shapes.proc_ms[k]) + batch_fill_ms(batch, fill))
    detail = (
        f"the fastest shapes take {sum(latency):.1f} ms end to end (whole ms per stage: "
        f"{sum(ticks)}), over the {slo_ms:g} ms SLO"
    )
    return _assess(pipeline, configs, target, latency, LATENCY_SLO, False, detail)


# --------------------------------------------------------------------------------------------
# argument checks


def _check_args(
    pipeline: Pipeline, rps: float, slo_ms: float, fill_rps: float | None, headroom: bool
) -> tuple[float, float, int]:
    """(load sized for, fill rate, latency budget in whole ms) after checking the arguments."""
    if not isinstance(pipeline, Pipeline):
        raise PlannerInputError(f"pipeline: expected a Pipeline, got {type(pipeline).__name__}")
    check_rps(rps, "rps")
    if fill_rps is not None:
        check_rps(fill_rps, "fill_rps")
    if isinstance(slo_ms, bool) or not isinstance(slo_ms, int | float) or not slo_ms > 0:
        raise PlannerInputError(f"slo_ms: must be a number > 0, got {slo_ms}")
    if not math.isfinite(slo_ms):
        raise PlannerInputError(f"slo_ms: must be finite, got {slo_ms}")
    target = headroom_rps(rps) if headroom else float(rps)
    return target, float(rps if fill_rps is None else fill_rps), math.floor(slo_ms)


def _check_bounds(min_replicas: int, max_replicas: int | None) -> None:
    if isinstance(min_replicas, bool) or not isinstance(min_replicas, int) or min_replicas < 1:
        raise PlannerInputError(f"min_replicas: must be an integer >= 1, got {min_replicas}")
    if max_replicas is None:
        return
    if isinstance(max_replicas, bool) or not isinstance(max_replicas, int) or max_replicas < 1:
        raise PlannerInputError(f"max_replicas: must be an integer >= 1, got {max_replicas}")
    if max_replicas < min_replicas:
        raise PlannerInputError(
            f"max_replicas: {max_replicas} is below min_replicas {min_replicas}"
        )


def _check_replicas(pipeline: Pipeline, replicas: Sequence[int]) -> tuple[int, ...]:
    values = tuple(replicas)
    if len(values) != len(pipeline.stages):
        raise PlannerInputError(
            f"replicas: one count per stage ({len(pipeline.stages)}), got {len(values)}"
        )
    for n in values:
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise PlannerInputError(f"replicas: counts must be integers >= 1, got {values}")
    return tuple(int(n) for n in values)


def _check_configs(pipeline: Pipeline, configs: Sequence[StageConfig]) -> list[StageConfig]:
    configs = list(configs)
    if len(configs) != len(pipeline.stages):
        raise PlannerInputError(
            f"state: one config per stage ({len(pipeline.stages)}), got {len(configs)}"
        )
    for profile, c in zip(pipeline.stages, configs, strict=True):
        for key, limit in (
            ("replicas", None),
            ("cores", profile.max_cores),
            ("batch", profile.max_batch),
        ):
            value = getattr(c, key)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise PlannerInputError(
                    f"{profile.name}: {key} must be an integer >= 1, got {value}"
                )
            if limit is not None and value > limit:
                raise PlannerInputError(
                    f"{profile.name}: {key} {value} is over the profile's limit {limit}"
                )
    return configs


def _counts(values: Sequence[int]) -> str:
    return ",".join(str(v) for v in values)
