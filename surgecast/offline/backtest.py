"""The backtest harness: a real trace replayed through the policies against the simulator.

A backtest turns a trace into per-second arrivals, simulates every policy on the same arrivals,
profile and settings, and summarises each run (DESIGN.md section 5). surgecast runs the same
forecasting and planning code as production: a model fitted on the days before the simulated
span and refitted on a cadence with data before each refit only, a forecast every ``every_s``
from the minute means observed so far, and the planner's proactive two-stage policy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from actuator.guards import Bounds, hold_scale_in, within_bounds
from forecasting.cleaning import fill_gaps
from forecasting.errors import BadInputError
from forecasting.models import CeemdanHybrid
from planner.dp import StageConfig, horizontal
from planner.policy import PolicySettings
from planner.profiles import Pipeline
from surgecast.offline.policies import HPA, VPA, Proactive, Static, ThemisReactive
from surgecast.offline.simulator import (
    SimulationResult,
    SimulationSettings,
    StageView,
    per_minute,
    simulate,
)

QUANTILE_LEVELS: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99)
"""The forecast quantiles every forecaster answers (the Forecast contract's)."""

POLICIES: tuple[str, ...] = ("hpa", "vpa", "themis", "surgecast", "oracle", "static-peak")
"""Every policy a backtest can run, in report order."""


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
        cold_start_s: seconds before a new replica serves.
        resize_s: seconds an in-place resize takes.
        stabilisation_s: no replica removed within this long after a scale-up (every policy).
        resize_stabilisation_s: no in-place core reduction within this long after a scale-up.
        hpa_target_above_plan: CPU target of the HPA that runs above surgecast's planned floor.
            The baseline HPA keeps Kubernetes' 70 %, whose 30 % headroom covers its reaction
            time; above a plan the headroom is already in the plan (forecast quantile, √λ) and
            in the in-place bridge, so this HPA only catches what both missed.
        rps_scale: multiplies the trace's rate.
        max_replicas, max_cores: bounds; None = what the profile needs at the trace's peak.
        seed: seed of the arrivals and of the model.
    """

    slo_ms: float = 750.0
    policies: tuple[str, ...] = POLICIES
    start: pd.Timestamp | None = None
    end: pd.Timestamp | None = None
    train_days: float = 4.0
    refit_days: float = 1.0
    every_s: int = 300
    horizon_steps: int = 15
    quantile: float = 0.9
    surge_quantile: float = 0.99
    model: str = "hybrid"
    cold_start_s: int = 30
    resize_s: int = 2
    stabilisation_s: int = 300
    resize_stabilisation_s: int = 60
    hpa_target_above_plan: float = 0.9
    rps_scale: float = 1.0
    max_replicas: int | None = None
    max_cores: int | None = None
    seed: int = 0


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

    def to_json(self) -> dict:
        settings = {
            k: (v.isoformat() if isinstance(v, pd.Timestamp) else v)
            for k, v in asdict(self.settings).items()
        }
        settings["policies"] = list(self.settings.policies)
        n_sec = len(next(iter(self.runs.values())).arrivals) if self.runs else 0
        return {
            "trace": self.trace,
            "profile": self.profile,
            "slo_ms": self.settings.slo_ms,
            "start": self.start.isoformat(),
            "seconds_simulated": n_sec,
            "filled_seconds": self.filled_seconds,
            "bounds": self.bounds,
            "settings": settings,
            "wall_seconds": round(self.seconds, 1),
            "policies": {name: run.summary() for name, run in self.runs.items()},
        }


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

    def __call__(self, now_s: int) -> np.ndarray:
        now = self.sim_start + pd.Timedelta(seconds=now_s)
        refit = pd.Timedelta(days=self.settings.refit_days)
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
        if self.on_forecast is not None:
            self.on_forecast(now, quantiles[self.settings.quantile])
        return quantiles


class OracleForecaster:
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


def run_backtest(
    rps: pd.Series,
    pipeline: Pipeline,
    settings: BacktestSettings,
    *,
    trace_name: str,
    profile_name: str,
    progress: Callable[[str, int, int], None] | None = None,
) -> BacktestResult:
    """Simulate every policy of ``settings`` on ``rps``.

    Args:
        rps: the trace (RPS contract, native step; 1 s or coarser).
        pipeline: the served pipeline's latency profiles.
        settings: see ``BacktestSettings``.
        trace_name, profile_name: for the report.
        progress: called with (policy, seconds done, seconds total).

    Raises:
        BadInputError: a span outside the trace, or too little history before it.
    """
    started = time.perf_counter()
    unknown = [p for p in settings.policies if p not in POLICIES]
    if unknown:
        raise BadInputError(
            f"--policies: unknown {', '.join(unknown)}; choose from {', '.join(POLICIES)}"
        )
    first, last = rps.index[0], rps.index[-1] + (rps.index[1] - rps.index[0])
    start = settings.start or first + pd.Timedelta(days=settings.train_days)
    end = settings.end or last
    needs_history = {"surgecast"} & set(settings.policies)
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
    sim = SimulationSettings(settings.slo_ms, settings.cold_start_s, settings.resize_s)
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
    n_stages = len(pipeline.stages)

    def capacity(stage: int, config: StageConfig) -> float:
        profile = pipeline.stages[stage]
        return config.replicas * float(profile.throughput_rps(config.batch, config.cores))

    def guards(stage: int, view: StageView, now_s: int, last_up: int | None):
        return (
            partial(within_bounds, bounds=bounds),
            partial(
                hold_scale_in,
                current=view.config,
                now_s=now_s,
                last_scale_up_s=last_up,
                window_s=settings.stabilisation_s,
                capacity_rps=partial(capacity, stage),
                resize_window_s=settings.resize_stabilisation_s,
            ),
        )

    forecasts: list[tuple[pd.Timestamp, np.ndarray]] = []
    runs: dict[str, SimulationResult] = {}
    for name in settings.policies:
        policy, initial = _make_policy(
            name,
            pipeline,
            settings,
            bounds,
            counts,
            history,
            start,
            warm,
            median_shape,
            n_stages,
            forecasts,
        )
        initial = [within_bounds(shape, bounds).config for shape in initial]
        report = None if progress is None else partial(progress, name, total=n_sec)
        runs[name] = simulate(
            counts,
            pipeline,
            policy,
            initial,
            sim,
            guards,
            progress=None if report is None else (lambda done, r=report: r(done)),
        )
        if progress is not None:
            progress(name, n_sec, total=n_sec)
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
    )


def _make_policy(
    name: str,
    pipeline: Pipeline,
    settings: BacktestSettings,
    bounds: Bounds,
    counts: np.ndarray,
    history: pd.Series,
    start: pd.Timestamp,
    warm: Sequence[StageConfig],
    median_shape: StageConfig,
    n_stages: int,
    forecasts: list,
):
    def hpa(target: float = 0.7) -> HPA:
        return HPA(
            median_shape.cores,
            median_shape.batch,
            min_replicas=1,
            max_replicas=bounds.max_replicas,
            n_stages=n_stages,
            target=target,
            stabilisation_s=settings.stabilisation_s,
        )

    if name == "hpa":
        policy = hpa()
        first = float(counts[:60].mean())
        per_pod = float(pipeline.stages[0].throughput_rps(median_shape.batch, median_shape.cores))
        replicas = max(1, math.ceil(first / (0.7 * per_pod)))
        return policy, [StageConfig(replicas, median_shape.cores, median_shape.batch)] * n_stages
    if name == "vpa":
        peak = _peak_rps(counts)
        top = horizontal(pipeline, peak, settings.slo_ms, max_replicas=bounds.max_replicas).stages[
            0
        ]
        # Enough replicas to carry the peak at the largest pods: vertical scaling can then cover it.
        per_pod = float(pipeline.stages[0].throughput_rps(top.batch, bounds.max_cores))
        replicas = max(1, math.ceil((peak + math.sqrt(peak)) / per_pod))
        policy = VPA(replicas, top.batch, bounds.max_cores, n_stages=n_stages)
        return policy, [StageConfig(replicas, w.cores, top.batch) for w in warm]
    if name == "themis":
        return ThemisReactive(pipeline, settings.slo_ms, bounds.max_replicas), list(warm)
    if name in ("surgecast", "oracle"):
        planner_settings = PolicySettings(
            slo_ms=settings.slo_ms,
            cold_start_s=float(settings.cold_start_s),
            resize_s=float(settings.resize_s),
            stabilisation_s=float(settings.stabilisation_s),
            resize_stabilisation_s=float(settings.resize_stabilisation_s),
            min_replicas=bounds.min_replicas,
            max_replicas=bounds.max_replicas,
            quantile=settings.quantile,
        )
        if name == "surgecast":
            forecaster = ModelForecaster(
                history, start, settings, on_forecast=lambda t, q: forecasts.append((t, q))
            )
        else:
            forecaster = OracleForecaster(counts, settings.horizon_steps)
        policy = Proactive(
            name,
            pipeline,
            forecaster,
            step_s=60,
            every_s=settings.every_s,
            start=start,
            settings=planner_settings,
            hpa=hpa(settings.hpa_target_above_plan),
            surge_quantile=settings.surge_quantile,
        )
        return policy, list(warm)
    if name == "static-peak":
        shapes = horizontal(
            pipeline, _peak_rps(counts), settings.slo_ms, max_replicas=bounds.max_replicas
        ).stages
        return Static(shapes), list(shapes)
    raise BadInputError(f"--policies: unknown {name}")


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
