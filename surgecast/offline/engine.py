"""The backtest's engine: the per-second serving of :mod:`surgecast.offline.simulator` on the
cluster model, with controllers run at their real cadence on the simulation clock.

Every simulated second the engine

* reads each stage's capacity from the model's pods: a Ready pod serves at the throughput of
  the CPU its containers run with (``status.containerStatuses[].resources``, so an in-place
  resize counts once the kubelet has actuated it) and its batch size (the container's batch
  environment variable, else the stage's batch); a pod pays from the moment it is bound to a
  node until it is gone, for the larger of its desired and running CPU while a resize is under
  way (:class:`ModelCapacity`); and the nodes cost what they can hold, joined or provisioning,
  whatever runs on them (the node core-hours a cloud bills);
* serves the second's arrivals (:class:`surgecast.offline.simulator.Serving`), routed to the
  Ready pods' own queues (``routing``; one pooled queue per stage by default);
* keeps, per pod, the CPU the served load kept busy as a cumulative counter the kubelet
  refreshes every housekeeping interval, which a simulated metrics-server scrapes every
  ``metric_resolution_s`` (:class:`MetricsServer`); the model's resource metrics API answers
  the HPA controller (and the VPA recommender) from the last scrape, so the HPA acts on CPU
  that is 10-40 s old, as it does live;
* answers External metrics (KEDA's metrics adapter evaluating a trigger's query) from
  callables the policy registers in :attr:`Engine.external_metrics`;
* moves the model's clock, reconciling its controllers (Deployment, ReplicaSet, scheduler,
  kubelet, HPA) whenever one of them has something due.

Controllers outside the model (surgecast's pipeline cycle, a reactive bridge, a baseline such as
Themis or a VPA) are :class:`Controller` objects the engine ticks every ``period_s`` seconds of
simulation time; they act only through the cluster port (:class:`~surgecast.offline.port.
SimPort`). A controller that waits (the actuator polling a resize, backing off a retry) calls
:meth:`Engine.sleep`, which serves the seconds in between and runs the other controllers that
come due meanwhile; a controller never runs again while its own tick is still sleeping.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from planner.profiles import Pipeline
from surgecast.offline.cluster import (
    ClusterModel,
    PodMetric,
    _admitted,
    _allocated,
    _condition_reason,
    _desired,
    _ready,
    _terminating,
)
from surgecast.offline.simulator import Serving, SimulationResult

METRIC_RESOLUTION_S = 15.0
"""metrics-server's ``--metric-resolution`` default (15 s since v0.6): how often it scrapes
every kubelet's resource metrics endpoint."""
HOUSEKEEPING_S = 10.0
"""The kubelet's cAdvisor housekeeping interval (``--housekeeping-interval``, 10 s): how often
the cumulative CPU counters the kubelet serves are refreshed, so a scrape reads a counter up to
this old."""


@dataclass(frozen=True)
class StageBinding:
    """Which Deployment serves a pipeline stage, and how its batch size is read.

    Attributes:
        deployment: the Deployment's name.
        container: the serving container.
        batch: the batch size when the container does not set ``batch_env``.
        batch_env: the environment variable the server reads its batch size from, or None.
    """

    deployment: str
    container: str = "server"
    batch: int = 1
    batch_env: str | None = None


class Controller(Protocol):
    """Something that acts on the cluster at a cadence, through the port only.

    Attributes:
        name: for reports.
        period_s: seconds of simulation time between two ticks.
        offset_s: seconds after the start of the first tick.
    """

    name: str
    period_s: float
    offset_s: float

    def tick(self, now: pd.Timestamp) -> None: ...


class ModelCapacity:
    """Per stage, what the model's pods serve and cost now (the capacity source of
    :class:`~surgecast.offline.simulator.Serving`); recomputed only when the model changed.

    Besides the stage aggregates, ``_pods`` lists every pod of a stage as ``(name,
    speed_rps, batch, cores, ready)`` (terminating pods included, not ready: the serving
    engine lets them drain what they queued while their grace period runs), and
    ``_pods_version`` changes whenever it is recomputed, so that the engine routes to
    the pods as they are.
    """

    def __init__(
        self,
        model: ClusterModel,
        namespace: str,
        stages: Sequence[StageBinding],
        pipeline: Pipeline,
    ) -> None:
        self.model = model
        self.namespace = namespace
        self.stages = list(stages)
        self.pipeline = pipeline
        n = len(self.stages)
        self._capacity = [0.0] * n
        self._ready = [0] * n
        self._ready_cores = [0] * n
        self._requested_ready_cores = [0.0] * n
        self._shape_ready: list[tuple[int, int]] = [(1, 1)] * n
        self._cost = 0.0
        self._node_cores = 0.0
        self._pods: list[list[tuple[str, float, int, int, bool]]] = [[] for _ in range(n)]
        self._pods_version = 0
        self.scheduled = [0] * n
        self.cores = [1] * n
        self.signature: tuple = ()
        self._version: object = None
        self._throughput: dict[tuple[int, int, int], float] = {}

    def refresh(self) -> None:
        version = self.model._rv
        if version == self._version:
            return
        self._version = version
        cost = 0.0
        signature = []
        for s, (stage, profile) in enumerate(zip(self.stages, self.pipeline.stages, strict=True)):
            capacity = 0.0
            ready = ready_cores = 0
            requested = 0.0
            slowest = (0.0, 1, 1)
            scheduled = 0
            desired_live = []
            pods = self._pods[s] = []
            for pod in self.model.pods_of(self.namespace, stage.deployment):
                if pod["spec"].get("nodeName"):
                    # what the pod holds on its node: a resize refused as Infeasible holds
                    # only what the kubelet admitted (as the scheduler counts it)
                    held_m = max(_allocated(pod), _admitted(pod))
                    if _condition_reason(pod, "PodResizePending") != "Infeasible":
                        held_m = max(held_m, _desired(pod))
                    cost += held_m / 1000.0
                cores = max(1, round(_allocated(pod) / 1000))
                batch = _batch(pod, stage)
                key = (s, batch, cores)
                speed = self._throughput.get(key)
                if speed is None:
                    speed = self._throughput[key] = float(profile.throughput_rps(batch, cores))
                is_ready = _ready(pod)
                pods.append((pod["metadata"]["name"], speed, batch, cores, is_ready))
                if _terminating(pod):
                    continue
                scheduled += 1
                desired_live.append(_desired(pod))
                if not is_ready:
                    continue
                ready += 1
                ready_cores += cores
                requested += _desired(pod) / 1000.0
                capacity += speed
                if slowest[0] == 0 or speed < slowest[0]:
                    slowest = (speed, batch, cores)
            self._capacity[s] = capacity
            self._ready[s] = ready
            self._ready_cores[s] = ready_cores
            self._requested_ready_cores[s] = requested
            self._shape_ready[s] = (slowest[1], slowest[2])
            self.scheduled[s] = scheduled
            self.cores[s] = max(1, round(max(desired_live, default=1000) / 1000))
            dep = self.model.get("deployments", self.namespace, stage.deployment)
            signature.append((dep["spec"]["replicas"] if dep else 0, tuple(sorted(desired_live))))
        self._cost = cost
        self._node_cores = sum(n.allocatable_millicores for n in self.model.nodes) / 1000.0
        self._pods_version += 1
        self.signature = tuple(signature)


def _batch(pod: dict, stage: StageBinding) -> int:
    if stage.batch_env is None:
        return stage.batch
    for container in pod["spec"]["containers"]:
        if container.get("name") != stage.container:
            continue
        for env in container.get("env") or []:
            if env.get("name") == stage.batch_env:
                try:
                    return max(1, int(env.get("value")))
                except (TypeError, ValueError):
                    return stage.batch
    return stage.batch


class MetricsServer:
    """The resource metrics pipeline (kubelet -> metrics-server -> metrics.k8s.io), per pod.

    Each pod whose containers run has a cumulative CPU counter (core-seconds, the kubelet's
    ``container_cpu_usage_seconds_total``): a Ready pod is busy in a second for its share of its
    stage's busy cores (its cores over the stage's ready cores: with one pooled queue every
    ready pod is equally utilised; with per-pod queues this spreads the stage's busy cores
    evenly, which leaves the HPA's average, the sum of usage over the sum of requests, as it is,
    and the VPA, which pools its samples per container, sees the same mean); a pod that is not
    Ready serves nothing and its counter stays (real servers burn CPU while loading, which is
    why the HPA ignores such samples; see :meth:`ClusterModel._group_pods`). The kubelet
    refreshes the counters it serves every ``housekeeping_s``, on a grid from the span's start.
    metrics-server scrapes every ``resolution_s``, on a grid offset by ``phase_s`` (the two
    loops are not synchronised; the default, half a resolution, is the mean offset), and reports
    for each pod the counter's increase between its last two scrapes over the two samples'
    distance, with the later sample's time as its timestamp (metrics-server's ``resourceUsage``
    since v0.6); a pod scraped once has no metric yet.

    Args:
        engine: the simulation (its model, its served usage).
        resolution_s: metrics-server's ``--metric-resolution`` (s).
        housekeeping_s: the kubelet's counter refresh interval (s); at most ``resolution_s``.
        phase_s: offset of the scrape grid from the span's start (s); default half a
            resolution.
    """

    def __init__(
        self,
        engine: Engine,
        resolution_s: float = METRIC_RESOLUTION_S,
        housekeeping_s: float = HOUSEKEEPING_S,
        phase_s: float | None = None,
    ) -> None:
        if not (math.isfinite(resolution_s) and resolution_s >= 1):
            raise ValueError(f"metric_resolution_s: must be >= 1 s, got {resolution_s}")
        if not (math.isfinite(housekeeping_s) and 1 <= housekeeping_s <= resolution_s):
            raise ValueError(
                f"housekeeping_s: must be from 1 s to the resolution ({resolution_s:g} s), got "
                f"{housekeeping_s}"
            )
        self.engine = engine
        self.resolution_s = float(resolution_s)
        self.housekeeping_s = float(housekeeping_s)
        self.phase_s = self.resolution_s / 2 if phase_s is None else float(phase_s)
        n = len(engine.capacity.stages)
        self._busy_integral = [0.0] * n  # per stage, sum over seconds of busy / ready cores
        # per stage: pod -> [cores busy for (0 when not Ready), integral at segment start, acc]
        self._pods: list[dict[str, list[float]]] = [{} for _ in range(n)]
        self._samples: dict[int, list[dict[str, float]]] = {}  # tick (s) -> per stage counters
        self._version: object = None

    def observe(self, t: int) -> None:
        """Account second ``t``, just served; at a housekeeping tick, refresh the counters."""
        model = self.engine.model
        if model._rv != self._version:
            self._version = model._rv
            self._snapshot()
        if t == 0:
            self._record(0)  # the counters as the span starts
        serving = self.engine.serving
        for s in range(len(self._pods)):
            cores = serving.ready_cores[s][t]
            if cores > 0:
                self._busy_integral[s] += serving.usage[s][t] / cores
        end = t + 1
        if end % self.housekeeping_s == 0:
            self._record(end)

    def _record(self, at: int) -> None:
        """The kubelet's counters refreshed at ``at`` seconds after the span's start."""
        self._samples[at] = [
            {name: acc + cores * (self._busy_integral[s] - since)
             for name, (cores, since, acc) in pods.items()}
            for s, pods in enumerate(self._pods)
        ]
        horizon = at - 2 * self.resolution_s - 2 * self.housekeeping_s
        for old in [k for k in self._samples if k < horizon]:
            del self._samples[old]

    def _snapshot(self) -> None:
        """Close every pod's segment whose busy cores changed; pods gone are dropped."""
        capacity = self.engine.capacity
        for s, stage in enumerate(capacity.stages):
            now = self._busy_integral[s]
            old = self._pods[s]
            new: dict[str, list[float]] = {}
            for pod in self.engine.model.pods_of(capacity.namespace, stage.deployment):
                if not pod["spec"].get("nodeName"):
                    continue
                name = pod["metadata"]["name"]
                cores = float(max(1, round(_allocated(pod) / 1000))) if _ready(pod) else 0.0
                seg = old.get(name)
                if seg is None:
                    new[name] = [cores, now, 0.0]
                elif seg[0] != cores:
                    new[name] = [cores, now, seg[2] + seg[0] * (now - seg[1])]
                else:
                    new[name] = seg
            self._pods[s] = new

    def _sample_time(self, scrape_s: float) -> int:
        return int(math.floor(scrape_s / self.housekeeping_s) * self.housekeeping_s)

    def pod_metrics(self, stage: int, pods: list[dict]) -> dict[str, PodMetric]:
        """What metrics.k8s.io answers now for ``pods`` of ``stage``: the last scrape's."""
        served = self.engine.t
        k = math.floor((served - self.phase_s) / self.resolution_s)
        if k < 1:
            return {}
        last = self._sample_time(self.phase_s + k * self.resolution_s)
        before = self._sample_time(self.phase_s + (k - 1) * self.resolution_s)
        a, b = self._samples.get(before), self._samples.get(last)
        if a is None or b is None or last <= before:
            return {}
        a, b = a[stage], b[stage]
        window = float(last - before)
        stamp = self.engine.start_s + last
        out = {}
        for pod in pods:
            name = pod["metadata"]["name"]
            if name in a and name in b:
                cores = (b[name] - a[name]) / window
                out[name] = PodMetric(round(1000 * cores), stamp, window)
        return out


class Engine:
    """Serve ``arrivals`` on the model, second by second, with ``controllers`` at their
    cadence.

    Args:
        arrivals: requests arriving in each second of the span.
        pipeline: the stages' latency profiles.
        model: the cluster model (its Deployments exist; its clock is at the span's start).
        namespace: where the stages' Deployments are.
        stages: the Deployment of each stage.
        slo_ms: the latency SLO.
        controllers: ticked at their cadence; more may be appended before :meth:`run`.
        progress: called with the seconds done, every 3,600 s.
        routing: how each stage's Service spreads requests over its ready pods
            (:data:`surgecast.offline.simulator.ROUTINGS`; a Kubernetes Service is
            ``round-robin``).
        metric_resolution_s: metrics-server's scrape interval (see :class:`MetricsServer`).

    Attributes:
        metrics_server: the resource metrics pipeline the model's HPA controller reads.
        external_metrics: External metric name -> a callable answering its value now (None:
            no value), for HPAs on External metrics; the policy that creates such an HPA
            registers it.
    """

    def __init__(
        self,
        arrivals: np.ndarray,
        pipeline: Pipeline,
        model: ClusterModel,
        namespace: str,
        stages: Sequence[StageBinding],
        *,
        slo_ms: float,
        controllers: Sequence[Controller] = (),
        progress: Callable[[int], None] | None = None,
        routing: str = "pooled",
        metric_resolution_s: float = METRIC_RESOLUTION_S,
    ) -> None:
        if len(stages) != len(pipeline.stages):
            raise ValueError(
                f"{len(stages)} Deployments for the {len(pipeline.stages)} stages of "
                f"{pipeline.name}"
            )
        self.arrivals = np.asarray(arrivals, dtype=np.float64)
        self.model = model
        if model.reconcile in model.clock.listeners:
            model.clock.listeners.remove(model.reconcile)
        self.start_s = model.clock.now
        self.slo_ms = slo_ms
        self.capacity = ModelCapacity(model, namespace, stages, pipeline)
        self.serving = Serving(self.arrivals, pipeline, routing)
        self.node_cores = np.zeros(len(self.arrivals))
        """Allocatable cores of the nodes that exist (joined or provisioning), per second."""
        self.controllers = list(controllers)
        self.progress = progress
        self.t = 0  # the next second to serve
        self.actions = 0
        self.notes: list[tuple[int, str]] = []
        self._next_tick: dict[int, float] = {}
        self._running: set[int] = set()
        self._by_deployment = {b.deployment: s for s, b in enumerate(stages)}
        self.metrics_server = MetricsServer(self, metric_resolution_s)
        self.external_metrics: dict[str, Callable[[], float | None]] = {}
        model.metrics = self._pod_metrics
        model.external_metrics = self._external_metric

    # -- time ----------------------------------------------------------------------------------

    @property
    def now_s(self) -> float:
        """The simulation clock (epoch s)."""
        return self.model.clock.now

    def now(self) -> pd.Timestamp:
        return pd.Timestamp(self.now_s, unit="s", tz="UTC")

    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` of simulation pass: serve them, keep the model's controllers and the
        other controllers going. What a controller hands the actuator as its ``sleep``."""
        if seconds < 0:
            raise ValueError(f"cannot sleep {seconds} s")
        target = self.now_s + seconds
        self._tick_due()  # the others due now start now, not after this wait
        self._advance_to(target)

    def run(self) -> SimulationResult:
        """Serve the whole span; the result's policy name is set by the caller."""
        end = self.start_s + len(self.arrivals)
        self._tick_due()
        self._advance_to(end)
        result = self.serving.result("", self.slo_ms, self.actions, self.notes)
        result.node_cores = self.node_cores
        return result

    def _advance_to(self, target_s: float) -> None:
        n_sec = len(self.arrivals)
        while self.t < n_sec and self.start_s + self.t + 1 <= target_s:
            self._serve_second()
            self._move_clock(self.start_s + self.t)
            self._tick_due()
        if target_s > self.now_s:
            self._move_clock(target_s)

    def _move_clock(self, to_s: float) -> None:
        clock = self.model.clock
        if to_s > clock.now:
            clock.advance(to_s - clock.now)

    def _serve_second(self) -> None:
        model = self.model
        if model.next_due_s() <= model.clock.now:
            with model.lock:
                model.reconcile()
        cap = self.capacity
        before = cap.signature
        cap.refresh()
        if before and cap.signature != before:
            self.actions += 1
        self.serving.serve(self.t, cap, cap.scheduled[0], cap.cores[0])
        self.node_cores[self.t] = cap._node_cores
        self.metrics_server.observe(self.t)
        self.t += 1
        if self.progress is not None and self.t % 3600 == 0:
            self.progress(self.t)

    def _tick_due(self) -> None:
        """Tick every controller that is due now and not already in a tick."""
        for i, controller in enumerate(self.controllers):
            if i in self._running:
                continue
            due = self._next_tick.get(i)
            if due is None:
                due = self._next_tick[i] = self.start_s + float(controller.offset_s)
            if due > self.now_s + 1e-9:
                continue
            while self._next_tick[i] <= self.now_s + 1e-9:
                self._next_tick[i] += float(controller.period_s)
            self._running.add(i)
            try:
                controller.tick(self.now())
            finally:
                self._running.discard(i)
            # A tick that outlived its period skips the slots it overlapped (no catch-up
            # burst): the next tick is the next slot on the controller's grid.
            while self._next_tick[i] <= self.now_s + 1e-9:
                self._next_tick[i] += float(controller.period_s)

    # -- what a controller may observe (nothing later than now) -------------------------------

    def observed_rps(self, window_s: int) -> float:
        """Mean arrival rate over the last ``window_s`` seconds served (0 before any)."""
        if self.t == 0:
            return 0.0
        return float(self.arrivals[max(0, self.t - int(window_s)) : self.t].mean())

    def window_peak_rps(self, window_s: float) -> float | None:
        """The highest minute mean over the last ``window_s`` seconds (the live pipeline's
        ``window_peak`` on the per-minute history); None before a whole minute."""
        minutes = self.t // 60
        if minutes == 0:
            return None
        first = max(0, minutes - max(1, math.ceil(window_s / 60)) - 1)
        block = self.arrivals[first * 60 : minutes * 60].reshape(-1, 60).mean(axis=1)
        return float(block.max())

    # -- metrics -------------------------------------------------------------------------------

    def _pod_metrics(self, hpa: dict, pods: list[dict]) -> dict[str, PodMetric]:
        """The resource metrics API for the model's HPA controller: the last scrape of the
        target's pods (:class:`MetricsServer`)."""
        s = self._by_deployment.get(hpa["spec"]["scaleTargetRef"]["name"])
        if s is None:
            return {}
        return self.metrics_server.pod_metrics(s, pods)

    def _external_metric(self, hpa: dict, metric: dict) -> float | None:
        """The external metrics API for the model's HPA controller: the registered source of
        the metric's name, asked now (as KEDA's adapter runs the trigger's query when the HPA
        asks); None when none is registered."""
        source = self.external_metrics.get(metric.get("name", ""))
        return None if source is None else source()
