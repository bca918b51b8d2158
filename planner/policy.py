"""The proactive two-stage policy: from a forecast of load quantiles to a Plan.

Themis scales in two stages: on a surge it resizes the running replicas in place (seconds), and
once the load is stable it moves to the cost-optimal shape found by the horizontal programme,
which needs new replicas (a cold start). With a forecast the planner knows *when* a surge comes,
so it starts the new replicas one cold start ahead of it, sized for the largest forecast over the
window they will serve, and keeps in-place resizing for surges that come sooner than a cold
start.

Rules, in order:

* Reactive floor: every load is at least the observed load; no state is sized below it.
* Batches are assumed to fill at the observed rate, the slowest any step of the plan sees, so
  every state meets the SLO whatever the load does within the horizon.
* Surge: at the first forecast step the current state cannot carry, add the replicas the
  horizontal optimum for the peak of the rest of the horizon needs (never fewer than now), with
  ``apply_at = effective_at - cold_start``. If that is before the cutoff, bridge now: resize the
  current replicas in place (DP 2) for what they can carry until the new ones are ready.
* After a bridge the step that adds the replicas is the consolidation: its state is the
  horizontal optimum, which the bridged pods return to once the new replicas are ready.
* Scale-in: only if a cheaper state carries the whole horizon and the observed load, and the last
  scale-up is at least the stabilisation window in the past.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from planner.dp import Decision, StageConfig, assess, horizontal, vertical
from planner.errors import PlannerInputError
from planner.plan import Plan, PlanStep, utc_timestamp
from planner.profiles import Pipeline
from planner.queueing import check_rps, load_within_headroom


@dataclass(frozen=True)
class ClusterState:
    """What runs now, per stage in pipeline order."""

    replicas: tuple[int, ...]
    cores: tuple[int, ...]
    batch: tuple[int, ...]

    def __post_init__(self) -> None:
        for key in ("replicas", "cores", "batch"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        if not len(self.replicas) == len(self.cores) == len(self.batch) >= 1:
            raise PlannerInputError("state: replicas, cores and batch need one value per stage")

    @property
    def configs(self) -> tuple[StageConfig, ...]:
        return tuple(
            StageConfig(n, c, b)
            for n, c, b in zip(self.replicas, self.cores, self.batch, strict=True)
        )

    @classmethod
    def of(cls, configs: Sequence[StageConfig]) -> ClusterState:
        return cls(
            tuple(c.replicas for c in configs),
            tuple(c.cores for c in configs),
            tuple(c.batch for c in configs),
        )


@dataclass(frozen=True)
class PolicySettings:
    """How the two-stage policy plans for one service.

    Attributes:
        slo_ms: end-to-end latency SLO at the profiles' percentile (ms).
        cold_start_s: time for a new replica to become ready.
        resize_s: time for an in-place CPU resize to take effect.
        stabilisation_s: the last scale-up must be this far in the past before a scale-in.
        resize_stabilisation_s: the same for a scale-in that only shrinks pods in place
            (undone by a resize of seconds, not a cold start); None: ``stabilisation_s``.
        min_replicas, max_replicas: bounds on every stage's replicas (None: no upper bound).
        quantile: the forecast quantile the load array holds (recorded in the Plan and reasons).
    """

    slo_ms: float
    cold_start_s: float = 30.0
    resize_s: float = 2.0
    stabilisation_s: float = 300.0
    resize_stabilisation_s: float | None = None
    min_replicas: int = 1
    max_replicas: int | None = None
    quantile: float = 0.95

    def __post_init__(self) -> None:
        if not (math.isfinite(self.slo_ms) and self.slo_ms > 0):
            raise PlannerInputError(f"slo_ms: must be > 0, got {self.slo_ms}")
        for key in ("cold_start_s", "resize_s", "stabilisation_s", "resize_stabilisation_s"):
            value = getattr(self, key)
            if value is None and key == "resize_stabilisation_s":
                continue
            if not (math.isfinite(value) and value >= 0):
                raise PlannerInputError(f"{key}: must be a finite number >= 0, got {value}")
        if not 0 < self.quantile < 1:
            raise PlannerInputError(f"quantile: must be in (0, 1), got {self.quantile}")
        if self.min_replicas < 1:
            raise PlannerInputError(f"min_replicas: must be >= 1, got {self.min_replicas}")
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise PlannerInputError(
                f"max_replicas: {self.max_replicas} is below min_replicas {self.min_replicas}"
            )


@dataclass(frozen=True)
class _Context:
    """Everything the rules share: the inputs, normalised."""

    pipeline: Pipeline
    settings: PolicySettings
    now: pd.Timestamp
    observed_rps: float
    times: tuple[pd.Timestamp, ...]  # when each forecast step's load starts
    loads: np.ndarray  # forecast quantile, floored at the observed load

    @property
    def q(self) -> str:
        return f"q{self.settings.quantile:g}"

    def assess(self, configs: Sequence[StageConfig], load: float) -> Decision:
        return assess(
            self.pipeline, configs, load, self.settings.slo_ms, fill_rps=self.observed_rps
        )

    def horizontal(self, load: float) -> Decision:
        s = self.settings
        return horizontal(
            self.pipeline,
            load,
            s.slo_ms,
            min_replicas=s.min_replicas,
            max_replicas=s.max_replicas,
            fill_rps=self.observed_rps,
        )

    def vertical(self, load: float, replicas: Sequence[int]) -> Decision:
        return vertical(
            self.pipeline,
            load,
            self.settings.slo_ms,
            replicas,
            max_replicas=self.settings.max_replicas,
            fill_rps=self.observed_rps,
        )

    def in_bounds(self, replicas: Sequence[int]) -> bool:
        s = self.settings
        return all(
            s.min_replicas <= n and (s.max_replicas is None or n <= s.max_replicas)
            for n in replicas
        )


def plan_two_stage(
    service: str,
    pipeline: Pipeline,
    state: ClusterState,
    observed_rps: float,
    forecast_rps: np.ndarray,
    step_s: float,
    cutoff,
    settings: PolicySettings,
    *,
    last_scale_up_at=None,
) -> Plan:
    """Plan replicas × cores × batch per stage over the forecast horizon.

    Args:
        service: name recorded in the Plan.
        pipeline: the stages' latency profiles.
        state: what runs now (per stage).
        observed_rps: the load just observed (the reactive floor).
        forecast_rps: the forecast quantile of the load for steps 1..H after the cutoff; step h
            covers [cutoff + h·step_s, cutoff + (h+1)·step_s).
        step_s: the forecast's step (s).
        cutoff: the forecast's cutoff (tz-aware); the plan is made at this time.
        settings: SLO, delays, bounds and quantile.
        last_scale_up_at: when capacity was last raised (tz-aware), for the stabilisation
            window; None if never.

    Returns:
        A Plan with at least one step, in time order.

    Raises:
        PlannerInputError: bad inputs (negative or non-finite loads, an empty forecast, a state
            that does not match the pipeline, naive timestamps).
    """
    ctx = _context(pipeline, state, observed_rps, forecast_rps, step_s, cutoff, settings)
    last_up = (
        None if last_scale_up_at is None else utc_timestamp(last_scale_up_at, "last_scale_up_at")
    )
    current = state.configs
    surge = _first_uncovered(ctx, current)
    if surge is None:
        steps = _scale_in_or_hold(ctx, current, last_up)
    else:
        steps = _surge(ctx, current, surge)
    steps = sorted(steps, key=lambda s: (s.effective_at, s.apply_at))
    return Plan(
        service, ctx.now, tuple(steps), settings.quantile, settings.slo_ms, pipeline.stage_names
    )


def _context(pipeline, state, observed_rps, forecast_rps, step_s, cutoff, settings) -> _Context:
    if not isinstance(pipeline, Pipeline):
        raise PlannerInputError(f"pipeline: expected a Pipeline, got {type(pipeline).__name__}")
    if len(state.replicas) != len(pipeline.stages):
        raise PlannerInputError(
            f"state: {len(state.replicas)} stage(s), the pipeline has {len(pipeline.stages)}"
        )
    check_rps(observed_rps, "observed_rps")
    forecast = np.asarray(forecast_rps, dtype=np.float64).ravel()
    if forecast.size == 0:
        raise PlannerInputError("forecast_rps: empty; give the load for at least one step")
    bad = np.flatnonzero(~np.isfinite(forecast) | (forecast < 0))
    if bad.size:
        raise PlannerInputError(
            f"forecast_rps: step {bad[0] + 1} is {forecast[bad[0]]}; loads must be finite, >= 0"
        )
    if not (math.isfinite(step_s) and step_s > 0):
        raise PlannerInputError(f"step_s: must be > 0, got {step_s}")
    now = utc_timestamp(cutoff, "cutoff")
    step = pd.Timedelta(seconds=step_s)
    times = tuple(now + (h + 1) * step for h in range(forecast.size))
    loads = np.maximum(forecast, float(observed_rps))
    return _Context(pipeline, settings, now, float(observed_rps), times, loads)


def _first_uncovered(ctx: _Context, current: Sequence[StageConfig]) -> int | None:
    """-1 if the current state fails now (observed load, SLO or bounds), else the first forecast
    step it cannot carry, else None."""
    if not ctx.in_bounds([c.replicas for c in current]):
        return -1
    now = ctx.assess(current, ctx.observed_rps)
    if not now.feasible:
        return -1
    capacity = now.capacity_rps
    needed = ctx.loads + np.sqrt(ctx.loads)
    over = np.flatnonzero(needed > capacity)
    return int(over[0]) if over.size else None


# --------------------------------------------------------------------------------------------
# surge


def _surge(ctx: _Context, current: Sequence[StageConfig], k: int) -> list[PlanStep]:
    """Steps for a surge that the current state cannot carry from forecast step k (-1: now)."""
    s = ctx.settings
    start = ctx.now if k < 0 else ctx.times[k]
    window = ctx.loads[max(k, 0) :]
    peak = max(float(window.max()), ctx.observed_rps)
    optimum = ctx.horizontal(peak)
    current_n = [c.replicas for c in current]
    new_n = [
        _clip(max(n, m), s.max_replicas) for n, m in zip(current_n, optimum.replicas, strict=True)
    ]
    target = ctx.vertical(peak, new_n) if optimum.feasible else optimum
    why = _surge_why(ctx, k, peak)
    if target.replicas == tuple(current_n):
        effective = max(start, ctx.now + _seconds(s.resize_s))
        return [
            _step(
                ctx,
                "bridge",
                target.stages,
                effective,
                s.resize_s,
                peak,
                f"{why}; resize in place: {_shape(ctx, target.stages)}",
            )
        ]
    steps: list[PlanStep] = []
    ready = max(start, ctx.now + _seconds(s.cold_start_s))
    before = list(current)
    if ready > start:
        bridge = _bridge(ctx, current, k, why)
        if bridge is not None:
            steps.append(bridge)
            before = [
                StageConfig(n, c, b)
                for n, c, b in zip(bridge.replicas, bridge.cores, bridge.batch, strict=True)
            ]
    steps.append(_add_replicas(ctx, before, target, ready, peak, why, bridged=bool(steps)))
    return steps


def _surge_why(ctx: _Context, k: int, peak: float) -> str:
    if k < 0:
        return f"observed {ctx.observed_rps:.0f} rps is more than the current state carries"
    peak_at = ctx.times[k + int(np.argmax(ctx.loads[k:]))]
    text = f"{ctx.loads[k]:.0f} rps forecast at {_clock(ctx.times[k])} ({ctx.q})"
    if peak > ctx.loads[k]:
        text += f", peak {peak:.0f} rps at {_clock(peak_at)}"
    return text


def _bridge(ctx: _Context, current: Sequence[StageConfig], k: int, why: str) -> PlanStep | None:
    """Resize the current replicas in place now, for the load until new replicas can be ready."""
    s = ctx.settings
    ready = ctx.now + _seconds(s.cold_start_s)
    early = [ctx.loads[j] for j in range(max(k, 0), len(ctx.times)) if ctx.times[j] < ready]
    load = max([ctx.observed_rps, *early])
    current_n = [c.replicas for c in current]
    resized = ctx.vertical(load, current_n)
    # Only the in-place part can happen before the cold start: keep the current replica counts.
    shapes = [
        StageConfig(n, c.cores, c.batch) for n, c in zip(current_n, resized.stages, strict=True)
    ]
    if tuple(shapes) == tuple(current):
        return None
    state = ctx.assess(shapes, load)
    carried = min(load, load_within_headroom(state.capacity_rps))
    text = (
        f"{why}, sooner than a {s.cold_start_s:g} s cold start: resize in place now to "
        f"{_shape(ctx, shapes)}, carrying {state.capacity_rps:.0f} rps"
    )
    if not state.feasible:
        text += f" (short of the {state.target_rps:.0f} rps needed until new replicas are ready)"
    effective = ctx.now + _seconds(s.resize_s)
    return _step(
        ctx, "bridge", shapes, effective, s.resize_s, carried, text, feasible=state.feasible
    )


def _add_replicas(
    ctx: _Context,
    before: Sequence[StageConfig],
    target: Decision,
    ready: pd.Timestamp,
    peak: float,
    why: str,
    *,
    bridged: bool,
) -> PlanStep:
    """Start the new replicas one cold start before ``ready``, for the target state.

    After a bridge this is the consolidation: the bridged pods go back to the cost-optimal shape
    once the new replicas are ready.
    """
    s = ctx.settings
    apply_at = max(ctx.now, ready - _seconds(s.cold_start_s))
    text = (
        f"{why}; {_added(ctx, before, target.stages)} at {_clock(apply_at)} for a "
        f"{s.cold_start_s:g} s cold start -> {_shape(ctx, target.stages)}"
    )
    if any(t.cores < b.cores for t, b in zip(target.stages, before, strict=True)):
        text += f"; running pods shrink when the new ones are ready at {_clock(ready)}"
    if not target.feasible:
        text += f"; {target.detail or target.binding}"
    kind = "consolidate" if bridged else "scale-out"
    return _step(
        ctx, kind, target.stages, ready, s.cold_start_s, peak, text, feasible=target.feasible
    )


def _added(ctx: _Context, before: Sequence[StageConfig], after: Sequence[StageConfig]) -> str:
    """ "+3 replicas", or per stage "+2 yolov5n, +1 resnet18 replicas"."""
    diffs = [a.replicas - b.replicas for a, b in zip(after, before, strict=True)]
    if len(diffs) == 1:
        return f"{diffs[0]:+d} replica{'s' if abs(diffs[0]) != 1 else ''}"
    parts = [f"{d:+d} {p.name}" for d, p in zip(diffs, ctx.pipeline.stages, strict=True) if d]
    return ", ".join(parts) + " replicas"


# --------------------------------------------------------------------------------------------
# no surge


def _scale_in_or_hold(
    ctx: _Context, current: Sequence[StageConfig], last_up: pd.Timestamp | None
) -> list[PlanStep]:
    """Scale in to a cheaper state that carries the whole horizon, after the stabilisation
    window; else hold."""
    s = ctx.settings
    peak = max(float(ctx.loads.max()), ctx.observed_rps)
    peak_at = ctx.times[int(np.argmax(ctx.loads))]
    now_state = ctx.assess(current, peak)
    hold = (
        f"current {_shape(ctx, current)} carries the {ctx.q} peak of {peak:.0f} rps at "
        f"{_clock(peak_at)} (capacity {now_state.capacity_rps:.0f} rps)"
    )
    optimum = ctx.horizontal(peak)
    if not optimum.feasible or optimum.cost_cores >= now_state.cost_cores:
        return [_step(ctx, "hold", current, ctx.now, 0.0, peak, hold)]
    allowed = ctx.now if last_up is None else max(ctx.now, last_up + _seconds(s.stabilisation_s))
    # Replicas wait for the stabilisation window; pods may shrink in place sooner.
    shrink = _shrink_in_place(ctx, current, now_state, peak, last_up) if allowed > ctx.now else None
    if allowed > ctx.times[-1]:
        if shrink is not None:
            return [shrink]
        text = (
            f"{hold}; scale-in to {_shape(ctx, optimum.stages)} waits for the "
            f"{s.stabilisation_s:g} s stabilisation after the scale-up at {_clock(last_up)}"
        )
        return [_step(ctx, "hold", current, ctx.now, 0.0, peak, text)]
    later = _scale_in(ctx, current, optimum, allowed, peak, last_up)
    if shrink is not None and shrink.apply_at < later[0].apply_at:
        return [shrink, *later]
    return later


def _shrink_in_place(
    ctx: _Context,
    current: Sequence[StageConfig],
    now_state: Decision,
    peak: float,
    last_up: pd.Timestamp | None,
) -> PlanStep | None:
    """Inside the stabilisation window for replicas, shrink the running pods in place if the
    shorter resize window has passed and they carry the whole horizon with fewer cores."""
    s = ctx.settings
    if s.resize_stabilisation_s is None or last_up is None:
        return None
    allowed = max(ctx.now, last_up + _seconds(s.resize_stabilisation_s))
    if allowed > ctx.times[-1]:
        return None
    smaller = ctx.vertical(peak, [c.replicas for c in current])
    if (
        not smaller.feasible
        or smaller.cost_cores >= now_state.cost_cores
        or list(smaller.replicas) != [c.replicas for c in current]
    ):
        return None
    text = (
        f"{ctx.q} forecast peaks at {peak:.0f} rps over the horizon (observed "
        f"{ctx.observed_rps:.0f}); last scale-up at {_clock(last_up)}: replicas stay for the "
        f"{s.stabilisation_s:g} s stabilisation, pods shrink in place after "
        f"{s.resize_stabilisation_s:g} s to {_shape(ctx, smaller.stages)} "
        f"({now_state.cost_cores} -> {smaller.cost_cores} cores)"
    )
    effective = allowed + _seconds(s.resize_s)
    return _step(ctx, "scale-in", smaller.stages, effective, s.resize_s, peak, text)


def _scale_in(
    ctx: _Context,
    current: Sequence[StageConfig],
    optimum: Decision,
    allowed: pd.Timestamp,
    peak: float,
    last_up: pd.Timestamp | None,
) -> list[PlanStep]:
    s = ctx.settings
    since = (
        "no scale-up on record"
        if last_up is None
        else (f"last scale-up at {_clock(last_up)}, {s.stabilisation_s:g} s stabilisation passed")
    )
    why = (
        f"{ctx.q} forecast peaks at {peak:.0f} rps over the horizon (observed "
        f"{ctx.observed_rps:.0f}); {since}"
    )
    saving = f"{sum(c.replicas * c.cores for c in current)} -> {optimum.cost_cores} cores"
    text = (
        f"{why}; {_shape(ctx, optimum.stages)} carries it ({optimum.capacity_rps:.0f} rps), "
        f"{saving}"
    )
    if any(m > c.replicas for m, c in zip(optimum.replicas, current, strict=True)):
        # Fewer cores in more, smaller pods: the new pods need a cold start first, and the
        # running pods shrink once they are ready.
        text += f"; {_added(ctx, current, optimum.stages)} started at {_clock(allowed)}"
        ready = allowed + _seconds(s.cold_start_s)
        return [_step(ctx, "consolidate", optimum.stages, ready, s.cold_start_s, peak, text)]
    effective = allowed + _seconds(s.resize_s)
    return [_step(ctx, "scale-in", optimum.stages, effective, s.resize_s, peak, text)]


# --------------------------------------------------------------------------------------------
# helpers


def _step(
    ctx: _Context,
    kind: str,
    configs: Sequence[StageConfig],
    effective_at: pd.Timestamp,
    lead_s: float,
    load: float,
    reason: str,
    *,
    feasible: bool | None = None,
) -> PlanStep:
    """A PlanStep; apply_at is ``lead_s`` before effective_at, but never before the cutoff."""
    state = ctx.assess(configs, load)
    apply_at = max(ctx.now, effective_at - _seconds(lead_s))
    return PlanStep(
        effective_at=max(effective_at, apply_at),
        apply_at=apply_at,
        replicas=tuple(c.replicas for c in configs),
        cores=tuple(c.cores for c in configs),
        batch=tuple(c.batch for c in configs),
        reason=reason,
        expected_latency_ms=state.latency_ms,
        capacity_rps=state.capacity_rps,
        kind=kind,
        load_rps=float(load),
        feasible=state.feasible if feasible is None else bool(feasible and state.feasible),
    )


def _shape(ctx: _Context, configs: Sequence[StageConfig]) -> str:
    parts = []
    for profile, c in zip(ctx.pipeline.stages, configs, strict=True):
        text = f"{c.replicas} x {c.cores} core{'s' if c.cores > 1 else ''}, batch {c.batch}"
        parts.append(text if len(configs) == 1 else f"{profile.name} {text}")
    return "; ".join(parts)


def _clock(ts: pd.Timestamp | None) -> str:
    if ts is None:
        return "-"
    return ts.strftime("%H:%M:%S" if ts.second or ts.microsecond else "%H:%M")


def _seconds(value: float) -> pd.Timedelta:
    return pd.Timedelta(seconds=value)


def _clip(n: int, max_replicas: int | None) -> int:
    return n if max_replicas is None else min(n, max_replicas)
