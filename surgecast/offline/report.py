"""Forecast-accuracy report: ``metrics.json`` plus one self-contained ``report.html``.

The I/O edge of the evaluation: it takes the evaluation frame (see ``forecasting.metrics``) and
the per-model metrics already computed from it, and writes two files. The HTML page carries its
own CSS and its plots as base64 PNG data URIs (matplotlib, Agg canvas), so it can be mailed or
attached to a ticket as one file.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from forecasting.cleaning import format_time
from forecasting.errors import BadInputError
from forecasting.metrics import (
    PLANNING_QUANTILE,
    QUANTILES,
    by_horizon,
    coverage_by_quantile,
    quantile_column,
    quantile_key,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

HYBRID = "hybrid"
"""Name of the decomposition pipeline's model; every other model counts as a baseline."""

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
       max-width: 1150px; margin: 2em auto; padding: 0 1em; line-height: 1.45; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.88em; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f2f2f2; }
th:first-child, td:first-child { text-align: left; }
tr.selected td:first-child { font-weight: bold; }
td.setting { font-family: ui-monospace, monospace; text-align: left; }
.verdict { background: #f6f8fa; border-left: 4px solid #4a78b8; padding: 0.5em 0.9em; }
.note { color: #555; font-size: 0.9em; }
img { max-width: 100%; }
"""


# -- the table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Column:
    """One column of the metrics table."""

    label: str
    value: Callable[[dict], float | None]
    """Reads the value from one model's metrics dict."""
    fmt: str
    """Format spec for the value, e.g. ``.3f`` or ``.1%``."""
    target: float | None = None
    """Nominal value to be closest to (coverage); ``None``: lower is better."""


def _columns() -> list[_Column]:
    columns = [
        _Column("MAE (rps)", lambda m: m["mae"], ".4g"),
        _Column("RMSE (rps)", lambda m: m["rmse"], ".4g"),
        _Column("sMAPE (%)", lambda m: m["smape"], ".2f"),
        _Column("MASE", lambda m: m["mase"], ".3f"),
    ]
    for q in QUANTILES:
        key = quantile_key(q)
        columns.append(_Column(f"pinball {key}", lambda m, k=key: m["pinball"].get(k), ".4g"))
    for q in QUANTILES:
        if q > 0.5:
            key = quantile_key(q)
            columns.append(
                _Column(f"coverage {key}", lambda m, k=key: m["coverage"].get(k), ".1%", q)
            )
    columns.append(
        _Column(
            f"under-rate q{quantile_key(PLANNING_QUANTILE)}",
            lambda m: m["under_rate_q95"],
            ".1%",
            1.0 - PLANNING_QUANTILE,
        )
    )
    return columns


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not math.isnan(value)


def _best_value(values: list[float | None], target: float | None) -> float | None:
    """The best of a column: the lowest, or the one closest to ``target``; None if no number."""
    numbers = [v for v in values if _is_number(v)]
    if not numbers:
        return None
    if target is None:
        return min(numbers)
    return min(numbers, key=lambda v: abs(v - target))


def _is_best(value: float | None, best: float | None, target: float | None) -> bool:
    if not _is_number(value) or best is None:
        return False
    if target is None:
        return math.isclose(value, best, rel_tol=1e-12, abs_tol=1e-12)
    return math.isclose(abs(value - target), abs(best - target), rel_tol=1e-12, abs_tol=1e-12)


def _metrics_table_html(metrics: Mapping[str, dict], models: Sequence[str], selected: str) -> str:
    columns = _columns()
    head = "".join(f"<th>{html.escape(c.label)}</th>" for c in columns)
    rows = []
    for model in models:
        cells = []
        for column in columns:
            value = column.value(metrics[model])
            values = [column.value(metrics[m]) for m in models]
            best = _best_value(values, column.target)
            text = format(value, column.fmt) if _is_number(value) else "n/a"
            cells.append(
                f"<td><b>{text}</b></td>"
                if _is_best(value, best, column.target)
                else f"<td>{text}</td>"
            )
        label = html.escape(model) + (" (selected)" if model == selected else "")
        css = ' class="selected"' if model == selected else ""
        rows.append(f"<tr{css}><td>{label}</td>{''.join(cells)}</tr>")
    return (
        f"<table><thead><tr><th>model</th>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        '<p class="note">Bold: best per column (lowest error; coverage and under-rate closest '
        "to nominal). Pinball loss in rps; n/a: no pair with an actual.</p>"
    )


# -- the sentences ---------------------------------------------------------------------------


def _lowest_mase(metrics: Mapping[str, dict], models: Sequence[str]) -> str | None:
    """The model with the lowest MASE (ties go to the hybrid); None if no model has one."""
    scored = [m for m in models if _is_number(metrics[m]["mase"])]
    if not scored:
        return None
    return min(scored, key=lambda m: (metrics[m]["mase"], m != HYBRID))


def mase_verdict(metrics: Mapping[str, dict], models: Sequence[str]) -> str:
    """A plain sentence on which model had the lowest MASE, and whether a baseline beat the hybrid.

    Args:
        metrics: per-model metrics as from ``forecasting.metrics.model_metrics``.
        models: the model names, in table order.

    Returns:
        Plain text (not yet HTML-escaped).
    """
    best = _lowest_mase(metrics, models)
    if best is None:
        return "No model has a MASE on the test span: no forecast had an actual to compare with."
    best_mase = metrics[best]["mase"]
    sentence = f"Lowest MASE on the test span: {best} ({best_mase:.3f})."
    hybrid_mase = metrics[HYBRID]["mase"] if HYBRID in metrics and HYBRID in models else None
    if best != HYBRID and _is_number(hybrid_mase):
        return (
            f"{sentence} Baseline {best} beat the hybrid on MASE: {best_mase:.3f} against "
            f"{hybrid_mase:.3f} for the hybrid."
        )
    if best == HYBRID:
        baselines = [m for m in models if m != HYBRID and _is_number(metrics[m]["mase"])]
        if baselines:
            runner_up = min(baselines, key=lambda m: metrics[m]["mase"])
            sentence += (
                f" The hybrid beat every baseline; the best baseline, {runner_up}, "
                f"had {metrics[runner_up]['mase']:.3f}."
            )
        return sentence
    return f"{sentence} No model named {HYBRID} was evaluated."


def _fallback_note(fallbacks: Mapping[str, int], origins: int) -> str:
    used = {model: n for model, n in fallbacks.items() if n > 0}
    if not used:
        return "No model fell back to seasonal naive at any origin."
    parts = [
        f"{model} at {n} of {origins} origins ({n / origins:.1%})" for model, n in used.items()
    ]
    return (
        "Fallbacks: these models failed and were replaced by the seasonal-naive forecast: "
        + "; ".join(parts)
        + ". Their metrics include those seasonal-naive forecasts."
    )


# -- the plots -------------------------------------------------------------------------------


def _new_figure(width_in: float, height_in: float, rows: int = 1) -> tuple[Figure, list]:
    """A figure on an Agg canvas (no pyplot, no global backend state) and its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    return fig, list(axes)


def _png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _naive_utc(times: pd.Series) -> np.ndarray:
    """UTC timestamps without time zone, which matplotlib plots without conversion surprises."""
    return pd.DatetimeIndex(times).tz_convert("UTC").tz_localize(None).to_numpy()


def plot_forecast_vs_actual(
    frame: pd.DataFrame, models: Sequence[str], steps: Sequence[int]
) -> bytes:
    """PNG: actual rps and, per horizon step (one panel each), the models' forecasts.

    Each forecast is plotted at its target time ``ds``: the mean as a line, a band between the
    q0.5 and q0.95 forecasts, and a dashed line for q0.99.

    Args:
        frame: the evaluation frame.
        models: the models to draw (one or two keep it readable).
        steps: horizon steps, one panel each (e.g. ``[H, 1]``).

    Returns:
        The PNG image.
    """
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    actual = frame[["ds", "y"]].drop_duplicates("ds").sort_values("ds")
    fig, axes = _new_figure(12.0, 3.3 * len(steps), rows=len(steps))
    colors = ["tab:blue", "tab:orange", "tab:green"]
    for ax, step in zip(axes, steps, strict=True):
        ax.plot(_naive_utc(actual["ds"]), actual["y"], color="black", lw=1.0, label="actual")
        at_step = frame[frame["h"] == step].sort_values("ds")
        times = _naive_utc(at_step["ds"])
        for model, color in zip(models, colors, strict=False):
            ax.plot(times, at_step[model], color=color, lw=1.0, label=f"{model} mean")
            ax.fill_between(
                times,
                at_step[quantile_column(model, 0.5)],
                at_step[quantile_column(model, 0.95)],
                color=color,
                alpha=0.2,
                lw=0,
                label=f"{model} q0.5-q0.95",
            )
            ax.plot(
                times,
                at_step[quantile_column(model, 0.99)],
                color=color,
                lw=0.8,
                ls="--",
                label=f"{model} q0.99",
            )
        ax.set_title(f"forecast made {step} step(s) ahead, plotted at its target time", fontsize=10)
        ax.set_ylabel("rps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        locator = AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    axes[-1].set_xlabel("time (UTC)")
    return _png_bytes(fig)


def plot_mae_by_horizon(table: pd.DataFrame) -> bytes:
    """PNG: MAE (rps) against horizon step, one line per model (``by_horizon`` output)."""
    from matplotlib.ticker import MaxNLocator

    fig, (ax,) = _new_figure(7.0, 3.8)
    for model in table.columns:
        ax.plot(table.index, table[model], marker="o", ms=4, lw=1.2, label=model)
    ax.set_xlabel("horizon step h")
    ax.set_ylabel("MAE (rps)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("MAE by horizon step", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png_bytes(fig)


def plot_coverage(table: pd.DataFrame) -> bytes:
    """PNG: empirical coverage against nominal quantile, per model (``coverage_by_quantile``)."""
    fig, (ax,) = _new_figure(7.0, 3.8)
    nominal = table.index.to_numpy(dtype=np.float64)
    low = min(float(nominal.min()), float(np.nanmin(table.to_numpy(dtype=np.float64))), 0.5)
    ax.plot([low, 1.0], [low, 1.0], color="grey", ls="--", lw=1.0, label="nominal")
    for model in table.columns:
        ax.plot(nominal, table[model], marker="o", lw=1.2, label=model)
    ax.set_xlabel("nominal quantile")
    ax.set_ylabel("share of actuals <= forecast")
    ax.set_xticks(nominal)
    ax.set_title("Coverage by quantile (on the dashed line = calibrated)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png_bytes(fig)


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<p><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}"></p>'


# -- the files -------------------------------------------------------------------------------


def _json_default(value: object) -> object:
    """Settings values that json cannot encode by itself."""
    if isinstance(value, pd.Timestamp):
        return format_time(value)
    if isinstance(value, Path | pd.Timedelta):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _test_span(frame: pd.DataFrame) -> dict[str, str]:
    ds = pd.DatetimeIndex(frame["ds"])
    return {"start": format_time(ds.min()), "end": format_time(ds.max())}


def _setting_text(value: object) -> str:
    """A setting as shown in the page: strings and timestamps bare, the rest as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, pd.Timestamp | pd.Timedelta | Path):
        return str(_json_default(value))
    return json.dumps(value, default=_json_default)


def _settings_html(settings: Mapping[str, object]) -> str:
    rows = []
    for key, value in settings.items():
        text = _setting_text(value)
        rows.append(
            f"<tr><td>{html.escape(str(key))}</td>"
            f'<td class="setting">{html.escape(str(text))}</td></tr>'
        )
    return f"<table><tbody>{''.join(rows)}</tbody></table>"


def _check_inputs(
    frame: pd.DataFrame,
    models: Sequence[str],
    metrics: Mapping[str, dict],
    selected: str,
    fallbacks: Mapping[str, int],
) -> None:
    if frame.empty:
        raise BadInputError("evaluation frame: no rows, nothing to report")
    missing = [m for m in models if m not in metrics]
    if missing:
        raise BadInputError(f"report: no metrics for model(s) {', '.join(missing)}")
    if selected not in models:
        raise BadInputError(f"report: selected model {selected!r} is not among the models")
    unknown = [m for m in fallbacks if m not in models]
    if unknown:
        raise BadInputError(f"report: fallbacks for unknown model(s) {', '.join(unknown)}")


def _render_html(
    *,
    summary: dict,
    frame: pd.DataFrame,
    models: Sequence[str],
    metrics: Mapping[str, dict],
) -> str:
    trace, selected, horizon = summary["trace"], summary["selected"], summary["horizon"]
    span = summary["test_span"]
    esc = html.escape
    title = f"Forecast accuracy: {trace}, {span['start']} to {span['end']}"
    plotted = [selected] + ([HYBRID] if HYBRID in models and selected != HYBRID else [])
    steps = [horizon, 1] if horizon > 1 else [1]
    forecast_png = plot_forecast_vs_actual(frame, plotted, steps)
    horizon_png = plot_mae_by_horizon(by_horizon(frame, models))
    coverage_png = plot_coverage(coverage_by_quantile(frame, models, QUANTILES))
    reason = summary["selection_reason"]
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{esc(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{esc(title)}</h1>
<p class="note">{summary["origins"]} forecast origins, horizon {horizon} steps,
models: {esc(", ".join(models))}.</p>

<h2>Verdict</h2>
<p class="verdict">Selected model: <b>{esc(selected)}</b>. {esc(reason)}</p>
<p class="verdict">{esc(mase_verdict(metrics, models))}</p>

<h2>Metrics on the test span</h2>
{_metrics_table_html(metrics, models, selected)}
<p class="note">{esc(_fallback_note(summary["fallbacks"], summary["origins"]))}</p>

<h2>Forecast against actual</h2>
{_img(forecast_png, "forecast against actual for " + ", ".join(plotted))}

<h2>MAE by horizon step</h2>
{_img(horizon_png, "MAE by horizon step")}

<h2>Quantile coverage</h2>
{_img(coverage_png, "coverage by quantile")}

<h2>Settings</h2>
{_settings_html(summary["settings"])}
</body>
</html>
"""


def _json_safe(value: object) -> object:
    """NaN and infinities as None, recursively, so the file is strict JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_forecast_report(
    out_dir: Path,
    *,
    trace: str,
    frame: pd.DataFrame,
    models: list[str],
    metrics: dict,
    selected: str,
    selection_reason: str,
    settings: dict,
    horizon: int,
    fallbacks: dict[str, int] | None = None,
) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``report.html`` for one trace's rolling-origin evaluation.

    Args:
        out_dir: directory to write into; created if missing. Existing files are replaced.
        trace: name of the trace (shown in the title).
        frame: the evaluation frame (``ds, cutoff, h, y`` and per model the mean and quantile
            columns; see ``forecasting.metrics``).
        models: model names, in table order; a model named ``"hybrid"`` is the pipeline, the
            others are baselines.
        metrics: per-model metrics from ``forecasting.metrics.model_metrics`` on ``frame``.
        selected: the model chosen for this service; one of ``models``.
        selection_reason: one sentence on why it was chosen.
        settings: the settings of the run, JSON-serialisable (Timestamps, Timedeltas, Paths
            and numpy scalars are converted).
        horizon: forecast horizon H in steps.
        fallbacks: per model, the number of origins at which it failed and seasonal naive was
            used instead; ``None`` means no model fell back.

    Returns:
        The paths of ``metrics.json`` and ``report.html``.

    Raises:
        BadInputError: empty frame, a model without metrics, ``selected`` not in ``models``, or
            fallbacks for a model not in ``models``.
    """
    fallbacks = fallbacks or {}
    _check_inputs(frame, models, metrics, selected, fallbacks)
    counts = {model: int(fallbacks.get(model, 0)) for model in models}
    summary = {
        "trace": trace,
        "origins": int(frame["cutoff"].nunique()),
        "horizon": int(horizon),
        "selected": selected,
        "models": {model: metrics[model] for model in models},
        "selection_reason": selection_reason,
        "settings": settings,
        "test_span": _test_span(frame),
        "fallbacks": counts,
    }
    text = json.dumps(_json_safe(summary), indent=2, default=_json_default, allow_nan=False)
    page = _render_html(summary=summary, frame=frame, models=models, metrics=metrics)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / METRICS_FILE
    html_path = out_dir / REPORT_FILE
    metrics_path.write_text(text + "\n", encoding="utf-8")
    html_path.write_text(page, encoding="utf-8")
    return metrics_path, html_path
