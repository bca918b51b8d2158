"""A cluster simulator at 1-second resolution, for backtests (DESIGN.md section 5).

The cluster serves one pipeline of stages (a single model is a 1-stage pipeline). Per stage it
holds replicas, each with integer CPU cores, a batch size and the time it becomes ready. Every
second:

* the policy may ask for a new shape per stage; the guards (the actuator's) allow a shape; the
  simulator acts on it the way Kubernetes would: new replicas serve nothing for a cold start (but
  their cores are paid for from the moment they are scheduled), an in-place resize (cores or
  batch) takes ``resize_s`` and the replica pays for the larger of its old and new cores
  meanwhile, removed replicas go at once (starting ones first);
* each stage serves up to its capacity, the sum of its ready replicas' throughputs
  ``h(b, c) = 1000·b / l(b, c)`` from the latency profile, from a FIFO backlog carried across
  seconds; what a stage serves flows into the next one in the same second.

Replicas batch greedily (dynamic batching with no queue delay, the default of inference
servers): a free replica takes whatever is waiting, up to its batch size. At a per-replica
arrival rate λ that forms batches of k = λ·l(k, c)/1000 requests (the requests that arrive while
one batch runs form the next; k = b once the replica saturates), and a request that finds no
queue waits for the running batch (uniform in [0, l(k, c)]) and then its own, so its latency is
uniform in [l, 2l] plus the queueing wait. The wait is exact for fluid FIFO service: arrivals
are spread evenly over each second, cumulative departures are linear within each second, and a
request with index i that arrives at time a leaves when the departure curve reaches i. Requests
are counted in ``SUBSLOTS`` slices per second. Along a pipeline the stages' service times add.

Cost is core-seconds of every replica, starting or not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from actuator.guards import Guard, run_guards
from planner.dp import StageConfig
from planner.profiles import LatencyProfile, Pipeline

SUBSLOTS = 10
"""Slices per second in which arrivals are counted against the departure curve (wait error
at most 1/(2·SUBSLOTS) s for a request, unbiased on average)."""

VIOLATION_MINUTE_SHARE = 0.01
"""A minute violates the SLO when more than this share of its requests is over the SLO (its p99
latency is above the SLO)."""


@dataclass
class _Replica:
    cores: int
    batch: int
    ready_at: int
    # In-place resizes still to come: (second it takes effect, cores, batch), in time order.
    pending: list[tuple[int, int, int]] = field(default_factory=list)
    remove_at: int = -1  # -1: not being removed


def per_minute(per_second: np.ndarray, how: str = "mean") -> np.ndarray:
    """Whole minutes of a per-second series, as their mean (or sum); a partial last minute
    is dropped."""
    minutes = len(per_second) // 60
    block = np.asarray(per_second)[: minutes * 60].reshape(minutes, 60)
    return block.sum(axis=1) if how == "sum" else block.mean(axis=1)


@dataclass(frozen=True)
class StageView:
    """What a policy can see of one stage at the current second.

    Attributes:
        replicas: replicas scheduled (starting or ready).
        ready: replicas ready to serve.
        cores: cores per replica of the shape last asked for.
        batch: batch size of the shape last asked for.
        capacity_rps: what the ready replicas serve per second now.
        backlog: requests waiting at the end of the previous second.
        resizing: replicas with an in-place resize still in progress.
    """

    replicas: int
    ready: int
    cores: int
    batch: int
    capacity_rps: float
    backlog: float
    resizing: int = 0

    @property
    def config(self) -> StageConfig:
        return StageConfig(replicas=self.replicas, cores=self.cores, batch=self.batch)


@dataclass
class ClusterView:
    """What a policy can see at second ``now_s`` (nothing later).

    Attributes:
        now_s: seconds since the start of the simulation.
        arrivals: requests that arrived in each second before ``now_s`` (a read-only view).
        usage_cores: per stage, the CPU cores busy in each second before ``now_s``.
        ready_cores: per stage, the CPU cores of ready replicas in each second before ``now_s``.
        stages: the stages' current state.
    """

    now_s: int
    arrivals: np.ndarray
    usage_cores: list[np.ndarray]
    ready_cores: list[np.ndarray]
    stages: tuple[StageView, ...]

    def observed_rps(self, window_s: int) -> float:
        """Mean arrival rate over the last ``window_s`` seconds (0 before any arrival)."""
        if self.now_s == 0:
            return 0.0
        start = max(0, self.now_s - window_s)
        return float(self.arrivals[start : self.now_s].mean())


class Policy(Protocol):
    """A scaling policy: called every simulated second, answers a shape per stage or None."""

    name: str

    def decide(self, view: ClusterView) -> Sequence[StageConfig] | None: ...


GuardFactory = Callable[[int, StageView, int, int | None], Sequence[Guard]]
"""Builds the guards for a decision: (stage index, its state, now_s, the second of its last
scale-up or None) -> guards."""


@dataclass
class SimulationResult:
    """Per-second series and totals of one simulated policy.

    Arrays have one entry per simulated second.
    """

    policy: str
    arrivals: np.ndarray
    capacity_rps: np.ndarray  # of the bottleneck stage (min over stages)
    served: np.ndarray  # by the last stage
    cost_cores: np.ndarray  # cores paid for, all stages
    ready_cores: np.ndarray
    replicas: np.ndarray  # first stage's scheduled replicas
    cores: np.ndarray  # first stage's cores per replica
    violations: np.ndarray  # requests over the SLO, by arrival second (fractional: fluid)
    service_ms: np.ndarray  # batch service time l(k, c) summed along the pipeline
    actions: int
    guard_notes: list[tuple[int, str]] = field(default_factory=list)

    @property
    def requests(self) -> float:
        return float(self.arrivals.sum())

    def summary(self) -> dict[str, float]:
        """The totals of results.json for this policy."""
        requests = self.requests
        violations = float(self.violations.sum())
        minute_requests = per_minute(self.arrivals, "sum")
        minute_violations = per_minute(self.violations, "sum")
        bad_minutes = int(
            np.sum(minute_violations > VIOLATION_MINUTE_SHARE * np.maximum(minute_requests, 1e-9))
        )
        busy = float(self.served.sum())
        capacity = float(self.capacity_rps.sum())
        return {
            "requests": round(requests),
            "violations": round(violations),
            "violation_rate": violations / requests if requests else 0.0,
            "violation_minutes": bad_minutes,
            "core_hours": float(self.cost_cores.sum()) / 3600.0,
            "actions": int(self.actions),
            "mean_utilisation": busy / capacity if capacity else 0.0,
        }


@dataclass(frozen=True)
class SimulationSettings:
    """How the simulated cluster behaves.

    Attributes:
        slo_ms: end-to-end latency SLO (ms) a request must meet.
        cold_start_s: seconds from scheduling a replica to it serving.
        resize_s: seconds an in-place resize (cores or batch) takes to apply.
    """

    slo_ms: float
    cold_start_s: int = 30
    resize_s: int = 2


class Cluster:
    """The replicas of every stage and how they change (the Kubernetes side of the simulator)."""

    def __init__(
        self,
        pipeline: Pipeline,
        initial: Sequence[StageConfig],
        settings: SimulationSettings,
    ) -> None:
        if len(initial) != len(pipeline.stages):
            raise ValueError(
                f"initial shape has {len(initial)} stages; pipeline {pipeline.name} has "
                f"{len(pipeline.stages)}"
            )
        self.pipeline = pipeline
        self.settings = settings
        # Everyone starts warm: the initial replicas are ready at second 0.
        self.replicas: list[list[_Replica]] = [
            [_Replica(c.cores, c.batch, 0) for _ in range(c.replicas)] for c in initial
        ]
        self.shape: list[StageConfig] = list(initial)
        self._next_event = 0
        n = len(initial)
        self._capacity = [0.0] * n
        self._ready = [0] * n
        self._ready_cores = [0] * n
        self._shape_ready: list[tuple[int, int]] = [(1, 1)] * n
        self._resizing = [0] * n
        self._cost = 0
        self._dirty = True

    # -- acting -------------------------------------------------------------------------------

    def apply(self, stage: int, target: StageConfig, now_s: int) -> bool:
        """Move stage ``stage`` to ``target`` declaratively; True when anything changed.

        Make before break, as the actuator does: when more replicas and smaller pods are asked
        for, the new replicas start at the new size and the running ones shrink only once the
        new ones are ready (a resize already under way, e.g. a bridge, still completes); when
        fewer and larger pods are asked for, the surplus replicas go only once the others have
        grown. Replicas still starting take the new size directly (the pod template).
        """
        current = self.shape[stage]
        if target == current:
            return False
        reps = self.replicas[stage]
        for rep in reps:
            rep.remove_at = -1  # a removal still waiting is superseded by the new target
        reps.sort(key=lambda r: r.ready_at)
        resize_s = self.settings.resize_s
        reshape = (target.cores, target.batch) != (current.cores, current.batch)
        smaller = target.cores < current.cores
        adding = target.replicas > len(reps)
        if reshape:
            for rep in reps:
                if rep.ready_at > now_s:
                    rep.cores, rep.batch, rep.pending = target.cores, target.batch, []
                elif smaller and adding:
                    at = now_s + self.settings.cold_start_s + resize_s
                    rep.pending = [p for p in rep.pending if p[0] < at]
                    rep.pending.append((at, target.cores, target.batch))
                else:
                    rep.pending = [(now_s + resize_s, target.cores, target.batch)]
        if adding:
            ready_at = now_s + self.settings.cold_start_s
            reps.extend(
                _Replica(target.cores, target.batch, ready_at)
                for _ in range(target.replicas - len(reps))
            )
        elif target.replicas < len(reps):
            # Starting replicas go first (newest first), then ready ones; with larger pods
            # asked for, ready surplus replicas serve on until the others have grown.
            surplus = reps[target.replicas :]
            del reps[target.replicas :]
            if reshape and not smaller:
                for rep in surplus:
                    if rep.ready_at <= now_s:
                        rep.remove_at, rep.pending = now_s + resize_s, []
                        reps.append(rep)
        self.shape[stage] = target
        self._dirty = True
        return True

    # -- observing ----------------------------------------------------------------------------

    def refresh(self, now_s: int) -> None:
        """Bring what is due by ``now_s`` into effect (readiness, resizes, removals) and
        recompute the aggregates."""
        if not self._dirty and now_s < self._next_event:
            return
        resize_s = self.settings.resize_s
        next_event = math.inf
        cost = 0
        for s, (reps, profile) in enumerate(zip(self.replicas, self.pipeline.stages, strict=True)):
            if any(0 <= r.remove_at <= now_s for r in reps):
                reps[:] = [r for r in reps if not 0 <= r.remove_at <= now_s]
            capacity = 0.0
            ready = ready_cores = resizing = 0
            slowest = (0.0, 1, 1)
            for rep in reps:
                while rep.pending and rep.pending[0][0] <= now_s:
                    _, rep.cores, rep.batch = rep.pending.pop(0)
                paid = rep.cores
                if rep.pending:
                    resizing += 1
                    at, cores, _ = rep.pending[0]
                    if at - resize_s <= now_s:  # resizing now: pay for the larger size
                        paid = max(paid, cores)
                        next_event = min(next_event, at)
                    else:
                        next_event = min(next_event, at - resize_s)
                cost += paid
                if rep.remove_at > now_s:
                    next_event = min(next_event, rep.remove_at)
                if rep.ready_at <= now_s:
                    ready += 1
                    ready_cores += rep.cores
                    speed = _throughput(profile, rep.batch, rep.cores)
                    capacity += speed
                    # Mixed shapes during a change: judge latency by the slowest replica.
                    if slowest[0] == 0 or speed < slowest[0]:
                        slowest = (speed, rep.batch, rep.cores)
                else:
                    next_event = min(next_event, rep.ready_at)
            self._capacity[s] = capacity
            self._ready[s] = ready
            self._ready_cores[s] = ready_cores
            self._shape_ready[s] = (slowest[1], slowest[2])
            self._resizing[s] = resizing
        self._cost = cost
        self._next_event = next_event
        self._dirty = False

    def view(self, backlog: Sequence[float]) -> tuple[StageView, ...]:
        return tuple(
            StageView(
                replicas=sum(1 for r in self.replicas[s] if r.remove_at < 0),
                ready=self._ready[s],
                cores=self.shape[s].cores,
                batch=self.shape[s].batch,
                capacity_rps=self._capacity[s],
                backlog=backlog[s],
                resizing=self._resizing[s],
            )
            for s in range(len(self.replicas))
        )


_THROUGHPUT: dict[tuple[int, int, int], float] = {}


def _capacity_of(profile: LatencyProfile, config: StageConfig) -> float:
    return config.replicas * _throughput(profile, config.batch, config.cores)


def _throughput(profile: LatencyProfile, batch: int, cores: int) -> float:
    key = (id(profile), batch, cores)
    value = _THROUGHPUT.get(key)
    if value is None:
        value = _THROUGHPUT[key] = float(profile.throughput_rps(batch, cores))
    return value


def simulate(
    arrivals: np.ndarray,
    pipeline: Pipeline,
    policy: Policy,
    initial: Sequence[StageConfig],
    settings: SimulationSettings,
    guards: GuardFactory,
    *,
    progress: Callable[[int], None] | None = None,
) -> SimulationResult:
    """Replay per-second ``arrivals`` through the cluster driven by ``policy``.

    Args:
        arrivals: requests arriving in each second (non-negative counts), the simulated span.
        pipeline: the stages and their latency profiles.
        policy: decides a shape per stage, called once per second.
        initial: the shape per stage at second 0 (ready).
        settings: SLO, cold start, resize delay.
        guards: the guards every decision passes through, per stage.
        progress: called with the number of seconds done, every 3,600 s.

    Returns:
        The per-second series and the totals.
    """
    arrivals = np.asarray(arrivals, dtype=np.float64)
    n_sec = len(arrivals)
    n_stages = len(pipeline.stages)
    cluster = Cluster(pipeline, initial, settings)
    backlog = [0.0] * n_stages
    capacity_min = np.zeros(n_sec)
    served_last = np.zeros(n_sec)
    cost = np.zeros(n_sec)
    ready_cores_total = np.zeros(n_sec)
    usage = [np.zeros(n_sec) for _ in range(n_stages)]
    ready_cores = [np.zeros(n_sec) for _ in range(n_stages)]
    service = np.zeros(n_sec)
    replicas = np.zeros(n_sec, dtype=np.int32)
    cores = np.zeros(n_sec, dtype=np.int32)
    notes: list[tuple[int, str]] = []
    actions = 0
    last_up: list[int | None] = [None] * n_stages
    read_only = arrivals.view()
    read_only.flags.writeable = False
    view = ClusterView(0, read_only, usage, ready_cores, ())
    profile_of = pipeline.stages
    for t in range(n_sec):
        cluster.refresh(t)
        view.now_s = t
        view.stages = cluster.view(backlog)
        wanted = policy.decide(view)
        if wanted is not None:
            for s, target in enumerate(wanted):
                before = view.stages[s].config
                allowed, guard_notes = run_guards(target, guards(s, view.stages[s], t, last_up[s]))
                notes.extend((t, note) for note in guard_notes)
                if cluster.apply(s, allowed, t):
                    actions += 1
                    if _capacity_of(profile_of[s], allowed) > _capacity_of(profile_of[s], before):
                        last_up[s] = t
            cluster.refresh(t)
        inflow = arrivals[t]
        service_ms = 0.0
        bottleneck = math.inf
        for s in range(n_stages):
            cap = cluster._capacity[s]
            available = backlog[s] + inflow
            done = available if available < cap else cap
            backlog[s] = available - done
            inflow = done
            ready = cluster._ready[s]
            rc = cluster._ready_cores[s]
            ready_cores[s][t] = rc
            usage[s][t] = rc * (done / cap) if cap > 0 else 0.0
            per_replica_rps = done / ready if ready else 0.0
            batch, cores_now = cluster._shape_ready[s]
            service_ms += _service_ms(profile_of[s], batch, cores_now, per_replica_rps)
            bottleneck = min(bottleneck, cap)
        served_last[t] = inflow
        capacity_min[t] = bottleneck
        cost[t] = cluster._cost
        ready_cores_total[t] = sum(cluster._ready_cores)
        service[t] = service_ms
        replicas[t] = len(cluster.replicas[0])
        cores[t] = cluster.shape[0].cores
        if progress is not None and (t + 1) % 3600 == 0:
            progress(t + 1)
    violations = count_violations(arrivals, served_last, service, settings.slo_ms)
    return SimulationResult(
        policy=policy.name,
        arrivals=arrivals,
        capacity_rps=capacity_min,
        served=served_last,
        cost_cores=cost,
        ready_cores=ready_cores_total,
        replicas=replicas,
        cores=cores,
        violations=violations,
        service_ms=service,
        actions=actions,
        guard_notes=notes,
    )


_SERVICE_CACHE: dict[tuple[int, int, int, int], float] = {}


def batch_service_ms(profile: LatencyProfile, batch: int, cores: int, rps: float) -> float:
    """Service time (ms) of the batches a greedily batching replica forms at ``rps``.

    With l(k) = A·k + B (A = α/c + β, B = γ/c + ζ), the requests that arrive while a batch of k
    runs form the next batch: k = rps·l(k)/1000, so k = rps·B / (1000 − rps·A), at least 1 and
    at most ``batch`` (the replica saturates there).
    """
    per_item = profile.alpha / cores + profile.beta
    fixed = profile.gamma / cores + profile.zeta
    room = 1000.0 - rps * per_item
    k = float(batch) if room <= 0 else min(float(batch), max(1.0, rps * fixed / room))
    return per_item * k + fixed


def _service_ms(profile: LatencyProfile, batch: int, cores: int, rps: float) -> float:
    key = (id(profile), batch, cores, round(rps * 10))
    value = _SERVICE_CACHE.get(key)
    if value is None:
        value = _SERVICE_CACHE[key] = batch_service_ms(profile, batch, cores, key[3] / 10)
    return value


def count_violations(
    arrivals: np.ndarray,
    departures: np.ndarray,
    service_ms: np.ndarray,
    slo_ms: float,
    *,
    subslots: int = SUBSLOTS,
) -> np.ndarray:
    """Requests over the SLO per arrival second, for fluid FIFO service.

    Request i (in arrival order) arriving at time a waits ``w = x − a``, where x is when the
    cumulative departure curve reaches i; its latency is uniform in [w + l, w + 2l] for the
    service time l of its arrival second (it waits for the running batch, then runs in the
    next). Arrivals are spread evenly over their second in ``subslots`` slices, each judged at
    its middle request; departures are linear within a second. Requests never served within
    the span count as over the SLO.

    Args:
        arrivals: requests arriving per second.
        departures: requests leaving the last stage per second.
        service_ms: batch service time l (ms) per arrival second.
        slo_ms: the SLO (ms).
        subslots: slices per second.

    Returns:
        Requests over the SLO per second (float: fluid counts).
    """
    n_sec = len(arrivals)
    cum_arr = np.concatenate([[0.0], np.cumsum(arrivals)])
    cum_dep = np.minimum(np.concatenate([[0.0], np.cumsum(departures)]), cum_arr)
    times = np.arange(n_sec + 1, dtype=np.float64)
    per_slot = arrivals[:, None] / subslots
    middle = cum_arr[:-1, None] + per_slot * (np.arange(subslots)[None, :] + 0.5)
    arrival_time = np.arange(n_sec)[:, None] + (np.arange(subslots)[None, :] + 0.5) / subslots
    # Invert the departure curve. Of a flat stretch (nothing served) keep both ends, so that an
    # index just above it maps into the second in which the curve rises again.
    changes = np.diff(cum_dep) != 0
    keep = np.concatenate([[True], changes]) | np.concatenate([changes, [True]])
    leave = np.interp(middle.ravel(), cum_dep[keep], times[keep]).reshape(n_sec, subslots)
    wait_s = np.maximum(leave - arrival_time, 0.0)
    never = middle > cum_dep[-1] + 1e-9
    service_s = np.maximum(service_ms, 1e-9)[:, None] / 1000.0
    late_share = np.clip((wait_s + 2.0 * service_s - slo_ms / 1000.0) / service_s, 0.0, 1.0)
    late_share[never] = 1.0
    return (late_share * per_slot).sum(axis=1)
