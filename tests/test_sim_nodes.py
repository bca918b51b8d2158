"""Nodes that bind: in-place resizes Infeasible beyond the node and Deferred without room, a
node pool the cluster autoscaler grows and shrinks, resize delays from a seeded distribution,
and the node core-hours a run holds."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pytest
from simtoy import DEP, NS, START, TOY

from actuator.apply import RunOptions, actuate
from actuator.guards import Bounds
from actuator.spec import ServiceSpec, WorkloadSpec
from forecasting.errors import BadInputError
from planner.plan import Plan, PlanStep
from planner.profiles import bundled_profile, load_pipeline
from surgecast.offline.backtest import BacktestSettings, nodes_for, run_backtest
from surgecast.offline.cluster import Clock, ClusterModel, Node, NodePool, iso_s
from surgecast.offline.engine import Engine, StageBinding
from surgecast.offline.port import SimPort

RESNET18 = load_pipeline(bundled_profile("resnet18"))


def cluster(nodes, *, pool=None, resize_s=2.0, spread=0.0, seed=0, follow=True) -> ClusterModel:
    return ClusterModel(Clock(START.timestamp()), start_delay_s=30.0, resize_delay_s=resize_s,
                        resize_spread=spread, nodes=nodes, node_pool=pool, seed=seed,
                        follow_clock=follow)


def resize_body(cores: int) -> dict:
    cpu = f"{cores * 1000}m"
    return {"spec": {"containers": [{"name": "server", "resources": {
        "requests": {"cpu": cpu}, "limits": {"cpu": cpu}}}]}}


def pending_reason(pod: dict) -> tuple[str | None, str]:
    for cond in pod["status"].get("conditions") or []:
        if cond["type"] == "PodResizePending" and cond["status"] == "True":
            return cond.get("reason"), cond.get("message", "")
    return None, ""


def pod_names(model: ClusterModel) -> list[str]:
    return [p["metadata"]["name"] for p in model.live_pods_of(NS, DEP)]


def condition(pod: dict, kind: str) -> dict | None:
    return next((c for c in pod["status"].get("conditions") or [] if c["type"] == kind), None)


# -- in-place resizes against the node ---------------------------------------------------------


def test_a_resize_beyond_the_node_is_infeasible_as_the_kubelet_reports_it():
    model = cluster([Node("node-1", 8000)])
    model.add_deployment(NS, DEP, replicas=1, cores=2)
    port = SimPort(model)
    (name,) = pod_names(model)
    port.patch_resize(NS, name, resize_body(12), dry_run=False)
    model.clock.advance(60)
    pod = port.pod(NS, name)
    reason, message = pending_reason(pod)
    assert reason == "Infeasible"
    assert "Node didn't have enough capacity: cpu, requested: 12000, capacity: 8000" in message
    assert condition(pod, "PodResizeInProgress") is None
    # never retried: the containers keep what they had
    assert pod["status"]["containerStatuses"][0]["resources"]["requests"]["cpu"] == "2"


def test_a_resize_without_room_is_deferred_and_completes_when_room_frees():
    model = cluster([Node("node-1", 8000)], resize_s=5.0)
    model.add_deployment(NS, DEP, replicas=3, cores=2)  # 6 of 8 cores taken
    port = SimPort(model)
    *_, first = pod_names(model)  # the ReplicaSet deletes the lowest-named of equals
    port.patch_resize(NS, first, resize_body(5), dry_run=False)  # 4 others + 5 > 8
    model.clock.advance(1)
    reason, message = pending_reason(port.pod(NS, first))
    assert reason == "Deferred"
    assert "requested: 5000, used: 4000, capacity: 8000" in message
    # one pod goes: its 2 cores are held for its 30 s grace period, then freed
    port.patch_scale(NS, DEP, {"spec": {"replicas": 2}}, dry_run=False)
    model.clock.advance(29)
    assert pending_reason(port.pod(NS, first))[0] == "Deferred"
    freed_at = model.now + 1
    model.clock.advance(1)
    pod = port.pod(NS, first)
    assert pending_reason(pod)[0] is None
    assert condition(pod, "PodResizeInProgress")["status"] == "True"
    assert pod["status"]["containerStatuses"][0]["allocatedResources"]["cpu"] == "5000m"
    model.clock.advance(4)
    assert model.state(NS, DEP)["ready_millicores"] == [2000, 2000]  # not yet: 5 s from room
    model.clock.advance(1)
    assert model.now == freed_at + 5
    assert sorted(model.state(NS, DEP)["ready_millicores"]) == [2000, 5000]
    assert condition(port.pod(NS, first), "PodResizeInProgress") is None


def test_the_actuator_falls_back_to_replicas_when_the_resize_exceeds_the_node(tmp_path):
    model = cluster([Node("node-1", 8000), Node("node-2", 8000)])
    model.add_deployment(NS, DEP, replicas=2, cores=2)
    port = SimPort(model)
    spec = ServiceSpec(
        name=DEP, namespace=NS, mode="active", run_interval_s=60.0, resize_timeout_s=10.0,
        stabilisation_s=300.0, plan_expiry_s=600.0, max_core_step=16,
        workloads=(WorkloadSpec(deployment=DEP, bounds=Bounds(1, 8, 1, 16, 16)),),
    )
    now = model.clock.timestamp()
    step = PlanStep(now + pd.Timedelta(seconds=30), now, (2,), (12,), (4,), "surge", 90.0, 300.0,
                    "scale-out")
    plan = Plan(DEP, now, (step,), 0.95, 750.0, (DEP,))
    clock = model.clock
    record = actuate(plan, [spec], port, now=now, artifacts=tmp_path, options=RunOptions(
        poll_s=1.0, sleep=clock.advance, wall_clock=lambda: clock.now))
    assert [c.resize for c in record.changes[:2]] == ["Infeasible", "Infeasible"]
    (fallback,) = [c for c in record.changes if c.what == "fallback replicas"]
    assert fallback.after > 2
    state = model.state(NS, DEP)
    assert state["replicas"] == fallback.after
    # the refused resizes were reverted: no pod reserves CPU the node cannot give
    assert state["desired_millicores"] == [2000] * fallback.after


# -- the node pool -------------------------------------------------------------------------------


def test_pending_pods_order_a_node_that_joins_after_provisioning_and_then_start():
    pool = NodePool(max_nodes=3, provision_s=120.0, scale_down_unneeded_s=600.0)
    model = cluster([Node("node-1", 4000)], pool=pool)
    model.add_deployment(NS, DEP, replicas=2, cores=2)
    port = SimPort(model)
    t0 = model.now
    port.patch_scale(NS, DEP, {"spec": {"replicas": 4}}, dry_run=False)
    model.clock.advance(1)
    assert [n.name for n in model.nodes] == ["node-1", "node-1-scaled-1"]  # one node: 4 cores
    assert model.nodes[1].joins_s == t0 + 120.0
    waiting = [p for p in model.live_pods_of(NS, DEP) if not p["spec"].get("nodeName")]
    assert len(waiting) == 2
    assert condition(waiting[0], "PodScheduled")["message"] == (
        "0/1 nodes are available: 1 Insufficient cpu.")
    model.clock.advance(118)  # t0 + 119: still provisioning
    assert model.state(NS, DEP)["ready"] == 2
    assert all(not p["spec"].get("nodeName") for p in
               (port.pod(NS, p["metadata"]["name"]) for p in waiting))
    model.clock.advance(1)  # t0 + 120: joined, the pods are bound
    for p in waiting:
        pod = port.pod(NS, p["metadata"]["name"])
        assert pod["spec"]["nodeName"] == "node-1-scaled-1"
        assert condition(pod, "PodScheduled")["lastTransitionTime"] == iso_s(t0 + 120)
    model.clock.advance(29)  # the cold start counts from scheduling, not from creation
    assert model.state(NS, DEP)["ready"] == 2
    model.clock.advance(1)
    assert model.state(NS, DEP)["ready"] == 4
    assert len(model.nodes) == 2, "no second order for pods a provisioning node covers"


def test_the_pool_stops_at_max_nodes_and_orders_nothing_for_a_pod_no_node_can_hold():
    model = cluster([Node("node-1", 4000)], pool=NodePool(max_nodes=2, provision_s=60.0))
    model.add_deployment(NS, DEP, replicas=2, cores=2)
    port = SimPort(model)
    port.patch_scale(NS, DEP, {"spec": {"replicas": 8}}, dry_run=False)
    model.clock.advance(200)
    assert len(model.nodes) == 2
    assert model.state(NS, DEP)["ready"] == 4  # 2 nodes of 4 cores; 4 pods still Pending
    big = cluster([Node("node-1", 4000)], pool=NodePool(max_nodes=5, provision_s=60.0))
    big.add_deployment(NS, "big", replicas=0, cores=6)
    SimPort(big).patch_scale(NS, "big", {"spec": {"replicas": 1}}, dry_run=False)
    big.clock.advance(200)
    assert len(big.nodes) == 1


def test_an_empty_node_is_removed_after_the_unneeded_time_and_a_fixed_pool_never_changes():
    pool = NodePool(max_nodes=3, provision_s=120.0, scale_down_unneeded_s=600.0)
    model = cluster([Node("node-1", 4000)], pool=pool)
    model.add_deployment(NS, DEP, replicas=2, cores=2)
    port = SimPort(model)
    port.patch_scale(NS, DEP, {"spec": {"replicas": 4}}, dry_run=False)
    model.clock.advance(300)
    assert len(model.nodes) == 2
    # back to 2 pods: the newest, on the new node, go; it is empty from now on
    port.patch_scale(NS, DEP, {"spec": {"replicas": 2}}, dry_run=False)
    emptied = model.now
    model.clock.advance(599)
    assert len(model.nodes) == 2
    assert model.next_due_s() <= emptied + 600.0  # the engine steps to the removal
    model.clock.advance(1)
    assert [n.name for n in model.nodes] == ["node-1"]  # never below min_nodes
    model.clock.advance(3600)
    assert [n.name for n in model.nodes] == ["node-1"]
    fixed = cluster([Node("node-1", 4000)])
    fixed.add_deployment(NS, DEP, replicas=2, cores=2)
    SimPort(fixed).patch_scale(NS, DEP, {"spec": {"replicas": 4}}, dry_run=False)
    fixed.clock.advance(900)
    assert [n.name for n in fixed.nodes] == ["node-1"]
    assert fixed.state(NS, DEP)["ready"] == 2


class Script:
    """A controller that sets the Deployment's replicas at given seconds of the run."""

    name, period_s, offset_s = "script", 1.0, 0.0

    def __init__(self, port: SimPort, at: dict[int, int]) -> None:
        self.port, self.at, self.start = port, at, None

    def tick(self, now: pd.Timestamp) -> None:
        self.start = self.start or now
        t = int((now - self.start).total_seconds())
        if t in self.at:
            self.port.patch_scale(NS, DEP, {"spec": {"replicas": self.at[t]}}, dry_run=False)


def test_node_core_hours_are_the_integral_of_the_nodes_held():
    pool = NodePool(max_nodes=4, provision_s=120.0, scale_down_unneeded_s=200.0)
    model = cluster([Node("node-1", 4000)], pool=pool, follow=False)
    model.add_deployment(NS, DEP, replicas=2, cores=2, batch_env="BATCH", batch=1)
    port = SimPort(model)
    counts = np.full(1200, 10.0)
    engine = Engine(counts, TOY, model, NS, [StageBinding(DEP, batch_env="BATCH")], slo_ms=500.0,
                    controllers=[Script(port, {10: 6, 400: 2})])
    result = engine.run()
    # 4 cores throughout; from second 10 two more nodes of 4 (4 pods Pending) until second
    # 400 + 200 (empty from the scale-in at 400, removed after the unneeded time)
    want = np.full(1200, 4.0)
    want[10:600] += 8.0
    np.testing.assert_array_equal(result.node_cores, want)
    assert result.summary()["node_core_hours"] == pytest.approx(want.sum() / 3600.0)
    # the pods' requests are far less than the nodes held
    assert result.summary()["core_hours"] < result.summary()["node_core_hours"]


# -- resize delays ----------------------------------------------------------------------------


def test_resize_delays_are_log_normal_around_the_median_and_reproducible_per_seed():
    model = cluster([Node("node-1", 8000)], resize_s=10.0, spread=0.5, seed=7)
    draws = [model._resize_delay() for _ in range(4000)]
    assert statistics.median(draws) == pytest.approx(10.0, rel=0.05)
    logs = [math.log(d) for d in draws]
    assert statistics.stdev(logs) == pytest.approx(0.5, rel=0.05)
    same = cluster([Node("node-1", 8000)], resize_s=10.0, spread=0.5, seed=7)
    assert [same._resize_delay() for _ in range(4000)] == draws
    other = cluster([Node("node-1", 8000)], resize_s=10.0, spread=0.5, seed=8)
    assert [other._resize_delay() for _ in range(10)] != draws[:10]
    fixed = cluster([Node("node-1", 8000)], resize_s=10.0, spread=0.0)
    assert {fixed._resize_delay() for _ in range(10)} == {10.0}


def completion_times(seed: int, spread: float) -> list[float]:
    """When each of 6 pods' in-place resizes completes (s after it was asked for)."""
    model = cluster([Node("node-1", 64_000)], resize_s=10.0, spread=spread, seed=seed)
    model.add_deployment(NS, DEP, replicas=6, cores=1)
    port = SimPort(model)
    names = pod_names(model)
    asked = model.now
    for name in names:
        port.patch_resize(NS, name, resize_body(2), dry_run=False)
    done: dict[str, float] = {}
    while len(done) < len(names):
        model.clock.advance(model.next_due_s() - model.now)
        for name in names:
            cs = port.pod(NS, name)["status"]["containerStatuses"][0]
            if name not in done and cs["resources"]["requests"]["cpu"] in ("2", "2000m"):
                done[name] = model.now - asked
    return [done[n] for n in names]


def test_each_resize_draws_its_own_delay_and_a_seed_replays_them():
    times = completion_times(seed=3, spread=0.5)
    assert len(set(times)) == len(times)
    assert completion_times(seed=3, spread=0.5) == times
    assert completion_times(seed=4, spread=0.5) != times
    assert completion_times(seed=3, spread=0.0) == [10.0] * 6


# -- the backtest's pool -----------------------------------------------------------------------


def test_the_starting_pool_is_what_first_fit_needs_and_bad_pool_settings_are_refused():
    assert nodes_for([4000] * 4, 16_000) == 1
    assert nodes_for([6000] * 3, 16_000) == 2  # 6 + 6 on one, the third on a second
    assert nodes_for([], 16_000) == 1
    for kw, field in (({"node_cores": 0}, "node_cores"), ({"nodes": 0}, "nodes"),
                      ({"nodes": 4, "max_nodes": 3}, "max_nodes"),
                      ({"resize_spread": -0.1}, "resize_spread"),
                      ({"node_provision_s": float("nan")}, "node_provision_s")):
        with pytest.raises(BadInputError, match=field):
            BacktestSettings(**kw)


def test_a_backtest_on_real_nodes_reports_node_core_hours_and_one_unbounded_node_does_not():
    index = pd.date_range("2024-01-01", periods=4 * 1440, freq="1min", tz="UTC")
    rps = pd.Series(80.0, index=index, name="rps")
    start = index[0] + pd.Timedelta(days=3)
    common = dict(policies=("hpa", "static-peak"), start=start,
                  end=start + pd.Timedelta(hours=1), train_days=3.0)
    real = run_backtest(rps, RESNET18, BacktestSettings(node_cores=16, **common),
                        trace_name="flat", profile_name="resnet18").to_json()
    for row in real["policies"].values():
        # whole 16-core nodes, held for the hour at least once
        assert row["node_core_hours"] >= 16 and row["node_core_hours"] % 16 == 0
        assert row["node_core_hours"] >= row["core_hours"]
    ideal = run_backtest(rps, RESNET18, BacktestSettings(node_cores=None, max_nodes=None,
                                                         **common),
                         trace_name="flat", profile_name="resnet18").to_json()
    assert all("node_core_hours" not in row for row in ideal["policies"].values())
