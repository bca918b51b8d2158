"""Replay equivalence: the controllers that ship decide the same over the Kubernetes API as in
the in-process backtest.

The backtest's runs act through :class:`~surgecast.offline.port.SimPort`, which calls the API
handlers in process. Here the same runs act through production's port instead,
:class:`actuator.kube.KubeApi` over the official client, against the fake API server
(``tests/kubeapi``) serving each run's own cluster model over HTTP on loopback: the pipeline
cycle (forecast, plan, the real :func:`actuator.apply.actuate`) authenticated as the actuator's
service account under ``deploy/rbac.yaml``, the bridge (production's
:class:`actuator.bridge_loop.BridgeController`) as its own service account under the RBAC
generated from the run's service spec (:func:`actuator.rbac.bridge_manifests`). The engine owns
the clock, on which the pods start, resize and serve the trace; the server never moves it.

Span: 2024-01-07 15:15-17:45 UTC of the bundled Twitter trace (2.5 h, 9,000 simulated seconds),
two surges from ~39 to ~230 rps (15:30 and 17:30). Policy: surgecast with the naive forecaster
(cheap and deterministic, fitted on the 4 days before the span): it misses the surges, so the
bridge and the HPA above the plan have work to do and there are SLO violations to compare. The
backtest puts the ablation rows beside it, so three runs are compared: pipeline + bridge,
pipeline without the bridge, bridge + HPA without the pipeline.

Compared, run by run: the decision records (the pipeline's and the bridge's, from the records
folder they share, whole: every field, changes included), the writes the API accepted in order,
the objects the cluster holds at the end (Deployments, pods, HPA, Leases, Events), and the SLO
violations and core-hours. uids, pod names and resourceVersions come from the model's seeded
generator and counter, and every timestamp from the simulation clock, so they match too. One
thing is normalised, in Events only: the official client validates an Event body into its model
before sending it, so it drops null fields and spells times ``+00:00`` instead of ``Z``; the
fake server stores a body as sent, where kube-apiserver would decode it (a null is an omitted
field, a time is an instant) and store the same object both ways. :func:`as_stored` applies
that decoding to both sides; nothing else is excluded.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pytest
from kubeapi.harness import ServedModel

from actuator.rbac import ACCOUNT, BRIDGE_ACCOUNT, bridge_manifests
from actuator.records import read_records
from planner.profiles import bundled_profile, load_pipeline
from surgecast.offline.backtest import SERVICE, BacktestSettings, run_backtest
from surgecast.offline.bridge import SimBridge, bridge_factory
from surgecast.offline.cluster import ClusterModel
from surgecast.offline.engine import Engine
from surgecast.offline.port import SimPort

RESNET = load_pipeline(bundled_profile("resnet18"))
SETTINGS = BacktestSettings(
    policies=("surgecast",),
    start=pd.Timestamp("2024-01-07T15:15:00Z"),
    end=pd.Timestamp("2024-01-07T17:45:00Z"),
    model="naive",
    slo_ms=750.0,
    seed=0,
)
RUNS = ("surgecast", "surgecast-no-bridge", "surgecast-no-forecast")

# Stated before the first run: the two ports must give the same result, exactly.
VIOLATIONS_TOLERANCE = 0
"""Requests over the SLO, HTTP run vs in-process run."""
CORE_HOURS_TOLERANCE = 0.0
"""Core-hours, HTTP run vs in-process run."""


TIME_FIELDS = frozenset({"firstTimestamp", "lastTimestamp", "eventTime"})
"""Event fields of type metav1.Time / MicroTime."""


def as_stored(value, key: str | None = None):
    """``value`` as kube-apiserver would decode it: null fields omitted, times as instants."""
    if isinstance(value, dict):
        return {k: as_stored(v, k) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [as_stored(v) for v in value]
    if key in TIME_FIELDS and isinstance(value, str):
        return pd.Timestamp(value)
    return value


def cluster_objects(model: ClusterModel) -> dict:
    """Every object the model holds; Events as stored (:func:`as_stored`)."""
    return {
        key: as_stored(obj) if key[0] == "events" else obj for key, obj in model.objects.items()
    }


@dataclass
class Run:
    """What one backtest run left behind."""

    model: ClusterModel
    writes: list[tuple[str, str, bool]] = field(default_factory=list)
    engine: Engine | None = None  # set for runs with a bridge (it holds the records folder)

    def records(self) -> list[dict]:
        """The pipeline's and the bridge's decision records, in the order they were written."""
        bridge = next(c for c in self.engine.controllers if isinstance(c, SimBridge))
        return read_records(bridge.controller.records_root, SERVICE)


class Ports:
    """The hooks of one backtest: builds each run's port and bridge, keeps what they did."""

    def __init__(self) -> None:
        self.runs: list[Run] = []
        self.bridges = bridge_factory(
            RESNET, SETTINGS.slo_ms, scrape_s=SETTINGS.signal_scrape_s
        )

    def port(self, model: ClusterModel):
        raise NotImplementedError

    def bridge_port(self, port):
        return port

    def bridge(self, engine: Engine, port, spec):
        self.runs[-1].engine = engine
        return self.bridges(engine, self.bridge_port(port), spec)

    def backtest(self, rps: pd.Series):
        return run_backtest(
            rps, RESNET, SETTINGS, trace_name="twitter_1min", profile_name="resnet18",
            bridge=self.bridge, port=self.port,
        )


class InProcess(Ports):
    """The backtest as it ships: :class:`SimPort` for every controller."""

    def port(self, model: ClusterModel) -> SimPort:
        port = SimPort(model)
        self.runs.append(Run(model, port.writes))
        return port

    def close(self) -> None:
        pass


class OverHttp(Ports):
    """Every run's model served over HTTP; the actuator and the bridge each with its own
    service account and RBAC."""

    def __init__(self) -> None:
        super().__init__()
        self.served: list[ServedModel] = []

    def port(self, model: ClusterModel):
        served = ServedModel(model)  # deploy/rbac.yaml: the actuator's Role
        self.served.append(served)
        self.runs.append(Run(model))
        return served.api(ACCOUNT)

    def bridge(self, engine: Engine, port, spec):
        self.served[-1].add_rbac(*bridge_manifests([spec]))
        return super().bridge(engine, port, spec)

    def bridge_port(self, port):
        return self.served[-1].api(BRIDGE_ACCOUNT)

    def finish(self) -> None:
        """The writes the server accepted, as the in-process port lists them."""
        for run, served in zip(self.runs, self.served, strict=True):
            for method, path, status in served.server.log:
                if method != "GET" and 200 <= status < 300:
                    parts = urlsplit(path)
                    dry_run = parse_qs(parts.query).get("dryRun") == ["All"]
                    run.writes.append((method, parts.path, dry_run))

    def close(self) -> None:
        for served in self.served:
            served.close()


@pytest.fixture(scope="module")
def replay(twitter_1min):
    """(in-process result and runs, HTTP result and runs, HTTP server logs, wall seconds)."""
    inproc, http = InProcess(), OverHttp()
    try:
        t0 = time.perf_counter()
        expected = inproc.backtest(twitter_1min)
        t1 = time.perf_counter()
        got = http.backtest(twitter_1min)
        t2 = time.perf_counter()
        http.finish()
        logs = [list(s.server.log) for s in http.served]
    finally:
        http.close()
        inproc.close()
    print(f"\nreplay: in process {t1 - t0:.1f} s, over HTTP {t2 - t1:.1f} s")
    return (
        expected, dict(zip(expected.runs, inproc.runs, strict=True)),
        got, dict(zip(got.runs, http.runs, strict=True)),
        logs, (t1 - t0, t2 - t1),
    )


def test_the_runs_compared_are_the_three_rows_over_two_hours_with_a_surge(replay):
    expected, _, got, _, _, _ = replay
    assert tuple(expected.runs) == tuple(got.runs) == RUNS
    assert SETTINGS.end - SETTINGS.start >= pd.Timedelta(hours=2)
    counts = expected.runs["surgecast"].arrivals
    assert len(counts) == 9_000
    minute = counts[: len(counts) // 60 * 60].reshape(-1, 60).mean(axis=1)
    assert minute.max() > 4 * pd.Series(minute).median()  # a surge of over 4x


def test_the_decision_records_of_the_pipeline_and_the_bridge_are_identical(replay):
    _, inproc, _, http, _, _ = replay
    for name in ("surgecast", "surgecast-no-forecast"):
        want, got = inproc[name].records(), http[name].records()
        assert len(got) == len(want), name
        for i, (a, b) in enumerate(zip(want, got, strict=True)):
            assert b == a, f"{name}: record {i} ({a['kind']} at {a['run_at']}) differs"
    # They decided things: pipeline runs and bridge ticks that changed the cluster.
    records = inproc["surgecast"].records()
    kinds = Counter(r["kind"] for r in records)
    assert kinds["actuator"] == 30  # a run every 5 minutes
    assert kinds["bridge"] > 10
    applied = Counter(
        (r["kind"], c["what"]) for r in records for c in r["changes"] if c["outcome"] == "applied"
    )
    assert applied[("bridge", "cpu")] > 5
    assert applied[("actuator", "hpa minReplicas")] > 0
    ups = [r for r in records if r["kind"] == "bridge" and r["scaled_up"]]
    assert ups and all(not r["errors"] for r in ups)
    no_forecast = Counter(r["kind"] for r in inproc["surgecast-no-forecast"].records())
    assert set(no_forecast) == {"bridge"}


def test_the_same_writes_in_the_same_order_leave_the_same_cluster(replay):
    _, inproc, _, http, _, _ = replay
    for name in RUNS:
        assert http[name].writes == inproc[name].writes, name
        assert len(inproc[name].writes) > 30, name
        want, got = cluster_objects(inproc[name].model), cluster_objects(http[name].model)
        assert got.keys() == want.keys(), name
        # The engine alone moved the clock: both ended at the span's end.
        assert http[name].model.clock.now == inproc[name].model.clock.now
        assert inproc[name].model.clock.now == SETTINGS.end.timestamp()
        for key in want:
            assert got[key] == want[key], (name, key)
    # The pipeline without the bridge leaves its decisions as Events only (no records folder
    # outlives the run): they are in the objects compared above.
    events = inproc["surgecast-no-bridge"].model.list("events", "inference")
    assert sum(e["reason"].startswith("Surgecast") for e in events) == 30


def test_the_same_violations_and_core_hours(replay):
    expected, _, got, _, _, _ = replay
    for name in RUNS:
        want, have = expected.runs[name].summary(), got.runs[name].summary()
        assert abs(have["violations"] - want["violations"]) <= VIOLATIONS_TOLERANCE, name
        assert abs(have["core_hours"] - want["core_hours"]) <= CORE_HOURS_TOLERANCE, name
        assert have == want, name  # and every other figure of the row
    s = {name: expected.runs[name].summary() for name in RUNS}
    assert s["surgecast"]["violations"] > 0  # not a comparison of zeros
    assert s["surgecast"]["violations"] < s["surgecast-no-bridge"]["violations"]


def test_the_http_runs_went_through_the_api_as_the_service_accounts_rbac_allows(replay):
    *_, logs, _ = replay
    for name, log in zip(RUNS, logs, strict=True):
        statuses = Counter(status for _, _, status in log)
        # 404s are expected (the kill switch ConfigMap, the Leases before their creation).
        assert set(statuses) <= {200, 201, 404}, (name, statuses)
        assert statuses[200] > 300, name  # 395 for the no-bridge run under round-robin
    resizes = [p for m, p, s in logs[0] if m == "PATCH" and p.endswith("/resize") and s == 200]
    assert len(resizes) > 5
