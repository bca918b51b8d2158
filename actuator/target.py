"""Plan -> guarded target state per Deployment. Pure: no cluster, no clock.

Timing (DESIGN section 6): the actuator runs every ``run_interval_s``; a run at ``now`` applies
every plan step whose ``apply_at`` is before the next run (``now + run_interval_s``). Among
those steps, per stage and dimension (replicas, cores):

* a step already effective (``effective_at <= now``) sets the value outright, the latest one
  winning: that is the state the plan wants to hold now, including a scale-in;
* a step not yet effective may only raise it (scale-up early is safe; a decrease waits until its
  ``effective_at``, e.g. running pods shrink only once the new replicas are ready);
* without an effective step the current state is the starting value.

Batch comes from the latest due step. The result then passes the guards, in this order:
reactive floor (never below what the observed load needs), scale-in stabilisation, step limit,
bounds (hard limits win over everything).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import pandas as pd

from actuator.config import ServiceConfig, WorkloadConfig
from actuator.guards import (
    Guard,
    allowed_workload,
    hold_scale_in,
    limit_step,
    not_expired,
    reactive_floor,
    run_guards,
    within_bounds,
)
from planner.dp import StageConfig
from planner.plan import Plan, PlanStep


@dataclass(frozen=True)
class Floor:
    """The reactive floor of one stage.

    Attributes:
        observed_rps: the load just observed (rps).
        capacity_rps: what a shape carries (rps), from the stage's latency profile.
        floor: a shape that carries ``observed_rps`` (e.g. the horizontal DP's answer).
    """

    observed_rps: float
    capacity_rps: Callable[[StageConfig], float]
    floor: StageConfig


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
    """

    workload: WorkloadConfig
    stage: int
    current: StageConfig
    wanted: StageConfig
    target: StageConfig
    notes: tuple[str, ...]

    @property
    def scale_up(self) -> bool:
        return (
            self.target.replicas > self.current.replicas or self.target.cores > self.current.cores
        )


def refusal(plan: Plan, config: ServiceConfig, now: pd.Timestamp) -> str | None:
    """Why ``plan`` may not be applied at all at ``now``, or None.

    Checks, in order: the plan is for this service and every stage has a Deployment in the
    service config (the allow-list), and the plan has not expired.
    """
    if plan.service != config.service:
        return allowed_workload(f"service {plan.service}", [f"service {config.service}"])
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


def stage_workloads(plan: Plan, config: ServiceConfig) -> list[tuple[int, WorkloadConfig]]:
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


def due_steps(plan: Plan, now: pd.Timestamp, run_interval_s: float) -> tuple[PlanStep, ...]:
    """Steps whose ``apply_at`` is before the next scheduled run, in plan order."""
    next_run = now + pd.Timedelta(seconds=run_interval_s)
    return tuple(s for s in plan.steps if s.apply_at < next_run)


def wanted_state(
    steps: Sequence[PlanStep], stage: int, current: StageConfig, now: pd.Timestamp
) -> StageConfig:
    """What the due ``steps`` ask of ``stage`` now (module docstring); ``current`` if none."""
    if not steps:
        return current
    effective = [s for s in steps if s.effective_at <= now]
    pending = [s for s in steps if s.effective_at > now]
    base = effective[-1] if effective else None
    replicas = base.replicas[stage] if base else current.replicas
    cores = base.cores[stage] if base else current.cores
    for step in pending:
        replicas = max(replicas, step.replicas[stage])
        cores = max(cores, step.cores[stage])
    return StageConfig(replicas, cores, steps[-1].batch[stage])


def stage_guards(
    config: ServiceConfig,
    workload: WorkloadConfig,
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
        ),
        partial(within_bounds, bounds=workload.bounds),
    ]
    return guards


def stage_target(
    config: ServiceConfig,
    workload: WorkloadConfig,
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
    return StageTarget(workload, stage, current, wanted, target, tuple(notes))


def fallback_replicas(
    target: StageConfig, missing_millicores: int, workload: WorkloadConfig
) -> tuple[int, str | None]:
    """Replicas that make up for in-place resizes that did not happen.

    Args:
        target: the target state of the Deployment.
        missing_millicores: CPU the refused or deferred resizes would have added (millicores).
        workload: for its bounds.

    Returns:
        (replicas, note): ``target.replicas`` plus ceil(missing / target cores per pod), capped
        at the bounds; the note says when the cap bound it.
    """
    if missing_millicores <= 0:
        return target.replicas, None
    per_pod = target.cores * 1000
    extra = -(-missing_millicores // per_pod)
    wanted = target.replicas + extra
    allowed = min(wanted, workload.bounds.max_replicas)
    if allowed < wanted:
        return allowed, (
            f"bounds: fallback for refused resizes wants {wanted} replicas, capped at "
            f"max_replicas {workload.bounds.max_replicas}"
        )
    return allowed, None
