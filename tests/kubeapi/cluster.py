"""The objects of the fake API server and the controllers that move them, on a test clock.

What the controllers do, each time the server handles a request or the clock moves:

* HPA: sets its Deployment's replicas to what its metric asks for (``hpa_wants``, default 0)
  clamped to [minReplicas, maxReplicas], so it overrides any other writer of the replicas, as
  a real HPA does; the actuator therefore moves ``minReplicas``.
* Deployment/ReplicaSet: keeps ``spec.replicas`` pods of the current template (pods carry a
  ``pod-template-hash``); deletes surplus pods, unready first, then the newest; during a
  template roll keeps old pods until enough new ones are ready. A new pod is scheduled on the
  first node with room for its CPU request (else it stays Pending) and is Ready
  ``start_delay_s`` after it was created.
* Kubelet resize: a pod whose spec asks for other CPU than it runs with gets
  ``PodResizePending``/``Infeasible`` if no node could ever fit it (request > node allocatable),
  ``PodResizePending``/``Deferred`` if its node has no room now (or a deferral is injected),
  otherwise ``PodResizeInProgress`` for ``resize_delay_s``, after which the container runs with
  the new CPU (``status.containerStatuses[].resources``) and the condition goes.

Readiness and resizes depend only on :class:`Clock`, which the test advances; never on the wall
clock.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import uuid
from dataclasses import dataclass, field

import pandas as pd

BASE_EPOCH_S = pd.Timestamp("2025-06-02T08:00:00Z").timestamp()


class Clock:
    """Seconds since the epoch, moved only by the test."""

    def __init__(self, start_s: float = BASE_EPOCH_S) -> None:
        self._now = float(start_s)
        self._lock = threading.Lock()
        self.listeners: list = []

    @property
    def now(self) -> float:
        with self._lock:
            return self._now

    def timestamp(self) -> pd.Timestamp:
        return pd.Timestamp(self.now, unit="s", tz="UTC")

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += float(seconds)
        for listener in self.listeners:
            listener()

    sleep = advance


def iso_s(epoch_s: float) -> str:
    return pd.Timestamp(epoch_s, unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def cpu_m(value) -> int:
    text = str(value)
    if text.endswith("m"):
        return int(float(text[:-1]))
    return round(float(text) * 1000)


def qos_class(spec: dict) -> str:
    """Guaranteed, Burstable or BestEffort, as the API server derives it."""
    containers = spec.get("containers") or []
    any_set, all_guaranteed = False, True
    for c in containers:
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        any_set = any_set or bool(req) or bool(lim)
        for name in ("cpu", "memory"):
            if name not in lim or (name in req and cpu_or_raw(req[name]) != cpu_or_raw(lim[name])):
                all_guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if all_guaranteed else "Burstable"


def cpu_or_raw(value):
    try:
        return cpu_m(value)
    except ValueError:
        return str(value)


@dataclass
class Node:
    name: str
    allocatable_millicores: int


@dataclass
class PodState:
    """What the kubelet knows of a pod and the API object does not show."""

    created_s: float
    node: str | None
    resize_started_s: float | None = None
    resize_target_m: int | None = None


@dataclass
class FakeCluster:
    """Objects by (resource, namespace, name), with resourceVersions and controllers.

    Attributes:
        clock: the test clock.
        start_delay_s: time from a pod's creation until it is Ready (s).
        resize_delay_s: time an accepted in-place resize takes (s).
        nodes: the nodes pods are scheduled on.
        deferred: pod names whose resizes the kubelet defers (injected), whatever the room.
        hpa_wants: per HPA name, the replicas its metric asks for (default 0: low load, so the
            HPA sits at minReplicas, as a real one does after its scale-down stabilisation).
    """

    clock: Clock
    start_delay_s: float = 30.0
    resize_delay_s: float = 2.0
    nodes: list[Node] = field(default_factory=lambda: [Node("node-1", 64_000)])
    deferred: set[str] = field(default_factory=set)
    hpa_wants: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.pod_state: dict[str, PodState] = {}
        self._rv = 1000
        self._serial = 0
        self.clock.listeners.append(self.reconcile)

    # ----------------------------------------------------------------------------------------
    # object store

    def next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def get(self, resource: str, namespace: str, name: str) -> dict | None:
        return self.objects.get((resource, namespace, name))

    def list(self, resource: str, namespace: str) -> list[dict]:
        return [
            o for (r, ns, _), o in sorted(self.objects.items()) if r == resource and ns == namespace
        ]

    def put(self, resource: str, obj: dict) -> dict:
        """Store ``obj``: new resourceVersion; generation bumped when the spec changed."""
        meta = obj.setdefault("metadata", {})
        key = (resource, meta["namespace"], meta["name"])
        old = self.objects.get(key)
        if old is None:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", iso_s(self.clock.now))
            meta["generation"] = 1
        elif old.get("spec") != obj.get("spec"):
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        meta["resourceVersion"] = self.next_rv()
        self.objects[key] = obj
        return obj

    def delete(self, resource: str, namespace: str, name: str) -> None:
        self.objects.pop((resource, namespace, name), None)
        if resource == "pods":
            self.pod_state.pop(name, None)

    # ----------------------------------------------------------------------------------------
    # set-up helpers (what an administrator creates; not through the actuator's RBAC)

    def add_deployment(
        self,
        namespace: str,
        name: str,
        *,
        replicas: int = 2,
        cores: int = 2,
        memory: str = "2Gi",
        container: str = "server",
        batch_env: str | None = None,
        batch: int = 4,
        ready: bool = True,
    ) -> dict:
        """A Guaranteed inference Deployment (requests == limits, integer cores, cpu
        resizePolicy NotRequired); with ``ready`` its pods are created already Ready."""
        labels = {"app": name}
        env = [{"name": batch_env, "value": str(batch)}] if batch_env else []
        resources = {
            "requests": {"cpu": str(cores), "memory": memory},
            "limits": {"cpu": str(cores), "memory": memory},
        }
        obj = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": dict(labels)},
                "strategy": {"type": "RollingUpdate"},
                "template": {
                    "metadata": {"labels": dict(labels)},
                    "spec": {
                        "containers": [
                            {
                                "name": container,
                                "image": "registry.example/resnet18-server:1.0",
                                "env": env,
                                "resources": resources,
                                "resizePolicy": [
                                    {"resourceName": "cpu", "restartPolicy": "NotRequired"},
                                    {"resourceName": "memory", "restartPolicy": "RestartContainer"},
                                ],
                            }
                        ]
                    },
                },
            },
            "status": {},
        }
        with self.lock:
            self.put("deployments", obj)
            self.reconcile()
            if ready:
                for pod in self.pods_of(namespace, name):
                    self.pod_state[pod["metadata"]["name"]].created_s -= self.start_delay_s
                self.reconcile()
        return obj

    def add_hpa(
        self, namespace: str, name: str, deployment: str, *, min_replicas: int, max_replicas: int
    ) -> dict:
        obj = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "scaleTargetRef": {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": deployment,
                },
                "minReplicas": min_replicas,
                "maxReplicas": max_replicas,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": 70},
                        },
                    }
                ],
            },
            "status": {"currentReplicas": 0, "desiredReplicas": 0},
        }
        with self.lock:
            self.put("horizontalpodautoscalers", obj)
            self.reconcile()
        return obj

    # ----------------------------------------------------------------------------------------
    # views for tests

    def pods_of(self, namespace: str, deployment: str) -> list[dict]:
        return [
            p
            for p in self.list("pods", namespace)
            if p["metadata"].get("labels", {}).get("surgecast.test/deployment") == deployment
        ]

    def state(self, namespace: str, deployment: str) -> dict:
        """What a test compares: replicas, ready pods, CPU per ready pod (millicores)."""
        with self.lock:
            self.reconcile()
            dep = self.get("deployments", namespace, deployment)
            pods = self.pods_of(namespace, deployment)
            ready = [p for p in pods if _ready(p)]
            hpa = next(
                (
                    h
                    for h in self.list("horizontalpodautoscalers", namespace)
                    if h["spec"]["scaleTargetRef"]["name"] == deployment
                ),
                None,
            )
            return {
                "replicas": dep["spec"]["replicas"],
                "pods": len(pods),
                "ready": len(ready),
                "ready_millicores": sorted(_allocated(p) for p in ready),
                "desired_millicores": sorted(_desired(p) for p in pods),
                "template_millicores": cpu_m(
                    dep["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
                ),
                "hpa_min": None if hpa is None else hpa["spec"]["minReplicas"],
            }

    def ready_capacity_millicores(self, namespace: str, deployment: str) -> int:
        return sum(self.state(namespace, deployment)["ready_millicores"])

    # ----------------------------------------------------------------------------------------
    # controllers

    def reconcile(self) -> None:
        with self.lock:
            for hpa in list(self.objects.values()):
                if hpa.get("kind") == "HorizontalPodAutoscaler":
                    self._hpa(hpa)
            for dep in [o for o in list(self.objects.values()) if o.get("kind") == "Deployment"]:
                self._replicasets(dep)
            for pod in [o for o in list(self.objects.values()) if o.get("kind") == "Pod"]:
                self._kubelet(pod)
            for dep in [o for o in list(self.objects.values()) if o.get("kind") == "Deployment"]:
                self._deployment_status(dep)

    def _hpa(self, hpa: dict) -> None:
        ns = hpa["metadata"]["namespace"]
        dep = self.get("deployments", ns, hpa["spec"]["scaleTargetRef"]["name"])
        if dep is None:
            return
        lo, hi = hpa["spec"].get("minReplicas", 1), hpa["spec"]["maxReplicas"]
        replicas = dep["spec"]["replicas"]
        wanted = min(max(self.hpa_wants.get(hpa["metadata"]["name"], 0), lo), hi)
        if wanted != replicas:
            new = copy.deepcopy(dep)
            new["spec"]["replicas"] = wanted
            self.put("deployments", new)
        status = {"currentReplicas": replicas, "desiredReplicas": wanted}
        if hpa.get("status") != status:
            new = copy.deepcopy(hpa)
            new["status"] = status
            self.put("horizontalpodautoscalers", new)

    def _replicasets(self, dep: dict) -> None:
        ns, name = dep["metadata"]["namespace"], dep["metadata"]["name"]
        template = dep["spec"]["template"]
        h = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:8]
        pods = self.pods_of(ns, name)
        current = [p for p in pods if p["metadata"]["labels"].get("pod-template-hash") == h]
        old = [p for p in pods if p not in current]
        replicas = int(dep["spec"]["replicas"])
        while len(current) < replicas:
            current.append(self._create_pod(dep, h))
        surplus = len(current) - replicas
        for pod in self._deletion_order(current)[: max(0, surplus)]:
            self.delete("pods", ns, pod["metadata"]["name"])
        ready_new = sum(1 for p in current[:replicas] if _ready(self._refresh(p)))
        keep_old = max(0, replicas - ready_new)
        for pod in self._deletion_order(old)[: max(0, len(old) - keep_old)]:
            self.delete("pods", ns, pod["metadata"]["name"])

    def _refresh(self, pod: dict) -> dict:
        meta = pod["metadata"]
        return self.get("pods", meta["namespace"], meta["name"]) or pod

    def _deletion_order(self, pods: list[dict]) -> list[dict]:
        """Unready first, then the newest (as the ReplicaSet controller ranks them)."""
        return sorted(
            pods,
            key=lambda p: (
                _ready(p),
                -self.pod_state.get(p["metadata"]["name"], PodState(0, None)).created_s,
                p["metadata"]["name"],
            ),
        )

    def _create_pod(self, dep: dict, template_hash: str) -> dict:
        ns, name = dep["metadata"]["namespace"], dep["metadata"]["name"]
        self._serial += 1
        pod_name = f"{name}-{template_hash[:5]}-{self._serial:04d}"
        spec = copy.deepcopy(dep["spec"]["template"]["spec"])
        labels = dict(dep["spec"]["template"]["metadata"].get("labels") or {})
        labels.update({"pod-template-hash": template_hash, "surgecast.test/deployment": name})
        request = sum(_container_cpu(c) for c in spec["containers"])
        node = self._node_with_room(request)
        if node is not None:
            spec["nodeName"] = node
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": ns,
                "labels": labels,
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "ReplicaSet",
                        "name": f"{name}-{template_hash}",
                        "uid": str(uuid.uuid4()),
                        "controller": True,
                    }
                ],
            },
            "spec": spec,
            "status": {
                "phase": "Pending",
                "qosClass": qos_class(spec),
                "conditions": [],
                "containerStatuses": [],
            },
        }
        self.pod_state[pod_name] = PodState(self.clock.now, node)
        self.put("pods", pod)
        self._kubelet(pod)
        return self.get("pods", ns, pod_name)

    def _node_usage(self, node: str, skip: str | None = None) -> int:
        used = 0
        for pod_name, state in self.pod_state.items():
            if state.node != node or pod_name == skip:
                continue
            pod = next(
                (o for (r, _, n), o in self.objects.items() if r == "pods" and n == pod_name), None
            )
            if pod is None:
                continue
            if _condition_reason(pod, "PodResizePending") == "Infeasible":
                used += _allocated(pod)  # a resize that can never happen reserves nothing
            else:
                used += max(_desired(pod), _allocated(pod))
        return used

    def _node_with_room(self, request_m: int) -> str | None:
        for node in self.nodes:
            if self._node_usage(node.name) + request_m <= node.allocatable_millicores:
                return node.name
        return None

    def _kubelet(self, pod: dict) -> None:
        """Phase, readiness, allocated resources and resize conditions of one pod."""
        meta = pod["metadata"]
        state = self.pod_state.get(meta["name"])
        if state is None:
            return
        now = self.clock.now
        new = copy.deepcopy(pod)
        status = new["status"]
        if state.node is None:
            status["phase"] = "Pending"
            _set_condition(status, "PodScheduled", "False", "Unschedulable", now)
            _set_condition(status, "Ready", "False", None, now)
        else:
            status["phase"] = "Running"
            _set_condition(status, "PodScheduled", "True", None, now)
            ready = now >= state.created_s + self.start_delay_s
            _set_condition(status, "Ready", "True" if ready else "False", None, now)
            if not status.get("containerStatuses"):
                status["containerStatuses"] = [
                    {
                        "name": c["name"],
                        "image": c.get("image", ""),
                        "imageID": f"{c.get('image', '')}@sha256:{'0' * 64}",
                        "containerID": f"containerd://{uuid.uuid4().hex}",
                        "ready": False,
                        "started": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": iso_s(state.created_s)}},
                        "resources": copy.deepcopy(c.get("resources") or {}),
                    }
                    for c in new["spec"]["containers"]
                ]
                status["startTime"] = iso_s(state.created_s)
                status["hostIP"] = status["podIP"] = "10.0.0.1"
            for cs in status["containerStatuses"]:
                cs["ready"] = ready
                cs["allocatedResources"] = dict(cs["resources"].get("requests") or {})
            self._resize(new, state, now)
        if new != pod:
            self.put("pods", new)

    def _resize(self, pod: dict, state: PodState, now: float) -> None:
        status = pod["status"]
        desired, allocated = _desired(pod), _allocated(pod)
        if desired == allocated:
            _drop_condition(status, "PodResizePending")
            _drop_condition(status, "PodResizeInProgress")
            state.resize_started_s = None
            return
        node = next(n for n in self.nodes if n.name == state.node)
        if state.resize_started_s is not None and state.resize_target_m == desired:
            if now >= state.resize_started_s + self.resize_delay_s:
                for c, cs in zip(
                    pod["spec"]["containers"], status["containerStatuses"], strict=True
                ):
                    cs["resources"] = copy.deepcopy(c.get("resources") or {})
                _drop_condition(status, "PodResizeInProgress")
                state.resize_started_s = None
            return
        if desired > node.allocatable_millicores:
            _drop_condition(status, "PodResizeInProgress")
            _set_condition(
                status,
                "PodResizePending",
                "True",
                "Infeasible",
                now,
                f"Node didn't have enough capacity: cpu, requested: {desired}, "
                f"capacity: {node.allocatable_millicores}",
            )
            return
        room = node.allocatable_millicores - self._node_usage(
            node.name, skip=pod["metadata"]["name"]
        )
        if pod["metadata"]["name"] in self.deferred or desired > room:
            _drop_condition(status, "PodResizeInProgress")
            _set_condition(
                status,
                "PodResizePending",
                "True",
                "Deferred",
                now,
                f"Node didn't have enough resource: cpu, requested: {desired}, "
                f"used: {node.allocatable_millicores - room}, "
                f"capacity: {node.allocatable_millicores}",
            )
            return
        _drop_condition(status, "PodResizePending")
        _set_condition(status, "PodResizeInProgress", "True", None, now)
        state.resize_started_s, state.resize_target_m = now, desired

    def _deployment_status(self, dep: dict) -> None:
        ns, name = dep["metadata"]["namespace"], dep["metadata"]["name"]
        pods = self.pods_of(ns, name)
        ready = sum(1 for p in pods if _ready(p))
        status = {
            "observedGeneration": dep["metadata"].get("generation", 1),
            "replicas": len(pods),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "updatedReplicas": len(pods),
        }
        if dep.get("status") != status:
            new = copy.deepcopy(dep)
            new["status"] = status
            self.put("deployments", new)


def _container_cpu(c: dict) -> int:
    return cpu_m(((c.get("resources") or {}).get("requests") or {}).get("cpu", "0"))


def _desired(pod: dict) -> int:
    return sum(_container_cpu(c) for c in pod["spec"]["containers"])


def _allocated(pod: dict) -> int:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    if not statuses:
        return _desired(pod)
    return sum(_container_cpu(cs) for cs in statuses)


def _ready(pod: dict) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in pod.get("status", {}).get("conditions") or []
    )


def _condition_reason(pod: dict, kind: str) -> str | None:
    for cond in pod.get("status", {}).get("conditions") or []:
        if cond["type"] == kind and cond["status"] == "True":
            return cond.get("reason")
    return None


def _set_condition(status, kind, value, reason, now, message=None) -> None:
    conditions = status.setdefault("conditions", [])
    for cond in conditions:
        if cond["type"] == kind:
            if cond["status"] != value or cond.get("reason") != reason:
                cond.update(status=value, lastTransitionTime=iso_s(now))
                cond.pop("reason", None)
                cond.pop("message", None)
                if reason:
                    cond["reason"] = reason
                if message:
                    cond["message"] = message
            return
    cond = {"type": kind, "status": value, "lastTransitionTime": iso_s(now)}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    conditions.append(cond)


def _drop_condition(status, kind) -> None:
    status["conditions"] = [c for c in status.get("conditions") or [] if c["type"] != kind]
