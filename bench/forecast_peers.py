"""surgecast's forecasters against the libraries users would pick instead, on the same origins.

The peers are statsforecast (AutoETS, AutoTheta, MSTL with a daily season and an ETS trend)
and mlforecast (LightGBM on lags and calendar features, recursive, with its conformal
intervals). Every model forecasts at the same origins (every ``--every`` minutes across the
last ``--test-days`` of each trace), at horizons of 15 and 60 one-minute steps; each model is
fitted once on the data up to the first origin (surgecast's daily refit; statsforecast's
``cross_validation`` with ``refit=False``, which moves the fitted models along the data up to
each origin; mlforecast fitted once and updated with each origin's new minutes). The peers
read the trace with its gaps filled forward (nothing later is used); every model is scored on
the trace as it is, gaps left out.

Per model: MASE (scaled by the one-day seasonal-naive error of the history before the test
span), the q0.95 pinball loss and coverage, and the fit time. For every surgecast model, its
MASE relative to the best peer's with a 95 % moving-block bootstrap interval over origins
(blocks of one hour, 2,000 resamples, seed 0): "tied" when the interval holds 0.

    uv sync --group peers
    uv run --group peers python bench/forecast_peers.py                # bundled traces, h 15, 60
    uv run --group peers python bench/forecast_peers.py --trace FILE --horizon 15
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

# This file is bench/forecast_peers.py; keep bench/ off the import path so that names resolve
# to the project's packages.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from forecasting.evaluation import quantile_column, rolling_origin  # noqa: E402
from forecasting.metrics import relative_error_interval, seasonal_naive_scale  # noqa: E402
from surgecast.offline.sources import bundled_trace, load_rps_csv  # noqa: E402

OURS = ("naive", "seasonal_naive", "ets", "lgbm_lags", "hybrid", "adaptive")
DEFAULT = "adaptive"
"""The forecaster surgecast runs unless a service names another (``forecast.model``)."""
PEERS = ("AutoETS", "AutoTheta", "MSTL", "mlf-lgbm")
BUNDLED = ("twitter_1min.csv", "azure_llm_code_2024_10s.csv")
DAY = 1440  # one-minute steps
BLOCK_MINUTES = 60  # the bootstrap resamples blocks of one hour of origins


@dataclass
class Scores:
    """One model's forecasts at the common origins: point and q0.95, (origins, horizon)."""

    name: str
    point: np.ndarray
    q95: np.ndarray | None
    fit_s: float


def progress(what: str) -> None:
    """One line on stderr as each model starts (MSTL takes minutes per trace and horizon)."""
    print(f"{time.strftime('%H:%M:%S')} {what} ...", file=sys.stderr, flush=True)


def peers_frame(values: pd.Series) -> pd.DataFrame:
    """The long frame statsforecast and mlforecast read: gaps filled forward (leak-free)."""
    y = values.ffill().bfill()
    return pd.DataFrame({"unique_id": "rps", "ds": y.index.tz_convert(None), "y": y.to_numpy()})


def _grid(frame: pd.DataFrame, origins: pd.DatetimeIndex, horizon: int, col: str) -> np.ndarray:
    """A cross-validation frame's column as (origins, horizon), checked against the origins."""
    frame = frame.sort_values(["cutoff", "ds"])
    cutoffs = pd.DatetimeIndex(frame["cutoff"].unique()).tz_localize("UTC")
    if not cutoffs.equals(origins):
        raise RuntimeError(f"{col}: the library's cutoffs are not the common origins")
    return frame[col].to_numpy(dtype=np.float64).reshape(len(origins), horizon)


def run_statsforecast(df: pd.DataFrame, origins, horizon: int, every: int, train: int) -> list:
    from statsforecast import StatsForecast
    from statsforecast.models import MSTL, AutoETS, AutoTheta

    out = []
    for model in (
        AutoETS(season_length=1),  # a daily season of 1,440 steps is beyond ETS
        AutoTheta(season_length=DAY),
        MSTL(season_length=DAY, trend_forecaster=AutoETS(model="ZZN")),
    ):
        name = model.alias
        progress(f"{name}, horizon {horizon}")
        started = time.perf_counter()
        sf = StatsForecast(models=[model], freq="min", n_jobs=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cv = sf.cross_validation(
                h=horizon, df=df, n_windows=len(origins), step_size=every, input_size=train,
                level=[90], refit=False,
            )
        out.append(Scores(name, _grid(cv, origins, horizon, name),
                          _grid(cv, origins, horizon, f"{name}-hi-90"),
                          time.perf_counter() - started))
    return out


def run_mlforecast(df: pd.DataFrame, origins, horizon: int, every: int, train: int,
                   seed: int) -> Scores:
    from lightgbm import LGBMRegressor
    from mlforecast import MLForecast
    from mlforecast.lag_transforms import RollingMean
    from mlforecast.utils import PredictionIntervals

    progress(f"mlf-lgbm, horizon {horizon}")
    started = time.perf_counter()
    mlf = MLForecast(
        models={"mlf-lgbm": LGBMRegressor(n_estimators=300, learning_rate=0.05, num_leaves=31,
                                          random_state=seed, n_jobs=1, verbose=-1)},
        freq="min",
        lags=[1, 2, 3, 4, 5, 10, 15, 30, 60, DAY],
        lag_transforms={1: [RollingMean(window_size=15), RollingMean(window_size=60)]},
        date_features=["hour", "minute", "dayofweek"],
    )
    # mlforecast's cross_validation has no intervals without refits; the same by hand: fit
    # once on the data before the first origin, then add each origin's new minutes and predict.
    first = df["ds"].searchsorted(origins[0].tz_convert(None), side="right")
    cutoffs = [df["ds"].searchsorted(o.tz_convert(None), side="right") for o in origins]
    points, highs = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlf.fit(df.iloc[:first], keep_last_n=2 * DAY,
                prediction_intervals=PredictionIntervals(n_windows=4, h=horizon))
        done = first
        for end in cutoffs:
            if end > done:
                mlf.update(df.iloc[done:end])
                done = end
            fc = mlf.predict(horizon, level=[90])
            points.append(fc["mlf-lgbm"].to_numpy())
            highs.append(fc["mlf-lgbm-hi-90"].to_numpy())
    return Scores("mlf-lgbm", np.array(points), np.array(highs), time.perf_counter() - started)


def run_ours(rps: pd.Series, origins, horizon: int, every: int, seed: int,
             models: tuple[str, ...]) -> list[Scores]:
    out = []
    for name in models:
        progress(f"{name}, horizon {horizon}")
        started = time.perf_counter()
        ev = rolling_origin(rps, [name], test_start=origins[0], test_end=origins[-1],
                            every=every, refit_every=pd.Timedelta(days=100), horizon=horizon,
                            seed=seed)
        frame = ev.frame.sort_values(["cutoff", "h"])
        shape = (len(origins), horizon)
        out.append(Scores(name, frame[name].to_numpy().reshape(shape),
                          frame[quantile_column(name, 0.95)].to_numpy().reshape(shape),
                          time.perf_counter() - started))
    return out


def save_peers(path: Path, origins: pd.DatetimeIndex, peers: list[Scores]) -> None:
    """The peers' forecasts as plain arrays (no pickle), so that surgecast's models can be
    scored again on the same origins without running the peers again."""
    arrays = {"origins": origins.asi8}
    for s in peers:
        arrays[f"{s.name}|point"] = s.point
        arrays[f"{s.name}|q95"] = s.q95
        arrays[f"{s.name}|fit_s"] = np.array([s.fit_s])
    np.savez(path, **arrays)


def load_peers(path: Path, origins: pd.DatetimeIndex) -> list[Scores] | None:
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as data:
        if not np.array_equal(data["origins"], origins.asi8):
            return None
        return [Scores(name, data[f"{name}|point"], data[f"{name}|q95"],
                       float(data[f"{name}|fit_s"][0]))
                for name in PEERS if f"{name}|point" in data]


def evaluate(path: Path, horizon: int, args) -> dict:
    rps = load_rps_csv(path, step="1min")
    step = pd.Timedelta(minutes=1)
    test_end = rps.index[-1] - step * horizon - pd.Timedelta(days=args.before_days)
    test_start = test_end - pd.Timedelta(days=args.test_days) + step
    origins = rps.loc[test_start:test_end].index[:: args.every]
    train = args.train_days * DAY
    actual = np.stack([rps.reindex(o + step * np.arange(1, horizon + 1)).to_numpy()
                       for o in origins])
    scale = seasonal_naive_scale(rps.loc[: origins[0] - step], DAY)
    scores = run_ours(rps.loc[: origins[-1] + step * horizon], origins, horizon, args.every,
                      args.seed, tuple(args.models))
    if not args.no_peers:
        cache = args.out / (f"peers_{path.stem}_h{horizon}_every{args.every}_"
                            f"{origins[0]:%Y%m%dT%H%M}_{len(origins)}_train{args.train_days}.npz")
        peers = load_peers(cache, origins)
        if peers is None:
            df = peers_frame(rps.loc[origins[0] - step * train : origins[-1] + step * horizon])
            peers = run_statsforecast(df, origins, horizon, args.every, train)
            peers += [run_mlforecast(df, origins, horizon, args.every, train, args.seed)]
            save_peers(cache, origins, peers)
        scores += peers
    ok = ~np.isnan(actual)
    rows = {}
    per_origin = {}
    for s in scores:
        err = np.where(ok, np.abs(actual - s.point), 0.0)
        per_origin[s.name] = err.sum(axis=1)
        row = {"mase": float(err.sum() / ok.sum() / scale), "fit_s": round(s.fit_s, 1)}
        if s.q95 is not None:
            over = actual - s.q95
            pin = np.where(over >= 0, 0.95 * over, -0.05 * over)
            row["pinball_q95"] = float(pin[ok].mean())
            row["coverage_q95"] = float((actual[ok] <= s.q95[ok]).mean())
        rows[s.name] = row
    peers = [n for n in PEERS if n in rows]
    best = min(peers, key=lambda n: rows[n]["mase"]) if peers else None
    for name in args.models:
        if best is None:
            continue
        rel, lo, hi = relative_error_interval(per_origin[name], per_origin[best],
                                              max(1, BLOCK_MINUTES // args.every), args.seed)
        rows[name]["vs_best_peer"] = {"peer": best, "relative": rel, "ci95": [lo, hi],
                                      "verdict": "tied" if lo <= 0 <= hi else
                                      ("better" if hi < 0 else "worse")}
    return {"trace": path.name, "horizon": horizon, "origins": len(origins),
            "test_start": origins[0].isoformat(), "test_end": origins[-1].isoformat(),
            "mase_scale_rps": scale, "best_peer": best, "models": rows}


def table(result: dict) -> str:
    lines = [f"### {result['trace']}, horizon {result['horizon']} min "
             f"({result['origins']} origins from {result['test_start'][:16]})", "",
             "| model | MASE | vs best peer (95 % interval) | pinball q0.95 | coverage q0.95 "
             "| fit + forecasts |", "|---|---:|---|---:|---:|---:|"]
    for name, row in result["models"].items():
        vs = row.get("vs_best_peer")
        cell = "" if vs is None else (
            f"{100 * vs['relative']:+.1f} % ({100 * vs['ci95'][0]:+.1f} to "
            f"{100 * vs['ci95'][1]:+.1f} %), {vs['verdict']}")
        label = f"**{name}**" if name == DEFAULT else name
        if name == result["best_peer"]:
            label += " (best peer)"
        lines.append(f"| {label} | {row['mase']:.3f} | {cell} | {row.get('pinball_q95', 0):.3f} "
                     f"| {row.get('coverage_q95', float('nan')):.3f} | {row['fit_s']:.0f} s |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, action="append",
                        help="a timestamp,rps CSV (repeatable; default: the bundled traces)")
    parser.add_argument("--horizon", type=int, action="append",
                        help="steps of 1 minute (repeatable; default: 15 and 60)")
    parser.add_argument("--test-days", type=float, default=1.0)
    parser.add_argument("--before-days", type=float, default=0.0,
                        help="end the test span this many days before the trace's end (a "
                        "validation span for design choices)")
    parser.add_argument("--train-days", type=int, default=3,
                        help="days of history the peers are fitted on")
    parser.add_argument("--every", type=int, default=15, help="minutes between origins")
    parser.add_argument("--models", nargs="+", default=list(OURS), choices=OURS)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out/forecast-peers"))
    args = parser.parse_args()
    paths = args.trace or [bundled_trace(name) for name in BUNDLED]
    args.out.mkdir(parents=True, exist_ok=True)
    text = ""
    for path in paths:
        for horizon in args.horizon or [15, 60]:
            result = evaluate(path, horizon, args)
            (args.out / f"{path.stem}_h{horizon}.json").write_text(json.dumps(result, indent=1))
            part = table(result)
            print(part, flush=True)
            text += part + "\n"
    (args.out / "summary.md").write_text(text)


if __name__ == "__main__":
    main()
