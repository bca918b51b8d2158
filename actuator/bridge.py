"""The in-place bridge's decision: how many cores the ready pods of a service run right now.

Themis' first stage in production (DESIGN sections 4 and 6). The periodic pipeline (every
``run_interval_s``, 5 minutes by default) owns replicas and the *envelope*: the current plan
step's cores per pod are the floor, ``bridge.max_cores`` (else ``bounds.max_cores``) the ceiling.
Between two runs the bridge owns in-place cores inside that envelope, every ``interval_s``
seconds, on a fast load signal:

* **up at once** when the ready pods, at the CPU they run with, do not carry the signal's load
  with the planner's Poisson headroom (:func:`planner.queueing.headroom_rps`): the ready pods
  get the fewest cores that do (DP 2's question, :func:`planner.dp.vertical`: replicas fixed at
  the ready count, least cores that carry λ̃ within the SLO), at most the ceiling;
* **levelled** when the pods are of unequal sizes and do not carry the load (new pods from the
  template among pods grown in place): a Service gives every pod an even share, so every pod
  goes to the answer, the larger ones down in the same tick to make room on their nodes;
* **down towards the plan's cores** only when the lower shape has carried every signal sample
  of the last ``scale_down_after_s`` seconds and no up-move happened in that time (hysteresis:
  a load that hovers at a threshold does not flap the pods);
* **never outside** [plan cores, ceiling], and never a replica: the pipeline adds those.

Two deliberate differences from the planner's DP 2:

* the batch stays what the pods run: it is an application setting that changes only through
  the pod template (``WorkloadSpec.batch_env``), never in place;
* the SLO check is on processing latency alone. The batch-fill wait shrinks as the load rises
  and more cores do not shorten it, so including it would make the answer non-monotone in load
  (more cores at a lower load) without carrying one request more.

Everything here is pure: no I/O, no clock (``now_s`` is a parameter).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from actuator.errors import ActuatorInputError
from actuator.spec import BridgeSpec
from planner.plan import Plan
from planner.profiles import LatencyProfile
from planner.queueing import headroom_rps

UP, DOWN, HOLD = "up", "down", "hold"



def bridge_settings(spec: object) -> BridgeSpec:
    """The bridge settings of a service spec: its ``bridge`` table, or the defaults for a spec
    without one (a spec built in code for a test)."""
    raw = getattr(spec, "bridge", None)
    return raw if isinstance(raw, BridgeSpec) else BridgeSpec()


# --------------------------------------------------------------------------------------------
# inputs


@dataclass(frozen=True)
class Envelope:
    """What the pipeline allows the bridge, per stage: cores per pod in [floor, ceiling].

    Attributes:
        floor_cores: the current plan step's cores (the bridge never goes below).
        ceiling_cores: ``bridge.max_cores`` or ``bounds.max_cores`` (at least the floor).
        source: where the floor comes from, for the record.
    """

    floor_cores: tuple[int, ...]
    ceiling_cores: tuple[int, ...]
    source: str

    def __post_init__(self) -> None:
        floors = tuple(int(c) for c in self.floor_cores)
        ceilings = tuple(max(int(h), f) for h, f in zip(self.ceiling_cores, floors, strict=True))
        if not floors or min(floors) < 1:
            raise ActuatorInputError(f"envelope: floors must be >= 1, got {floors}")
        object.__setattr__(self, "floor_cores", floors)
        object.__setattr__(self, "ceiling_cores", ceilings)


def plan_step_now(plan: Plan, now: pd.Timestamp):
    """The plan step in force at ``now``: the latest whose ``apply_at`` has passed (the actuator
    has started it), else the first; None for a plan without steps."""
    if not plan.steps:
        return None
    started = [s for s in plan.steps if s.apply_at <= now]
    return started[-1] if started else plan.steps[0]


def envelope(
    plan: Plan | None,
    now: pd.Timestamp,
    *,
    min_cores: Sequence[int],
    max_cores: Sequence[int],
    bridge_max_cores: int | None,
    template_cores: Sequence[int],
    why_no_plan: str = "no plan",
) -> Envelope:
    """The envelope of every stage at ``now``.

    With a usable plan the floor is its current step's cores (within the bounds). Without one
    (none stored, expired, corrupt, or no pipeline at all: ``why_no_plan``) the floor is the
    Deployment's pod template, the size its operator gave a new pod: the bridge grows pods for a
    surge and gives the cores back, after ``scale_down_after_s`` of the smaller pods carrying
    the load, down to what the service runs with when nobody plans for it (the reactive
    fallback, never below it).

    Args:
        plan: the service's latest usable plan, or None.
        now: the tick's time.
        min_cores, max_cores: per stage, the workload's bounds.
        bridge_max_cores: ``bridge.max_cores`` (None: the bounds' max).
        template_cores: per stage, the whole cores of the Deployment's pod template.
    """
    ceilings = tuple(
        min(hi, bridge_max_cores) if bridge_max_cores is not None else hi for hi in max_cores
    )
    step = None if plan is None else plan_step_now(plan, now)
    if step is not None and len(step.cores) == len(min_cores):
        floors = tuple(
            min(max(c, lo), hi) for c, lo, hi in zip(step.cores, min_cores, max_cores, strict=True)
        )
        source = f"plan {plan.service}@{plan.cutoff.isoformat()} step {step.kind}"
        return Envelope(floors, ceilings, source)
    if step is not None:
        why_no_plan = f"plan has {len(step.cores)} stage(s), the service {len(min_cores)}"
    floors = tuple(
        min(max(c, lo), hi) for c, lo, hi in zip(template_cores, min_cores, max_cores, strict=True)
    )
    return Envelope(floors, ceilings, f"{why_no_plan}: floor = the pod template's cores")


@dataclass(frozen=True)
class StageNow:
    """One stage (one Deployment) as the bridge sees it.

    Attributes:
        profile: the stage's latency profile.
        batch: the batch size its pods run.
        ready_millicores: per ready pod, the CPU it runs with (allocated, millicores).
        cores: the cores per pod the ready pods ask for now (their spec; the largest).
        least_cores: the fewest cores a ready pod asks for (None: ``cores``); below ``cores``
            after a scale-out, whose new pods start at the template's size.
    """

    profile: LatencyProfile
    batch: int
    ready_millicores: tuple[int, ...]
    cores: int
    least_cores: int | None = None

    @property
    def ready(self) -> int:
        return len(self.ready_millicores)


@dataclass(frozen=True)
class BridgeDecision:
    """What the ready pods should run.

    Attributes:
        cores: per stage, cores per ready pod.
        direction: ``up``, ``down`` or ``hold`` (for the stages that move; an up-move never
            takes another stage down at the same time).
        reason: one line.
        carried: the ready pods at their CPU carry the signal's load with headroom.
        need_cores: per stage, the fewest cores that carry the load (within the envelope;
            the ceiling when even that does not).
        load_rps: the signal's load; ``target_rps`` it with headroom.
        level: per stage, every ready pod goes to exactly ``cores``, the larger ones down in the
            same tick (pods of unequal sizes that do not carry their even shares; empty: no
            stage levels).
    """

    cores: tuple[int, ...]
    direction: str
    reason: str
    carried: bool
    need_cores: tuple[int, ...]
    load_rps: float
    target_rps: float
    level: tuple[bool, ...] = ()

    def levels(self, stage: int) -> bool:
        return bool(self.level) and self.level[stage]


# --------------------------------------------------------------------------------------------
# the decision


def carries(stages: Sequence[StageNow], rps: float, slo_ms: float) -> bool:
    """Whether the ready pods at the CPU they run with carry ``rps`` with headroom: in every
    stage the slowest pod carries its even share (n times its throughput covers λ + √λ), and
    the slowest pods of the stages meet the SLO.

    A Service spreads requests evenly over the ready pods (kube-proxy picks at random or in
    turn), whatever CPU each runs with: after a scale-out the new pods, at the template's size,
    get as many requests as the pods the bridge grew. The stage's summed throughput would call
    that carried while the small pods' queues grow without bound."""
    need = headroom_rps(rps)
    latency = 0.0
    for s in stages:
        cores = [m / 1000 for m in s.ready_millicores if m > 0]
        if not cores:
            return need <= 0
        if len(cores) * float(s.profile.throughput_rps(s.batch, min(cores))) < need:
            return False
        latency += float(s.profile.latency_ms(s.batch, min(cores)))
    return latency <= slo_ms


def need_cores(
    stages: Sequence[StageNow], rps: float, slo_ms: float, env: Envelope
) -> tuple[tuple[int, ...], str | None]:
    """The fewest cores per ready pod (least total cores, then the fastest) inside the envelope
    that carry ``rps`` with headroom within the SLO, the replicas fixed at the ready counts.

    Returns:
        (cores per stage, None), or (the ceiling, why it falls short) when nothing inside the
        envelope carries the load: the pipeline's next run adds the replicas.
    """
    target = headroom_rps(rps)
    options: list[list[int]] = []
    for s, lo, hi in zip(stages, env.floor_cores, env.ceiling_cores, strict=True):
        n = max(s.ready, 1)
        first = next(
            (c for c in range(lo, hi + 1) if n * float(s.profile.throughput_rps(s.batch, c))
             >= target),
            None,
        )
        if first is None:
            return env.ceiling_cores, _short_of(stages, env, target)
        options.append(list(range(first, hi + 1)))
    best: tuple[int, float, tuple[int, ...]] | None = None
    for combo in itertools.product(*options) if len(options) > 1 else ((c,) for c in options[0]):
        latency = sum(
            float(s.profile.latency_ms(s.batch, c)) for s, c in zip(stages, combo, strict=True)
        )
        if latency > slo_ms:
            continue
        cost = sum(max(s.ready, 1) * c for s, c in zip(stages, combo, strict=True))
        if best is None or (cost, latency) < best[:2]:
            best = (cost, latency, combo)
        if len(options) == 1:
            break  # one stage: the first that meets the SLO is the cheapest
    if best is None:
        return env.ceiling_cores, (
            f"the SLO of {slo_ms:g} ms is out of reach below the ceiling "
            f"{_cores(env.ceiling_cores)} cores at this batch"
        )
    return best[2], None


def _short_of(stages: Sequence[StageNow], env: Envelope, target: float) -> str:
    most = min(
        max(s.ready, 1) * float(s.profile.throughput_rps(s.batch, hi))
        for s, hi in zip(stages, env.ceiling_cores, strict=True)
    )
    return (
        f"at the ceiling {_cores(env.ceiling_cores)} cores the ready pods carry {most:.1f} of "
        f"{target:.1f} rps: the pipeline adds the replicas"
    )


def decide(
    settings: BridgeSpec,
    stages: Sequence[StageNow],
    env: Envelope,
    *,
    rps: float,
    slo_ms: float,
    now_s: float,
    last_up_s: float | None,
    window_peak_rps: float,
    window_start_s: float,
) -> BridgeDecision:
    """The cores per ready pod of every stage now.

    Args:
        settings: the bridge's knobs.
        stages: every stage of the service, in plan order.
        env: the envelope the pipeline allows.
        rps: the fast signal's load (requests per second, >= 0).
        slo_ms: the end-to-end latency SLO.
        now_s: the tick's time (s, any epoch; the same clock as the other times).
        last_up_s: the bridge's last up-move (None: none known).
        window_peak_rps: the highest signal sample since ``window_start_s``.
        window_start_s: the oldest signal sample the controller still holds: a down-move needs
            ``scale_down_after_s`` of signal behind it.

    Returns:
        The decision; ``cores`` is always inside the envelope.
    """
    if not stages or len(stages) != len(env.floor_cores):
        raise ActuatorInputError("bridge: one envelope entry per stage is needed")
    if not math.isfinite(rps) or rps < 0:
        raise ActuatorInputError(f"bridge: the signal must be a rate >= 0, got {rps}")
    lo, hi = env.floor_cores, env.ceiling_cores
    current = tuple(s.cores for s in stages)
    target = headroom_rps(rps)
    if all(s.ready == 0 for s in stages):
        return BridgeDecision(current, HOLD, "no ready pods to resize", False, current, rps,
                              target)
    carried = carries(stages, rps, slo_ms)
    need, short = need_cores(stages, rps, slo_ms, env)
    # The envelope alone: a pod below the plan's cores (a new pod from the template) rises to
    # the floor; a pod above the ceiling (the ceiling was lowered) comes down to it.
    inside = tuple(min(max(c, f), h) for c, f, h in zip(current, lo, hi, strict=True))
    least = tuple(s.cores if s.least_cores is None else s.least_cores for s in stages)
    level = (False,) * len(stages)
    if not carried:
        # A stage of unequal pods (new ones from the template among pods grown in place) levels
        # them at its answer: every pod gets an even share, so cores above the answer on some
        # pods carry nothing the answer does not, and giving them back makes room on their
        # nodes for the small pods to grow (a resize without room waits as Deferred).
        level = tuple(
            short is None and low < c for low, c in zip(least, current, strict=True)
        )
        cores = tuple(
            n if lv else max(c, n) for c, n, lv in zip(inside, need, level, strict=True)
        )
        load = f"{rps:.1f} rps ({target:.1f} with headroom)"
        why = f"{load} exceeds what the ready pods carry at their CPU: {_cores(cores)} cores"
        if any(level):
            why += " (pods of unequal sizes levelled)"
        if short:
            why += f"; {short}"
    else:
        cores = inside
        why = f"{rps:.1f} rps carried"
        peak = max(rps, window_peak_rps)
        lower = tuple(
            min(c, max(f, n))
            for c, f, n in zip(inside, lo, need_cores(stages, peak, slo_ms, env)[0], strict=True)
        )
        if lower != inside:
            since_up = math.inf if last_up_s is None else now_s - last_up_s
            covered = now_s - window_start_s
            wait = settings.scale_down_after_s
            if since_up < wait:
                why += (
                    f"; down to {_cores(lower)} cores waits: {since_up:.0f} s since the last "
                    f"up-move (scale_down_after_s {wait:g})"
                )
            elif covered < wait:
                why += (
                    f"; down to {_cores(lower)} cores waits: {covered:.0f} s of signal behind "
                    f"it (scale_down_after_s {wait:g})"
                )
            else:
                cores = lower
                why += (
                    f"; {_cores(lower)} cores carried the peak {peak:.1f} rps of the last "
                    f"{covered:.0f} s: down towards the plan's {_cores(lo)}"
                )
    # Up also when a ready pod asks for less than its stage's answer (a new pod from the
    # template among pods the bridge grew) and the load is not carried, or the pod is below
    # the plan's floor.
    ups = any(c > s for c, s in zip(cores, current, strict=True)) or any(
        c > low and (not carried or low < f)
        for c, low, f in zip(cores, least, lo, strict=True)
    )
    if ups:
        # An up-move never shrinks another stage in the same tick (except to its ceiling), nor
        # a levelled stage's pods below its answer.
        cores = tuple(
            c if lv else max(c, min(s, h))
            for c, s, h, lv in zip(cores, current, hi, level, strict=True)
        )
    else:
        level = (False,) * len(stages)
    downs = any(c < s for c, s in zip(cores, current, strict=True))
    direction = UP if ups else DOWN if downs else HOLD
    if direction == HOLD and not carried:
        why = (
            f"{rps:.1f} rps ({target:.1f} with headroom) not carried yet; the pods already ask "
            f"for {_cores(current)} cores" + (f"; {short}" if short else "")
        )
    return BridgeDecision(cores, direction, f"{why} [{env.source}]", carried, need, rps, target,
                          level)


def held_by(lease: Mapping | None, now_s: float) -> str | None:
    """The holder of a Lease (a JSON dict as the API returns it) at ``now_s`` (wall clock, epoch
    s), or None when nobody holds it: no holder, or its ``renewTime + leaseDurationSeconds`` has
    passed. A holder whose times cannot be read counts as holding (safety first)."""
    if not lease:
        return None
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity")
    if not holder:
        return None
    stamp = spec.get("renewTime") or spec.get("acquireTime") or (
        (lease.get("metadata") or {}).get("creationTimestamp")
    )
    try:
        renewed = pd.Timestamp(stamp).timestamp()
        duration = float(spec.get("leaseDurationSeconds") or 0)
    except (TypeError, ValueError):
        return str(holder)
    return str(holder) if renewed + duration > now_s else None


def _cores(values: Sequence[int]) -> str:
    return ",".join(str(v) for v in values)
