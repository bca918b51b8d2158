"""The backtest: arrivals from traces, the policies, leak-freedom, results and the CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from forecasting import DEFAULT_MODEL
from forecasting.errors import BadInputError
from planner.profiles import bundled_profile, load_pipeline
from surgecast.cli import app
from surgecast.offline.backtest import (
    POLICIES,
    BacktestSettings,
    ModelForecaster,
    per_second_arrivals,
    run_backtest,
    write_results,
)

RESNET = load_pipeline(bundled_profile("resnet18"))
START = pd.Timestamp("2024-03-04T00:00:00Z")


def synthetic_trace(days: float = 4.0, seed: int = 3) -> pd.Series:
    """1-minute load: a daily cycle around 60 rps plus a 10-minute surge to ~3x every 3 hours."""
    n = int(days * 1440)
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    daily = 60 + 25 * np.sin(2 * np.pi * t / 1440)
    surge = np.where((t % 180 >= 100) & (t % 180 < 110), 2.0 * daily, 0.0)
    rps = np.maximum(daily + surge + rng.normal(0, 3, n), 0.0)
    index = pd.date_range(START, periods=n, freq="1min", tz="UTC", name="timestamp")
    return pd.Series(rps, index=index, name="rps")


def settings(**kw) -> BacktestSettings:
    base = BacktestSettings(
        slo_ms=750.0,
        train_days=3.0,
        model="lgbm_lags",
        start=START + pd.Timedelta(days=3),
        end=START + pd.Timedelta(days=3, hours=6),
    )
    return replace(base, **kw)


@pytest.fixture(scope="module")
def result():
    return run_backtest(
        synthetic_trace(), RESNET, settings(), trace_name="synthetic", profile_name="resnet18"
    )


# -- arrivals ---------------------------------------------------------------------------------


def test_one_second_counts_are_kept_and_gaps_filled_and_counted():
    index = pd.date_range(START, periods=6, freq="1s", tz="UTC")
    rps = pd.Series([5.0, 7.0, np.nan, np.nan, 9.0, 4.0], index=index, name="rps")
    got = per_second_arrivals(rps, scale=1.0, seed=0)
    assert got.counts[[0, 1, 4, 5]].tolist() == [5.0, 7.0, 9.0, 4.0]
    assert got.filled_seconds == 2 and np.all(got.counts[2:4] >= 0)


def test_coarse_traces_are_spread_as_seeded_poisson_arrivals():
    index = pd.date_range(START, periods=600, freq="10s", tz="UTC")
    rps = pd.Series(np.full(600, 40.0), index=index, name="rps")
    a = per_second_arrivals(rps, scale=1.0, seed=1)
    b = per_second_arrivals(rps, scale=1.0, seed=1)
    assert len(a.counts) == 6000 and np.array_equal(a.counts, b.counts)
    assert a.counts.mean() == pytest.approx(40.0, rel=0.02)
    assert a.counts.var() == pytest.approx(40.0, rel=0.1)  # Poisson: variance = mean
    half = per_second_arrivals(rps, scale=0.5, seed=1)
    assert half.counts.mean() == pytest.approx(20.0, rel=0.03)


# -- the HPA ----------------------------------------------------------------------------------
# The backtest's HPA is the cluster model's controller (its algorithm is tested in
# tests/test_kubeapi_controllers.py, its metric in tests/test_sim_engine.py).


# -- leak-freedom -----------------------------------------------------------------------------


def test_surgecast_forecasts_read_nothing_after_their_origin():
    trace = synthetic_trace()
    sim_start = START + pd.Timedelta(days=3)
    now_s = 3 * 3600
    origin = sim_start + pd.Timedelta(seconds=now_s)
    late = trace.copy()
    late.loc[origin:] *= 5.0  # the future changes; the forecast made at the origin must not
    a = ModelForecaster(trace, sim_start, settings())(now_s)
    b = ModelForecaster(late, sim_start, settings())(now_s)
    for q in a:
        np.testing.assert_array_equal(a[q], b[q])


def test_a_shared_forecaster_answers_an_origin_once_and_never_from_a_later_fit():
    trace = synthetic_trace()
    sim_start = START + pd.Timedelta(days=3)
    seen = []
    shared = ModelForecaster(
        trace, sim_start, settings(refit_days=0.5), on_forecast=lambda t, q: seen.append(t)
    )
    late = shared(6 * 3600)
    assert shared(6 * 3600) is late and len(seen) == 1  # the ablation's run: no second answer
    early = shared(3600)  # before the fit: refitted on its own past, as a fresh one would be
    fresh = ModelForecaster(trace, sim_start, settings(refit_days=0.5))(3600)
    for q in fresh:
        np.testing.assert_array_equal(early[q], fresh[q])
    assert len(seen) == 2


# -- the whole backtest -----------------------------------------------------------------------


def test_every_policy_runs_and_reports_the_results_json_fields(result, tmp_path):
    assert tuple(result.runs) == POLICIES
    js, html = write_results(result, tmp_path)
    data = json.loads(js.read_text())
    assert data["trace"] == "synthetic" and data["profile"] == "resnet18"
    assert data["slo_ms"] == 750.0 and data["seconds_simulated"] == 6 * 3600
    assert 0 < data["lower_bound"]["core_hours"] <= data["policies"]["static-peak"]["core_hours"]
    assert len(data["bars"]) == 4 and all(b["met"] in (True, False) for b in data["bars"])
    # the realistic cluster is the default: nodes that bind, resize times that vary, a Service
    assert data["settings"]["routing"] == "round-robin"
    assert data["settings"]["node_cores"] == 16 and data["settings"]["resize_spread"] == 0.5
    for row in data["policies"].values():
        assert set(row) - {"notes"} == {
            "requests",
            "violations",
            "violation_rate",
            "violation_minutes",
            "core_hours",
            "actions",
            "mean_utilisation",
            "wall_seconds",
            "core_hours_vs_lower_bound",
            "node_core_hours",
        }
        assert row["node_core_hours"] >= row["core_hours"]  # whole nodes held
        assert 0 <= row["violation_rate"] <= 1 and row["core_hours"] > 0
        assert row["wall_seconds"] >= 0
    page = html.read_text()
    assert "<img" in page and "surgecast" in page and "static-peak" in page
    assert page.count("<li>") >= 4 and "lower bound" in page


def test_the_peak_provisioned_cluster_is_the_cost_ceiling_and_meets_the_slo(result):
    s = {name: run.summary() for name, run in result.runs.items()}
    # The SLO is a p99 target (the planner sizes the p99 latency for it). Behind a Service
    # (round-robin: each pod its own queue) the peak-sized pods put 0.18 % over it; with one
    # queue for all pods (routing="pooled") under 0.1 %.
    assert s["static-peak"]["violation_rate"] < 0.005
    # (Reactive Themis is left out: behind a Service the pods a surge overloaded keep their
    # queues, its DP reads that backlog as load and sizes for it, and it spends more than the
    # peak-sized cluster on this span.)
    for name in ("hpa", "surgecast", "perfect-forecast"):
        assert s[name]["core_hours"] < s["static-peak"]["core_hours"], name


def test_proactive_scaling_beats_the_hpa_on_repeated_surges():
    # The default forecaster on surges that come every 3 hours at the same times each day: it
    # sees them coming, and the pipeline starts replicas a cold start early.
    begin = START + pd.Timedelta(days=3.5)
    run = run_backtest(
        synthetic_trace(days=4.5),
        RESNET,
        settings(
            model=DEFAULT_MODEL,
            train_days=3.5,
            start=begin,
            end=begin + pd.Timedelta(hours=6),
            policies=("surgecast", "hpa", "perfect-forecast"),
        ),
        trace_name="synthetic",
        profile_name="resnet18",
    )
    s = {name: r.summary() for name, r in run.runs.items()}
    assert s["surgecast"]["violations"] * 10 <= s["hpa"]["violations"], s
    assert s["perfect-forecast"]["violations"] <= s["hpa"]["violations"]


def test_the_ablation_rows_stand_beside_the_headline_and_say_what_they_are(result, tmp_path):
    js, _ = write_results(result, tmp_path)
    rows = json.loads(js.read_text())["policies"]
    names = list(rows)
    at = names.index("surgecast")
    assert names[at : at + 3] == ["surgecast", "surgecast-no-bridge", "surgecast-no-forecast"]
    # Each ablation is a run of its own, and says what it leaves out.
    assert "without the in-place bridge" in rows["surgecast-no-bridge"]["notes"]
    assert "without the pipeline" in rows["surgecast-no-forecast"]["notes"]
    for ablation in ("surgecast-no-bridge", "surgecast-no-forecast"):
        assert (rows[ablation]["violations"], rows[ablation]["core_hours"]) != (
            rows["surgecast"]["violations"], rows["surgecast"]["core_hours"]
        )


def test_backtests_are_deterministic_for_a_seed(result):
    again = run_backtest(
        synthetic_trace(),
        RESNET,
        settings(policies=("surgecast", "hpa")),
        trace_name="synthetic",
        profile_name="resnet18",
    )
    for name in ("surgecast", "hpa"):
        assert again.runs[name].summary() == result.runs[name].summary()


def test_bounds_cap_every_policy():
    capped = run_backtest(
        synthetic_trace(),
        RESNET,
        settings(max_replicas=3, max_cores=2, end=START + pd.Timedelta(days=3, hours=2)),
        trace_name="synthetic",
        profile_name="resnet18",
    )
    for run in capped.runs.values():
        assert run.replicas.max() <= 3 and run.cores.max() <= 2


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(start=START + pd.Timedelta(days=1)), "days of history"),
        (dict(end=START + pd.Timedelta(days=9)), "not inside the trace"),
        (dict(policies=("hpa", "kubernetes")), "unknown kubernetes"),
        (dict(end=START + pd.Timedelta(days=3, minutes=20)), "at least 1 hour"),
    ],
)
def test_bad_spans_and_policies_are_refused_with_one_line(kw, message):
    from forecasting.errors import BadInputError

    with pytest.raises(BadInputError, match=message) as info:
        run_backtest(
            synthetic_trace(),
            RESNET,
            settings(**kw),
            trace_name="synthetic",
            profile_name="resnet18",
        )
    assert "\n" not in str(info.value)


def test_cli_backtest_writes_the_report_and_prints_the_table(tmp_path):
    trace = synthetic_trace()
    csv = tmp_path / "load.csv"
    frame = trace.rename_axis("timestamp").reset_index()
    frame["timestamp"] = frame["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    frame.to_csv(csv, index=False)
    out = tmp_path / "out"
    args = [
        "backtest",
        str(csv),
        "--model",
        "naive",
        "--train-days",
        "3",
        "--policies",
        "hpa,surgecast,static-peak",
        "--routing",
        "least-outstanding",
        "--start",
        "2024-03-07T00:00:00Z",
        "--end",
        "2024-03-07T02:00:00Z",
        "--out",
        str(out),
    ]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    data = json.loads((out / "results.json").read_text())
    assert set(data["policies"]) == {  # hpa runs as hpa-70, reported under both names
        "hpa", "hpa-70", "surgecast", "surgecast-no-bridge", "surgecast-no-forecast",
        "static-peak",
    }
    assert data["settings"]["routing"] == "least-outstanding"
    assert (out / "report.html").exists() and "surgecast" in done.output
    bad = CliRunner().invoke(app, [*args[:-2], "--out", str(out), "--slo-ms", "-5"])
    assert bad.exit_code == 2
    assert "--slo-ms" in bad.output and "-5 is not in (0, 60000]" in bad.output
    bad = CliRunner().invoke(app, ["backtest", str(csv), "--policies", "magic"])
    assert bad.exit_code == 2 and "unknown magic" in bad.output


def test_the_static_shape_never_changes_and_carries_the_peak_minute(result):
    run = result.runs["static-peak"]
    peak_minute = run.arrivals[: len(run.arrivals) // 60 * 60].reshape(-1, 60).mean(axis=1).max()
    assert run.actions == 0 and run.capacity_rps.min() >= peak_minute


# -- the service as its config file gives it ----------------------------------------------------

CONFIG = """\
prometheus: {url: "http://127.0.0.1:9090"}
run_interval_s: 300
services:
  - name: resnet
    query: sum(rate(requests_total[1m]))
    namespace: inference
    deployment: resnet
    profile: resnet18
    slo_ms: 750
    forecast: {model: lgbm_lags}
    bounds: {min_replicas: 1, max_replicas: 3, min_cores: 1, max_cores: 2}
    bridge: {interval_s: 10}
"""


def test_a_config_file_backtests_its_service_as_it_ships(tmp_path):
    from surgecast.settings import load_settings

    path = tmp_path / "services.yaml"
    path.write_text(CONFIG)
    svc = load_settings(path).service("resnet")
    run = run_backtest(
        synthetic_trace(),
        RESNET,
        settings(policies=("surgecast", "hpa"), end=START + pd.Timedelta(days=3, hours=2)),
        trace_name="synthetic",
        profile_name="resnet18",
        spec=svc,
    )
    # The file's bounds bind every policy, the baselines too.
    for result in run.runs.values():
        assert result.replicas.max() <= 3 and result.cores.max() <= 2
    # Without them (the default bounds fit the trace's peak) surgecast would go higher.
    free = run_backtest(
        synthetic_trace(),
        RESNET,
        settings(policies=("surgecast",), end=START + pd.Timedelta(days=3, hours=2)),
        trace_name="synthetic",
        profile_name="resnet18",
    )
    assert free.runs["surgecast"].replicas.max() * free.runs["surgecast"].cores.max() > 6


def test_a_spec_whose_deployments_do_not_match_the_pipeline_is_refused(tmp_path):
    from surgecast.settings import load_settings

    path = tmp_path / "services.yaml"
    path.write_text(CONFIG)
    svc = load_settings(path).service("resnet")  # one Deployment, for resnet18's one stage
    video = load_pipeline(bundled_profile("video"))
    with pytest.raises(BadInputError, match=r"service resnet: 1 Deployment\(s\) for the 2 stage"):
        run_backtest(synthetic_trace(), video, settings(policies=("surgecast",)),
                     trace_name="synthetic", profile_name="video", spec=svc)


def test_a_production_config_backtests_without_its_secrets(tmp_path):
    """A backtest asks no server: the Prometheus secret a production file names (absent on a
    laptop) is not read, while ``run`` still refuses the file without it."""
    from typer.testing import CliRunner

    from surgecast.cli import app
    from surgecast.settings import load_settings

    path = tmp_path / "services.yaml"
    path.write_text(CONFIG.replace(
        'prometheus: {url: "http://127.0.0.1:9090"}',
        'prometheus:\n  url: "https://prometheus.example:9090"\n'
        '  auth: {type: bearer, secret_file: /nonexistent/token}',
    ))
    with pytest.raises(BadInputError, match="secret_file: cannot read /nonexistent/token"):
        load_settings(path)
    assert load_settings(path, resolve_secrets=False).prometheus.auth.secret is None
    csv = tmp_path / "trace.csv"
    synthetic_trace().rename("rps").to_csv(csv, index_label="timestamp")
    out = CliRunner().invoke(app, [
        "backtest", str(csv), "--config", str(path), "--policies", "hpa",
        "--start", (START + pd.Timedelta(days=3)).isoformat().replace("+00:00", "Z"),
        "--end", (START + pd.Timedelta(days=3, hours=1)).isoformat().replace("+00:00", "Z"),
        "--out", str(tmp_path / "out"),
    ])
    assert out.exit_code == 0, out.output
    assert json.loads((tmp_path / "out" / "results.json").read_text())["policies"]["hpa"]


def test_service_without_config_is_one_line_and_exit_2():
    from typer.testing import CliRunner

    from surgecast.cli import app

    out = CliRunner().invoke(app, ["backtest", "--service", "resnet"])
    assert out.exit_code == 2
    assert "--service: needs --config" in out.output and "Traceback" not in out.output
