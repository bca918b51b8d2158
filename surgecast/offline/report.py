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

from forecasting import DEFAULT_MODEL
from forecasting.cleaning import format_time
from forecasting.errors import BadInputError
from forecasting.metrics import (
    PLANNING_QUANTILE,
    QUANTILES,
    by_horizon,
    coverage_by_quantile,
    origin_errors,
    quantile_column,
    quantile_key,
    relative_error_interval,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PIPELINE = DEFAULT_MODEL
"""The model surgecast runs; the verdict compares it with the best of the others."""

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
    """The model with the lowest MASE (ties go to the pipeline's); None if no model has one."""
    scored = [m for m in models if _is_number(metrics[m]["mase"])]
    if not scored:
        return None
    return min(scored, key=lambda m: (metrics[m]["mase"], m != PIPELINE))


def _origin_block(frame: pd.DataFrame) -> int:
    """Origins in one hour: the bootstrap's block."""
    cutoffs = pd.DatetimeIndex(frame["cutoff"].drop_duplicates().sort_values())
    if len(cutoffs) < 2:
        return 1
    spacing = pd.Series(cutoffs[1:] - cutoffs[:-1]).median()
    return max(1, round(pd.Timedelta(hours=1) / spacing))


def mase_verdict(
    metrics: Mapping[str, dict],
    models: Sequence[str],
    frame: pd.DataFrame | None = None,
    pipeline: str = PIPELINE,
) -> str:
    """A plain sentence on which model had the lowest MASE and how the pipeline's model compares
    with the best other one: better, worse, or tied when the 95 % block-bootstrap interval of
    the difference (blocks of one hour of origins) holds 0.

    Args:
        metrics: per-model metrics as from ``forecasting.metrics.model_metrics``.
        models: the model names, in table order.
        frame: the evaluation frame the metrics come from (for the interval); without it the
            sentence compares the point values only.
        pipeline: the model surgecast runs.

    Returns:
        Plain text (not yet HTML-escaped).
    """
    best = _lowest_mase(metrics, models)
    if best is None:
        return "No model has a MASE on the test span: no forecast had an actual to compare with."
    sentence = f"Lowest MASE on the test span: {best} ({metrics[best]['mase']:.3f})."
    if pipeline not in models or not _is_number(metrics[pipeline]["mase"]):
        return f"{sentence} {pipeline}, the model surgecast runs, was not evaluated."
    others = [m for m in models if m != pipeline and _is_number(metrics[m]["mase"])]
    if not others:
        return sentence
    rival = min(others, key=lambda m: metrics[m]["mase"])
    ours, theirs = metrics[pipeline]["mase"], metrics[rival]["mase"]
    pair = f"MASE {ours:.3f} against {theirs:.3f}"
    reference = None if frame is None else origin_errors(frame, rival)
    if reference is None or not reference.sum() > 0:  # no frame, or a rival without error
        if ours <= theirs:
            return f"{sentence} {pipeline} (the model surgecast runs) beat {rival}: {pair}."
        return f"{sentence} {rival} beat {pipeline} (the model surgecast runs): {pair}."
    rel, low, high = relative_error_interval(
        origin_errors(frame, pipeline), reference, _origin_block(frame)
    )
    interval = f"{rel:+.1%}, 95 % interval {low:+.1%} to {high:+.1%}"
    if low <= 0 <= high:
        return (
            f"{sentence} {pipeline} (the model surgecast runs) and {rival} are tied: {pair} "
            f"({interval}, which holds 0)."
        )
    if high < 0:
        return (
            f"{sentence} {pipeline} (the model surgecast runs) beat the best other model, "
            f"{rival}: {pair} ({interval})."
        )
    return f"{sentence} {rival} beat {pipeline} (the model surgecast runs): {pair} ({interval})."


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


def plot_each_model(frame: pd.DataFrame, models: Sequence[str], step: int) -> bytes:
    """PNG: one panel per model (shared axes): its forecasts made ``step`` steps ahead, at their
    target times, with the q0.5-q0.95 band and q0.99, against the actual load in black."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    actual = frame[["ds", "y"]].drop_duplicates("ds").sort_values("ds")
    at_step = frame[frame["h"] == step].sort_values("ds")
    times = _naive_utc(at_step["ds"])
    fig, axes = _new_figure(12.0, 1.9 * len(models) + 0.6, rows=len(models))
    for ax in axes[1:]:
        ax.sharex(axes[0])
        ax.sharey(axes[0])
    for i, (ax, model) in enumerate(zip(axes, models, strict=True)):
        color = f"C{i % 10}"
        ax.plot(_naive_utc(actual["ds"]), actual["y"], color="black", lw=0.9, label="actual")
        ax.fill_between(
            times,
            at_step[quantile_column(model, 0.5)],
            at_step[quantile_column(model, 0.95)],
            color=color,
            alpha=0.25,
            lw=0,
            label="q0.5-q0.95",
        )
        ax.plot(times, at_step[model], color=color, lw=1.1, label="mean")
        ax.plot(
            times, at_step[quantile_column(model, 0.99)], color=color, lw=0.8, ls="--",
            label="q0.99",
        )
        ax.set_ylabel("rps")
        ax.set_title(model, fontsize=10, loc="left")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    locator = AutoDateLocator()
    axes[-1].xaxis.set_major_locator(locator)
    axes[-1].xaxis.set_major_formatter(ConciseDateFormatter(locator))
    axes[-1].set_xlabel("target time (UTC)")
    return _png_bytes(fig)


def plot_member_weights(weights: Mapping[str, list]) -> bytes:
    """PNG: the adaptive model's member weights per origin, stacked (they sum to 1)."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    times = _naive_utc(pd.Series(pd.to_datetime(weights["cutoff"], utc=True)))
    members = [k for k in weights if k != "cutoff"]
    fig, (ax,) = _new_figure(12.0, 2.8)
    ax.stackplot(
        times, *[np.asarray(weights[m], dtype=np.float64) for m in members], labels=members,
        colors=[f"C{i}" for i in range(len(members))], alpha=0.8,
    )
    ax.set_ylim(0, 1)
    ax.set_ylabel("weight")
    ax.set_xlabel("forecast origin (UTC)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
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
    # zoomed on the quantiles (not 0-1), so that 0.9-0.99 is not a sliver
    ax.set_ylim(max(0.0, low - 0.02), 1.0 + 0.005)
    ax.set_xlim(low - 0.01, 1.0)
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
    forecast_png = plot_each_model(frame, models, horizon)
    horizon_png = plot_mae_by_horizon(by_horizon(frame, models))
    weights = summary.get("member_weights")
    weights_html = ""
    if weights:
        weights_html = (
            f"<h2>{esc(PIPELINE)}: member weights at each origin</h2>"
            '<p class="note">The weight each member had in the forecast made at each origin, '
            "from its recent out-of-sample errors (every origin's weights sum to 1).</p>"
            + _img(plot_member_weights(weights), "member weights per origin")
        )
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
<p class="verdict">{esc(mase_verdict(metrics, models, frame))}</p>

<h2>Metrics on the test span</h2>
{_metrics_table_html(metrics, models, selected)}
<p class="note">{esc(_fallback_note(summary["fallbacks"], summary["origins"]))}</p>

<h2>Forecast against actual, {horizon} step(s) ahead</h2>
<p class="note">One panel per model, on the same scale, so that no model hides under another:
the mean forecast made {horizon} step(s) before each target (colour), the q0.5-q0.95 band and
the q0.99 (dashed), against the actual load (black).</p>
{_img(forecast_png, "forecast against actual for " + ", ".join(models))}
{weights_html}

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
    member_weights: pd.DataFrame | None = None,
) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``report.html`` for one trace's rolling-origin evaluation.

    Args:
        out_dir: directory to write into; created if missing. Existing files are replaced.
        trace: name of the trace (shown in the title).
        frame: the evaluation frame (``ds, cutoff, h, y`` and per model the mean and quantile
            columns; see ``forecasting.metrics``).
        models: model names, in table order; the verdict compares the model surgecast runs
            (:data:`PIPELINE`) with the best of the others.
        metrics: per-model metrics from ``forecasting.metrics.model_metrics`` on ``frame``.
        selected: the model chosen for this service; one of ``models``.
        selection_reason: one sentence on why it was chosen.
        settings: the settings of the run, JSON-serialisable (Timestamps, Timedeltas, Paths
            and numpy scalars are converted).
        horizon: forecast horizon H in steps.
        fallbacks: per model, the number of origins at which it failed and seasonal naive was
            used instead; ``None`` means no model fell back.
        member_weights: the adaptive model's member weights per origin (index: cutoffs,
            columns: members), shown as a chart and stored in ``metrics.json``.

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
    if member_weights is not None and not member_weights.empty:
        summary["member_weights"] = {
            "cutoff": [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in member_weights.index],
            **{m: [float(w) for w in member_weights[m]] for m in member_weights.columns},
        }
    text = json.dumps(_json_safe(summary), indent=2, default=_json_default, allow_nan=False)
    page = _render_html(summary=summary, frame=frame, models=models, metrics=metrics)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / METRICS_FILE
    html_path = out_dir / REPORT_FILE
    metrics_path.write_text(text + "\n", encoding="utf-8")
    html_path.write_text(page, encoding="utf-8")
    return metrics_path, html_path
