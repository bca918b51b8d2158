"""The actuator end to end against the fake API (and a real cluster with KUBECONFIG set):
shadow first, declarative and idempotent, make-before-break, every decision on record, faults
recorded and converged, capacity ready by the surge."""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.request

import numpy as np
import pandas as pd
import promtest
import pytest
from kubeapi.cluster import Node
from kubeapi.harness import RBAC, ClusterHarness, FakeHarness
from typer.testing import CliRunner

from actuator.apply import RunOptions, actuate
from actuator.guards import Bounds
from actuator.kube import RetryPolicy
from actuator.records import read_records
from actuator.spec import ServiceSpec, WorkloadSpec
from actuator.target import Floor
from planner.dp import StageConfig, horizontal
from planner.plan import Plan, PlanStep
from planner.policy import ClusterState, PolicySettings, plan_two_stage
from surgecast.cli import app
from surgecast.planning import load_profile

DEP = "resnet18"
HARNESSES = [
    "fake",
    pytest.param(
        "cluster",
        marks=[
            pytest.mark.cluster,
            pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="KUBECONFIG not set"),
        ],
    ),
]


@pytest.fixture(params=HARNESSES)
def kube(request):
    h = FakeHarness() if request.param == "fake" else ClusterHarness()
    yield h
    h.close()


@pytest.fixture
def fake():
    h = FakeHarness(nodes=[Node("node-1", 16_000), Node("node-2", 16_000)], request_timeout_s=0.3)
    yield h
    h.close()


def service(**kw) -> ServiceSpec:
    bounds = kw.pop("bounds", Bounds(1, 8, 1, 8, 16))
    wl = WorkloadSpec(
        deployment=DEP, bounds=bounds, hpa=kw.pop("hpa", None), batch_env=kw.pop("batch_env", None)
    )
    defaults = dict(
        mode="active",
        run_interval_s=60.0,
        resize_timeout_s=10.0,
        stabilisation_s=300.0,
        plan_expiry_s=600.0,
    )
    return ServiceSpec(name=DEP, namespace="inference", workloads=(wl,), **{**defaults, **kw})


def surge_plan(
    now: pd.Timestamp, replicas=5, cores=3, lead_s=30.0, kind="scale-out", service_name=DEP
) -> Plan:
    effective = now + pd.Timedelta(seconds=lead_s)
    step = PlanStep(
        effective, now, (replicas,), (cores,), (4,), "surge forecast at T", 90.0, 300.0, kind
    )
    return Plan(service_name, now, (step,), 0.95, 750.0, (DEP,))


def quiet(peak_rps: float = 1.0) -> dict:
    """Observed load (capacity 10 rps per core) that confirms a scale-in."""
    return {
        0: Floor(peak_rps, lambda c: c.replicas * c.cores * 10.0, StageConfig(1, 1, 4), peak_rps)
    }


def run(h, plan, cfg, tmp_path, now=None, floors=None, **opts) -> object:
    options = RunOptions(
        retry=RetryPolicy(attempts=4, backoff_s=0.5, request_timeout_s=0.3),
        poll_s=1.0,
        sleep=h.sleep,
        wall_clock=lambda: h.now().timestamp(),  # the test clock is the wall clock here
        **opts,
    )
    return actuate(
        plan,
        [cfg],
        h.api,
        now=now if now is not None else h.now(),
        artifacts=tmp_path,
        floors=floors,
        options=options,
    )


def outcomes(record) -> list[tuple[str, str]]:
    return [(c.what, c.outcome) for c in record.changes]


# --------------------------------------------------------------------------------------------
# behaviour (fake API, and a real cluster when KUBECONFIG is set)


def test_shadow_patches_nothing_and_says_what_it_would_do(kube, tmp_path):
    kube.add_deployment(DEP, replicas=2, cores=2)
    before = kube.state(DEP)
    record = run(kube, surge_plan(kube.now()), service(mode="shadow"), tmp_path)
    assert kube.state(DEP) == before
    assert outcomes(record) == [("replicas", "dry-run"), ("cpu", "dry-run"), ("cpu", "dry-run")]
    assert record.mode == "shadow" and not record.errors
    if kube.kind == "fake":
        writes = kube.server.writes()
        assert len(writes) == 3 and all(p.endswith("?dryRun=All") for _, p, _ in writes)
    assert [e["reason"] for e in kube.events(DEP)] == ["SurgecastShadow"]


def test_active_scale_out_and_resize_then_rerun_is_a_no_op(kube, tmp_path):
    kube.add_deployment(DEP, replicas=2, cores=2)
    plan = surge_plan(kube.now())
    record = run(kube, plan, service(), tmp_path)
    assert outcomes(record) == [("replicas", "applied"), ("cpu", "applied"), ("cpu", "applied")]
    assert [c.resize for c in record.changes[1:]] == ["done", "done"]
    kube.advance(31)
    state = kube.state(DEP)
    assert state["replicas"] == 5 and state["ready"] == 5
    # New pods started from the template (2 cores); the next run resizes them once ready.
    assert state["ready_millicores"] == [2000, 2000, 2000, 3000, 3000]
    again = run(kube, plan, service(), tmp_path)
    assert outcomes(again) == [("cpu", "applied")] * 3
    kube.advance(3)
    assert kube.state(DEP)["ready_millicores"] == [3000] * 5
    third = run(kube, plan, service(), tmp_path)
    assert third.changes == [] and kube.state(DEP)["ready_millicores"] == [3000] * 5
    assert len(read_records(tmp_path, DEP)) == 3


# --------------------------------------------------------------------------------------------
# records, events, metrics


def test_record_has_the_contract_fields_and_one_line_per_run(fake, tmp_path):
    fake.add_deployment(DEP, replicas=2, cores=2)
    plan = surge_plan(fake.now(), replicas=20)
    run(fake, plan, service(max_replica_step=20), tmp_path)
    files = list((tmp_path / "decisions" / DEP).glob("*.jsonl"))
    assert [f.name for f in files] == ["2025-06-02.jsonl"]
    (line,) = files[0].read_text().splitlines()
    rec = json.loads(line)
    for key in (
        "service",
        "mode",
        "run_at",
        "inputs",
        "quantile",
        "chosen_step",
        "workloads",
        "changes",
        "errors",
        "event",
        "metrics",
        "refused",
        "scaled_up",
    ):
        assert key in rec
    assert rec["quantile"] == 0.95 and rec["chosen_step"]["replicas"] == [20]
    (wl,) = rec["workloads"]
    assert wl["wanted"]["replicas"] == 20 and wl["target"]["replicas"] == 8
    assert wl["bound_by"][0].startswith("bounds:")
    assert wl["after"]["replicas"] == 8
    assert rec["event"].startswith("SurgecastScaled")
    (event,) = fake.events(DEP)
    assert event["involvedObject"]["kind"] == "Deployment" and event["type"] == "Normal"
    assert "replicas 2->8 applied" in event["message"]


@pytest.fixture
def pushgateway(tmp_path):
    if not promtest.have_binaries("prometheus-pushgateway"):
        pytest.fail("prometheus-pushgateway is not installed (scripts/test installs it)")
    # A port taken meanwhile is retried on another; a gateway that never gets ready fails
    # the test with its log tail.
    with promtest.running(promtest.Pushgateway(tmp_path / "pushgateway")) as gateway:
        yield gateway.url


def test_metrics_reach_the_pushgateway(fake, tmp_path, pushgateway):
    fake.add_deployment(DEP, replicas=2, cores=2)
    cfg = service(pushgateway_url=pushgateway)
    record = run(fake, surge_plan(fake.now()), cfg, tmp_path)
    assert record.metrics.startswith("pushed")
    run(fake, surge_plan(fake.now()), cfg, tmp_path)
    text = urllib.request.urlopen(f"{pushgateway}/metrics", timeout=5).read().decode()
    lines = {
        ln.split(" ")[0]: float(ln.split(" ")[1])
        for ln in text.splitlines()
        if ln.startswith("surgecast_actuator") and " " in ln
    }
    key = '{instance="",job="surgecast_actuator",service="resnet18"}'
    assert lines[f"surgecast_actuator_decisions_total{key}"] == 2.0
    assert lines[f"surgecast_actuator_changes_applied_total{key}"] == 3.0
    planned = (
        'surgecast_actuator_planned_replicas{deployment="resnet18",instance="",'
        'job="surgecast_actuator",service="resnet18"}'
    )
    assert lines[planned] == 5.0
    assert any(k.startswith("surgecast_actuator_actual_cores") for k in lines)


def test_pushgateway_failure_is_recorded_not_fatal(fake, tmp_path):
    fake.add_deployment(DEP, replicas=2, cores=2)
    with socket.socket() as held:  # bound, never listening: connections are refused
        held.bind(("127.0.0.1", 0))
        cfg = service(pushgateway_url=f"http://127.0.0.1:{held.getsockname()[1]}")
        record = run(fake, surge_plan(fake.now()), cfg, tmp_path)
    assert record.metrics.startswith("failed") and record.errors[-1].startswith("pushgateway")
    assert fake.state(DEP)["replicas"] == 5


# --------------------------------------------------------------------------------------------
# HPA and template


def _hpa_at(h, t0: float, offset_s: float) -> None:
    """Move the test clock to ``t0 + offset_s`` (HPA syncs fall at t0 + 15 k)."""
    h.advance(t0 + offset_s - h.clock.now)


def test_with_an_hpa_the_actuator_moves_min_replicas_not_the_scale(fake, tmp_path):
    fake.add_deployment(DEP, replicas=2, cores=2)
    t0 = fake.clock.now
    fake.cluster.add_hpa("inference", "resnet18-hpa", DEP, min_replicas=2, max_replicas=10)
    fake.cluster.set_hpa_utilisation("resnet18-hpa", 70)  # at its target: the metric holds
    # Not named in the config: found, recorded and left alone (no scale write either).
    unnamed = run(fake, surge_plan(fake.now(), cores=2), service(), tmp_path)
    assert unnamed.changes == [] and "does not name" in unnamed.errors[-1]
    record = run(fake, surge_plan(fake.now(), cores=2), service(hpa="resnet18-hpa"), tmp_path)
    assert outcomes(record) == [("hpa minReplicas", "applied")]
    assert record.workloads[0].hpa == "resnet18-hpa"
    # The HPA acts at its next sync (every 15 s), not when its spec changes.
    assert fake.state(DEP)["hpa_min"] == 5 and fake.state(DEP)["replicas"] == 2
    _hpa_at(fake, t0, 15)
    assert fake.state(DEP)["replicas"] == 5
    assert not any("/scale" in p for _, p, _ in fake.server.writes())
    # Lower it once the stabilisation has passed and the load has dropped: the HPA keeps its
    # highest recommendation of the last 300 s (5, at every sync until t0 + 390), so the
    # replicas drop at the first sync after t0 + 690, not when minReplicas drops.
    _hpa_at(fake, t0, 400)
    fake.cluster.set_hpa_utilisation("resnet18-hpa", 20)
    later = fake.now()
    down = Plan(
        DEP,
        later,
        (PlanStep(later, later, (3,), (2,), (4,), "quiet", 1, 1, "scale-in"),),
        0.95,
        750.0,
        (DEP,),
    )
    record = run(fake, down, service(hpa="resnet18-hpa"), tmp_path, floors=quiet())
    assert outcomes(record) == [("hpa minReplicas", "applied")]
    assert fake.state(DEP)["hpa_min"] == 3 and fake.state(DEP)["replicas"] == 5
    _hpa_at(fake, t0, 690)
    assert fake.state(DEP)["replicas"] == 5
    _hpa_at(fake, t0, 705)
    assert fake.state(DEP)["replicas"] == 3
    assert not any("/scale" in p for _, p, _ in fake.server.writes())


def test_an_hpa_above_the_planned_minimum_keeps_its_count(fake, tmp_path):
    """The HPA's metric wants more than the plan: the actuator moves only the floor
    (minReplicas) under it, never the scale, and a re-run writes nothing."""
    fake.add_deployment(DEP, replicas=4, cores=2)
    t0 = fake.clock.now
    fake.cluster.add_hpa("inference", "resnet18-hpa", DEP, min_replicas=2, max_replicas=10)
    fake.cluster.set_hpa_utilisation("resnet18-hpa", 140)
    _hpa_at(fake, t0, 15)
    assert fake.state(DEP)["replicas"] == 8  # ceil(4 x 140 / 70)
    fake.cluster.set_hpa_utilisation("resnet18-hpa", 70)  # the load now spread over 8 pods
    _hpa_at(fake, t0, 50)  # the new pods are ready
    plan = surge_plan(fake.now(), replicas=5, cores=2, kind="hold", lead_s=0)
    cfg = service(hpa="resnet18-hpa")
    record = run(fake, plan, cfg, tmp_path, last_scale_up_s=t0 - 3600)
    assert [(c.what, c.after) for c in record.changes] == [("hpa minReplicas", 5)]
    _hpa_at(fake, t0, 400)
    state = fake.state(DEP)
    assert state["replicas"] == state["ready"] == 8 and state["hpa_min"] == 5
    def writes() -> int:  # the run's own Lease aside
        return len([w for w in fake.server.writes() if "/leases/" not in w[1]])

    before = writes()
    again = run(fake, plan, cfg, tmp_path, now=fake.now(), last_scale_up_s=t0 - 3600)
    assert outcomes(again) == []
    assert writes() == before
    assert not any("/scale" in p for _, p, _ in fake.server.writes())
    assert fake.state(DEP)["replicas"] == 8


def test_template_is_rewritten_only_while_load_is_stable(tmp_path):
    from kubeapi.harness import RBAC_TEMPLATE

    h = FakeHarness(rbac_files=[RBAC, RBAC_TEMPLATE])
    try:
        h.add_deployment(DEP, replicas=2, cores=2, batch_env="BATCH_SIZE", batch=4)
        cfg = service(rewrite_template=True, batch_env="BATCH_SIZE")
        surge = run(h, surge_plan(h.now(), replicas=2, cores=3), cfg, tmp_path)
        assert outcomes(surge)[-1] == ("template", "skipped")
        assert h.state(DEP)["template_millicores"] == 2000
        h.advance(400)
        stable = surge_plan(h.now(), replicas=2, cores=3, kind="hold", lead_s=0)
        record = run(h, stable, cfg, tmp_path)
        assert outcomes(record) == [("template", "applied")]
        # The roll (2 replicas: maxSurge 1, maxUnavailable 0) goes one pod at a time and never
        # below 2 ready pods of 3 cores (the old ones were resized in place before).
        for _ in range(61):
            state = h.state(DEP)
            assert state["pods"] <= 3 and state["ready_millicores"][-2:] == [3000, 3000]
            h.advance(1)
        state = h.state(DEP)
        assert state["template_millicores"] == 3000 and state["ready_millicores"] == [3000] * 2
        assert all(
            p["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "3"
            for p in h.cluster.live_pods_of("inference", DEP)
        )
    finally:
        h.close()


# --------------------------------------------------------------------------------------------
# faults: every case recorded, nothing outside the guards, re-runs converge


def _converge(h, plan, cfg, tmp_path, runs=4) -> dict:
    """Re-run the same plan (time moving on, as scheduled runs do) until the state is fixed."""
    states = []
    for _ in range(runs):
        run(h, plan, cfg, tmp_path, now=plan.cutoff)
        h.advance(35)
        states.append(h.state(DEP))
    assert states[-1] == states[-2], "re-runs did not converge"
    return states[-1]


CLEAN_END = {"replicas": 5, "ready": 5, "ready_millicores": [3000] * 5}


def _end(state: dict) -> dict:
    return {k: state[k] for k in CLEAN_END}


FAULTS = {
    # name: (inject(harness), expected outcomes of the faulty run, expected converged state)
    "5xx on scale, retried": (
        lambda h: h.faults.fail(r"/scale$", 503, times=2, method="PATCH"),
        [("replicas", "applied"), ("cpu", "applied"), ("cpu", "applied")],
        CLEAN_END,
    ),
    # A refused resize does not stop the run: the other pod is still resized and the missing
    # core is made up by a fallback replica (new pods start at the template's 2 cores), which
    # stays until an observed-load-confirmed scale-in removes it. Once node-1 is full, two
    # resizes stay Deferred: 16 cores carry the 15 planned, so no further replica is added.
    "5xx on resize beyond retries": (
        lambda h: h.faults.fail(r"/resize$", 500, times=4, method="PATCH"),
        [
            ("replicas", "applied"),
            ("cpu", "failed"),
            ("cpu", "applied"),
            ("fallback replicas", "applied"),
        ],
        {"replicas": 6, "ready": 6, "ready_millicores": [2000, 2000, 3000, 3000, 3000, 3000]},
    ),
    "5xx on every read": (
        lambda h: h.faults.fail(r"/deployments/resnet18$", 503, times=4, method="GET"),
        [],
        CLEAN_END,
    ),
    "timeout on scale (write landed)": (
        lambda h: h.faults.delay(r"/scale$", 0.6, times=1, method="PATCH"),
        [("replicas", "applied"), ("cpu", "applied"), ("cpu", "applied")],
        CLEAN_END,
    ),
    "timeouts on every resize (writes landed)": (
        lambda h: h.faults.delay(r"/resize$", 0.6, times=4, method="PATCH"),
        [("replicas", "applied"), ("cpu", "applied"), ("cpu", "applied")],
        CLEAN_END,
    ),
    "409 conflicts, retried on a fresh read": (
        lambda h: h.faults.conflict_next_writes(3, path=r"/(scale|resize)$"),
        [("replicas", "applied"), ("cpu", "applied"), ("cpu", "applied")],
        CLEAN_END,
    ),
    "409 conflicts beyond retries": (
        lambda h: h.faults.conflict_next_writes(4, path=r"/(scale|resize)$"),
        [("replicas", "failed"), ("cpu", "not attempted"), ("cpu", "not attempted")],
        CLEAN_END,
    ),
}


@pytest.mark.parametrize("name", list(FAULTS))
def test_api_faults_are_recorded_and_reruns_converge(fake, tmp_path, name):
    inject, expected, end = FAULTS[name]
    fake.add_deployment(DEP, replicas=2, cores=2)
    plan = surge_plan(fake.now())
    inject(fake)
    record = run(fake, plan, service(), tmp_path)
    assert outcomes(record) == expected
    assert fake.faults.fired, "the fault never fired"
    state = fake.state(DEP)
    assert 2 <= state["replicas"] <= 6 and max(state["desired_millicores"]) <= 3000
    failed = [c for c in record.changes if c.outcome == "failed"]
    assert all(c.errors for c in failed)
    if failed or not record.changes:
        assert record.errors and record.to_dict()["event"]
    assert _end(_converge(fake, plan, service(), tmp_path)) == end


def test_resize_infeasible_falls_back_to_replicas(fake, tmp_path):
    fake.add_deployment(DEP, replicas=2, cores=2)
    plan = surge_plan(fake.now(), replicas=2, cores=17)  # no 16-core node fits 17 cores
    record = run(fake, plan, service(bounds=Bounds(1, 8, 1, 32, 16), max_core_step=32), tmp_path)
    assert [(c.what, c.outcome, c.resize) for c in record.changes] == [
        ("cpu", "applied", "Infeasible"),
        ("cpu", "applied", "Infeasible"),
        ("cpu", "applied", None),  # reverted to 2 cores: the refused 17 reserves nothing
        ("cpu", "applied", None),
        ("fallback replicas", "applied", None),
    ]
    assert fake.state(DEP)["desired_millicores"][:2] == [2000, 2000]
    # 2 pods short of 15 cores each = 30 cores; new pods start at the template's 2 cores, so
    # 15 more would be needed; the step limit (4 pods or 100 % per run) allows 6 replicas.
    assert record.changes[-1].after == 6 and fake.state(DEP)["replicas"] == 6
    assert any("step limit" in n for n in record.workloads[0].bound_by)
    again = run(fake, plan, service(bounds=Bounds(1, 8, 1, 32, 16), max_core_step=32), tmp_path)
    assert fake.state(DEP)["replicas"] == 6, "a re-run must not add replicas again"
    assert ("fallback replicas", "applied") not in outcomes(again)


def test_resize_deferred_beyond_the_timeout_falls_back_to_replicas(fake, tmp_path):
    fake.add_deployment(DEP, replicas=2, cores=2)
    names = [p["metadata"]["name"] for p in fake.cluster.pods_of("inference", DEP)]
    fake.cluster.deferred.update(names)
    start = fake.now()
    record = run(
        fake, surge_plan(start, replicas=2, cores=3), service(resize_timeout_s=10), tmp_path
    )
    assert [c.resize for c in record.changes[:2]] == ["Deferred", "Deferred"]
    assert record.changes[2].what == "fallback replicas" and record.changes[2].after == 3
    assert (fake.now() - start).total_seconds() == pytest.approx(10.0)
    fake.cluster.deferred.clear()  # room again: the kubelet resizes, the fallback stays (held)
    fake.advance(40)
    run(fake, surge_plan(start, replicas=2, cores=3), service(), tmp_path, now=start)
    assert fake.state(DEP)["replicas"] == 3


def test_static_cpu_manager_refusal_falls_back_to_replicas(tmp_path):
    h = FakeHarness(nodes=[Node("node-1", 32_000, cpu_manager_policy="static")])
    try:
        h.add_deployment(DEP, replicas=2, cores=2)
        record = run(h, surge_plan(h.now(), replicas=2, cores=3), service(), tmp_path)
        assert [c.resize for c in record.changes[:2]] == ["Infeasible", "Infeasible"]
        # 2 pods short of 1 core each: one more pod of the template's 2 cores; the refused
        # resizes are reverted first so the spec reserves nothing it cannot get.
        (fallback,) = [c for c in record.changes if c.what == "fallback replicas"]
        assert fallback.after == 3
        assert [c.after for c in record.changes[2:4]] == [2, 2]
        assert h.state(DEP)["replicas"] == 3
    finally:
        h.close()


@pytest.mark.parametrize(("fault", "resize"), [("error", "Error"), ("stuck", "in progress")])
def test_a_resize_the_kubelet_cannot_actuate_falls_back_to_replicas(fake, tmp_path, fault, resize):
    """Admitted resizes the runtime fails to apply (PodResizeInProgress, reason Error) or that
    never complete leave the containers at their old CPU: the capacity is short just as when
    the resize is Deferred, so the run adds replicas once the resize timeout has passed."""
    fake.add_deployment(DEP, replicas=2, cores=2)
    if fault == "error":
        fake.cluster.resize_errors["node-1"] = "failed to update container resources"
    else:
        fake.cluster.stuck_resizes.add("node-1")
    record = run(
        fake, surge_plan(fake.now(), replicas=2, cores=3), service(resize_timeout_s=10), tmp_path
    )
    assert [c.resize for c in record.changes[:2]] == [resize, resize]
    assert fake.state(DEP)["ready_millicores"] == [2000, 2000]  # the kubelet kept them
    (fallback,) = [c for c in record.changes if c.what == "fallback replicas"]
    assert fallback.after == 3
    assert fake.state(DEP)["replicas"] == 3


def test_expired_plan_is_never_applied(fake, tmp_path):
    fake.add_deployment(DEP, replicas=2, cores=2)
    old = fake.now() - pd.Timedelta(seconds=601)
    record = run(fake, surge_plan(old), service(), tmp_path)
    assert "expired" in record.refused and record.changes == []
    assert fake.server.writes() == [] and fake.state(DEP)["replicas"] == 2
    assert [e["reason"] for e in fake.events(DEP)] == ["SurgecastRefused"]
    assert read_records(tmp_path, DEP)[0]["refused"] == record.refused


def test_unknown_workload_is_not_touched_at_all(fake, tmp_path):
    fake.add_deployment(DEP, replicas=2, cores=2)
    record = run(fake, surge_plan(fake.now(), service_name="other"), service(), tmp_path)
    assert "allow-list" in record.refused
    assert fake.server.log == []  # not even a read
    assert read_records(tmp_path, "other")[0]["refused"] == record.refused


def test_plan_outside_the_bounds_is_clamped_and_says_so(fake, tmp_path):
    fake.add_deployment(DEP, replicas=2, cores=2)
    record = run(
        fake, surge_plan(fake.now(), replicas=50, cores=2), service(max_replica_step=4), tmp_path
    )
    assert record.workloads[0].target["replicas"] == 6
    assert [n.split(":")[0] for n in record.workloads[0].bound_by] == ["step limit"]
    record = run(
        fake, surge_plan(fake.now(), replicas=50, cores=2), service(max_replica_step=4), tmp_path
    )
    assert [n.split(":")[0] for n in record.workloads[0].bound_by] == ["step limit", "bounds"]
    assert fake.state(DEP)["replicas"] == 8


def test_forbidden_verb_is_recorded_and_nothing_else_changes(fake, tmp_path):
    fake.add_deployment(DEP, replicas=2, cores=2)
    fake.advance(400)
    stable = surge_plan(fake.now(), replicas=2, cores=3, kind="hold", lead_s=0)
    cfg = service(rewrite_template=True)  # rbac.yaml does not grant patch deployments
    record = run(fake, stable, cfg, tmp_path)
    assert outcomes(record) == [("cpu", "applied"), ("cpu", "applied"), ("template", "failed")]
    assert record.changes[-1].errors[0].startswith("403")
    assert any(e.startswith("deployments/resnet18: 403") for e in record.errors)
    assert fake.state(DEP)["template_millicores"] == 2000
    again = run(fake, stable, cfg, tmp_path)
    assert outcomes(again) == [("template", "failed")]


# --------------------------------------------------------------------------------------------
# the timing bar


def _surge_plan_from_planner(cutoff: pd.Timestamp, surge_at_min: int) -> tuple[Plan, object]:
    """The two-stage planner's plan for a forecast that jumps from 40 to 160 rps."""
    pipeline = load_profile("resnet18")
    now_state = horizontal(pipeline, 40.0, 750.0)
    loads = np.array([40.0] * (surge_at_min - 1) + [160.0] * 6)
    settings = PolicySettings(slo_ms=750.0, cold_start_s=30.0, resize_s=2.0)
    plan = plan_two_stage(
        DEP, pipeline, ClusterState.of(now_state.stages), 40.0, loads, 60.0, cutoff, settings
    )
    return plan, pipeline


@pytest.mark.parametrize("interval_s", [60.0, 300.0, 30.0])
def test_surge_capacity_is_ready_by_T_with_a_30_s_start_delay(tmp_path, interval_s):
    h = FakeHarness(start_delay_s=30.0)
    try:
        cutoff = h.now()
        plan, pipeline = _surge_plan_from_planner(cutoff, surge_at_min=10)
        (step,) = [s for s in plan.steps if s.kind == "scale-out"]
        T = step.effective_at
        assert (T - step.apply_at).total_seconds() == 30.0
        h.add_deployment(DEP, replicas=1, cores=2)
        cfg = service(run_interval_s=interval_s)
        profile = pipeline.stages[0]

        def ready_rps() -> float:
            cores = h.state(DEP)["ready_millicores"]
            return sum(float(profile.throughput_rps(step.batch[0], m // 1000)) for m in cores)

        ready_at, t = None, cutoff
        while t <= T + pd.Timedelta(seconds=60):
            if (t - cutoff).total_seconds() % interval_s == 0:
                run(h, plan, cfg, tmp_path, now=t)
            if ready_at is None and ready_rps() >= step.capacity_rps:
                ready_at = t
            h.advance(1.0)
            t = h.now()
        lead = (T - ready_at).total_seconds()
        print(
            f"interval {interval_s:g} s: capacity {step.capacity_rps:.0f} rps ready at "
            f"T - {lead:.0f} s"
        )
        assert ready_at <= T
    finally:
        h.close()


# --------------------------------------------------------------------------------------------
# CLI


def test_cli_apply_shadow_then_active(tmp_path):
    # The command checks its --now against the wall clock: the test clock starts at the real
    # time (the run takes well under the allowed skew).
    fake = FakeHarness(start_s=float(int(time.time())), request_timeout_s=2.0)
    try:
        _cli_apply_shadow_then_active(fake, tmp_path)
    finally:
        fake.close()


def _cli_apply_shadow_then_active(fake, tmp_path):
    fake.add_deployment(DEP, replicas=2, cores=2)
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(surge_plan(fake.now()).to_dict()))
    cfg = tmp_path / "services.yaml"  # the file `surgecast run` reads
    cfg.write_text(
        "services:\n"
        "  - name: resnet18\n"
        "    query: sum(rate(http_requests_total[1m]))\n"
        "    profile: resnet18\n"
        "    slo_ms: 750\n"
        "    namespace: inference\n"
        "    deployment: resnet18\n"
        "    container: server\n"
        "    resize_timeout_s: 0\n"
        "    bounds: {min_replicas: 1, max_replicas: 8, min_cores: 1, max_cores: 8}\n"
    )
    args = [
        "apply",
        str(plan_file),
        "--config",
        str(cfg),
        "--kubeconfig",
        str(fake.write_kubeconfig(tmp_path / "kubeconfig")),
        "--now",
        fake.now().isoformat(),
        "--artifacts",
        str(tmp_path / "art"),
    ]
    runner = CliRunner()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "resnet18 replicas 2 -> 5: dry-run (surge forecast at T)" in result.output
    assert "shadow run; record:" in result.output and fake.state(DEP)["replicas"] == 2
    result = runner.invoke(app, [*args, "--active"])
    assert result.exit_code == 0, result.output
    assert "resnet18 replicas 2 -> 5: applied" in result.output
    # resize_timeout_s = 0: no resize is confirmed within the run, so the 2 cores the two
    # resizes would add are made up by one more pod of the template's 2 cores.
    assert "fallback replicas 5 -> 6: applied" in result.output
    assert fake.state(DEP)["replicas"] == 6


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--config", "missing.yaml"], "config file not found"),
        (["--config", "service.toml"], "service configs are YAML now"),
        (["--service-config", "service.json"], "service configs are YAML now"),
        (["--now", "yesterday"], "--now"),
        (["--kubeconfig", "nope"], "--kubeconfig"),
    ],
)
def test_cli_apply_bad_input_is_one_line_exit_2(tmp_path, extra, message):
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(surge_plan(pd.Timestamp("2025-06-02T08:00:00Z")).to_dict()))
    result = CliRunner().invoke(app, ["apply", str(plan_file), *extra])
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_cli_apply_bad_plan_file(tmp_path):
    bad = tmp_path / "plan.json"
    bad.write_text('{"service": "x"}')
    result = CliRunner().invoke(app, ["apply", str(bad)])
    assert result.exit_code == 2 and "not a plan" in result.output
