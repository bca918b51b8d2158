"""The fake API server's HTTP front behaves like kube-apiserver where the actuator relies on it:
authentication and RBAC, Leases and ConfigMaps, validation (422, never a crash), dry runs
through admission, conflicts from a concurrent writer, Event checks, deterministic timing and
the server version. Everything goes through the official client."""

from __future__ import annotations

import json
import socket
import time

import promtest
import pytest
import urllib3
from kubeapi.cluster import Node
from kubeapi.harness import ACTUATOR_SA, FakeHarness
from kubeapi.server import parse_quantity
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

NS = "inference"
ACTUATOR = f"system:serviceaccount:{NS}:{ACTUATOR_SA}"
STALE = (
    'the object has been modified; please apply your changes to the latest version and try again'
)


@pytest.fixture
def kube():
    h = FakeHarness(nodes=[Node("node-1", 8000), Node("node-2", 8000)])
    h.add_deployment("resnet18", replicas=2, cores=2)
    yield h
    h.close()


def _err(call, *args, **kwargs) -> tuple[int, dict]:
    """(status, Status body) of a call that must fail."""
    with pytest.raises(ApiException) as err:
        call(*args, **kwargs)
    return err.value.status, json.loads(err.value.body)


def _data(response) -> dict:
    return json.loads(response.data)


def _pods(kube) -> list[str]:
    return sorted(p["metadata"]["name"] for p in kube.cluster.list("pods", NS))


def _lease(name: str, holder: str = "run-1", **spec) -> dict:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 60,
            # The client re-serialises these with isoformat(): a zero fraction would vanish.
            "acquireTime": "2025-06-02T08:00:00.123456Z",
            "renewTime": "2025-06-02T08:00:00.123456Z",
            "leaseTransitions": 0,
            **spec,
        },
    }


def _role(name: str, rules: list[dict], namespace: str | None = NS) -> dict:
    meta = {"name": name} | ({"namespace": namespace} if namespace else {})
    return {"apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role" if namespace else "ClusterRole", "metadata": meta, "rules": rules}


def _binding(name: str, role_kind: str, role: str, subjects: list[dict],
             namespace: str | None = NS) -> dict:
    meta = {"name": name} | ({"namespace": namespace} if namespace else {})
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding" if namespace else "ClusterRoleBinding",
        "metadata": meta,
        "subjects": subjects,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
    }


READ_CONFIGMAPS = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]


# --------------------------------------------------------------------------------------------
# 1. authentication and RBAC


def test_requests_without_or_with_an_unknown_token_are_401(kube):
    for token in (None, "not-a-token"):
        status, body = _err(k8s.AppsV1Api(kube.client(token)).read_namespaced_deployment,
                            "resnet18", NS)
        assert status == 401 and body["reason"] == "Unauthorized"
    token = kube.server.issue_token("alice", ["system:masters"])
    assert k8s.AppsV1Api(kube.client(token)).read_namespaced_deployment("resnet18", NS)
    kube.server.revoke_token(token)
    status, _ = _err(k8s.AppsV1Api(kube.client(token)).read_namespaced_deployment,
                     "resnet18", NS)
    assert status == 401


def test_the_actuator_authenticates_as_its_service_account(kube):
    status, body = _err(k8s.AppsV1Api(kube.api.api_client).list_namespaced_deployment, NS)
    assert status == 403
    assert body["message"] == (
        f'deployments.apps is forbidden: User "{ACTUATOR}" cannot list resource "deployments" '
        f'in API group "apps" in the namespace "{NS}"'
    )
    status, body = _err(k8s.AppsV1Api(kube.api.api_client).patch_namespaced_deployment,
                        "resnet18", NS, {"spec": {"replicas": 3}})
    assert status == 403 and body["message"].startswith(
        f'deployments.apps "resnet18" is forbidden: User "{ACTUATOR}" cannot patch'
    )
    # The same Role grants the scale subresource, so the subresource is authorised apart.
    assert kube.api.scale(NS, "resnet18")["spec"]["replicas"] == 2


def test_a_role_bound_to_nobody_grants_nothing(kube):
    reader = k8s.CoreV1Api(kube.service_account_client("reader"))
    kube.add_rbac(_role("configmap-reader", READ_CONFIGMAPS))
    assert _err(reader.list_namespaced_config_map, NS)[0] == 403
    kube.add_rbac(_binding("reader", "Role", "configmap-reader",
                           [{"kind": "ServiceAccount", "name": "reader"}]))
    assert reader.list_namespaced_config_map(NS).items == []


def test_a_rolebinding_scopes_a_clusterrole_to_its_namespace(kube):
    reader = k8s.CoreV1Api(kube.service_account_client("reader"))
    kube.add_rbac(_role("configmap-reader", READ_CONFIGMAPS, namespace=None))
    kube.add_rbac(_binding("reader", "ClusterRole", "configmap-reader",
                           [{"kind": "ServiceAccount", "name": "reader", "namespace": NS}]))
    assert reader.list_namespaced_config_map(NS).items == []
    assert _err(reader.list_namespaced_config_map, "other")[0] == 403
    kube.add_rbac(_binding("reader-everywhere", "ClusterRole", "configmap-reader",
                           [{"kind": "ServiceAccount", "name": "reader", "namespace": NS}],
                           namespace=None))
    assert reader.list_namespaced_config_map("other").items == []


@pytest.mark.parametrize(
    "subject",
    [
        {"kind": "User", "name": "alice"},
        {"kind": "Group", "name": "team-a"},
        {"kind": "Group", "name": "system:authenticated"},
    ],
)
def test_user_and_group_subjects(kube, subject):
    alice = k8s.CoreV1Api(kube.client(kube.server.issue_token("alice", ["team-a"])))
    bob = k8s.CoreV1Api(kube.client(kube.server.issue_token("bob", ["team-b"])))
    kube.add_rbac(_role("configmap-reader", READ_CONFIGMAPS),
                  _binding("b", "Role", "configmap-reader", [subject]))
    assert alice.list_namespaced_config_map(NS).items == []
    bob_allowed = subject["name"] == "system:authenticated"
    if bob_allowed:
        assert bob.list_namespaced_config_map(NS).items == []
    else:
        assert _err(bob.list_namespaced_config_map, NS)[0] == 403


def test_service_account_groups_can_be_bound(kube):
    other_ns = k8s.CoreV1Api(kube.service_account_client("reader", namespace="other"))
    same_ns = k8s.CoreV1Api(kube.service_account_client("reader"))
    kube.add_rbac(_role("configmap-reader", READ_CONFIGMAPS),
                  _binding("b", "Role", "configmap-reader",
                           [{"kind": "Group", "name": f"system:serviceaccounts:{NS}"}]))
    assert same_ns.list_namespaced_config_map(NS).items == []
    assert _err(other_ns.list_namespaced_config_map, NS)[0] == 403


def test_resource_names_never_match_list_or_create(kube):
    """deploy/rbac.yaml grants get on the kill-switch ConfigMap by name only."""
    admin = k8s.CoreV1Api(kube.admin)
    for name in ("surgecast-control", "other"):
        admin.create_namespaced_config_map(NS, {"metadata": {"name": name}, "data": {}})
    core = k8s.CoreV1Api(kube.api.api_client)
    assert core.read_namespaced_config_map("surgecast-control", NS).metadata.name
    assert _err(core.read_namespaced_config_map, "other", NS)[0] == 403
    assert _err(core.list_namespaced_config_map, NS)[0] == 403
    kube.add_rbac(_role("named", [{"apiGroups": [""], "resources": ["configmaps"],
                                   "resourceNames": ["x"], "verbs": ["create", "list"]}]),
                  _binding("named", "Role", "named",
                           [{"kind": "ServiceAccount", "name": ACTUATOR_SA}]))
    status, _ = _err(core.create_namespaced_config_map, NS, {"metadata": {"name": "x"}})
    assert status == 403
    assert _err(core.list_namespaced_config_map, NS)[0] == 403


def test_the_actuator_may_use_its_lease_but_not_delete_or_list_leases(kube):
    leases = k8s.CoordinationV1Api(kube.api.api_client)
    leases.create_namespaced_lease(NS, _lease("surgecast-resnet18"))
    current = _data(leases.read_namespaced_lease("surgecast-resnet18", NS,
                                                 _preload_content=False))
    current["spec"]["renewTime"] = "2025-06-02T08:00:30.500000Z"
    leases.replace_namespaced_lease("surgecast-resnet18", NS, current)
    leases.patch_namespaced_lease("surgecast-resnet18", NS, {"spec": {"holderIdentity": "run-2"}})
    assert _err(leases.delete_namespaced_lease, "surgecast-resnet18", NS)[0] == 403
    assert _err(leases.list_namespaced_lease, NS)[0] == 403


# --------------------------------------------------------------------------------------------
# 2. Leases and ConfigMaps


def test_lease_create_get_update_patch_delete(kube):
    leases = k8s.CoordinationV1Api(kube.admin)
    created = leases.create_namespaced_lease(NS, _lease("lock"))
    assert created.spec.holder_identity == "run-1" and created.spec.lease_duration_seconds == 60
    assert created.spec.renew_time.microsecond == 123456 and created.metadata.uid
    status, body = _err(leases.create_namespaced_lease, NS, _lease("lock", holder="run-2"))
    assert (status, body["reason"]) == (409, "AlreadyExists")
    assert body["message"] == 'leases.coordination.k8s.io "lock" already exists'

    read = _data(leases.read_namespaced_lease("lock", NS, _preload_content=False))
    taken = json.loads(json.dumps(read))
    taken["spec"].update(holderIdentity="run-2", leaseTransitions=1,
                         acquireTime="2025-06-02T08:01:00.250000Z")
    updated = leases.replace_namespaced_lease("lock", NS, taken)
    assert updated.spec.lease_transitions == 1 and updated.spec.acquire_time.microsecond == 250000
    assert updated.metadata.resource_version != read["metadata"]["resourceVersion"]
    assert updated.metadata.uid == created.metadata.uid  # server-owned metadata kept

    stale = json.loads(json.dumps(read))  # the resourceVersion before the update
    stale["spec"]["holderIdentity"] = "run-3"
    status, body = _err(leases.replace_namespaced_lease, "lock", NS, stale)
    assert (status, body["reason"]) == (409, "Conflict")
    assert body["message"] == (
        f'Operation cannot be fulfilled on leases.coordination.k8s.io "lock": {STALE}'
    )
    renew = {"spec": {"renewTime": "2025-06-02T08:01:10.000001Z"}}
    leases.patch_namespaced_lease("lock", NS, renew)
    assert [i.spec.holder_identity for i in leases.list_namespaced_lease(NS).items] == ["run-2"]
    done = _data(leases.delete_namespaced_lease("lock", NS, _preload_content=False))
    assert (done["kind"], done["status"], done["details"]["name"]) == ("Status", "Success", "lock")
    assert _err(leases.read_namespaced_lease, "lock", NS)[0] == 404
    assert _err(leases.replace_namespaced_lease, "lock", NS, taken)[0] == 404


def test_lease_times_are_micro_times_and_the_spec_is_validated(kube):
    leases = k8s.CoordinationV1Api(kube.admin)
    # The client sends datetimes with isoformat(), which drops a zero fraction; the server's
    # metav1.MicroTime needs exactly six digits, so a whole-second time is refused.
    status, body = _err(leases.create_namespaced_lease, NS,
                        _lease("lock", renewTime="2025-06-02T08:00:00.000000Z"))
    assert status == 400 and body["reason"] == "BadRequest"
    assert body["message"] == (
        'Lease in version "v1" cannot be handled as a Lease: spec.renewTime: parsing time '
        '"2025-06-02T08:00:00+00:00" as "2006-01-02T15:04:05.000000Z07:00": cannot parse '
        '"+00:00" as ".000000"'
    )
    status, body = _err(leases.create_namespaced_lease, NS, _lease("lock", leaseDurationSeconds=0))
    assert status == 422 and body["message"] == (
        'Lease.coordination.k8s.io "lock" is invalid: spec.leaseDurationSeconds: '
        "Invalid value: 0: must be greater than 0"
    )
    assert body["details"]["causes"][0]["field"] == "spec.leaseDurationSeconds"
    status, body = _err(leases.create_namespaced_lease, NS, _lease("Lock"))
    assert status == 422 and "metadata.name" in body["message"]
    assert kube.cluster.list("leases", NS) == []


def test_configmaps_crud_with_preconditions(kube):
    core = k8s.CoreV1Api(kube.admin)
    cm = core.create_namespaced_config_map(
        NS, {"metadata": {"name": "surgecast-control"}, "data": {"paused": "false"}}
    )
    core.patch_namespaced_config_map("surgecast-control", NS, {"data": {"paused": "true"}})
    assert core.read_namespaced_config_map("surgecast-control", NS).data == {"paused": "true"}
    status, body = _err(core.patch_namespaced_config_map, "surgecast-control", NS,
                        {"data": {"paused": True}})  # not a string
    assert status == 422 and body["message"].startswith(' "" is invalid: patch: Invalid value:')
    opts = k8s.V1DeleteOptions(preconditions=k8s.V1Preconditions(
        resource_version=cm.metadata.resource_version))
    status, body = _err(core.delete_namespaced_config_map, "surgecast-control", NS, body=opts)
    assert status == 409 and "ResourceVersion in the precondition" in body["message"]
    core.delete_namespaced_config_map("surgecast-control", NS)
    assert core.list_namespaced_config_map(NS).items == []


# --------------------------------------------------------------------------------------------
# 3. validation: 422, 400 or a 500 Status; never a dropped connection


def test_the_deployment_selector_is_immutable(kube):
    apps = k8s.AppsV1Api(kube.admin)
    before = kube.cluster.get("deployments", NS, "resnet18")["metadata"]["resourceVersion"]
    status, body = _err(apps.patch_namespaced_deployment, "resnet18", NS,
                        {"spec": {"selector": {"matchLabels": {"app": "other"}}}})
    assert (status, body["reason"]) == (422, "Invalid")
    assert body["message"].startswith(
        'Deployment.apps "resnet18" is invalid: [spec.selector: Invalid value: '
        '&v1.LabelSelector{MatchLabels:map[string]string{"app":"other"}'
    )
    assert "field is immutable" in body["message"]
    assert [c["field"] for c in body["details"]["causes"]] == [
        "spec.selector", "spec.template.metadata.labels"
    ]
    assert body["details"] | {"causes": None} == {
        "name": "resnet18", "group": "apps", "kind": "Deployment", "causes": None
    }
    assert kube.cluster.get("deployments", NS, "resnet18")["metadata"]["resourceVersion"] == before


def test_quantities_are_parsed_as_resource_parse_quantity_does(kube):
    assert parse_quantity("500m") * 1000 == 500 and parse_quantity("1.5") == pytest.approx(1.5)
    assert parse_quantity("2Gi") == 2 * 2**30 and parse_quantity("1e3") == 1000
    for bad in ("lots", "1.2.3", "5x", "", True):
        with pytest.raises(ValueError):
            parse_quantity(bad)
    pod = _pods(kube)[0]
    body = {"spec": {"containers": [{"name": "server", "resources": {
        "requests": {"cpu": "lots"}, "limits": {"cpu": "lots"}}}]}}
    status, err = _err(k8s.CoreV1Api(kube.api.api_client).patch_namespaced_pod_resize,
                       pod, NS, body)
    assert (status, err["reason"]) == (422, "Invalid")
    assert err["message"].startswith(' "" is invalid: patch: Invalid value: "map[spec:')
    assert err["message"].endswith(
        "quantities must match the regular expression "
        "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
    )
    assert err["details"]["causes"][0]["field"] == "patch"


def test_negative_replicas_are_invalid(kube):
    status, body = _err(k8s.AppsV1Api(kube.api.api_client).patch_namespaced_deployment_scale,
                        "resnet18", NS, {"spec": {"replicas": -1}})
    assert status == 422 and body["message"] == (
        'Scale.autoscaling "resnet18" is invalid: spec.replicas: Invalid value: -1: '
        "must be greater than or equal to 0"
    )
    assert kube.state("resnet18")["replicas"] == 2


@pytest.mark.parametrize(
    ("content_type", "patch", "status", "reason", "text"),
    [
        ("application/json-patch+json", [{"op": "replace", "path": "/spec/nope/x", "value": 1}],
         422, "Invalid", "the server rejected our request due to an error in our request"),
        ("application/json-patch+json", [{"op": "frobnicate", "path": "/spec"}],
         422, "Invalid", "the server rejected our request due to an error in our request"),
        ("application/merge-patch+json", [{"spec": {}}], 400, "BadRequest", "Invalid JSON Patch"),
        ("application/merge-patch+json", {"spec": {"replicas": "three"}}, 422, "Invalid",
         'patch: Invalid value'),
        ("application/strategic-merge-patch+json", {"spec": {"containers": [{"image": "x"}]}},
         500, "", "does not contain declared merge key: name"),
    ],
)
def test_malformed_patches_get_the_real_status(kube, content_type, patch, status, reason, text):
    pod = _pods(kube)[0]
    resource = "resize" if "containers" in json.dumps(patch) else "scale"
    api = k8s.CoreV1Api(kube.api.api_client)
    if resource == "resize":
        call = lambda: api.patch_namespaced_pod_resize(  # noqa: E731
            pod, NS, patch, _content_type=content_type)
    else:
        call = lambda: k8s.AppsV1Api(kube.api.api_client).patch_namespaced_deployment_scale(  # noqa: E731
            "resnet18", NS, patch, _content_type=content_type)
    got, body = _err(call)
    assert (got, body["reason"]) == (status, reason) and text in body["message"]
    assert kube.state("resnet18")["replicas"] == 2


def test_a_handler_failure_is_a_500_status_and_the_server_keeps_serving(kube):
    # A stored object the handler cannot render (a corrupt store): the answer is a Status.
    kube.cluster.objects[("leases", NS, "corrupt")] = {"metadata": None}
    leases = k8s.CoordinationV1Api(kube.admin)
    status, body = _err(leases.patch_namespaced_lease, "corrupt", NS, {"spec": {}})
    assert (status, body["reason"], body["kind"]) == (500, "InternalError", "Status")
    assert body["message"].startswith("Internal error occurred:")
    assert kube.api.scale(NS, "resnet18")["spec"]["replicas"] == 2


# --------------------------------------------------------------------------------------------
# 4. dry runs through validation and admission


def test_a_dry_run_answers_exactly_what_the_write_would(kube):
    apps = k8s.AppsV1Api(kube.api.api_client)
    for dry in ("All", None):
        status, body = _err(apps.patch_namespaced_deployment_scale, "resnet18", NS,
                            {"spec": {"replicas": -2}}, dry_run=dry)
        assert (status, body["reason"]) == (422, "Invalid")
    out = _data(apps.patch_namespaced_deployment_scale(
        "resnet18", NS, {"spec": {"replicas": 4}}, dry_run="All", _preload_content=False))
    assert out["spec"]["replicas"] == 4 and kube.state("resnet18")["replicas"] == 2
    leases = k8s.CoordinationV1Api(kube.api.api_client)
    assert leases.create_namespaced_lease(NS, _lease("lock"), dry_run="All").metadata.name
    assert kube.cluster.list("leases", NS) == []
    assert _err(apps.patch_namespaced_deployment_scale, "resnet18", NS,
                {"spec": {"replicas": 4}}, dry_run="Some")[0] == 400


def test_resource_quota_admission_refuses_a_resize_in_dry_run_and_for_real(kube):
    kube.cluster.quota_millicores = 5000  # two pods of 2 cores use 4000m
    pods, core = _pods(kube), k8s.CoreV1Api(kube.api.api_client)

    def resize(pod: str, cores: str, dry_run=None):
        res = {"requests": {"cpu": cores}, "limits": {"cpu": cores}}
        body = {"spec": {"containers": [{"name": "server", "resources": res}]}}
        return core.patch_namespaced_pod_resize(pod, NS, body, dry_run=dry_run)

    for dry in ("All", None):
        status, body = _err(resize, pods[0], "4", dry_run=dry)
        assert (status, body["reason"]) == (403, "Forbidden")
        assert body["message"] == (
            f'pods "{pods[0]}" is forbidden: exceeded quota: compute-resources, requested: '
            "requests.cpu=2, used: requests.cpu=4, limited: requests.cpu=5"
        )
    assert resize(pods[0], "3", dry_run="All").spec.containers[0].resources.requests["cpu"] == "3"
    assert kube.state("resnet18")["desired_millicores"] == [2000, 2000]
    resize(pods[0], "3")
    assert kube.state("resnet18")["desired_millicores"] == [2000, 3000]
    resize(pods[1], "1")  # a shrink is always admitted


# --------------------------------------------------------------------------------------------
# 5. conflicts from a concurrent writer


def test_an_injected_conflict_is_a_concurrent_write_a_fresh_read_resolves(kube):
    apps = k8s.AppsV1Api(kube.api.api_client)
    rv = apps.read_namespaced_deployment_scale("resnet18", NS).metadata.resource_version
    kube.faults.conflict_next_writes(2)
    for dry in ("All", None):  # a dry run meets the concurrent writer exactly as a write does
        status, body = _err(apps.patch_namespaced_deployment_scale, "resnet18", NS,
                            {"metadata": {"resourceVersion": rv}, "spec": {"replicas": 3}},
                            dry_run=dry)
        assert status == 409 and body["message"] == (
            f'Operation cannot be fulfilled on deployments.apps "resnet18": {STALE}'
        )
    fresh = apps.read_namespaced_deployment_scale("resnet18", NS).metadata.resource_version
    assert fresh != rv and kube.state("resnet18")["replicas"] == 2
    apps.patch_namespaced_deployment_scale(
        "resnet18", NS, {"metadata": {"resourceVersion": fresh}, "spec": {"replicas": 3}})
    assert kube.state("resnet18")["replicas"] == 3
    kube.faults.conflict_next_writes(1)  # an unconditional patch is not conflicted
    apps.patch_namespaced_deployment_scale("resnet18", NS, {"spec": {"replicas": 4}})
    assert kube.state("resnet18")["replicas"] == 4 and kube.faults.conflicts == 0


# --------------------------------------------------------------------------------------------
# 6. Events


def _event(event_namespace: str = NS, **involved) -> dict:
    obj = {"kind": "Deployment", "name": "resnet18", "namespace": NS, **involved}
    return {
        "metadata": {"name": "resnet18.x", "namespace": event_namespace},
        "involvedObject": {k: v for k, v in obj.items() if v is not None},
        "reason": "SurgecastScaled",
        "message": "replicas 2->5",
        "type": "Normal",
    }


@pytest.mark.parametrize(
    ("event", "status", "text"),
    [
        (_event(event_namespace="default"), 400,
         "the namespace of the provided object does not match the namespace sent on the request"),
        (_event(namespace="default"), 422,
         'involvedObject.namespace: Invalid value: "default": does not match event.namespace'),
        (_event(name=None), 422, "involvedObject.name: Required value"),
        (_event(name="Not_A_Name"), 422, 'involvedObject.name: Invalid value: "Not_A_Name"'),
        (_event(kind="deployment"), 422, 'involvedObject.kind: Invalid value: "deployment"'),
    ],
)
def test_events_are_checked_against_the_request_namespace(kube, event, status, text):
    got, body = _err(k8s.CoreV1Api(kube.api.api_client).create_namespaced_event, NS, event)
    assert got == status and text in body["message"]
    assert kube.events("resnet18") == []


# --------------------------------------------------------------------------------------------
# 7. deterministic timing; ports that cannot race


def test_a_delayed_answer_is_lost_on_the_test_clock_without_real_waiting(kube):
    start, wall = kube.now(), time.monotonic()
    kube.faults.delay(r"/scale$", 45.0, method="PATCH")
    with pytest.raises(urllib3.exceptions.ProtocolError):
        k8s.AppsV1Api(kube.api.api_client).patch_namespaced_deployment_scale(
            "resnet18", NS, {"spec": {"replicas": 3}}, _request_timeout=60)
    assert (kube.now() - start).total_seconds() == pytest.approx(45.0)
    assert time.monotonic() - wall < 5.0  # far less than the 45 s the clock moved
    assert kube.state("resnet18")["replicas"] == 3  # the write landed
    assert kube.faults.fired == ["PATCH /apis/apps/v1/namespaces/inference/deployments/"
                                 "resnet18/scale -> delay 45.0s"]


needs_pushgateway = pytest.mark.skipif(
    not promtest.have_binaries("prometheus-pushgateway"),
    reason="needs the Debian package prometheus-pushgateway",
)


@needs_pushgateway
def test_a_taken_port_moves_the_server_to_another(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with promtest.running(promtest.Pushgateway(tmp_path, port=port)) as gateway:
            assert gateway.port != port
            assert gateway.samples("pushgateway_build_info")
        assert "address already in use" in gateway.log_tail().lower()


@needs_pushgateway
def test_a_server_that_never_becomes_ready_fails_with_its_log(tmp_path):
    class Broken(promtest.Pushgateway):
        def args(self) -> list[str]:
            return [*super().args(), "--no-such-flag"]

    with pytest.raises(RuntimeError, match=r"(?s)pushgateway exited with code \d+; log tail:.*"
                                           r"no-such-flag"):
        Broken(tmp_path).start(timeout_s=30)


# --------------------------------------------------------------------------------------------
# 8. the server version; harness options


def test_version_and_the_resize_subresource_before_1_33():
    old = FakeHarness(version=(1, 32))
    try:
        old.add_deployment("resnet18", replicas=1, cores=2)
        info = k8s.VersionApi(old.api.api_client).get_code()
        assert (info.major, info.minor, info.git_version) == ("1", "32", "v1.32.0")
        body = {"spec": {"containers": [{"name": "server", "resources": {
            "requests": {"cpu": "3"}, "limits": {"cpu": "3"}}}]}}
        status, _ = _err(k8s.CoreV1Api(old.api.api_client).patch_namespaced_pod_resize,
                         _pods(old)[0], NS, body)
        assert status == 404
    finally:
        old.close()
    new = FakeHarness()
    try:
        assert k8s.VersionApi(new.api.api_client).get_code().minor == "33"
    finally:
        new.close()


def test_the_harness_forwards_cluster_options():
    h = FakeHarness(deferred={"pod-a"}, start_delay_s=5.0)
    try:
        assert h.cluster.deferred == {"pod-a"} and h.cluster.start_delay_s == 5.0
    finally:
        h.close()


def test_the_harness_kubeconfig_carries_the_actuator_token(kube, tmp_path):
    from actuator.kube import KubeApi, api_client_for

    path = kube.write_kubeconfig(tmp_path / "kubeconfig")
    api = KubeApi(api_client_for(kubeconfig=str(path)))
    try:
        assert api.scale(NS, "resnet18")["spec"]["replicas"] == 2
        assert _err(k8s.AppsV1Api(api.api_client).list_namespaced_deployment, NS)[0] == 403
    finally:
        api.api_client.close()
