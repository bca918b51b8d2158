"""Benchmark: one forecast cycle and one refit per model, and a full forecast-report run.

A forecast cycle is what the live pipeline does for one service every few minutes: from 1 day
of 1-minute history and a fitted model, decompose (hybrid), predict and add the conformal
quantiles. It is timed at ``--origins`` successive origins of the bundled Twitter trace (the
first one is not counted: it fills the noise-mode cache, as the first run of a service does);
medians are printed with the ratio to LightGBM on raw lags (the same learner without the
decomposition), measured in the same run. A refit is ``fit`` on 7 days of history.

    uv run python bench/forecast.py                 # cycles, refits, and the 2-day report
    uv run python bench/forecast.py --skip-report
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

from forecasting.decomposition import warm_up
from forecasting.models import MODELS, make_model
from surgecast.offline.sources import bundled_trace, load_rps_csv
from surgecast.offline.stages import forecast_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--origins", type=int, default=21)
    parser.add_argument("--skip-report", action="store_true")
    args = parser.parse_args()

    warm_up()
    rps = load_rps_csv(bundled_trace("twitter_1min.csv"))
    fit_end = pd.Timestamp("2024-01-15T00:00Z")
    history = rps.loc[fit_end - pd.Timedelta(days=7) : fit_end]
    print(f"# forecast benchmark on twitter_1min.csv; fit on 7 days up to {fit_end}")
    print(f"{'model':>15} {'refit s':>9} {'cycle ms (median)':>18} {'cycle p90 ms':>13}")
    cycles: dict[str, float] = {}
    refits: dict[str, float] = {}
    for name in MODELS:
        model = make_model(name)
        started = time.perf_counter()
        model.fit(history)
        refits[name] = time.perf_counter() - started
        times = []
        for i in range(args.origins):
            cutoff = fit_end + pd.Timedelta(minutes=5 * i)
            # 1 day of history up to the cutoff is all a forecast reads.
            recent = rps.loc[cutoff - pd.Timedelta(days=1) - pd.Timedelta(minutes=1) : cutoff]
            started = time.perf_counter()
            model.forecast(recent, cutoff=cutoff)
            if i > 0:
                times.append(time.perf_counter() - started)
        cycles[name] = statistics.median(times)
        p90 = statistics.quantiles(times, n=10)[-1]
        print(f"{name:>15} {refits[name]:9.2f} {cycles[name] * 1e3:18.1f} {p90 * 1e3:13.1f}")
    anchor = "lgbm_lags"
    print(
        f"hybrid / {anchor}: cycle x{cycles['hybrid'] / cycles[anchor]:.1f}, "
        f"refit x{refits['hybrid'] / refits[anchor]:.1f}"
    )
    if args.skip_report:
        return
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = forecast_report(None, out=Path(tmp))
        total = time.perf_counter() - started
    print(
        f"forecast-report, twitter_1min.csv, 2 test days, origin every 5 min, daily refit, "
        f"{len(MODELS)} models: {total:.0f} s ({result.origins} origins)"
    )


if __name__ == "__main__":
    main()
