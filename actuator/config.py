"""What the actuator may touch and how: one frozen settings object per service.

A service is a pipeline of stages; each stage runs as one Deployment. The settings name every
Deployment the actuator may change (the allow-list), the limits it must respect and whether it
acts at all (``mode``). They are loaded once by the front end (a JSON/TOML file today) and passed
down; :meth:`ServiceConfig.from_dict` is the one place that validates them.
"""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from actuator.errors import ActuatorInputError
from actuator.guards import Bounds

MODES = ("shadow", "active")
"""shadow: compute, validate with a server-side dry run and record, patch nothing (default).
active: patch the cluster."""

# DNS-1123 names as the API server validates them (k8s.io/apimachinery/pkg/util/validation):
# a label is at most 63 characters, a subdomain is labels joined by dots, at most 253.
_DNS_LABEL = re.compile(r"^(?=.{1,63}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class WorkloadConfig:
    """One stage of the service: the Deployment that runs it.

    Attributes:
        deployment: the Deployment's name (in the service's namespace).
        container: the container whose CPU is resized (the model server).
        stage: the plan's stage name this Deployment runs; None for a single-stage service.
        bounds: hard limits on replicas, integer cores per pod and batch.
        hpa: the HorizontalPodAutoscaler that scales this Deployment, if it is known; when None
            the actuator looks for one targeting the Deployment. With an HPA the actuator moves
            its ``minReplicas`` instead of the scale subresource, so the two never fight.
        batch_env: the container environment variable that holds the batch size, if the model
            server reads it from one. Batch is an application setting: it changes only through
            the pod template (``rewrite_template``), never in place. None: recorded only.
    """

    deployment: str
    container: str
    stage: str | None = None
    bounds: Bounds = field(default_factory=Bounds)
    hpa: str | None = None
    batch_env: str | None = None

    def __post_init__(self) -> None:
        _name(self.deployment, "deployment", _DNS_SUBDOMAIN)
        _name(self.container, "container", _DNS_LABEL)
        if self.hpa is not None:
            _name(self.hpa, "hpa", _DNS_SUBDOMAIN)
        if self.batch_env is not None and not _ENV_NAME.match(self.batch_env):
            raise ActuatorInputError(f"batch_env: {self.batch_env!r} is not an env var name")
        if not isinstance(self.bounds, Bounds):
            raise ActuatorInputError("bounds: expected a Bounds")


@dataclass(frozen=True)
class ServiceConfig:
    """How the actuator treats one service.

    Attributes:
        service: the service's name; a plan is applied only to the service it names.
        namespace: the namespace of every Deployment of the service.
        workloads: one Deployment per plan stage; the allow-list of what may be touched.
        mode: ``shadow`` (default: record and dry-run, patch nothing) or ``active``.
        max_replica_step: replicas one run may add or remove per Deployment, at least; with
            ``max_step_ratio`` the limit is ``max(max_replica_step, ceil(ratio * current))``,
            the Kubernetes HPA's default scale-up policy (4 pods or 100 %) applied per run.
        max_core_step: cores per pod one run may add or remove, at least (same rule).
        max_step_ratio: the proportional part of both step limits (1.0: double or halve).
        stabilisation_s: no scale-in within this many seconds of the last scale-up (s).
        plan_expiry_s: a plan older than this (now minus its cutoff) is never applied (s).
        run_interval_s: time between two scheduled runs (s); every step whose ``apply_at`` is
            before ``now + run_interval_s`` is applied now.
        resize_timeout_s: how long a run waits for in-place resizes; a resize still deferred
            after it, or infeasible, falls back to adding replicas (s).
        rewrite_template: also write the target cores (and batch env) into the Deployment's
            pod template, which rolls the pods, while the load is stable. Needs the extra
            ``patch deployments`` rule of ``deploy/rbac-template-rewrite.yaml``.
        pushgateway_url: Prometheus Pushgateway to push run metrics to (None: no metrics).
        cold_start_s: time for a new replica to become ready (s); with ``resize_timeout_s`` and
            ``hpa_sync_s`` it sets how early steps are applied (``fallback_lead_s``).
        hpa_sync_s: the HPA controller's sync period (s; kube-controller-manager
            ``--horizontal-pod-autoscaler-sync-period``, default 15 s): a raised
            ``minReplicas`` takes effect at the next sync.
        kill_switch: the ConfigMap that pauses the actuator without a redeploy: ``name`` (in
            the service's namespace) or ``namespace/name`` (one switch for a whole fleet).
            ``data.paused: "true"`` turns every active run into a record-only run and stops a
            run under way before its next write; a ConfigMap that cannot be read (other than
            not found) pauses too.
    """

    service: str
    namespace: str
    workloads: tuple[WorkloadConfig, ...]
    mode: str = "shadow"
    max_replica_step: int = 4
    max_core_step: int = 4
    max_step_ratio: float = 1.0
    stabilisation_s: float = 300.0
    plan_expiry_s: float = 600.0
    run_interval_s: float = 300.0
    resize_timeout_s: float = 30.0
    rewrite_template: bool = False
    pushgateway_url: str | None = None
    kill_switch: str = "surgecast-control"
    cold_start_s: float = 60.0
    hpa_sync_s: float = 15.0

    def __post_init__(self) -> None:
        _name(self.service, "service", _DNS_LABEL)
        _name(self.namespace, "namespace", _DNS_LABEL)
        if not isinstance(self.kill_switch, str):
            raise ActuatorInputError("kill_switch: expected name or namespace/name")
        if "/" in self.kill_switch:
            ns, name = self.kill_switch.split("/", 1)
            _name(ns, "kill_switch namespace", _DNS_LABEL)
            _name(name, "kill_switch", _DNS_SUBDOMAIN)
        else:
            _name(self.kill_switch, "kill_switch", _DNS_SUBDOMAIN)
        object.__setattr__(self, "workloads", tuple(self.workloads))
        if not self.workloads:
            raise ActuatorInputError("workloads: name at least one Deployment")
        if not all(isinstance(w, WorkloadConfig) for w in self.workloads):
            raise ActuatorInputError("workloads: expected WorkloadConfig entries")
        names = [w.deployment for w in self.workloads]
        if len(set(names)) != len(names):
            raise ActuatorInputError(f"workloads: a Deployment is named twice in {names}")
        stages = [w.stage for w in self.workloads]
        if len(self.workloads) > 1 and (None in stages or len(set(stages)) != len(stages)):
            raise ActuatorInputError("workloads: with several Deployments give each its stage")
        if self.mode not in MODES:
            raise ActuatorInputError(f"mode: {self.mode!r} is not one of {', '.join(MODES)}")
        for key in ("max_replica_step", "max_core_step"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ActuatorInputError(
                    f"{key}: must be an integer >= 1 (a limit per run), got {value!r}"
                )
        ratio = self.max_step_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not (
            math.isfinite(ratio) and 0 <= ratio <= 10
        ):
            raise ActuatorInputError(f"max_step_ratio: must be a number in [0, 10], got {ratio!r}")
        for key in (
            "stabilisation_s",
            "plan_expiry_s",
            "run_interval_s",
            "resize_timeout_s",
            "cold_start_s",
            "hpa_sync_s",
        ):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ActuatorInputError(f"{key}: must be a number of seconds, got {value!r}")
            if not (math.isfinite(value) and value >= 0):
                raise ActuatorInputError(f"{key}: must be a finite number >= 0, got {value}")
        if self.plan_expiry_s <= 0 or self.run_interval_s <= 0:
            raise ActuatorInputError("plan_expiry_s, run_interval_s: must be > 0")
        if not isinstance(self.rewrite_template, bool):
            raise ActuatorInputError("rewrite_template: must be true or false")
        url = self.pushgateway_url
        if url is not None and not re.match(r"^https?://[^\s/]+", str(url)):
            raise ActuatorInputError(f"pushgateway_url: {url!r} is not an http(s) URL")

    @property
    def active(self) -> bool:
        return self.mode == "active"

    @property
    def kill_switch_ref(self) -> tuple[str, str]:
        """(namespace, name) of the kill switch ConfigMap."""
        if "/" in self.kill_switch:
            ns, name = self.kill_switch.split("/", 1)
            return ns, name
        return self.namespace, self.kill_switch

    @property
    def fallback_lead_s(self) -> float:
        """How long before a step's ``effective_at`` it is applied at the latest (s): a resize
        that fails after ``resize_timeout_s`` still leaves a cold start for fallback replicas,
        and an HPA needs up to one sync to follow a new ``minReplicas``."""
        return self.resize_timeout_s + self.cold_start_s + self.hpa_sync_s

    @property
    def allow_list(self) -> tuple[str, ...]:
        """``namespace/deployment`` of every workload the actuator may touch."""
        return tuple(f"{self.namespace}/{w.deployment}" for w in self.workloads)

    @classmethod
    def from_dict(cls, data: Any) -> ServiceConfig:
        """Settings from plain data (a parsed JSON or TOML table).

        ``workloads`` is a list of tables with the keys of :class:`WorkloadConfig`, where
        ``bounds`` is a table with the keys of :class:`~actuator.guards.Bounds`. A single-stage
        service may instead give ``deployment``, ``container`` (and ``bounds``, ``hpa``,
        ``batch_env``) at the top level.

        Raises:
            ActuatorInputError: unknown or missing keys, or a value that breaks a rule; the
                message names the field.
        """
        if not isinstance(data, dict):
            raise ActuatorInputError(f"service config: expected a table, got {type(data).__name__}")
        data = dict(data)
        flat = {
            k: data.pop(k)
            for k in ("deployment", "container", "stage", "bounds", "hpa", "batch_env")
            if k in data
        }
        if flat:
            if "workloads" in data:
                raise ActuatorInputError("workloads: give either workloads or deployment, not both")
            data["workloads"] = [flat]
        raw = data.get("workloads")
        if not isinstance(raw, list) or not raw:
            raise ActuatorInputError("workloads: expected a non-empty list of tables")
        data["workloads"] = tuple(_workload(w, i) for i, w in enumerate(raw))
        return _build(cls, data, "service config")


REQUIRED_BOUNDS = ("min_replicas", "max_replicas", "min_cores", "max_cores")
"""Bounds a service config must state: no built-in default may decide how far a cluster grows."""


def _workload(data: Any, index: int) -> WorkloadConfig:
    what = f"workloads[{index}]"
    if not isinstance(data, dict):
        raise ActuatorInputError(f"{what}: expected a table")
    data = dict(data)
    bounds = data.get("bounds")
    if not isinstance(bounds, dict):
        raise ActuatorInputError(
            f"{what}.bounds: required: give {', '.join(REQUIRED_BOUNDS)} for every Deployment"
        )
    missing = [k for k in REQUIRED_BOUNDS if k not in bounds]
    if missing:
        raise ActuatorInputError(f"{what}.bounds: missing {', '.join(missing)}")
    data["bounds"] = _build(Bounds, bounds, f"{what}.bounds")
    return _build(WorkloadConfig, data, what)


def _build(cls: type, data: Any, what: str):
    if not isinstance(data, dict):
        raise ActuatorInputError(f"{what}: expected a table, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING}
    unknown = sorted(set(data) - names)
    missing = sorted(required - set(data))
    if unknown:
        raise ActuatorInputError(f"{what}: unknown key(s) {', '.join(unknown)}")
    if missing:
        raise ActuatorInputError(f"{what}: missing key(s) {', '.join(missing)}")
    try:
        return cls(**data)
    except ActuatorInputError:
        raise
    except (TypeError, ValueError) as exc:
        raise ActuatorInputError(f"{what}: {exc}") from None


def _name(value: Any, what: str, pattern: re.Pattern) -> None:
    if not isinstance(value, str) or len(value) > 253 or not pattern.match(value):
        raise ActuatorInputError(f"{what}: {value!r} is not a valid Kubernetes name")
