"""The bridge controller against the fake Kubernetes API (test clock, deploy/bridge.yaml's RBAC)
and a real Prometheus holding a load step: it acts within one tick of the signal, inside the
envelope, only as the Lease holder, never against the pipeline, the kill switch or shadow mode,
shrinks no lower than the pod template without a plan, and never retries a refused resize in a
hot loop."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import promtest
import pytest
import yaml
from kubeapi.cluster import Node
from kubeapi.harness import RBAC, REPO, FakeHarness
from typer.testing import CliRunner

from actuator.bridge import StageNow, carries
from actuator.kube import KubeApi
from actuator.lease import Lease
from actuator.rbac import rbac_manifests
from actuator.records import read_records
from planner.plan import Plan, PlanStep
from surgecast.cli import app
from surgecast.live.artifacts import ArtifactStore
from surgecast.live.bridge import (
    BridgeController,
    BridgeOptions,
    bridge_lease_name,
    controller_for,
    fast_query,
    run_bridge,
)
from surgecast.live.prometheus import PrometheusSource
from surgecast.planning import load_profile
from surgecast.settings import load_settings

pytestmark = pytest.mark.skipif(
    not promtest.have_binaries("prometheus", "promtool"),
    reason="needs the prometheus and promtool binaries (Debian package prometheus)",
)

BRIDGE_RBAC = REPO / "deploy" / "bridge.yaml"
SERVICE = "resnet18-classifier"  # a service deploy/bridge.yaml names
DEP = "resnet18"
LOW_RPS, HIGH_RPS = 20.0, 150.0
SCRAPE_S = 5
QUIET_S, SURGE_S = 600, 180
RESNET = load_profile("resnet18").stages[0]


@pytest.fixture(scope="module")
def step_load(tmp_path_factory):
    """Prometheus with a counter sampled every 5 s: 20 rps, then 150 rps for 3 minutes from
    ``surge`` on, then 20 rps again. Returns (url, surge start)."""
    root = tmp_path_factory.mktemp("bridge-prometheus")
    surge = promtest.trace_end(hours_ago=3.0)
    start = surge - pd.Timedelta(seconds=QUIET_S)
    end = surge + pd.Timedelta(seconds=SURGE_S + QUIET_S)
    lines, total = [], 0.0
    labels = f'service="{SERVICE}"'
    for t in range(int(start.timestamp()), int(end.timestamp()) + 1, SCRAPE_S):
        lines.append(f"{promtest.METRIC}_total{{{labels}}} {total:.3f} {t}")
        in_surge = surge.timestamp() <= t < surge.timestamp() + SURGE_S
        total += (HIGH_RPS if in_surge else LOW_RPS) * SCRAPE_S
    om = root / "step.om"
    om.write_text(
        f"# HELP {promtest.METRIC} Requests.\n# TYPE {promtest.METRIC} counter\n"
        + "\n".join(lines) + "\n# EOF\n"
    )
    promtest.backfill(om, root / "tsdb")
    server = promtest.Prometheus(root, root / "tsdb")
    with promtest.running(server):
        yield server, surge


class World:
    """One fake cluster, one config, controllers on the test clock."""

    def __init__(self, tmp_path: Path, url: str, surge: pd.Timestamp, *, mode="active",
                 cores=1, replicas=2, max_cores=8, plan_expiry_s=3600, node_m=64_000,
                 start_s: float = -60, rbac_files: list[Path] | None = None):
        self.surge = surge
        self.h = FakeHarness(start_s=surge.timestamp() + start_s, resize_delay_s=2.0,
                             rbac_files=rbac_files or [RBAC, BRIDGE_RBAC],
                             nodes=[Node("node-1", node_m)])
        self.h.add_deployment(DEP, replicas=replicas, cores=cores)
        self.api = KubeApi(self.h.service_account_client("surgecast-bridge"),
                           request_timeout_s=2.0)
        self.root = tmp_path / "artifacts"
        self.records = tmp_path / "records"
        config = promtest.write_config(
            tmp_path / "services.yaml",
            prometheus={"url": url, "attempts": 1},
            artifacts={"root": str(self.root)},
            services=[{
                "name": SERVICE,
                "query": f'sum(rate({promtest.METRIC}_total{{service="{SERVICE}"}}[1m]))',
                "namespace": "inference",
                "deployment": DEP,
                "profile": "resnet18",
                "slo_ms": 750,
                "mode": mode,
                "plan_expiry_s": plan_expiry_s,
                "bounds": {"min_replicas": 1, "max_replicas": 10, "min_cores": 1,
                           "max_cores": max_cores},
            }],
        )
        self.config = config
        self.settings = load_settings(config)
        self.store = ArtifactStore(str(self.root))

    def controller(self, identity: str = "bridge-a") -> BridgeController:
        return controller_for(
            self.settings,
            api=self.api,
            records_root=self.records,
            store=self.store,
            source=PrometheusSource(self.settings.prometheus),
            options=BridgeOptions(wall_clock=lambda: self.h.clock.now, sleep=self.h.clock.advance,
                                  identity=identity),
        )

    def plan(self, cores: int, *, age_s: float = 0.0) -> None:
        at = self.h.now() - pd.Timedelta(seconds=age_s)
        step = PlanStep(at, at, (2,), (cores,), (1,), "test plan", 10.0, 50.0, "hold")
        plan = Plan(SERVICE, at, (step,), 0.95, 750.0, ("resnet18",))
        self.store.write_json("plans", SERVICE, at, {"kind": "plan", "service": SERVICE,
                                                      "error": None, "plan": plan.to_dict()})

    def ticks(self, controller, seconds: float, every: float = 5.0):
        out = []
        for _ in range(round(seconds / every)):
            self.h.clock.advance(every)
            out.append(controller.tick(SERVICE))
        return out

    def desired(self) -> list[int]:
        return self.h.state(DEP)["desired_millicores"]

    def resize_patches(self) -> list:
        return [w for w in self.h.server.writes() if w[1].split("?")[0].endswith("/resize")]

    def close(self) -> None:
        self.h.close()


@pytest.fixture
def world(tmp_path, step_load):
    server, surge = step_load
    made = []

    def make(**kw) -> World:
        w = World(tmp_path, server.url, surge, **kw)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


def _signal(server, at: pd.Timestamp) -> float:
    q = fast_query(f'sum(rate({promtest.METRIC}_total{{service="{SERVICE}"}}[1m]))', 30)
    result = server.query(q, at)
    return float(result[0]["value"][1]) if result else np.nan


def test_fast_query_shortens_range_selectors_only():
    assert fast_query('sum(rate(x{a="[1m]"}[1m]))', 30) == 'sum(rate(x{a="[1m]"}[30s]))'
    assert fast_query("rate(x[1h30m]) + max_over_time(y[5m:1m])", 10) == (
        "rate(x[10s]) + max_over_time(y[5m:1m])"
    )
    assert fast_query("up", 30) == "up"


def test_a_surge_resizes_the_ready_pods_up_at_the_first_tick_that_sees_it(world, step_load):
    server, surge = step_load
    w = world()
    w.plan(1)
    bridge = w.controller()
    results = w.ticks(bridge, 120)
    first_up = next(r for r in results if r.decision is not None and r.decision.direction == "up")
    at = pd.Timestamp(first_up.record.run_at)
    # Every earlier tick saw a load the two 1-core pods carry; this one did not.
    two_pods = [StageNow(RESNET, 1, (1000, 1000), 1)]
    for r in results:
        when = pd.Timestamp(r.record.run_at)
        if when < at:
            assert r.decision.direction == "hold"
            assert carries(two_pods, _signal(server, when), 750)
    assert not carries(two_pods, _signal(server, at), 750)
    assert at - surge <= pd.Timedelta(seconds=30 + 5)  # the rate window plus one interval
    patched = [c for c in first_up.record.changes if c.outcome == "applied"]
    assert len(patched) == 2 and all(c.direction == "up" for c in patched)
    assert first_up.decision.cores[0] > 1
    assert all(c.after == first_up.decision.cores[0] for c in patched)
    # As the window fills with the surge the pods grow further; the kubelet followed.
    cores = results[-1].decision.cores[0]
    assert w.desired() == [cores * 1000] * 2
    assert w.h.state(DEP)["ready_millicores"] == [cores * 1000] * 2
    assert w.h.state(DEP)["replicas"] == 2  # never a replica
    rec = read_records(w.records, SERVICE)
    assert any(r["kind"] == "bridge" and r["scaled_up"] for r in rec)
    # A steady state does not write a line every tick.
    assert len(rec) < len(results) / 3


def test_it_stays_inside_the_envelope_and_comes_down_to_the_plans_cores(world, step_load):
    _, surge = step_load
    w = world(max_cores=3, start_s=-30)
    w.plan(2)
    bridge = w.controller()
    results = w.ticks(bridge, SURGE_S + 240)
    cores = [r.decision.cores[0] for r in results if r.decision is not None]
    assert max(cores) == 3 and min(cores) == 2  # the ceiling, and the plan's floor
    # At the surge's peak 3 cores fall short: the record says the replicas are the pipeline's.
    assert any("the pipeline adds the replicas" in r.decision.reason for r in results
               if r.decision and r.decision.cores == (3,))
    assert max(w.h.state(DEP)["desired_millicores"]) <= 3000
    # Down only after the surge, and only after scale_down_after_s of carried load.
    down = next(r for r in results if r.decision and r.decision.direction == "down")
    assert pd.Timestamp(down.record.run_at) >= surge + pd.Timedelta(seconds=SURGE_S + 60)
    assert w.desired() == [2000, 2000]


def test_new_pods_among_grown_ones_are_levelled_the_large_ones_first(world, step_load):
    # One 10-core node. In the surge (150 rps) the bridge grows the 2 pods to 4 cores; then the
    # Deployment gets 2 more from its 1-core template, and the node is full. A Service sends
    # each pod a quarter of the load, more than a 1-core pod serves, and there is no room for
    # the small pods to grow alone: 4 pods of 2 cores carry it, and fit.
    from kubernetes import client as k8s

    w = world(node_m=10_000, max_cores=8, start_s=-30)
    w.plan(1)
    bridge = w.controller()
    w.ticks(bridge, 60)
    assert w.desired() == [4000, 4000]
    k8s.AppsV1Api(w.h.admin).patch_namespaced_deployment_scale(
        DEP, "inference", {"spec": {"replicas": 4}}
    )
    results = w.ticks(bridge, 60)
    level = next(r for r in results if r.decision is not None and r.decision.levels(0))
    assert level.decision.direction == "up" and level.decision.cores == (2,)
    assert "levelled" in level.decision.reason
    applied = [c for c in level.record.changes if c.outcome == "applied"]
    assert [c.direction for c in applied] == ["down", "down", "up", "up"]
    assert sorted(w.desired()) == [2000] * 4
    assert sorted(w.h.state(DEP)["ready_millicores"]) == [2000] * 4
    assert pd.Timestamp(results[-1].record.run_at) < w.surge + pd.Timedelta(seconds=SURGE_S)


def test_two_controllers_only_the_lease_holder_writes(world, step_load):
    w = world(start_s=-20)
    w.plan(1)
    a, b = w.controller("bridge-a"), w.controller("bridge-b")
    for _ in range(12):
        w.h.clock.advance(5)
        ra, rb = a.tick(SERVICE), b.tick(SERVICE)
        assert ra.leader and not rb.leader and rb.record is None
    lease = w.api.lease("inference", bridge_lease_name(SERVICE))
    assert lease["spec"]["holderIdentity"] == "bridge-a"
    applied = [c for r in read_records(w.records, SERVICE) for c in r["changes"]
               if c["outcome"] == "applied"]
    assert len(applied) == len(w.resize_patches()) > 0
    a.release()  # a clean shutdown: the other replica takes over at once
    w.h.clock.advance(5)
    assert b.tick(SERVICE).leader


def test_while_the_pipeline_holds_its_lease_the_bridge_skips(world, step_load):
    w = world(start_s=20)
    w.plan(1)
    pipeline = Lease(w.h.api, "inference", f"surgecast-{SERVICE}", "pipeline-run", duration_s=180)
    assert pipeline.acquire(now_s=w.h.clock.now) is None
    bridge = w.controller()
    results = w.ticks(bridge, 30)
    assert all("holds lease" in (r.record.refused or "") for r in results)
    assert w.resize_patches() == [] and w.desired() == [1000, 1000]
    assert [r.written for r in results].count(True) == 1  # recorded once, not every tick
    pipeline.release(now_s=w.h.clock.now)
    after = w.ticks(bridge, 5)[0]
    assert after.decision.direction == "up" and w.desired()[0] > 1000


def test_the_kill_switch_means_no_writes(world, step_load):
    w = world(start_s=20)
    w.plan(1)
    w.h.cluster.put("configmaps", {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "surgecast-control", "namespace": "inference"},
        "data": {"paused": "true"},
    })
    results = w.ticks(w.controller(), 20)
    assert all("kill switch" in (r.record.held or "") for r in results)
    outcomes = {c.outcome for r in results for c in r.record.changes}
    assert outcomes == {"dry-run"}
    assert w.resize_patches() and all("dryRun=All" in p[1] for p in w.resize_patches())
    assert w.desired() == [1000, 1000]


def test_shadow_mode_only_dry_runs(world, step_load):
    w = world(mode="shadow", start_s=20)
    w.plan(1)
    results = w.ticks(w.controller(), 20)
    assert any(r.decision.direction == "up" for r in results)
    assert {c.outcome for r in results for c in r.record.changes} == {"dry-run"}
    assert w.desired() == [1000, 1000]
    assert read_records(w.records, SERVICE)[0]["mode"] == "shadow"


def test_an_expired_plan_shrinks_the_pods_no_lower_than_their_template(world, step_load):
    # Quiet load, pods (and their template) at 4 cores, a plan that asks for 1 core but has
    # expired: the floor is the template's 4 cores.
    w = world(cores=4, plan_expiry_s=600, start_s=-QUIET_S + 60)
    w.plan(1, age_s=900)
    results = w.ticks(w.controller(), 240)
    assert all(r.decision.direction == "hold" for r in results)
    assert "expired" in results[-1].record.inputs["envelope"]["source"]
    assert w.desired() == [4000, 4000] and w.resize_patches() == []
    # With a fresh plan the same quiet load brings them down to its cores.
    w.plan(1)
    w.ticks(w.controller("bridge-b"), 90)
    assert w.desired() == [1000, 1000]


def test_a_refused_resize_is_recorded_reverted_and_not_retried_in_a_hot_loop(world, step_load):
    # A 3-core node: the surge wants 4 cores per pod, which no node of this cluster has.
    w = world(node_m=3000, start_s=20)
    w.plan(1)
    bridge = w.controller()
    results = w.ticks(bridge, 90)
    patches = [p for p in w.resize_patches() if "dryRun" not in p[1]]
    assert len(patches) == 4  # per pod: the resize, then its revert; nothing more
    reverts = [c for r in results for c in r.record.changes if c.reason.startswith("revert")]
    assert len(reverts) == 2 and all(c.outcome == "applied" for c in reverts)
    skipped = [c for r in results for c in r.record.changes if c.outcome == "skipped"]
    assert skipped and "Infeasible" in skipped[-1].reason
    assert w.h.state(DEP)["ready_millicores"] == [1000, 1000]
    assert sum(r.written for r in results) <= 4


def test_run_bridge_once_from_the_config(world, step_load, monkeypatch):
    w = world(start_s=20)
    w.plan(1)
    # The CLI's entry point, on the harness's API and clock.
    options = BridgeOptions(wall_clock=lambda: w.h.clock.now, identity="cli")
    (result,) = run_bridge(w.config, once=True, api=w.api, options=options)
    assert result.leader and result.decision.direction == "up"
    assert w.desired()[0] > 1000
    # The Lease is released on the way out.
    lease = w.api.lease("inference", bridge_lease_name(SERVICE))
    assert not lease["spec"].get("holderIdentity")


def test_the_generated_rbac_is_enough_and_grants_no_replicas(world, step_load, tmp_path):
    settings = load_settings(world(start_s=20).config)
    docs = rbac_manifests([settings.actuator_config(SERVICE)], bridge=True)
    bridge_role = next(d for d in docs if d["kind"] == "Role"
                       and d["metadata"]["name"] == "surgecast-bridge")
    resources = {r["resources"][0] for r in bridge_role["rules"]}
    assert "deployments/scale" not in resources and "horizontalpodautoscalers" not in resources
    path = tmp_path / "generated-rbac.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    w = world(start_s=20, rbac_files=[path])
    w.plan(1)
    result = w.ticks(w.controller(), 5)[0]
    assert result.record.errors == [] and result.decision.direction == "up"
    assert w.desired()[0] > 1000


def test_sigterm_releases_the_lease_and_exits_cleanly(world, step_load, tmp_path):
    w = world(start_s=20)
    token = w.h.server.service_account_token("inference", "surgecast-bridge")
    kubeconfig = w.h.write_kubeconfig(tmp_path / "kubeconfig", token=token)
    data = yaml.safe_load(w.config.read_text())
    data["kubernetes"] = {"kubeconfig": str(kubeconfig)}
    config = tmp_path / "cli.yaml"
    config.write_text(yaml.safe_dump(data))
    cli = Path(sys.executable).parent / "surgecast"
    proc = subprocess.Popen([str(cli), "bridge", "--config", str(config), "--interval", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        name = bridge_lease_name(SERVICE)
        deadline = time.monotonic() + 60
        holder = None
        while time.monotonic() < deadline and not holder:
            time.sleep(0.2)
            try:
                holder = w.api.lease("inference", name)["spec"].get("holderIdentity")
            except Exception:  # not created yet
                holder = None
        assert holder, proc.stdout.read() if proc.poll() is not None else "no lease taken"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not w.api.lease("inference", name)["spec"].get("holderIdentity")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--interval", "0.5"], "--interval: must be in [1, 300] s"),
        (["--service", "nope"], "no service 'nope'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(world, step_load, args, message):
    w = world(start_s=20)
    result = CliRunner().invoke(app, ["bridge", "--config", str(w.config), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    missing = CliRunner().invoke(app, ["bridge", "--config", str(w.config) + ".nope"])
    assert missing.exit_code == 2 and "Traceback" not in missing.output


def test_a_tick_far_from_the_wall_clock_only_records(world, step_load):
    w = world(start_s=20)
    w.plan(1)
    bridge = w.controller()
    w.h.clock.advance(3600)  # the wall clock moved on; the tick is told the surge's time
    result = bridge.tick(SERVICE, now=w.surge + pd.Timedelta(seconds=40))
    assert "replay" in (result.record.held or "")
    assert result.decision.direction == "up"
    assert {c.outcome for c in result.record.changes} == {"dry-run"}
    assert w.desired() == [1000, 1000]


def test_metrics_go_to_the_pushgateway_every_tick(world, step_load, tmp_path_factory):
    gateway = promtest.pushgateway(tmp_path_factory.getbasetemp() / "bridge-pushgateway")
    w = world(start_s=20)
    data = yaml.safe_load(w.config.read_text())
    data["pushgateway_url"] = gateway.url
    w.config.write_text(yaml.safe_dump(data))
    w.settings = load_settings(w.config)
    w.plan(1)
    results = w.ticks(w.controller(), 15)
    assert all(r.record.metrics == f"pushed to {gateway.url}" for r in results)
    (beat,) = gateway.samples("surgecast_bridge_last_run_timestamp_seconds")
    assert f'service="{SERVICE}"' in beat and 'job="surgecast_bridge"' in beat
    assert float(beat.rsplit(" ", 1)[1]) == pytest.approx(w.h.clock.now)
    (rps,) = gateway.samples("surgecast_bridge_signal_rps")
    assert float(rps.rsplit(" ", 1)[1]) > LOW_RPS
