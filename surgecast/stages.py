"""Stage functions shared by the CLI (and later by Airflow): I/O at the edges, stages inside."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from forecasting.cleaning import clean_window
from forecasting.decomposition import BACKENDS, Decomposition, decompose, warm_up
from forecasting.errors import BadInputError
from surgecast.sources import DEFAULT_TRACE, bundled_trace, load_rps_csv


def resolve_trace(trace: str | Path | None) -> Path:
    """A trace argument as a file: an existing path, else the name of a bundled trace."""
    if trace is None:
        return bundled_trace(DEFAULT_TRACE)
    path = Path(trace)
    if path.exists() or path.suffix == "" or len(path.parts) > 1:
        return path
    return bundled_trace(str(trace))


def parse_utc(text: str, what: str) -> pd.Timestamp:
    """An ISO 8601 timestamp with an explicit UTC offset ('Z' or +00:00)."""
    try:
        ts = pd.Timestamp(text)
    except (ValueError, TypeError):
        raise BadInputError(f"{what}: cannot parse {text!r} as an ISO 8601 timestamp") from None
    if ts.tzinfo is None:
        raise BadInputError(f"{what}: {text!r} has no time zone; give it in UTC, e.g. {text}Z")
    if ts.utcoffset() != pd.Timedelta(0):
        raise BadInputError(f"{what}: {text!r} is not UTC (offset {ts.utcoffset()})")
    return ts.tz_convert("UTC")


@dataclass(frozen=True)
class DecompositionResult:
    """What ``surgecast decompose`` computed, with the cleaned window it decomposed."""

    source: str
    step: str
    window: pd.Series
    decomposition: Decomposition
    filled_points: int
    seconds: float

    @property
    def cutoff(self) -> str:
        return self.decomposition.cutoff.strftime("%Y-%m-%dT%H:%M:%SZ")

    @property
    def backend(self) -> str:
        return self.decomposition.backend

    def summary(self) -> dict:
        dec = self.decomposition
        k = dec.n_imfs
        found = dec.imfs_found
        if found > k:
            found_text = f"more than {k} IMFs found, lower ones merged into the residue"
        elif found < k:
            found_text = f"{found} IMFs found, padded to {k} with zero rows"
        else:
            found_text = f"{found} IMFs found"
        return {
            "trace": self.source,
            "cutoff": self.cutoff,
            "step": self.step,
            "components": k,
            "window": len(self.window),
            "trials": dec.settings.trials,
            "seed": dec.settings.seed,
            "backend": dec.backend,
            "seconds": round(self.seconds, 4),
            "reconstruction_error": dec.reconstruction_error(self.window),
            "filled_points": self.filled_points,
            "imfs_found": dec.imfs_found,
            "imfs_found_text": found_text,
        }

    def component_stats(self) -> list[dict]:
        """Per component: std, share of the summed variances, mean period from zero crossings."""
        comps = self.decomposition.components
        variances = comps.var(ddof=0)
        total = float(variances.sum()) or 1.0
        step_s = pd.Timedelta(self.step).total_seconds()
        rows = []
        for name in comps.columns:
            values = comps[name].to_numpy()
            centred = values - values.mean() if name == "residue" else values
            crossings = int(np.count_nonzero(centred[:-1] * centred[1:] < 0))
            if name == "residue":
                merged = self.decomposition.imfs_found > self.decomposition.n_imfs
                period = "trend + lower IMFs" if merged else "trend"
            elif crossings < 2:
                period = "-"
            else:
                period = _duration(2 * len(values) / crossings * step_s)
            rows.append(
                {
                    "name": name,
                    "std_rps": float(np.sqrt(variances[name])),
                    "variance_share": float(variances[name]) / total,
                    "period": period,
                }
            )
        return rows


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def decompose_trace(
    trace: str | Path | None,
    *,
    at: str | None = None,
    window: int = 1440,
    step: str = "1min",
    n_imfs: int = 8,
    trials: int = 100,
    seed: int = 0,
    backend: str = "fast",
    max_gap_steps: int = 60,
) -> DecompositionResult:
    """Load a trace, clean the window that ends at ``at`` and decompose it with CEEMDAN."""
    if backend not in BACKENDS:
        raise BadInputError(f"--backend: unknown {backend!r}; choose one of {', '.join(BACKENDS)}")
    path = resolve_trace(trace)
    rps = load_rps_csv(path, step=step)
    end = parse_utc(at, "--at") if at is not None else None
    cleaned = clean_window(
        rps, end=end, window_steps=window, max_gap_steps=max_gap_steps, source=str(path)
    )
    if backend == "fast":
        warm_up()  # compiling the kernels is not part of the decomposition's time
    started = time.perf_counter()
    dec = decompose(
        cleaned.rps, window=window, n_imfs=n_imfs, trials=trials, seed=seed, backend=backend
    )
    seconds = time.perf_counter() - started
    return DecompositionResult(
        source=str(path),
        step=step,
        window=cleaned.rps,
        decomposition=dec,
        filled_points=cleaned.filled_points,
        seconds=seconds,
    )


# --------------------------------------------------------------------------------------------
# forecasting


@dataclass(frozen=True)
class ForecastReport:
    """What ``surgecast forecast-report`` wrote and measured."""

    report_html: Path
    metrics_json: Path
    selected: str
    metrics: dict
    origins: int
    seconds: float


def forecast_report(
    trace: str | Path | None,
    *,
    step: str = "1min",
    horizon: int = 15,
    test_days: float = 2.0,
    every: int = 5,
    refit_days: float = 1.0,
    models: list[str] | None = None,
    seed: int = 0,
    out: Path = Path("out/forecast-report"),
    progress=None,
) -> ForecastReport:
    """Rolling-origin evaluation of every model over the last ``test_days`` of a trace."""
    from forecasting.evaluation import rolling_origin, select_model
    from forecasting.metrics import model_metrics, seasonal_naive_scale
    from forecasting.models import MODELS, steps_per_day
    from surgecast.report import write_forecast_report

    names = list(models or MODELS)
    path = resolve_trace(trace)
    rps = load_rps_csv(path, step=step)
    step_td = rps.index[1] - rps.index[0]
    if horizon < 1 or every < 1 or test_days <= 0:
        raise BadInputError("--horizon, --every and --test-days must be positive")
    test_end = rps.index[-1] - step_td * horizon
    test_start = test_end - pd.Timedelta(days=test_days) + step_td
    if test_start <= rps.index[0] + pd.Timedelta(days=3):
        raise BadInputError(
            f"{path}: too short for a {test_days}-day test span: need at least 3 days of "
            f"history before it, the trace spans {rps.index[-1] - rps.index[0]}"
        )
    warm_up()
    started = time.perf_counter()
    evaluation = rolling_origin(
        rps,
        names,
        test_start=test_start,
        test_end=test_end,
        every=every,
        refit_every=pd.Timedelta(days=refit_days),
        horizon=horizon,
        seed=seed,
        progress=progress,
    )
    seconds = time.perf_counter() - started
    season = steps_per_day(step_td)
    scale = seasonal_naive_scale(rps.loc[: test_start - step_td], season)
    metrics = model_metrics(evaluation.frame, names, scale)
    selected, reason = select_model(evaluation.calibration_mae)
    settings = {
        "step": step,
        "horizon_steps": horizon,
        "test_days": test_days,
        "origin_every_steps": every,
        "refit_every_days": refit_days,
        "seed": seed,
        "mase_scale_rps": scale,
        "refits": [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in evaluation.refits],
        "seconds": round(seconds, 1),
        "fit_errors": evaluation.fit_errors,
        "hybrid_component_weight_per_refit": evaluation.hybrid_weights,
    }
    js, html = write_forecast_report(
        out,
        trace=str(path.name),
        frame=evaluation.frame,
        models=names,
        metrics=metrics,
        selected=selected,
        selection_reason=reason,
        settings=settings,
        horizon=horizon,
        fallbacks=evaluation.fallbacks,
    )
    return ForecastReport(
        report_html=html,
        metrics_json=js,
        selected=selected,
        metrics=metrics,
        origins=int(evaluation.frame["cutoff"].nunique()),
        seconds=seconds,
    )


def forecast_at(
    trace: str | Path | None,
    *,
    at: str | None,
    step: str = "1min",
    horizon: int = 15,
    model: str = "hybrid",
    seed: int = 0,
):
    """Fit ``model`` on the history before ``at`` and forecast the next ``horizon`` steps."""
    from forecasting.models import make_model

    path = resolve_trace(trace)
    rps = load_rps_csv(path, step=step)
    cutoff = parse_utc(at, "--at") if at is not None else rps.index[-1]
    if cutoff < rps.index[0] or cutoff > rps.index[-1]:
        raise BadInputError(
            f"--at: {cutoff.isoformat()} is outside {path} "
            f"({rps.index[0].isoformat()} .. {rps.index[-1].isoformat()})"
        )
    past = rps.loc[:cutoff]
    if not np.isfinite(past.to_numpy()).any():
        raise BadInputError(f"{path}: no data up to {cutoff.isoformat()}")
    fitted = make_model(model, horizon=horizon, seed=seed)
    if model == "hybrid":
        warm_up()
    fitted.fit(past)
    return fitted.forecast(past, cutoff=cutoff)


# --------------------------------------------------------------------------------------------
# backtesting

DEFAULT_BACKTEST_DAYS = 1.0
"""Simulated days of the default backtest (no trace named): the day after the training days."""


@dataclass(frozen=True)
class BacktestRun:
    """What ``surgecast backtest`` wrote and measured."""

    results_json: Path
    report_html: Path
    summary: dict
    seconds: float


def backtest_trace(
    trace: str | Path | None,
    *,
    profile: str = "resnet18",
    settings=None,
    start: str | None = None,
    end: str | None = None,
    out: Path = Path("out/backtest"),
    progress=None,
) -> BacktestRun:
    """Replay a trace through every policy against the simulated cluster; write the report.

    With no trace, the bundled Twitter trace: the day after its first ``train_days``.
    """
    from dataclasses import replace

    from planner.errors import PlannerInputError
    from surgecast.backtest import BacktestSettings, run_backtest, write_results
    from surgecast.planning import load_profile

    settings = settings or BacktestSettings()
    path = resolve_trace(trace)
    rps = load_rps_csv(path)
    try:
        pipeline = load_profile(profile)
    except PlannerInputError as exc:
        raise BadInputError(str(exc)) from None
    first = rps.index[0]
    start_ts = parse_utc(start, "--start") if start else None
    end_ts = parse_utc(end, "--end") if end else None
    if trace is None and start_ts is None and end_ts is None:
        start_ts = first + pd.Timedelta(days=settings.train_days)
        end_ts = start_ts + pd.Timedelta(days=DEFAULT_BACKTEST_DAYS)
    settings = replace(settings, start=start_ts, end=end_ts)
    if settings.model == "hybrid":
        warm_up()
    result = run_backtest(
        rps,
        pipeline,
        settings,
        trace_name=path.name,
        profile_name=pipeline.name,
        progress=progress,
    )
    js, html = write_results(result, out)
    return BacktestRun(js, html, result.to_json(), result.seconds)
