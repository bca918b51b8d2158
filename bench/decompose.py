"""Benchmark: CEEMDAN on windows of the bundled Twitter trace, fast backend vs EMD-signal.

Times, in one process: EMD-signal (the anchor, ``parallel=False``), the fast backend cold (noise
EMDs computed inside the call, as for the first window of a given length) and warm (noise EMDs
cached, as for every later window of a backtest or a fleet), and pyemd-rs when it is installed.
Each timing is the median over windows ending at different days; speed-ups are ratios of medians
against EMD-signal measured in the same run. The largest difference between the fast backend's
components and EMD-signal's is printed too.

    uv run python bench/decompose.py                  # 1,440 and 10,080 points, 20 and 100 trials
    uv run python bench/decompose.py --sizes 1440 --windows 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

from forecasting.decomposition import NOISE_MODES, CeemdanSettings, ceemdan, warm_up
from surgecast.offline.sources import bundled_trace, load_rps_csv


def windows(n: int, count: int) -> list[np.ndarray]:
    """``count`` gap-filled windows of ``n`` points ending at midday of successive days."""
    rps = load_rps_csv(bundled_trace("twitter_1min.csv")).interpolate(limit_direction="both")
    first_end = rps.index[0] + pd.Timedelta(minutes=n) + pd.Timedelta(hours=12)
    ends = [first_end + pd.Timedelta(days=i) for i in range(count)]
    return [rps.loc[:end].iloc[-n:].to_numpy() for end in ends if end <= rps.index[-1]]


def timed(fn) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def bench_case(n: int, trials: int, count: int, anchor_windows: int) -> dict:
    cfg = CeemdanSettings(trials=trials, seed=0)
    sigs = windows(n, count)
    res: dict[str, list[float]] = {
        "emd_signal": [],
        "fast_cold": [],
        "fast_warm": [],
        "pyemd_rs": [],
    }
    worst_diff = 0.0
    imf_counts_agree = True
    for i, x in enumerate(sigs):
        NOISE_MODES.clear()
        t, cold = timed(lambda x=x: ceemdan(x, cfg, backend="fast"))
        res["fast_cold"].append(t)
        t, warm = timed(lambda x=x: ceemdan(x, cfg, backend="fast"))
        assert np.array_equal(cold, warm), "cached noise modes changed the result"
        res["fast_warm"].append(t)
        if i < anchor_windows:
            t, ref = timed(lambda x=x: ceemdan(x, cfg, backend="pyemd"))
            res["emd_signal"].append(t)
            imf_counts_agree &= ref.shape == warm.shape
            if ref.shape == warm.shape:
                worst_diff = max(worst_diff, float(np.max(np.abs(ref - warm))))
        try:
            import pyemd_rs
        except ImportError:
            continue
        t, _ = timed(lambda x=x: pyemd_rs.ceemdan(x, trials=trials, seed=0))
        res["pyemd_rs"].append(t)
    med = {k: statistics.median(v) for k, v in res.items() if v}
    return {
        "points": n,
        "trials": trials,
        "windows": len(sigs),
        "emd_signal_windows": len(res["emd_signal"]),
        "median_s": med,
        "speedup_vs_emd_signal": {
            k: med["emd_signal"] / v for k, v in med.items() if k != "emd_signal"
        },
        "max_abs_diff_vs_emd_signal_rps": worst_diff,
        "imf_counts_agree": imf_counts_agree,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1440, 10080])
    parser.add_argument("--trials", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--windows", type=int, default=5, help="windows per case")
    parser.add_argument(
        "--anchor-windows-large",
        type=int,
        default=1,
        help="EMD-signal runs per case above 5,000 points (each takes minutes)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    compile_s = warm_up()
    print(
        f"# CEEMDAN benchmark: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; kernel load/compile {compile_s:.1f} s (not timed below)"
    )
    header = (
        f"{'points':>7} {'trials':>6} {'EMD-signal':>11} {'fast cold':>10} {'fast warm':>10} "
        f"{'pyemd-rs':>9} {'x cold':>7} {'x warm':>7} {'x rs':>6} {'rs/warm':>8} {'max |diff|':>11}"
    )
    print(header)
    results = []
    for n in args.sizes:
        for trials in args.trials:
            anchor = args.windows if n <= 5000 else args.anchor_windows_large
            r = bench_case(n, trials, args.windows, anchor)
            results.append(r)
            m, s = r["median_s"], r["speedup_vs_emd_signal"]
            rs = f"{m['pyemd_rs']:9.3f}" if "pyemd_rs" in m else f"{'-':>9}"
            xrs = f"{s['pyemd_rs']:6.1f}" if "pyemd_rs" in s else f"{'-':>6}"
            rs_warm = f"{m['pyemd_rs'] / m['fast_warm']:8.1f}" if "pyemd_rs" in m else f"{'-':>8}"
            print(
                f"{n:>7} {trials:>6} {m['emd_signal']:11.3f} {m['fast_cold']:10.3f} "
                f"{m['fast_warm']:10.3f} {rs} {s['fast_cold']:7.1f} {s['fast_warm']:7.1f} {xrs} "
                f"{rs_warm} "
                f"{r['max_abs_diff_vs_emd_signal_rps']:11.2e}",
                flush=True,
            )
    print(
        "seconds are medians over windows; x = EMD-signal median / backend median; "
        "rs/warm = pyemd-rs median / fast warm median"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
