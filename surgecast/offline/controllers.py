"""Controllers the backtest runs on the simulation clock, acting only through the cluster port.

* :class:`ThemisController` and :class:`VpaController`: the baselines, reading and writing
  through the same port and the actuator's declarative write path.
* :class:`PipelineCycle`: surgecast's scheduled run, as production runs it every
  ``run_interval_s``: a leak-free forecast from the per-minute history observed up to now, the
  one planning function (:func:`surgecast.planning.plan_cycle`), then the real
  :func:`actuator.apply.actuate` on :class:`~surgecast.offline.port.SimPort`, its decision
  records written to an artifact folder as production writes them. Its waits (resize polls,
  retry backoffs) are simulation time: the load keeps arriving while it waits.

The HPA is the model's own controller on a real HPA object (:mod:`surgecast.offline.cluster`);
what surgecast credits to an "HPA above the plan" is that object, whose ``minReplicas`` the
actuator moves.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from actuator import pods as P
from actuator.apply import RunOptions, actuate
from actuator.guards import run_guards, within_bounds
from actuator.kube import RetryPolicy, converge
from actuator.records import DecisionRecord
from actuator.spec import ServiceSpec
from actuator.target import stage_guards
from planner.dp import StageConfig, horizontal, vertical
from planner.errors import PlannerInputError
from planner.plan import Plan
from planner.policy import ClusterState, PolicySettings
from planner.profiles import Pipeline
from planner.queueing import headroom_rps
from surgecast.offline.engine import Engine
from surgecast.offline.port import SimPort
from surgecast.planning import plan_cycle, reactive_floors

Forecaster = Callable[[pd.Timestamp], Mapping[float, np.ndarray]]
"""The forecast at a time: per quantile, the load of the steps after the last complete minute
(nothing later than that time was read)."""


@dataclass
class PipelineCycle:
    """surgecast's scheduled pipeline run: forecast -> plan -> actuate, every ``period_s``.

    Args:
        name: for reports.
        engine: the simulation (its clock, its sleep, the observed arrivals).
        port: the cluster port the actuator writes through.
        config: the service as the actuator reads it (``Settings.actuator_config``).
        pipeline: the stages' profiles.
        policy: the planner's settings for the service (``ServiceSettings.policy``).
        forecaster: quantile loads at a time (leak-free; the true future in the
            perfect-forecast run).
        batch: per stage, the batch size the state is read with when the Deployment sets none.
        step_s: the forecast step (s).
        offset_s: seconds after the start of the first run (a complete minute observed).
        artifacts: where decision records go (default: a temporary folder).
        surge_quantile: see :func:`~surgecast.planning.plan_cycle`.

    Attributes:
        records: every run's decision record, in order.
        errors: planner errors (the run then applies nothing, as in production).
        last_plan: the latest plan (what the bridge's envelope comes from).
    """

    name: str
    engine: Engine
    port: SimPort
    config: ServiceSpec
    pipeline: Pipeline
    policy: PolicySettings
    forecaster: Forecaster
    batch: tuple[int, ...]
    step_s: float = 60.0
    offset_s: float = 60.0
    artifacts: Path | None = None
    surge_quantile: float | None = 0.99
    records: list[DecisionRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    last_plan: Plan | None = None

    def __post_init__(self) -> None:
        if self.artifacts is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="surgecast-backtest-")
            self.artifacts = Path(self._tmp.name)
        self.options = RunOptions(
            retry=RetryPolicy(attempts=4, backoff_s=0.5, request_timeout_s=10.0),
            poll_s=2.0,
            sleep=self.engine.sleep,
            wall_clock=lambda: self.engine.now_s,
            identity=f"surgecast-backtest-{self.name}",
        )

    @property
    def period_s(self) -> float:
        return float(self.config.run_interval_s)

    def tick(self, now: pd.Timestamp) -> None:
        observed = self.engine.observed_rps(60)
        window_peak = self.engine.window_peak_rps(self.config.stabilisation_s)
        quantiles = self.forecaster(now)
        cutoff = now - pd.Timedelta(seconds=self.step_s)
        last_up = _last_scale_up(self.records)
        try:
            plan = plan_cycle(
                self.config.name,
                self.pipeline,
                self.observe(),
                observed,
                dict(quantiles),
                self.step_s,
                cutoff,
                self.policy,
                run_interval_s=self.period_s,
                surge_quantile=self.surge_quantile,
                last_scale_up_at=last_up,
            )
        except PlannerInputError as exc:
            self.errors.append(f"{now.isoformat()}: {exc}")
            return
        self.last_plan = plan
        floors = reactive_floors(self.pipeline, self.policy, observed, window_peak)
        record = actuate(
            plan,
            [self.config],
            self.port,
            now=now,
            artifacts=self.artifacts,
            floors=floors,
            options=self.options,
        )
        self.records.append(record)

    def observe(self) -> ClusterState:
        """What runs now, read through the port as the live plan stage reads it: the
        Deployment's replicas, the typical cores of its pods, the batch of its template."""
        seen = [
            _observe_stage(self.port, self.config, i, b).current
            for i, b in enumerate(self.batch)
        ]
        return ClusterState.of(seen)


def _last_scale_up(records: list[DecisionRecord]) -> pd.Timestamp | None:
    for record in reversed(records):
        if record.scaled_up:
            return pd.Timestamp(record.run_at)
    return None


# --------------------------------------------------------------------------------------------
# baselines as controllers: they read and write through the port like everything else


OBSERVE_WINDOW_S = 5
"""Seconds of arrivals behind the observed load the reactive baselines act on."""

DRAIN_S = 5.0
"""A reactive resize sizes for the arrival rate plus the backlog drained over this long."""


@dataclass
class _Observed:
    current: StageConfig  # the Deployment's replicas, the pods' typical cores, the batch
    ready: int
    pods: list[dict]


def _observe_stage(port: SimPort, config: ServiceSpec, i: int, batch: int) -> _Observed:
    """What runs now, read through the port as the live plan stage reads it: the Deployment's
    replicas, the typical cores of its pods, the batch of its template (``batch`` if unset)."""
    wl = config.workloads[i]
    dep = port.deployment(config.namespace, wl.deployment)
    labels = dep["spec"]["selector"]["matchLabels"]
    pods = P.live(P.owned_by(port.pods(config.namespace, labels), wl.deployment))
    template_m = P.template_millicores(dep, wl.container) or 1000
    cores = max(1, P.typical_cores(pods, wl.container, template_m))
    value = P.template_env(dep, wl.container, wl.batch_env) if wl.batch_env else None
    if value and value.isdigit():
        batch = int(value)
    current = StageConfig(int(dep["spec"].get("replicas", 1)), cores, batch)
    return _Observed(current, sum(1 for p in pods if P.is_ready(p)), pods)


def _write(
    port: SimPort, config: ServiceSpec, i: int, target: StageConfig, pods: list[dict],
    sleep: Callable[[float], None],
) -> int:
    """Declarative writes on the actuator's path (:func:`actuator.kube.converge` with the
    actuator's patch builders): the scale, then every live pod's CPU in place. Returns the
    writes that changed something."""
    wl, ns = config.workloads[i], config.namespace
    retry = RetryPolicy(attempts=4, backoff_s=0.5)
    done = 0
    ready = sum(1 for p in pods if P.is_ready(p))
    if ready < target.replicas:
        # Make before break: running pods shrink only once the replicas that replace their
        # capacity are ready (a later tick does it).
        cores_now = [P.desired_millicores(p, wl.container) or 0 for p in pods]
        keep = max(cores_now, default=0) // 1000
        target = StageConfig(target.replicas, max(target.cores, keep), target.batch)
    result = converge(
        lambda: port.scale(ns, wl.deployment),
        lambda scale: P.scale_patch(scale, target.replicas),
        lambda body: port.patch_scale(ns, wl.deployment, body, dry_run=False),
        retry=retry,
        sleep=sleep,
    )
    done += result.outcome == "applied"
    for pod in pods:
        name = pod["metadata"]["name"]
        result = converge(
            lambda n=name: port.pod(ns, n),
            lambda current: P.resize_patch(current, wl.container, target.cores),
            lambda body, n=name: port.patch_resize(ns, n, body, dry_run=False),
            retry=retry,
            sleep=sleep,
        )
        done += result.outcome == "applied"
    return done


@dataclass
class ThemisController:
    """Reactive Themis (no forecast) as a controller: every ``period_s``, when the ready pods
    cannot carry the observed load (plus draining the backlog), the vertical DP on the ready
    replicas; once the load has been stable for ``stable_s``, the horizontal DP's cost-optimal
    shape. The decision is a one-step target through the actuator's guard chain
    (:func:`actuator.target.stage_guards`: reactive floor, scale-in confirmation and
    stabilisation, step limit, bounds) and is written on the actuator's declarative path.

    The pods' batch size is the Deployment's (an in-place resize changes CPU only): the DPs
    choose among batches up to it, and the pods serve at it, which carries at least what the
    DP sized (throughput grows with the batch).
    """

    engine: Engine
    port: SimPort
    config: ServiceSpec
    pipeline: Pipeline
    policy: PolicySettings
    batch: tuple[int, ...]
    name: str = "themis"
    period_s: float = 5.0
    offset_s: float = 5.0
    stable_s: int = 60
    stable_band: float = 0.2
    last_up_s: float | None = None

    def __post_init__(self) -> None:
        from dataclasses import replace as _replace

        self.dp_pipeline = Pipeline(
            name=self.pipeline.name,
            stages=tuple(
                _replace(p, max_batch=min(p.max_batch, b))
                for p, b in zip(self.pipeline.stages, self.batch, strict=True)
            ),
        )
        self.max_replicas = self.policy.max_replicas or 1000
        self._h: dict[int, object] = {}
        self._v: dict[tuple, object] = {}

    def tick(self, now: pd.Timestamp) -> None:
        engine = self.engine
        observed = engine.observed_rps(OBSERVE_WINDOW_S) + max(engine.serving.backlog) / DRAIN_S
        seen = [
            _observe_stage(self.port, self.config, i, b) for i, b in enumerate(self.batch)
        ]
        current = [o.current for o in seen]
        ready = [StageConfig(o.ready, o.current.cores, o.current.batch) for o in seen]
        if not self._carries(ready, observed):
            bridge = self._vertical(observed, [max(o.ready, 1) for o in seen])
            wanted = [
                StageConfig(max(b.replicas, c.replicas), b.cores, c.batch)
                for b, c in zip(bridge, current, strict=True)
            ]
        elif int(now.timestamp()) % 15 == 0 and self._stable():
            wanted = [
                StageConfig(h.replicas, h.cores, c.batch)
                for h, c in zip(self._horizontal(engine.observed_rps(self.stable_s)), current,
                                strict=True)
            ]
        else:
            return
        if wanted == current:
            return
        floors = reactive_floors(
            self.pipeline, self.policy, engine.observed_rps(60),
            engine.window_peak_rps(self.config.stabilisation_s),
        )
        for i, (want, o) in enumerate(zip(wanted, seen, strict=True)):
            guards = stage_guards(
                self.config, self.config.workloads[i], o.current, now_s=now.timestamp(),
                last_scale_up_s=self.last_up_s, floor=floors.get(i),
            )
            target, _ = run_guards(want, guards)
            target = StageConfig(target.replicas, target.cores, o.current.batch)
            if target.replicas > o.current.replicas or target.cores > o.current.cores:
                self.last_up_s = now.timestamp()
            _write(self.port, self.config, i, target, o.pods, engine.sleep)

    def _carries(self, shapes: list[StageConfig], rps: float) -> bool:
        need = headroom_rps(rps)
        latency = 0.0
        for shape, profile in zip(shapes, self.pipeline.stages, strict=True):
            if shape.replicas * float(profile.throughput_rps(shape.batch, shape.cores)) < need:
                return False
            latency += float(profile.latency_ms(shape.batch, shape.cores))
        return latency <= self.policy.slo_ms

    def _stable(self) -> bool:
        t = self.engine.t
        if t < self.stable_s:
            return False
        recent = self.engine.arrivals[t - self.stable_s : t].reshape(-1, 10).mean(axis=1)
        return float(recent.max()) <= (1.0 + self.stable_band) * max(float(recent.min()), 1.0)

    def _horizontal(self, rps: float):
        key = math.ceil(rps)
        if key not in self._h:
            self._h[key] = horizontal(
                self.dp_pipeline, float(key), self.policy.slo_ms, max_replicas=self.max_replicas
            ).stages
        return self._h[key]

    def _vertical(self, rps: float, replicas: list[int]):
        key = (math.ceil(rps), tuple(replicas))
        if key not in self._v:
            self._v[key] = vertical(
                self.dp_pipeline, float(key[0]), self.policy.slo_ms, list(replicas),
                max_replicas=self.max_replicas,
            ).stages
        return self._v[key]


@dataclass
class VpaController:
    """A VPA-like recommender and in-place updater: fixed replicas; every ``period_s`` (60 s),
    cores per pod = ceil(p90 of the per-pod CPU in use over the last ``window_s`` x (1 +
    ``margin``)), within the bounds, resized in place on the actuator's declarative path."""

    engine: Engine
    port: SimPort
    config: ServiceSpec
    batch: tuple[int, ...]
    name: str = "vpa"
    period_s: float = 60.0
    offset_s: float = 60.0
    window_s: int = 900
    percentile: float = 90.0
    margin: float = 0.15

    def tick(self, now: pd.Timestamp) -> None:
        engine = self.engine
        t = engine.t
        start = max(0, t - self.window_s)
        for i, b in enumerate(self.batch):
            o = _observe_stage(self.port, self.config, i, b)
            per_pod = engine.serving.usage[i][start:t] / max(o.ready, 1)
            wanted = float(np.percentile(per_pod, self.percentile)) * (1.0 + self.margin)
            bounds = self.config.workloads[i].bounds
            cores = min(max(math.ceil(wanted - 1e-9), bounds.min_cores, 1), bounds.max_cores)
            target, _ = run_guards(
                StageConfig(o.current.replicas, cores, b),
                [partial(within_bounds, bounds=bounds)],
            )
            _write(self.port, self.config, i, target, o.pods, engine.sleep)
