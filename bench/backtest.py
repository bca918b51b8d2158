"""Benchmark: a 7-day backtest of every policy, and the simulator alone.

On the bundled Twitter trace at 1 minute (spread into seeded Poisson arrivals per second), the
7 days after the first 4 (the forecaster's training days) are simulated at 1-second resolution
with the ResNet18 profile, on the in-memory cluster model: surgecast's pipeline cycle every 5
minutes (the default forecaster, daily refits, the real actuator through the port), the HPA above
its plan and the in-place bridge every 5 s on a scraped signal; the model's HPA at its 15 s
sync, Themis every 5 s, the VPA every minute. surgecast's run carries its ``surgecast-no-bridge``
and ``surgecast-no-forecast`` ablations, each timed on its own (the forecasts, which surgecast
and the no-bridge run share, are paid by surgecast's). Each policy runs in its own child
process, so its wall time and peak memory (max RSS) are its own (the ablations share
surgecast's); the ratios are against the HPA measured in the same run. "simulator alone"
replays the same arrivals through the serving engine with a shape that never changes (no
cluster model, no controller).

    uv run python bench/backtest.py                  # 7 days, every policy
    uv run python bench/backtest.py --days 1 --policies hpa,surgecast
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

# This file is bench/backtest.py; keep bench/ off the import path so that names resolve to the
# project's packages.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import pandas as pd  # noqa: E402

TRAIN_DAYS = 4.0


def _load():
    from planner.profiles import bundled_profile, load_pipeline
    from surgecast.offline.sources import bundled_trace, load_rps_csv

    rps = load_rps_csv(bundled_trace("twitter_1min.csv"))
    return rps, load_pipeline(bundled_profile("resnet18"))


def _policy_run(policy: str, days: float, queue) -> None:
    from forecasting.decomposition import warm_up
    from surgecast.offline.backtest import BacktestSettings, run_backtest

    rps, pipeline = _load()
    start = rps.index[0] + pd.Timedelta(days=TRAIN_DAYS)
    settings = BacktestSettings(
        policies=(policy,), start=start, end=start + pd.Timedelta(days=days)
    )
    if policy == "surgecast":
        warm_up()  # kernel compilation/loading is a one-off per machine, not per backtest
    started = time.perf_counter()
    result = run_backtest(
        rps, pipeline, settings, trace_name="twitter_1min.csv", profile_name="resnet18"
    )
    seconds = time.perf_counter() - started
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # surgecast's run carries its ablations; each row is timed on its own inside the run
    queue.put([
        (name, result.run_seconds[name], rss_mb, run.summary())
        for name, run in result.runs.items()
    ] if len(result.runs) > 1 else [(policy, seconds, rss_mb, result.runs[policy].summary())])


def _simulator_alone(days: float, queue) -> None:
    from actuator.guards import Bounds, within_bounds
    from planner.dp import horizontal
    from surgecast.offline.backtest import per_second_arrivals
    from surgecast.offline.simulator import SimulationSettings, simulate

    class Fixed:  # the shape never changes: the serving engine alone
        name = "fixed"

        def decide(self, view):
            return None

    rps, pipeline = _load()
    start = rps.index[0] + pd.Timedelta(days=TRAIN_DAYS)
    arrivals = per_second_arrivals(rps.loc[: start + pd.Timedelta(days=days)], scale=1.0, seed=0)
    offset = int((start - arrivals.start).total_seconds())
    counts = arrivals.counts[offset : offset + int(days * 86400)]
    shape = list(horizontal(pipeline, float(counts.max()), 750.0).stages)
    bounds = Bounds(1, 1000, 1, 16, 8)
    started = time.perf_counter()
    simulate(
        counts,
        pipeline,
        Fixed(),
        shape,
        SimulationSettings(750.0),
        lambda s, v, t, up: (lambda c: within_bounds(c, bounds),),
    )
    seconds = time.perf_counter() - started
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put([("simulator alone", seconds, rss_mb, None)])


def _in_child(target, *args):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def main() -> None:
    from surgecast.offline.backtest import POLICIES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--policies", default=",".join(POLICIES))
    args = parser.parse_args()
    policies = [p for p in args.policies.split(",") if p]
    if "surgecast" in policies:  # its run carries the ablations: not run twice
        policies = [p for p in policies if not p.startswith("surgecast-")]
    print(
        f"# backtest benchmark: twitter_1min.csv, {args.days:g} days after {TRAIN_DAYS:g} "
        f"training days, ResNet18, SLO 750 ms, 1-s resolution; one child process per row"
    )
    print(f"{'run':>16} {'wall s':>8} {'x hpa':>7} {'peak RSS MB':>12}  violations / core-hours")
    rows = _in_child(_simulator_alone, args.days)
    for p in policies:
        rows += _in_child(_policy_run, p, args.days)
    anchor = next((r[1] for r in rows if r[0] == "hpa"), None)
    for name, seconds, rss, summary in rows:
        ratio = f"{seconds / anchor:7.1f}" if anchor else f"{'':>7}"
        tail = f"{summary['violations']:,} / {summary['core_hours']:.1f}" if summary else ""
        print(f"{name:>16} {seconds:8.1f} {ratio} {rss:12.0f}  {tail}")
    total = sum(r[1] for r in rows[1:])
    print(
        f"all {len(rows) - 1} runs: {total:.0f} s ({total / 60:.1f} min) of backtest; "
        f"peak RSS of the largest: {max(r[2] for r in rows):.0f} MB"
    )


if __name__ == "__main__":
    main()
