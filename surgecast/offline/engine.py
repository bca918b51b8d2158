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
* keeps the CPU the served load kept busy, which the model's metrics API reports to the HPA
  controller at its sync: utilisation = busy cores / requested cores of the ready pods,
  averaged over the metrics window, as metrics-server reports it;
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
    _admitted,
    _allocated,
    _condition_reason,
    _desired,
    _ready,
    _terminating,
)
from surgecast.offline.simulator import Serving, SimulationResult

METRICS_WINDOW_S = 15
"""metrics-server's default ``--metric-resolution``: the HPA sees the CPU used over the last
15 s, not the second it syncs in."""


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
        model.metrics = self._utilisation

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

    def _utilisation(self, hpa: dict, ready_pods: list[dict]) -> float:
        """The metrics API for the model's HPA controller: the average CPU utilisation of the
        target's ready pods over the last :data:`METRICS_WINDOW_S` (% of their request)."""
        target = hpa["spec"]["scaleTargetRef"]["name"]
        s = self._by_deployment.get(target)
        if s is None or self.t == 0:
            return 0.0
        lo = max(0, self.t - METRICS_WINDOW_S)
        busy = float(np.mean(self.serving.usage[s][lo : self.t]))
        requested = sum(_desired(p) for p in ready_pods) / 1000.0
        return 100.0 * busy / requested if requested > 0 else 0.0
