"""The backtest harness: a real trace replayed through the controllers that ship, against the
cluster model.

A backtest turns a trace into per-second arrivals and, for every policy, serves them on a fresh
cluster model (:mod:`surgecast.offline.cluster`) whose Deployments, pods, scheduler, kubelet and
HPA controller move on the simulation clock, with the policy's controllers acting through the
cluster port (:mod:`surgecast.offline.engine`). surgecast is the production run: a forecast every
``every_s`` from the minute means observed so far (a model fitted on the days before the span,
refitted on a cadence with data before each refit only), the one planning function
(:func:`surgecast.planning.plan_cycle`) and the real :func:`actuator.apply.actuate`, above which
the model's HPA runs on the pod shape the plan set. The baselines run on the same model, each
swept where it has a setting an operator tunes: the Kubernetes HPA on CPU (``hpa-50`` ..
``hpa-90``, the model's controller fed by the metrics-server model; ``hpa`` is ``hpa-70``'s row
under its old name), the RPS-based HPA a KEDA Prometheus trigger creates (``keda-50`` ..
``keda-90``), the VPA recommender and updater in place, reactive Themis and static peak
provisioning.

The in-place bridge is production's controller too (:mod:`surgecast.offline.bridge`): it ticks
every ``bridge.interval_s`` on a Prometheus-like signal of the simulated load (scraped every
``signal_scrape_s``) and resizes pods inside the envelope of the pipeline's latest plan.

Ablations in every run: ``surgecast-no-bridge`` (the pipeline and the HPA without the in-place
bridge controller) and ``surgecast-no-forecast`` (the HPA above the spec's floor, plus the
bridge, without the pipeline).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from actuator.guards import Bounds, within_bounds
from actuator.port import ClusterPort
from actuator.spec import DEFAULTS, ServiceSpec, WorkloadSpec
from forecasting import DEFAULT_MODEL
from forecasting.cleaning import fill_gaps
from forecasting.errors import BadInputError
from forecasting.models import CeemdanHybrid
from forecasting.trust import PastForecast, Trust, gate
from planner.dp import StageConfig, horizontal
from planner.profiles import Pipeline
from surgecast.offline.bound import LowerBound, lower_bound
from surgecast.offline.bridge import SCRAPE_S, ScrapedRate, bridge_factory
from surgecast.offline.cluster import (
    Clock,
    ClusterModel,
    Node,
    NodePool,
    external_average_value,
)
from surgecast.offline.controllers import PipelineCycle, ThemisController, VpaController
from surgecast.offline.engine import METRIC_RESOLUTION_S, Controller, Engine, StageBinding
from surgecast.offline.port import SimPort
from surgecast.offline.scenarios import apply_scenario
from surgecast.offline.simulator import (
    ROUTINGS,
    SimulationResult,
    per_minute,
)
from surgecast.settings import ForecastSettings, ServiceSettings, Settings

QUANTILE_LEVELS: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99)
"""The forecast quantiles every forecaster answers (the Forecast contract's)."""

HPA_TARGETS: tuple[int, ...] = (50, 60, 70, 80, 90)
"""The targets the HPA baselines are swept over (% of one pod's CPU request, or of one pod's
capacity in requests per second for KEDA)."""
HPA_SWEEP: tuple[str, ...] = tuple(f"hpa-{t}" for t in HPA_TARGETS)
KEDA_SWEEP: tuple[str, ...] = tuple(f"keda-{t}" for t in HPA_TARGETS)
SWEEPS: dict[str, tuple[str, ...]] = {"hpa-sweep": HPA_SWEEP, "keda-sweep": KEDA_SWEEP}
"""Presets ``--policies`` accepts: every target of a sweep."""
HPA_ALIAS = "hpa"
"""The CPU HPA's row under its old name: ``hpa-70``'s run (the common 70 % target), kept in
the results for continuity."""
HPA_ALIAS_OF = "hpa-70"

POLICIES: tuple[str, ...] = (
    HPA_ALIAS,
    *HPA_SWEEP,
    *KEDA_SWEEP,
    "vpa",
    "themis",
    "surgecast",
    "surgecast-no-bridge",
    "surgecast-no-forecast",
    "perfect-forecast",
    "static-peak",
)
"""Every policy a backtest can run, in report order."""

POLICY_NAMES: tuple[str, ...] = (*POLICIES, *SWEEPS)
"""What ``--policies`` accepts: the policies and the sweep presets."""

KEDA_METRIC = "s0-prometheus"
"""The External metric KEDA names after a ScaledObject's first trigger (a Prometheus one)."""
KEDA_QUERY_WINDOW_S = 60.0
"""The trigger's query, ``sum(rate(requests_total[1m]))``: a rate over the last minute."""

ABLATIONS: tuple[str, ...] = ("surgecast-no-bridge", "surgecast-no-forecast")
"""Rows every run that includes surgecast carries beside it."""

NAMESPACE = "inference"
SERVICE = "backtest"
BATCH_ENV = "BATCH_SIZE"
HPA_TARGET = 0.7
"""The CPU target of the ``hpa`` row (``hpa-70``) and of the replicas the VPA runs."""


def sweep_target(name: str) -> tuple[str, float] | None:
    """("hpa" or "keda", target as a fraction) of a swept policy's name, else None."""
    for kind, names in (("hpa", HPA_SWEEP), ("keda", KEDA_SWEEP)):
        if name in names:
            return kind, int(name.rsplit("-", 1)[1]) / 100.0
    return None


def expand_policies(names: Sequence[str]) -> list[str]:
    """The runs ``names`` asks for, in its order: sweep presets expanded, ``hpa`` run as
    ``hpa-70``, each once.

    Raises:
        BadInputError: an unknown name.
    """
    unknown = [p for p in names if p not in POLICY_NAMES]
    if unknown:
        raise BadInputError(
            f"--policies: unknown {', '.join(unknown)}; choose from {', '.join(POLICY_NAMES)}"
        )
    runs: list[str] = []
    for name in names:
        for run in SWEEPS.get(name, (HPA_ALIAS_OF if name == HPA_ALIAS else name,)):
            if run not in runs:
                runs.append(run)
    return runs


@dataclass(frozen=True)
class BacktestSettings:
    """One backtest's settings (everything in results.json's ``settings``).

    Attributes:
        slo_ms: end-to-end latency SLO (ms).
        policies: policies to run.
        start, end: the simulated span (UTC); None = from ``train_days`` after the trace start /
            to the trace end.
        train_days: days before ``start`` the forecaster is first fitted on.
        refit_days: refit cadence of the forecaster (days).
        every_s: seconds between surgecast's plans.
        horizon_steps: forecast steps (1 minute each).
        quantile: the forecast quantile the planner sizes cores for.
        surge_quantile: the forecast quantile the replica count must reach by in-place resizing.
        model: the forecasting model surgecast uses.
        cold_start_s: seconds before a new replica serves: the simulated cluster's pod start (30 s
            for the bundled ResNet18 scenario), also given to the service spec as its cold start.
        resize_s: seconds an in-place resize takes: the median of its log-normal delay.
        resize_spread: sigma of that log-normal (each resize draws its delay from the cluster
            model's seeded generator); 0: every resize takes exactly ``resize_s``.
        node_cores: allocatable cores of each node (16: a common 16-vCPU instance's
            allocatable, rounded; an in-place resize beyond it is Infeasible, one without room
            beside the node's other pods Deferred). None: one node large enough that placement
            never binds (every resize succeeds), for comparison only.
        nodes: nodes at the span's start; None: as many as the run's starting pods need (first
            fit, as the scheduler places them), at least 1.
        max_nodes: the node pool's ceiling (64 by default); None: ``nodes`` (a fixed pool, no
            autoscaler).
            Above ``nodes``, a cluster autoscaler adds nodes for Pending pods and removes
            empty ones.
        node_provision_s: seconds from the autoscaler's scale-up until the new node takes pods.
        scale_down_unneeded_s: seconds a node stays empty before the autoscaler removes it
            (``--scale-down-unneeded-time``).
        stabilisation_s: no replica removed within this long after a scale-up (every policy).
        hpa_target_above_plan: CPU target of the HPA that runs above surgecast's planned floor.
            The baseline HPA keeps Kubernetes' 70 %, whose 30 % headroom covers its reaction
            time; above a plan the headroom is already in the plan (forecast quantile, √λ) and
            in the in-place bridge, so this HPA only catches what both missed.
        signal_scrape_s: scrape interval of the simulated Prometheus the bridge's fast signal
            and KEDA's trigger query come from (s).
        metric_resolution_s: metrics-server's ``--metric-resolution``: how often the CPU the
            HPAs and the VPA see is scraped (s).
        rps_scale: multiplies the trace's rate.
        scenario: a stress scenario reshaping the arrivals, history included
            (:data:`surgecast.offline.scenarios.SCENARIOS`); None: the trace as is.
        scenario_seed: the scenario's seed (when and how high a flash crowd goes).
        no_regret: surgecast's forecast gate (:mod:`forecasting.trust`), as the service spec's
            ``forecast.no_regret``.
        max_replicas, max_cores: bounds; None = what the profile needs at the trace's peak.
        seed: seed of the arrivals and of the model.
        routing: how each stage's Service spreads requests over its Ready pods, each with its
            own queue (:data:`surgecast.offline.simulator.ROUTINGS`): ``round-robin``, what a
            Kubernetes Service gives (kube-proxy picks an endpoint at random, whatever its
            speed); ``least-outstanding`` (a queue-aware router such as Envoy's
            LEAST_REQUEST); ``pooled`` (one queue per stage: perfect balancing), for
            comparison only.
    """

    slo_ms: float = 750.0
    policies: tuple[str, ...] = POLICIES
    start: pd.Timestamp | None = None
    end: pd.Timestamp | None = None
    train_days: float = 4.0
    refit_days: float = 1.0
    every_s: int = int(DEFAULTS.run_interval_s)
    horizon_steps: int = 15
    quantile: float = 0.9
    surge_quantile: float = 0.99
    model: str = DEFAULT_MODEL
    cold_start_s: int = 30
    resize_s: int = int(DEFAULTS.resize_s)
    resize_spread: float = 0.5
    node_cores: int | None = 16
    nodes: int | None = None
    max_nodes: int | None = 64
    node_provision_s: float = 120.0
    scale_down_unneeded_s: float = 600.0
    stabilisation_s: int = int(DEFAULTS.stabilisation_s)
    hpa_target_above_plan: float = 0.9
    signal_scrape_s: float = SCRAPE_S
    metric_resolution_s: float = METRIC_RESOLUTION_S
    rps_scale: float = 1.0
    scenario: str | None = None
    scenario_seed: int = 0
    no_regret: bool = False
    max_replicas: int | None = None
    max_cores: int | None = None
    seed: int = 0
    routing: str = "round-robin"

    def __post_init__(self) -> None:
        checks = (
            ("resize_spread", self.resize_spread, 0.0, 5.0),
            ("node_cores", self.node_cores, 1, None),
            ("nodes", self.nodes, 1, None),
            ("max_nodes", self.max_nodes, 1, None),
            ("node_provision_s", self.node_provision_s, 0.0, None),
            ("scale_down_unneeded_s", self.scale_down_unneeded_s, 0.0, None),
        )
        for name, value, low, high in checks:
            if value is None:
                continue
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= low
                    and (high is None or value <= high)):
                bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
                raise BadInputError(f"{name}: must be a number {bound}, not {value!r}")
        if self.nodes is not None and self.max_nodes is not None and self.max_nodes < self.nodes:
            raise BadInputError(
                f"max_nodes: {self.max_nodes} is fewer than the {self.nodes} starting nodes"
            )


@dataclass
class Arrivals:
    """Per-second arrivals over a span, and where they came from."""

    start: pd.Timestamp
    counts: np.ndarray  # requests per second
    filled_seconds: int  # seconds of no data whose rate was interpolated
    native_step_s: float


def per_second_arrivals(rps: pd.Series, *, scale: float, seed: int) -> Arrivals:
    """Per-second request counts from an RPS history.

    A 1-s trace holds counts: they are kept (thinned binomially when ``scale`` < 1, Poisson
    around ``scale`` × count when > 1). A coarser trace is spread over its intervals with
    seeded Poisson arrivals at its rate. Gaps (NaN) get the rate interpolated across them and
    Poisson arrivals, and are counted.
    """
    step_s = (rps.index[1] - rps.index[0]).total_seconds()
    values = rps.to_numpy(dtype=np.float64)
    missing = ~np.isfinite(values)
    rate = fill_gaps(values, missing) if missing.any() else values
    rng = np.random.default_rng(seed)
    if step_s == 1.0:
        counts = np.where(missing, np.nan, np.round(rate))
        if scale < 1.0:
            known = rng.binomial(np.nan_to_num(counts).astype(np.int64), scale)
        elif scale > 1.0:
            known = rng.poisson(np.nan_to_num(counts) * scale)
        else:
            known = np.nan_to_num(counts)
        counts = np.where(missing, rng.poisson(np.maximum(rate, 0.0) * scale), known)
        filled = int(missing.sum())
    else:
        per = round(step_s)
        if per < 1 or abs(per - step_s) > 1e-9:
            raise BadInputError(f"rps: step of {step_s} s is not a whole number of seconds")
        counts = rng.poisson(np.repeat(np.maximum(rate, 0.0) * scale, per))
        filled = int(missing.sum()) * per
    return Arrivals(rps.index[0], counts.astype(np.float64), filled, step_s)


@dataclass
class BacktestResult:
    """Everything a backtest produced."""

    trace: str
    profile: str
    settings: BacktestSettings
    start: pd.Timestamp
    runs: dict[str, SimulationResult]
    forecasts: list[tuple[pd.Timestamp, np.ndarray]] = field(default_factory=list)
    filled_seconds: int = 0
    seconds: float = 0.0
    bounds: dict = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    scenario: str | None = None
    """What the stress scenario did (None: the trace as is)."""
    bound: LowerBound | None = None
    """The lower bound on core-hours for the span (:mod:`surgecast.offline.bound`)."""
    run_seconds: dict[str, float] = field(default_factory=dict)
    """Wall time of each policy's run; the forecasts, shared by surgecast and its no-bridge
    ablation, are paid by whichever runs first."""

    def to_json(self) -> dict:
        settings = {
            k: (v.isoformat() if isinstance(v, pd.Timestamp) else v)
            for k, v in asdict(self.settings).items()
        }
        settings["policies"] = list(self.settings.policies)
        n_sec = len(next(iter(self.runs.values())).arrivals) if self.runs else 0
        out = {
            "trace": self.trace,
            "profile": self.profile,
            "slo_ms": self.settings.slo_ms,
            "start": self.start.isoformat(),
            "seconds_simulated": n_sec,
            "filled_seconds": self.filled_seconds,
            "bounds": self.bounds,
            "settings": settings,
            "wall_seconds": round(self.seconds, 1),
            **({"scenario": self.scenario} if self.scenario is not None else {}),
            **({"lower_bound": self.bound.to_json()} if self.bound is not None else {}),
            "policies": {
                name: {
                    **run.summary(),
                    **({"core_hours_vs_lower_bound": round(
                        run.summary()["core_hours"] / self.bound.core_hours, 3
                    )} if self.bound is not None and self.bound.core_hours > 0 else {}),
                    **({"wall_seconds": round(self.run_seconds[name], 1)}
                       if name in self.run_seconds else {}),
                    **({"notes": self.notes[name]} if name in self.notes else {}),
                }
                for name, run in self.runs.items()
            },
        }
        if "surgecast" in self.runs:  # the evaluation's bars (docs/evaluation.md)
            from surgecast.offline.bars import check_bars

            out["bars"] = [
                {"bar": b.name, "met": b.met, "detail": b.detail} for b in check_bars(out)
            ]
        return out


def _minute_means(counts: np.ndarray, start: pd.Timestamp) -> pd.Series:
    values = per_minute(counts)
    index = pd.date_range(start, periods=len(values), freq="1min", tz="UTC", name="timestamp")
    return pd.Series(values, index=index, name="rps")


class ModelForecaster:
    """surgecast's forecaster in the backtest: fitted before the span, refitted on a cadence,
    forecasting from the minute means observed so far (never anything later).

    Args:
        history: minute means of the arrivals over training + simulated span.
        sim_start: the timestamp of simulated second 0.
        settings: the backtest settings (model, cadence, quantile, horizon, seed).
    """

    def __init__(
        self,
        history: pd.Series,
        sim_start: pd.Timestamp,
        settings: BacktestSettings,
        on_forecast: Callable[[pd.Timestamp, np.ndarray], None] | None = None,
    ) -> None:
        from forecasting.models import make_model

        self.history = history
        self.sim_start = sim_start
        self.settings = settings
        self.make = partial(
            make_model, settings.model, horizon=settings.horizon_steps, seed=settings.seed
        )
        self.model = None
        self.fitted_at: pd.Timestamp | None = None
        self.on_forecast = on_forecast
        self.fallbacks = 0
        self._answers: dict[int, dict[float, np.ndarray]] = {}
        self.past: list[PastForecast] = []
        self.trust: list[tuple[pd.Timestamp, Trust]] = []

    def __call__(self, now_s: int) -> dict[float, np.ndarray]:
        """The quantile forecasts at ``now_s``. An origin asked again (by an ablation's run)
        gets the same answer without a second fit: it depends on the trace before it only."""
        if now_s in self._answers:
            return self._answers[now_s]
        now = self.sim_start + pd.Timedelta(seconds=now_s)
        refit = pd.Timedelta(days=self.settings.refit_days)
        if self.fitted_at is not None and now < self.fitted_at:
            self.model = None  # an earlier origin than the fit: refit on its own past only
        if self.model is None or now - self.fitted_at >= refit:
            train = self.history.loc[
                now - pd.Timedelta(days=self.settings.train_days) : now - pd.Timedelta(minutes=1)
            ]
            model = self.make()
            if isinstance(model, CeemdanHybrid) and isinstance(self.model, CeemdanHybrid):
                model.reuse_decompositions(self.model)  # refits overlap: decompose new windows
            self.model = model.fit(train)
            self.fitted_at = now
        cutoff = now - pd.Timedelta(minutes=1)  # the last complete minute
        forecast = self.model.forecast(self.history.loc[:cutoff], cutoff=cutoff)
        if forecast.fallback:
            self.fallbacks += 1
        quantiles = {float(q): forecast.quantiles[q].to_numpy() for q in forecast.quantiles}
        if self.settings.no_regret:
            # The forecast stage's gate, as production runs it: scored on the minutes
            # observed up to the cutoff against the forecasts made in the hour before.
            observed = float(self.history.loc[cutoff])
            raw = quantiles
            quantiles, trust = gate(
                raw, observed, self.past, self.history.loc[:cutoff], cutoff
            )
            self.past = [p for p in self.past if p.cutoff >= cutoff - pd.Timedelta(hours=2)]
            self.past.append(PastForecast(cutoff, observed, 60.0, raw))
            self.trust.append((now, trust))
        if self.on_forecast is not None:
            self.on_forecast(now, quantiles[self.settings.quantile])
        self._answers[now_s] = quantiles
        return quantiles


class PerfectForecaster:
    """The true future minute means: what a perfect forecast would say."""

    def __init__(self, counts: np.ndarray, horizon_steps: int) -> None:
        self.counts = counts
        self.horizon_steps = horizon_steps

    def __call__(self, now_s: int) -> dict[float, np.ndarray]:
        window = self.counts[now_s : now_s + 60 * self.horizon_steps]
        minutes = len(window) // 60
        if minutes == 0:
            out = np.full(self.horizon_steps, float(window.mean()) if len(window) else 0.0)
        else:
            out = per_minute(window)
            out = np.concatenate([out, np.full(self.horizon_steps - minutes, out[-1])])
        return dict.fromkeys(QUANTILE_LEVELS, out)


def _peak_rps(counts: np.ndarray) -> float:
    """The peak load to provision for: the highest 1-minute mean of the span."""
    if len(counts) < 60:
        return float(counts.max(initial=0.0))
    return float(per_minute(counts).max())


def default_bounds(pipeline: Pipeline, counts: np.ndarray, slo_ms: float) -> Bounds:
    """Bounds that cap no policy: twice the 1-core replicas the span's per-second peak needs."""
    peak = float(counts.max(initial=1.0))
    replicas = 1
    for profile in pipeline.stages:
        per_replica = max(
            float(profile.throughput_rps(b, 1))
            for b in range(1, profile.max_batch + 1)
            if b == 1 or float(profile.latency_ms(b, 1)) < slo_ms
        )
        replicas = max(replicas, math.ceil(peak / per_replica))
    max_cores = max(p.max_cores for p in pipeline.stages)
    max_batch = max(p.max_batch for p in pipeline.stages)
    return Bounds(1, max(2 * replicas + 4, 8), 1, max_cores, max_batch)


BridgeFactory = Callable[["Engine", ClusterPort, ServiceSpec], Controller]
"""Builds the in-place bridge controller of one run (engine, port, the service's actuator
config); the backtest appends it to the controllers of the policies that ship with it."""

PortFactory = Callable[[ClusterModel], ClusterPort]
"""Builds the cluster port a run's controllers act through, on that run's fresh cluster model
(default :class:`SimPort`, in process). Any other port must serve that very model and leave its
clock to the engine: the replay-equivalence test serves it over HTTP to the official client
(:class:`actuator.kube.KubeApi`), which shows the in-process port changes no decision. What a
factory starts (a server) is its caller's to stop."""


def run_backtest(
    rps: pd.Series,
    pipeline: Pipeline,
    settings: BacktestSettings,
    *,
    trace_name: str,
    profile_name: str,
    progress: Callable[[str, int, int], None] | None = None,
    bridge: BridgeFactory | None = None,
    spec: ServiceSettings | None = None,
    port: PortFactory | None = None,
) -> BacktestResult:
    """Simulate every policy of ``settings`` on ``rps``.

    Args:
        rps: the trace (RPS contract, native step; 1 s or coarser).
        pipeline: the served pipeline's latency profiles.
        settings: see ``BacktestSettings``.
        trace_name, profile_name: for the report.
        progress: called with (policy, seconds done, seconds total).
        bridge: builds the in-place bridge controller of a run (default: production's,
            :func:`surgecast.offline.bridge.bridge_factory`, on a signal scraped every
            ``settings.signal_scrape_s``).
        spec: the service as a config file gives it (``surgecast backtest --config``): its
            bounds bind every policy, and surgecast runs with its guards, step limits, timings,
            forecast and bridge settings; None: a spec built from ``settings``.
        port: builds each run's cluster port on its model (default: :class:`SimPort`).

    Raises:
        BadInputError: a span outside the trace, or too little history before it.
    """
    started = time.perf_counter()
    if settings.routing not in ROUTINGS:
        raise BadInputError(
            f"--routing: unknown {settings.routing!r}; choose from {', '.join(ROUTINGS)}"
        )
    policies = expand_policies(settings.policies)
    if "surgecast" in policies:  # the ablations go beside the headline in every run
        at = policies.index("surgecast") + 1
        policies[at:at] = [a for a in ABLATIONS if a not in policies]
    first, last = rps.index[0], rps.index[-1] + (rps.index[1] - rps.index[0])
    start = settings.start or first + pd.Timedelta(days=settings.train_days)
    end = settings.end or last
    needs_history = {"surgecast", "surgecast-no-bridge"} & set(policies)
    if start < first or end > last or end <= start:
        raise BadInputError(
            f"{trace_name}: span {start.isoformat()} .. {end.isoformat()} is not inside the trace "
            f"({first.isoformat()} .. {last.isoformat()})"
        )
    if needs_history and start - first < pd.Timedelta(days=settings.train_days):
        raise BadInputError(
            f"{trace_name}: surgecast needs {settings.train_days} days of history before "
            f"{start.isoformat()}; the trace starts {first.isoformat()} "
            "(use --start or --train-days)"
        )
    if (start - first).total_seconds() % 60 or (end - start).total_seconds() < 3600:
        raise BadInputError(
            f"{trace_name}: the span must start on a whole minute and last at least 1 hour"
        )
    arrivals = per_second_arrivals(rps.loc[:end], scale=settings.rps_scale, seed=settings.seed)
    offset = int((start - arrivals.start).total_seconds())
    n_sec = int((end - start).total_seconds())
    scenario = None
    if settings.scenario is not None:
        scenario = apply_scenario(
            settings.scenario, arrivals.counts, offset, n_sec, settings.scenario_seed
        )
        arrivals = replace(arrivals, counts=scenario.counts)
    counts = arrivals.counts[offset : offset + n_sec]
    history = _minute_means(arrivals.counts[: offset + n_sec], arrivals.start)

    bounds = default_bounds(pipeline, counts, settings.slo_ms)
    bounds = Bounds(
        1,
        settings.max_replicas or bounds.max_replicas,
        1,
        settings.max_cores or bounds.max_cores,
        bounds.max_batch,
    )
    if spec is not None:
        if len(spec.workloads) != len(pipeline.stages):
            raise BadInputError(
                f"service {spec.name}: {len(spec.workloads)} Deployment(s) for the "
                f"{len(pipeline.stages)} stage(s) of {pipeline.name}"
            )
        bounds = spec.workloads[0].bounds
    first_minute = float(counts[:60].mean())
    warm = list(
        horizontal(pipeline, first_minute, settings.slo_ms, max_replicas=bounds.max_replicas).stages
    )
    median_shape = horizontal(
        pipeline,
        float(np.median(history.to_numpy())),
        settings.slo_ms,
        max_replicas=bounds.max_replicas,
    ).stages[0]
    if bridge is None:
        bridge = bridge_factory(pipeline, settings.slo_ms, scrape_s=settings.signal_scrape_s)
    ctx = _Context(
        pipeline, settings, bounds, counts, history, start, warm, median_shape, bridge,
        port or SimPort, spec,
    )
    if set(policies) - {*HPA_SWEEP, *KEDA_SWEEP, "static-peak"}:
        service_spec(ctx, hpa=True)  # refuse settings the service spec refuses, before any run

    forecasts: list[tuple[pd.Timestamp, np.ndarray]] = []
    model_fc = ModelForecaster(
        history, start, settings, on_forecast=lambda t, q: forecasts.append((t, q))
    ) if needs_history else None
    runs: dict[str, SimulationResult] = {}
    notes: dict[str, str] = {}
    run_seconds: dict[str, float] = {}
    for name in policies:
        report = None if progress is None else partial(progress, name, total=n_sec)
        tick = None if report is None else (lambda done, r=report: r(done))
        run_started = time.perf_counter()
        runs[name], note = _run_on_model(name, ctx, model_fc, tick)
        run_seconds[name] = time.perf_counter() - run_started
        if note:
            notes[name] = note
        if progress is not None:
            progress(name, n_sec, total=n_sec)
    if HPA_ALIAS_OF in runs:
        runs[HPA_ALIAS] = runs[HPA_ALIAS_OF]
        run_seconds[HPA_ALIAS] = run_seconds[HPA_ALIAS_OF]
        notes[HPA_ALIAS] = f"{HPA_ALIAS_OF} under its old name"
    # rows in report order (the sweeps together), whatever order they were asked in
    runs = {name: runs[name] for name in sorted(runs, key=POLICIES.index)}
    return BacktestResult(
        trace=trace_name,
        profile=profile_name,
        settings=settings,
        start=start,
        runs=runs,
        forecasts=forecasts,
        filled_seconds=arrivals.filled_seconds,
        seconds=time.perf_counter() - started,
        bounds=asdict(bounds),
        notes=notes,
        scenario=None if scenario is None else scenario.description,
        bound=lower_bound(counts, pipeline, settings.slo_ms, max_replicas=bounds.max_replicas),
        run_seconds=run_seconds,
    )


@dataclass(frozen=True)
class _Context:
    """What every policy's run shares."""

    pipeline: Pipeline
    settings: BacktestSettings
    bounds: Bounds
    counts: np.ndarray
    history: pd.Series
    start: pd.Timestamp
    warm: list[StageConfig]
    median_shape: StageConfig
    bridge: BridgeFactory
    port: PortFactory = SimPort
    spec: ServiceSettings | None = None


def deployment_names(pipeline: Pipeline) -> list[str]:
    """One Deployment per stage: ``backtest`` for one stage, ``backtest-<i>`` for more."""
    if len(pipeline.stages) == 1:
        return [SERVICE]
    return [f"{SERVICE}-{i}" for i in range(len(pipeline.stages))]


def service_spec(ctx: _Context, *, hpa: bool) -> Settings:
    """The backtest's service, constructed as a config file would give it: active, the
    backtest's SLO, delays, stabilisation, bounds and planning quantile, run every
    ``every_s``; with ``hpa`` its Deployments name their HPA (the actuator then moves its
    ``minReplicas``)."""
    try:
        return _service_spec(ctx, hpa=hpa)
    except (ValueError, TypeError) as exc:  # the spec's own field errors, one line each
        raise BadInputError(f"the backtest's service spec: {exc}") from None


def _service_spec(ctx: _Context, *, hpa: bool) -> Settings:
    s = ctx.settings
    names = deployment_names(ctx.pipeline)
    stages = ctx.pipeline.stage_names if len(names) > 1 else [None]
    given = ctx.spec.workloads if ctx.spec is not None else [None] * len(names)
    workloads = tuple(
        WorkloadSpec(
            deployment=name,
            stage=stage,
            bounds=ctx.bounds if wl is None else wl.bounds,
            hpa=f"{name}-hpa" if hpa else None,
            batch_env=BATCH_ENV,
        )
        for name, stage, wl in zip(names, stages, given, strict=True)
    )
    if ctx.spec is not None:
        # The user's service as its config gives it (guards, steps, timings, bridge, forecast),
        # on the simulated cluster's Deployments, active.
        service = ctx.spec.model_copy(
            update={"name": SERVICE, "namespace": NAMESPACE, "workloads": workloads,
                    "mode": "active", "kill_switch": "surgecast-control"}
        )
        return Settings(source="backtest", services=(service,),
                        run_interval_s=float(service.run_interval_s))
    service = ServiceSettings(
        name=SERVICE,
        query="backtest",
        namespace=NAMESPACE,
        workloads=workloads,
        profile=ctx.pipeline.name,
        slo_ms=float(s.slo_ms),
        mode="active",
        cold_start_s=float(s.cold_start_s),
        resize_s=float(s.resize_s),
        stabilisation_s=float(s.stabilisation_s),
        run_interval_s=float(s.every_s),
        forecast=ForecastSettings(
            plan_quantile=s.quantile, horizon_steps=s.horizon_steps, model=s.model,
            no_regret=s.no_regret,
        ),
    )
    return Settings(source="backtest", services=(service,), run_interval_s=float(s.every_s))


def _model(ctx: _Context, shapes: Sequence[StageConfig]) -> tuple[ClusterModel, ClusterPort]:
    """A fresh cluster with the stages' Deployments at ``shapes``, Ready, at the span's start;
    its nodes (``node_cores`` each; ``nodes`` of them, by default as many as those pods need)
    and, when ``max_nodes`` allows more, the cluster autoscaler of the pool; and the port onto
    it (``ctx.port``, once the Deployments exist).

    Raises:
        BadInputError: a starting pod larger than a node, or more starting pods than
            ``nodes`` can hold (they would never run).
    """
    s = ctx.settings
    if s.node_cores is None:  # one node that never binds: the policies compared on load
        room_m = 1000 * 2 * len(shapes) * ctx.bounds.max_replicas * ctx.bounds.max_cores
        node_m, count, pool = room_m + 64_000, 1, None
    else:
        node_m, count, pool = _node_pool(s, shapes)
    clock = Clock(ctx.start.timestamp())
    model = ClusterModel(
        clock,
        start_delay_s=float(s.cold_start_s),
        resize_delay_s=float(s.resize_s),
        resize_spread=float(s.resize_spread),
        nodes=[Node(f"node-{i + 1}", node_m) for i in range(count)],
        node_pool=pool,
        seed=s.seed,
        follow_clock=False,
    )
    for name, shape in zip(deployment_names(ctx.pipeline), shapes, strict=True):
        model.add_deployment(
            NAMESPACE,
            name,
            replicas=shape.replicas,
            cores=shape.cores,
            batch_env=BATCH_ENV,
            batch=shape.batch,
        )
    return model, ctx.port(model)


def _node_pool(
    s: BacktestSettings, shapes: Sequence[StageConfig]
) -> tuple[int, int, NodePool | None]:
    """Node size (millicores), starting count and the autoscaled pool (None: fixed) for the
    starting pods at ``shapes``.

    Raises:
        BadInputError: a starting pod larger than a node, or more starting pods than
            ``nodes`` can hold (they would never run).
    """
    node_m = 1000 * s.node_cores
    pods_m = [1000 * shape.cores for shape in shapes for _ in range(shape.replicas)]
    if any(m > node_m for m in pods_m):
        raise BadInputError(
            f"node_cores: {s.node_cores} cores per node cannot hold a starting pod of "
            f"{max(pods_m) // 1000} cores"
        )
    needed = nodes_for(pods_m, node_m)
    count = needed if s.nodes is None else s.nodes
    if count < needed:
        raise BadInputError(
            f"nodes: {s.nodes} nodes of {s.node_cores} cores cannot hold the starting pods "
            f"({sum(pods_m) // 1000} cores in {len(pods_m)} pods need {needed})"
        )
    if s.max_nodes is not None and s.max_nodes < count:
        raise BadInputError(
            f"max_nodes: {s.max_nodes} is fewer than the {count} nodes the starting pods need"
        )
    ceiling = count if s.max_nodes is None else s.max_nodes
    pool = None
    if ceiling > count:
        pool = NodePool(
            max_nodes=ceiling,
            provision_s=float(s.node_provision_s),
            scale_down_unneeded_s=float(s.scale_down_unneeded_s),
        )
    return node_m, count, pool


def nodes_for(pods_m: Sequence[int], node_m: int) -> int:
    """Nodes of ``node_m`` millicores that hold pods of ``pods_m`` millicores placed in order,
    each on the first node with room (as the model's scheduler binds them); at least 1."""
    free: list[int] = []
    for m in pods_m:
        slot = next((i for i, room in enumerate(free) if room >= m), None)
        if slot is None:
            free.append(node_m)
            slot = len(free) - 1
        free[slot] -= m
    return max(1, len(free))


def _run_on_model(name: str, ctx: _Context, model_fc: ModelForecaster | None, progress) -> tuple:
    """One policy on the cluster model: (result, note). ``model_fc`` is the forecaster that
    surgecast and its no-bridge ablation share."""
    s, pipeline, bounds = ctx.settings, ctx.pipeline, ctx.bounds
    names = deployment_names(pipeline)
    n_stages = len(pipeline.stages)
    note = ""
    swept = sweep_target(name)
    # The HPA baselines and the VPA run pods of the shape the horizontal DP picks for the
    # trace's median load (what an operator sizes a pod for), as many as carry the span's first
    # minute at the target (the VPA: at the 70 % an operator would run).
    per_pod = float(
        pipeline.stages[0].throughput_rps(ctx.median_shape.batch, ctx.median_shape.cores)
    )
    target = swept[1] if swept else HPA_TARGET
    warm = max(1, math.ceil(float(ctx.counts[:60].mean()) / (target * per_pod)))
    if swept or name == "vpa":
        shapes = [StageConfig(warm, ctx.median_shape.cores, ctx.median_shape.batch)] * n_stages
    elif name == "static-peak":
        shapes = list(
            horizontal(
                pipeline, _peak_rps(ctx.counts), s.slo_ms, max_replicas=bounds.max_replicas
            ).stages
        )
    else:
        # An in-place resize changes CPU, not the server's batch (the actuator writes a batch
        # only into the template, and only with rewrite_template): the pods run at the batch
        # an operator would configure, the one the horizontal DP picks for the span's peak.
        top = horizontal(
            pipeline, _peak_rps(ctx.counts), s.slo_ms, max_replicas=bounds.max_replicas
        ).stages
        shapes = [StageConfig(w.replicas, w.cores, t.batch) for w, t in zip(ctx.warm, top,
                                                                              strict=True)]
    shapes = [within_bounds(shape, bounds).config for shape in shapes]
    model, port = _model(ctx, shapes)
    engine = Engine(
        ctx.counts,
        pipeline,
        model,
        NAMESPACE,
        [StageBinding(n, batch=sh.batch, batch_env=BATCH_ENV) for n, sh in zip(names, shapes,
                                                                                strict=True)],
        slo_ms=s.slo_ms,
        progress=progress,
        routing=s.routing,
        metric_resolution_s=s.metric_resolution_s,
    )
    if swept and swept[0] == "hpa":
        for dep in names:
            model.add_hpa(NAMESPACE, f"{dep}-hpa", dep, min_replicas=1,
                          max_replicas=bounds.max_replicas,
                          target_utilisation=round(100 * swept[1]))
    elif swept:
        # KEDA: a ScaledObject with a Prometheus trigger (query sum(rate(requests_total[1m])),
        # threshold = the target share of one pod's capacity) makes this HPA; its adapter runs
        # the query on the simulated Prometheus whenever the HPA asks.
        scraped = ScrapedRate(engine, s.signal_scrape_s)
        engine.external_metrics[KEDA_METRIC] = lambda: scraped.rate(KEDA_QUERY_WINDOW_S)
        threshold = swept[1] * per_pod
        for dep in names:
            model.add_hpa(
                NAMESPACE, f"keda-hpa-{dep}", dep, min_replicas=1,
                max_replicas=bounds.max_replicas,
                metrics=[external_average_value(
                    KEDA_METRIC, threshold, {"scaledobject.keda.sh/name": dep}
                )],
            )
        note = f"threshold {threshold:.1f} rps per pod"
    elif name in ("themis", "vpa"):
        spec = service_spec(ctx, hpa=False)
        config = spec.actuator_config(SERVICE)
        batch = tuple(sh.batch for sh in shapes)
        if name == "themis":
            controller = ThemisController(
                engine, port, config, pipeline, spec.service(SERVICE).policy(), batch
            )
        else:
            controller = VpaController(engine, port, config, batch)
            _seed_vpa(controller, ctx, shapes)
        engine.controllers.append(controller)
    elif name != "static-peak":
        spec = service_spec(ctx, hpa=True)
        config = spec.actuator_config(SERVICE)
        no_forecast = name == "surgecast-no-forecast"
        for dep, shape in zip(names, shapes, strict=True):
            # Without the pipeline, the HPA stays at the spec's floor; with it, it starts at
            # the warm shape and the actuator moves its minReplicas.
            low = bounds.min_replicas if no_forecast else max(1, shape.replicas)
            model.add_hpa(NAMESPACE, f"{dep}-hpa", dep, min_replicas=low,
                          max_replicas=bounds.max_replicas,
                          target_utilisation=round(100 * s.hpa_target_above_plan))
        if no_forecast:
            note = "the HPA above the spec's floor and the bridge, without the pipeline"
        else:
            svc = spec.service(SERVICE)
            if name == "perfect-forecast":
                perfect = PerfectForecaster(ctx.counts, s.horizon_steps)
                forecaster = _at(perfect, ctx.start)
            else:
                forecaster = _at(model_fc, ctx.start)
            engine.controllers.append(
                PipelineCycle(
                    name,
                    engine,
                    port,
                    config,
                    pipeline,
                    svc.policy(),
                    forecaster,
                    batch=tuple(sh.batch for sh in shapes),
                    surge_quantile=s.surge_quantile,
                )
            )
        if name == "surgecast-no-bridge":
            note = "the pipeline and the HPA above the plan, without the in-place bridge"
        else:
            engine.controllers.append(ctx.bridge(engine, port, config))
    result = engine.run()
    if s.node_cores is None:
        result.node_cores = None  # one node that never binds: no node cost to report
    result.policy = name
    return result, note


def _seed_vpa(vpa: VpaController, ctx: _Context, shapes: Sequence[StageConfig]) -> None:
    """The recommender's checkpoint at the span's start: a sample a minute per pod over the
    ``train_days`` before it, of the CPU the pods at their starting shape would have used then
    (each stage's load spread evenly, at most the pods' cores; the load is the first stage's
    for every stage, as the serving model passes it on)."""
    before = ctx.history.loc[: ctx.start - pd.Timedelta(minutes=1)]
    before = before.loc[ctx.start - pd.Timedelta(days=ctx.settings.train_days) :]
    if before.empty:
        return
    times = before.index.map(lambda t: t.timestamp()).to_numpy()
    load = np.nan_to_num(before.to_numpy(dtype=np.float64))
    for i, (shape, profile) in enumerate(zip(shapes, ctx.pipeline.stages, strict=True)):
        capacity = shape.replicas * float(profile.throughput_rps(shape.batch, shape.cores))
        used = shape.cores * np.minimum(1.0, load / capacity)
        vpa.seed(i, times, used, float(shape.cores), shape.replicas)


def _at(forecaster, start: pd.Timestamp):
    """A forecaster of seconds since the span's start, called with timestamps."""
    return lambda now: forecaster(int((now - start).total_seconds()))


def write_results(result: BacktestResult, out: Path) -> tuple[Path, Path]:
    """Write DIR/results.json and DIR/report.html."""
    import json

    from surgecast.offline.backtest_report import render_backtest_html

    out.mkdir(parents=True, exist_ok=True)
    js = out / "results.json"
    js.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    html = out / "report.html"
    html.write_text(render_backtest_html(result))
    return js, html
