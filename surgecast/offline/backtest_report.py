"""The backtest report: one self-contained HTML page (plots as base64 PNG data URIs).

It shows cost against violations for every policy (each sweep a connected curve), over the
simulated span the load with surgecast's forecast, the ready capacity per policy, the
SLO-violating requests per policy, a zoom on the largest surge, the summary table and the
settings.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from surgecast.offline.backtest import (
    ABLATIONS,
    HPA_ALIAS,
    HPA_SWEEP,
    KEDA_SWEEP,
    sweep_target,
)
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
    **{name: c for name, c in zip(HPA_SWEEP, ("#f4a6a6", "#e8706f", "#d62728", "#a31d1d",
                                                 "#6b1212"), strict=True)},
    **{name: c for name, c in zip(KEDA_SWEEP, ("#e3c9b6", "#c9a07f", "#8c564b", "#6b3f35",
                                                  "#45281f"), strict=True)},
}
_SWEEPS = (("CPU HPA", HPA_SWEEP, "#d62728"), ("KEDA (rps)", KEDA_SWEEP, "#8c564b"))


def _timeline_runs(result: BacktestResult) -> dict:
    """The runs the time plots draw: of each sweep only its 70 % setting (the ``hpa`` row is
    ``hpa-70`` under its old name), so the lines stay readable; the cost-violation chart has
    every setting."""
    return {
        name: run
        for name, run in result.runs.items()
        if name != HPA_ALIAS and (sweep_target(name) is None or name in ("hpa-70", "keda-70"))
    }


def _time_axis(result: BacktestResult, n_minutes: int) -> np.ndarray:
    start = result.start.tz_convert("UTC").tz_localize(None)
    return pd.date_range(start, periods=n_minutes, freq="1min").to_numpy()


def plot_overview(result: BacktestResult) -> bytes:
    """PNG: load and forecast; ready capacity per policy; violating requests per minute."""
    runs = _timeline_runs(result)
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
    for name, run in _timeline_runs(result).items():
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


def plot_cost_violations(result: BacktestResult) -> bytes:
    """PNG: core-hours (x) against requests over the SLO (y) for every policy; each sweep a
    curve through its targets (labelled in %), so a policy below and left of a curve
    dominates that baseline. y is logarithmic when the counts span more than 10x (symlog
    when one is 0)."""
    summaries = {
        name: run.summary() for name, run in result.runs.items() if name != HPA_ALIAS
    }
    fig, (ax,) = _new_figure(9, 6)
    for label, names, colour in _SWEEPS:
        pts = [(n, summaries[n]) for n in names if n in summaries]
        if not pts:
            continue
        xs = [p["core_hours"] for _, p in pts]
        ys = [p["violations"] for _, p in pts]
        ax.plot(xs, ys, "-o", color=colour, lw=1.2, ms=5, label=f"{label} sweep")
        for (n, _), x, y in zip(pts, xs, ys, strict=True):
            ax.annotate(f"{round(100 * sweep_target(n)[1])} %", (x, y), fontsize=7,
                        xytext=(4, 4), textcoords="offset points", color=colour)
    for name, p in summaries.items():
        if sweep_target(name) is not None:
            continue
        marker = "*" if name == "surgecast" else "s"
        ax.plot([p["core_hours"]], [p["violations"]], marker, ms=13 if marker == "*" else 7,
                color=_COLOURS.get(name, "#333333"), label=name, ls="none")
    ys = [p["violations"] for p in summaries.values()]
    positive = [y for y in ys if y > 0]
    if positive and min(ys) == 0:
        ax.set_yscale("symlog", linthresh=1.0)
    elif positive and max(positive) > 10 * min(positive):
        ax.set_yscale("log")
    ax.set_xlabel("core-hours (requested cores of every pod bound to a node)")
    ax.set_ylabel("requests over the SLO")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    return _png_bytes(fig)


def curve_comparison(result: BacktestResult, sweep: tuple[str, ...], label: str) -> str | None:
    """One sentence on where surgecast sits against a sweep: the setting it is compared with
    (the cheapest that costs at least as much as surgecast) and whether surgecast is on or
    below the sweep's cost-violation curve (no setting that costs as much or more has fewer
    requests over the SLO). None without surgecast or the sweep."""
    if "surgecast" not in result.runs:
        return None
    ours = result.runs["surgecast"].summary()
    points = {n: result.runs[n].summary() for n in sweep if n in result.runs}
    if not points:
        return None
    costlier = {n: p for n, p in points.items() if p["core_hours"] >= ours["core_hours"]}
    if not costlier:
        top = max(points, key=lambda n: points[n]["core_hours"])
        return (
            f"surgecast ({ours['core_hours']:.1f} core-hours) costs more than every {label} "
            f"setting run (the costliest, {top}, {points[top]['core_hours']:.1f}), so it is "
            f"not under that curve: {top} had {points[top]['violations']:,} requests over the "
            f"SLO against surgecast's {ours['violations']:,}."
        )
    ref = min(costlier, key=lambda n: (costlier[n]["core_hours"], n))
    better = sorted(n for n, p in costlier.items() if p["violations"] < ours["violations"])
    where = (
        f"surgecast sits on or below the {label} cost-violation curve"
        if not better
        else f"surgecast sits ABOVE the {label} cost-violation curve ({', '.join(better)} "
        "cost as much or more and had fewer)"
    )
    return (
        f"Against the {label}: the cheapest setting that costs at least as much as surgecast is "
        f"{ref} ({costlier[ref]['core_hours']:.1f} core-hours against "
        f"{ours['core_hours']:.1f}; {costlier[ref]['violations']:,} requests over the SLO "
        f"against {ours['violations']:,}); {where}."
    )


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
    for sweep, label in ((HPA_SWEEP, "CPU HPA"), (KEDA_SWEEP, "KEDA RPS HPA")):
        sentence = curve_comparison(result, sweep, label)
        if sentence:
            text += " " + sentence
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
<h2>Cost against violations</h2>
{_img(plot_cost_violations(result), "core-hours against requests over the SLO, every policy")}
<p class="note">Each sweep is one baseline at its targets (CPU HPA: % of the CPU request; KEDA:
% of one pod's capacity in requests per second as the trigger's threshold). A policy below a
curve has fewer violations than that baseline at the same cost; left of it, a lower cost at
the same violations. The <code>hpa</code> row is <code>hpa-70</code>.</p>
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
