"""A cluster simulator at 1-second resolution, for backtests (DESIGN.md section 5).

The cluster serves one pipeline of stages (a single model is a 1-stage pipeline). Per stage it
holds replicas, each with integer CPU cores, a batch size and the time it becomes ready. Every
second:

* the policy may ask for a new shape per stage; the guards (the actuator's) allow a shape; the
  simulator acts on it the way Kubernetes would: new replicas serve nothing for a cold start (but
  their cores are paid for from the moment they are scheduled), an in-place resize (cores or
  batch) takes ``resize_s`` and the replica pays for the larger of its old and new cores
  meanwhile, removed replicas go at once (starting ones first);
* each stage's inflow is routed to its ready replicas (``round-robin``, what a Kubernetes
  Service gives, or ``least-outstanding``; see :data:`ROUTINGS`), each of which serves its own
  FIFO backlog, carried across seconds, up to its own throughput ``h(b, c) = 1000·b / l(b, c)``
  from the latency profile (replicas differ while a resize or a rollout is under way); what a
  stage serves flows into the next one in the same second. The former idealisation, one
  backlog per stage served at the summed capacity (perfect balancing), is the ``pooled``
  routing.

Replicas batch greedily (dynamic batching with no queue delay, the default of inference
servers): a free replica takes whatever is waiting, up to its batch size. A request's latency is
its wait in its replica's fluid backlog plus a within-second latency L: the queueing behind
sub-second Poisson bursts and the batch it rides in, from the stationary distribution of a
bulk-service queue at the arrival rate of the last ``TAIL_WINDOW_S`` seconds (``latency_tail``;
per replica under round-robin, pooled under least-outstanding). The backlog wait is exact for
fluid FIFO service: arrivals are spread evenly over each second, cumulative departures are
linear within each second, and a request with index i that arrives at time a leaves when its
queue's departure curve reaches i. Requests are counted in ``SUBSLOTS`` slices per second. Along
a pipeline the stages' latencies add. ``service_ms`` reports the batch service time l(k, c) of
the batch k = λ·l(k, c)/1000 the slowest ready replica forms at its per-second rate.

Cost is core-seconds of every replica, starting or not.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from scipy.linalg import solve_banded

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
    name: str = ""


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
    node_cores: np.ndarray | None = None
    """Allocatable cores of the nodes that exist (joined or provisioning), per second; None
    where no nodes are modelled (the shape-driven :class:`Cluster`)."""

    @property
    def requests(self) -> float:
        return float(self.arrivals.sum())

    def summary(self) -> dict[str, float]:
        """The totals of results.json for this policy: ``core_hours`` the CPU the pods
        request, ``node_core_hours`` (with nodes) the CPU of the nodes held for them."""
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
            **({} if self.node_cores is None
               else {"node_core_hours": float(self.node_cores.sum()) / 3600.0}),
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
        routing: how a stage's inflow reaches its replicas (:data:`ROUTINGS`).
    """

    slo_ms: float
    cold_start_s: int = 30
    resize_s: int = 2
    routing: str = "pooled"


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
        self._names = 0
        self.replicas: list[list[_Replica]] = [
            [self._new(c.cores, c.batch, 0) for _ in range(c.replicas)] for c in initial
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
        self._pods: list[list[tuple[str, float, int, int, bool]]] = [[] for _ in range(n)]
        self._pods_version = 0
        self._dirty = True

    def _new(self, cores: int, batch: int, ready_at: int) -> _Replica:
        self._names += 1
        return _Replica(cores, batch, ready_at, name=f"replica-{self._names}")

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
                self._new(target.cores, target.batch, ready_at)
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
            pods = self._pods[s] = []
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
                speed = _throughput(profile, rep.batch, rep.cores)
                pods.append((rep.name, speed, rep.batch, rep.cores, rep.ready_at <= now_s))
                if rep.ready_at <= now_s:
                    ready += 1
                    ready_cores += rep.cores
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
        self._pods_version += 1
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


ROUTINGS: tuple[str, ...] = ("round-robin", "least-outstanding", "pooled")
"""How a stage's inflow reaches its replicas.

* ``round-robin``: every ready replica gets an equal share of the stage's inflow, whatever its
  speed, into its own queue: what a Kubernetes Service gives. kube-proxy in iptables mode picks
  an endpoint at random with equal probabilities (``pkg/proxy/iptables/proxier.go``, the
  ``statistic --mode random --probability 1/n`` rules), so each replica sees an equal share in
  expectation, and a Poisson stream when the arrivals are Poisson. The backtest's default.
* ``least-outstanding``: the inflow goes to the replicas with the fewest outstanding requests
  relative to their speed (what Envoy's/Istio's ``LEAST_REQUEST`` or a queue-aware router
  approaches): a water-filling split of each second's inflow that evens out the replicas'
  backlogs in seconds of their own work.
* ``pooled``: one FIFO queue per stage served at the summed capacity of its ready replicas
  (perfect load balancing): the idealisation this simulator used before per-replica queues,
  kept for comparison.
"""

_EMPTY = 1e-9
"""A per-replica backlog at or below this many requests counts as empty."""


@dataclass(eq=False)
class _Cohort:
    """Replicas of one stage that are interchangeable now: the same speed, batch, cores and
    readiness, and the same backlog (in a fluid model they then stay identical). Their common
    history, per member and per second from ``t0`` on, is what their requests' waits are read
    from (FIFO per replica)."""

    t0: int
    speed: float
    sid: int  # index of (batch, cores, speed) in the stage's shape table
    ready: bool
    cores: int
    names: set[str]
    backlog: float = 0.0  # per member
    settled: int = 0  # leading seconds of the history whose requests have all left
    # Per second (machine arrays, 8 bytes an entry: a week's history stays small):
    x: array = field(default_factory=lambda: array("d"))  # inflow per member
    d: array = field(default_factory=lambda: array("d"))  # departures per member
    n: array = field(default_factory=lambda: array("d"))  # members (fractional after a split)
    share: array = field(default_factory=lambda: array("d"))  # of the stage's inflow, a member's
    sids: array = field(default_factory=lambda: array("q"))

    @property
    def key(self) -> tuple[int, bool]:
        return (self.sid, self.ready)

    def split(self, names: set[str]) -> _Cohort:
        """Move ``names`` into a cohort of their own that shares the history still in flight
        (from the last second after which the backlog was empty), so that their queued
        requests are judged by their own future service."""
        total, k = len(self.names), len(names)
        keep = (total - k) / total
        at = self.settled
        other = _Cohort(
            t0=self.t0 + at,
            speed=self.speed,
            sid=self.sid,
            ready=self.ready,
            cores=self.cores,
            names=set(names),
            backlog=self.backlog,
            x=self.x[at:],
            d=self.d[at:],
            n=array("d", (m * (1.0 - keep) for m in self.n[at:])),
            share=self.share[at:],
            sids=self.sids[at:],
        )
        self.n[at:] = array("d", (m * keep for m in self.n[at:]))
        self.names -= names
        return other


@dataclass
class _StageQueues:
    """The per-replica queues of one stage."""

    shapes: dict[tuple[int, int], int]  # (batch, cores) -> sid
    table: list[tuple[int, int, float]]  # sid -> (batch, cores, speed)
    inflow: np.ndarray  # requests entering the stage per second
    held: np.ndarray  # of which held for want of a ready replica
    handed: np.ndarray  # held requests routed on in that second
    capacity: np.ndarray  # rps of the ready replicas per second
    fastest: np.ndarray  # sid of the fastest ready replica per second (-1: none)
    live: list[_Cohort] = field(default_factory=list)
    done: list[_Cohort] = field(default_factory=list)
    member: dict[str, _Cohort] = field(default_factory=dict)
    hold: float = 0.0

    def sid(self, batch: int, cores: int, speed: float) -> int:
        sid = self.shapes.get((batch, cores))
        if sid is None:
            sid = self.shapes[(batch, cores)] = len(self.table)
            self.table.append((batch, cores, speed))
        return sid


class Serving:
    """The per-second serving engine: per-replica queues (or one pooled queue) along the
    pipeline, served by the ready replicas, and the series a :class:`SimulationResult` is made
    of.

    The capacity comes from a source with, per stage, ``_capacity`` (rps of the ready
    replicas), ``_ready`` (ready replicas), ``_ready_cores``, ``_shape_ready`` ((batch, cores)
    of the slowest ready replica), ``_pods`` (every replica as ``(name, speed_rps, batch, cores,
    ready)``), ``_pods_version`` (changes whenever ``_pods`` may have), and ``_cost`` (cores
    paid for, all stages): the shape-driven :class:`Cluster` of the validation tests, or the
    cluster model the backtest runs the controllers against (:mod:`surgecast.offline.engine`).
    Either way the same code serves.

    With a routing other than ``pooled`` (see :data:`ROUTINGS`) every replica has its own FIFO
    queue and serves up to its own throughput each second. A new replica joins with an empty
    queue. A replica that stops being ready (a terminating pod: the EndpointSlice controller
    marks it not ready at once, ``pkg/controller/endpointslice``, and kube-proxy sends it no
    new connections; its fallback to terminating endpoints when none is ready, KEP-1669, is not
    modelled: such requests are held, below) gets no new requests and
    drains its queue at its speed during its termination grace period (an inference server
    finishes what it accepted on SIGTERM); what is still queued when it is gone is counted over
    the SLO (its clients get an error, or have long waited past any SLO of interest). The
    shape-driven :class:`Cluster` removes replicas at once, so there nothing is drained. When a
    stage has no ready replica its inflow is held (a Service without endpoints) and counted
    over the SLO; it is routed on once a replica is ready, so it still takes capacity.
    """

    def __init__(
        self, arrivals: np.ndarray, pipeline: Pipeline, routing: str = "pooled"
    ) -> None:
        if routing not in ROUTINGS:
            raise ValueError(f"routing {routing!r}: choose from {', '.join(ROUTINGS)}")
        self.routing = routing
        self.arrivals = np.asarray(arrivals, dtype=np.float64)
        n_sec = len(self.arrivals)
        n_stages = len(pipeline.stages)
        self.pipeline = pipeline
        self.backlog = [0.0] * n_stages
        self.capacity_min = np.zeros(n_sec)
        self.served_last = np.zeros(n_sec)
        self.cost = np.zeros(n_sec)
        self.ready_cores_total = np.zeros(n_sec)
        self.usage = [np.zeros(n_sec) for _ in range(n_stages)]
        self.ready_cores = [np.zeros(n_sec) for _ in range(n_stages)]
        self.service = np.zeros(n_sec)
        # Pooled: per second, the ready replicas and the (slowest) shape of each stage, for the
        # within-second queue: an index into ``shapes``.
        self.shapes: dict[tuple[tuple[int, int, int], ...], int] = {}
        self.shape_index = np.zeros(n_sec, dtype=np.int64)
        self.replicas = np.zeros(n_sec, dtype=np.int32)
        self.cores = np.zeros(n_sec, dtype=np.int32)
        self._stages = [
            _StageQueues(
                {}, [], np.zeros(n_sec), np.zeros(n_sec), np.zeros(n_sec), np.zeros(n_sec),
                np.full(n_sec, -1, dtype=np.int64),
            )
            for _ in range(n_stages)
        ]
        self._version: object = None

    def serve(self, t: int, source, replicas: int, cores: int) -> None:
        """Serve second ``t`` with the capacity ``source`` has now; ``replicas`` and
        ``cores`` are the first stage's scheduled replicas and cores per replica (reported)."""
        if self.routing == "pooled":
            self._serve_pooled(t, source)
        else:
            self._serve_routed(t, source)
        self.cost[t] = source._cost
        self.ready_cores_total[t] = sum(source._ready_cores)
        self.replicas[t] = replicas
        self.cores[t] = cores

    def _serve_pooled(self, t: int, source) -> None:
        inflow = self.arrivals[t]
        service_ms = 0.0
        bottleneck = math.inf
        backlog = self.backlog
        for s, profile in enumerate(self.pipeline.stages):
            cap = source._capacity[s]
            available = backlog[s] + inflow
            done = available if available < cap else cap
            backlog[s] = available - done
            inflow = done
            ready = source._ready[s]
            rc = source._ready_cores[s]
            self.ready_cores[s][t] = rc
            self.usage[s][t] = rc * (done / cap) if cap > 0 else 0.0
            per_replica_rps = done / ready if ready else 0.0
            batch, cores_now = source._shape_ready[s]
            service_ms += _service_ms(profile, batch, cores_now, per_replica_rps)
            bottleneck = min(bottleneck, cap)
        self.served_last[t] = inflow
        self.capacity_min[t] = bottleneck
        key = tuple(
            (source._ready[s], source._shape_ready[s][1], source._shape_ready[s][0])
            for s in range(len(self.pipeline.stages))
        )
        self.shape_index[t] = self.shapes.setdefault(key, len(self.shapes))
        self.service[t] = service_ms

    # -- per-replica queues ------------------------------------------------------------------

    def _reconcile(self, t: int, source) -> None:
        """Bring the cohorts in line with the source's replicas: new ready replicas join (empty
        queue), replicas whose shape or readiness changed move (with their backlog), replicas
        gone leave (their queue, if any, is lost)."""
        for st, pods in zip(self._stages, source._pods, strict=True):
            moves: dict[int, dict[tuple, set[str]]] = {}
            cohort_of = {id(c): c for c in st.live}
            seen: set[str] = set()
            for name, speed, batch, cores, ready in pods:
                c = st.member.get(name)
                if c is None and not ready:
                    continue  # starting: not an endpoint yet
                seen.add(name)
                sid = st.sid(batch, cores, speed)
                if c is not None and c.key == (sid, ready):
                    continue
                key = (sid, ready, speed, cores)
                moves.setdefault(id(c) if c is not None else 0, {}).setdefault(key, set()).add(
                    name
                )
            for name in [n for n in st.member if n not in seen]:
                c = st.member.pop(name)
                self._leave(st, c, {name}, t)
            for cid, by_key in moves.items():
                if cid == 0:
                    for (sid, ready, speed, cores), names in by_key.items():
                        self._join(st, names, sid, ready, speed, cores, t)
                    continue
                c = cohort_of[cid]
                if len(by_key) == 1:
                    ((sid, ready, speed, cores), names), = by_key.items()
                    if names == c.names:  # all of it changed alike (a resize of every member)
                        c.sid, c.ready, c.speed, c.cores = sid, ready, speed, cores
                        continue
                for (sid, ready, speed, cores), names in by_key.items():
                    if c.backlog <= _EMPTY:
                        c.names -= names
                        self._join(st, names, sid, ready, speed, cores, t)
                    else:
                        other = c.split(names)
                        other.sid, other.ready, other.speed, other.cores = sid, ready, speed, cores
                        st.live.append(other)
                        for name in names:
                            st.member[name] = other
                    if not c.names:
                        self._retire(st, c)
        for st in self._stages:
            self._merge(st, t)

    def _join(self, st: _StageQueues, names: set[str], sid, ready, speed, cores, t: int) -> None:
        """Replicas with an empty queue join a cohort of their kind with an empty queue, or
        start one; one that is not ready has nothing to do and is let go."""
        if not ready:
            for name in names:
                st.member.pop(name, None)
            return
        for c in st.live:
            if c.key == (sid, ready) and c.backlog <= _EMPTY:
                c.names |= names
                break
        else:
            c = _Cohort(t0=t, speed=speed, sid=sid, ready=ready, cores=cores, names=set(names))
            st.live.append(c)
        for name in names:
            st.member[name] = c

    def _leave(self, st: _StageQueues, c: _Cohort, names: set[str], t: int) -> None:
        if c.backlog > _EMPTY:
            gone = c.split(names)  # its history ends now: the queued requests never leave
            st.done.append(gone)
        else:
            c.names -= names
        if not c.names:
            self._retire(st, c)

    @staticmethod
    def _retire(st: _StageQueues, c: _Cohort) -> None:
        if c in st.live:
            st.live.remove(c)
            st.done.append(c)

    @staticmethod
    def _merge(st: _StageQueues, t: int) -> None:
        """Cohorts of one kind whose queues are both empty become one (a new history)."""
        if len(st.live) < 2:
            return
        empty: dict[tuple, list[_Cohort]] = {}
        for c in st.live:
            if c.backlog <= _EMPTY:
                empty.setdefault(c.key, []).append(c)
        for group in empty.values():
            if len(group) < 2:
                continue
            first = group[0]
            merged = _Cohort(
                t0=t, speed=first.speed, sid=first.sid, ready=first.ready, cores=first.cores,
                names=set().union(*(c.names for c in group)),
            )
            for c in group:
                st.live.remove(c)
                st.done.append(c)
            st.live.append(merged)
            for name in merged.names:
                st.member[name] = merged

    def _serve_routed(self, t: int, source) -> None:
        version = getattr(source, "_pods_version", None)
        if version is None or version != self._version:
            self._reconcile(t, source)
            self._version = version
        elif t % 10 == 0:  # queues that emptied since: merge (cheap; bounds the cohorts)
            for st in self._stages:
                self._merge(st, t)
        inflow = float(self.arrivals[t])
        service_ms = 0.0
        bottleneck = math.inf
        least = self.routing == "least-outstanding"
        for s, (st, profile) in enumerate(zip(self._stages, self.pipeline.stages, strict=True)):
            st.inflow[t] = inflow
            ready = [c for c in st.live if c.ready]
            members = sum(len(c.names) for c in ready)
            if not members:
                st.hold += inflow
                st.held[t] = inflow
                inflow = 0.0
            elif st.hold:
                st.handed[t] = st.hold
                inflow += st.hold
                st.hold = 0.0
            level = _water_level(ready, inflow) if least and members and len(ready) > 1 else None
            speed_total = sum(len(c.names) * c.speed for c in ready)
            out = busy = capacity = 0.0
            slowest_ms = fastest = 0.0
            for c in st.live:
                k = len(c.names)
                if not c.ready or not members:
                    x = share = 0.0
                elif level is not None:
                    x = max(0.0, level * c.speed - c.backlog)
                    share = x / inflow if inflow > 0 else c.speed / speed_total
                else:
                    x, share = inflow / members, 1.0 / members
                available = c.backlog + x
                done = available if available < c.speed else c.speed
                c.backlog = available - done
                c.x.append(x)
                c.d.append(done)
                c.n.append(float(k))
                c.share.append(share)
                c.sids.append(c.sid)
                if c.backlog <= _EMPTY:
                    c.settled = len(c.x)
                out += k * done
                if c.ready:
                    busy += k * c.cores * done / c.speed
                    capacity += k * c.speed
                    if c.speed > fastest:
                        fastest = c.speed
                        st.fastest[t] = c.sid
                    batch, cores, _ = st.table[c.sid]
                    slowest_ms = max(slowest_ms, _service_ms(profile, batch, cores, done))
            self.backlog[s] = st.hold + sum(len(c.names) * c.backlog for c in st.live)
            self.ready_cores[s][t] = source._ready_cores[s]
            self.usage[s][t] = busy
            st.capacity[t] = capacity
            service_ms += slowest_ms
            bottleneck = min(bottleneck, capacity)
            inflow = out
        self.served_last[t] = inflow
        self.capacity_min[t] = bottleneck
        self.service[t] = service_ms

    def result(
        self, policy: str, slo_ms: float, actions: int, notes: list[tuple[int, str]]
    ) -> SimulationResult:
        """The totals: requests over the SLO from the fluid waits and the within-second tail."""
        if self.routing == "pooled":
            tails = _tail_tables(
                self.arrivals, self.pipeline, self.shapes, self.shape_index, slo_ms
            )
            violations = count_violations(
                self.arrivals, self.served_last, self.service, slo_ms, tails=tails
            )
        else:
            violations = self._routed_violations(slo_ms)
        return SimulationResult(
            policy=policy,
            arrivals=self.arrivals,
            capacity_rps=self.capacity_min,
            served=self.served_last,
            cost_cores=self.cost,
            ready_cores=self.ready_cores_total,
            replicas=self.replicas,
            cores=self.cores,
            violations=violations,
            service_ms=self.service,
            actions=actions,
            guard_notes=notes,
        )

    def _routed_violations(self, slo_ms: float) -> np.ndarray:
        """Requests over the SLO per arrival second, replica by replica.

        Each cohort of identical replicas is judged on its own FIFO curves (a request's fluid
        wait is read from its replica's departures, as ``count_violations`` does for one
        queue), plus a within-second latency. Under ``round-robin`` that is one replica's
        bulk-service queue at its share of the stage's recent rate (random routing splits
        Poisson arrivals into Poisson streams, so each replica is its own M/G/1-type queue).
        Under ``least-outstanding`` it is the stage's ready replicas pooled as one queue of its
        fastest shape, as many of them as carry the stage's capacity (a queue-aware router
        sends each request where it finishes first, so a slow replica takes work only when the
        others are busy; join-the-shortest-queue is close to one shared queue). Along a pipeline
        the stage with the longest mean latency in a second keeps its distribution and the
        others add their mean, as in the pooled model.
        """
        n_sec = len(self.arrivals)
        n_stages = len(self._stages)
        least = self.routing == "least-outstanding"
        points = math.ceil(slo_ms / TAIL_GRID_MS) + 2
        rows: dict[tuple[int, int, int, int], int] = {}
        ccdfs: list[np.ndarray] = []
        means: list[float] = []
        parts = []
        mean_sum = np.zeros((n_stages, n_sec))

        def rows_of(s: int, sids: np.ndarray, pool: np.ndarray, steps: np.ndarray) -> np.ndarray:
            """The tail row of each (shape, replicas pooled, load step)."""
            combos, inverse = np.unique(
                np.column_stack([sids, pool, steps]), axis=0, return_inverse=True
            )
            ids = np.empty(len(combos), dtype=np.int64)
            table = self._stages[s].table
            for j, (sid, k, step) in enumerate(combos):
                key = (s, int(sid), int(k), int(step))
                row = rows.get(key)
                if row is None:
                    batch, cores, sp = table[int(sid)]
                    tail = latency_tail(
                        self.pipeline.stages[s], int(k), cores, batch,
                        step * TAIL_RHO_STEP * k * sp, slo_ms,
                    )
                    grid = np.arange(points) * TAIL_GRID_MS
                    ccdfs.append(np.interp(
                        grid, np.arange(len(tail.ccdf)) * TAIL_GRID_MS, tail.ccdf, 1.0, 0.0
                    ))
                    means.append(tail.mean_ms)
                    row = rows[key] = len(means) - 1
                ids[j] = row
            return ids[np.asarray(inverse).reshape(-1)]

        for s, st in enumerate(self._stages):
            cum = np.concatenate([[0.0], np.cumsum(st.inflow)])
            start = np.maximum(np.arange(n_sec) - TAIL_WINDOW_S + 1, 0)
            rate = (cum[1:] - cum[start]) / (np.arange(n_sec) + 1 - start)
            speeds = np.array([sp for _, _, sp in st.table]) if st.table else np.ones(1)
            if least:
                # A queue-aware router sends a request where it finishes first: the stage's
                # ready replicas as one pooled queue of its fastest shape, as many of them as
                # carry the stage's capacity, at the stage's rate.
                sid = np.maximum(st.fastest, 0)
                fast = speeds[sid]
                pool = np.maximum(np.rint(st.capacity / fast), 1).astype(np.int64)
                rho = np.divide(rate, st.capacity, out=np.zeros(n_sec), where=st.capacity > 0)
                steps = np.rint(np.minimum(rho, TAIL_RHO_MAX) / TAIL_RHO_STEP).astype(np.int64)
                stage_rows = rows_of(s, sid, pool, steps)
            for c in st.live + st.done:
                if not c.x:
                    continue
                x = np.asarray(c.x)
                n = np.asarray(c.n)
                requests = x * n
                if requests.sum() <= 0:
                    continue
                length = len(x)
                sec = np.arange(c.t0, c.t0 + length)
                wait_s, never, per_slot = _fluid_waits(x, np.asarray(c.d), SUBSLOTS)
                if least:
                    row_of = stage_rows[sec]
                else:
                    sids = np.asarray(c.sids)
                    member_rate = rate[sec] * np.asarray(c.share)
                    rho = np.minimum(member_rate / speeds[sids], TAIL_RHO_MAX)
                    steps = np.rint(rho / TAIL_RHO_STEP).astype(np.int64)
                    row_of = rows_of(s, sids, np.ones(length, np.int64), steps)
                weight = per_slot * n[:, None]
                parts.append((s, sec, wait_s, never, weight, row_of))
        if not parts:
            return np.zeros(n_sec)
        tails = TailTables(
            ccdf=np.vstack(ccdfs), mean_ms=np.asarray(means), index=np.zeros(0, np.int64)
        )
        held_ms = 2.0 * slo_ms
        if n_stages > 1:
            for s, sec, wait_s, never, weight, row_of in parts:
                mean_ms = tails.mean_ms[row_of][:, None]
                lat = 1000.0 * np.maximum(wait_s - mean_ms / 1000.0, 0.0) + mean_ms
                lat = np.where(never, held_ms, lat)
                mean_sum[s] += np.bincount(sec, (lat * weight).sum(axis=1), n_sec)
            entering = np.array([st.inflow for st in self._stages])
            held = np.array([st.held for st in self._stages])
            mean_sum += held * held_ms
            mean_lat = np.divide(mean_sum, entering, out=np.zeros_like(mean_sum),
                                 where=entering > 0)
            shift = mean_lat.sum(axis=0)[None, :] - mean_lat
            main = np.argmax(mean_lat, axis=0)
        else:
            shift = np.zeros((1, n_sec))
            main = np.zeros(n_sec, dtype=np.int64)
        late = np.zeros((n_stages, n_sec))
        for s, sec, wait_s, never, weight, row_of in parts:
            mean_s = tails.mean_ms[row_of][:, None] / 1000.0
            room_ms = slo_ms - 1000.0 * np.maximum(wait_s - mean_s, 0.0) - shift[s][sec][:, None]
            share = _ccdf_rows(tails, row_of, room_ms)
            share[never] = 1.0
            late[s] += np.bincount(sec, (share * weight).sum(axis=1), n_sec)
        for s, st in enumerate(self._stages):
            routed = st.inflow - st.held + st.handed
            keep = np.divide(st.inflow - st.held, routed, out=np.ones(n_sec), where=routed > 0)
            late[s] = late[s] * keep + st.held
        if n_stages == 1:
            return np.minimum(late[0], self.arrivals)
        entering = np.array([st.inflow for st in self._stages])
        share = np.divide(late, entering, out=np.zeros_like(late), where=entering > 0)
        return np.minimum(share[main, np.arange(n_sec)], 1.0) * self.arrivals


def _water_level(ready: list[_Cohort], inflow: float) -> float:
    """The level L (s of work) at which ``sum(members·max(0, L·speed − backlog)) = inflow``:
    the least-outstanding split of a second's inflow over replicas with per-member backlogs."""
    order = sorted(ready, key=lambda c: c.backlog / c.speed)
    rate = work = 0.0
    level = 0.0
    for i, c in enumerate(order):
        k = len(c.names)
        rate += k * c.speed
        work += k * c.backlog
        level = (inflow + work) / rate
        if i + 1 == len(order) or level <= order[i + 1].backlog / order[i + 1].speed:
            break
    return level


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
    """Replay per-second ``arrivals`` through the shape-driven cluster: the validation
    harness of the serving engine (scripted shapes against a request-level simulation).
    Backtests run controllers against the cluster model instead
    (:class:`surgecast.offline.engine.Engine`).

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
    serving = Serving(arrivals, pipeline, settings.routing)
    notes: list[tuple[int, str]] = []
    actions = 0
    last_up: list[int | None] = [None] * n_stages
    read_only = arrivals.view()
    read_only.flags.writeable = False
    view = ClusterView(0, read_only, serving.usage, serving.ready_cores, ())
    profile_of = pipeline.stages
    for t in range(n_sec):
        cluster.refresh(t)
        view.now_s = t
        view.stages = cluster.view(serving.backlog)
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
        serving.serve(t, cluster, len(cluster.replicas[0]), cluster.shape[0].cores)
        if progress is not None and (t + 1) % 3600 == 0:
            progress(t + 1)
    return serving.result(policy.name, settings.slo_ms, actions, notes)


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
    tails: TailTables | None = None,
) -> np.ndarray:
    """Requests over the SLO per arrival second, for fluid FIFO service.

    Request i (in arrival order) arriving at time a waits ``w = x − a`` in the fluid backlog,
    where x is when the cumulative departure curve reaches i. Arrivals are spread evenly over
    their second in ``subslots`` slices, each judged at its middle request; departures are
    linear within a second. Requests never served within the span count as over the SLO.

    Without ``tails`` a request's latency is uniform in [w + l, w + 2l] for the service time l
    of its arrival second (it waits for the running batch, then runs in the next). With
    ``tails`` it is w' + L, where L follows the second's within-second latency distribution
    (queueing behind sub-second bursts and the batch it rides in) and w' = max(w − E[L], 0):
    the part of the fluid backlog up to the stationary queue's mean is that same queue, seen
    at 1-s resolution, and is not counted twice.

    Args:
        arrivals: requests arriving per second.
        departures: requests leaving the last stage per second.
        service_ms: batch service time l (ms) per arrival second.
        slo_ms: the SLO (ms).
        subslots: slices per second.
        tails: the within-second latency distribution of each second (see ``TailTables``).

    Returns:
        Requests over the SLO per second (float: fluid counts).
    """
    wait_s, never, per_slot = _fluid_waits(arrivals, departures, subslots)
    if tails is None:
        service_s = np.maximum(service_ms, 1e-9)[:, None] / 1000.0
        late_share = np.clip((wait_s + 2.0 * service_s - slo_ms / 1000.0) / service_s, 0.0, 1.0)
    else:
        mean_s = tails.mean_ms[tails.index][:, None] / 1000.0
        room_ms = slo_ms - 1000.0 * np.maximum(wait_s - mean_s, 0.0)
        late_share = _ccdf_at(tails, room_ms)
    late_share[never] = 1.0
    return (late_share * per_slot).sum(axis=1)


def _fluid_waits(
    arrivals: np.ndarray, departures: np.ndarray, subslots: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fluid FIFO waits (s) of each second's arrivals, judged at the middle request of each of
    ``subslots`` slices; which of them never leave; and the requests per slice (a column).

    Request i (in arrival order) arriving at time a waits ``x − a``, where x is when the
    cumulative departure curve (linear within each second) reaches i.
    """
    arrivals = np.asarray(arrivals, dtype=np.float64)
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
    return wait_s, never, per_slot


@dataclass(frozen=True)
class TailTables:
    """Within-second latency distributions of a run, one row per distinct (shape, rate).

    Attributes:
        ccdf: (rows, points) P(latency > x) at x = i·TAIL_GRID_MS ms; 0 beyond the last point.
        mean_ms: (rows,) the mean latency of each row (ms).
        index: (seconds,) the row of each second.
    """

    ccdf: np.ndarray
    mean_ms: np.ndarray
    index: np.ndarray


def _ccdf_at(tails: TailTables, x_ms: np.ndarray) -> np.ndarray:
    """P(latency > x) for each second's row (axis 0 of ``x_ms``), linear between grid points;
    1 for x < 0."""
    return _ccdf_rows(tails, tails.index, x_ms)


def _ccdf_rows(tails: TailTables, rows: np.ndarray, x_ms: np.ndarray) -> np.ndarray:
    """P(latency > x) in row ``rows[i]`` for row i of ``x_ms``, linear between grid points;
    1 for x < 0."""
    points = tails.ccdf.shape[1]
    pos = np.clip(x_ms / TAIL_GRID_MS, 0.0, points - 1.0)
    low = np.minimum(pos.astype(np.int64), points - 2) if points > 1 else np.zeros_like(pos, int)
    frac = pos - low
    rows = np.asarray(rows)[:, None]
    high = np.minimum(low + 1, points - 1)
    value = tails.ccdf[rows, low] * (1.0 - frac) + tails.ccdf[rows, high] * frac
    return np.where(x_ms < 0, 1.0, value)


def _tail_tables(
    arrivals: np.ndarray,
    pipeline: Pipeline,
    shapes: dict[tuple[tuple[int, int, int], ...], int],
    shape_index: np.ndarray,
    slo_ms: float,
) -> TailTables:
    """The within-second latency distribution of every second of a run.

    Each stage is taken at the mean arrival rate of the last ``TAIL_WINDOW_S`` seconds, as a
    share of its ready capacity in steps of ``TAIL_RHO_STEP`` (at most ``TAIL_RHO_MAX``). Along
    a pipeline the stage with the longest mean latency keeps its distribution and the others
    add their mean (the stages' sub-second queues are only weakly related; an approximation).
    """
    n_sec = len(arrivals)
    cum = np.concatenate([[0.0], np.cumsum(arrivals)])
    start = np.maximum(np.arange(n_sec) - TAIL_WINDOW_S + 1, 0)
    rate = (cum[1:] - cum[start]) / (np.arange(n_sec) + 1 - start)
    by_id = {i: key for key, i in shapes.items()}
    n_stages = len(pipeline.stages)
    steps = np.zeros((n_sec, n_stages), dtype=np.int64)
    for i, key in by_id.items():
        at = shape_index == i
        for s, (ready, cores, batch) in enumerate(key):
            capacity = ready * _throughput(pipeline.stages[s], batch, cores)
            if capacity <= 0:
                continue
            rho = np.minimum(rate[at] / capacity, TAIL_RHO_MAX)
            steps[at, s] = np.rint(rho / TAIL_RHO_STEP).astype(np.int64)
    rows, index = np.unique(np.column_stack([shape_index, steps]), axis=0, return_inverse=True)
    points = math.ceil(slo_ms / TAIL_GRID_MS) + 2
    ccdf = np.zeros((len(rows), points))
    mean_ms = np.zeros(len(rows))
    for r, row in enumerate(rows):
        key = by_id[int(row[0])]
        stage_tails = []
        for s, (ready, cores, batch) in enumerate(key):
            if ready == 0:
                continue
            profile = pipeline.stages[s]
            capacity = ready * _throughput(profile, batch, cores)
            rps = row[1 + s] * TAIL_RHO_STEP * capacity
            stage_tails.append(latency_tail(profile, ready, cores, batch, rps, slo_ms))
        if not stage_tails:
            continue  # nothing serves: the fluid backlog holds every request
        main = max(stage_tails, key=lambda t: t.mean_ms)
        shift_ms = sum(t.mean_ms for t in stage_tails) - main.mean_ms
        grid = np.arange(points) * TAIL_GRID_MS - shift_ms
        ccdf[r] = np.interp(grid, np.arange(len(main.ccdf)) * TAIL_GRID_MS, main.ccdf, 1.0, 0.0)
        mean_ms[r] = main.mean_ms + shift_ms
    return TailTables(ccdf=ccdf, mean_ms=mean_ms, index=np.asarray(index).reshape(-1))


# -- queueing within a second ---------------------------------------------------------------------
#
# The fluid backlog above follows each second's count, spread evenly; the wait a request meets
# from sub-second Poisson bursts (and the batch size those bursts form) is not in it. That part
# comes from the stationary distribution of a bulk-service queue at the recent arrival rate:
# replicas pick up the waiting requests up to their batch size (greedy dynamic batching), and
# with all n replicas busy a pick-up happens every l(k)/n, staggered. That is the embedded
# Markov chain of the M/G^(1,b)/1 bulk-service queue at pick-up epochs (Bailey 1954, "On
# queueing processes with bulk service", J. R. Stat. Soc. B 16(1); Chaudhry & Templeton, "A
# First Course in Bulk Queues", 1983, ch. 4), with a service time that depends on the batch
# size and a server n times as fast for the queue's dynamics, while each request still takes the
# whole l(k) of its batch. For one replica the chain is exact; for several it waits a little
# too long (a pick-up can also happen at once on an idle replica), by up to about 1.9x in the
# share over an SLO near p96-p99.8 (tests/test_simulator.py has the measured figures).

TAIL_GRID_MS = 1.0
"""Step (ms) of the latency grid on which the within-second latency distribution is kept."""
TAIL_WINDOW_S = 30
"""Seconds of arrivals (trailing, this one included) whose mean rate sets the within-second
queue: long against its relaxation time near the SLO (a fraction of a second to a few seconds at
85 % load), so that a single busy second does not set it (that part is the fluid backlog's)."""
TAIL_RHO_STEP = 0.01
"""The rate is taken in steps of this share of the stage's capacity (the tables are cached)."""
TAIL_RHO_MAX = 0.97
"""Highest utilisation the stationary queue is taken at; above it the fluid backlog carries the
excess (the stationary backlog carry-over scheme, Stolletz 2008, "Approximation of the
non-stationary M(t)/M(t)/c(t)-queue using stationary queueing models: the stationary
backlog-carryover approach", EJOR 190(2))."""
_Q_MAX = 600  # states of the chain kept (beyond: lumped, every request there counted late)
_U_POINTS = 8  # arrival instants per pick-up interval at which a request is judged


@dataclass(frozen=True)
class LatencyTail:
    """Within-second latency of one stage shape at one rate.

    Attributes:
        ccdf: P(latency > x) at x = i·TAIL_GRID_MS ms, i = 0..len-1 (0 beyond the last).
        mean_ms: the mean latency (ms).
    """

    ccdf: np.ndarray
    mean_ms: float


_TAIL_CACHE: dict[tuple[int, int, int, int, int, int], LatencyTail] = {}


def latency_tail(
    profile: LatencyProfile, replicas: int, cores: int, batch: int, rps: float, horizon_ms: float
) -> LatencyTail:
    """Stationary latency distribution of ``replicas`` replicas batching greedily at ``rps``.

    The chain's state is the number Q >= 1 of requests waiting at a pick-up: the replica takes
    k = min(Q, b), the next pick-up follows after τ_k = l(k, c)/n, and Q' = Q - k + A with A
    Poisson(rps·τ_k); when nothing is left the next arrival is picked up at once (Q' = 1). A
    request arriving at a fraction u of an interval (u uniform: Poisson arrivals see time
    averages) has j ~ Poisson(rps·u·τ_k) arrivals ahead of it besides the Q - k left over; it
    waits (1 - u)·τ_k, then ⌊ahead/b⌋ full pick-ups of τ_b, and runs in a batch of its place in
    the queue plus those expected behind it, at most b.

    Args:
        profile: the stage's latency profile.
        replicas, cores, batch: the ready replicas and their shape (n >= 1).
        rps: arrival rate (requests/s), below the shape's capacity.
        horizon_ms: latencies up to this are resolved (beyond it P(latency > x) = 0 is kept).

    Returns:
        The distribution on the grid of ``TAIL_GRID_MS``; cached per shape, rate and horizon.
    """
    key = (id(profile), replicas, cores, batch, round(rps * 100), math.ceil(horizon_ms))
    tail = _TAIL_CACHE.get(key)
    if tail is None:
        tail = _TAIL_CACHE[key] = _latency_tail(
            profile, replicas, cores, batch, key[4] / 100, key[5]
        )
    return tail


def _poisson_pmf(mean: np.ndarray, count: int) -> np.ndarray:
    """Poisson probabilities of 0..count-1 for each mean (rows), in log space to avoid overflow."""
    j = np.arange(count, dtype=np.float64)
    mean = np.maximum(np.asarray(mean, dtype=np.float64), 1e-300)[..., None]
    return np.exp(j * np.log(mean) - mean - _LOG_FACTORIAL[:count])


_LOG_FACTORIAL = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, 4097)))])


def _latency_tail(
    profile: LatencyProfile, n: int, cores: int, b: int, rps: float, horizon_ms: float
) -> LatencyTail:
    ks = np.arange(1, b + 1)
    service_s = np.asarray(profile.latency_ms(ks, cores), dtype=np.float64) / 1000.0
    tau = service_s / n
    grid = np.arange(0.0, horizon_ms + TAIL_GRID_MS, TAIL_GRID_MS)
    if rps <= 0:
        ccdf = (service_s[0] * 1000.0 > grid).astype(np.float64)
        return LatencyTail(ccdf, float(service_s[0] * 1000.0))
    # Requests ahead that still matter: enough full pick-ups to pass the horizon, plus one
    # interval's worst arrivals; the states beyond are lumped into the last one (all late).
    per_interval = rps * tau[-1]
    burst = math.ceil(per_interval + 8.0 * math.sqrt(per_interval) + 8)
    q_max = min(b * math.ceil(horizon_ms / 1000.0 / tau[-1]) + 2 * b + burst, _Q_MAX)
    q = np.arange(1, q_max + 1)
    k = np.minimum(q, b)
    left = q - k
    # Arrivals in an interval beyond ``burst`` have a probability under 1e-14: the transition
    # matrix is banded (Q' >= Q - b, Q' <= Q + burst), and the chain is solved as such.
    arrivals = _poisson_pmf(rps * tau[k - 1], burst + 1)  # (states, A = 0..burst)
    arrivals /= arrivals.sum(axis=1, keepdims=True)
    source = np.arange(q_max)
    target = np.clip(left[:, None] + np.arange(burst + 1)[None, :], 1, q_max) - 1
    # pi = pi·P, i.e. (P^T - I)·pi = 0, in LAPACK band storage: entry (i, j) at [b + i - j, j].
    band = (b + target - source[:, None]) * q_max + source[:, None]
    system = np.bincount(band.ravel(), arrivals.ravel(), (b + burst + 1) * q_max)
    system = system.reshape(b + burst + 1, q_max)
    system[b] -= 1.0
    # The equations are dependent; replace the first by pi_1 = 1 and normalise afterwards.
    for j in range(min(b, q_max - 1) + 1):
        system[b - j, j] = 1.0 if j == 0 else 0.0
    rhs = np.zeros(q_max)
    rhs[0] = 1.0
    pi = np.clip(solve_banded((burst, b), system, rhs), 0.0, None)
    pi /= pi.sum()
    # Requests judged at u in each interval, weighted by the arrivals the interval gets.
    u = (np.arange(_U_POINTS) + 0.5) / _U_POINTS
    t_k = tau[k - 1]
    weight = (pi * rps * t_k)[:, None, None] / _U_POINTS
    j_count = burst
    ahead_pmf = _poisson_pmf(rps * u[None, :] * t_k[:, None], j_count)  # (states, u, j)
    ahead = left[:, None, None] + np.arange(j_count)[None, None, :]
    rounds = ahead // b
    behind = rps * (1.0 - u)[None, :, None] * t_k[:, None, None]
    own = np.where(rounds > 0, b, np.minimum(b, ahead % b + 1 + behind))
    own_ms = np.asarray(profile.latency_ms(own, cores), dtype=np.float64)
    latency_ms = (
        (1.0 - u)[None, :, None] * t_k[:, None, None] * 1000.0 + rounds * tau[-1] * 1000.0 + own_ms
    )
    w = (weight * ahead_pmf).ravel()
    lat = latency_ms.ravel()
    # The arrival that ends an idle spell is picked up at once, in a batch of one.
    idle = float(np.sum(pi * np.where(left == 0, arrivals[:, 0], 0.0)))
    total = w.sum() + idle
    mean_ms = (float(np.dot(w, lat)) + idle * service_s[0] * 1000.0) / total
    # P(latency > x) on the grid: the weight of every latency in (x_i, x_i+1] goes to bin i
    # (beyond the grid: to the last bin); summed from the top, so the far tail is exactly 0.
    points = len(grid)
    bins = np.minimum(np.ceil(lat / TAIL_GRID_MS).astype(np.int64) - 1, points - 1)
    mass = np.bincount(np.maximum(bins, 0), w, points)
    mass[max(math.ceil(service_s[0] * 1000.0 / TAIL_GRID_MS) - 1, 0)] += idle
    ccdf = np.cumsum(mass[::-1])[::-1] / total
    # Shares under 1e-12 are rounding noise of the sums above (a request in 10^12), not a tail.
    ccdf = np.where(ccdf < 1e-12, 0.0, np.minimum(ccdf, 1.0))
    return LatencyTail(ccdf, mean_ms)
