"""Scaling policies for the backtest, all on one interface (``decide(view) -> shapes | None``).

* ``hpa``: the Kubernetes HorizontalPodAutoscaler (autoscaling/v2) on CPU utilisation, with its
  defaults: target 70 %, tolerance 0.1, 15 s sync, scale-up limited to max(4 pods, 100 %) per
  15 s, scale-down stabilised over 300 s; fixed cores and batch per pod; pods that are not ready
  count as idle when scaling up (the controller's damping rule).
* ``vpa``: fixed replicas; every 60 s, cores per pod = ceil(p90 of per-pod CPU usage over the
  last 15 minutes × 1.15), applied in place (the VPA recommender's percentile and margin).
* ``themis``: reactive two-stage Themis: every second, if the ready shape cannot carry the
  observed load, the vertical DP (binary-search fallback adds replicas) right away; once the
  load has been stable for a minute, the horizontal DP's cost-optimal shape.
* ``surgecast``: every ``every_s`` a forecast (a quantile over the next minutes) goes through the
  planner's proactive two-stage policy; the plan's steps are applied at their ``apply_at``
  (replicas a cold start early). In between, what the forecast missed is caught reactively: an
  HPA above the planned floor, and an in-place vertical bridge when the observed load exceeds
  the ready capacity.
* ``oracle``: surgecast fed the true future load.
* ``static-peak``: the horizontal DP's shape for the trace's peak, all the time.

Every policy's answers pass through the same guards (``actuator.guards``) in the simulator.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from planner.dp import Decision, StageConfig, horizontal, vertical
from planner.policy import ClusterState, PolicySettings, plan_two_stage
from planner.profiles import Pipeline
from planner.queueing import headroom_rps
from surgecast.offline.simulator import ClusterView

OBSERVE_WINDOW_S = 5
"""Seconds of arrivals behind the observed load the reactive policies act on."""

DRAIN_S = 5.0
"""A reactive bridge sizes for the arrival rate plus the backlog drained over this long."""


def bridge_load(view: ClusterView) -> float:
    """The load a reactive bridge sizes for: recent arrivals plus draining the backlog."""
    if view.now_s < OBSERVE_WINDOW_S:
        return 0.0
    backlog = max((s.backlog for s in view.stages), default=0.0)
    return view.observed_rps(OBSERVE_WINDOW_S) + backlog / DRAIN_S


class _DPCache:
    """The planner's DPs memoised on whole rps (a policy asks every second)."""

    def __init__(self, pipeline: Pipeline, slo_ms: float, max_replicas: int) -> None:
        self.pipeline = pipeline
        self.slo_ms = slo_ms
        self.max_replicas = max_replicas
        self._h: dict[int, Decision] = {}
        self._v: dict[tuple[int, tuple[int, ...]], Decision] = {}

    def horizontal(self, rps: float) -> Decision:
        key = math.ceil(rps)
        if key not in self._h:
            self._h[key] = horizontal(
                self.pipeline, float(key), self.slo_ms, max_replicas=self.max_replicas
            )
        return self._h[key]

    def vertical(self, rps: float, replicas: Sequence[int]) -> Decision:
        key = (math.ceil(rps), tuple(replicas))
        if key not in self._v:
            self._v[key] = vertical(
                self.pipeline,
                float(key[0]),
                self.slo_ms,
                list(replicas),
                max_replicas=self.max_replicas,
            )
        return self._v[key]


class HPA:
    """The Kubernetes HPA algorithm on CPU utilisation, for one stage shape.

    Args:
        cores: CPU cores per pod (the pod's request; fixed).
        batch: batch size (fixed).
        min_replicas, max_replicas: the HPA's bounds.
        n_stages: the same replica count is asked of every stage.
    """

    name = "hpa"

    def __init__(
        self,
        cores: int,
        batch: int,
        *,
        min_replicas: int = 1,
        max_replicas: int = 1000,
        n_stages: int = 1,
        target: float = 0.7,
        tolerance: float = 0.1,
        sync_s: int = 15,
        metrics_window_s: int = 30,
        stabilisation_s: int = 300,
        scale_up_pods: int = 4,
        scale_up_percent: float = 100.0,
    ) -> None:
        self.cores = cores
        self.batch = batch
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self.n_stages = n_stages
        self.target = target
        self.tolerance = tolerance
        self.sync_s = sync_s
        self.metrics_window_s = metrics_window_s
        self.stabilisation_s = stabilisation_s
        self.scale_up_pods = scale_up_pods
        self.scale_up_percent = scale_up_percent
        self._recommendations: deque[tuple[int, int]] = deque()

    def decide(self, view: ClusterView) -> list[StageConfig] | None:
        if view.now_s == 0 or view.now_s % self.sync_s:
            return None
        replicas = self.recommend(view)
        return [StageConfig(replicas, self.cores, self.batch)] * self.n_stages

    def recommend(self, view: ClusterView, floor: int = 0) -> int:
        """The replica count the HPA controller would set now (at least ``floor``)."""
        stage = view.stages[0]
        current = stage.replicas
        raw = self._raw_desired(view)
        now = view.now_s
        self._recommendations.append((now, raw))
        while self._recommendations and self._recommendations[0][0] <= now - self.stabilisation_s:
            self._recommendations.popleft()
        # Stabilisation as the controller does it: scale up to the latest recommendation (no
        # scale-up window by default), scale down only to the highest one of the window.
        desired = current
        if desired < raw:
            desired = raw
        highest = max(r for _, r in self._recommendations)
        if desired > highest:
            desired = highest
        # Scale-up rate: at most max(4 pods, 100 %) more per period.
        limit = max(
            current + self.scale_up_pods,
            math.floor(current * (1 + self.scale_up_percent / 100)),
        )
        desired = min(desired, limit)
        return int(min(max(desired, self.min_replicas, floor), self.max_replicas))

    def _raw_desired(self, view: ClusterView) -> int:
        stage = view.stages[0]
        current = stage.replicas
        start = max(0, view.now_s - self.metrics_window_s)
        usage = float(view.usage_cores[0][start : view.now_s].mean())
        ready_cores = float(view.ready_cores[0][start : view.now_s].mean())
        if stage.ready == 0 or ready_cores <= 0:
            return current
        utilisation = usage / ready_cores
        ratio = utilisation / self.target
        if abs(ratio - 1.0) <= self.tolerance:
            return current
        unready = current - stage.ready
        if ratio > 1.0 and unready > 0:
            # Pods that are not ready yet count as idle: damps the scale-up.
            ratio = utilisation * stage.ready / (self.target * current)
            if ratio <= 1.0 + self.tolerance:
                return current
            return math.ceil(ratio * current)
        return math.ceil(ratio * stage.ready)


class VPA:
    """A VPA-like vertical-only policy: fixed replicas, cores from a usage percentile.

    Args:
        replicas: fixed replica count per stage.
        batch: fixed batch size.
        max_cores: the largest recommendation.
        n_stages: stages (each gets the recommendation of its own usage).
    """

    name = "vpa"

    def __init__(
        self,
        replicas: int,
        batch: int,
        max_cores: int,
        *,
        n_stages: int = 1,
        interval_s: int = 60,
        window_s: int = 900,
        percentile: float = 90.0,
        margin: float = 0.15,
    ) -> None:
        self.replicas = replicas
        self.batch = batch
        self.max_cores = max_cores
        self.n_stages = n_stages
        self.interval_s = interval_s
        self.window_s = window_s
        self.percentile = percentile
        self.margin = margin

    def decide(self, view: ClusterView) -> list[StageConfig] | None:
        if view.now_s == 0 or view.now_s % self.interval_s:
            return None
        start = max(0, view.now_s - self.window_s)
        shapes = []
        for s, stage in enumerate(view.stages):
            per_pod = view.usage_cores[s][start : view.now_s] / max(stage.ready, 1)
            wanted = float(np.percentile(per_pod, self.percentile)) * (1.0 + self.margin)
            cores = min(max(math.ceil(wanted - 1e-9), 1), self.max_cores)
            shapes.append(StageConfig(self.replicas, cores, self.batch))
        return shapes


class ThemisReactive:
    """Reactive Themis: vertical first on a load change, horizontal once the load is stable.

    Args:
        pipeline: stages and profiles.
        slo_ms: end-to-end SLO.
        max_replicas: the DPs' replica bound.
        stable_s: the load counts as stable after this long within ``stable_band``.
        stable_band: relative spread (max/min − 1) of 10-s means that still counts as stable.
    """

    name = "themis"

    def __init__(
        self,
        pipeline: Pipeline,
        slo_ms: float,
        max_replicas: int,
        *,
        stable_s: int = 60,
        stable_band: float = 0.2,
    ) -> None:
        self.dp = _DPCache(pipeline, slo_ms, max_replicas)
        self.stable_s = stable_s
        self.stable_band = stable_band

    def decide(self, view: ClusterView) -> list[StageConfig] | None:
        if view.now_s < OBSERVE_WINDOW_S:
            return None
        observed = bridge_load(view)
        current = [s.config for s in view.stages]
        ready = [replace(c, replicas=s.ready) for c, s in zip(current, view.stages, strict=True)]
        if not _carries(self.dp, ready, observed):
            # Resize the replicas that are ready now; keep any that are still starting.
            bridge = self.dp.vertical(observed, [max(s.ready, 1) for s in view.stages]).stages
            return [
                replace(b, replicas=max(b.replicas, c.replicas))
                for b, c in zip(bridge, current, strict=True)
            ]
        if view.now_s % 15 == 0 and _stable(view, self.stable_s, self.stable_band):
            target = list(self.dp.horizontal(view.observed_rps(self.stable_s)).stages)
            if target != current:
                return target
        return None


def _carries(dp: _DPCache, shapes: Sequence[StageConfig], rps: float) -> bool:
    """Whether ``shapes`` carry the headroom load of ``rps`` within the SLO."""
    need = headroom_rps(rps)
    latency = 0.0
    for shape, profile in zip(shapes, dp.pipeline.stages, strict=True):
        if shape.replicas * float(profile.throughput_rps(shape.batch, shape.cores)) < need:
            return False
        latency += float(profile.latency_ms(shape.batch, shape.cores))
    return latency <= dp.slo_ms


def _stable(view: ClusterView, window_s: int, band: float) -> bool:
    if view.now_s < window_s:
        return False
    recent = view.arrivals[view.now_s - window_s : view.now_s].reshape(-1, 10).mean(axis=1)
    low, high = float(recent.min()), float(recent.max())
    return high <= (1.0 + band) * max(low, 1.0)


Forecaster = Callable[[int], dict[float, np.ndarray]]
"""now_s -> {quantile: the load (rps) for each forecast minute from now on}."""


@dataclass
class _Scheduled:
    apply_s: int
    shapes: list[StageConfig]


class Proactive:
    """surgecast in the backtest: forecast -> planner -> plan steps at their apply_at.

    Every ``every_s`` the forecast goes to the planner's two-stage policy, with two choices of
    how to use it:

    * cores for the planning quantile, replicas for the surge quantile: the replica count is at
      least what, resized in place to the largest pods (seconds), carries the surge quantile's
      peak; cores are paid for the planning quantile only. Cold starts then stay off a surge's
      critical path without paying for idle cores;
    * a receding horizon: the planner sees the steps until the next plan plus a cold start
      (what must be decided now); later steps are planned again with a fresher forecast.

    Between plans, what the forecast missed is caught reactively: an HPA (on the planned pod
    shape) may raise replicas above the planned floor, and when the observed load (plus the
    backlog to drain) exceeds what the ready replicas carry, the vertical DP bridges in place.

    Args:
        name: "surgecast" or "oracle".
        pipeline: stages and profiles.
        forecaster: the quantile load per forecast step from now (leak-free for surgecast).
        step_s: seconds per forecast step.
        every_s: seconds between plans.
        start: the timestamp of simulated second 0 (plans carry real times).
        settings: the planner's settings (SLO, cold start, resize, stabilisation, bounds);
            its ``quantile`` is the forecast quantile the cores are sized for.
        hpa: the HPA acting above the floor.
        surge_quantile: the forecast quantile the replica count must reach by resizing.
        receding: plan on the decision steps only (False: on the whole horizon).
    """

    def __init__(
        self,
        name: str,
        pipeline: Pipeline,
        forecaster: Forecaster,
        *,
        step_s: int,
        every_s: int,
        start: pd.Timestamp,
        settings: PolicySettings,
        hpa: HPA,
        surge_quantile: float = 0.99,
        receding: bool = True,
    ) -> None:
        self.name = name
        self.surge_quantile = surge_quantile
        self.pipeline = pipeline
        self.forecaster = forecaster
        self.step_s = step_s
        self.every_s = every_s
        self.start = start
        self.settings = settings
        self.hpa = hpa
        self.dp = _DPCache(pipeline, settings.slo_ms, settings.max_replicas or 1000)
        self._queue: list[_Scheduled] = []
        self._floor: list[StageConfig] | None = None
        self._last_up_s: int | None = None
        self._hpa_replicas = 0
        self._bridge: list[StageConfig] | None = None
        self.receding = receding

    def decide(self, view: ClusterView) -> list[StageConfig] | None:
        now = view.now_s
        current = [s.config for s in view.stages]
        if self._floor is None:
            self._floor = current
        if now % self.every_s == 0 and now >= 60:
            self._plan(view, current)
        if self._queue and self._queue[0].apply_s <= now:
            # One step per second, in plan order: a bridge, then the consolidation that starts
            # the new replicas (the bridged pods shrink once those are ready).
            self._floor = self._queue.pop(0).shapes
            self._bridge = None  # a plan step supersedes the reactive bridge
        wanted = list(self._floor)
        # Reactive part 1: the HPA above the planned floor, on the planned pod shape.
        if now % self.hpa.sync_s == 0 and now > 0:
            self.hpa.cores, self.hpa.batch = wanted[0].cores, wanted[0].batch
            self._hpa_replicas = self.hpa.recommend(view, floor=wanted[0].replicas)
        wanted = [replace(w, replicas=max(w.replicas, self._hpa_replicas)) for w in wanted]
        # Reactive part 2: the forecast missed; bridge in place on the replicas ready now.
        observed = bridge_load(view)
        if self._bridge is not None:
            planned = [
                replace(w, replicas=s.ready) for w, s in zip(wanted, view.stages, strict=True)
            ]
            if _carries(self.dp, planned, view.observed_rps(60)):
                self._bridge = None  # the plan carries the load again (the guards pace the shrink)
            else:
                wanted = _cover(wanted, self._bridge)
        ready = [replace(w, replicas=s.ready) for w, s in zip(wanted, view.stages, strict=True)]
        if observed > 0 and not _carries(self.dp, ready, observed):
            self._bridge = list(
                self.dp.vertical(observed, [max(s.ready, 1) for s in view.stages]).stages
            )
            wanted = _cover(wanted, self._bridge)
        if any(
            w.replicas > c.replicas or w.cores > c.cores
            for w, c in zip(wanted, current, strict=True)
        ):
            self._last_up_s = now
        return wanted if wanted != current else None

    def _plan(self, view: ClusterView, current: list[StageConfig]) -> None:
        now = view.now_s
        forecast = self.forecaster(now)
        state = ClusterState(
            replicas=tuple(c.replicas for c in current),
            cores=tuple(c.cores for c in current),
            batch=tuple(c.batch for c in current),
        )
        # The forecast's cutoff labels the last complete minute; its step 1 is the minute that
        # starts now, which is how the planner reads a forecast.
        cutoff = self.start + pd.Timedelta(seconds=now - self.step_s)
        last_up = (
            None if self._last_up_s is None else self.start + pd.Timedelta(seconds=self._last_up_s)
        )
        # Replicas for the surge quantile, cores for the planning quantile: keep enough replicas
        # that resizing them in place (seconds) reaches the upper quantile, and pay cores only
        # for the likely load. The cold start is then never on a surge's critical path.
        surge_peak = float(np.max(forecast[self.surge_quantile][: self._decision_steps()]))
        settings = replace(
            self.settings,
            min_replicas=min(
                max(self.settings.min_replicas, self._replicas_reaching(surge_peak)),
                self.settings.max_replicas or 10**9,
            ),
        )
        plan = plan_two_stage(
            self.name,
            self.pipeline,
            state,
            view.observed_rps(60),
            forecast[self.settings.quantile][: self._decision_steps()],
            float(self.step_s),
            cutoff,
            settings,
            last_scale_up_at=last_up,
        )
        self._queue = [
            _Scheduled(
                apply_s=max(now, int((step.apply_at - self.start).total_seconds())),
                shapes=[
                    StageConfig(r, c, b)
                    for r, c, b in zip(step.replicas, step.cores, step.batch, strict=True)
                ],
            )
            for step in plan.steps
        ]
        self._queue.sort(key=lambda item: item.apply_s)

    def _decision_steps(self) -> int:
        """Forecast steps that decide anything now (a receding horizon): until the next plan,
        plus a cold start (what the next plan could no longer start in time), plus one step.
        Later steps are planned again, with a fresher forecast, by the next plan."""
        if not self.receding:
            return 10**9
        lead = self.every_s + self.settings.cold_start_s
        return math.ceil(lead / self.step_s) + 1

    def _replicas_reaching(self, rps: float) -> int:
        """Fewest replicas that carry ``rps`` (with headroom) once resized to the largest pods."""
        need = headroom_rps(rps)
        most = 1
        for profile in self.pipeline.stages:
            best = max(
                (
                    float(profile.throughput_rps(b, profile.max_cores))
                    for b in range(1, profile.max_batch + 1)
                    if float(profile.latency_ms(b, profile.max_cores)) <= self.settings.slo_ms / 2
                ),
                default=float(profile.throughput_rps(1, profile.max_cores)),
            )
            most = max(most, math.ceil(need / best))
        return most


def _cover(wanted: Sequence[StageConfig], bridge: Sequence[StageConfig]) -> list[StageConfig]:
    """The smallest change of ``wanted`` that keeps the bridge's capacity: its cores and batch,
    and at least its replicas."""
    return [
        StageConfig(
            max(w.replicas, b.replicas),
            max(w.cores, b.cores),
            b.batch if b.cores > w.cores else w.batch,
        )
        for w, b in zip(wanted, bridge, strict=True)
    ]


class Static:
    """The same shape all the time (static peak provisioning: the cost ceiling)."""

    name = "static-peak"

    def __init__(self, shapes: Sequence[StageConfig]) -> None:
        self.shapes = list(shapes)

    def decide(self, view: ClusterView) -> list[StageConfig] | None:
        current = [s.config for s in view.stages]
        return self.shapes if current != self.shapes else None
