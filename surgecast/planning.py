"""Wiring for the planner stage: profiles by file or name, Forecast JSON files, cluster states.

The planner itself takes load arrays; this module turns what ``surgecast forecast --json`` writes
into the quantile array, step and cutoff the planner needs, and turns command-line strings into
a :class:`~planner.policy.ClusterState`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from forecasting.errors import BadInputError
from planner.dp import Decision, StageConfig, assess, horizontal, vertical
from planner.errors import PlannerInputError
from planner.plan import Plan, utc_timestamp
from planner.policy import ClusterState, PolicySettings, plan_two_stage
from planner.profiles import DEFAULT_MEMORY_MB, Pipeline, bundled_profile, load_pipeline


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


def read_forecast_json(path: str | Path) -> ForecastLoad:
    """Read what ``Forecast.to_dict`` wrote (``surgecast forecast --json``).

    Raises:
        BadInputError: missing file, invalid JSON, missing keys, or arrays that do not match.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: forecast file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{path}: not a forecast JSON file: {exc}") from None
    missing = [k for k in ("model", "cutoff", "step_s", "ds", "mean", "quantiles") if k not in data]
    if missing:
        raise BadInputError(f"{path}: missing key(s) {', '.join(missing)}")
    try:
        cutoff = utc_timestamp(data["cutoff"], f"{path}: cutoff")
        ds = tuple(utc_timestamp(t, f"{path}: ds") for t in data["ds"])
        mean = np.asarray(data["mean"], dtype=np.float64)
        quantiles = {
            float(k): np.asarray(v, dtype=np.float64) for k, v in data["quantiles"].items()
        }
        step_s = float(data["step_s"])
    except (PlannerInputError, TypeError, ValueError, AttributeError) as exc:
        raise BadInputError(f"{path}: malformed forecast: {exc}") from None
    lengths = {len(ds), len(mean), *(len(v) for v in quantiles.values())}
    if len(lengths) != 1 or not ds or not quantiles:
        raise BadInputError(f"{path}: ds, mean and every quantile need the same, non-zero length")
    return ForecastLoad(str(data["model"]), cutoff, step_s, ds, mean, quantiles)


def parse_counts(text: str | None, stages: int, what: str) -> tuple[int, ...] | None:
    """``"3"`` (every stage) or ``"3,2"`` (one per stage) as integers >= 1; None stays None.

    Raises:
        PlannerInputError: not integers >= 1, or not one value or one per stage.
    """
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        raise PlannerInputError(
            f"{what}: {text!r} is not a comma-separated list of integers"
        ) from None
    if len(values) == 1:
        values = values * stages
    if len(values) != stages or any(v < 1 for v in values):
        raise PlannerInputError(
            f"{what}: {text!r}: give one integer >= 1, or one per stage ({stages})"
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
