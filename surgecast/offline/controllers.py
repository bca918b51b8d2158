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
from pathlib import Path

import numpy as np
import pandas as pd

from actuator import pods as P
from actuator.apply import RunOptions, actuate
from actuator.guards import run_guards
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


VPA_HALF_LIFE_S = 24 * 3600.0
"""The recommender's ``--cpu-histogram-decay-half-life`` default (24 h)."""
VPA_MARGIN = 0.15
"""``--recommendation-margin-fraction`` default: the safety margin on every estimate."""
VPA_MIN_CPU_CORES = 0.025
"""``--pod-recommendation-min-cpu-millicores`` default (25 m)."""
VPA_MIN_SAMPLE_WEIGHT = 0.1
"""``minSampleWeight`` (model/aggregate_container_state.go): a CPU sample weighs its pod's CPU
request in cores, at least this."""


class CpuHistogram:
    """The VPA recommender's decaying CPU histogram (vertical-pod-autoscaler/pkg/recommender/
    util: ``histogram.go``, ``decaying_histogram.go``, ``histogram_options.go``).

    Exponential buckets: the first 0.01 core wide, each next 5 % wider, up to 1,000 cores
    (``CPUHistogramOptions``). A sample at time t weighs ``weight x 2^((t - ref) / half_life)``,
    so a sample one half-life older weighs half as much; the reference moves forward (every
    weight rescaled) before the exponent passes 100, as ``shiftReferenceTimestamp`` does.

    Args:
        half_life_s: the decay half-life (s).
    """

    FIRST_BUCKET = 0.01
    RATIO = 1.05
    MAX_VALUE = 1000.0
    MAX_DECAY_EXPONENT = 100

    def __init__(self, half_life_s: float = VPA_HALF_LIFE_S) -> None:
        if not (math.isfinite(half_life_s) and half_life_s > 0):
            raise ValueError(f"half_life_s: must be > 0, got {half_life_s}")
        self.half_life_s = float(half_life_s)
        n = math.ceil(
            math.log(self.MAX_VALUE * (self.RATIO - 1) / self.FIRST_BUCKET + 1)
            / math.log(self.RATIO)
        ) + 1
        self.weights = np.zeros(n)
        self.reference_s: float | None = None

    def bucket_start(self, bucket: int) -> float:
        return self.FIRST_BUCKET * (self.RATIO**bucket - 1) / (self.RATIO - 1)

    def find_bucket(self, value: float) -> int:
        if value < self.FIRST_BUCKET:
            return 0
        bucket = math.floor(
            math.log(value * (self.RATIO - 1) / self.FIRST_BUCKET + 1) / math.log(self.RATIO)
        )
        return min(max(bucket, 0), len(self.weights) - 1)

    def add(self, value: float, weight: float, time_s: float) -> None:
        """Add a sample of ``value`` cores with ``weight`` at ``time_s`` (epoch s)."""
        if not (math.isfinite(value) and value >= 0 and weight >= 0):
            raise ValueError(f"a CPU sample must be >= 0 with a weight >= 0: {value}, {weight}")
        if self.reference_s is None:
            self.reference_s = round(time_s / self.half_life_s) * self.half_life_s
        if time_s > self.reference_s + self.half_life_s * self.MAX_DECAY_EXPONENT:
            new_ref = round(time_s / self.half_life_s) * self.half_life_s
            self.weights *= 2.0 ** round((self.reference_s - new_ref) / self.half_life_s)
            self.reference_s = new_ref
        factor = 2.0 ** ((time_s - self.reference_s) / self.half_life_s)
        self.weights[self.find_bucket(value)] += weight * factor

    def percentile(self, q: float) -> float:
        """``Percentile``: the end of the first bucket at which the cumulative weight reaches
        ``q`` of the total (the start of the last bucket, which has no end); 0 when empty."""
        total = float(self.weights.sum())
        if total <= 0:
            return 0.0
        cumulative = np.cumsum(self.weights)
        nonzero = np.flatnonzero(self.weights)
        bucket = int(np.searchsorted(cumulative, q * total, side="left"))
        bucket = min(max(bucket, int(nonzero[0])), int(nonzero[-1]))
        if bucket < len(self.weights) - 1:
            return self.bucket_start(bucket + 1)
        return self.bucket_start(bucket)


@dataclass
class VpaRecommendation:
    """A container's CPU recommendation (cores): what ``RecommendedContainerResources``
    holds."""

    target: float
    lower: float
    upper: float


@dataclass
class CpuAggregate:
    """``AggregateContainerState`` for CPU: the histogram, the first and last sample times and
    the sample count (for the confidence)."""

    histogram: CpuHistogram = field(default_factory=CpuHistogram)
    first_s: float | None = None
    last_s: float | None = None
    samples: int = 0

    def add(self, cores: float, request_cores: float, time_s: float, count: int = 1) -> None:
        """``count`` samples of ``cores`` used, each weighing max(request, 0.1 core)."""
        weight = max(request_cores, VPA_MIN_SAMPLE_WEIGHT) * count
        self.histogram.add(cores, weight, time_s)
        self.first_s = time_s if self.first_s is None else min(self.first_s, time_s)
        self.last_s = time_s if self.last_s is None else max(self.last_s, time_s)
        self.samples += count

    def confidence(self) -> float:
        """``getConfidence`` (logic/estimator.go): min(days between the first and the last
        sample, samples / 1,440), the days of history at one sample a minute."""
        if self.first_s is None or self.last_s is None:
            return 0.0
        return min((self.last_s - self.first_s) / 86400.0, self.samples / 1440.0)

    def recommend(self, margin: float = VPA_MARGIN, min_cores: float = VPA_MIN_CPU_CORES):
        """``logic/recommender.go``'s estimators: target = p90, lower = p50, upper = p95, each
        times (1 + margin); the upper bound times (1 + 1/confidence), the lower times
        (1 + 0.001/confidence)^-2 (``WithConfidenceMultiplier``); each at least ``min_cores``
        (``WithMinResources``)."""
        h = self.histogram
        c = self.confidence()
        up = math.inf if c <= 0 else (1.0 + 1.0 / c)
        low = 0.0 if c <= 0 else (1.0 + 0.001 / c) ** -2.0
        return VpaRecommendation(
            target=max(h.percentile(0.9) * (1 + margin), min_cores),
            lower=max(h.percentile(0.5) * (1 + margin) * low, min_cores),
            upper=max(h.percentile(0.95) * (1 + margin) * up, min_cores),
        )


@dataclass
class VpaController:
    """The Kubernetes VPA (vertical-pod-autoscaler 1.4+, ``updateMode: InPlaceOrRecreate`` on
    Kubernetes 1.33+) as a controller: the recommender and the updater, both every
    ``period_s`` (their ``--recommender-interval`` and ``--updater-interval`` defaults, 1
    minute). A VPA does not change replicas: they stay what the operator runs.

    Recommender (pkg/recommender), one :class:`CpuAggregate` per stage (the container's
    aggregate over all its pods): each pod's CPU from the resource metrics API (the engine's
    metrics-server model, what the real recommender reads), added once per new sample time,
    weighing the pod's CPU request; the recommendation is :meth:`CpuAggregate.recommend`,
    capped to the bounds (the container policy's minAllowed/maxAllowed,
    ``CappingPostProcessor``).

    Updater (pkg/updater, ``UpdatePriorityCalculator``): a pod whose CPU request is outside
    [lower bound, upper bound] is resized in place to the target, on the actuator's
    declarative resize path. The target is rounded up to whole cores, as the latency profile
    and the serving model know whole cores only.

    Not modelled: the updater's other trigger (a pod older than 12 h with a >= 10 % change),
    OOM bumps, memory, the admission controller (no new pods: replicas are fixed), the
    recreate fallback. ``seed`` stands for the checkpoint a running recommender keeps
    (``VerticalPodAutoscalerCheckpoint``): the days before the span.
    """

    engine: Engine
    port: SimPort
    config: ServiceSpec
    batch: tuple[int, ...]
    name: str = "vpa"
    period_s: float = 60.0
    offset_s: float = 60.0
    margin: float = VPA_MARGIN
    aggregates: list[CpuAggregate] = field(default_factory=list)
    last_sample_s: dict[str, float] = field(default_factory=dict)
    updates: int = 0

    def __post_init__(self) -> None:
        if not self.aggregates:
            self.aggregates = [CpuAggregate() for _ in self.batch]

    def seed(self, stage: int, times_s, cores_used, request_cores: float, pods: int) -> None:
        """History before the span: at each time, ``pods`` samples of ``cores_used``."""
        for t, used in zip(times_s, cores_used, strict=True):
            self.aggregates[stage].add(float(used), request_cores, float(t), count=pods)

    def recommendation(self, stage: int) -> VpaRecommendation:
        bounds = self.config.workloads[stage].bounds
        rec = self.aggregates[stage].recommend(self.margin)
        lo, hi = float(bounds.min_cores), float(bounds.max_cores)
        return VpaRecommendation(
            *(min(max(v, lo), hi) for v in (rec.target, rec.lower, rec.upper))
        )

    def tick(self, now: pd.Timestamp) -> None:
        engine = self.engine
        for i, b in enumerate(self.batch):
            wl = self.config.workloads[i]
            o = _observe_stage(self.port, self.config, i, b)
            # recommender: the samples metrics-server has now
            metrics = engine.metrics_server.pod_metrics(i, o.pods)
            for pod in o.pods:
                name = pod["metadata"]["name"]
                metric = metrics.get(name)
                if metric is None or metric.timestamp_s <= self.last_sample_s.get(name, -math.inf):
                    continue
                self.last_sample_s[name] = metric.timestamp_s
                request = (P.desired_millicores(pod, wl.container) or 0) / 1000.0
                self.aggregates[i].add(metric.millicores / 1000.0, request, metric.timestamp_s)
            rec = self.recommendation(i)
            # updater: pods outside the recommended range get the target, in place
            target = min(max(math.ceil(rec.target - 1e-9), wl.bounds.min_cores, 1),
                         wl.bounds.max_cores)
            for pod in o.pods:
                request = (P.desired_millicores(pod, wl.container) or 0) / 1000.0
                if rec.lower <= request <= rec.upper:
                    continue
                name = pod["metadata"]["name"]
                result = converge(
                    lambda n=name: self.port.pod(self.config.namespace, n),
                    lambda current, c=wl.container, k=target: P.resize_patch(current, c, k),
                    lambda body, n=name: self.port.patch_resize(
                        self.config.namespace, n, body, dry_run=False
                    ),
                    retry=RetryPolicy(attempts=4, backoff_s=0.5),
                    sleep=engine.sleep,
                )
                self.updates += result.outcome == "applied"
