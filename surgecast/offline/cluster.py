"""A Kubernetes control plane in memory: the objects and the controllers that move them, on a
clock the caller moves.

The backtest runs the actuator against it in process (:mod:`surgecast.offline.port`); the
tests serve it over HTTP to the official client (``tests/kubeapi``). Handler semantics (routing,
validation, admission, dry runs, preconditions) live in :mod:`surgecast.offline.apiserver`, so
both fronts answer alike.

Each controller follows the Kubernetes component it stands for, cited where it is defined:

* **HPA** (:meth:`ClusterModel._hpa_sync`, ``pkg/controller/podautoscaler/horizontal.go``): acts
  only at its sync period (15 s); per-pod CPU metrics from the resource metrics API
  (:attr:`ClusterModel.metrics`, or the utilisation a test states with
  :meth:`ClusterModel.set_hpa_utilisation`), grouped as ``replica_calculator.go`` does (pods
  unready, starting within the CPU initialisation period, or missing metrics); External metrics
  of target type AverageValue (what a KEDA ScaledObject creates); tolerance, scale-down
  stabilisation, rate limits and ``spec.behavior`` as the real controller.
* **Deployment** (:meth:`ClusterModel._deployment`, ``pkg/controller/deployment/rolling.go``):
  one ReplicaSet per pod template, rolling updates bounded by maxSurge/maxUnavailable.
* **ReplicaSet** (:meth:`ClusterModel._replicaset`, ``pkg/controller/replicaset/
  replica_set.go``): counts only active pods (not terminating), creates replacements, deletes
  the lowest-ranked pods, and is refused by a namespace CPU quota (``quota_millicores``).
* **Scheduler** (:meth:`ClusterModel._schedule`): Pending pods, oldest first, on the first
  joined node with room, retried at every reconcile.
* **Kubelet** (:meth:`ClusterModel._kubelet`): readiness ``start_delay_s`` after scheduling;
  graceful termination; in-place resizes through allocated -> actual resources with the
  ``PodResizePending``/``PodResizeInProgress`` conditions of Kubernetes 1.33 (KEP-1287), each
  actuated in a delay drawn from a seeded log-normal around ``resize_delay_s``.
* **Cluster autoscaler** (:meth:`ClusterModel._node_pool`, kubernetes/autoscaler
  ``cluster-autoscaler/core/static_autoscaler.go``), when the model has a :class:`NodePool`:
  nodes added for pods the scheduler left Pending for lack of CPU, schedulable
  ``provision_s`` later; a node empty for ``scale_down_unneeded_s`` removed.

Time is the :class:`Clock` the caller (a test, or the backtest's simulation) advances, never the
wall clock. When the clock jumps, the
controllers are stepped through every instant in between at which something is due (an HPA
sync, a pod turning Ready, a grace period ending, a resize completing), so what a test sees does
not depend on how coarsely it advances the clock.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd

BASE_EPOCH_S = pd.Timestamp("2025-06-02T08:00:00Z").timestamp()

HPA_SYNC_PERIOD_S = 15.0
"""``--horizontal-pod-autoscaler-sync-period`` default (kube-controller-manager)."""
HPA_TOLERANCE = 0.1
"""``--horizontal-pod-autoscaler-tolerance`` default: no change within 10 % of the target."""
HPA_DOWNSCALE_STABILISATION_S = 300.0
"""``--horizontal-pod-autoscaler-downscale-stabilization`` default."""
HPA_CPU_INITIALIZATION_PERIOD_S = 300.0
"""``--horizontal-pod-autoscaler-cpu-initialization-period`` default: for this long after a
pod starts, its CPU sample counts only if the pod is Ready and the sample's whole window
followed its last readiness change."""
HPA_INITIAL_READINESS_DELAY_S = 30.0
"""``--horizontal-pod-autoscaler-initial-readiness-delay`` default: after the initialisation
period, an unready pod is ignored if its readiness last changed within this long of its start
(it has never been ready)."""
STATED_METRIC_WINDOW_S = 15.0
"""The window of a utilisation a test states (metrics-server's default resolution)."""
DEFAULT_GRACE_S = 30
"""``spec.terminationGracePeriodSeconds`` default (``pkg/apis/core/v1/defaults.go``)."""
QUOTA_NAME = "compute-quota"


def clone(obj):
    """A deep copy of a JSON-like object (dicts, lists and immutable scalars), the only kind
    the API stores; several times faster than ``copy.deepcopy``, which the model's every read
    and write pays."""
    kind = type(obj)
    if kind is dict:
        return {k: clone(v) for k, v in obj.items()}
    if kind is list:
        return [clone(v) for v in obj]
    return obj


class Clock:
    """Seconds since the epoch, moved only by its owner (a test or a simulation)."""

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
        if seconds < 0:
            raise ValueError(f"the clock only moves forward, not by {seconds} s")
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
    """A node: allocatable CPU (millicores) and the kubelet's CPU manager policy (``none`` or
    ``static``; with ``static`` the 1.33 kubelet refuses in-place resizes of Guaranteed pods).

    Attributes:
        joins_s: when its kubelet registers and the scheduler may bind pods to it (epoch s);
            before then it is being provisioned (the cloud bills it, nothing runs on it).
    """

    name: str
    allocatable_millicores: int
    cpu_manager_policy: str = "none"
    joins_s: float = -math.inf


@dataclass(frozen=True)
class NodePool:
    """The cluster autoscaler of one node group (kubernetes/autoscaler, cluster-autoscaler);
    its new nodes have the shape of the model's first node (the group's template).

    Attributes:
        max_nodes: ``--nodes=min:max:group``'s max: nodes, provisioning ones included.
        min_nodes: that flag's min: empty nodes are not removed below it.
        provision_s: from the scale-up until the new node's kubelet registers (s): cloud VM
            boot and node bootstrap, typically 1-3 minutes.
        scale_down_unneeded_s: ``--scale-down-unneeded-time`` (default 10 min): how long a
            node stays empty before it is removed.
    """

    max_nodes: int
    min_nodes: int = 1
    provision_s: float = 120.0
    scale_down_unneeded_s: float = 600.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_nodes <= self.max_nodes:
            raise ValueError(
                f"node pool: need 1 <= min_nodes <= max_nodes, not {self.min_nodes}, "
                f"{self.max_nodes}"
            )
        for name in ("provision_s", "scale_down_unneeded_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"node pool: {name} must be a finite number >= 0, not {value}")


@dataclass
class PodState:
    """What the kubelet and the controllers know of a pod and the API object does not show.

    Attributes:
        created_s: creation time (epoch s).
        node: the node it is bound to, None while Pending.
        owner: the ReplicaSet that owns it.
        scheduled_s: when it was bound (epoch s); containers start then.
        allocated: per container, the resources the kubelet admitted (requests and limits).
        actual: per container, the resources the containers run with.
        resize_started_s: when the kubelet began actuating ``allocated`` (epoch s).
        pending_since_s: since when a resize has waited as Deferred (epoch s).
        deleted_s: when deletion was requested (epoch s), None while alive.
        grace_s: the deletion's grace period (s).
    """

    created_s: float
    node: str | None
    owner: str = ""
    scheduled_s: float | None = None
    allocated: dict[str, dict] | None = None
    actual: dict[str, dict] | None = None
    resize_started_s: float | None = None
    pending_since_s: float | None = None
    deleted_s: float | None = None
    grace_s: float = DEFAULT_GRACE_S
    resize_delay_s: float = 0.0
    """How long the runtime takes to actuate the resize under way (s), drawn when it starts."""
    idle_rv: str | None = None
    """The pod's resourceVersion when the kubelet last found nothing to do on a Ready pod with
    no resize under way: until the pod is written again, a sync would find nothing again."""


@dataclass
class ReplicaSet:
    """A ReplicaSet as the Deployment controller keeps it (not served over the API)."""

    namespace: str
    name: str
    deployment: str
    template_hash: str
    template: dict
    replicas: int
    created_s: float
    serial: int
    uid: str = ""


@dataclass
class HpaState:
    """The HPA controller's memory of one HPA (``HorizontalController`` fields).

    Attributes:
        next_sync_s: when the HPA is next processed (epoch s).
        recommendations: (time s, replicas) of past unstabilised recommendations.
        scale_up_events, scale_down_events: (time s, replica change) of past rescales, for the
            ``spec.behavior`` rate policies.
    """

    next_sync_s: float
    recommendations: list[tuple[float, int]] = field(default_factory=list)
    scale_up_events: list[tuple[float, int]] = field(default_factory=list)
    scale_down_events: list[tuple[float, int]] = field(default_factory=list)


@dataclass(frozen=True)
class PodMetric:
    """One pod's CPU as the resource metrics API (metrics.k8s.io, served by metrics-server)
    reports it (``PodMetric`` in pkg/controller/podautoscaler/metrics/interfaces.go).

    Attributes:
        millicores: the average CPU its containers used over the window.
        timestamp_s: the end of the window (epoch s).
        window_s: the window's length (s).
    """

    millicores: int
    timestamp_s: float
    window_s: float


@dataclass
class ClusterModel:
    """Objects by (resource, namespace, name), with resourceVersions and controllers.

    Attributes:
        clock: the test clock.
        start_delay_s: time from a pod's scheduling until it is Ready (s).
        resize_delay_s: time the runtime takes to actuate an admitted in-place resize (s): the
            median when ``resize_spread`` > 0.
        resize_spread: sigma of the log-normal each resize's delay is drawn from (median
            ``resize_delay_s``); 0: every resize takes exactly ``resize_delay_s``. A resize
            waits for the kubelet's pod sync and the runtime's container update, which queue
            behind other work, so its time is right-skewed: with sigma 0.5 one in 20 takes
            over 2.2 times the median.
        nodes: the nodes pods are scheduled on (the autoscaler adds and removes some).
        node_pool: the cluster autoscaler of the node group; None: the nodes are fixed.
        deferred: pod or node names whose resizes the kubelet defers (injected), whatever the
            room.
        resize_errors: pod or node name -> message: the runtime fails to actuate admitted
            resizes there (``PodResizeInProgress`` with reason ``Error``; the containers keep
            their old resources) until the entry is removed.
        stuck_resizes: pod or node names whose admitted resizes never complete (stay
            ``PodResizeInProgress``).
        quota_millicores: a ResourceQuota ``requests.cpu`` hard limit per namespace
            (millicores); None: no quota.
        hpa_utilisation: per HPA name, the average CPU utilisation of its ready pods (% of
            their request) the metrics API reports; unset: 0 % (idle).
        external_values: per External metric name, the value the external metrics API
            reports (what a test states); unset: no value (the metric fails).
        hpa_sync_period_s, hpa_tolerance, hpa_downscale_stabilisation_s,
            hpa_cpu_initialization_period_s, hpa_initial_readiness_delay_s: the
            kube-controller-manager's HPA flags.
        seed: seeds the uids and container ids, so that a scenario replays identically.
        metrics: the resource metrics API: called at an HPA sync with the HPA and its target's
            live pods, answers a :class:`PodMetric` per pod it has one for. The backtest's
            engine sets it from the CPU the served load keeps busy, scraped as metrics-server
            scrapes it. None: ``hpa_utilisation`` (what a test states), fresh at every sync.
        external_metrics: the external metrics API (KEDA's metrics adapter): called at an HPA
            sync with the HPA and its External metric's ``metric`` object, answers the value
            (the sum of the series) or None. None: ``external_values``.
        follow_clock: reconcile whenever the clock moves (tests). A simulation that moves the
            clock every second turns it off and reconciles only when something is due
            (:meth:`next_due_s`) or it writes, which gives the same states at less cost.
    """

    clock: Clock
    start_delay_s: float = 30.0
    resize_delay_s: float = 2.0
    resize_spread: float = 0.0
    nodes: list[Node] = field(default_factory=lambda: [Node("node-1", 64_000)])
    node_pool: NodePool | None = None
    deferred: set[str] = field(default_factory=set)
    resize_errors: dict[str, str] = field(default_factory=dict)
    stuck_resizes: set[str] = field(default_factory=set)
    quota_millicores: int | None = None
    hpa_utilisation: dict[str, float] = field(default_factory=dict)
    external_values: dict[str, float] = field(default_factory=dict)
    hpa_sync_period_s: float = HPA_SYNC_PERIOD_S
    hpa_tolerance: float = HPA_TOLERANCE
    hpa_downscale_stabilisation_s: float = HPA_DOWNSCALE_STABILISATION_S
    hpa_cpu_initialization_period_s: float = HPA_CPU_INITIALIZATION_PERIOD_S
    hpa_initial_readiness_delay_s: float = HPA_INITIAL_READINESS_DELAY_S
    seed: int = 0
    metrics: Callable[[dict, list[dict]], dict[str, PodMetric]] | None = None
    external_metrics: Callable[[dict, dict], float | None] | None = None
    follow_clock: bool = True

    def __post_init__(self) -> None:
        if self.quota_millicores is not None and self.quota_millicores < 0:
            raise ValueError(f"quota_millicores must be >= 0, not {self.quota_millicores}")
        for node in self.nodes:
            if node.cpu_manager_policy not in ("none", "static"):
                raise ValueError(
                    f"node {node.name}: cpu_manager_policy must be 'none' or 'static', not "
                    f"{node.cpu_manager_policy!r}"
                )
        if not self.nodes:
            raise ValueError("the cluster needs at least one node")
        if len({n.name for n in self.nodes}) != len(self.nodes):
            raise ValueError("node names must be unique")
        for name in ("resize_delay_s", "resize_spread"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, not {value}")
        if self.node_pool is not None and len(self.nodes) > self.node_pool.max_nodes:
            raise ValueError(
                f"{len(self.nodes)} nodes are more than the node pool's max_nodes "
                f"{self.node_pool.max_nodes}"
            )
        self.lock = threading.RLock()
        self.objects: dict[tuple[str, str, str], dict] = {}
        self._pod_keys: dict[str, tuple[str, str, str]] = {}  # pod name -> its key in objects
        self.pod_state: dict[str, PodState] = {}
        self.replicasets: dict[tuple[str, str], ReplicaSet] = {}
        self.hpa_state: dict[tuple[str, str], HpaState] = {}
        self._rv = 1000
        self._settled: tuple[float, int] | None = None
        self._serial = 0
        self._rng = random.Random(self.seed)
        # Resize delays from a generator of their own, so that how many resizes a run makes
        # never shifts the uids and container ids the other one gives.
        self._resize_rng = random.Random(f"resize-{self.seed}")
        self._now = self.clock.now
        self._provisioning = {n.name for n in self.nodes if n.joins_s > self._now}
        self._empty_since: dict[str, float] = {}
        self._nodes_added = 0
        if self.follow_clock:
            self.clock.listeners.append(self.reconcile)

    def new_uid(self) -> str:
        """A random (version 4) UUID from the cluster's seeded generator."""
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    @property
    def now(self) -> float:
        """The instant the controllers are at (epoch s); the clock's time after a reconcile."""
        return self._now

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
            meta.setdefault("uid", self.new_uid())
            meta.setdefault("creationTimestamp", iso_s(self._now))
            meta["generation"] = 1
        elif old.get("spec") != obj.get("spec"):
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        meta["resourceVersion"] = self.next_rv()
        self.objects[key] = obj
        if resource == "pods":
            self._pod_keys[meta["name"]] = key
        if resource == "horizontalpodautoscalers" and old is None:
            self._hpa_created(obj)
        return obj

    def delete(
        self, resource: str, namespace: str, name: str, *, grace_period_s: float | None = None
    ) -> None:
        """Delete an object. A pod is deleted gracefully, as the API server does it
        (``staging/src/k8s.io/apiserver/pkg/registry/rest/delete.go``, ``BeforeDelete``):
        ``metadata.deletionTimestamp`` = now + grace and ``deletionGracePeriodSeconds`` = grace
        (default the pod's ``terminationGracePeriodSeconds``); it stays listed, not Ready, on
        its node until the grace period has passed. Any other object goes at once."""
        with self.lock:
            if resource != "pods":
                self.objects.pop((resource, namespace, name), None)
                return
            pod = self.get("pods", namespace, name)
            state = self.pod_state.get(name)
            if pod is None or state is None or state.deleted_s is not None:
                return
            grace = grace_period_s
            if grace is None:
                grace = pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE_S)
            if grace < 0:
                raise ValueError(f"grace_period_s must be >= 0, not {grace}")
            if state.node is None:
                grace = 0  # never ran: nothing to stop (pkg/registry/core/pod/strategy.go)
            state.deleted_s, state.grace_s = self._now, float(grace)
            new = clone(pod)
            new["metadata"]["deletionTimestamp"] = iso_s(self._now + grace)
            new["metadata"]["deletionGracePeriodSeconds"] = int(grace)
            self.put("pods", new)

    def _remove_pod(self, namespace: str, name: str) -> None:
        self.objects.pop(("pods", namespace, name), None)
        self._pod_keys.pop(name, None)
        self.pod_state.pop(name, None)
        # A deletion is a write (etcd's revision moves): the scheduler sees the freed room in
        # the same instant, so Pending pods are bound when the terminated pod goes.
        self.next_rv()

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
        strategy: dict | None = None,
    ) -> dict:
        """A Guaranteed inference Deployment (requests == limits, integer cores, cpu
        resizePolicy NotRequired); with ``ready`` its pods are created already Ready.

        Args:
            strategy: ``spec.strategy`` (default RollingUpdate with the API defaults, 25 %
                maxSurge and maxUnavailable).
        """
        if replicas < 0 or cores <= 0:
            raise ValueError(f"replicas must be >= 0 and cores > 0, not {replicas}, {cores}")
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
                "strategy": strategy
                or {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
                },
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
                        ],
                        "terminationGracePeriodSeconds": DEFAULT_GRACE_S,
                    },
                },
            },
            "status": {},
        }
        with self.lock:
            self.reconcile()
            self.put("deployments", obj)
            self._settle()
            if ready:
                for pod in self.pods_of(namespace, name):
                    state = self.pod_state[pod["metadata"]["name"]]
                    if state.scheduled_s is not None:
                        state.scheduled_s -= self.start_delay_s
                        state.created_s -= self.start_delay_s
                self._settle()
        return obj

    def add_hpa(
        self,
        namespace: str,
        name: str,
        deployment: str,
        *,
        min_replicas: int,
        max_replicas: int,
        target_utilisation: int = 70,
        behavior: dict | None = None,
        metrics: list[dict] | None = None,
    ) -> dict:
        """An autoscaling/v2 HPA on the Deployment's CPU utilisation (``target_utilisation`` %
        of the request), or on ``metrics`` when given (e.g. :func:`external_average_value`, the
        HPA a KEDA ScaledObject creates). Its first sync is one sync period after its creation:
        the controller queues every HPA with the resync delay (``enqueueHPA`` in
        horizontal.go)."""
        if not 1 <= min_replicas <= max_replicas:
            raise ValueError(f"need 1 <= min_replicas <= max_replicas, not {min_replicas}, "
                             f"{max_replicas}")
        if metrics is None:
            metrics = [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": target_utilisation},
                    },
                }
            ]
        spec = {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "metrics": clone(metrics),
        }
        if behavior is not None:
            spec["behavior"] = clone(behavior)
        obj = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
            "status": {"currentReplicas": 0, "desiredReplicas": 0},
        }
        with self.lock:
            self.reconcile()
            self.put("horizontalpodautoscalers", obj)
            self._settle()
        return obj

    def set_hpa_utilisation(self, hpa_name: str, percent: float) -> None:
        """State the load: the average CPU utilisation of the HPA's ready pods, in % of their
        CPU request, as the metrics API reports it from the next HPA sync on."""
        if not math.isfinite(percent) or percent < 0:
            raise ValueError(f"utilisation of {hpa_name} must be a finite % >= 0, not {percent}")
        with self.lock:
            self.hpa_utilisation[hpa_name] = float(percent)

    def set_external_metric(self, metric_name: str, value: float) -> None:
        """State an External metric's value (the sum over its series, e.g. requests per
        second), as the external metrics API reports it from the next HPA sync on."""
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"external metric {metric_name} must be finite and >= 0, not {value}")
        with self.lock:
            self.external_values[metric_name] = float(value)

    # ----------------------------------------------------------------------------------------
    # views for tests

    def pods_of(self, namespace: str, deployment: str) -> list[dict]:
        """Every pod of the Deployment, terminating ones included (as a list shows them)."""
        return [
            p
            for p in self.list("pods", namespace)
            if p["metadata"].get("labels", {}).get("surgecast.test/deployment") == deployment
        ]

    def live_pods_of(self, namespace: str, deployment: str) -> list[dict]:
        return [p for p in self.pods_of(namespace, deployment) if not _terminating(p)]

    def terminating_pods_of(self, namespace: str, deployment: str) -> list[dict]:
        with self.lock:
            self.reconcile()
            return [p for p in self.pods_of(namespace, deployment) if _terminating(p)]

    def state(self, namespace: str, deployment: str) -> dict:
        """What a test compares: replicas, live pods (not terminating, as ``kubectl get``
        counts a Deployment's pods), ready pods, CPU per ready pod (millicores, what the
        containers run with)."""
        with self.lock:
            self.reconcile()
            dep = self.get("deployments", namespace, deployment)
            pods = self.live_pods_of(namespace, deployment)
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
                "hpa_min": None if hpa is None else hpa["spec"].get("minReplicas", 1),
            }

    def ready_capacity_millicores(self, namespace: str, deployment: str) -> int:
        return sum(self.state(namespace, deployment)["ready_millicores"])

    def node_used_millicores(self, node: str) -> int:
        """CPU the scheduler counts as taken on ``node`` (terminating pods included)."""
        with self.lock:
            self.reconcile()
            return self._node_usage(node)

    def quota_used_millicores(self, namespace: str) -> int:
        """CPU requests charged to the namespace's quota (see :meth:`_quota_charge`)."""
        with self.lock:
            return sum(
                self._quota_charge(p) for p in self.list("pods", namespace) if self._charged(p)
            )

    def quota_room_millicores(self, namespace: str) -> int | None:
        """Millicores of requests.cpu the quota still admits in ``namespace``; None: no
        quota."""
        if self.quota_millicores is None:
            return None
        return self.quota_millicores - self.quota_used_millicores(namespace)

    # ----------------------------------------------------------------------------------------
    # the loop

    def reconcile(self) -> None:
        """Bring every controller to the clock's time, stepping through each instant in
        between at which something is due."""
        with self.lock:
            target = self.clock.now
            while True:
                due = [t for t in self._due_times() if self._now < t <= target]
                if not due:
                    break
                self._now = min(due)
                self._settle()
            if target <= self._now and self._settled == (self._now, self._rv):
                return  # nothing written and no time passed since the controllers settled
            self._now = max(self._now, target)
            self._settle()
            self._settled = (self._now, self._rv)

    def next_due_s(self) -> float:
        """The next instant (epoch s) at which a controller has something to do (inf: none);
        until then the objects stay as they are."""
        now = self._now
        return min((t for t in self._due_times() if t > now), default=math.inf)

    def _due_times(self) -> list[float]:
        times = [s.next_sync_s for s in self.hpa_state.values()]
        for name, state in self.pod_state.items():
            if state.deleted_s is not None:
                times.append(state.deleted_s + state.grace_s)
                continue
            if state.scheduled_s is not None:
                times.append(state.scheduled_s + self.start_delay_s)
            if state.resize_started_s is not None and not self._injected(
                self.stuck_resizes, name, state.node
            ):
                times.append(state.resize_started_s + state.resize_delay_s)
        times.extend(n.joins_s for n in self.nodes if n.name in self._provisioning)
        if self.node_pool is not None:
            unneeded = self.node_pool.scale_down_unneeded_s
            times.extend(t + unneeded for t in self._empty_since.values())
        return times

    def _settle(self, max_passes: int = 25) -> None:
        """Run the controllers at ``self.now`` until nothing changes (each reacts to the
        others' writes within the same instant, as watches make them do)."""
        for _ in range(max_passes):
            before = self._rv
            for key, hpa in list(self.objects.items()):
                if key[0] == "horizontalpodautoscalers":
                    self._hpa(hpa)
            for key in list(self.objects):
                if key[0] == "deployments":
                    self._deployment(self.objects[key])
            for rs in sorted(self.replicasets.values(), key=lambda r: (r.created_s, r.serial)):
                self._replicaset(rs)
            self._schedule()
            self._node_pool()
            self._kubelets()
            for key in list(self.objects):
                if key[0] == "deployments":
                    self._deployment_status(self.objects[key])
            if self._rv == before:
                return

    # ----------------------------------------------------------------------------------------
    # HPA controller

    def _hpa_created(self, hpa: dict) -> None:
        meta = hpa["metadata"]
        self.hpa_state[(meta["namespace"], meta["name"])] = HpaState(
            next_sync_s=self._now + self.hpa_sync_period_s
        )

    def _hpa(self, hpa: dict) -> None:
        """Process the HPA if its sync is due: every HPA is requeued with the resync delay
        (``enqueueHPA``/``processNextWorkItem`` in horizontal.go), so a change to its spec
        (a raised minReplicas) acts at the next sync, not at once."""
        meta = hpa["metadata"]
        state = self.hpa_state.get((meta["namespace"], meta["name"]))
        if state is None or state.next_sync_s > self._now:
            return
        while state.next_sync_s <= self._now:
            state.next_sync_s += self.hpa_sync_period_s
        self._hpa_sync(hpa, state)

    def _hpa_sync(self, hpa: dict, state: HpaState) -> None:
        """``reconcileAutoscaler`` (pkg/controller/podautoscaler/horizontal.go): out-of-range
        replicas go straight to the bound; otherwise the metric's proposal is stabilised and
        rate-limited, then clamped to [minReplicas, maxReplicas].

        Documented in https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/
        #algorithm-details and #configurable-scaling-behavior.
        """
        ns, spec = hpa["metadata"]["namespace"], hpa["spec"]
        dep = self.get("deployments", ns, spec["scaleTargetRef"]["name"])
        status = clone(hpa.get("status") or {})
        if dep is None:
            _set_condition(status, "AbleToScale", "False", "FailedGetScale", self._now,
                           "the HPA controller was unable to get the target's current scale")
            self._put_status("horizontalpodautoscalers", hpa, status)
            return
        lo, hi = int(spec.get("minReplicas", 1)), int(spec["maxReplicas"])
        current = int(dep["spec"]["replicas"])
        limited = ("False", "DesiredWithinRange", "the desired count is within the acceptable "
                   "range")
        metric = None
        if current == 0 and lo != 0:
            desired, rescale = 0, False  # scaled to zero by hand: autoscaling is disabled
            _set_condition(status, "ScalingActive", "False", "ScalingDisabled", self._now,
                           "scaling is disabled since the replica count of the target is zero")
        else:
            if current > hi:
                desired = hi
                limited = ("True", "TooManyReplicas", "the desired replica count is more than "
                           "the maximum replica count")
            elif current < lo:
                desired = lo
                limited = ("True", "TooFewReplicas", "the desired replica count is less than "
                           "the minimum replica count")
            else:
                proposal, metric, found = self._hpa_metric_replicas(hpa, dep, current)
                if proposal is None:
                    reason, message = found
                    _set_condition(status, "ScalingActive", "False", reason, self._now,
                                   f"the HPA was unable to compute the replica count: {message}")
                    status.update(currentReplicas=current, desiredReplicas=current)
                    self._put_status("horizontalpodautoscalers", hpa, status)
                    return
                _set_condition(status, "ScalingActive", "True", "ValidMetricFound", self._now,
                               "the HPA was able to successfully calculate a replica count from "
                               f"{found}")
                if spec.get("behavior") is None:
                    desired, limited = self._normalise(state, current, proposal, lo, hi)
                else:
                    desired, limited = self._normalise_with_behavior(
                        state, spec["behavior"], current, proposal, lo, hi
                    )
            rescale = desired != current
        if rescale:
            new = clone(dep)
            new["spec"]["replicas"] = desired
            self.put("deployments", new)
            if spec.get("behavior") is not None:
                events = state.scale_up_events if desired > current else state.scale_down_events
                events.append((self._now, abs(desired - current)))
            status["lastScaleTime"] = iso_s(self._now)
            _set_condition(status, "AbleToScale", "True", "SucceededRescale", self._now,
                           f"the HPA controller was able to update the target scale to {desired}")
        else:
            _set_condition(status, "AbleToScale", "True", "ReadyForNewScale", self._now,
                           "recommended size matches current size")
        _set_condition(status, "ScalingLimited", *limited[:2], self._now, limited[2])
        status.update(
            observedGeneration=hpa["metadata"].get("generation", 1),
            currentReplicas=current,
            desiredReplicas=desired,
        )
        if metric is not None:
            status["currentMetrics"] = metric
        self._put_status("horizontalpodautoscalers", hpa, status)

    def _hpa_metric_replicas(self, hpa: dict, dep: dict, current: int):
        """(proposal, currentMetrics, what it came from) over the HPA's metrics, or (None,
        None, (reason, message)) when none gives a count.

        ``computeReplicasForMetrics`` (horizontal.go): each metric proposes a count and the
        largest wins. Simplified: a metric that fails is left out (the real controller also
        refuses to scale down while one fails); metric types other than CPU Utilization and
        External AverageValue are not modelled and count as failing.
        """
        proposals, current_metrics, sources = [], [], []
        failure = ("FailedGetResourceMetric", "no metrics returned")
        for spec in hpa["spec"].get("metrics") or _DEFAULT_HPA_METRICS:
            kind = spec.get("type")
            resource = spec.get("resource") or {}
            external = spec.get("external") or {}
            if kind == "Resource" and resource.get("name") == "cpu" and (
                (resource.get("target") or {}).get("type", "Utilization") == "Utilization"
            ):
                target = float((resource.get("target") or {}).get("averageUtilization") or 80)
                proposal, utilisation = self._hpa_cpu_replicas(hpa, dep, current, target)
                if proposal is None:
                    failure = ("FailedGetResourceMetric", "did not receive metrics for targeted "
                               "pods (pods might be unready)")
                    continue
                current_metrics.append({
                    "type": "Resource",
                    "resource": {"name": "cpu", "current": {"averageUtilization": utilisation}},
                })
                sources.append("cpu resource utilization (percentage of request)")
            elif kind == "External" and (external.get("target") or {}).get("type") == (
                "AverageValue"
            ):
                proposal, average_m = self._hpa_external_replicas(hpa, dep, external)
                name = (external.get("metric") or {}).get("name", "")
                if proposal is None:
                    failure = ("FailedGetExternalMetric", f"unable to get external metric "
                               f"{name}: no metrics returned from external metrics API")
                    continue
                current_metrics.append({
                    "type": "External",
                    "external": {
                        "metric": clone(external.get("metric") or {}),
                        "current": {"averageValue": f"{average_m}m"},
                    },
                })
                sources.append(f"external metric {name}")
            else:
                failure = ("InvalidMetricSourceType", f"unsupported metric source {kind!r}")
                continue
            proposals.append(proposal)
        if not proposals:
            return None, None, failure
        return max(proposals), current_metrics, ", ".join(sources)

    def _pod_metrics(self, hpa: dict, pods: list[dict]) -> dict[str, PodMetric]:
        """The resource metrics API's answer for the target's pods: the engine's scrape model,
        or a stated utilisation, fresh now, for every pod whose containers run (0 for a pod
        not Ready: it serves nothing)."""
        if self.metrics is not None:
            return self.metrics(hpa, pods)
        percent = self.hpa_utilisation.get(hpa["metadata"]["name"], 0.0)
        out = {}
        for pod in pods:
            if (pod.get("status") or {}).get("phase") != "Running":
                continue
            used = _desired(pod) * percent / 100.0 if _ready(pod) else 0.0
            out[pod["metadata"]["name"]] = PodMetric(
                int(used), self._now, STATED_METRIC_WINDOW_S
            )
        return out

    def _group_pods(self, pods: list[dict], metrics: dict[str, PodMetric]):
        """``groupPods`` (replica_calculator.go) for CPU: (ready names, unready names, missing
        names). Terminating pods are ignored; a Pending pod is unready; a Running pod with no
        metric is missing. Within ``hpa_cpu_initialization_period_s`` of its start a pod is
        unready if not Ready or if its sample's window began before its readiness last changed
        (the sample may include start-up CPU); after it, only if not Ready and its readiness
        last changed within ``hpa_initial_readiness_delay_s`` of its start (never Ready)."""
        ready, unready, missing = [], [], []
        for pod in pods:
            name = pod["metadata"]["name"]
            if _terminating(pod):
                continue
            status = pod.get("status") or {}
            if status.get("phase") != "Running":
                unready.append(name)
                continue
            metric = metrics.get(name)
            if metric is None:
                missing.append(name)
                continue
            condition = next(
                (c for c in status.get("conditions") or [] if c["type"] == "Ready"), None
            )
            if condition is None or not status.get("startTime"):
                unready.append(name)
                continue
            start_s = _epoch_s(status["startTime"])
            changed_s = _epoch_s(condition.get("lastTransitionTime") or status["startTime"])
            not_ready = condition["status"] != "True"
            if start_s + self.hpa_cpu_initialization_period_s > self._now:
                bad = not_ready or metric.timestamp_s < changed_s + metric.window_s
            else:
                bad = not_ready and start_s + self.hpa_initial_readiness_delay_s > changed_s
            (unready if bad else ready).append(name)
        return ready, unready, missing

    def _hpa_cpu_replicas(self, hpa: dict, dep: dict, current: int, target: float):
        """(proposed replicas, utilisation %) from the CPU metric, or (None, None) when no
        pod's sample counts. ``GetResourceReplicas`` (replica_calculator.go): utilisation =
        used / requested over the pods whose sample counts (whole percent, as
        ``GetResourceUtilizationRatio``); within the tolerance no change; otherwise, when no
        pod is unready or missing, ceil(ratio x those pods). With unready pods on a scale-up
        they count as 0 % used; missing pods count as 0 % on a scale-up and as max(100 %,
        target) on a scale-down; the ratio is recomputed, and a recount that flips the
        direction or falls within the tolerance changes nothing."""
        pods = self.live_pods_of(dep["metadata"]["namespace"], dep["metadata"]["name"])
        metrics = self._pod_metrics(hpa, pods)
        ready, unready, missing = self._group_pods(pods, metrics)
        if not ready:
            return None, None
        requests = {p["metadata"]["name"]: _desired(p) for p in pods}
        used = {name: float(metrics[name].millicores) for name in ready}
        ratio, utilisation = _utilisation_ratio(used, requests, target)
        scale_up_with_unready = bool(unready) and ratio > 1.0
        if not scale_up_with_unready and not missing:
            if abs(1.0 - ratio) <= self.hpa_tolerance:
                return current, utilisation
            return math.ceil(ratio * len(ready)), utilisation
        if missing:
            if ratio < 1.0:
                fallback = max(100.0, target)
                for name in missing:
                    used[name] = requests[name] * fallback / 100.0
            elif ratio > 1.0:
                for name in missing:
                    used[name] = 0.0
        if scale_up_with_unready:
            for name in unready:
                used[name] = 0.0
        new_ratio, _ = _utilisation_ratio(used, requests, target)
        if (
            abs(1.0 - new_ratio) <= self.hpa_tolerance
            or (ratio < 1.0 < new_ratio)
            or (ratio > 1.0 > new_ratio)
        ):
            return current, utilisation
        proposal = math.ceil(new_ratio * len(used))
        if (new_ratio < 1.0 and proposal > current) or (new_ratio > 1.0 and proposal < current):
            return current, utilisation
        return proposal, utilisation

    def _hpa_external_replicas(self, hpa: dict, dep: dict, external: dict):
        """(proposed replicas, current average per pod in milli-units) from an External metric
        of target type AverageValue, or (None, None) without a value.
        ``GetExternalPerPodMetricReplicas`` (replica_calculator.go): usage = the metric's sum
        (milli-units); ratio = usage / (target x the scale's status replicas, every pod,
        ready or not); beyond the tolerance, ceil(usage / target)."""
        metric = external.get("metric") or {}
        if self.external_metrics is not None:
            value = self.external_metrics(hpa, metric)
        else:
            value = self.external_values.get(metric.get("name", ""))
        if value is None:
            return None, None
        usage_m = int(value * 1000)  # Quantity.MilliValue()
        target_m = cpu_m(external["target"]["averageValue"])
        replicas = int((dep.get("status") or {}).get("replicas", 0))
        if target_m <= 0 or replicas <= 0:
            return None, None
        proposal = replicas
        if abs(1.0 - usage_m / (target_m * replicas)) > self.hpa_tolerance:
            proposal = math.ceil(usage_m / target_m)
        return proposal, math.ceil(usage_m / replicas)

    def _normalise(self, state: HpaState, current: int, proposal: int, lo: int, hi: int):
        """Without ``spec.behavior``: ``stabilizeRecommendation`` (the highest recommendation
        of the downscale window) then ``convertDesiredReplicasWithRules`` (a scale-up of at
        most max(2 x current, 4) per sync; clamped to [min, max])."""
        cutoff = self._now - self.hpa_downscale_stabilisation_s
        stabilised = proposal
        kept = []
        for t, rec in state.recommendations:
            if t < cutoff:
                continue
            stabilised = max(stabilised, rec)
            kept.append((t, rec))
        state.recommendations = [*kept, (self._now, proposal)]
        up_limit = max(2 * current, 4)
        if hi > up_limit:
            maximum, why = up_limit, ("ScaleUpLimit", "the desired replica count is increasing "
                                      "faster than the maximum scale rate")
        else:
            maximum, why = hi, ("TooManyReplicas", "the desired replica count is more than the "
                                "maximum replica count")
        if stabilised < lo:
            return lo, ("True", "TooFewReplicas", "the desired replica count is less than the "
                        "minimum replica count")
        if stabilised > maximum:
            return maximum, ("True", *why)
        return stabilised, ("False", "DesiredWithinRange", "the desired count is within the "
                            "acceptable range")

    def _normalise_with_behavior(
        self, state: HpaState, behavior: dict, current: int, proposal: int, lo: int, hi: int
    ):
        """With ``spec.behavior`` (unset parts take the API defaults, ``GenerateHPAScaleUpRules``
        / ``GenerateHPAScaleDownRules`` in pkg/apis/autoscaling/v2/defaults.go):
        ``stabilizeRecommendationWithBehaviors`` then ``convertDesiredReplicasWithBehaviorRate``
        (horizontal.go)."""
        up = _rules(behavior.get("scaleUp"), up=True, down_window_s=0)
        down = _rules(
            behavior.get("scaleDown"), up=False, down_window_s=self.hpa_downscale_stabilisation_s
        )
        up_cutoff = self._now - up["stabilizationWindowSeconds"]
        down_cutoff = self._now - down["stabilizationWindowSeconds"]
        up_rec = down_rec = proposal
        kept = []
        for t, rec in state.recommendations:
            if t > up_cutoff:
                up_rec = min(up_rec, rec)
            if t > down_cutoff:
                down_rec = max(down_rec, rec)
            if t >= up_cutoff or t >= down_cutoff:
                kept.append((t, rec))
        state.recommendations = [*kept, (self._now, proposal)]
        desired = min(max(current, up_rec), down_rec)
        if desired > current:
            limit = self._rate_limit(state, current, up, up=True)
            limit = max(limit, current)
            if hi > limit:
                maximum, why = limit, "ScaleUpLimit"
            else:
                maximum, why = hi, "TooManyReplicas"
            if desired > maximum:
                return maximum, ("True", why, "the desired replica count is limited")
        elif desired < current:
            limit = min(self._rate_limit(state, current, down, up=False), current)
            if lo < limit:
                minimum, why = limit, "ScaleDownLimit"
            else:
                minimum, why = lo, "TooFewReplicas"
            if desired < minimum:
                return minimum, ("True", why, "the desired replica count is limited")
        return desired, ("False", "DesiredWithinRange", "the desired count is within the "
                         "acceptable range")

    def _rate_limit(self, state: HpaState, current: int, rules: dict, *, up: bool) -> int:
        """``calculateScaleUpLimitWithScalingRules`` / ``calculateScaleDownLimitWithBehaviors``:
        each policy allows a change relative to the replicas at the start of its period; the
        select policy picks the largest (Max) or smallest (Min) change, or none (Disabled)."""
        select = rules.get("selectPolicy", "Max")
        if select == "Disabled":
            return current
        proposals = []
        for policy in rules["policies"]:
            period = float(policy["periodSeconds"])
            added = sum(n for t, n in state.scale_up_events if t > self._now - period)
            removed = sum(n for t, n in state.scale_down_events if t > self._now - period)
            start = current - added + removed
            value = int(policy["value"])
            if policy["type"] == "Pods":
                proposals.append(start + value if up else start - value)
            elif up:
                # rounded up so that a small percentage still adds a pod
                proposals.append(math.ceil(start * (1 + value / 100)))
            else:
                proposals.append(int(start * (1 - value / 100)))
        if not proposals:
            return current
        most_change = max if up else min
        least_change = min if up else max
        return (least_change if select == "Min" else most_change)(proposals)

    # ----------------------------------------------------------------------------------------
    # Deployment and ReplicaSet controllers

    def _deployment(self, dep: dict) -> None:
        """``syncDeployment`` for the RollingUpdate and Recreate strategies
        (pkg/controller/deployment/rolling.go, recreate.go): the ReplicaSet of the current
        template is scaled up within maxSurge; old ones are scaled down while at least
        replicas - maxUnavailable pods stay available."""
        ns, name = dep["metadata"]["namespace"], dep["metadata"]["name"]
        template = dep["spec"]["template"]
        h = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:8]
        new = self.replicasets.get((ns, f"{name}-{h}"))
        if new is None:
            self._serial += 1
            new = ReplicaSet(ns, f"{name}-{h}", name, h, clone(template), 0, self._now,
                             self._serial, self.new_uid())
            self.replicasets[(ns, new.name)] = new
        old = sorted(
            (r for r in self.replicasets.values()
             if r.namespace == ns and r.deployment == name and r is not new),
            key=lambda r: (r.created_s, r.serial),
        )
        replicas = int(dep["spec"]["replicas"])
        strategy = dep["spec"].get("strategy") or {}
        if strategy.get("type") == "Recreate":
            # recreate.go: scale old ReplicaSets to zero, wait until none of their pods runs
            for rs in old:
                self._scale_rs(rs, 0)
            if any(self._rs_pods(rs, include_terminating=True) for rs in old):
                return
            self._scale_rs(new, replicas)
            return
        surge, unavailable = _fenceposts(strategy.get("rollingUpdate") or {}, replicas)
        # reconcileNewReplicaSet
        if new.replicas > replicas:
            self._scale_rs(new, replicas)
        elif new.replicas < replicas:
            total = sum(r.replicas for r in [new, *old])
            room = replicas + surge - total
            if room > 0:
                self._scale_rs(new, new.replicas + min(room, replicas - new.replicas))
        # reconcileOldReplicaSets
        if not any(r.replicas for r in old):
            return
        all_pods = sum(r.replicas for r in [new, *old])
        min_available = replicas - unavailable
        new_unavailable = new.replicas - self._rs_available(new)
        max_scaled_down = all_pods - min_available - new_unavailable
        if max_scaled_down <= 0:
            return
        # cleanupUnhealthyReplicas: unavailable old pods go first, they serve nothing
        for rs in old:
            if max_scaled_down <= 0:
                break
            unhealthy = rs.replicas - self._rs_available(rs)
            cut = min(unhealthy, max_scaled_down)
            if cut > 0:
                self._scale_rs(rs, rs.replicas - cut)
                max_scaled_down -= cut
        # scaleDownOldReplicaSetsForRollingUpdate
        available = sum(self._rs_available(r) for r in [new, *old])
        budget = available - min_available
        for rs in old:
            if budget <= 0:
                break
            cut = min(rs.replicas, budget)
            if cut > 0:
                self._scale_rs(rs, rs.replicas - cut)
                budget -= cut

    def _scale_rs(self, rs: ReplicaSet, replicas: int) -> None:
        if rs.replicas != replicas:
            rs.replicas = replicas
            self.next_rv()  # a write the other controllers react to

    def _rs_pods(self, rs: ReplicaSet, *, include_terminating: bool = False) -> list[dict]:
        return [
            p
            for p in self.list("pods", rs.namespace)
            if self.pod_state.get(p["metadata"]["name"], PodState(0, None)).owner == rs.name
            and (include_terminating or not _terminating(p))
        ]

    def _rs_available(self, rs: ReplicaSet) -> int:
        return sum(1 for p in self._rs_pods(rs) if _ready(p))  # minReadySeconds 0

    def _replicaset(self, rs: ReplicaSet) -> None:
        """``manageReplicas`` (pkg/controller/replicaset/replica_set.go): only active pods
        count (``FilterActivePods`` drops terminating ones), so a pod being deleted is
        replaced at once; surplus pods are deleted lowest rank first (``getPodsToDelete``)."""
        active = self._rs_pods(rs)
        diff = len(active) - rs.replicas
        for _ in range(max(0, -diff)):
            if self._create_pod(rs) is None:
                break  # refused (quota): retried at the next reconcile, as the real one does
        if diff <= 0:
            return
        for pod in self._deletion_order(active)[:diff]:
            self.delete("pods", rs.namespace, pod["metadata"]["name"])

    def _deletion_order(self, pods: list[dict]) -> list[dict]:
        """``ActivePodsWithRanks``: unscheduled before scheduled, not ready before ready,
        ready for less time before longer, newer before older."""
        def rank(p: dict):
            state = self.pod_state.get(p["metadata"]["name"], PodState(0, None))
            ready_since = (state.scheduled_s or 0) + self.start_delay_s
            return (state.node is not None, _ready(p), -ready_since, -state.created_s,
                    p["metadata"]["name"])

        return sorted(pods, key=rank)

    def _create_pod(self, rs: ReplicaSet) -> dict | None:
        """A pod of ``rs`` (Pending, unscheduled), or None when the namespace's CPU quota
        refuses it (the ResourceQuota admission plugin answers 403 Forbidden and the
        ReplicaSet records a FailedCreate Event)."""
        ns = rs.namespace
        spec = clone(rs.template["spec"])
        spec.setdefault("terminationGracePeriodSeconds", DEFAULT_GRACE_S)
        request = sum(_container_cpu(c) for c in spec["containers"])
        room = self.quota_room_millicores(ns)
        if room is not None and request > room:
            used = self.quota_millicores - room
            self._event(
                ns, "ReplicaSet", rs.name, "FailedCreate", "Warning",
                f'Error creating: pods "{rs.name}-" is forbidden: exceeded quota: {QUOTA_NAME}, '
                f"requested: requests.cpu={request}m, used: requests.cpu={used}m, "
                f"limited: requests.cpu={self.quota_millicores}m",
            )
            return None
        self._serial += 1
        pod_name = f"{rs.deployment}-{rs.template_hash[:5]}-{self._serial:04d}"
        labels = dict(rs.template["metadata"].get("labels") or {})
        labels.update({"pod-template-hash": rs.template_hash,
                       "surgecast.test/deployment": rs.deployment})
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
                        "name": rs.name,
                        "uid": rs.uid,
                        "controller": True,
                    }
                ],
            },
            "spec": spec,
            "status": {"phase": "Pending", "qosClass": qos_class(spec), "conditions": []},
        }
        self.pod_state[pod_name] = PodState(self._now, None, owner=rs.name)
        return self.put("pods", pod)

    def _event(self, ns: str, kind: str, name: str, reason: str, type_: str, message: str):
        """One Event per (object, reason), its count raised on repeats (as the recorder's
        aggregation does)."""
        ev_name = f"{name}.{hashlib.sha256(reason.encode()).hexdigest()[:12]}"
        old = self.get("events", ns, ev_name)
        if old is not None:
            new = clone(old)
            new.update(count=int(old.get("count", 1)) + 1, message=message,
                       lastTimestamp=iso_s(self._now))
            self.put("events", new)
            return
        self.put("events", {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": ev_name, "namespace": ns},
            "involvedObject": {"kind": kind, "name": name, "namespace": ns},
            "reason": reason,
            "message": message,
            "type": type_,
            "count": 1,
            "firstTimestamp": iso_s(self._now),
            "lastTimestamp": iso_s(self._now),
        })

    def _deployment_status(self, dep: dict) -> None:
        """``syncDeploymentStatus`` (pkg/controller/deployment/sync.go): replicas counts the
        active (not terminating) pods of all its ReplicaSets."""
        ns, name = dep["metadata"]["namespace"], dep["metadata"]["name"]
        template = dep["spec"]["template"]
        h = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:8]
        pods = self.live_pods_of(ns, name)
        ready = sum(1 for p in pods if _ready(p))
        updated = sum(1 for p in pods if p["metadata"]["labels"].get("pod-template-hash") == h)
        status = {
            "observedGeneration": dep["metadata"].get("generation", 1),
            "replicas": len(pods),
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": max(0, int(dep["spec"]["replicas"]) - ready),
        }
        if dep.get("status") != status:
            self._put_status("deployments", dep, status)

    def _put_status(self, resource: str, obj: dict, status: dict) -> None:
        if obj.get("status") != status:
            new = clone(obj)
            new["status"] = status
            self.put(resource, new)

    # ----------------------------------------------------------------------------------------
    # scheduler

    def _schedule(self) -> None:
        """Bind Pending pods, oldest first (the scheduling queue's ``PrioritySort``,
        pkg/scheduler/framework/plugins/queuesort/priority_sort.go, orders equal priorities by
        queue time), each on the first node whose free CPU fits its request (a deterministic
        bin-packing, as the ``MostAllocated`` scoring strategy); an unschedulable pod is tried
        again at every reconcile, as the scheduler requeues it when a pod or node changes."""
        waiting = [
            (s.created_s, name, s)
            for name, s in self.pod_state.items()
            if s.node is None and s.deleted_s is None
        ]
        for _, name, state in sorted(waiting, key=lambda w: (w[0], w[1])):
            pod = self._pod(name)
            if pod is None:
                continue
            node = self._node_with_room(_desired(pod))
            new = clone(pod)
            if node is None:
                joined = sum(1 for n in self.nodes if n.name not in self._provisioning)
                _set_condition(
                    new["status"], "PodScheduled", "False", "Unschedulable", self._now,
                    f"0/{joined} nodes are available: {joined} Insufficient cpu.",
                )
            else:
                state.node, state.scheduled_s = node, self._now
                new["spec"]["nodeName"] = node
                _set_condition(new["status"], "PodScheduled", "True", None, self._now)
            if new != pod:
                self.put("pods", new)

    def _pod(self, name: str) -> dict | None:
        key = self._pod_keys.get(name)
        return None if key is None else self.objects.get(key)

    def _node_usage(self, node: str, skip: str | None = None, *, kubelet: bool = False) -> int:
        """CPU requests held on ``node`` (millicores), terminating pods included.

        The scheduler counts each pod at max(desired unless its resize is Infeasible,
        allocated, actual) (KEP-1287, "Scheduler and API Server Interaction"); the kubelet,
        admitting a resize, counts the others at max(allocated, actual): what it admitted or
        what still runs (a shrink frees room once actuated).
        """
        used = 0
        for name, state in self.pod_state.items():
            if state.node != node or name == skip:
                continue
            pod = self._pod(name)
            if pod is None:
                continue
            held = max(_allocated(pod), _admitted(pod))
            if not kubelet and _condition_reason(pod, "PodResizePending") != "Infeasible":
                held = max(held, _desired(pod))
            used += held
        return used

    def _node_with_room(self, request_m: int) -> str | None:
        for node in self.nodes:
            if node.name in self._provisioning:
                continue  # no Node object until its kubelet registers
            if self._node_usage(node.name) + request_m <= node.allocatable_millicores:
                return node.name
        return None

    # ----------------------------------------------------------------------------------------
    # cluster autoscaler

    def _node_pool(self) -> None:
        """Nodes join, and the cluster autoscaler adds and removes them.

        A provisioning node joins at its ``joins_s`` (its kubelet registers; the scheduler sees
        a new node and retries the Pending pods). With a :class:`NodePool`, as the cluster
        autoscaler's loop does (``RunOnce`` in cluster-autoscaler/core/static_autoscaler.go):

        * scale-up (``ScaleUp`` in core/scaleup/orchestrator): the pods the scheduler marked
          unschedulable are bin-packed first into the free room of the nodes there are,
          provisioning ones included (``filterOutSchedulable`` and the ``upcoming`` nodes, so
          a second pass does not order them twice), then onto new nodes of the group's
          template, first fit in the scheduler's order
          (estimator/binpacking_estimator.go), up to ``max_nodes``. A pod larger than the
          template helps nothing and orders no node. The CA's 10 s scan interval is not
          modelled: it is part of ``provision_s``.
        * scale-down (core/scaledown): a joined node with no pod but terminating ones is
          unneeded; once unneeded for ``scale_down_unneeded_s`` it is removed, down to
          ``min_nodes``, the one empty the longest first. The real autoscaler also drains
          nodes under 50 % utilisation whose pods fit elsewhere; this one removes only empty
          nodes, so it holds at least the nodes the real one would. A removed node's
          terminating pods go with it (the pod GC's ``gcOrphaned``).
        """
        now = self._now
        for node in self.nodes:
            if node.name in self._provisioning and node.joins_s <= now:
                self._provisioning.discard(node.name)
                self.next_rv()  # the Node object appears: the scheduler retries
        pool = self.node_pool
        if pool is None:
            return
        self._scale_up(pool)
        busy = {s.node for s in self.pod_state.values()
                if s.node is not None and s.deleted_s is None}
        for node in self.nodes:
            if node.name in self._provisioning or node.name in busy:
                self._empty_since.pop(node.name, None)
            else:
                self._empty_since.setdefault(node.name, now)
        due = sorted(
            (since, name) for name, since in self._empty_since.items()
            if now >= since + pool.scale_down_unneeded_s
        )
        for _, name in due:
            if len(self.nodes) <= pool.min_nodes:
                break
            self.nodes = [n for n in self.nodes if n.name != name]
            del self._empty_since[name]
            for pod_name, state in list(self.pod_state.items()):
                if state.node == name:
                    key = self._pod_keys.get(pod_name)
                    if key is not None:
                        self._remove_pod(key[1], pod_name)
            self.next_rv()

    def _scale_up(self, pool: NodePool) -> None:
        template = self.nodes[0]
        waiting = sorted(
            (s.created_s, name) for name, s in self.pod_state.items()
            if s.node is None and s.deleted_s is None
        )
        if not waiting or len(self.nodes) >= pool.max_nodes:
            return
        # filterOutSchedulable: what fits where room is (freed, or on a node that just joined)
        # or is coming needs no new node
        room = [n.allocatable_millicores - self._node_usage(n.name) for n in self.nodes]
        upcoming = len(room)
        for _, name in waiting:
            pod = self._pod(name)
            scheduled = next((c for c in pod["status"].get("conditions") or []
                              if c["type"] == "PodScheduled"), None) if pod else None
            if scheduled is None or scheduled.get("reason") != "Unschedulable":
                continue
            want = _desired(pod)
            if want > template.allocatable_millicores:
                continue
            slot = next((i for i, free in enumerate(room) if free >= want), None)
            if slot is None:
                if len(room) >= pool.max_nodes:
                    continue
                room.append(template.allocatable_millicores)
                slot = len(room) - 1
            room[slot] -= want
        for _ in range(len(room) - upcoming):  # one node per slot opened above
            self._nodes_added += 1
            self.nodes.append(Node(
                f"{template.name}-scaled-{self._nodes_added}",
                template.allocatable_millicores,
                template.cpu_manager_policy,
                joins_s=self._now + pool.provision_s,
            ))
            self._provisioning.add(self.nodes[-1].name)
            self.next_rv()

    # ----------------------------------------------------------------------------------------
    # kubelet

    def _kubelets(self) -> None:
        """Every node's kubelet syncs its pods. Pending resizes are taken in the kubelet's
        order (``sortPendingResizes`` in pkg/kubelet/allocation/allocation_manager.go): those
        that do not increase requests first, then the longest pending."""
        def order(item):
            name, state = item
            pod = self._pod(name)
            growing = pod is not None and state.allocated is not None and (
                _desired(pod) > _sum_cpu(state.allocated)
            )
            pending = state.pending_since_s if state.pending_since_s is not None else math.inf
            return (growing, pending, name)

        for name, state in sorted(self.pod_state.items(), key=order):
            pod = self._pod(name)
            if pod is not None and name in self.pod_state:
                self._kubelet(pod, state)

    def _kubelet(self, pod: dict, state: PodState) -> None:
        """Phase, readiness, termination, allocated and actual resources of one pod."""
        meta = pod["metadata"]
        now = self._now
        if state.deleted_s is not None and now >= state.deleted_s + state.grace_s:
            # the containers stopped; the kubelet's final status update lets the API server
            # remove the object (pkg/kubelet/status/status_manager.go, canBeDeleted)
            self._remove_pod(meta["namespace"], meta["name"])
            return
        if state.node is None:
            return
        if (
            state.idle_rv is not None
            and state.idle_rv == meta.get("resourceVersion")
            and state.deleted_s is None
            and not (self.resize_errors or self.stuck_resizes or self.deferred)
        ):
            return  # nothing changed since a sync that changed nothing (the common case)
        new = clone(pod)
        status = new["status"]
        if state.allocated is None:  # admitted on the node: what it starts with
            state.allocated = {c["name"]: _resources(c) for c in new["spec"]["containers"]}
            state.actual = clone(state.allocated)
        status["phase"] = "Running"
        ready = state.deleted_s is None and now >= state.scheduled_s + self.start_delay_s
        _set_condition(status, "Ready", "True" if ready else "False", None, now)
        if not status.get("containerStatuses"):
            status["startTime"] = iso_s(state.scheduled_s)
            status["hostIP"] = status["podIP"] = "10.0.0.1"
            status["containerStatuses"] = [
                {
                    "name": c["name"],
                    "image": c.get("image", ""),
                    "imageID": f"{c.get('image', '')}@sha256:{'0' * 64}",
                    "containerID": f"containerd://{self.new_uid().replace('-', '')}",
                    "restartCount": 0,
                    "started": True,
                    "state": {"running": {"startedAt": iso_s(state.scheduled_s)}},
                }
                for c in new["spec"]["containers"]
            ]
        if state.deleted_s is None:
            self._resize(new, state)
        for cs in status["containerStatuses"]:
            cs["ready"] = ready
            cs["allocatedResources"] = dict(state.allocated[cs["name"]].get("requests") or {})
            cs["resources"] = clone(state.actual[cs["name"]])
        if new != pod:
            self.put("pods", new)
        elif (
            ready
            and state.resize_started_s is None
            and state.pending_since_s is None
            and not any(c.get("type", "").startswith("PodResize")
                        for c in status.get("conditions") or [])
        ):
            state.idle_rv = meta.get("resourceVersion")

    def _resize(self, pod: dict, state: PodState) -> None:
        """In-place resize as the 1.33 kubelet does it (KEP-1287; docs "Resize CPU and Memory
        Resources assigned to Containers"):

        1. desired (spec) != allocated: admit or not. ``Infeasible`` (never retried): a
           Guaranteed pod on a node with the static CPU manager policy, or more CPU than the
           node has (``canResizePod``, pkg/kubelet/allocation/allocation_manager.go).
           ``Deferred``: no room now (or injected); retried at every sync, so it proceeds when
           room frees. Admitted: ``allocatedResources`` = desired, ``PodResizeInProgress``.
        2. allocated != actual: the runtime actuates it in ``resize_delay_s``; then
           ``status.containerStatuses[].resources`` = allocated and the condition goes. An
           injected runtime failure shows ``PodResizeInProgress`` with reason ``Error`` (the
           containers keep their resources; retried at each sync); an injected stuck resize
           never completes.
        """
        status, name, now = pod["status"], pod["metadata"]["name"], self._now
        node = next(n for n in self.nodes if n.name == state.node)
        desired = {c["name"]: _resources(c) for c in pod["spec"]["containers"]}
        if _norm(desired) != _norm(state.allocated):
            verdict = self._admit_resize(pod, state, node)
            if verdict is None:
                state.allocated = desired
                state.resize_started_s = None
                state.pending_since_s = None
                _drop_condition(status, "PodResizePending")
            else:
                if verdict[0] == "Deferred" and state.pending_since_s is None:
                    state.pending_since_s = now
                _set_condition(status, "PodResizePending", "True", verdict[0], now, verdict[1])
        else:
            state.pending_since_s = None
            _drop_condition(status, "PodResizePending")
        if _norm(state.allocated) == _norm(state.actual):
            state.resize_started_s = None
            _drop_condition(status, "PodResizeInProgress")
            return
        error = self._injected(self.resize_errors, name, node.name)
        if error:
            state.resize_started_s = None
            _set_condition(status, "PodResizeInProgress", "True", "Error", now,
                           error if isinstance(error, str) else "resize failed")
            return
        if state.resize_started_s is None:
            state.resize_started_s = now
            state.resize_delay_s = self._resize_delay()
        stuck = self._injected(self.stuck_resizes, name, node.name)
        if not stuck and now >= state.resize_started_s + state.resize_delay_s:
            state.actual = clone(state.allocated)
            state.resize_started_s = None
            _drop_condition(status, "PodResizeInProgress")
            return
        _set_condition(status, "PodResizeInProgress", "True", None, now)

    def _resize_delay(self) -> float:
        """One resize's actuation time (s): ``resize_delay_s`` times a log-normal factor of
        median 1 and sigma ``resize_spread``, from the model's seeded generator."""
        if self.resize_spread == 0 or self.resize_delay_s == 0:
            return self.resize_delay_s
        return self.resize_delay_s * math.exp(self.resize_spread * self._resize_rng.gauss(0, 1))

    def _admit_resize(self, pod: dict, state: PodState, node: Node) -> tuple[str, str] | None:
        name = pod["metadata"]["name"]
        if node.cpu_manager_policy == "static" and qos_class(pod["spec"]) == "Guaranteed":
            return "Infeasible", "Resize is infeasible for Guaranteed Pods alongside CPU Manager " \
                                 "static policy"
        want = _desired(pod)
        if want > node.allocatable_millicores:
            return "Infeasible", (f"Node didn't have enough capacity: cpu, requested: {want}, "
                                  f"capacity: {node.allocatable_millicores}")
        used = self._node_usage(node.name, skip=name, kubelet=True)
        if self._injected(self.deferred, name, node.name) or used + want > (
            node.allocatable_millicores
        ):
            return "Deferred", (f"Node didn't have enough resource: cpu, requested: {want}, "
                                f"used: {used}, capacity: {node.allocatable_millicores}")
        return None

    @staticmethod
    def _injected(where, pod: str, node: str | None):
        """The injected value for ``pod`` or its ``node`` in a set or dict (True / message),
        or None."""
        for key in (pod, node):
            if key is not None and key in where:
                return where[key] if isinstance(where, dict) else True
        return None

    # ----------------------------------------------------------------------------------------
    # quota

    def _charged(self, pod: dict) -> bool:
        """``QuotaV1Pod`` (pkg/quota/v1/evaluator/core/pods.go): a pod counts unless terminal
        or past its deletionTimestamp plus grace period."""
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return False
        state = self.pod_state.get(pod["metadata"]["name"])
        if state is not None and state.deleted_s is not None:
            return self._now <= state.deleted_s + 2 * state.grace_s
        return True

    @staticmethod
    def _quota_charge(pod: dict) -> int:
        """requests.cpu of a pod: the larger of desired and allocated (KEP-1287, "Resource
        Quota": a pending resize is charged)."""
        return max(_desired(pod), _admitted(pod))


# --------------------------------------------------------------------------------------------
# helpers


def _fenceposts(rolling: dict, replicas: int) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) in pods: percentages of ``replicas``, surge rounded up,
    unavailable rounded down; both 0 makes unavailable 1 (``ResolveFenceposts`` in
    pkg/controller/deployment/util/deployment_util.go)."""

    def scaled(value, round_up: bool) -> int:
        if isinstance(value, str) and value.endswith("%"):
            x = float(value[:-1]) * replicas / 100
            return math.ceil(x) if round_up else math.floor(x)
        return int(value)

    surge = scaled(rolling.get("maxSurge", "25%"), True)
    unavailable = scaled(rolling.get("maxUnavailable", "25%"), False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def _rules(rules: dict | None, *, up: bool, down_window_s: float) -> dict:
    """HPAScalingRules with the API defaults filled in: scale-up 0 s window, max(100 %,
    4 pods) per 15 s; scale-down the controller's window, 100 % per 15 s; select Max."""
    rules = dict(rules or {})
    if up:
        default_policies = [
            {"type": "Pods", "value": 4, "periodSeconds": 15},
            {"type": "Percent", "value": 100, "periodSeconds": 15},
        ]
    else:
        default_policies = [{"type": "Percent", "value": 100, "periodSeconds": 15}]
    rules.setdefault("stabilizationWindowSeconds", 0 if up else down_window_s)
    rules.setdefault("selectPolicy", "Max")
    if not rules.get("policies"):
        rules["policies"] = default_policies
    return rules


_DEFAULT_HPA_METRICS = (
    {"type": "Resource",
     "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}},
)
"""``SetDefaults_HorizontalPodAutoscaler``: 80 % CPU when no metric is given."""


def external_average_value(name: str, average_value: float, selector: dict | None = None) -> dict:
    """An autoscaling/v2 External metric with target type AverageValue (``average_value`` per
    pod, written as a milli-quantity), as KEDA writes one per trigger (``s0-prometheus`` for
    the first, a Prometheus trigger)."""
    if not (math.isfinite(average_value) and average_value > 0):
        raise ValueError(f"average_value of {name} must be > 0, not {average_value}")
    metric = {"name": name}
    if selector:
        metric["selector"] = {"matchLabels": dict(selector)}
    return {
        "type": "External",
        "external": {
            "metric": metric,
            "target": {"type": "AverageValue", "averageValue": f"{round(average_value * 1000)}m"},
        },
    }


def _utilisation_ratio(used_m: dict[str, float], requests_m: dict[str, int], target: float):
    """``GetResourceUtilizationRatio`` (pkg/controller/podautoscaler/metrics/utilization.go):
    (whole-percent utilisation / target, whole-percent utilisation) over the pods with a
    sample and a request."""
    used = sum(int(v) for n, v in used_m.items() if n in requests_m)
    requested = sum(requests_m[n] for n in used_m if n in requests_m)
    utilisation = int(used * 100 / requested) if requested else 0
    return utilisation / target, utilisation


def _epoch_s(iso: str) -> float:
    """Epoch seconds of an RFC 3339 time the API wrote (``2025-06-02T08:00:00Z``)."""
    return datetime.fromisoformat(iso).timestamp()


def _resources(container: dict) -> dict:
    res = clone(container.get("resources") or {})
    return {"requests": res.get("requests") or {}, "limits": res.get("limits") or {}}


def _norm(per_container: dict | None) -> dict:
    """Resources with CPU in millicores, so "2" and "2000m" compare equal."""
    out = {}
    for name, res in (per_container or {}).items():
        out[name] = {
            kind: {k: (cpu_or_raw(v) if k == "cpu" else str(v)) for k, v in (res.get(kind) or {})
                   .items()}
            for kind in ("requests", "limits")
        }
    return out


def _sum_cpu(per_container: dict) -> int:
    return sum(
        cpu_m((res.get("requests") or {}).get("cpu", "0")) for res in per_container.values()
    )


def _container_cpu(c: dict) -> int:
    return cpu_m(((c.get("resources") or {}).get("requests") or {}).get("cpu", "0"))


def _desired(pod: dict) -> int:
    """CPU requests of the pod's spec (millicores): what was asked for."""
    return sum(_container_cpu(c) for c in pod["spec"]["containers"])


def _allocated(pod: dict) -> int:
    """CPU requests the containers run with (``status.containerStatuses[].resources``);
    the spec's before the kubelet reports (millicores)."""
    statuses = pod.get("status", {}).get("containerStatuses") or []
    if not statuses:
        return _desired(pod)
    return sum(_container_cpu(cs) for cs in statuses)


def _admitted(pod: dict) -> int:
    """CPU requests the kubelet admitted (``allocatedResources``), millicores."""
    statuses = pod.get("status", {}).get("containerStatuses") or []
    if not statuses:
        return _desired(pod)
    return sum(cpu_m((cs.get("allocatedResources") or {}).get("cpu", "0")) for cs in statuses)


def _terminating(pod: dict) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))


def _ready(pod: dict) -> bool:
    return not _terminating(pod) and any(
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
            if cond["status"] != value:
                cond["lastTransitionTime"] = iso_s(now)
            if (cond["status"], cond.get("reason"), cond.get("message")) != (
                value, reason, message
            ):
                cond["status"] = value
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
