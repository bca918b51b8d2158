"""The backtest's engine on the cluster model: capacity read from the pods, cost from what is
bound to a node, the HPA fed by the served load, controllers at their cadence with waits that
are simulation time."""

from __future__ import annotations

import numpy as np
import pytest
from simtoy import DEP, NS, START, TOY, setup

from surgecast.offline.cluster import Clock, ClusterModel, Node
from surgecast.offline.engine import Engine, StageBinding
from surgecast.offline.port import SimPort


class Once:
    """At ``at_s`` after the start, call ``act(port)``; record when each tick ran."""

    def __init__(self, at_s, act, period_s=1.0):
        self.name, self.period_s, self.offset_s = "once", period_s, 0.0
        self.at_s, self.act, self.ticks, self.port = at_s, act, [], None

    def tick(self, now):
        self.ticks.append((now - START).total_seconds())
        if self.ticks[-1] == self.at_s:
            self.act(self.port)


def test_capacity_and_cost_are_the_ready_pods_of_the_model():
    _, _, engine = setup(np.full(120, 30.0), replicas=2, cores=1)
    result = engine.run()
    assert result.capacity_rps[0] == pytest.approx(40.0)
    assert result.served.sum() == pytest.approx(30.0 * 120)
    assert result.cost_cores.sum() / 3600 == pytest.approx(2 * 120 / 3600)
    assert result.actions == 0


def test_a_scale_out_serves_after_the_cold_start_and_pays_from_scheduling():
    ctl = Once(10.0, lambda port: port.patch_scale(NS, DEP, {"spec": {"replicas": 3}},
                                                   dry_run=False))
    _, port, engine = setup(np.full(120, 30.0), replicas=1, controllers=[ctl])
    ctl.port = port
    result = engine.run()
    assert result.capacity_rps[10] == pytest.approx(20.0)
    assert result.capacity_rps[39] == pytest.approx(20.0)  # still starting
    assert result.capacity_rps[40] == pytest.approx(60.0)  # ready 30 s after scheduling
    assert result.cost_cores[10] == 3 and result.cost_cores[9] == 1
    assert result.actions == 1 and result.replicas[10] == 3


def test_an_in_place_resize_counts_once_actuated_and_pays_the_larger_size_meanwhile():
    def grow(port):
        for pod in port.pods(NS, {"app": DEP}):
            body = {"spec": {"containers": [{"name": "server", "resources": {
                "requests": {"cpu": "4"}, "limits": {"cpu": "4"}}}]}}
            port.patch_resize(NS, pod["metadata"]["name"], body, dry_run=False)

    ctl = Once(5.0, grow)
    _, port, engine = setup(np.full(60, 10.0), replicas=1, cores=1, controllers=[ctl])
    ctl.port = port
    result = engine.run()
    assert result.capacity_rps[6] == pytest.approx(20.0)
    assert result.capacity_rps[7] == pytest.approx(1000 / (40 / 4 + 10))
    assert result.cost_cores[5] == 4 and result.cost_cores[4] == 1
    assert result.cores[5] == 4


def test_the_models_hpa_scales_on_the_cpu_the_load_keeps_busy():
    counts = np.concatenate([np.full(120, 10.0), np.full(1200, 70.0)])  # 2 pods: 25 %, 175 %
    model, _, engine = setup(counts, replicas=2, routing="pooled")
    model.add_hpa(NS, "toy-hpa", DEP, min_replicas=1, max_replicas=10, target_utilisation=70)
    result = engine.run()
    # At 10 rps on 40 rps of capacity (25 % busy) the HPA scales in at its first sync with a
    # metric: metrics-server needs two scrapes (7.5 s and 22.5 s after the start), so the
    # sync at 15 s has none and the one at 30 s scales in (its stabilisation window holds no
    # higher recommendation yet); at 70 rps it scales out on CPU seen 10-40 s late while the
    # backlog of the slow reaction drains (overshooting to 10), then, 300 s after the backlog
    # is gone, back to what keeps them ~70 % busy: 5 pods of 20 rps.
    assert result.replicas[29] == 2 and result.replicas[31] == 1
    assert result.replicas.max() > 5 and result.replicas[-1] == 5
    hpa = model.get("horizontalpodautoscalers", NS, "toy-hpa")
    assert hpa["status"]["desiredReplicas"] == 5
    # Behind a Service each pod keeps its own queue: the pods that were overloaded stay 100 %
    # busy draining theirs while new pods take their share, so the HPA still reads high CPU
    # after the pooled run's backlog is gone and scales in later; it ends at 5 pods as well.
    model, _, engine = setup(counts, replicas=2)
    model.add_hpa(NS, "toy-hpa", DEP, min_replicas=1, max_replicas=10, target_utilisation=70)
    routed = engine.run()
    assert result.replicas[900] == 5 and routed.replicas[900] > 5
    assert routed.replicas[-1] == 5


def test_a_controllers_wait_is_served_and_it_never_reenters_its_own_tick():
    counts = np.full(60, 10.0)
    holder = {}

    class Sleeper:
        name, period_s, offset_s = "sleeper", 5.0, 0.0

        def __init__(self):
            self.starts = []

        def tick(self, now):
            self.starts.append((now - START).total_seconds())
            holder["engine"].sleep(12.0)  # longer than its period: ticks due meanwhile skip

    sleeper = Sleeper()
    watcher = Once(-1.0, lambda port: None)
    _, _, engine = setup(counts, controllers=[sleeper, watcher])
    holder["engine"] = engine
    result = engine.run()
    assert sleeper.starts[:3] == [0.0, 15.0, 30.0]
    assert watcher.ticks[:14] == [float(t) for t in range(14)]  # others run during the sleep
    assert result.served.sum() == pytest.approx(counts.sum())


def test_the_pipeline_cycle_runs_the_real_actuator_through_the_port(tmp_path):
    """A surge the forecast sees 10 minutes ahead: the cycle plans it with the shared planning
    function and the actuator moves the HPA's minReplicas (the service names its HPA); the
    decision records are production's, in the artifact folder."""
    from actuator.guards import Bounds
    from actuator.records import read_records
    from actuator.spec import WorkloadSpec
    from surgecast.offline.backtest import SERVICE
    from surgecast.offline.controllers import PipelineCycle
    from surgecast.settings import ServiceSettings, Settings

    counts = np.concatenate([np.full(900, 30.0), np.full(900, 100.0)])
    clock = Clock(START.timestamp())
    model = ClusterModel(clock, start_delay_s=30.0, resize_delay_s=2.0,
                         nodes=[Node("node-1", 256_000)], follow_clock=False)
    model.add_deployment(NS, SERVICE, replicas=2, cores=1, batch_env="BATCH", batch=4)
    model.add_hpa(NS, f"{SERVICE}-hpa", SERVICE, min_replicas=2, max_replicas=20,
                  target_utilisation=90)
    port = SimPort(model)
    # One queue for the pods (perfect balancing): this checks the plan's timing and sizing,
    # which assume it. Behind a Service (round-robin, each pod its own queue) the same plan
    # with the HPA at 90 % leaves ~5 % of the surge's requests over 500 ms: the per-pod
    # queues of hot pods, which the backtest now charges to every policy.
    engine = Engine(counts, TOY, model, NS, [StageBinding(SERVICE, batch_env="BATCH")],
                    slo_ms=500.0, routing="pooled")
    bounds = Bounds(1, 20, 1, 8, 8)
    svc = ServiceSettings(
        name=SERVICE, query="x", namespace=NS, profile="toy", slo_ms=500.0, mode="active",
        cold_start_s=30.0,
        workloads=(WorkloadSpec(deployment=SERVICE, bounds=bounds, hpa=f"{SERVICE}-hpa",
                                    batch_env="BATCH"),),
    )
    spec = Settings(source="test", services=(svc,), run_interval_s=300.0)

    def truth(now):  # the true minute means from now on: a perfect forecast
        t = int((now - START).total_seconds())
        ahead = counts[t : t + 900]
        ahead = np.concatenate([ahead, np.full(900 - len(ahead), counts[-1])])
        means = ahead.reshape(15, 60).mean(axis=1)
        return {0.95: means, 0.99: means}

    cycle = PipelineCycle("perfect-forecast", engine, port, spec.actuator_config(SERVICE), TOY,
                          svc.policy(), truth, batch=(4,), artifacts=tmp_path)
    engine.controllers.append(cycle)
    result = engine.run()
    records = read_records(tmp_path, SERVICE)
    assert len(records) == len(cycle.records) == 6  # at 1, 6, 11, ... minutes
    assert all(r.mode == "active" and r.held is None for r in cycle.records)
    moved = [c for r in cycle.records for c in r.changes if c.what == "hpa minReplicas"]
    assert moved and moved[0].outcome == "applied"
    # Ready for the surge at 15 minutes, a cold start ahead: 100 rps on pods of 23.5 rps.
    assert result.capacity_rps[900] >= 100.0
    assert result.violations[900:].sum() < 0.01 * counts[900:].sum()
