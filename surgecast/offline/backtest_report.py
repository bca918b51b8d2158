"""The backtest report: one self-contained HTML page (plots as base64 PNG data URIs).

It shows, over the simulated span, the load with surgecast's forecast, the ready capacity per
policy, the SLO-violating requests per policy, a zoom on the largest surge, the summary table and
the settings.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from surgecast.offline.backtest import ABLATIONS
from surgecast.offline.report import _CSS, _img, _new_figure, _png_bytes, _settings_html
from surgecast.offline.simulator import per_minute

if TYPE_CHECKING:
    from surgecast.offline.backtest import BacktestResult

_COLOURS = {
    "hpa": "#d62728",
    "vpa": "#9467bd",
    "themis": "#ff7f0e",
    "surgecast": "#1f77b4",
    "surgecast-no-bridge": "#17becf",
    "surgecast-no-forecast": "#bcbd22",
    "perfect-forecast": "#2ca02c",
    "static-peak": "#7f7f7f",
}


def _time_axis(result: BacktestResult, n_minutes: int) -> np.ndarray:
    start = result.start.tz_convert("UTC").tz_localize(None)
    return pd.date_range(start, periods=n_minutes, freq="1min").to_numpy()


def plot_overview(result: BacktestResult) -> bytes:
    """PNG: load and forecast; ready capacity per policy; violating requests per minute."""
    runs = result.runs
    first = next(iter(runs.values()))
    load = per_minute(first.arrivals)
    x = _time_axis(result, len(load))
    fig, (ax_load, ax_cap, ax_vio) = _new_figure(11, 9, rows=3)
    ax_load.plot(x, load, color="black", lw=0.8, label="load (1-min mean)")
    if result.forecasts:
        ts = [t.tz_convert("UTC").tz_localize(None) for t, _ in result.forecasts]
        peaks = [float(np.max(q)) for _, q in result.forecasts]
        ax_load.step(
            ts,
            peaks,
            where="post",
            color=_COLOURS["surgecast"],
            lw=0.9,
            label=f"surgecast forecast: max q{result.settings.quantile} over the horizon",
        )
    ax_load.set_ylabel("rps")
    ax_load.legend(fontsize=8, loc="upper right")
    for name, run in runs.items():
        ax_cap.plot(x, per_minute(run.capacity_rps), lw=0.8, color=_COLOURS.get(name), label=name)
        ax_vio.plot(
            x, per_minute(run.violations, "sum"), lw=0.8, color=_COLOURS.get(name), label=name
        )
    ax_cap.plot(x, load, color="black", lw=0.6, alpha=0.6, label="load")
    ax_cap.set_ylabel("ready capacity (rps)")
    ax_cap.legend(fontsize=8, ncol=4, loc="upper right")
    ax_vio.set_ylabel("requests over SLO / min")
    ax_vio.set_yscale("symlog", linthresh=1.0)
    ax_vio.legend(fontsize=8, ncol=4, loc="upper right")
    for ax in (ax_load, ax_cap, ax_vio):
        ax.grid(alpha=0.3)
    return _png_bytes(fig)


def largest_surge(arrivals: np.ndarray, window_s: int = 300) -> int:
    """Second at which the largest rise of the 1-min mean load over ``window_s`` ends."""
    load = pd.Series(arrivals).rolling(60, min_periods=1).mean().to_numpy()
    if len(load) <= window_s:
        return int(np.argmax(load))
    rise = load[window_s:] - load[:-window_s]
    return int(np.argmax(rise)) + window_s


def plot_surge(result: BacktestResult, before_s: int = 600, after_s: int = 900) -> bytes:
    """PNG: second by second around the largest surge: load, ready capacity per policy."""
    first = next(iter(result.runs.values()))
    peak = largest_surge(first.arrivals)
    lo = max(0, peak - before_s)
    hi = min(len(first.arrivals), peak + after_s)
    start = result.start.tz_convert("UTC").tz_localize(None)
    x = pd.date_range(start + pd.Timedelta(seconds=lo), periods=hi - lo, freq="1s").to_numpy()
    fig, (ax_cap, ax_vio) = _new_figure(11, 6.5, rows=2)
    smooth = pd.Series(first.arrivals[lo:hi]).rolling(10, min_periods=1).mean()
    ax_cap.plot(x, smooth, color="black", lw=0.9, label="load (10-s mean)")
    for name, run in result.runs.items():
        ax_cap.plot(x, run.capacity_rps[lo:hi], lw=1.0, color=_COLOURS.get(name), label=name)
        ax_vio.plot(
            x, np.cumsum(run.violations[lo:hi]), lw=1.0, color=_COLOURS.get(name), label=name
        )
    ax_cap.set_ylabel("rps / ready capacity")
    ax_cap.legend(fontsize=8, ncol=4, loc="upper left")
    ax_vio.set_ylabel("requests over SLO (cumulative)")
    ax_vio.legend(fontsize=8, ncol=4, loc="upper left")
    for ax in (ax_cap, ax_vio):
        ax.grid(alpha=0.3)
    return _png_bytes(fig)


def _bars_list(summary: dict) -> str:
    """The evaluation's bars for surgecast (docs/evaluation.md), one line each."""
    bars = summary.get("bars")
    if not bars:
        return ""
    from surgecast.offline.bars import STATE

    items = "".join(
        f"<li>{html.escape(b['bar'])}: <b>{STATE[b['met']]}</b> ({html.escape(b['detail'])})</li>"
        for b in bars
    )
    return f"<h2>Bars</h2><ul class=\"bars\">{items}</ul>"


def _summary_table(result: BacktestResult) -> str:
    cols = (
        "requests",
        "violations",
        "violation_rate",
        "violation_minutes",
        "core_hours",
        "node_core_hours",
        "actions",
        "mean_utilisation",
    )
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ("policy", *cols, "notes"))
    rows = []
    for name, run in result.runs.items():
        s = run.summary()
        cells = [
            f"{s['requests']:,}",
            f"{s['violations']:,}",
            f"{100 * s['violation_rate']:.3f} %",
            f"{s['violation_minutes']:,}",
            f"{s['core_hours']:.1f}",
            f"{s['node_core_hours']:.1f}" if "node_core_hours" in s else "-",
            f"{s['actions']:,}",
            f"{100 * s['mean_utilisation']:.1f} %",
            html.escape(result.notes.get(name, "")),
        ]
        # The ablations sit right under the headline row, indented, so they read beside it.
        label = f"&nbsp;&nbsp;↳ {html.escape(name)}" if name in ABLATIONS else html.escape(name)
        rows.append(f"<tr><td>{label}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    if result.bound is not None:  # a bound, not a policy: only its cost
        rows.append(
            "<tr><td><i>lower bound</i></td>" + "<td></td>" * 4
            + f"<td>{result.bound.core_hours:.1f}</td>" + "<td></td>" * 2
            + "<td>the optimal shape every second, no cold start: no policy that meets the SLO "
            "spends less</td></tr>"
        )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"




def verdict(result: BacktestResult) -> str:
    """Plain sentences: how surgecast compares with hpa, themis and surgecast fed the true
    future (perfect-forecast)."""
    s = {name: run.summary() for name, run in result.runs.items()}
    if "surgecast" not in s:
        return "surgecast was not among the policies run."
    ours = s["surgecast"]
    parts = []
    for other in ("hpa", "themis", "perfect-forecast"):
        if other not in s:
            continue
        theirs = s[other]
        a, b = theirs["violations"], ours["violations"]
        if a == b:
            compare = "as many"
        elif b == 0 or (a > 0 and a >= b):
            compare = (
                "no violations for surgecast" if b == 0 else f"{a / b:.1f}× fewer for surgecast"
            )
        else:
            compare = "none for " + other if a == 0 else f"{b / a:.1f}× MORE for surgecast"
        cost = ours["core_hours"] / theirs["core_hours"] if theirs["core_hours"] else float("nan")
        parts.append(
            f"against {other}: {a:,} vs {b:,} requests over the SLO ({compare}), "
            f"{cost:.2f}× its core-hours"
        )
    text = "surgecast " + "; ".join(parts) + "."
    ablations = [
        f"{name}: {s[name]['violations']:,} requests over the SLO, "
        f"{s[name]['core_hours']:.1f} core-hours"
        for name in ABLATIONS
        if name in s
    ]
    if ablations:
        text += f" Ablations (surgecast: {ours['violations']:,}, {ours['core_hours']:.1f}): "
        text += "; ".join(ablations) + "."
    return text


def render_backtest_html(result: BacktestResult) -> str:
    esc = html.escape
    summary = result.to_json()
    title = (
        f"Backtest: {result.trace}, {result.profile}, SLO {result.settings.slo_ms:.0f} ms, "
        f"{summary['seconds_simulated'] / 86400:.2f} days from {result.start.isoformat()}"
    )
    settings = dict(summary["settings"])
    settings["bounds"] = summary["bounds"]
    settings["filled_seconds"] = summary["filled_seconds"]
    settings["wall_seconds"] = summary["wall_seconds"]
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{esc(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{esc(title)}</h1>
<p class="verdict">{esc(verdict(result))}</p>
{_bars_list(summary)}
<h2>Summary</h2>
{_summary_table(result)}
<p class="note">A request violates the SLO when processing + batch fill + queueing wait exceeds
{result.settings.slo_ms:.0f} ms; a violation minute is one in which more than 1 % of requests
did. Core-hours count every replica's cores, starting ones included; node core-hours count
the allocatable cores of every node held, provisioning ones included, whatever runs on it.</p>
<h2>Load, forecast, capacity and violations</h2>
{_img(plot_overview(result), "load, forecast, capacity and violations over time")}
<h2>The largest surge, second by second</h2>
{_img(plot_surge(result), "the largest surge")}
<h2>Settings</h2>
{_settings_html(settings)}
</body>
</html>
"""
