"""How surgecast's forecasters come through regime shifts built from the bundled traces.

For every bundled trace and every shift in ``forecasting.stress`` (event days followed by a
quiet day, a level shift, a flash crowd), the models are fitted an hour before the change (as a
daily refit would have been) and forecast at an origin every 5 minutes from then until six hours
after it. Printed per model: the MAE (rps) in each hour after the change, the q0.95 coverage and
the under-prediction rate (share of actuals above q0.95) over the six hours after it, and the
same hours' MAE without the change. Then, for the default model, the q0.95 coverage by hour of
day (UTC, of the target) over the last ``--days`` of each trace without any change.

    uv run python bench/forecast_stress.py                      # bundled traces, horizon 15
    uv run python bench/forecast_stress.py --horizon 60 --models naive adaptive
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# This file is bench/forecast_stress.py; keep bench/ off the import path so that names resolve
# to the project's packages.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import pandas as pd  # noqa: E402

from forecasting import DEFAULT_MODEL, stress  # noqa: E402
from forecasting.evaluation import quantile_column, rolling_origin  # noqa: E402
from surgecast.offline.sources import bundled_trace, load_rps_csv  # noqa: E402

BUNDLED = ("twitter_1min.csv", "azure_llm_code_2024_10s.csv")
HOUR = pd.Timedelta(hours=1)
SHIFTS = ("event_then_quiet", "level_shift", "flash_crowd")


def shifted(rps: pd.Series, kind: str) -> tuple[pd.Series, pd.Timestamp]:
    """The trace with one shift on its last full day (10:00 UTC, a flash crowd at 10:07)."""
    day = rps.index[-1].normalize() - pd.Timedelta(days=1)
    if kind == "event_then_quiet":
        return stress.event_then_quiet(rps, day)
    if kind == "level_shift":
        return stress.level_shift(rps, day + 10 * HOUR)
    if kind == "flash_crowd":
        return stress.flash_crowd(rps, day + pd.Timedelta(hours=10, minutes=7))
    if kind == "none":
        return rps, day + 10 * HOUR
    raise ValueError(kind)


def run(rps: pd.Series, kind: str, models: list[str], horizon: int) -> dict:
    series, t0 = shifted(rps, kind)
    ev = rolling_origin(
        series.loc[: t0 + 7 * HOUR], models, test_start=t0 - HOUR, test_end=t0 + 6 * HOUR,
        every=5, refit_every=pd.Timedelta(days=10), horizon=horizon,
    )
    frame = ev.frame.dropna(subset=["y"])
    after = (frame["cutoff"] - t0) / HOUR
    out = {}
    for m in models:
        err = (frame[m] - frame["y"]).abs()
        hours = [float(err[(after >= a) & (after < a + 1)].mean()) for a in range(6)]
        six = after >= 0
        above = frame["y"][six] > frame[quantile_column(m, 0.95)][six]
        out[m] = {
            "mae_by_hour": hours,
            "mae_hours_1_to_6": float(err[(after >= 1) & (after < 6)].mean()),
            "coverage_q95_6h": float(1.0 - above.mean()),
            "under_q95_6h": float(above.mean()),
        }
    return out


def coverage_by_hour(rps: pd.Series, model: str, horizon: int, days: float) -> pd.DataFrame:
    """q0.95 coverage per hour of day of the target (UTC), over an origin every 10 minutes
    across the last ``days`` of the trace (one fit before the first)."""
    end = rps.index[-1] - pd.Timedelta(minutes=horizon)
    start = end - pd.Timedelta(days=days)
    ev = rolling_origin(rps, [model], test_start=start, test_end=end, every=10,
                        refit_every=pd.Timedelta(days=100), horizon=horizon)
    frame = ev.frame.dropna(subset=["y"])
    above = frame["y"] > frame[quantile_column(model, 0.95)]
    hour = pd.DatetimeIndex(frame["ds"]).hour
    out = pd.DataFrame({"coverage": 1.0 - above.groupby(hour).mean(),
                        "pairs": above.groupby(hour).size()})
    out.attrs["overall"] = float(1.0 - above.mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, action="append")
    parser.add_argument("--horizon", type=int, default=15)
    parser.add_argument("--models", nargs="+", default=["naive", "lgbm_lags", DEFAULT_MODEL])
    parser.add_argument("--days", type=float, default=2.0,
                        help="days at the end of each trace for the coverage by hour of day")
    parser.add_argument("--out", type=Path, default=Path("out/forecast-stress"))
    args = parser.parse_args()
    paths = args.trace or [bundled_trace(name) for name in BUNDLED]
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for path in paths:
        rps = load_rps_csv(path, step="1min")
        plain = run(rps, "none", args.models, args.horizon)
        for kind in SHIFTS:
            res = run(rps, kind, args.models, args.horizon)
            results[f"{path.stem}/{kind}"] = {"shifted": res, "without": plain}
            print(f"\n### {path.name}, {kind}, horizon {args.horizon}\n")
            print("| model | MAE (rps) in hours 0-1 … 5-6 after | hours 1-6 | same hours, no "
                  "shift | q0.95 coverage, 6 h | above q0.95 |")
            print("|---|---|---:|---:|---:|---:|")
            for m in args.models:
                r, p = res[m], plain[m]
                hours = " · ".join(f"{x:.1f}" for x in r["mae_by_hour"])
                print(f"| {m} | {hours} | {r['mae_hours_1_to_6']:.1f} | "
                      f"{p['mae_hours_1_to_6']:.1f} | {r['coverage_q95_6h']:.3f} | "
                      f"{r['under_q95_6h']:.3f} |", flush=True)
    for path in paths:
        rps = load_rps_csv(path, step="1min")
        table = coverage_by_hour(rps, DEFAULT_MODEL, args.horizon, args.days)
        results[f"{path.stem}/coverage_by_hour"] = {
            "overall": table.attrs["overall"],
            "by_hour": {int(h): float(c) for h, c in table["coverage"].items()},
        }
        low = table["coverage"].idxmin()
        print(f"\n{path.name}: {DEFAULT_MODEL} q0.95 coverage over the last {args.days:g} days "
              f"{table.attrs['overall']:.3f}; by hour of day (UTC) from "
              f"{table['coverage'].min():.3f} ({low:02d}h) to {table['coverage'].max():.3f}; "
              f"hours below 0.90: {int((table['coverage'] < 0.90).sum())} of {len(table)}")
        print(" ".join(f"{h:02d}h {c:.2f}" for h, c in table["coverage"].items()), flush=True)
    (args.out / f"stress_h{args.horizon}.json").write_text(json.dumps(results, indent=1))
    ratio = {k: v["shifted"][DEFAULT_MODEL]["mae_hours_1_to_6"]
             / v["shifted"]["naive"]["mae_hours_1_to_6"]
             for k, v in results.items() if "shifted" in v
             and DEFAULT_MODEL in v["shifted"] and "naive" in v["shifted"]}
    if ratio:
        print("\n" + DEFAULT_MODEL + " / naive MAE, hours 1-6 after the shift: "
              + ", ".join(f"{k} {r:.2f}" for k, r in ratio.items()))


if __name__ == "__main__":
    main()
