"""Plan -> guarded target state per Deployment. Pure: no cluster, no clock.

Timing (DESIGN section 6): the actuator runs every ``run_interval_s``; a run at ``now`` applies
every plan step whose ``apply_at`` is before the next run (``now + run_interval_s``). Among
those steps, per stage and dimension (replicas, cores):

* a step already effective (``effective_at <= now``) sets the value outright, the latest one
  winning: that is the state the plan wants to hold now, including a scale-in;
* a step not yet effective may only raise it (scale-up early is safe; a decrease waits until its
  ``effective_at``, e.g. running pods shrink only once the new replicas are ready);
* a ``scale-in`` step counts as effective from its ``apply_at``: removing replicas or shrinking
  pods needs nothing to be ready first (its ``effective_at`` is a resize later, which with
  current data lies after every run's ``now``, so the scale-in would never happen);
* without an effective step the current state is the starting value.

Batch comes from the latest due step. The result then passes the guards, in this order:
reactive floor (never below what the observed load needs), scale-in confirmation (a scale-in
must carry the highest load observed over the stabilisation window), scale-in stabilisation,
step limit, bounds (hard limits win over everything).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import pandas as pd

from actuator.guards import (
    Guard,
    allowed_workload,
    confirm_scale_in,
    hold_scale_in,
    limit_step,
    not_expired,
    reactive_floor,
    run_guards,
    within_bounds,
)
from actuator.spec import ServiceSpec, WorkloadSpec
from planner.dp import StageConfig
from planner.plan import Plan, PlanStep


@dataclass(frozen=True)
class Floor:
    """The reactive floor of one stage.

    Attributes:
        observed_rps: the load just observed (rps).
        capacity_rps: what a shape carries (rps), from the stage's latency profile.
        floor: a shape that carries ``observed_rps`` (e.g. the horizontal DP's answer).
        window_peak_rps: the highest load observed over the stabilisation window before now
            (rps); a scale-in must carry it. None: unknown, so no scale-in is confirmed.
    """

    observed_rps: float
    capacity_rps: Callable[[StageConfig], float]
    floor: StageConfig
    window_peak_rps: float | None = None


@dataclass(frozen=True)
class StageTarget:
    """The target state of one Deployment for this run.

    Attributes:
        workload: the Deployment's settings.
        stage: the plan stage index it runs.
        current: what runs now (replicas in the Deployment's spec, cores per pod).
        wanted: what the due plan steps ask for (before the guards).
        target: what the guards allow.
        notes: one line per guard that changed something, in order.
        needed: what the due steps ask for without the current state, through the reactive
            floor and the bounds only: the capacity a fallback for refused resizes must reach,
            so that replicas kept by a hold (or added by an earlier fallback) never count as
            capacity still to be found.
    """

    workload: WorkloadSpec
    stage: int
    current: StageConfig
    wanted: StageConfig
    target: StageConfig
    notes: tuple[str, ...]
    needed: StageConfig | None = None

    @property
    def scale_up(self) -> bool:
        return (
            self.target.replicas > self.current.replicas or self.target.cores > self.current.cores
        )


def refusal(plan: Plan, config: ServiceSpec, now: pd.Timestamp) -> str | None:
    """Why ``plan`` may not be applied at all at ``now``, or None.

    Checks, in order: the plan is for this service and every stage has a Deployment in the
    service config (the allow-list), and the plan has not expired.
    """
    if plan.service != config.name:
        return allowed_workload(f"service {plan.service}", [f"service {config.name}"])
    try:
        stage_workloads(plan, config)
    except LookupError as exc:
        return str(exc)
    for workload in config.workloads:
        note = allowed_workload(f"{config.namespace}/{workload.deployment}", config.allow_list)
        if note:
            return note
    return not_expired(
        now_s=now.timestamp(), created_s=plan.cutoff.timestamp(), expiry_s=config.plan_expiry_s
    )


def stage_workloads(plan: Plan, config: ServiceSpec) -> list[tuple[int, WorkloadSpec]]:
    """(plan stage index, Deployment) for every stage of the plan.

    Raises:
        LookupError: a stage has no Deployment in the service config, or the stage counts differ.
    """
    n_stages = len(plan.steps[0].replicas) if plan.steps else len(plan.stage_names) or 1
    if n_stages == 1 and len(config.workloads) == 1:
        return [(0, config.workloads[0])]
    by_stage = {w.stage: w for w in config.workloads}
    names = plan.stage_names or tuple(str(i) for i in range(n_stages))
    out = []
    for i, name in enumerate(names):
        if name not in by_stage:
            raise LookupError(
                f"stage {name} of plan {plan.service} has no Deployment in the service config"
            )
        out.append((i, by_stage[name]))
    if len(out) != len(config.workloads):
        raise LookupError(
            f"plan {plan.service} has {len(out)} stage(s), the service config "
            f"{len(config.workloads)} Deployment(s)"
        )
    return out


def due_steps(
    plan: Plan, now: pd.Timestamp, run_interval_s: float, *, lead_s: float = 0.0
) -> tuple[PlanStep, ...]:
    """Steps to act on before the next scheduled run, in plan order.

    A step is due when its ``apply_at``, or ``effective_at - lead_s`` if that is earlier, falls
    before the next run. ``lead_s`` (:attr:`ServiceSpec.fallback_lead_s`) is the time the slow
    path needs: an in-place resize that fails must still leave a cold start for the fallback
    replicas, and an HPA acts on a raised ``minReplicas`` only at its next sync. Scaling up
    early is safe; a decrease still waits for its own time (:func:`wanted_state`).
    """
    next_run = now + pd.Timedelta(seconds=run_interval_s)
    lead = pd.Timedelta(seconds=lead_s)
    return tuple(s for s in plan.steps if min(s.apply_at, s.effective_at - lead) < next_run)


def wanted_state(
    steps: Sequence[PlanStep], stage: int, current: StageConfig, now: pd.Timestamp
) -> StageConfig:
    """What the due ``steps`` ask of ``stage`` now (module docstring); ``current`` if none."""
    if not steps:
        return current
    effective = [s for s in steps if _effective(s, now)]
    pending = [s for s in steps if not _effective(s, now)]
    base = effective[-1] if effective else None
    replicas = base.replicas[stage] if base else current.replicas
    cores = base.cores[stage] if base else current.cores
    for step in pending:
        replicas = max(replicas, step.replicas[stage])
        cores = max(cores, step.cores[stage])
    return StageConfig(replicas, cores, steps[-1].batch[stage])


def _effective(step: PlanStep, now: pd.Timestamp) -> bool:
    return step.effective_at <= now or (step.kind == "scale-in" and step.apply_at <= now)


def _total_cores(config: StageConfig) -> float:
    """A capacity proxy when no latency profile is at hand: cores in service."""
    return float(config.replicas * config.cores)


def stage_guards(
    config: ServiceSpec,
    workload: WorkloadSpec,
    current: StageConfig,
    *,
    now_s: float,
    last_scale_up_s: float | None,
    floor: Floor | None = None,
) -> list[Guard]:
    """The guards of one Deployment, in the order they run (module docstring)."""
    guards: list[Guard] = []
    if floor is not None:
        guards.append(
            partial(
                reactive_floor,
                floor_rps=floor.observed_rps,
                capacity_rps=floor.capacity_rps,
                floor=floor.floor,
            )
        )
    guards.append(
        partial(
            confirm_scale_in,
            current=current,
            window_peak_rps=None if floor is None else floor.window_peak_rps,
            capacity_rps=_total_cores if floor is None else floor.capacity_rps,
        )
    )
    guards += [
        partial(
            hold_scale_in,
            current=current,
            now_s=now_s,
            last_scale_up_s=last_scale_up_s,
            window_s=config.stabilisation_s,
        ),
        partial(
            limit_step,
            current=current,
            max_replica_step=config.max_replica_step,
            max_core_step=config.max_core_step,
            max_step_ratio=config.max_step_ratio,
        ),
        partial(within_bounds, bounds=workload.bounds),
    ]
    return guards


def stage_target(
    config: ServiceSpec,
    workload: WorkloadSpec,
    stage: int,
    steps: Sequence[PlanStep],
    current: StageConfig,
    *,
    now: pd.Timestamp,
    last_scale_up_s: float | None,
    floor: Floor | None = None,
) -> StageTarget:
    """The guarded target state of one Deployment."""
    wanted = wanted_state(steps, stage, current, now)
    guards = stage_guards(
        config,
        workload,
        current,
        now_s=now.timestamp(),
        last_scale_up_s=last_scale_up_s,
        floor=floor,
    )
    target, notes = run_guards(wanted, guards)
    # The plan alone, without the current state (a pending step only raises from what runs,
    # so ``wanted`` counts replicas a fallback added earlier as wanted): only the reactive
    # floor and the bounds apply to it.
    alone = wanted_state(steps, stage, StageConfig(1, 1, current.batch), now) if steps else current
    needed, _ = run_guards(
        alone, [g for g in guards if g.func in (reactive_floor, within_bounds)]
    )
    return StageTarget(workload, stage, current, wanted, target, tuple(notes), needed)


def fallback_replicas(
    base_replicas: int,
    missing_millicores: int,
    *,
    new_pod_millicores: int,
    current_replicas: int,
    config: ServiceSpec,
    workload: WorkloadSpec,
) -> tuple[int, str | None]:
    """Replicas that make up for in-place resizes that did not happen.

    New pods start from the Deployment's template, not from the planned cores (DESIGN section
    6), so the extra replicas are sized by what a new pod will really get. The answer passes
    the same step limit and bounds as every other change.

    Args:
        base_replicas: the replicas the plan asks for (within the guards' target).
        missing_millicores: CPU the unconfirmed resizes leave missing (millicores).
        new_pod_millicores: the CPU request of a new pod (the template's), millicores.
        current_replicas: replicas before this run, for the step limit.
        config: the service (step limits).
        workload: the Deployment (bounds).

    Returns:
        (replicas, note): ``base_replicas`` plus ceil(missing / new pod CPU), within the step
        limit and the bounds; the note says which limit bound it, or None.
    """
    if missing_millicores <= 0:
        return base_replicas, None
    extra = -(-missing_millicores // max(1, new_pod_millicores))
    wanted = base_replicas + extra
    stepped = limit_step(
        StageConfig(wanted, 1, 1),
        StageConfig(current_replicas, 1, 1),
        max_replica_step=config.max_replica_step,
        max_step_ratio=config.max_step_ratio,
    ).config.replicas
    allowed = min(max(stepped, base_replicas), workload.bounds.max_replicas)
    if allowed >= wanted:
        return allowed, None
    which = (
        f"max_replicas {workload.bounds.max_replicas}"
        if allowed == workload.bounds.max_replicas
        else f"the step limit ({current_replicas} -> {stepped})"
    )
    return allowed, (
        f"fallback for unconfirmed resizes wants {wanted} replicas of "
        f"{new_pod_millicores / 1000:g} cores, capped at {allowed} by {which}"
    )
