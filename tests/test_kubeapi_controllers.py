"""The fake API's controllers behave like a real cluster's where the actuator's safety depends
on them: the HPA's sync period, tolerance, stabilisation and rate limits; graceful pod
termination; scheduling, rolling updates and a CPU quota; the kubelet's in-place resize
outcomes. Everything visible through the API is read through the official client; time is the
test clock."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from kubeapi.cluster import Clock, FakeCluster, Node, _fenceposts, iso_s
from kubeapi.harness import RBAC, RBAC_TEMPLATE, FakeHarness
from kubernetes import client as k8s

NS = "inference"
DEP = "resnet18"
HPA = "resnet18-hpa"


@pytest.fixture
def kube():
    h = FakeHarness(nodes=[Node("node-1", 8000), Node("node-2", 8000)])
    yield h
    h.close()


def _raw(response) -> dict:
    return json.loads(response.data)


def _core(h) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(h.api.api_client)


def _apps(h) -> k8s.AppsV1Api:
    return k8s.AppsV1Api(h.api.api_client)


def _auto(h) -> k8s.AutoscalingV2Api:
    return k8s.AutoscalingV2Api(h.api.api_client)


def _scale(h, replicas: int, name: str = DEP) -> None:
    _apps(h).patch_namespaced_deployment_scale(name, NS, {"spec": {"replicas": replicas}})


def _replicas(h, name: str = DEP) -> int:
    return _apps(h).read_namespaced_deployment_scale(name, NS).spec.replicas


def _hpa(h, name: str = HPA) -> dict:
    return _raw(
        _auto(h).read_namespaced_horizontal_pod_autoscaler(name, NS, _preload_content=False)
    )


def _patch_hpa(h, body: dict, name: str = HPA) -> None:
    _auto(h).patch_namespaced_horizontal_pod_autoscaler(
        name, NS, body, _content_type="application/merge-patch+json"
    )


def _pods(h, app: str = DEP) -> list[dict]:
    body = _core(h).list_namespaced_pod(NS, label_selector=f"app={app}", _preload_content=False)
    return _raw(body)["items"]


def _pod(h, name: str) -> dict:
    return _raw(_core(h).read_namespaced_pod(name, NS, _preload_content=False))


def _condition(pod: dict, kind: str) -> dict | None:
    return next((c for c in pod["status"].get("conditions") or [] if c["type"] == kind), None)


def _advance_to(h, t0: float, offset_s: float) -> None:
    """Move the test clock to ``t0 + offset_s``."""
    h.advance(t0 + offset_s - h.clock.now)


# --------------------------------------------------------------------------------------------
# HPA controller


def test_hpa_acts_only_at_its_sync_period_and_reports_its_status(kube):
    kube.add_deployment(DEP, replicas=2, cores=1)
    t0 = kube.clock.now
    kube.cluster.add_hpa(NS, HPA, DEP, min_replicas=1, max_replicas=10, target_utilisation=70)
    kube.cluster.set_hpa_utilisation(HPA, 140)  # twice the target: twice the pods
    _advance_to(kube, t0, 14.9)
    assert _replicas(kube) == 2
    assert _hpa(kube)["status"] == {"currentReplicas": 0, "desiredReplicas": 0}
    _advance_to(kube, t0, 15)
    assert _replicas(kube) == 4  # ceil(2 x 140 / 70)
    status = _hpa(kube)["status"]
    assert (status["currentReplicas"], status["desiredReplicas"]) == (2, 4)
    assert status["lastScaleTime"] == iso_s(t0 + 15)
    assert status["currentMetrics"][0]["resource"]["current"]["averageUtilization"] == 140
    reasons = {c["type"]: c["reason"] for c in status["conditions"]}
    assert reasons == {
        "AbleToScale": "SucceededRescale",
        "ScalingActive": "ValidMetricFound",
        "ScalingLimited": "DesiredWithinRange",
    }


@pytest.mark.parametrize(
    ("utilisation", "expected"),
    [(70, 2), (76, 2), (64, 2), (78, 3), (35, 1)],
)
def test_hpa_tolerance_holds_within_ten_percent_of_the_target(kube, utilisation, expected):
    # 76/70 = 1.086 and 64/70 = 0.914: within the tolerance, no change; 78/70 = 1.114 ->
    # ceil(2.23) = 3; 35/70 -> 1 (no earlier recommendation holds it up).
    kube.add_deployment(DEP, replicas=2, cores=1)
    kube.cluster.add_hpa(NS, HPA, DEP, min_replicas=1, max_replicas=10, target_utilisation=70)
    kube.cluster.set_hpa_utilisation(HPA, utilisation)
    kube.advance(15)
    assert _replicas(kube) == expected
    assert _hpa(kube)["status"]["desiredReplicas"] == expected


def test_hpa_scale_up_is_rate_limited_and_counts_unready_pods_as_idle():
    h = FakeHarness(start_delay_s=20.0, nodes=[Node("node-1", 64_000)])
    try:
        h.add_deployment(DEP, replicas=2, cores=1)
        t0 = h.clock.now
        h.cluster.add_hpa(NS, HPA, DEP, min_replicas=1, max_replicas=50)
        h.cluster.set_hpa_utilisation(HPA, 700)  # ten times the target: 20 pods wanted
        _advance_to(h, t0, 15)
        assert _replicas(h) == 4  # at most max(2 x 2, 4)
        limited = next(
            c for c in _hpa(h)["status"]["conditions"] if c["type"] == "ScalingLimited"
        )
        assert (limited["status"], limited["reason"]) == ("True", "ScaleUpLimit")
        # At t0 + 30 two of the four pods are not ready yet (20 s start delay): they count as
        # 0 % used, ratio 700 x 2 / (70 x 4) = 5 -> 20 pods, limited to 2 x 4 = 8.
        _advance_to(h, t0, 30)
        assert _replicas(h) == 8
    finally:
        h.close()


def test_raised_min_replicas_takes_effect_at_the_next_sync_not_at_once(kube):
    kube.add_deployment(DEP, replicas=2, cores=1)
    t0 = kube.clock.now
    kube.cluster.add_hpa(NS, HPA, DEP, min_replicas=2, max_replicas=10)
    kube.cluster.set_hpa_utilisation(HPA, 70)  # at the target: the metric holds 2
    _advance_to(kube, t0, 20)
    _patch_hpa(kube, {"spec": {"minReplicas": 5}})
    assert _replicas(kube) == 2
    _advance_to(kube, t0, 29.9)
    assert _replicas(kube) == 2
    _advance_to(kube, t0, 30)
    assert _replicas(kube) == 5
    assert _hpa(kube)["status"]["lastScaleTime"] == iso_s(t0 + 30)


def test_lowered_min_replicas_drops_only_after_the_downscale_stabilisation(kube):
    kube.add_deployment(DEP, replicas=5, cores=1)
    t0 = kube.clock.now
    kube.cluster.add_hpa(NS, HPA, DEP, min_replicas=5, max_replicas=10)
    kube.cluster.set_hpa_utilisation(HPA, 70)
    _advance_to(kube, t0, 30)  # syncs at +15 and +30 recommend 5
    kube.cluster.set_hpa_utilisation(HPA, 20)  # the load drops: ceil(5 x 20 / 70) = 2
    _patch_hpa(kube, {"spec": {"minReplicas": 2}})
    _advance_to(kube, t0, 330)  # the +30 recommendation (5) is still in the 300 s window
    assert _replicas(kube) == 5
    assert _hpa(kube)["status"]["desiredReplicas"] == 5
    _advance_to(kube, t0, 345)
    assert _replicas(kube) == 2
    assert _hpa(kube)["status"]["lastScaleTime"] == iso_s(t0 + 345)


def test_hpa_overrides_a_write_to_the_scale_at_its_next_sync(kube):
    kube.add_deployment(DEP, replicas=3, cores=1)
    t0 = kube.clock.now
    kube.cluster.add_hpa(NS, HPA, DEP, min_replicas=3, max_replicas=10)  # idle: at min
    _advance_to(kube, t0, 16)
    _scale(kube, 6)
    assert _replicas(kube) == 6  # until the HPA looks again
    _advance_to(kube, t0, 30)
    assert _replicas(kube) == 3  # idle pods, 100 % per 15 s may go: back to min


def test_hpa_behavior_policies_are_honoured(kube):
    kube.add_deployment(DEP, replicas=6, cores=1)
    t0 = kube.clock.now
    behavior = {
        "scaleDown": {
            "stabilizationWindowSeconds": 0,
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
        },
        "scaleUp": {"selectPolicy": "Disabled"},
    }
    kube.cluster.add_hpa(NS, HPA, DEP, min_replicas=1, max_replicas=10, behavior=behavior)
    _advance_to(kube, t0, 15)
    assert _replicas(kube) == 5  # one pod per 60 s
    _advance_to(kube, t0, 60)
    assert _replicas(kube) == 5  # the +15 removal is still in the 60 s period
    _advance_to(kube, t0, 75)
    assert _replicas(kube) == 4
    kube.cluster.set_hpa_utilisation(HPA, 700)
    _advance_to(kube, t0, 120)
    assert _replicas(kube) == 4  # scale-up disabled


def test_hpa_with_unset_utilisation_and_no_ready_pod_does_nothing():
    h = FakeHarness()
    try:
        h.add_deployment(DEP, replicas=2, cores=1, ready=False)
        h.cluster.add_hpa(NS, HPA, DEP, min_replicas=1, max_replicas=10)
        h.advance(15)  # pods still starting (30 s): no metrics, no change
        assert _replicas(h) == 2
        active = next(
            c for c in _hpa(h)["status"]["conditions"] if c["type"] == "ScalingActive"
        )
        assert (active["status"], active["reason"]) == ("False", "FailedGetResourceMetric")
    finally:
        h.close()


# --------------------------------------------------------------------------------------------
# terminating pods


def test_scale_in_leaves_pods_terminating_for_their_grace_period(kube):
    kube.add_deployment(DEP, replicas=3, cores=2)
    t0 = kube.clock.now
    _scale(kube, 1)
    pods = _pods(kube)
    assert len(pods) == 3  # listed until the kubelet has stopped them
    gone = [p for p in pods if p["metadata"].get("deletionTimestamp")]
    assert len(gone) == 2
    for p in gone:
        assert p["metadata"]["deletionTimestamp"] == iso_s(t0 + 30)
        assert p["metadata"]["deletionGracePeriodSeconds"] == 30
        assert _condition(p, "Ready")["status"] == "False"
    assert kube.state(DEP)["pods"] == 1 and kube.state(DEP)["ready"] == 1
    dep = _apps(kube).read_namespaced_deployment(DEP, NS)
    assert dep.status.replicas == 1  # the controllers count active pods only
    assert kube.cluster.node_used_millicores("node-1") == 6000  # still held
    _advance_to(kube, t0, 29.9)
    assert len(_pods(kube)) == 3
    _advance_to(kube, t0, 30)
    assert len(_pods(kube)) == 1
    assert kube.cluster.node_used_millicores("node-1") == 2000


def test_a_deleted_pod_is_replaced_at_once_and_its_replacement_waits_for_room():
    h = FakeHarness(nodes=[Node("node-1", 6000)])
    try:
        h.add_deployment(DEP, replicas=3, cores=2)  # the node is full
        t0 = h.clock.now
        victim = sorted(p["metadata"]["name"] for p in _pods(h))[0]
        h.cluster.delete("pods", NS, victim)  # an eviction, say
        pods = {p["metadata"]["name"]: p for p in _pods(h)}
        assert len(pods) == 4 and victim in pods
        (new,) = [p for n, p in pods.items() if n != victim and not _condition(p, "Ready")]
        scheduled = _condition(new, "PodScheduled")
        assert (scheduled["status"], scheduled["reason"]) == ("False", "Unschedulable")
        assert "Insufficient cpu" in scheduled["message"]
        _advance_to(h, t0, 30)  # the victim's grace period ends: room for the replacement
        new = _pod(h, new["metadata"]["name"])
        assert new["spec"]["nodeName"] == "node-1"
        assert _condition(new, "Ready")["status"] == "False"  # starting
        _advance_to(h, t0, 60)
        assert h.state(DEP)["ready"] == 3
    finally:
        h.close()


# --------------------------------------------------------------------------------------------
# scheduling, rolling updates, quota


def test_pending_pods_are_scheduled_oldest_first_when_room_frees():
    h = FakeHarness(nodes=[Node("node-1", 8000)])
    try:
        h.add_deployment("a", replicas=2, cores=2)
        h.add_deployment("b", replicas=2, cores=2)  # 8 of 8 cores
        _scale(h, 3, "a")
        h.advance(1)
        _scale(h, 4, "a")
        pending = sorted(
            (p["metadata"]["creationTimestamp"], p["metadata"]["name"])
            for p in _pods(h, "a")
            if not p["spec"].get("nodeName")
        )
        assert len(pending) == 2
        oldest, newest = pending[0][1], pending[1][1]
        t0 = h.clock.now
        _scale(h, 1, "b")  # frees 2 cores once the pod's grace period is over
        assert not _pod(h, oldest)["spec"].get("nodeName")
        _advance_to(h, t0, 30)
        assert _pod(h, oldest)["spec"]["nodeName"] == "node-1"
        assert not _pod(h, newest)["spec"].get("nodeName")
    finally:
        h.close()


@pytest.mark.parametrize(
    ("replicas", "rolling", "expected"),
    [
        (4, {}, (1, 1)),
        (2, {}, (1, 0)),
        (10, {}, (3, 2)),
        (10, {"maxSurge": 0, "maxUnavailable": "0%"}, (0, 1)),
        (10, {"maxSurge": "50%", "maxUnavailable": 3}, (5, 3)),
    ],
)
def test_max_surge_rounds_up_and_max_unavailable_down(replicas, rolling, expected):
    assert _fenceposts(rolling, replicas) == expected


def test_rolling_update_keeps_within_max_surge_and_max_unavailable():
    h = FakeHarness(rbac_files=[RBAC, RBAC_TEMPLATE], nodes=[Node("node-1", 64_000)])
    try:
        h.add_deployment(DEP, replicas=4, cores=2)  # 25 %: surge 1, unavailable 1
        body = {"spec": {"template": {"spec": {"containers": [
            {"name": "server", "resources": {"requests": {"cpu": "3"}, "limits": {"cpu": "3"}}}
        ]}}}}
        _apps(h).patch_namespaced_deployment(DEP, NS, body)
        seen = []
        for _ in range(200):
            pods = [p for p in _pods(h) if not p["metadata"].get("deletionTimestamp")]
            ready = [p for p in pods if _condition(p, "Ready")["status"] == "True"]
            new = [p for p in pods if p["spec"]["containers"][0]["resources"]["requests"]["cpu"]
                   == "3"]
            seen.append((len(pods), len(ready), len(new)))
            assert len(pods) <= 5 and len(ready) >= 3, seen
            if len(new) == 4 == len(ready) == len(pods):
                break
            h.advance(1)
        assert seen[0] == (5, 3, 2)  # one old pod goes at once, two new ones start
        assert len(seen) == 61  # two waves of a 30 s start
        dep = _apps(h).read_namespaced_deployment(DEP, NS)
        assert (dep.status.updated_replicas, dep.status.ready_replicas) == (4, 4)
    finally:
        h.close()


def test_quota_refuses_pods_beyond_requests_cpu_and_the_replicaset_retries():
    h = FakeHarness(nodes=[Node("node-1", 64_000)])
    try:
        h.cluster.quota_millicores = 6000
        h.add_deployment(DEP, replicas=2, cores=2)
        _scale(h, 4)
        assert len(_pods(h)) == 3 and h.cluster.quota_used_millicores(NS) == 6000
        (event,) = [e for e in h.cluster.list("events", NS) if e["reason"] == "FailedCreate"]
        assert event["involvedObject"]["kind"] == "ReplicaSet"
        assert "exceeded quota" in event["message"] and "limited: requests.cpu=6000m" in (
            event["message"]
        )
        h.cluster.quota_millicores = 8000  # the administrator raises it
        h.advance(1)
        assert len(_pods(h)) == 4
        # A terminating pod is still charged: its replacement waits for it to go.
        t0 = h.clock.now
        victim = sorted(p["metadata"]["name"] for p in _pods(h))[0]
        h.cluster.delete("pods", NS, victim)
        assert h.state(DEP)["pods"] == 3
        _advance_to(h, t0, 30)
        assert h.state(DEP)["pods"] == 4
    finally:
        h.close()


# --------------------------------------------------------------------------------------------
# kubelet: in-place resize outcomes


def _resize(h, pod: str, cores: str) -> None:
    resources = {"requests": {"cpu": cores}, "limits": {"cpu": cores}}
    body = {"spec": {"containers": [{"name": "server", "resources": resources}]}}
    _core(h).patch_namespaced_pod_resize(pod, NS, body)


def _cpu(pod: dict) -> tuple[str, str]:
    """(allocatedResources cpu, resources.requests cpu) of the first container."""
    cs = pod["status"]["containerStatuses"][0]
    return cs["allocatedResources"]["cpu"], cs["resources"]["requests"]["cpu"]


def _first_pod(h) -> str:
    return sorted(p["metadata"]["name"] for p in _pods(h))[0]


def test_resize_is_allocated_at_admission_and_runs_once_actuated(kube):
    kube.add_deployment(DEP, replicas=2, cores=2)
    pod = _first_pod(kube)
    _resize(kube, pod, "3")
    body = _pod(kube, pod)
    assert _cpu(body) == ("3", "2")  # admitted, not yet actuated
    assert _condition(body, "PodResizeInProgress")["status"] == "True"
    kube.advance(2)
    body = _pod(kube, pod)
    assert _cpu(body) == ("3", "3") and _condition(body, "PodResizeInProgress") is None


def test_resize_error_keeps_the_old_resources_until_the_runtime_succeeds(kube):
    kube.add_deployment(DEP, replicas=2, cores=2)
    pod = _first_pod(kube)
    kube.cluster.resize_errors[pod] = "failed to update container resources: runtime error"
    _resize(kube, pod, "3")
    kube.advance(60)
    body = _pod(kube, pod)
    cond = _condition(body, "PodResizeInProgress")
    assert (cond["status"], cond["reason"]) == ("True", "Error")
    assert cond["message"].startswith("failed to update container resources")
    assert _cpu(body) == ("3", "2")
    assert kube.state(DEP)["ready_millicores"] == [2000, 2000]
    del kube.cluster.resize_errors[pod]
    kube.advance(1)  # the kubelet's next sync retries the actuation: 2 s from here
    cond = _condition(_pod(kube, pod), "PodResizeInProgress")
    assert cond["status"] == "True" and "reason" not in cond
    kube.advance(1.9)
    assert _cpu(_pod(kube, pod)) == ("3", "2")
    kube.advance(0.1)
    assert _cpu(_pod(kube, pod)) == ("3", "3")


def test_resize_stuck_in_progress_never_completes(kube):
    kube.add_deployment(DEP, replicas=1, cores=2)
    pod = _first_pod(kube)
    kube.cluster.stuck_resizes.add("node-1")  # per node
    _resize(kube, pod, "3")
    kube.advance(3600)
    body = _pod(kube, pod)
    cond = _condition(body, "PodResizeInProgress")
    assert cond["status"] == "True" and "reason" not in cond
    assert _cpu(body) == ("3", "2")


def test_static_cpu_manager_refuses_resizes_of_guaranteed_pods():
    h = FakeHarness(nodes=[Node("node-1", 16_000, cpu_manager_policy="static")])
    try:
        h.add_deployment(DEP, replicas=1, cores=2)
        pod = _first_pod(h)
        _resize(h, pod, "3")
        h.advance(60)
        body = _pod(h, pod)
        cond = _condition(body, "PodResizePending")
        assert (cond["status"], cond["reason"]) == ("True", "Infeasible")
        assert "CPU Manager static policy" in cond["message"]
        assert _cpu(body) == ("2", "2")
    finally:
        h.close()


def test_deferred_resize_proceeds_when_a_terminating_pod_frees_room():
    h = FakeHarness(nodes=[Node("node-1", 8000)])
    try:
        h.add_deployment(DEP, replicas=2, cores=2)
        h.add_deployment("other", replicas=2, cores=2)  # node full
        pod = _first_pod(h)
        _resize(h, pod, "4")
        cond = _condition(_pod(h, pod), "PodResizePending")
        assert cond["reason"] == "Deferred" and "used: 6000" in cond["message"]
        t0 = h.clock.now
        _scale(h, 0, "other")  # both pods terminate; they hold their CPU for 30 s
        _advance_to(h, t0, 29.9)
        assert _condition(_pod(h, pod), "PodResizePending")["reason"] == "Deferred"
        _advance_to(h, t0, 30)
        body = _pod(h, pod)
        assert _condition(body, "PodResizePending") is None
        assert _cpu(body) == ("4", "2")
        _advance_to(h, t0, 32)
        assert _cpu(_pod(h, pod)) == ("4", "4")
    finally:
        h.close()


# --------------------------------------------------------------------------------------------
# determinism and hostile set-up


def _scenario(seed: int) -> list[dict]:
    cluster = FakeCluster(Clock(), nodes=[Node("node-1", 8000)], seed=seed)
    cluster.add_deployment(NS, DEP, replicas=3, cores=2)
    cluster.add_hpa(NS, HPA, DEP, min_replicas=1, max_replicas=6)
    cluster.set_hpa_utilisation(HPA, 140)
    cluster.clock.advance(100)
    return cluster.list("pods", NS) + cluster.list("horizontalpodautoscalers", NS)


def test_a_scenario_replays_identically_on_the_test_clock():
    first, again = _scenario(0), _scenario(0)
    assert first == again
    assert [p["metadata"]["uid"] for p in _scenario(1)] != [p["metadata"]["uid"] for p in first]
    assert pd.Timestamp(first[0]["metadata"]["creationTimestamp"]).year == 2025


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quota_millicores": -1}, "quota_millicores"),
        ({"nodes": [Node("n", 1000, cpu_manager_policy="Static!")]}, "cpu_manager_policy"),
    ],
)
def test_bad_cluster_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FakeCluster(Clock(), **kwargs)


def test_bad_hpa_inputs_are_refused():
    cluster = FakeCluster(Clock())
    with pytest.raises(ValueError, match="utilisation"):
        cluster.set_hpa_utilisation(HPA, float("nan"))
    with pytest.raises(ValueError, match="min_replicas"):
        cluster.add_hpa(NS, HPA, DEP, min_replicas=0, max_replicas=3)
    with pytest.raises(ValueError, match="forward"):
        cluster.clock.advance(-1)
