"""The fake Kubernetes API, driven only through the official client: it must behave like the
real server wherever the actuator depends on it."""

from __future__ import annotations

import json

import pytest
import urllib3
from kubeapi.cluster import Node
from kubeapi.harness import RBAC, RBAC_TEMPLATE, FakeHarness
from kubeapi.patch import json_patch, merge_patch, strategic_merge_patch
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

NS = "inference"


@pytest.fixture
def kube():
    h = FakeHarness(nodes=[Node("node-1", 8000), Node("node-2", 8000)])
    h.add_deployment("resnet18", replicas=2, cores=2)
    yield h
    h.close()


def _body(response) -> dict:
    return json.loads(response.data)


def _core(kube) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(kube.api.api_client)


def _apps(kube) -> k8s.AppsV1Api:
    return k8s.AppsV1Api(kube.api.api_client)


def test_typed_reads_deserialise_through_the_client(kube):
    dep = _apps(kube).read_namespaced_deployment("resnet18", NS)
    assert dep.spec.replicas == 2 and dep.metadata.resource_version
    scale = _apps(kube).read_namespaced_deployment_scale("resnet18", NS)
    assert scale.spec.replicas == 2 and scale.status.selector == "app=resnet18"
    pods = _core(kube).list_namespaced_pod(NS, label_selector="app=resnet18")
    assert len(pods.items) == 2
    assert all(p.status.qos_class == "Guaranteed" for p in pods.items)
    assert _core(kube).list_namespaced_pod(NS, label_selector="app=other").items == []
    assert len(_core(kube).list_namespaced_pod(NS, label_selector="app!=other").items) == 2


def test_scale_patch_creates_pods_that_become_ready_after_the_start_delay(kube):
    _apps(kube).patch_namespaced_deployment_scale("resnet18", NS, {"spec": {"replicas": 4}})
    assert kube.state("resnet18")["pods"] == 4 and kube.state("resnet18")["ready"] == 2
    kube.advance(29.0)
    assert kube.state("resnet18")["ready"] == 2
    kube.advance(1.0)
    assert kube.state("resnet18")["ready"] == 4
    _apps(kube).patch_namespaced_deployment_scale("resnet18", NS, {"spec": {"replicas": 1}})
    assert kube.state("resnet18")["pods"] == 1


def test_stale_resource_version_is_a_conflict_and_the_object_is_unchanged(kube):
    apps = _apps(kube)
    scale = apps.read_namespaced_deployment_scale("resnet18", NS)
    apps.patch_namespaced_deployment_scale("resnet18", NS, {"spec": {"replicas": 3}})
    stale = {
        "metadata": {"resourceVersion": scale.metadata.resource_version},
        "spec": {"replicas": 5},
    }
    with pytest.raises(ApiException) as err:
        apps.patch_namespaced_deployment_scale("resnet18", NS, stale)
    assert err.value.status == 409 and json.loads(err.value.body)["reason"] == "Conflict"
    assert kube.state("resnet18")["replicas"] == 3


def test_rbac_from_deploy_is_enforced_per_resource_subresource_and_verb(kube):
    apps = _apps(kube)
    with pytest.raises(ApiException) as err:  # rbac.yaml grants get, not patch, on deployments
        apps.patch_namespaced_deployment("resnet18", NS, {"spec": {"replicas": 3}})
    assert err.value.status == 403
    with pytest.raises(ApiException) as err:  # no list on deployments
        apps.list_namespaced_deployment(NS)
    assert err.value.status == 403
    with pytest.raises(ApiException) as err:  # other namespaces: the Role is namespaced
        apps.read_namespaced_deployment("resnet18", "default")
    assert err.value.status == 403
    with pytest.raises(ApiException) as err:  # events: create only
        _core(kube).list_namespaced_event(NS)
    assert err.value.status == 403


def test_the_template_rewrite_role_grants_exactly_patch_deployments():
    h = FakeHarness(rbac_files=[RBAC, RBAC_TEMPLATE])
    try:
        h.add_deployment("resnet18", replicas=1, cores=2)
        body = {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": "server",
                                "resources": {"requests": {"cpu": "3"}, "limits": {"cpu": "3"}},
                            }
                        ]
                    }
                }
            }
        }
        _apps(h).patch_namespaced_deployment("resnet18", NS, body)
        assert h.state("resnet18")["template_millicores"] == 3000
        h.advance(31)  # the template roll: new pod ready, old one gone
        assert h.state("resnet18")["ready_millicores"] == [3000]
    finally:
        h.close()


def _resize(kube, pod: str, cores: str, limits: bool = True, **kw):
    resources = {"requests": {"cpu": cores}}
    if limits:
        resources["limits"] = {"cpu": cores}
    body = {"spec": {"containers": [{"name": "server", "resources": resources}]}}
    return _core(kube).patch_namespaced_pod_resize(pod, NS, body, **kw)


def _pod_names(kube) -> list[str]:
    return sorted(p["metadata"]["name"] for p in kube.cluster.pods_of(NS, "resnet18"))


def _conditions(kube, pod: str) -> dict[str, str | None]:
    body = _body(_core(kube).read_namespaced_pod(pod, NS, _preload_content=False))
    return {
        c["type"]: c.get("reason")
        for c in body["status"]["conditions"]
        if c["type"].startswith("PodResize")
    }


def test_resize_in_progress_then_applied_after_the_delay(kube):
    pod = _pod_names(kube)[0]
    _resize(kube, pod, "3")
    assert _conditions(kube, pod) == {"PodResizeInProgress": None}
    kube.advance(2.0)
    assert _conditions(kube, pod) == {}
    assert kube.state("resnet18")["ready_millicores"] == [2000, 3000]


def test_resize_infeasible_when_no_node_could_fit_it(kube):
    pod = _pod_names(kube)[0]
    _resize(kube, pod, "9")  # nodes have 8 cores
    assert _conditions(kube, pod) == {"PodResizePending": "Infeasible"}
    kube.advance(60)
    assert kube.state("resnet18")["ready_millicores"] == [2000, 2000]


def test_resize_deferred_while_the_node_is_full_and_when_injected(kube):
    pods = _pod_names(kube)  # both on node-1 (2 + 2 of 8 cores)
    _resize(kube, pods[0], "7")
    assert _conditions(kube, pods[0]) == {"PodResizePending": "Deferred"}
    _resize(kube, pods[1], "1")  # frees room once the shrink is done; then pods[0] proceeds
    kube.advance(2.0)
    assert _conditions(kube, pods[0]) == {"PodResizeInProgress": None}
    kube.advance(2.0)
    assert _conditions(kube, pods[0]) == {}
    assert kube.state("resnet18")["ready_millicores"] == [1000, 7000]
    kube.cluster.deferred.add(pods[1])
    _resize(kube, pods[1], "1", limits=True)
    _resize(kube, pods[1], "2")  # does not matter whether there is room: injected
    assert _conditions(kube, pods[1]) == {"PodResizePending": "Deferred"}


def test_resize_may_not_change_the_qos_class(kube):
    pod = _pod_names(kube)[0]
    with pytest.raises(ApiException) as err:
        _resize(kube, pod, "1", limits=False)  # requests 1 < limits 2: Guaranteed -> Burstable
    assert err.value.status == 422 and "QOS" in json.loads(err.value.body)["message"]
    with pytest.raises(ApiException) as err:
        _resize(kube, pod, "3", limits=False)  # requests above limits: invalid in any class
    assert err.value.status == 422
    assert "must be less than or equal to cpu limit" in json.loads(err.value.body)["message"]


def test_dry_run_validates_and_persists_nothing(kube):
    pod = _pod_names(kube)[0]
    out = _resize(kube, pod, "3", dry_run="All")
    assert out.spec.containers[0].resources.requests["cpu"] == "3"
    _apps(kube).patch_namespaced_deployment_scale(
        "resnet18", NS, {"spec": {"replicas": 6}}, dry_run="All"
    )
    assert kube.state("resnet18")["replicas"] == 2
    assert kube.state("resnet18")["desired_millicores"] == [2000, 2000]


def test_hpa_enforces_its_min_replicas(kube):
    kube.cluster.add_hpa(NS, "resnet18", "resnet18", min_replicas=3, max_replicas=10)
    kube.advance(15)  # the HPA acts at its sync period, not at once
    assert kube.state("resnet18")["replicas"] == 3
    auto = k8s.AutoscalingV2Api(kube.api.api_client)
    auto.patch_namespaced_horizontal_pod_autoscaler(
        "resnet18", NS, {"spec": {"minReplicas": 5}}, _content_type="application/merge-patch+json"
    )
    assert kube.state("resnet18")["replicas"] == 3
    kube.advance(15)
    assert kube.state("resnet18")["replicas"] == 5
    with pytest.raises(ApiException) as err:
        auto.patch_namespaced_horizontal_pod_autoscaler(
            "resnet18",
            NS,
            {"spec": {"minReplicas": 11}},
            _content_type="application/merge-patch+json",
        )
    assert err.value.status == 422


def test_events_create_once_by_name(kube):
    body = {
        "metadata": {"name": "resnet18.x"},
        "involvedObject": {"kind": "Deployment", "name": "resnet18", "namespace": NS},
        "reason": "Test",
        "message": "hello",
        "type": "Normal",
    }
    _core(kube).create_namespaced_event(NS, body)
    with pytest.raises(ApiException) as err:
        _core(kube).create_namespaced_event(NS, body)
    assert err.value.status == 409
    assert [e["reason"] for e in kube.events("resnet18")] == ["Test"]


def test_injected_errors_conflicts_and_timeouts(kube):
    apps = _apps(kube)
    kube.faults.fail(r"/scale$", 503, times=1, method="PATCH")
    with pytest.raises(ApiException) as err:
        apps.patch_namespaced_deployment_scale("resnet18", NS, {"spec": {"replicas": 3}})
    assert err.value.status == 503 and kube.state("resnet18")["replicas"] == 2
    kube.faults.conflict_next_writes(1)
    rv = apps.read_namespaced_deployment_scale("resnet18", NS).metadata.resource_version
    conditional = {"metadata": {"resourceVersion": rv}, "spec": {"replicas": 3}}
    with pytest.raises(ApiException) as err:
        apps.patch_namespaced_deployment_scale("resnet18", NS, conditional)
    assert err.value.status == 409 and kube.state("resnet18")["replicas"] == 2
    start = kube.now()
    kube.faults.delay(r"/scale$", 0.6, method="PATCH")
    with pytest.raises(urllib3.exceptions.HTTPError):
        apps.patch_namespaced_deployment_scale(
            "resnet18", NS, {"spec": {"replicas": 3}}, _request_timeout=0.2
        )
    assert kube.state("resnet18")["replicas"] == 3  # handled; only the answer was lost
    assert (kube.now() - start).total_seconds() == pytest.approx(0.6)  # on the test clock
    apps.patch_namespaced_deployment_scale("resnet18", NS, {"spec": {"replicas": 4}})
    assert kube.state("resnet18")["replicas"] == 4


def test_unsupported_patch_type_is_refused(kube):
    with pytest.raises(ApiException) as err:
        _apps(kube).patch_namespaced_deployment_scale(
            "resnet18", NS, {"spec": {"replicas": 3}}, _content_type="application/apply-patch+yaml"
        )
    assert err.value.status == 415


def test_patch_semantics():
    pod = {"spec": {"containers": [{"name": "a", "x": 1}, {"name": "b", "x": 2}]}, "k": 1}
    out = strategic_merge_patch(pod, {"spec": {"containers": [{"name": "b", "x": 3}]}, "k": None})
    assert out == {"spec": {"containers": [{"name": "a", "x": 1}, {"name": "b", "x": 3}]}}
    assert merge_patch(pod, {"spec": {"containers": []}})["spec"]["containers"] == []
    ops = [{"op": "test", "path": "/k", "value": 1}, {"op": "replace", "path": "/k", "value": 2}]
    assert json_patch(pod, ops)["k"] == 2


def test_hpa_overrides_a_write_to_the_scale_subresource(kube):
    kube.cluster.add_hpa(NS, "resnet18", "resnet18", min_replicas=3, max_replicas=10)
    kube.advance(15)
    _apps(kube).patch_namespaced_deployment_scale("resnet18", NS, {"spec": {"replicas": 6}})
    assert kube.state("resnet18")["replicas"] == 6  # until the HPA's next sync
    for _ in range(25):  # the HPA takes it back (after its scale-down stabilisation)
        kube.advance(15)
    assert kube.state("resnet18")["replicas"] == 3  # the fight the actuator avoids
