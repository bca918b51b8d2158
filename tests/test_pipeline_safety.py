"""The live pipeline against its store, its clock and its own failures, with real components
(Prometheus with a backfilled trace, the Pushgateway, the fake Kubernetes API through the
official client):

* retention never deletes with a future ``now`` (it counts from the wall clock when earlier);
* an active run whose ``now`` is far from the wall clock records and changes nothing, and the
  pipeline hands the caller's wall clock to the actuator;
* truncated or corrupt artifacts are skipped and reported, never a traceback;
* a plan naming another service (or a path) is refused before anything is written;
* one service's unexpected failure is recorded and the others still run;
* a run that outran its time budget does not act.
"""

from __future__ import annotations

import inspect
import json
import socket
import threading
import time
import urllib.request
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import promtest
import pytest
from kubeapi.harness import FakeHarness
from typer.testing import CliRunner

from actuator.apply import RunOptions
from actuator.kube import RetryPolicy
from surgecast.cli import app
from surgecast.live.artifacts import KINDS, ArtifactStore
from surgecast.live.pipeline import (
    Budget,
    actuate,
    forecast,
    ingest,
    plan,
    run_once,
    run_service,
)
from surgecast.live.prometheus import PrometheusSource
from surgecast.settings import Settings, load_settings

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


DEFAULTS = {
    "namespace": "inference",
    "profile": "resnet18",
    "slo_ms": 750,
    "cold_start_s": 60,
    "resize_timeout_s": 0,
    "bounds": {"min_replicas": 1, "max_replicas": 30, "min_cores": 1, "max_cores": 8},
    "data": {"max_gap_steps": 40},
    "forecast": {"model": "seasonal_naive", "history_days": 2.5, "fit_days": 3.1},
}
FAST = RunOptions(retry=RetryPolicy(attempts=2, backoff_s=0.0), poll_s=0.0,
                  sleep=lambda s: None)


def at(now: pd.Timestamp) -> RunOptions:
    """FAST with a wall clock that agrees with ``now`` (the fleet's data ends hours ago)."""
    return replace(FAST, wall_clock=lambda: now.timestamp())


def _kubernetes(tmp_path, kube) -> dict:
    """A kubeconfig for the fake API with the actuator's ServiceAccount token (what the command
    line reads); a closed port without a harness."""
    if kube is None:
        return {"host": "http://127.0.0.1:9"}
    return {"kubeconfig": str(kube.write_kubeconfig(tmp_path / "kubeconfig"))}


def _settings(tmp_path: Path, services: list, *, url: str, kube=None, gateway=None) -> Settings:
    path = promtest.write_config(
        tmp_path / "services.yaml",
        services=[
            {"name": s, "query": promtest.Fleet.query(s), "deployment": s} if isinstance(s, str)
            else {"query": promtest.Fleet.query(s["name"]), "deployment": s["name"], **s}
            for s in services
        ],
        defaults=DEFAULTS,
        prometheus={"url": url, "attempts": 2, "backoff_s": 0.01, "timeout_s": 5},
        artifacts={"root": str(tmp_path / "store")},
        kubernetes=_kubernetes(tmp_path, kube),
        pushgateway_url=gateway.url if gateway else None,
    )
    return load_settings(path)


def _persisted(kube: FakeHarness, name: str) -> list:
    """Writes the fake API server persisted for ``name`` (server-side dry runs excluded)."""
    return [w for w in kube.server.writes() if name in w[1] and "dryRun" not in w[1]]


def _path(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def _error_metric(gateway, service: str) -> list[str]:
    return [s for s in gateway.samples("surgecast_run_error") if f'service="{service}"' in s]


class StepClock:
    """Monotonic seconds that move only when told (the budget's clock in these tests)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class SlowProxy:
    """Forwards every request to ``upstream`` and charges ``cost_s`` of test-clock time for it:
    a Prometheus that answers correctly but slowly, without a real wait."""

    def __init__(self, upstream: str, clock: StepClock, cost_s: float) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                return None

            def do_GET(self) -> None:
                with urllib.request.urlopen(upstream + self.path, timeout=30) as r:
                    body, status, kind = r.read(), r.status, r.headers["Content-Type"]
                clock.advance(cost_s)
                proxy.requests += 1
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                self.path += ("&" if "?" in self.path else "?") + self.rfile.read(length).decode()
                self.do_GET()

        self.requests = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --------------------------------------------------------------------------------------------
# 1. retention and a future now


def test_run_once_with_a_future_now_prunes_nothing_recent(tmp_path, fleet, kube):
    kube.add_deployment("svc-32", replicas=1, cores=1)
    settings = _settings(tmp_path, ["svc-32"], url=fleet.prometheus.url, kube=kube)
    [first] = run_once(settings, fleet.now, api=kube.api, options=FAST)
    assert first.ok, first.line
    store = ArtifactStore(settings.artifacts.root)
    kept = {kind: store.entries(kind, "svc-32", ext="json.gz" if kind == "history" else "json")
            for kind in KINDS if kind != "accuracy"}
    assert all(kept.values()), kept
    # the reported case: a cycle (and its prune) at a time far in the future
    result = CliRunner().invoke(
        app, ["run", "--config", settings.source, "--once", "--now", "2027-01-01T00:00:00Z"]
    )
    assert result.exit_code == 1, result.output  # no data then: no action, and said so
    assert "svc-32: shadow no action: no action (ingest: missing)" in result.output
    for kind, entries in kept.items():
        ext = "json.gz" if kind == "history" else "json"
        assert set(entries) <= set(store.entries(kind, "svc-32", ext=ext)), kind


# --------------------------------------------------------------------------------------------
# 2. the wall clock


def test_active_run_far_from_the_wall_clock_records_but_changes_nothing(tmp_path, fleet, kube,
                                                                         gateway):
    name = "svc-33"
    kube.add_deployment(name, replicas=1, cores=1)
    before = kube.state(name)
    settings = _settings(tmp_path, [{"name": name, "mode": "active"}], url=fleet.prometheus.url,
                         kube=kube, gateway=gateway)
    # The fleet's data ends hours before the real clock: this now is a replayed old run.
    assert time.time() - fleet.now.timestamp() > 3600
    run = run_service(settings, name, fleet.now, api=kube.api, options=FAST)  # real wall clock
    record = ArtifactStore.read_json(run.record_uri)
    assert record["mode"] == "active" and record["plan"]["steps"]
    assert record["outcome"] != "applied", record["summary"]
    assert not [c for c in record["applied"] if c["outcome"] == "applied"]
    assert kube.state(name) == before and _persisted(kube, name) == []
    # the same run with a wall clock that agrees: the caller's clock reaches the actuator
    run = run_service(settings, name, fleet.now, api=kube.api, options=at(fleet.now))
    record = ArtifactStore.read_json(run.record_uri)
    assert run.ok and record["outcome"] == "applied", record["summary"]
    assert kube.state(name)["replicas"] == record["actuator"]["workloads"][0]["target"][
        "replicas"] > 1


# --------------------------------------------------------------------------------------------
# 3. corrupt artifacts


def test_a_corrupt_decision_record_is_skipped_and_reported(tmp_path, fleet, kube):
    name = "svc-34"
    kube.add_deployment(name, replicas=1, cores=1)
    settings = _settings(tmp_path, [name], url=fleet.prometheus.url, kube=kube)
    store = ArtifactStore(settings.artifacts.root)
    earlier = fleet.now - pd.Timedelta(minutes=5)
    broken = store.write_bytes("decisions", name, earlier, b'{"mode": "shadow", "actu', "json")
    listed = store.write_bytes("decisions", name, earlier + pd.Timedelta(minutes=1), b"[]",
                               "json")
    run = run_service(settings, name, fleet.now, api=kube.api, options=FAST)
    record = ArtifactStore.read_json(run.record_uri)
    assert run.ok and record["outcome"] == "dry-run", record["summary"]
    for uri in (broken, listed):
        notes = [e for e in record["errors"] if uri in e]
        assert notes and all(n.startswith("skipped ") and "corrupt artifact" in n
                             for n in notes), record["errors"]
    plan_doc = ArtifactStore.read_json(record["artifacts"]["plan"])
    assert len(plan_doc["skipped"]) == 2


@pytest.mark.parametrize("damaged", ["history", "forecast", "plan"])
def test_a_corrupt_upstream_artifact_stops_the_run_and_not_the_service(tmp_path, fleet, kube,
                                                                        gateway, damaged):
    name = {"history": "svc-35", "forecast": "svc-36", "plan": "svc-37"}[damaged]
    kube.add_deployment(name, replicas=1, cores=1)
    before = kube.state(name)
    settings = _settings(tmp_path, [{"name": name, "mode": "active"}], url=fleet.prometheus.url,
                         kube=kube, gateway=gateway)
    now = fleet.now
    uris = {"history": ingest(settings, name, now)}
    if damaged == "history":  # a gzip cut short, as a crash mid-copy leaves it
        _path(uris["history"]).write_bytes(_path(uris["history"]).read_bytes()[:200])
    uris["forecast"] = forecast(settings, name, uris["history"], now)
    if damaged == "forecast":
        _path(uris["forecast"]).write_bytes(_path(uris["forecast"]).read_bytes()[:-40])
    uris["plan"] = plan(settings, name, uris["forecast"], now, api=kube.api)
    if damaged == "plan":  # valid JSON, but not a plan
        _path(uris["plan"]).write_text("[1, 2, 3]")
    record = ArtifactStore.read_json(
        actuate(settings, name, uris["plan"], now, api=kube.api, options=at(now))
    )
    stage = {"history": "forecast", "forecast": "plan", "plan": "actuate"}[damaged]
    assert record["outcome"] == "no action" and not record["ok"]
    assert record["error"]["stage"] == stage and record["error"]["reason"] == "corrupt"
    assert uris[damaged] in record["error"]["message"]
    assert record["summary"].startswith(f"no action ({stage}: corrupt): ")
    assert kube.state(name) == before and _persisted(kube, name) == []
    assert any('reason="corrupt"' in s for s in _error_metric(gateway, name))
    # the next cycle writes fresh artifacts and acts
    later = now + pd.Timedelta(minutes=1)
    run = run_service(settings, name, later, api=kube.api, options=at(later))
    assert run.ok and ArtifactStore.read_json(run.record_uri)["outcome"] == "applied", run.line


# --------------------------------------------------------------------------------------------
# 4. names


@pytest.mark.parametrize("claimed", ["../../..", "svc-39"])
def test_a_plan_for_another_service_or_a_path_is_refused(tmp_path, fleet, kube, claimed):
    name = "svc-38"
    kube.add_deployment(name, replicas=1, cores=1)
    before = kube.state(name)
    settings = _settings(tmp_path, [{"name": name, "mode": "active"}, "svc-39"],
                         url=fleet.prometheus.url, kube=kube)
    now = fleet.now
    plan_uri = plan(settings, name, forecast(settings, name, ingest(settings, name, now), now),
                    now, api=kube.api)
    doc = ArtifactStore.read_json(plan_uri)
    doc["service"] = doc["plan"]["service"] = claimed
    _path(plan_uri).write_text(json.dumps(doc))
    outside = tmp_path.parent
    files_before = sorted(p for p in outside.rglob("*") if tmp_path not in p.parents)
    record = ArtifactStore.read_json(
        actuate(settings, name, plan_uri, now, api=kube.api, options=at(now))
    )
    assert record["outcome"] == "no action" and record["error"]["stage"] == "actuate"
    assert record["error"]["reason"] == "plan" and claimed in record["error"]["message"]
    assert sorted(p for p in outside.rglob("*") if tmp_path not in p.parents) == files_before
    assert not (tmp_path / "store" / "decisions" / "svc-39").exists()
    assert kube.state(name) == before and _persisted(kube, name) == []


# --------------------------------------------------------------------------------------------
# 5. isolation


class BrokenFor(PrometheusSource):
    """The real source, with a defect that hits one service's query."""

    def __init__(self, settings, broken: str) -> None:
        super().__init__(settings)
        self.broken = broken

    def read(self, query, **kwargs):
        if f'"{self.broken}"' in query:
            raise RuntimeError("unexpected defect reading the history")
        return super().read(query, **kwargs)


def test_one_services_failure_is_recorded_and_the_fleet_goes_on(tmp_path, fleet, kube, gateway):
    names = ["svc-40", "svc-41", "svc-42"]
    for n in names:
        kube.add_deployment(n, replicas=1, cores=1)
    settings = _settings(tmp_path, names, url=fleet.prometheus.url, kube=kube, gateway=gateway)
    seen = []
    with BrokenFor(settings.prometheus, "svc-41") as source:
        runs = run_once(settings, fleet.now, source=source, api=kube.api, options=FAST,
                        progress=seen.append)
    assert [r.service for r in runs] == names and seen == runs
    assert runs[0].ok and runs[2].ok and not runs[1].ok
    record = ArtifactStore.read_json(runs[1].record_uri)
    assert record["outcome"] == "error" and record["service"] == "svc-41"
    assert record["error"] == {
        "stage": "ingest",
        "reason": "internal",
        "message": "RuntimeError: unexpected defect reading the history",
    }
    assert runs[1].line.startswith("svc-41: shadow error: ingest: RuntimeError: ")
    assert _error_metric(gateway, "svc-41") == [
        'surgecast_run_error{instance="",job="surgecast_pipeline",reason="internal",'
        'service="svc-41",stage="ingest"} 1'
    ]


# --------------------------------------------------------------------------------------------
# 6. the run's time budget


def test_a_slow_prometheus_past_the_budget_means_no_action(tmp_path, fleet, kube, gateway):
    name = "svc-43"
    kube.add_deployment(name, replicas=1, cores=1)
    before = kube.state(name)
    clock = StepClock()
    proxy = SlowProxy(fleet.prometheus.url, clock, cost_s=3600.0)
    try:
        settings = _settings(tmp_path, [{"name": name, "mode": "active"}], url=proxy.url,
                             kube=kube, gateway=gateway)
        run = run_service(settings, name, fleet.now, api=kube.api, options=at(fleet.now),
                          clock=clock)
    finally:
        proxy.stop()
    assert proxy.requests >= 1
    record = ArtifactStore.read_json(run.record_uri)
    assert not run.ok and record["outcome"] == "no action" and record["actuator"] is None
    assert record["error"]["stage"] == "forecast" and record["error"]["reason"] == "deadline"
    assert "over its budget of 120 s" in record["error"]["message"]
    store = ArtifactStore(settings.artifacts.root)
    assert store.entries("models", name) == []  # no time was spent fitting
    assert kube.state(name) == before and _persisted(kube, name) == []
    assert any('reason="deadline"' in s for s in _error_metric(gateway, name))


def test_a_stage_past_the_budget_does_nothing(tmp_path, fleet, kube):
    name = "svc-44"
    kube.add_deployment(name, replicas=1, cores=1)
    before = kube.state(name)
    server = promtest.ErrorServer(503).start()
    try:
        settings = _settings(tmp_path, [{"name": name, "mode": "active"}], url=server.url,
                             kube=kube)
        clock = StepClock()
        budget = Budget.start(120.0, clock)
        clock.advance(121.0)
        history = ArtifactStore.read_doc(ingest(settings, name, fleet.now, budget=budget))
    finally:
        server.stop()
    assert server.requests == 0  # not even asked
    assert history["error"]["reason"] == "deadline"
    # a good plan, then an actuate whose budget has passed
    settings = _settings(tmp_path, [{"name": name, "mode": "active"}],
                         url=fleet.prometheus.url, kube=kube)
    now = fleet.now
    plan_uri = plan(settings, name, forecast(settings, name, ingest(settings, name, now), now),
                    now, api=kube.api)
    record = ArtifactStore.read_json(
        actuate(settings, name, plan_uri, now, api=kube.api, options=at(now), budget=budget)
    )
    assert record["outcome"] == "no action" and record["error"]["stage"] == "actuate"
    assert record["error"]["reason"] == "deadline"
    assert kube.state(name) == before and _persisted(kube, name) == []


def _source_takes_a_deadline() -> bool:
    return "deadline" in inspect.signature(PrometheusSource.read).parameters and (
        "run_timeout_s" in Settings.model_fields
    )


@pytest.mark.skipif(not _source_takes_a_deadline(),
                    reason="PrometheusSource.read(deadline=) and Settings.run_timeout_s needed")
def test_a_prometheus_that_never_answers_ends_the_read_at_the_deadline(tmp_path, kube):
    listener = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        settings = _settings(tmp_path, [{"name": "svc-45", "mode": "active"}], url=url,
                             kube=kube)
        prometheus = settings.prometheus.model_copy(update={"timeout_s": 60, "attempts": 3})
        settings = settings.model_copy(update={"run_timeout_s": 1.0, "prometheus": prometheus})
        started = time.monotonic()
        run = run_service(settings, "svc-45", "2025-01-01T00:00:00Z", api=kube.api)
        seconds = time.monotonic() - started
    finally:
        listener.close()
    record = ArtifactStore.read_json(run.record_uri)
    assert record["error"]["stage"] == "ingest" and record["error"]["reason"] == "deadline"
    assert seconds < 30, seconds  # not 3 x 60 s of socket timeouts
