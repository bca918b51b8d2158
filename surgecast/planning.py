"""Wiring for the planner stage: profiles by file or name, Forecast JSON files, cluster states.

The planner itself takes load arrays; this module turns what ``surgecast forecast --json`` writes
into the quantile array, step and cutoff the planner needs, and turns command-line strings into
a :class:`~planner.policy.ClusterState`.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from forecasting.errors import BadInputError, first_problem
from planner.dp import Decision, StageConfig, assess, horizontal, vertical
from planner.errors import PlannerInputError
from planner.plan import Plan, utc_timestamp
from planner.policy import ClusterState, PolicySettings, plan_two_stage
from planner.profiles import DEFAULT_MEMORY_MB, Pipeline, bundled_profile, load_pipeline

_Rps = Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)]
"""A load in requests per second: finite, >= 0, and below a billion."""


def load_profile(
    file_or_name: str,
    *,
    max_cores: int | None = None,
    max_batch: int | None = None,
    memory_mb: float = DEFAULT_MEMORY_MB,
) -> Pipeline:
    """A profile, pipeline or measurement CSV by path, else a bundled profile by name.

    Raises:
        PlannerInputError: no such file or bundled profile, or a bad one.
    """
    path = Path(file_or_name)
    if not path.exists():
        path = bundled_profile(file_or_name)
    return load_pipeline(path, max_cores=max_cores, max_batch=max_batch, memory_mb=memory_mb)


@dataclass(frozen=True)
class ForecastLoad:
    """A Forecast as read back from JSON: what the planner needs of it.

    Attributes:
        model: the forecasting model's name.
        cutoff: last observation used (UTC).
        step_s: spacing of the horizon (s).
        ds: target times, cutoff + h·step for h = 1..H.
        mean: mean forecast (rps), length H.
        quantiles: probability -> forecast quantile (rps), each of length H.
    """

    model: str
    cutoff: pd.Timestamp
    step_s: float
    ds: tuple[pd.Timestamp, ...]
    mean: np.ndarray
    quantiles: dict[float, np.ndarray]

    def quantile(self, q: float) -> np.ndarray:
        """The forecast at probability ``q``.

        Raises:
            BadInputError: the forecast has no such quantile; the message lists those it has.
        """
        for key, values in self.quantiles.items():
            if math.isclose(key, q, abs_tol=1e-9):
                return values
        have = ", ".join(f"{k:g}" for k in sorted(self.quantiles))
        raise BadInputError(f"--quantile {q:g}: not in the forecast; it has {have}")


MAX_FORECAST_BYTES = 16 * 1024 * 1024
"""Largest forecast file read (16 MiB; a day of minutes with four quantiles is ~200 kB)."""

MAX_FORECAST_STEPS = 10_080
"""Longest forecast horizon a plan is made for: a week of minutes."""


class _ForecastFile(BaseModel):
    """The schema of what ``Forecast.to_dict`` writes (``surgecast forecast --json``).

    Strict: numbers must be JSON numbers (not strings or booleans), finite and >= 0; every array
    has the horizon's length; ``ds`` is ``cutoff + h·step_s`` for h = 1..H.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1, max_length=200)
    cutoff: str = Field(max_length=64)
    step_s: float = Field(gt=0, le=86_400, allow_inf_nan=False)
    fallback: str | None = None
    ds: list[Annotated[str, Field(max_length=64)]] = Field(
        min_length=1, max_length=MAX_FORECAST_STEPS
    )
    mean: list[_Rps] = Field(min_length=1, max_length=MAX_FORECAST_STEPS)
    quantiles: dict[str, list[_Rps]] = Field(min_length=1, max_length=32)


def read_forecast_json(path: str | Path) -> ForecastLoad:
    """Read what ``Forecast.to_dict`` wrote (``surgecast forecast --json``).

    Raises:
        BadInputError: one line naming the file and the first problem: missing, non-regular or
            oversized file, invalid JSON, a field missing, unknown, of the wrong type or out
            of range, arrays of different lengths, timestamps off the step grid, quantile
            levels outside (0, 1), or quantiles that cross.
    """
    path = Path(path)
    try:
        if not path.exists():
            raise BadInputError(f"{path}: forecast file not found")
        if not path.is_file():
            raise BadInputError(f"{path}: not a regular file (a forecast JSON file is needed)")
        size = path.stat().st_size
        if size > MAX_FORECAST_BYTES:
            raise BadInputError(f"{path}: {size:,} bytes is too large for a forecast file")
        data = json.loads(path.read_text(encoding="utf-8"))
    except BadInputError:
        raise
    except (OSError, ValueError, RecursionError) as exc:
        if isinstance(exc, UnicodeDecodeError):
            problem = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
        elif isinstance(exc, RecursionError):
            problem = "JSON nested too deeply"
        else:
            problem = str(exc)
        raise BadInputError(f"{path}: not a forecast JSON file: {problem}") from None
    if not isinstance(data, dict):
        raise BadInputError(f"{path}: a forecast file holds one JSON object")
    try:
        parsed = _ForecastFile.model_validate(data)
    except ValidationError as exc:
        raise BadInputError(f"{path}: {first_problem(exc, 'file')}") from None
    try:
        cutoff = utc_timestamp(parsed.cutoff, f"{path}: cutoff")
        ds = tuple(utc_timestamp(t, f"{path}: ds") for t in parsed.ds)
    except BadInputError:
        raise
    except (OverflowError, ValueError) as exc:
        raise BadInputError(f"{path}: timestamp out of range: {exc}") from None
    quantiles: dict[float, np.ndarray] = {}
    for key, values in parsed.quantiles.items():
        try:
            level = float(key)
        except ValueError:
            raise BadInputError(f"{path}: quantiles: {key[:40]!r} is not a probability") from None
        if not 0 < level < 1:
            raise BadInputError(f"{path}: quantiles: {key!r} is not in (0, 1)")
        if level in quantiles:
            raise BadInputError(f"{path}: quantiles: {key!r} is given twice")
        quantiles[level] = np.asarray(values, dtype=np.float64)
    mean = np.asarray(parsed.mean, dtype=np.float64)
    lengths = {len(ds), len(mean), *(len(v) for v in quantiles.values())}
    if len(lengths) != 1:
        raise BadInputError(f"{path}: ds, mean and every quantile need the same length")
    step = pd.Timedelta(seconds=parsed.step_s)
    expected = cutoff + step * np.arange(1, len(ds) + 1)
    off = [i for i, (t, e) in enumerate(zip(ds, expected, strict=True)) if t != e]
    if off:
        i = off[0]
        raise BadInputError(
            f"{path}: ds[{i}] is {ds[i].isoformat()}, expected cutoff + {i + 1} x step_s = "
            f"{pd.Timestamp(expected[i]).isoformat()}"
        )
    levels = sorted(quantiles)
    for low, high in itertools.pairwise(levels):
        crossing = np.flatnonzero(quantiles[low] > quantiles[high] + 1e-9)
        if crossing.size:
            i = int(crossing[0])
            raise BadInputError(
                f"{path}: quantiles cross at ds[{i}]: q{low:g} {quantiles[low][i]:g} > "
                f"q{high:g} {quantiles[high][i]:g}"
            )
    return ForecastLoad(parsed.model, cutoff, parsed.step_s, ds, mean, quantiles)


def parse_counts(
    text: str | None, stages: int, what: str, high: int = 1_000_000
) -> tuple[int, ...] | None:
    """``"3"`` (every stage) or ``"3,2"`` (one per stage) as integers in [1, high]; None stays
    None.

    Raises:
        PlannerInputError: not integers in [1, high], or not one value or one per stage.
    """
    if text is None:
        return None
    parts = [v.strip() for v in str(text).split(",")]
    if not all(re.fullmatch(r"\d{1,9}", v) for v in parts):
        raise PlannerInputError(
            f"{what}: {str(text)[:40]!r} is not a comma-separated list of integers"
        )
    values = tuple(int(v) for v in parts)
    if len(values) == 1:
        values = values * stages
    if len(values) != stages or any(not 1 <= v <= high for v in values):
        raise PlannerInputError(
            f"{what}: {text!r}: give one integer in [1, {high}], or one per stage ({stages})"
        )
    return values


def cluster_state(
    pipeline: Pipeline,
    replicas: tuple[int, ...] | None,
    cores: tuple[int, ...] | None,
    batch: tuple[int, ...] | None,
    default: Decision,
) -> ClusterState:
    """The current state from the given counts; what is not given comes from ``default``."""
    return ClusterState(
        replicas if replicas is not None else default.replicas,
        cores if cores is not None else default.cores,
        batch if batch is not None else default.batch,
    )


@dataclass(frozen=True)
class Decisions:
    """The two DPs' answers for one load, and what the current state gives."""

    horizontal: Decision
    vertical: Decision
    current: Decision | None


def decide(
    pipeline: Pipeline,
    rps: float,
    slo_ms: float,
    *,
    replicas: tuple[int, ...] | None,
    cores: tuple[int, ...] | None,
    batch: tuple[int, ...] | None,
    max_replicas: int | None = None,
) -> Decisions:
    """DP 1 and DP 2 for a load; DP 2 resizes ``replicas`` (default one per stage)."""
    stages = len(pipeline.stages)
    current_replicas = replicas if replicas is not None else (1,) * stages
    h = horizontal(pipeline, rps, slo_ms, max_replicas=max_replicas)
    v = vertical(pipeline, rps, slo_ms, current_replicas, max_replicas=max_replicas)
    current = None
    if cores is not None:
        configs = [
            StageConfig(n, c, b)
            for n, c, b in zip(current_replicas, cores, batch or (1,) * stages, strict=True)
        ]
        current = assess(pipeline, configs, rps, slo_ms)
    return Decisions(h, v, current)


def plan_from_forecast(
    service: str,
    pipeline: Pipeline,
    forecast: ForecastLoad,
    settings: PolicySettings,
    *,
    observed_rps: float | None,
    replicas: tuple[int, ...] | None,
    cores: tuple[int, ...] | None,
    batch: tuple[int, ...] | None,
    last_scale_up_at: str | None = None,
) -> Plan:
    """The two-stage plan for a forecast at ``settings.quantile``.

    The observed load defaults to the forecast mean of the first step; the current state
    defaults to the horizontal optimum for the observed load (what a reactive planner runs).
    """
    loads = forecast.quantile(settings.quantile)
    observed = float(forecast.mean[0]) if observed_rps is None else observed_rps
    reactive = horizontal(
        pipeline,
        observed,
        settings.slo_ms,
        min_replicas=settings.min_replicas,
        max_replicas=settings.max_replicas,
    )
    state = cluster_state(pipeline, replicas, cores, batch, reactive)
    last_up = (
        None if last_scale_up_at is None else utc_timestamp(last_scale_up_at, "--last-scale-up-at")
    )
    return plan_two_stage(
        service,
        pipeline,
        state,
        observed,
        loads,
        forecast.step_s,
        forecast.cutoff,
        settings,
        last_scale_up_at=last_up,
    )


@dataclass(frozen=True)
class PlanOutcome:
    """What ``surgecast plan`` answers: the decisions for a load, or a timed plan for a
    forecast; ``infeasible`` says why no answer meets the SLO within the bounds (None: all do).
    """

    pipeline: Pipeline
    decisions: Decisions | None = None
    plan: Plan | None = None
    infeasible: str | None = None


def plan_stage(
    profile: str,
    slo_ms: float,
    *,
    rps: float | None = None,
    forecast_file: str | Path | None = None,
    replicas: str | None = None,
    cores: str | None = None,
    batch: str | None = None,
    quantile: float = 0.95,
    cold_start_s: float | None = None,
    resize_s: float | None = None,
    stabilisation_s: float | None = None,
    last_scale_up_at: str | None = None,
    min_replicas: int = 1,
    max_replicas: int = 1_000_000,
    max_cores: int | None = None,
    max_batch: int | None = None,
    service: str | None = None,
    limits: tuple[int, int, int] = (1_000_000, 1_000_000, 1_000_000),
) -> PlanOutcome:
    """The planner stage as ``surgecast plan`` runs it: the profile by file or name, the
    current state from counts (``"3"`` or ``"3,2"``), then the two DPs for the load ``rps``,
    or, with a ``forecast_file``, the two-stage plan ahead at ``quantile`` with the service
    spec's timings where none are given. ``limits`` bound the replicas, cores and batch counts.

    Raises:
        BadInputError: a bad profile, forecast file, count, time or service name.
    """
    from actuator.spec import DEFAULTS, DNS_LABEL

    if forecast_file is None and rps is None:
        raise BadInputError("--rps: give the load to size for, or a --forecast file")
    if max_replicas < min_replicas:
        raise BadInputError(
            f"--max-replicas: {max_replicas} is below --min-replicas {min_replicas}"
        )
    pipeline = load_profile(profile, max_cores=max_cores, max_batch=max_batch)
    stages = len(pipeline.stages)
    counts = [
        parse_counts(value, stages, flag, high)
        for value, flag, high in zip(
            (replicas, cores, batch), ("--replicas", "--cores", "--batch"), limits, strict=True
        )
    ]
    if forecast_file is None:
        decisions = decide(
            pipeline, rps, slo_ms, replicas=counts[0], cores=counts[1], batch=counts[2],
            max_replicas=max_replicas,
        )
        infeasible = [
            label
            for label, d in (("horizontal", decisions.horizontal), ("vertical", decisions.vertical))
            if not d.feasible
        ]
        why = None if not infeasible else (
            f"INFEASIBLE: no {' or '.join(infeasible)} decision meets the {slo_ms:g} ms SLO at "
            f"{rps:g} rps within the bounds"
        )
        return PlanOutcome(pipeline, decisions=decisions, infeasible=why)
    name = service or pipeline.name
    if not DNS_LABEL.match(name):  # the service spec's one name rule
        raise BadInputError(
            f"--service: the profile's name {name!r} is not a valid Kubernetes name "
            "(DNS-1123 label); give --service"
        )
    settings = PolicySettings(
        slo_ms=slo_ms,
        cold_start_s=DEFAULTS.cold_start_s if cold_start_s is None else cold_start_s,
        resize_s=DEFAULTS.resize_s if resize_s is None else resize_s,
        stabilisation_s=DEFAULTS.stabilisation_s if stabilisation_s is None else stabilisation_s,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        quantile=quantile,
    )
    plan = plan_from_forecast(
        name,
        pipeline,
        read_forecast_json(forecast_file),
        settings,
        observed_rps=rps,
        replicas=counts[0],
        cores=counts[1],
        batch=counts[2],
        last_scale_up_at=last_scale_up_at,
    )
    bad = [i for i, step in enumerate(plan.steps, start=1) if not step.feasible]
    why = None if not bad else (
        f"INFEASIBLE: plan step(s) {', '.join(map(str, bad))} cannot meet the {slo_ms:g} ms "
        "SLO within the bounds (see the reasons above)"
    )
    return PlanOutcome(pipeline, plan=plan, infeasible=why)


# --------------------------------------------------------------------------------------------
# one pipeline cycle's plan: the live plan stage and the backtest call this, nothing else


SURGE_QUANTILE = 0.99
"""The forecast quantile the replica count must reach by resizing in place, when the forecast
carries it (the bundled quantiles do)."""


def decision_steps(run_interval_s: float, cold_start_s: float, step_s: float) -> int:
    """Forecast steps that decide anything now (a receding horizon): until the next run, plus a
    cold start (what the next run could no longer start in time), plus one step. Later steps are
    planned again, with a fresher forecast, by the next run."""
    lead = float(run_interval_s) + float(cold_start_s)
    return max(1, math.ceil(lead / float(step_s)) + 1)


def replicas_reaching(pipeline: Pipeline, rps: float, slo_ms: float) -> int:
    """Fewest replicas per stage that carry ``rps`` (with Poisson headroom) once resized in
    place to the largest pods, at a batch whose service time leaves half the SLO for queueing."""
    from planner.queueing import headroom_rps

    need = headroom_rps(rps)
    most = 1
    for profile in pipeline.stages:
        best = max(
            (
                float(profile.throughput_rps(b, profile.max_cores))
                for b in range(1, profile.max_batch + 1)
                if float(profile.latency_ms(b, profile.max_cores)) <= slo_ms / 2
            ),
            default=float(profile.throughput_rps(1, profile.max_cores)),
        )
        most = max(most, math.ceil(need / best))
    return most


def plan_cycle(
    service: str,
    pipeline: Pipeline,
    state: ClusterState,
    observed_rps: float,
    quantiles: dict[float, np.ndarray],
    step_s: float,
    cutoff,
    settings: PolicySettings,
    *,
    run_interval_s: float,
    surge_quantile: float | None = SURGE_QUANTILE,
    last_scale_up_at=None,
) -> Plan:
    """The plan of one pipeline run, the same in production and in the backtest.

    Two choices on top of :func:`planner.policy.plan_two_stage`:

    * cores for the planning quantile (``settings.quantile``), replicas for the surge quantile:
      the replica floor is what, resized in place to the largest pods (seconds), carries the
      surge quantile's peak, so a cold start is never on a surge's critical path, and cores are
      paid only for the likely load;
    * a receding horizon: only the steps that decide anything now
      (:func:`decision_steps`) go to the planner.

    Args:
        quantiles: forecast load per quantile (probability -> steps 1..H after ``cutoff``); the
            planning quantile must be there; without the surge quantile there is no floor.
        run_interval_s: time to the next run (s).
        surge_quantile: None: no surge floor.
        Others: as :func:`planner.policy.plan_two_stage`.

    Raises:
        PlannerInputError: the planning quantile is missing, or bad planner inputs.
    """
    loads = _quantile(quantiles, settings.quantile)
    if loads is None:
        raise PlannerInputError(
            f"the forecast has no {settings.quantile} quantile (has "
            f"{sorted(float(q) for q in quantiles)})"
        )
    steps = decision_steps(run_interval_s, settings.cold_start_s, step_s)
    surge = None if surge_quantile is None else _quantile(quantiles, surge_quantile)
    if surge is not None and len(surge):
        peak = float(np.max(np.asarray(surge, dtype=np.float64)[:steps]))
        if math.isfinite(peak) and peak >= 0:
            floor = replicas_reaching(pipeline, peak, settings.slo_ms)
            ceiling = settings.max_replicas or 10**9
            settings = replace(
                settings, min_replicas=min(max(settings.min_replicas, floor), ceiling)
            )
    return plan_two_stage(
        service,
        pipeline,
        state,
        observed_rps,
        np.asarray(loads, dtype=np.float64)[:steps],
        step_s,
        cutoff,
        settings,
        last_scale_up_at=last_scale_up_at,
    )


def _quantile(quantiles: dict, q: float):
    for key, values in quantiles.items():
        if math.isclose(float(key), float(q)):
            return values
    return None


def reactive_floors(
    pipeline: Pipeline,
    policy: PolicySettings,
    observed_rps: float,
    window_peak_rps: float | None = None,
) -> dict:
    """The actuator's reactive floor per stage: the horizontal optimum for the observed load,
    and the peak observed over the stabilisation window that a scale-in must carry. The live
    pipeline and the backtest hand these to :func:`actuator.apply.actuate`."""
    from actuator.target import Floor
    from planner.queueing import load_within_headroom

    decision = horizontal(
        pipeline,
        observed_rps,
        policy.slo_ms,
        min_replicas=policy.min_replicas,
        max_replicas=policy.max_replicas,
    )
    floors = {}
    for i, (profile, config) in enumerate(zip(pipeline.stages, decision.stages, strict=True)):

        def capacity(cfg, profile=profile) -> float:
            return load_within_headroom(profile.capacity_rps(cfg))

        floors[i] = Floor(
            observed_rps=observed_rps,
            capacity_rps=capacity,
            floor=config,
            window_peak_rps=window_peak_rps,
        )
    return floors
