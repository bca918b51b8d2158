"""The evaluation protocol of docs/evaluation.md: every reported span, stress scenario and
setting, several seeds, every policy, the bars.

Each case is run once per seed through ``run_backtest`` (the code that ships, on the cluster
model); its results.json goes to OUT/<case>/seed-<n>/. The tables give per policy the median
and the range over the seeds of the requests over the SLO and the core-hours; then each bar
on each seed.

    uv run python bench/evaluation.py                      # everything (hours on 2 cores)
    uv run python bench/evaluation.py --only stress --seeds 0
    uv run python bench/evaluation.py --quick              # 6 hours per case, one seed
    uv run python bench/evaluation.py --only heldout --heldout nasa_http_1995_1min.csv
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# This file is bench/evaluation.py; keep bench/ off the import path so that names resolve to
# the project's packages.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

REALISTIC = {"node_cores": 16, "max_nodes": 64, "resize_spread": 0.5, "routing": "round-robin"}
"""The realistic cluster of docs/evaluation.md: 16-core nodes in a pool that grows, log-normal
resize times, requests routed to per-pod queues as a Kubernetes Service does."""


@dataclass(frozen=True)
class Case:
    name: str
    group: str
    trace: str
    start: str
    days: float
    scenario: str | None = None
    scenario_seed: int = 0
    scale: float = 1.0
    overrides: dict = field(default_factory=dict)


def cases(heldout: Path | None) -> list[Case]:
    out = [
        Case("twitter-reported", "reported", "twitter_1min.csv", "2024-01-15", 3.0),
        Case("azure-reported", "reported", "azure_llm_code_2024_10s.csv", "2024-05-15", 2.0),
    ]
    for seed in (0, 1, 2):
        out.append(Case(f"flash-crowd-{seed}", "stress", "twitter_1min.csv", "2024-01-15", 1.0,
                        "flash-crowd", seed))
    for scenario in ("event-then-quiet", "slow-ramp", "x3"):
        out.append(Case(scenario, "stress", "twitter_1min.csv", "2024-01-15", 1.0, scenario))
    for slo in (200.0, 400.0, 750.0):
        for cold in (10, 30, 120):
            out.append(Case(f"slo{slo:g}-cold{cold}", "matrix", "twitter_1min.csv", "2024-01-15",
                            1.0, overrides={"slo_ms": slo, "cold_start_s": cold}))
    if heldout is not None:
        out.append(Case("nasa-heldout", "heldout", str(heldout), "1995-08-28", 3.0, scale=100.0))
    return out


def run_case(case: Case, seed: int, out: Path, hours: float | None) -> dict:
    from planner.profiles import bundled_profile, load_pipeline
    from surgecast.offline.backtest import BacktestSettings, run_backtest, write_results
    from surgecast.offline.sources import bundled_trace, load_rps_csv

    path = Path(case.trace) if "/" in case.trace else bundled_trace(case.trace)
    rps = load_rps_csv(path)
    start = pd.Timestamp(case.start, tz="UTC")
    span = pd.Timedelta(hours=hours) if hours else pd.Timedelta(days=case.days)
    settings = BacktestSettings(
        start=start, end=start + span, seed=seed, rps_scale=case.scale,
        scenario=case.scenario, scenario_seed=case.scenario_seed,
        **{**REALISTIC, **case.overrides},
    )
    result = run_backtest(rps, load_pipeline(bundled_profile("resnet18")), settings,
                          trace_name=path.name, profile_name="resnet18")
    folder = out / case.name / f"seed-{seed}"
    write_results(result, folder)
    return json.loads((folder / "results.json").read_text())


def main() -> None:
    from surgecast.offline.bars import check_bars

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("reported", "stress", "matrix", "heldout"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--quick", action="store_true", help="6 hours per case, seed 0")
    parser.add_argument("--out", type=Path, default=Path("out/evaluation"))
    parser.add_argument("--heldout", type=Path, help="the NASA HTTP 1995 trace at 1 minute "
                        "(timestamp,rps CSV; not bundled): the held-out case")
    args = parser.parse_args()
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    hours = 6.0 if args.quick else None
    for case in cases(args.heldout):
        if args.only and case.group != args.only:
            continue
        started = time.perf_counter()
        runs = [run_case(case, seed, args.out, hours) for seed in seeds]
        print(f"\n## {case.name} ({case.group}; {case.trace.split('/')[-1]} from {case.start}, "
              f"{hours or 24 * case.days:g} h, seeds {','.join(map(str, seeds))}; "
              f"{time.perf_counter() - started:.0f} s)")
        print(f"{'policy':>22} {'over SLO (median [range])':>32} {'core-hours':>24}")
        for name in runs[0]["policies"]:
            v = np.array([r["policies"][name]["violations"] for r in runs])
            c = np.array([r["policies"][name]["core_hours"] for r in runs])
            print(f"{name:>22} {np.median(v):>14,.0f} [{v.min():,.0f}-{v.max():,.0f}]"
                  f" {np.median(c):>10.1f} [{c.min():.1f}-{c.max():.1f}]")
        bound = [r["lower_bound"]["core_hours"] for r in runs]
        print(f"{'lower bound':>22} {'':>32} {np.median(bound):>10.1f}")
        for seed, r in zip(seeds, runs, strict=True):
            for bar in check_bars(r):
                print(f"  seed {seed}: {bar.line()}")


if __name__ == "__main__":
    main()
