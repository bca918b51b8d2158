"""Benchmark: time per planner decision against the brute-force oracle in the same run.

Every decision sizes a pipeline for a random load (0-1000 rps) at an SLO of 1000 ms, with up to
16 cores per replica and batches up to 8 (128 shapes per stage). Single stage: ResNet18. Three
stages: YOLOv5n -> ResNet18 -> ResNet18 (earlier Themis fit), 128^3 = 2.1 M combinations for the
oracle. Medians over the loads, the ratio to the oracle, and the check that every answer costs
exactly what the oracle's does. The first call of each profile fills its shape cache and is not
timed (a service's first plan pays it once). Also timed: one two-stage plan for the video
pipeline from a 15-step forecast.

    uv run python bench/planner.py
    uv run python bench/planner.py --loads 200 --oracle-loads-3 10
"""

# ruff: noqa: E402
from __future__ import annotations

import sys
from pathlib import Path

# This script is named like the package it measures; run as ``python bench/planner.py`` its
# folder comes first on the import path, so drop it for ``import planner`` to find the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from planner.dp import brute_force, horizontal, vertical
from planner.policy import ClusterState, PolicySettings, plan_two_stage
from planner.profiles import Pipeline, bundled_profile, load_pipeline

SLO_MS = 1000.0
BARS_MS = {1: 1.0, 3: 20.0}


def _median_ms(fn: Callable[[float], object], loads: np.ndarray) -> tuple[float, list]:
    times, answers = [], []
    for load in loads:
        started = time.perf_counter()
        answers.append(fn(float(load)))
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3, answers


def _pipelines() -> dict[int, Pipeline]:
    def one(name: str):
        return load_pipeline(bundled_profile(name)).stages[0]

    return {
        1: Pipeline("resnet18", (one("resnet18"),)),
        3: Pipeline("three", (one("yolov5n"), one("resnet18"), one("resnet18_themis_v1"))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=500, help="random loads per DP timing")
    parser.add_argument(
        "--oracle-loads-3", type=int, default=20, help="loads for the 3-stage oracle"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)

    print(f"# planner benchmark: SLO {SLO_MS:g} ms, cores <= 16, batch <= 8, seed {args.seed}")
    header = (
        f"{'decision':>22} {'stages':>6} {'loads':>6} {'DP ms':>8} {'oracle ms':>10} "
        f"{'speed-up':>9} {'equal cost':>11} {'bar ms':>7} {'met':>4}"
    )
    print(header)
    for stages, pipeline in _pipelines().items():
        _bench_dps(stages, pipeline, rng, args.loads, args.oracle_loads_3)
    _bench_plan(rng, args.loads)


def _bench_dps(
    stages: int, pipeline: Pipeline, rng: np.random.Generator, n: int, oracle_loads_3: int
) -> None:
    horizontal(pipeline, 1.0, SLO_MS)  # fill the shape cache (not timed)
    loads = rng.uniform(0.0, 1000.0, n)
    oracle_n = n if stages == 1 else oracle_loads_3
    dp_ms, dp = _median_ms(lambda x: horizontal(pipeline, x, SLO_MS), loads)
    bf_ms, bf = _median_ms(lambda x: brute_force(pipeline, x, SLO_MS), loads[:oracle_n])
    equal = sum(a.cost_cores == b.cost_cores for a, b in zip(dp, bf, strict=False))
    met = "yes" if dp_ms <= BARS_MS[stages] else "NO"
    print(
        f"{'horizontal (DP 1)':>22} {stages:>6} {n:>6} {dp_ms:8.3f} {bf_ms:10.3f} "
        f"{bf_ms / dp_ms:8.0f}x {equal:>5}/{oracle_n:<5} {BARS_MS[stages]:7.0f} {met:>4}"
    )
    replicas = iter(rng.integers(1, 8, size=(n, stages)))
    v_ms, _ = _median_ms(lambda x: vertical(pipeline, x, SLO_MS, next(replicas)), loads)
    met = "yes" if v_ms <= BARS_MS[stages] else "NO"
    print(
        f"{'vertical (DP 2)':>22} {stages:>6} {n:>6} {v_ms:8.3f} {'':>10} "
        f"{'':>9} {'':>11} {BARS_MS[stages]:7.0f} {met:>4}"
    )


def _bench_plan(rng: np.random.Generator, n: int) -> None:
    video = load_pipeline(bundled_profile("video"))
    settings = PolicySettings(slo_ms=SLO_MS)
    cutoff = pd.Timestamp("2024-01-01T07:30:00Z")
    times = []
    for _ in range(n):
        base = rng.uniform(20, 150)
        forecast = base * (1 + rng.uniform(0, 3) * (rng.uniform(size=15) > 0.7))
        state = ClusterState(tuple(rng.integers(1, 8, 2)), tuple(rng.integers(1, 4, 2)), (1, 1))
        started = time.perf_counter()
        plan_two_stage("video", video, state, base, forecast, 60.0, cutoff, settings)
        times.append(time.perf_counter() - started)
    print(
        f"{'plan_two_stage':>22} {2:>6} {n:>6} {statistics.median(times) * 1e3:8.3f} "
        f"(video pipeline, 15-step forecast; p90 {np.percentile(times, 90) * 1e3:.3f} ms)"
    )


if __name__ == "__main__":
    main()
