"""The live pipeline end to end against real components: Prometheus with a backfilled trace, the
Pushgateway, and the fake Kubernetes API driven through the official client. Active services end
in the planned state, shadow services are untouched, and bad data (stale, gappy, Prometheus
answering errors or stopped) changes nothing and leaves a record and a metric that say why."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import promtest
import pytest
from kubeapi.harness import FakeHarness
from typer.testing import CliRunner

from actuator.apply import RunOptions
from actuator.kube import RetryPolicy
from surgecast.cli import app
from surgecast.live.artifacts import ArtifactStore
from surgecast.live.pipeline import (
    accuracy,
    forecast,
    ingest,
    plan,
    retrain,
    run_once,
    run_service,
)
from surgecast.settings import load_settings

pytestmark = pytest.mark.skipif(
    not promtest.have_binaries("prometheus", "promtool", "prometheus-pushgateway"),
    reason="needs the Debian packages prometheus and prometheus-pushgateway",
)


@pytest.fixture(scope="session")
def fleet(tmp_path_factory, twitter_1min):
    return promtest.fleet(tmp_path_factory.getbasetemp() / "prometheus", twitter_1min)


@pytest.fixture(scope="session")
def gateway(tmp_path_factory):
    return promtest.pushgateway(tmp_path_factory.getbasetemp() / "pushgateway")


@pytest.fixture
def kube():
    h = FakeHarness(start_delay_s=0.0, resize_delay_s=0.0)
    yield h
    h.close()


def _service(name: str, **overrides) -> dict:
    svc = {"name": name, "query": promtest.Fleet.query(name), "deployment": name}
    svc.update(overrides)
    return svc


DEFAULTS = {
    "namespace": "inference",
    "profile": "resnet18",
    "slo_ms": 750,
    "cold_start_s": 60,
    "resize_timeout_s": 0,
    "bounds": {"min_replicas": 1, "max_replicas": 30, "min_cores": 1, "max_cores": 8},
    "data": {"max_gap_steps": 40},  # the Twitter trace has a ~30-minute gap every night
    "forecast": {"model": "seasonal_naive", "history_days": 2.5, "fit_days": 3.1},
}


def _kubernetes(tmp_path, kube) -> dict:
    """A kubeconfig for the fake API with the actuator's ServiceAccount token (what the command
    line reads); a closed port without a harness."""
    if kube is None:
        return {"host": "http://127.0.0.1:9"}
    return {"kubeconfig": str(kube.write_kubeconfig(tmp_path / "kubeconfig"))}


def _settings(tmp_path, services, *, url, kube=None, gateway=None, **defaults):
    merged = {**DEFAULTS, **defaults}
    path = promtest.write_config(
        tmp_path / "services.yaml",
        services=services,
        defaults=merged,
        prometheus={"url": url, "attempts": 2, "backoff_s": 0.01, "timeout_s": 5},
        artifacts={"root": str(tmp_path / "store")},
        kubernetes=_kubernetes(tmp_path, kube),
        pushgateway_url=gateway.url if gateway else None,
    )
    return load_settings(path)


FAST = RunOptions(retry=RetryPolicy(attempts=2, backoff_s=0.0), poll_s=0.0,
                  sleep=lambda s: None)


def at(now: pd.Timestamp) -> RunOptions:
    """FAST with a wall clock that agrees with ``now``: the fleet's data ends hours before the
    real clock, and an active run acts only when its now is close to the wall clock."""
    return replace(FAST, wall_clock=lambda: now.timestamp())


def _error_metric(gateway, service: str) -> list[str]:
    return [s for s in gateway.samples("surgecast_run_error") if f'service="{service}"' in s]


def test_active_service_ends_in_the_planned_state(tmp_path, fleet, kube, gateway):
    kube.add_deployment("svc-00", replicas=1, cores=1)
    settings = _settings(tmp_path, [_service("svc-00", mode="active")], url=fleet.prometheus.url,
                         kube=kube, gateway=gateway)
    run = run_service(settings, "svc-00", fleet.now, api=kube.api, options=at(fleet.now))
    record = ArtifactStore.read_json(run.record_uri)
    assert run.ok and record["outcome"] == "applied", record["summary"]
    assert record["mode"] == "active" and record["error"] is None
    assert record["inputs"]["history"]["staleness_s"] == 0
    assert record["inputs"]["model"] == "seasonal_naive" and record["inputs"]["history_for_fit"]
    assert record["plan"]["steps"] and record["quantile"] == 0.95
    target = record["actuator"]["workloads"][0]["target"]
    state = kube.state("svc-00")
    assert state["replicas"] == state["pods"] == target["replicas"] > 1
    # the pod that ran before was resized in place; new pods start from the template and are
    # resized by the next run once ready (DESIGN section 6)
    assert max(state["ready_millicores"]) == target["cores"] * 1000
    # the target carries the load just observed (the reactive floor held)
    assert record["inputs"]["observed_rps"] > 0
    assert gateway.samples("surgecast_run_ok") and not _error_metric(gateway, "svc-00")
    assert any('service="svc-00"' in s and s.endswith(" 1") for s in
               gateway.samples("surgecast_run_ok"))
    # a later run reuses the stored model is reused and a shorter history is read
    later_now = fleet.now + pd.Timedelta(minutes=2)
    later = run_service(settings, "svc-00", later_now, api=kube.api, options=at(later_now))
    again = ArtifactStore.read_json(later.record_uri)
    assert later.ok and again["inputs"]["model_uri"] == record["inputs"]["model_uri"]
    assert not again["inputs"]["history_for_fit"]
    target = again["actuator"]["workloads"][0]["target"]
    state = kube.state("svc-00")
    assert state["replicas"] == state["ready"] == target["replicas"]
    assert set(state["ready_millicores"]) == {target["cores"] * 1000}


def test_shadow_service_is_untouched_and_recorded(tmp_path, fleet, kube, gateway):
    kube.add_deployment("svc-01", replicas=1, cores=1)
    before = kube.state("svc-01")
    settings = _settings(tmp_path, [_service("svc-01")], url=fleet.prometheus.url, kube=kube,
                         gateway=gateway)
    [run] = run_once(settings, fleet.now, api=kube.api, options=FAST)
    record = ArtifactStore.read_json(run.record_uri)
    assert run.ok and record["mode"] == "shadow" and record["outcome"] == "dry-run"
    assert record["applied"] and all(c["outcome"] == "dry-run" for c in record["applied"])
    assert kube.state("svc-01") == before
    persisted = [w for w in kube.server.writes() if "dryRun" not in w[1]]
    assert persisted == []
    assert run.line.startswith("svc-01: shadow dry-run: shadow:")


@pytest.mark.parametrize("problem", ["stale", "gappy", "http_error", "unreachable"])
def test_bad_data_changes_nothing_and_says_why(tmp_path, fleet, kube, gateway, problem):
    name = f"svc-1{['stale', 'gappy', 'http_error', 'unreachable'].index(problem)}"
    kube.add_deployment(name, replicas=1, cores=1)
    before = kube.state(name)
    url, now, extra = fleet.prometheus.url, fleet.now, {}
    server = None
    if problem == "stale":
        now = fleet.now + pd.Timedelta(hours=1)
    elif problem == "gappy":
        extra = {"data": {"max_gap_steps": 5}}
    elif problem == "http_error":
        server = promtest.ErrorServer(503).start()
        url = server.url
    else:
        stopped = promtest.Prometheus(tmp_path / "stopped", tmp_path / "stopped" / "tsdb").start()
        url = stopped.url
        stopped.stop()
    try:
        settings = _settings(tmp_path, [_service(name, mode="active", **extra)], url=url,
                             kube=kube, gateway=gateway)
        [run] = run_once(settings, now, api=kube.api, options=FAST)
    finally:
        if server is not None:
            server.stop()
    record = ArtifactStore.read_json(run.record_uri)
    assert not run.ok and record["outcome"] == "no action" and record["actuator"] is None
    assert record["error"]["stage"] == "ingest" and record["error"]["reason"] == problem
    assert record["summary"].startswith(f"no action (ingest: {problem}): ")
    assert kube.state(name) == before
    assert [w for w in kube.server.writes() if name in w[1]] == []
    assert _error_metric(gateway, name) == [
        f'surgecast_run_error{{instance="",job="surgecast_pipeline",reason="{problem}",'
        f'service="{name}",stage="ingest"}} 1'
    ]


def test_unfittable_model_falls_back_to_seasonal_naive_and_says_so(tmp_path, fleet, kube,
                                                                   gateway):
    kube.add_deployment("svc-20", replicas=2, cores=1)
    # 2.6 days are enough for the seasonal naive baseline, not for the hybrid (about 3.1)
    settings = _settings(tmp_path, [_service("svc-20", forecast={"model": "hybrid",
                                                                 "history_days": 2.6,
                                                                 "fit_days": 2.6})],
                         url=fleet.prometheus.url, kube=kube, gateway=gateway)
    run = run_service(settings, "svc-20", fleet.now, api=kube.api, options=FAST)
    record = ArtifactStore.read_json(run.record_uri)
    assert run.ok, record["summary"]
    assert record["inputs"]["model"] == "seasonal_naive"
    assert record["inputs"]["fallback"].startswith("seasonal naive answered: hybrid could not")
    assert any('service="svc-20"' in s and s.endswith(" 1")
               for s in gateway.samples("surgecast_forecast_fallback"))


def test_retrain_follows_the_refit_cadence_and_refits_on_force(tmp_path, fleet):
    settings = _settings(tmp_path, [_service("svc-21"), _service("svc-25")],
                         url=fleet.prometheus.url,
                         data={"max_gap_steps": 40, "max_staleness_s": 3600},
                         forecast={"model": "seasonal_naive", "history_days": 2.2,
                                   "fit_days": 2.2})
    day_ago, earlier, now = (fleet.now - pd.Timedelta(hours=h) for h in (23.5, 20, 0))
    first = retrain(settings, "svc-21", day_ago)
    assert ArtifactStore.read_json(first)["fitted_at"] == day_ago.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert retrain(settings, "svc-21", earlier) == first  # 3.5 h old: kept
    assert retrain(settings, "svc-21", earlier, force=True) != first
    # a 24 h cadence: 23.5 h old is due (within the slack of a daily run)
    other = retrain(settings, "svc-25", day_ago)
    assert retrain(settings, "svc-25", now) != other


def test_accuracy_scores_the_days_forecasts_against_prometheus(tmp_path, fleet, gateway):
    settings = _settings(tmp_path, [_service("svc-22")], url=fleet.prometheus.url,
                         gateway=gateway)
    for minutes in range(120, 0, -20):
        at = fleet.now - pd.Timedelta(minutes=minutes)
        forecast(settings, "svc-22", ingest(settings, "svc-22", at), at)
    uri = accuracy(settings, "svc-22", fleet.now)
    report = ArtifactStore.read_json(uri)
    assert "/accuracy/svc-22/" in uri and report["error"] is None
    assert report["forecasts"] == 6 and report["scored_points"] == 6 * 15
    metrics = report["metrics"]
    assert metrics["mae"] > 0 and 0 <= metrics["coverage"]["0.95"] <= 1
    assert set(metrics["pinball"]) == {"0.5", "0.9", "0.95", "0.99"}
    assert len(report["mae_by_horizon"]) == 15
    assert any('service="svc-22"' in s for s in gateway.samples("surgecast_accuracy_mae"))


def test_cli_run_once_prints_one_line_per_service(tmp_path, fleet, kube):
    for name in ("svc-26", "svc-24"):
        kube.add_deployment(name, replicas=1, cores=1)
    settings = _settings(tmp_path, [_service("svc-26"), _service("svc-24")],
                         url=fleet.prometheus.url, kube=kube)
    result = CliRunner().invoke(
        app, ["run", "--config", settings.source, "--once", "--now", fleet.now.isoformat()]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["svc-26", "svc-24"]
    assert all(" shadow dry-run: " in line for line in lines)
    bad = CliRunner().invoke(app, ["run", "--config", str(tmp_path / "nope.yaml"), "--once"])
    assert bad.exit_code == 2 and "config file not found" in bad.output


def test_the_no_regret_gate_scores_the_last_hour_and_the_plan_uses_it(tmp_path, fleet):
    settings = _settings(
        tmp_path, [_service("svc-26", forecast={**DEFAULTS["forecast"], "no_regret": True})],
        url=fleet.prometheus.url,
    )
    uris = []
    for minutes in range(90, -1, -5):  # a forecast every 5 minutes for 90 minutes
        at = fleet.now - pd.Timedelta(minutes=minutes)
        uris.append(forecast(settings, "svc-26", ingest(settings, "svc-26", at), at))
    first, last = ArtifactStore.read_json(uris[0]), ArtifactStore.read_json(uris[-1])
    assert first["trust"]["points"] == 0 and first["trust"]["weight"] == 1.0
    # An hour of 5-minute forecasts whose 15 steps have been observed: about 12 x 15 targets.
    assert last["trust"]["points"] >= 100
    assert 0.0 <= last["trust"]["weight"] <= 1.0 and last["trust"]["model_mae"] >= 0
    assert set(last["plan_quantiles"]) == set(last["forecast"]["quantiles"])
    uri = plan(settings, "svc-26", uris[-1], fleet.now)
    doc = ArtifactStore.read_json(uri)
    assert doc["error"] is None
    assert doc["peak_rps"] == pytest.approx(max(last["plan_quantiles"]["0.95"]))
    # Without the gate the artifact carries the model's quantiles only.
    (tmp_path / "plain").mkdir()
    plain = _settings(tmp_path / "plain", [_service("svc-26")], url=fleet.prometheus.url)
    at = fleet.now
    bare = ArtifactStore.read_json(forecast(plain, "svc-26", ingest(plain, "svc-26", at), at))
    assert "plan_quantiles" not in bare and "trust" not in bare
