"""The backtest's cluster port (:class:`SimPort`) answers as the Kubernetes API does: the same
actuator scenario run over HTTP against the fake API server and in process against the model
leaves the same objects, records and events."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from kubeapi.cluster import Node
from kubeapi.harness import NAMESPACE, FakeHarness
from kubernetes.client.exceptions import ApiException

from actuator.apply import RunOptions, actuate
from actuator.guards import Bounds
from actuator.kube import KubeApi, RetryPolicy, describe_error, is_conflict, is_retriable
from actuator.port import ClusterPort, PortError
from actuator.records import read_records
from actuator.spec import ServiceSpec, WorkloadSpec
from planner.plan import Plan, PlanStep
from surgecast.offline.cluster import Clock, ClusterModel
from surgecast.offline.port import SimPort

DEP = "resnet18"
HPA = "resnet18-hpa"
NODES = [("node-1", 16_000), ("node-2", 16_000)]


class InProcess:
    """The same set-up as :class:`FakeHarness`, with :class:`SimPort` for the actuator."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.cluster = ClusterModel(
            self.clock,
            start_delay_s=30.0,
            resize_delay_s=2.0,
            nodes=[Node(n, m) for n, m in NODES],
        )
        self.api = SimPort(self.cluster)

    def now(self) -> pd.Timestamp:
        return self.clock.timestamp()

    def sleep(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def close(self) -> None:
        pass


def service(hpa: str | None = None, **kw) -> ServiceSpec:
    wl = WorkloadSpec(deployment=DEP, container="server", bounds=Bounds(1, 8, 1, 32, 16), hpa=hpa)
    defaults = dict(
        mode="active",
        run_interval_s=60.0,
        resize_timeout_s=10.0,
        stabilisation_s=300.0,
        plan_expiry_s=600.0,
    )
    return ServiceSpec(name=DEP, namespace=NAMESPACE, workloads=(wl,), **{**defaults, **kw})


def plan_at(now: pd.Timestamp, replicas: int, cores: int, kind: str = "scale-out") -> Plan:
    step = PlanStep(now + pd.Timedelta(seconds=30), now, (replicas,), (cores,), (4,), "T", 90.0,
                    300.0, kind)
    return Plan(DEP, now, (step,), 0.95, 750.0, (DEP,))


def scenario(h, tmp_path) -> dict:
    """Scale out and resize, resize the new pods, an infeasible resize that falls back to
    replicas, then the HPA named: every write path of ``actuate`` and the Lease and events."""
    h.cluster.add_deployment(NAMESPACE, DEP, replicas=2, cores=2)
    options = RunOptions(
        retry=RetryPolicy(attempts=4, backoff_s=0.5, request_timeout_s=0.3),
        poll_s=1.0,
        sleep=h.sleep,
        wall_clock=lambda: h.now().timestamp(),
        identity="replay-test",
    )
    records = []
    steps = [
        (plan_at(h.now(), 5, 3), service(max_replica_step=8), 0),
        (None, service(max_replica_step=8), 31),
        (None, service(max_core_step=32), 5),  # 17 cores fit no node: Infeasible, fallback
        (None, service(hpa=HPA), 60),
    ]
    for plan, cfg, wait in steps:
        h.sleep(wait)
        if cfg.workloads[0].hpa is not None:
            h.cluster.add_hpa(NAMESPACE, HPA, DEP, min_replicas=2, max_replicas=10)
            h.cluster.set_hpa_utilisation(HPA, 70)
        if plan is None:
            cores = 17 if cfg.max_core_step == 32 else 3
            plan = plan_at(h.now(), 5, cores)
        record = actuate(plan, [cfg], h.api, now=h.now(), artifacts=tmp_path, options=options)
        records.append(record)
    h.sleep(60)
    cl = h.cluster
    with cl.lock:
        cl.reconcile()
        objects = {
            key: _strip(obj)
            for key, obj in cl.objects.items()
            if key[0] in ("deployments", "pods", "horizontalpodautoscalers", "leases")
        }
    events = [(e["reason"], e["message"]) for e in cl.list("events", NAMESPACE)]
    return {
        "state": cl.state(NAMESPACE, DEP),
        "objects": objects,
        "events": events,
        "records": [json.loads(json.dumps(r.to_dict())) for r in records],
        "stored": len(read_records(tmp_path, DEP)),
    }


def _strip(obj: dict) -> dict:
    """Identities the two runs draw differently are not compared (none are, with one seed)."""
    return json.loads(json.dumps(obj))


@pytest.fixture
def both(tmp_path):
    http = FakeHarness(nodes=[Node(n, m) for n, m in NODES], request_timeout_s=0.3)
    sim = InProcess()
    try:
        yield http, sim
    finally:
        http.close()


def test_the_same_run_over_http_and_in_process_leaves_the_same_cluster(both, tmp_path):
    http, sim = both
    over_http = scenario(http, tmp_path / "http")
    in_process = scenario(sim, tmp_path / "sim")
    assert over_http["records"] == in_process["records"]
    assert over_http["objects"] == in_process["objects"]
    assert over_http["events"] == in_process["events"]
    assert over_http["state"] == in_process["state"]
    # The scenario did reach every path: scale-out, resizes, the fallback, the HPA's minimum.
    outcomes = [(c["what"], c["outcome"]) for r in in_process["records"] for c in r["changes"]]
    assert ("replicas", "applied") in outcomes
    assert ("fallback replicas", "applied") in outcomes
    assert ("hpa minReplicas", "applied") in outcomes
    assert in_process["stored"] == 4
    assert in_process["state"]["hpa_min"] is not None
    assert any(p.endswith("/resize") for _, p, _ in sim.api.writes)


def test_both_ports_implement_the_protocol(both):
    http, sim = both
    assert isinstance(http.api, KubeApi) and isinstance(http.api, ClusterPort)
    assert isinstance(sim.api, ClusterPort)


def test_port_errors_are_classified_as_the_api_errors_they_stand_for(both):
    http, sim = both
    for h in (http, sim):
        h.cluster.add_deployment(NAMESPACE, DEP, replicas=1, cores=1)
    answers = []
    for h in (http, sim):
        with pytest.raises(ApiException) as missing:
            h.api.configmap(NAMESPACE, "surgecast-control")
        dep = h.api.deployment(NAMESPACE, DEP)
        stale = {"metadata": {"resourceVersion": str(int(dep["metadata"]["resourceVersion"]) - 1)},
                 "spec": {"replicas": 3}}
        with pytest.raises(ApiException) as conflict:
            h.api.patch_scale(NAMESPACE, DEP, stale, dry_run=False)
        answers.append((missing.value, conflict.value))
    (http_404, http_409), (sim_404, sim_409) = answers
    assert isinstance(sim_404, PortError) and isinstance(sim_409, PortError)
    assert (sim_404.status, sim_409.status) == (404, 409)
    assert describe_error(sim_404) == describe_error(http_404)
    assert describe_error(sim_409) == describe_error(http_409)
    assert is_conflict(sim_409) and not is_conflict(sim_404)
    assert not is_retriable(sim_404) and is_retriable(PortError(503, "ServiceUnavailable", "x"))


def test_both_ports_have_exactly_the_protocols_signatures():
    import inspect

    methods = [n for n, v in vars(ClusterPort).items() if callable(v) and not n.startswith("_")]
    assert len(methods) == 15
    for name in methods:
        want = inspect.signature(getattr(ClusterPort, name))
        for impl in (KubeApi, SimPort):
            got = inspect.signature(getattr(impl, name))
            assert list(got.parameters) == list(want.parameters), (impl.__name__, name)
            kinds = [p.kind for p in got.parameters.values()]
            assert kinds == [p.kind for p in want.parameters.values()], (impl.__name__, name)
