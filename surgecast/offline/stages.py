"""Stage functions shared by the CLI (and later by Airflow): I/O at the edges, stages inside."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from forecasting import DEFAULT_MODEL
from forecasting.cleaning import clean_window
from forecasting.decomposition import BACKENDS, Decomposition, decompose, warm_up
from forecasting.errors import BadInputError
from planner.plan import utc_timestamp
from surgecast.offline.sources import DEFAULT_TRACE, bundled_trace, load_rps_csv


def resolve_trace(trace: str | Path | None) -> Path:
    """A trace argument as a file: an existing path, else the name of a bundled trace.

    Raises:
        BadInputError: a name the operating system cannot even look up (NUL byte, too long).
    """
    if trace is None:
        return bundled_trace(DEFAULT_TRACE)
    path = Path(trace)
    try:
        exists = path.exists()
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{str(trace)[:80]!r}: not a usable file name ({exc})") from None
    if exists or path.suffix == "" or len(path.parts) > 1:
        return path
    return bundled_trace(str(trace))


def parse_utc(text: str, what: str) -> pd.Timestamp:
    """An ISO 8601 time flag with an explicit UTC offset (``Z`` or ``+00:00``), e.g.
    ``2024-01-08T07:30:00Z``: :func:`planner.plan.utc_timestamp` with ``utc_only``.

    Raises:
        BadInputError: unparseable, NaT (``nan``, empty), naive, not UTC, or out of range.
    """
    return utc_timestamp(text, what, utc_only=True)


# --------------------------------------------------------------------------------------------
# output paths: checked before any work starts, written atomically


def check_output_file(
    path: str | Path, what: str, *, suffixes: tuple[str, ...] | None = None
) -> Path:
    """Refuse an output file that cannot be written, before the work that would fill it.

    Args:
        path: where the output goes.
        what: the input's name for the message, e.g. ``--json``.
        suffixes: the accepted file name endings (lower case), e.g. ``(".png",)``; None: any.

    Returns:
        ``path`` as a Path.

    Raises:
        BadInputError: empty name, an existing directory or non-regular file (a FIFO would
            block), a parent folder that does not exist or is not writable, or a wrong suffix.
    """
    file = Path(path)
    if str(path).strip() in {"", "."} or file.name in {"", ".", ".."}:
        raise BadInputError(f"{what}: {str(path)!r} is not a file name")
    if suffixes is not None and file.suffix.lower() not in suffixes:
        raise BadInputError(f"{what}: {file}: the file name must end in {' or '.join(suffixes)}")
    if file.is_dir():
        raise BadInputError(f"{what}: {file} is a directory; name a file")
    if file.exists() and not file.is_file():
        raise BadInputError(f"{what}: {file} exists and is not a regular file")
    if file.exists() and not os.access(file, os.W_OK):
        raise BadInputError(f"{what}: {file} is not writable")
    parent = file.parent
    if not parent.is_dir():
        state = "is not a directory" if parent.exists() else "does not exist"
        raise BadInputError(f"{what}: {file}: the folder {parent} {state}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInputError(f"{what}: {file}: the folder {parent} is not writable")
    return file


def check_output_dir(path: str | Path, what: str) -> Path:
    """Refuse an output folder that cannot be created or written, before the work starts.

    The folder itself may be missing (it is created when the results are written), but its
    nearest existing ancestor must be a writable directory and no part of the path may be a
    file.

    Raises:
        BadInputError: empty name, an existing non-directory, or no writable ancestor.
    """
    folder = Path(path)
    if str(path).strip() == "":
        raise BadInputError(f"{what}: an empty folder name")
    if folder.exists() and not folder.is_dir():
        raise BadInputError(f"{what}: {folder} exists and is not a directory")
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise BadInputError(f"{what}: {folder}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise BadInputError(f"{what}: {folder}: {probe} is not writable")
    return folder


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename, so
    a reader (or a crash) never sees a half-written file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
    from surgecast.offline.report import write_forecast_report

    names = list(MODELS) if models is None else list(models)
    if not names:
        raise BadInputError("--models: no model named")
    if horizon < 1 or every < 1 or not (test_days > 0 and refit_days > 0):
        raise BadInputError("--horizon, --every, --test-days and --refit-days must be positive")
    out = check_output_dir(out, "--out")
    path = resolve_trace(trace)
    rps = load_rps_csv(path, step=step)
    step_td = rps.index[1] - rps.index[0]
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
        member_weights=evaluation.member_weights,
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
    model: str = DEFAULT_MODEL,
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

MAX_SIMULATED_RPS = 1e6
"""Largest peak load (trace peak x ``rps_scale``) a backtest simulates: a million requests per
second to one service; beyond it the replica counts, and the run time, grow without bound."""

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
    config: str | Path | None = None,
    service: str | None = None,
) -> BacktestRun:
    """Replay a trace through every policy against the simulated cluster; write the report.

    With no trace, the bundled Twitter trace: the day after its first ``train_days``. With a
    ``config`` (the services YAML that ``run``, ``apply`` and ``bridge`` read), the service
    named ``service`` (or the file's only one) is backtested as the file gives it: its profile,
    SLO, forecast model and quantile, run interval, cold start, resize time, stabilisation,
    step limits, bridge table and bounds replace the corresponding ``settings``.
    """
    from dataclasses import replace

    from planner.errors import PlannerInputError
    from surgecast.offline.backtest import BacktestSettings, run_backtest, write_results
    from surgecast.planning import load_profile
    from surgecast.settings import load_settings

    settings = settings or BacktestSettings()
    spec = None
    if config is not None:
        fleet = load_settings(config, resolve_secrets=False)  # a backtest asks no server
        if service is None and len(fleet.services) != 1:
            raise BadInputError(
                f"--service: {config} has {len(fleet.services)} services "
                f"({', '.join(fleet.names)}); name one"
            )
        spec = fleet.service(service) if service is not None else fleet.services[0]
        profile = spec.profile
        settings = replace(
            settings,
            slo_ms=float(spec.slo_ms),
            quantile=float(spec.forecast.plan_quantile),
            model=spec.forecast.model,
            horizon_steps=int(spec.forecast.horizon_steps),
            no_regret=bool(spec.forecast.no_regret),
            every_s=round(spec.run_interval_s),
            cold_start_s=round(spec.cold_start_s),
            resize_s=round(spec.resize_s),
            stabilisation_s=round(spec.stabilisation_s),
        )
    elif service is not None:
        raise BadInputError("--service: needs --config (the services file it names)")
    out = check_output_dir(out, "--out")
    path = resolve_trace(trace)
    rps = load_rps_csv(path)
    try:
        pipeline = load_profile(profile)
    except PlannerInputError as exc:
        raise BadInputError(str(exc)) from None
    first = rps.index[0]
    start_ts = parse_utc(start, "--start") if start is not None else None
    end_ts = parse_utc(end, "--end") if end is not None else None
    if start_ts is not None and end_ts is not None and end_ts <= start_ts:
        raise BadInputError(f"--end: {end} is not after --start {start}")
    for flag, ts in (("--start", start_ts), ("--end", end_ts)):
        if ts is not None and not first <= ts <= rps.index[-1]:
            raise BadInputError(
                f"{flag}: {ts.isoformat()} is outside {path} "
                f"({first.isoformat()} .. {rps.index[-1].isoformat()})"
            )
    peak = float(np.nanmax(rps.to_numpy())) if rps.notna().any() else 0.0
    if peak * settings.rps_scale > MAX_SIMULATED_RPS:
        raise BadInputError(
            f"--rps-scale: {settings.rps_scale:g} x the trace's peak of {peak:.1f} rps is "
            f"{peak * settings.rps_scale:.3g} rps, above the {MAX_SIMULATED_RPS:.0e} rps the "
            "simulator is bounded to"
        )
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
        spec=spec,
    )
    js, html = write_results(result, out)
    return BacktestRun(js, html, result.to_json(), result.seconds)
