"""The baselines at their best: the HPA's metrics pipeline and pod grouping, the External
metric HPA a KEDA Prometheus trigger creates, the VPA recommender and updater, and the sweeps in
the backtest and its report."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from simtoy import DEP, NS, START, setup
from test_backtest import RESNET, settings, synthetic_trace
from typer.testing import CliRunner

from actuator.guards import Bounds
from actuator.spec import WorkloadSpec
from forecasting.errors import BadInputError
from surgecast.cli import app
from surgecast.offline.backtest import (
    HPA_SWEEP,
    KEDA_SWEEP,
    POLICIES,
    expand_policies,
    run_backtest,
    write_results,
)
from surgecast.offline.backtest_report import curve_comparison, verdict
from surgecast.offline.cluster import (
    Clock,
    ClusterModel,
    Node,
    PodMetric,
    cpu_m,
    external_average_value,
)
from surgecast.offline.controllers import CpuAggregate, CpuHistogram, VpaController
from surgecast.offline.engine import MetricsServer
from surgecast.offline.port import SimPort
from surgecast.settings import ServiceSettings, Settings

HPA = "toy-hpa"
DAY_S = 86400.0

# -- the CPU HPA's metrics pipeline -----------------------------------------------------------


def _first_scale_up_after(replicas: np.ndarray, t: int) -> int:
    up = np.flatnonzero(np.diff(replicas[t:]) > 0)
    return t + int(up[0]) + 1


@pytest.mark.parametrize("resolution_s", [15.0, 60.0])
def test_metrics_lag_delays_a_scale_up_by_the_resolution(resolution_s):
    """A step from 10 to 70 rps at 120 s. The HPA sees CPU only through metrics-server's last
    scrape: the rate between two scrapes of a counter the kubelet refreshes every 10 s. A scrape
    whose window is wholly after the step comes at most a resolution plus a housekeeping
    interval later, and the HPA acts at its next 15 s sync: later by about the resolution."""
    counts = np.concatenate([np.full(120, 10.0), np.full(480, 70.0)])
    model, _, engine = setup(counts, replicas=2)
    engine.metrics_server = MetricsServer(engine, resolution_s)
    model.add_hpa(NS, HPA, DEP, min_replicas=1, max_replicas=10, target_utilisation=70)
    result = engine.run()
    up = _first_scale_up_after(result.replicas, 120)
    # the window after the step: from the first sample at or after it to the one a resolution
    # later (the scrape grid is offset by half a resolution), plus the HPA's sync
    assert 120 + 10 < up <= 120 + resolution_s + 10 + 15 + resolution_s / 2
    if resolution_s == 15.0:
        assert up <= 120 + 30  # no lag at all would act at 135
    else:
        assert up >= 120 + 60  # a 60 s resolution cannot see the step within a minute


def test_a_longer_resolution_acts_later_by_about_the_difference():
    counts = np.concatenate([np.full(120, 10.0), np.full(480, 70.0)])
    ups = []
    for resolution_s in (15.0, 60.0):
        model, _, engine = setup(counts, replicas=2)
        engine.metrics_server = MetricsServer(engine, resolution_s)
        model.add_hpa(NS, HPA, DEP, min_replicas=1, max_replicas=10, target_utilisation=70)
        ups.append(_first_scale_up_after(engine.run().replicas, 120))
    assert 60 - 15 - 15 <= ups[1] - ups[0] <= 60 + 15


def test_metrics_server_reports_the_rate_between_its_last_two_scrapes():
    """4 Ready pods of 1 core, half busy for 60 s: each reports ~500 m over the window between
    the kubelet samples its last two scrapes read, stamped with the later one."""
    model, _, engine = setup(np.full(60, 40.0), replicas=4, cores=1)
    engine.run()
    pods = model.pods_of(NS, DEP)
    metrics = engine.metrics_server.pod_metrics(0, pods)
    # 60 s served: scrapes at 7.5, 22.5, 37.5, 52.5 s read the samples at 0, 20, 30, 50 s
    assert set(metrics) == {p["metadata"]["name"] for p in pods}
    for m in metrics.values():
        assert m.millicores == pytest.approx(500, abs=5)
        assert m.timestamp_s == START.timestamp() + 50 and m.window_s == 20


def test_bad_metrics_settings_are_refused():
    _, _, engine = setup(np.full(60, 10.0))
    with pytest.raises(ValueError, match="metric_resolution_s"):
        MetricsServer(engine, 0.5)
    with pytest.raises(ValueError, match="housekeeping_s"):
        MetricsServer(engine, 15.0, housekeeping_s=20.0)


# -- pods as replica_calculator.go groups them -----------------------------------------------


def _cluster(ready: int, starting: int, start_delay_s: float = 60.0):
    """``ready`` Ready pods of 1 core and ``starting`` pods scheduled but not Ready yet."""
    model = ClusterModel(Clock(START.timestamp()), start_delay_s=start_delay_s,
                         nodes=[Node("node-1", 64_000)])
    model.add_deployment(NS, DEP, replicas=ready, cores=1)
    if starting:
        SimPort(model).patch_scale(NS, DEP, {"spec": {"replicas": ready + starting}},
                                   dry_run=False)
    return model


def _stated(model, percent: float, skip: set[str] = frozenset(), window_s: float = 10.0):
    """The metrics API: ``percent`` of the request for Ready pods, 0 for the others, stamped
    now; pods in ``skip`` have no metric."""

    def metrics(hpa, pods):
        out = {}
        for pod in pods:
            name = pod["metadata"]["name"]
            if name in skip or not pod["spec"].get("nodeName"):
                continue
            ready = any(c["type"] == "Ready" and c["status"] == "True"
                        for c in pod["status"].get("conditions") or [])
            out[name] = PodMetric(round(1000 * percent / 100) if ready else 0, model.now,
                                  window_s)
        return out

    model.metrics = metrics


def _replicas(model) -> int:
    return model.get("deployments", NS, DEP)["spec"]["replicas"]


def test_unready_pods_count_as_idle_on_a_scale_up():
    """3 Ready pods at 98 % (ratio 1.4) and 1 starting: counting only the Ready ones would ask
    ceil(1.4 x 3) = 5; with the starting pod at 0 % the ratio is 98 x 3 / (70 x 4) = 1.05,
    within the tolerance: no change."""
    model = _cluster(ready=3, starting=1)
    model.add_hpa(NS, HPA, DEP, min_replicas=1, max_replicas=10, target_utilisation=70)
    _stated(model, 98)
    model.clock.advance(15)
    assert _replicas(model) == 4
    model.clock.advance(60)  # the starting pod is Ready (and its sample whole): now ratio 1.4
    assert _replicas(model) == 6  # ceil(1.4 x 4)


def test_unready_pods_are_left_out_of_a_scale_down():
    """3 Ready pods at 35 % (ratio 0.5) and 1 starting: the starting pod neither counts as
    busy nor as a replica: ceil(0.5 x 3) = 2."""
    model = _cluster(ready=3, starting=1)
    model.add_hpa(NS, HPA, DEP, min_replicas=1, max_replicas=10, target_utilisation=70)
    _stated(model, 35)
    model.clock.advance(15)
    assert model.get("horizontalpodautoscalers", NS, HPA)["status"]["desiredReplicas"] == 2


@pytest.mark.parametrize(("percent", "expected"), [(35, 3), (98, 4)])
def test_pods_missing_metrics_count_as_full_on_a_scale_down_and_idle_on_a_scale_up(
    percent, expected
):
    """4 Ready pods, one without a metric. At 35 % it counts as 100 %: (35 x 3 + 100) / (70 x
    4) = 0.73 -> ceil(0.73 x 4) = 3 (2 if it were left out). At 98 % it counts as 0 %: 98 x 3
    / (70 x 4) = 1.05, within the tolerance (5 if it were left out)."""
    model = _cluster(ready=4, starting=0)
    missing = model.pods_of(NS, DEP)[0]["metadata"]["name"]
    model.add_hpa(NS, HPA, DEP, min_replicas=1, max_replicas=10, target_utilisation=70)
    _stated(model, percent, skip={missing})
    model.clock.advance(15)
    assert model.get("horizontalpodautoscalers", NS, HPA)["status"]["desiredReplicas"] == expected


def test_a_pod_just_ready_counts_once_a_whole_window_follows_its_readiness():
    """Within the CPU initialisation period a Ready pod's sample counts only if its window
    began after the pod turned Ready (``--horizontal-pod-autoscaler-cpu-initialization-
    period``): until then the pod is unready, 0 % on a scale-up."""
    model = _cluster(ready=2, starting=1, start_delay_s=30.0)  # the third Ready at +30 s
    model.add_hpa(NS, HPA, DEP, min_replicas=1, max_replicas=10, target_utilisation=70)
    stamps = {}

    def metrics(hpa, pods):  # 98 % everywhere, a 15 s window ending 5 s ago
        stamps[model.now] = model.now - 5
        return {p["metadata"]["name"]: PodMetric(980, model.now - 5, 15.0)
                for p in pods if p["spec"].get("nodeName")}

    model.metrics = metrics
    model.clock.advance(45)  # sync at 45: the sample ends at 40, began at 25: before Ready
    assert _replicas(model) == 3  # 98 x 2 / (70 x 3) = 0.93: within the tolerance
    model.clock.advance(15)  # sync at 60: the sample began at 40, after Ready at 30
    assert _replicas(model) == 5  # ceil(1.4 x 3)


# -- the External metric HPA (KEDA's Prometheus trigger) --------------------------------------


def _external_cluster(ready: int, starting: int = 0):
    model = _cluster(ready, starting)
    model.add_hpa(NS, HPA, DEP, min_replicas=1, max_replicas=20,
                  metrics=[external_average_value("s0-prometheus", 10.0,
                                                  {"scaledobject.keda.sh/name": DEP})])
    return model


@pytest.mark.parametrize(("rps", "expected"), [(55.0, 6), (42.0, 4), (36.0, 4), (30.0, 3)])
def test_external_average_value_scales_to_the_total_over_the_threshold(rps, expected):
    """4 pods, 10 rps per pod as the target: ceil(total / 10) beyond the 10 % tolerance
    (42 and 36 are within 5 % and 10 % of 40: no change)."""
    model = _external_cluster(4)
    model.set_external_metric("s0-prometheus", rps)
    model.clock.advance(15)
    hpa = model.get("horizontalpodautoscalers", NS, HPA)
    assert hpa["status"]["desiredReplicas"] == expected
    current = hpa["status"]["currentMetrics"][0]
    assert current["type"] == "External"
    assert current["external"]["current"]["averageValue"] == f"{math.ceil(rps * 1000 / 4)}m"


def test_external_metric_counts_every_pod_ready_or_not():
    """Unlike CPU, the External per-pod ratio divides by the scale's status replicas: 2 Ready
    and 2 starting pods at 42 rps are within the tolerance of 4 x 10."""
    model = _external_cluster(2, starting=2)
    model.set_external_metric("s0-prometheus", 42.0)
    model.clock.advance(15)
    assert _replicas(model) == 4


def test_an_external_metric_without_a_value_changes_nothing():
    model = _external_cluster(4)
    model.clock.advance(30)
    hpa = model.get("horizontalpodautoscalers", NS, HPA)
    active = next(c for c in hpa["status"]["conditions"] if c["type"] == "ScalingActive")
    assert (active["status"], active["reason"]) == ("False", "FailedGetExternalMetric")
    assert _replicas(model) == 4
    with pytest.raises(ValueError, match="average_value"):
        external_average_value("s0-prometheus", 0.0)


def test_the_keda_engine_feed_is_the_scraped_rate_over_a_minute():
    """Through the engine: 45 rps on 2 pods with a 10 rps threshold scales to ceil(45/10)."""
    from surgecast.offline.bridge import ScrapedRate

    model, _, engine = setup(np.full(300, 45.0), replicas=2)
    scraped = ScrapedRate(engine, 15.0)
    engine.external_metrics["s0-prometheus"] = lambda: scraped.rate(60.0)
    model.add_hpa(NS, HPA, DEP, min_replicas=1, max_replicas=20,
                  metrics=[external_average_value("s0-prometheus", 10.0)])
    result = engine.run()
    assert result.replicas[14] == 2 and result.replicas[16] == 4  # rate-limited: max(2x2, 4)
    assert result.replicas[-1] == 5


# -- the VPA recommender ----------------------------------------------------------------------


def test_the_histogram_decays_an_old_peak_weighs_half_after_a_half_life():
    h = CpuHistogram()
    h.add(4.0, 1.0, 0.0)
    h.add(1.0, 1.0, DAY_S)
    old, new = h.weights[h.find_bucket(4.0)], h.weights[h.find_bucket(1.0)]
    assert old / new == pytest.approx(0.5)
    # p60: without decay (equal weights) the 4-core peak; with it, the recent 1 core
    same = CpuHistogram()
    same.add(4.0, 1.0, DAY_S)
    same.add(1.0, 1.0, DAY_S)
    assert same.percentile(0.6) > 4.0
    assert 1.0 < h.percentile(0.6) <= 1.06


def test_the_histogram_renormalises_far_in_time_without_losing_ratios():
    h = CpuHistogram(half_life_s=3600.0)
    h.add(2.0, 1.0, 0.0)
    h.add(3.0, 1.0, 150 * 3600.0)  # 150 half-lives later: past the exponent limit of 100
    h.add(2.0, 1.0, 151 * 3600.0)
    assert np.all(np.isfinite(h.weights))
    assert h.weights[h.find_bucket(2.0)] / h.weights[h.find_bucket(3.0)] == pytest.approx(2.0)


def _bucket_end(value: float) -> float:
    """The end of the exponential bucket (0.01 core first, 5 % wider each) holding
    ``value``: worked out here, not read from the histogram."""
    k = math.floor(math.log(value * 0.05 / 0.01 + 1) / math.log(1.05))
    return 0.01 * (1.05 ** (k + 1) - 1) / 0.05


def test_the_recommendation_is_the_percentiles_plus_the_margin_and_confidence():
    agg = CpuAggregate()
    rng = np.random.default_rng(0)
    values = rng.uniform(0.5, 1.5, 2 * 1440)  # 2 days at one sample a minute
    for i, v in enumerate(values):
        agg.add(float(v), 1.0, START.timestamp() + 60 * i)
    rec = agg.recommend()
    c = agg.confidence()
    assert c == pytest.approx((2 * 1440 - 1) / 1440)
    # decay over 2 days barely moves the percentiles of uniform samples: a known answer
    # within a bucket or two
    for got, q, mult in (
        (rec.target, 0.9, 1.15),
        (rec.lower, 0.5, 1.15 * (1 + 0.001 / c) ** -2),
        (rec.upper, 0.95, 1.15 * (1 + 1 / c)),
    ):
        expected = _bucket_end(float(np.quantile(values, q))) * mult
        assert got == pytest.approx(expected, rel=0.11)
    h = agg.histogram
    assert rec.target == pytest.approx(h.percentile(0.9) * 1.15)
    empty = CpuAggregate().recommend()
    assert empty.target == empty.lower == pytest.approx(0.025)  # the 25 m floor


def _vpa(cores: int, usage_cores: float):
    model, port, engine = setup(np.full(180, 10.0), replicas=2, cores=cores)
    bounds = Bounds(1, 10, 1, 8, 8)
    svc = ServiceSettings(
        name="toy", query="x", namespace=NS, profile="toy", slo_ms=500.0, mode="active",
        workloads=(WorkloadSpec(deployment=DEP, bounds=bounds, batch_env="BATCH"),),
    )
    config = Settings(source="test", services=(svc,), run_interval_s=300.0).actuator_config(
        "toy"
    )
    vpa = VpaController(engine, port, config, batch=(1,))
    times = START.timestamp() - DAY_S * 3 + 60 * np.arange(3 * 1440)
    vpa.seed(0, times, np.full(len(times), usage_cores), float(cores), 2)
    engine.controllers.append(vpa)
    return model, engine, vpa


@pytest.mark.parametrize(
    ("cores", "usage", "expected"),
    [
        (1, 0.85, 1),  # lower ~0.99, upper ~1.35: 1 core is inside, left alone
        (1, 3.0, 4),  # lower ~3.5 > 1: raised to ceil(p90 x 1.15) = 4
        (4, 0.6, 1),  # upper ~0.93 < 4: lowered to ceil(0.7) = 1
        (6, 4.0, 6),  # inside [~4.7, ~6.3]: left at 6 though the target rounds up to 5
    ],
)
def test_the_updater_resizes_in_place_only_outside_the_bounds(cores, usage, expected):
    model, engine, vpa = _vpa(cores, usage)
    rec = vpa.recommendation(0)
    inside = rec.lower <= cores <= rec.upper
    assert inside == (expected == cores)
    engine.run()
    got = [
        cpu_m(p["spec"]["containers"][0]["resources"]["requests"]["cpu"]) / 1000
        for p in model.live_pods_of(NS, DEP)
    ]
    assert got == [expected, expected]
    assert (vpa.updates > 0) == (expected != cores)


# -- sweeps in the backtest and the report ----------------------------------------------------


def test_policy_names_expand_sweeps_and_the_alias():
    assert expand_policies(["keda-sweep", "hpa"]) == [*KEDA_SWEEP, "hpa-70"]
    assert expand_policies(["hpa-70", "hpa-sweep"]) == ["hpa-70", "hpa-50", "hpa-60",
                                                         "hpa-80", "hpa-90"]
    with pytest.raises(BadInputError, match="unknown hpa-75"):
        expand_policies(["hpa-75"])


@pytest.fixture(scope="module")
def sweep_result():
    return run_backtest(
        synthetic_trace(), RESNET,
        settings(policies=("keda-sweep", "surgecast", "hpa-sweep"),
                 end=START + pd.Timedelta(days=3, hours=2)),
        trace_name="synthetic", profile_name="resnet18",
    )


def test_sweep_rows_exist_in_report_order_and_lower_targets_cost_more(sweep_result, tmp_path):
    names = list(sweep_result.runs)
    assert names == [p for p in POLICIES if p in names]
    assert names[:11] == ["hpa", *HPA_SWEEP, *KEDA_SWEEP]
    s = {n: r.summary() for n, r in sweep_result.runs.items()}
    assert s["hpa"] == s["hpa-70"]
    for sweep in (HPA_SWEEP, KEDA_SWEEP):
        assert s[sweep[0]]["core_hours"] > s[sweep[-1]]["core_hours"]
    js, html = write_results(sweep_result, tmp_path)
    rows = json.loads(js.read_text())["policies"]
    assert set(rows) == set(names)
    assert rows["hpa"]["notes"] == "hpa-70 under its old name"
    assert rows["keda-70"]["notes"].startswith("threshold ")
    assert "Cost against violations" in html.read_text()


def test_the_verdict_names_the_hpa_setting_surgecast_is_compared_with(sweep_result):
    s = {n: r.summary() for n, r in sweep_result.runs.items()}
    ours = s["surgecast"]
    costlier = [n for n in HPA_SWEEP if s[n]["core_hours"] >= ours["core_hours"]]
    sentence = curve_comparison(sweep_result, HPA_SWEEP, "CPU HPA")
    assert sentence in verdict(sweep_result)
    if not costlier:
        assert "costs more than every CPU HPA setting" in sentence
        return
    ref = min(costlier, key=lambda n: s[n]["core_hours"])
    assert f"is {ref} (" in sentence
    below = all(s[n]["violations"] >= ours["violations"] for n in costlier)
    assert ("on or below" in sentence) == below


def test_the_verdict_says_when_surgecast_sits_above_the_curve(sweep_result):
    worse = replace(sweep_result, runs=dict(sweep_result.runs))
    cheapest = min(HPA_SWEEP, key=lambda n: sweep_result.runs[n].summary()["core_hours"])
    # surgecast as costly as the cheapest HPA setting run but with more violations than all
    fake = replace(sweep_result.runs[cheapest])
    fake.violations = np.full_like(fake.violations, 0.0)
    fake.violations[0] = 1 + max(sweep_result.runs[n].summary()["violations"] for n in HPA_SWEEP)
    worse.runs["surgecast"] = fake
    sentence = curve_comparison(worse, HPA_SWEEP, "CPU HPA")
    assert "ABOVE the CPU HPA cost-violation curve" in sentence
    assert f"is {cheapest} (" in sentence


def test_the_cli_accepts_the_sweep_presets_and_refuses_unknown_targets(tmp_path):
    out = CliRunner().invoke(app, ["backtest", "--policies", "hpa-75",
                                   "--out", str(tmp_path / "o")])
    assert out.exit_code == 2 and "unknown hpa-75" in out.output
