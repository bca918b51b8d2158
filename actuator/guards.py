"""Safety guards: small pure functions that turn a wanted shape into a safe one.

Every scaling decision, from the proactive planner, the reactive autoscalers of the backtest or a
plan file handed to the actuator, passes through the same guards before anything acts on it.
Each guard takes the wanted per-stage shape (``StageConfig``: replicas, cores per replica, batch)
and returns the shape it allows plus a one-line note when it changed something, so a decision
record can say which guard bound it. Guards never raise on a legal shape; they clamp and say so.

Times are seconds on one clock (epoch seconds in the actuator, simulated seconds in the
backtest), so the guards never read a wall clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Annotated

from pydantic import Strict

from planner.dp import StageConfig

_Int = Annotated[int, Strict()]
"""An int that a spec file must give as an integer (``2.0``, ``"2"`` and ``true`` are refused
when :mod:`actuator.spec` validates bounds from a file; code may pass numpy integers)."""

Guard = Callable[[StageConfig], "Guarded"]
"""A guard with its settings bound (``functools.partial``): wanted shape -> allowed shape."""


@dataclass(frozen=True)
class Guarded:
    """What a guard allows.

    Attributes:
        config: the allowed shape.
        note: why it differs from the wanted shape, or None when it passed unchanged.
    """

    config: StageConfig
    note: str | None = None


@dataclass(frozen=True)
class Bounds:
    """Hard limits for one stage (one Deployment).

    Attributes:
        min_replicas: never fewer replicas (>= 1; scale to zero is out of scope).
        max_replicas: never more replicas.
        min_cores: never fewer integer CPU cores per replica.
        max_cores: never more cores per replica.
        max_batch: never a larger batch size.
    """

    min_replicas: _Int = 1
    max_replicas: _Int = 1000
    min_cores: _Int = 1
    max_cores: _Int = 64
    max_batch: _Int = 64

    def __post_init__(self) -> None:
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError(
                f"bounds: need 1 <= min_replicas <= max_replicas, got "
                f"{self.min_replicas}..{self.max_replicas}"
            )
        if not 1 <= self.min_cores <= self.max_cores:
            raise ValueError(
                f"bounds: need 1 <= min_cores <= max_cores, got {self.min_cores}..{self.max_cores}"
            )
        if self.max_batch < 1:
            raise ValueError(f"bounds: max_batch must be >= 1, got {self.max_batch}")


REQUIRED_BOUNDS = ("min_replicas", "max_replicas", "min_cores", "max_cores")
"""Bounds a service spec must state: no built-in default may decide how far a cluster grows."""


def within_bounds(wanted: StageConfig, bounds: Bounds) -> Guarded:
    """Clamp replicas, cores and batch into ``bounds``."""
    allowed = StageConfig(
        replicas=min(max(wanted.replicas, bounds.min_replicas), bounds.max_replicas),
        cores=min(max(wanted.cores, bounds.min_cores), bounds.max_cores),
        batch=min(max(wanted.batch, 1), bounds.max_batch),
    )
    if allowed == wanted:
        return Guarded(allowed)
    return Guarded(allowed, f"bounds: {_shape(wanted)} clamped to {_shape(allowed)}")


def limit_step(
    wanted: StageConfig,
    current: StageConfig,
    *,
    max_replica_step: int | None = None,
    max_core_step: int | None = None,
    max_step_ratio: float = 0.0,
) -> Guarded:
    """Move replicas and cores at most one step from ``current``.

    A step is ``max(max_*_step, ceil(max_step_ratio * current))``: with the defaults of the
    service config (4 and 1.0) that is the Kubernetes HPA's default scale-up policy, "4 pods or
    100 %, whichever is more", per run. ``None`` leaves that dimension unlimited.
    """
    replicas = _towards(
        current.replicas, wanted.replicas, _step(max_replica_step, max_step_ratio, current.replicas)
    )
    cores = _towards(
        current.cores, wanted.cores, _step(max_core_step, max_step_ratio, current.cores)
    )
    allowed = replace(wanted, replicas=replicas, cores=cores)
    if allowed == wanted:
        return Guarded(allowed)
    return Guarded(allowed, f"step limit: {_shape(wanted)} limited to {_shape(allowed)}")


def hold_scale_in(
    wanted: StageConfig,
    current: StageConfig,
    *,
    now_s: float,
    last_scale_up_s: float | None,
    window_s: float,
    capacity_rps: Callable[[StageConfig], float] | None = None,
    resize_window_s: float | None = None,
) -> Guarded:
    """Refuse a scale-in within ``window_s`` of the last scale-up.

    A scale-in right after a scale-up is the flapping that costs a cold start on the next surge;
    the window is the Kubernetes HPA's scale-down stabilisation idea applied to both dimensions.
    With ``capacity_rps`` a scale-in is any change to less capacity (so reshaping 2 pods of 6
    cores into 5 of 1 core counts); without it, fewer replicas or fewer cores.

    ``resize_window_s`` (default: ``window_s``) is the window for a scale-in that removes no
    replica, only cores in place: undoing it is a resize of seconds, not a cold start, so it
    can follow the load more closely.
    """
    if wanted.replicas >= current.replicas and resize_window_s is not None:
        window_s = resize_window_s
    if last_scale_up_s is None or now_s - last_scale_up_s >= window_s:
        return Guarded(wanted)
    if capacity_rps is not None:
        if capacity_rps(wanted) >= capacity_rps(current):
            return Guarded(wanted)
        allowed = current
    else:
        replicas = max(wanted.replicas, current.replicas)
        cores = max(wanted.cores, current.cores)
        allowed = replace(wanted, replicas=replicas, cores=cores)
    if allowed == wanted:
        return Guarded(allowed)
    since = now_s - last_scale_up_s
    return Guarded(
        allowed,
        f"stabilisation: scale-in to {_shape(wanted)} held, last scale-up {since:.0f} s ago "
        f"(< {window_s:.0f} s)",
    )


def reactive_floor(
    wanted: StageConfig,
    *,
    floor_rps: float,
    capacity_rps: Callable[[StageConfig], float],
    floor: StageConfig,
) -> Guarded:
    """Never below what the load just observed needs.

    If ``wanted`` carries less than ``floor_rps``, answer ``floor`` (a shape that carries it,
    e.g. the horizontal DP's answer for the observed load) in each dimension where it is larger.
    """
    if capacity_rps(wanted) >= floor_rps:
        return Guarded(wanted)
    allowed = StageConfig(
        replicas=max(wanted.replicas, floor.replicas),
        cores=max(wanted.cores, floor.cores) if wanted.replicas < floor.replicas else floor.cores,
        batch=floor.batch,
    )
    if capacity_rps(allowed) < floor_rps:
        allowed = floor
    return Guarded(
        allowed,
        f"reactive floor: {_shape(wanted)} carries {capacity_rps(wanted):.0f} rps < observed "
        f"{floor_rps:.0f} rps; raised to {_shape(allowed)}",
    )


def confirm_scale_in(
    wanted: StageConfig,
    current: StageConfig,
    *,
    window_peak_rps: float | None,
    capacity_rps: Callable[[StageConfig], float],
) -> Guarded:
    """Scale in only to a shape that carries the highest load observed over the stabilisation
    window (the HPA's scale-down stabilisation, and the predictive autoscalers of the clouds,
    which scale out on the forecast but in only on observed load).

    A forecast may lower capacity only when what was really observed agrees. Without an observed
    window (``window_peak_rps`` None) a scale-in is not confirmed and the current shape is held.
    """
    if capacity_rps(wanted) >= capacity_rps(current):
        return Guarded(wanted)
    if window_peak_rps is not None and capacity_rps(wanted) >= window_peak_rps:
        return Guarded(wanted)
    allowed = StageConfig(
        max(wanted.replicas, current.replicas), max(wanted.cores, current.cores), wanted.batch
    )
    if capacity_rps(allowed) < capacity_rps(current):
        allowed = current
    if window_peak_rps is None:
        why = "no observed load to confirm it"
    else:
        why = (
            f"it carries {capacity_rps(wanted):.0f} rps < {window_peak_rps:.0f} rps observed "
            "within the stabilisation window"
        )
    return Guarded(allowed, f"scale-in confirmation: {_shape(wanted)} held at "
                            f"{_shape(allowed)}: {why}")


def not_expired(*, now_s: float, created_s: float, expiry_s: float) -> str | None:
    """Why a plan made at ``created_s`` may no longer be applied at ``now_s``, or None."""
    age = now_s - created_s
    if age > expiry_s:
        return f"plan expired: made {age:.0f} s ago, expiry {expiry_s:.0f} s"
    if age < -1.0:
        return f"plan from the future: made {-age:.0f} s after now"
    return None


def allowed_workload(workload: str, allow_list: Sequence[str]) -> str | None:
    """Why ``workload`` (``namespace/name``) may not be touched, or None."""
    if workload in allow_list:
        return None
    return f"workload {workload} is not in the service config's allow-list"


def run_guards(wanted: StageConfig, guards: Sequence[Guard]) -> tuple[StageConfig, list[str]]:
    """Apply ``guards`` in order; return the allowed shape and every note, in order."""
    notes: list[str] = []
    config = wanted
    for guard in guards:
        result = guard(config)
        config = result.config
        if result.note:
            notes.append(result.note)
    return config, notes


def _step(absolute: int | None, ratio: float, current: int) -> int | None:
    if absolute is None:
        return None
    return max(absolute, math.ceil(ratio * current))


def _towards(current: int, wanted: int, max_step: int | None) -> int:
    if max_step is None:
        return wanted
    delta = wanted - current
    return current + int(math.copysign(min(abs(delta), max_step), delta)) if delta else current


def _shape(config: StageConfig) -> str:
    return f"{config.replicas}×{config.cores} cores (batch {config.batch})"
