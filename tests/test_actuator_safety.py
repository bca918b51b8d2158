"""The actuator's safety findings, each reproduced against the fake Kubernetes API: the clock,
make-before-break on slow resizes, a fallback sized by what new pods get, corrupt records, HPAs
that scale something else, concurrent runs, the kill switch, hostile names and generated RBAC.
"""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from kubeapi.cluster import Node
from kubeapi.harness import FakeHarness

from actuator.apply import RunOptions, actuate
from actuator.errors import ActuatorInputError
from actuator.guards import Bounds
from actuator.kube import RetryPolicy
from actuator.lease import Lease, lease_name
from actuator.rbac import rbac_manifests
from actuator.records import read_records, record_path
from actuator.spec import ServiceSpec, WorkloadSpec, parse
from actuator.target import Floor
from planner.dp import StageConfig
from planner.plan import Plan, PlanStep

DEP = "resnet18"
NS = "inference"


@pytest.fixture
def fake():
    h = FakeHarness(nodes=[Node("node-1", 64_000)], request_timeout_s=0.3)
    yield h
    h.close()


def service(name=DEP, deployment=DEP, **kw) -> ServiceSpec:
    bounds = kw.pop("bounds", Bounds(1, 40, 1, 16, 16))
    wl = WorkloadSpec(deployment=deployment, bounds=bounds, hpa=kw.pop("hpa", None))
    defaults = dict(
        mode="active", run_interval_s=60.0, resize_timeout_s=30.0, stabilisation_s=300.0
    )
    return ServiceSpec(name=name, namespace=NS, workloads=(wl,), **{**defaults, **kw})


def plan_for(now, replicas, cores, *, kind="scale-out", lead_s=0.0, service_name=DEP) -> Plan:
    step = PlanStep(
        now + pd.Timedelta(seconds=lead_s),
        now,
        (replicas,),
        (cores,),
        (4,),
        "test step",
        90.0,
        300.0,
        kind,
    )
    return Plan(service_name, now, (step,), 0.95, 750.0, (DEP,))


def options(h, **kw) -> RunOptions:
    base = dict(
        retry=RetryPolicy(attempts=3, backoff_s=0.5, request_timeout_s=0.3),
        poll_s=1.0,
        sleep=h.sleep,
        wall_clock=lambda: h.now().timestamp(),
    )
    return RunOptions(**{**base, **kw})


def run(h, plan, cfg, tmp_path, *, services=None, floors=None, now=None, **kw):
    return actuate(
        plan,
        services or [cfg],
        h.api,
        now=h.now() if now is None else now,
        artifacts=tmp_path,
        floors=floors,
        options=options(h, **kw),
    )


def quiet_floor(peak_rps: float = 1.0) -> dict[int, Floor]:
    """Observed load that confirms any scale-in (capacity: 10 rps per core)."""
    return {
        0: Floor(peak_rps, lambda c: c.replicas * c.cores * 10.0, StageConfig(1, 1, 4), peak_rps)
    }


def ready_cores(h) -> float:
    return sum(h.state(DEP)["ready_millicores"]) / 1000


# --------------------------------------------------------------------------------------------
# the clock


def test_an_old_run_only_records_in_active_mode(fake, tmp_path):
    """`run --once --now <3 days ago>` (or a cleared Airflow run) must not act."""
    fake.add_deployment(DEP, replicas=2, cores=2)
    three_days_ago = fake.now() - pd.Timedelta(days=3)
    record = run(fake, plan_for(three_days_ago, 6, 4), service(), tmp_path, now=three_days_ago)
    assert record.held and record.held.startswith("replay")
    assert all(c.outcome in ("dry-run", "unchanged", "skipped") for c in record.changes)
    assert [w for w in fake.server.writes() if "dryRun" not in w[1]] == []
    assert fake.state(DEP)["replicas"] == 2
    assert read_records(tmp_path, DEP)[-1]["held"] == record.held
    # The same run at the present acts.
    now = run(fake, plan_for(fake.now(), 6, 4), service(), tmp_path)
    assert now.held is None and fake.state(DEP)["replicas"] == 6


def test_plan_expiry_is_checked_against_the_wall_clock_too(fake, tmp_path):
    fake.add_deployment(DEP, replicas=2, cores=2)
    wall = fake.now()
    now = wall - pd.Timedelta(seconds=100)  # within the skew
    plan = plan_for(now - pd.Timedelta(seconds=550), 6, 4)  # 550 s old by now, 650 s by the wall
    record = run(fake, plan, service(plan_expiry_s=600.0), tmp_path, now=now)
    assert record.refused and "wall clock" in record.refused
    assert fake.state(DEP)["replicas"] == 2


# --------------------------------------------------------------------------------------------
# make before break, fallback


def test_replicas_go_only_once_the_bigger_pods_are_confirmed(tmp_path):
    """8 x 1 core -> 2 x 4 cores with resizes slower than the resize timeout: ready cores never
    drop below 8 (they dropped to 2 for two minutes when in-progress resizes counted as done)."""
    h = FakeHarness(nodes=[Node("node-1", 64_000)], resize_delay_s=120.0, request_timeout_s=0.3)
    try:
        h.add_deployment(DEP, replicas=8, cores=1)
        cfg = service(resize_timeout_s=30.0)
        low = []
        record = run(
            h,
            plan_for(h.now(), 2, 4, kind="scale-in"),
            cfg,
            tmp_path,
            floors=quiet_floor(),
            sleep=lambda s: (h.sleep(s), low.append(ready_cores(h))),
        )
        assert [c.resize for c in record.changes if c.what == "cpu"] == ["in progress"] * 8
        assert h.state(DEP)["replicas"] == 8
        assert any("make before break" in n for n in record.workloads[0].bound_by)
        for _ in range(100):
            h.advance(1.0)
            low.append(ready_cores(h))
        assert min(low) >= 8.0
        # The kubelet has finished: once the stabilisation after the growth has passed, the next
        # run confirms the resizes and removes 6 replicas.
        h.advance(300)
        again = run(
            h, plan_for(h.now(), 2, 4, kind="scale-in"), cfg, tmp_path, floors=quiet_floor()
        )
        assert ("replicas", "applied") in [(c.what, c.outcome) for c in again.changes]
        h.advance(40)
        state = h.state(DEP)
        assert state["replicas"] == 2 and state["ready_millicores"] == [4000, 4000]
    finally:
        h.close()


def test_fallback_is_sized_by_the_template_and_held_to_the_step_limit(fake, tmp_path):
    """Deferred resizes 4 x 2 -> 4 x 4 cores: 8 cores missing, and new pods start at the
    template's 2 cores, so 4 more pods (not 2 of 4 cores); the next run reads allocated cores."""
    fake.add_deployment(DEP, replicas=4, cores=2)
    fake.cluster.deferred.update(p["metadata"]["name"] for p in fake.cluster.pods_of(NS, DEP))
    cfg = service(max_replica_step=4, max_step_ratio=0.0)
    record = run(fake, plan_for(fake.now(), 4, 4, lead_s=2.0), cfg, tmp_path)
    fallback = [c for c in record.changes if c.what == "fallback replicas"]
    assert len(fallback) == 1 and fallback[0].after == 8
    fake.advance(31)
    assert ready_cores(fake) == 16.0  # 4 x 2 running + 4 new x 2 = the 16 cores planned
    again = run(fake, plan_for(fake.now(), 4, 4, lead_s=2.0), cfg, tmp_path)
    assert again.workloads[0].current["cores"] == 2  # allocated, not the requested 4


def test_fallback_replicas_pass_the_step_limit(fake, tmp_path):
    fake.add_deployment(DEP, replicas=2, cores=2)
    fake.cluster.deferred.update(p["metadata"]["name"] for p in fake.cluster.pods_of(NS, DEP))
    cfg = service(max_replica_step=2, max_core_step=4, max_step_ratio=0.0)
    record = run(fake, plan_for(fake.now(), 2, 10, lead_s=2.0), cfg, tmp_path)
    assert record.workloads[0].target["cores"] == 6  # the core step limit: 2 -> 6
    # 2 pods short of 4 cores each = 8 cores = 4 new pods of 2 cores; the step allows 2.
    (fallback,) = [c for c in record.changes if c.what == "fallback replicas"]
    assert fallback.after == 4 and fake.state(DEP)["replicas"] == 4
    assert any("step limit" in n for n in record.workloads[0].bound_by)


# --------------------------------------------------------------------------------------------
# records


def test_a_truncated_record_line_is_skipped_and_reported(fake, tmp_path):
    fake.add_deployment(DEP, replicas=2, cores=2)
    path = record_path(tmp_path, DEP, fake.now())
    path.parent.mkdir(parents=True)
    path.write_text('{"service": "resnet18", "mode": "active", "scaled_up": tr')  # cut off
    record = run(fake, plan_for(fake.now(), 3, 2), service(), tmp_path)
    assert fake.state(DEP)["replicas"] == 3
    assert any("corrupt" in e for e in record.errors)
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and lines[0].endswith("tr")  # the fragment kept on its own line
    problems: list[str] = []
    assert [r["run_at"] for r in read_records(tmp_path, DEP, problems=problems)] == [record.run_at]
    assert len(problems) == 1


def test_a_truncated_counters_file_never_loses_the_record(fake, tmp_path):
    fake.add_deployment(DEP, replicas=2, cores=2)
    counters = record_path(tmp_path, DEP, fake.now()).parent / "counters.json"
    counters.parent.mkdir(parents=True)
    counters.write_text('{"decisions": 4')
    record = run(fake, plan_for(fake.now(), 3, 2), service(), tmp_path)
    assert fake.state(DEP)["replicas"] == 3
    assert read_records(tmp_path, DEP)[-1]["run_at"] == record.run_at
    assert any("counters.json corrupt" in e for e in record.errors)
    assert yaml.safe_load(counters.read_text())["decisions"] == 1
    # The stabilisation of the next run sees this run's scale-up.
    later = fake.now() + pd.Timedelta(seconds=60)
    fake.advance(60)
    down = run(
        fake, plan_for(later, 1, 2, kind="scale-in"), service(), tmp_path, floors=quiet_floor()
    )
    assert any(n.startswith("stabilisation") for n in down.workloads[0].bound_by)


# --------------------------------------------------------------------------------------------
# HPAs


def test_a_configured_hpa_that_scales_another_deployment_is_not_touched(fake, tmp_path):
    fake.add_deployment(DEP, replicas=2, cores=2)
    fake.add_deployment("payments", replicas=3, cores=1)
    fake.cluster.add_hpa(NS, "resnet18-hpa", "payments", min_replicas=3, max_replicas=30)
    record = run(fake, plan_for(fake.now(), 20, 2), service(hpa="resnet18-hpa"), tmp_path)
    assert any("scales Deployment/payments" in e for e in record.errors)
    assert [w for w in fake.server.writes() if "horizontalpodautoscalers" in w[1]] == []
    assert fake.state("payments")["replicas"] == 3 and fake.state(DEP)["replicas"] == 2


def test_hpa_min_replicas_capped_by_its_max_is_recorded_as_capped(fake, tmp_path):
    fake.add_deployment(DEP, replicas=2, cores=2)
    fake.cluster.add_hpa(NS, "resnet18-hpa", DEP, min_replicas=2, max_replicas=4)
    cfg = service(hpa="resnet18-hpa", max_step_ratio=4.0)
    record = run(fake, plan_for(fake.now(), 10, 2), cfg, tmp_path)
    (change,) = [c for c in record.changes if c.what == "hpa minReplicas"]
    assert change.after == 4 and "maxReplicas 4" in change.reason
    assert any("capped at its maxReplicas 4" in n for n in record.workloads[0].bound_by)


# --------------------------------------------------------------------------------------------
# concurrent runs, kill switch, ownership


def test_two_concurrent_active_runs_never_both_act(fake, tmp_path):
    fake.add_deployment(DEP, replicas=2, cores=2)
    other = Lease(fake.api, NS, lease_name(DEP), "other-run", duration_s=180)
    assert other.acquire(now_s=fake.now().timestamp()) is None
    record = run(fake, plan_for(fake.now(), 6, 2), service(), tmp_path)
    assert record.held and "held by other-run" in record.held
    assert fake.state(DEP)["replicas"] == 2
    # The other run releases the Lease: this one may act, and releases it in turn.
    assert other.release(now_s=fake.now().timestamp()) is None
    fake.advance(2)
    acted = run(fake, plan_for(fake.now(), 6, 2), service(), tmp_path)
    assert acted.held is None and fake.state(DEP)["replicas"] == 6
    lease = fake.api.lease(NS, lease_name(DEP))
    assert lease["spec"]["leaseDurationSeconds"] == 1 and lease["spec"]["leaseTransitions"] == 1
    # A holder that died without releasing blocks only until its Lease expires.
    dead = Lease(fake.api, NS, lease_name(DEP), "dead-run", duration_s=120)
    fake.advance(2)
    assert dead.acquire(now_s=fake.now().timestamp()) is None
    fake.advance(121)
    late = run(fake, plan_for(fake.now(), 8, 2), service(), tmp_path)
    assert late.held is None and fake.state(DEP)["replicas"] == 8


def test_kill_switch_pauses_every_active_run_without_a_redeploy(fake, tmp_path):
    fake.add_deployment(DEP, replicas=2, cores=2)
    fake.cluster.put(
        "configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "surgecast-control", "namespace": NS},
            "data": {"paused": "true"},
        },
    )
    record = run(fake, plan_for(fake.now(), 6, 2), service(), tmp_path)
    assert record.held and "kill switch" in record.held
    assert fake.state(DEP)["replicas"] == 2
    fake.faults.fail(r"/configmaps/surgecast-control$", 503, times=10)
    unreadable = run(fake, plan_for(fake.now(), 6, 2), service(), tmp_path)
    assert unreadable.held and "unreadable" in unreadable.held
    fake.faults.rules.clear()
    cm = fake.cluster.get("configmaps", NS, "surgecast-control")
    fake.cluster.put("configmaps", {**cm, "data": {"paused": "false"}})
    resumed = run(fake, plan_for(fake.now(), 6, 2), service(), tmp_path)
    assert resumed.held is None and fake.state(DEP)["replicas"] == 6


def test_two_services_owning_one_deployment_are_refused(fake, tmp_path):
    fake.add_deployment(DEP, replicas=2, cores=2)
    mine, theirs = service(), service(name="resnet18-copy")
    record = run(fake, plan_for(fake.now(), 6, 2), mine, tmp_path, services=[mine, theirs])
    assert record.refused and "one Deployment, one owner" in record.refused
    assert fake.state(DEP)["replicas"] == 2


# --------------------------------------------------------------------------------------------
# names


@pytest.mark.parametrize("name", ["../../..", "a/b", "Resnet", "", "x" * 64, "a..b"])
def test_hostile_service_names_are_refused_at_every_entry(name, fake, tmp_path):
    with pytest.raises(ValueError, match="name"):  # built in code: pydantic's error
        service(name=name)
    table = service().model_dump()
    with pytest.raises(ActuatorInputError, match=r"^name: .* is not a valid Kubernetes name"):
        parse(ServiceSpec, {**table, "name": name})  # read from a file: the one-line error
    fake.add_deployment(DEP, replicas=2, cores=2)
    record = run(fake, plan_for(fake.now(), 6, 2, service_name=name), service(), tmp_path)
    assert record.refused
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and all(p.resolve().is_relative_to(tmp_path.resolve()) for p in written)
    assert all(p.parent.name == "_invalid-service-name" for p in written if p.suffix == ".jsonl")


# --------------------------------------------------------------------------------------------
# RBAC generated from the config


def test_generated_rbac_grants_only_the_allow_listed_workloads(tmp_path):
    cfg = service(hpa="resnet18-hpa")
    rbac = tmp_path / "rbac.yaml"
    rbac.write_text(yaml.safe_dump_all(rbac_manifests([cfg])))
    h = FakeHarness(nodes=[Node("node-1", 64_000)], rbac_files=[rbac], request_timeout_s=0.3)
    try:
        h.add_deployment(DEP, replicas=2, cores=2)
        h.add_deployment("payments", replicas=6, cores=2)
        h.cluster.add_hpa(NS, "resnet18-hpa", DEP, min_replicas=2, max_replicas=20)
        h.cluster.add_hpa(NS, "payments-hpa", "payments", min_replicas=6, max_replicas=20)
        record = run(h, plan_for(h.now(), 4, 3), cfg, tmp_path)
        assert not record.errors and record.held is None
        h.advance(20)
        assert h.state(DEP)["hpa_min"] == 4
        # Everything the config does not name is out of reach, whatever a plan says.
        from kubernetes.client.exceptions import ApiException

        body = {"spec": {"replicas": 1}}
        with pytest.raises(ApiException) as denied:
            h.api.patch_scale(NS, "payments", body, dry_run=False)
        assert denied.value.status == 403
        with pytest.raises(ApiException) as denied:
            h.api.patch_hpa(NS, "payments-hpa", {"spec": {"maxReplicas": 100}}, dry_run=False)
        assert denied.value.status == 403
        assert h.state("payments")["replicas"] == 6
    finally:
        h.close()


def test_rbac_command_writes_the_scoped_role_for_the_config(tmp_path):
    from typer.testing import CliRunner

    from surgecast.cli import app

    config = tmp_path / "services.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "prometheus": {"url": "http://127.0.0.1:9090"},
                "artifacts": {"root": str(tmp_path / "artifacts")},
                "defaults": {
                    "bounds": {
                        "min_replicas": 1,
                        "max_replicas": 20,
                        "min_cores": 1,
                        "max_cores": 8,
                    },
                },
                "services": [
                    {
                        "name": "resnet",
                        "query": "sum(rate(x[1m]))",
                        "namespace": NS,
                        "deployment": DEP,
                        "hpa": "resnet18-hpa",
                        "profile": "resnet18",
                        "slo_ms": 750,
                    },
                    {
                        "name": "yolo",
                        "query": "sum(rate(y[1m]))",
                        "namespace": "vision",
                        "deployment": "yolo",
                        "profile": "yolov5n",
                        "slo_ms": 500,
                    },
                ],
            }
        )
    )
    out = tmp_path / "rbac.yaml"
    result = CliRunner().invoke(app, ["rbac", "--config", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(out.read_text()))
    assert [d["kind"] for d in docs] == [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Role",
        "RoleBinding",
    ] * 2  # the actuator's, then the bridge controller's
    (inference,) = [
        d
        for d in docs
        if d["kind"] == "Role"
        and d["metadata"]["namespace"] == NS
        and d["metadata"]["name"] == "surgecast-actuator"
    ]
    scoped = {(r["resources"][0], tuple(r.get("resourceNames", ()))) for r in inference["rules"]}
    assert ("deployments/scale", (DEP,)) in scoped
    assert ("horizontalpodautoscalers", ("resnet18-hpa",)) in scoped
    assert ("leases", ("surgecast-resnet",)) in scoped
    assert ("configmaps", ("surgecast-control",)) in scoped
    # No rule may patch a Deployment, delete anything, or reach another namespace's workloads.
    verbs = {v for d in docs if d["kind"] == "Role" for r in d["rules"] for v in r["verbs"]}
    assert verbs <= {"get", "list", "patch", "create"}
    bad = CliRunner().invoke(app, ["rbac", "--config", str(tmp_path / "missing.yaml")])
    assert bad.exit_code == 2 and "Traceback" not in bad.output


def test_one_kill_switch_can_pause_a_fleet_across_namespaces(tmp_path):
    cfg = service(kill_switch="ops/surgecast-control")
    rbac = tmp_path / "rbac.yaml"
    docs = rbac_manifests([cfg])
    (ops,) = [d for d in docs if d["kind"] == "Role" and d["metadata"]["namespace"] == "ops"]
    assert ops["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "verbs": ["get"],
            "resourceNames": ["surgecast-control"],
        }
    ]
    rbac.write_text(yaml.safe_dump_all(docs))
    h = FakeHarness(nodes=[Node("node-1", 64_000)], rbac_files=[rbac], request_timeout_s=0.3)
    try:
        h.add_deployment(DEP, replicas=2, cores=2)
        assert run(h, plan_for(h.now(), 3, 2), cfg, tmp_path).held is None
        assert h.state(DEP)["replicas"] == 3
        h.cluster.put(
            "configmaps",
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "surgecast-control", "namespace": "ops"},
                "data": {"paused": "true"},
            },
        )
        paused = run(h, plan_for(h.now(), 6, 2), cfg, tmp_path)
        assert paused.held and "ops" not in (paused.refused or "")
        assert "kill switch" in paused.held and h.state(DEP)["replicas"] == 3
    finally:
        h.close()


def test_a_reshape_short_of_node_room_makes_progress_and_never_breaks(tmp_path):
    """8 x 1 core -> 2 x 4 cores on a 16-core node: only 2 pods can grow while all 8 run, so
    the rest stay Deferred. Replicas go only as far as the confirmed CPU allows (counting the
    smallest pods as the ones that stay), which frees room run by run until the shape is
    reached; ready capacity never drops below the 8 cores planned."""
    h = FakeHarness(nodes=[Node("node-1", 16_000)], request_timeout_s=0.3)
    try:
        h.add_deployment(DEP, replicas=8, cores=1)
        low = []
        for _ in range(8):
            run(
                h,
                plan_for(h.now(), 2, 4, kind="scale-in"),
                service(resize_timeout_s=10.0),
                tmp_path,
                floors=quiet_floor(),
                sleep=lambda s: (h.sleep(s), low.append(ready_cores(h))),
            )
            for _ in range(31):
                h.advance(10.0)
                low.append(ready_cores(h))
            if h.state(DEP)["replicas"] == 2:
                break
        state = h.state(DEP)
        assert state["replicas"] == 2 and state["ready_millicores"] == [4000, 4000]
        assert min(low) >= 8.0
    finally:
        h.close()
