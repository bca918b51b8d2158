"""Reading pods, templates and HPAs (JSON dicts as the API returns them), and building the
declarative patches the actuator sends. Pure functions; quantities in and out are millicores.
"""

from __future__ import annotations

from collections import Counter

from actuator.kube import cpu_millicores, cpu_quantity

RESIZE_PENDING = "PodResizePending"
RESIZE_IN_PROGRESS = "PodResizeInProgress"


def container(spec: dict, name: str) -> dict | None:
    """The container called ``name`` of a pod spec (or pod template spec), or None."""
    for c in spec.get("containers") or []:
        if c.get("name") == name:
            return c
    return None


def _cpu(resources: dict | None, kind: str) -> int | None:
    value = ((resources or {}).get(kind) or {}).get("cpu")
    return None if value is None else cpu_millicores(value)


def desired_millicores(pod: dict, name: str) -> int | None:
    """The CPU request the pod's spec asks for (after a resize patch: the new value)."""
    c = container(pod.get("spec") or {}, name)
    return None if c is None else _cpu(c.get("resources"), "requests")


def has_cpu_limit(pod: dict, name: str) -> bool:
    c = container(pod.get("spec") or {}, name) or {}
    return _cpu(c.get("resources"), "limits") is not None


def desired_limit_millicores(pod: dict, name: str) -> int | None:
    c = container(pod.get("spec") or {}, name) or {}
    return _cpu(c.get("resources"), "limits")


def allocated_millicores(pod: dict, name: str) -> int | None:
    """The CPU the container runs with now (status), or the spec's request when the status
    does not say (older servers)."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == name:
            value = _cpu(status.get("resources"), "requests")
            if value is not None:
                return value
    return desired_millicores(pod, name)


def template_millicores(deployment: dict, name: str) -> int | None:
    spec = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    c = container(spec, name)
    return None if c is None else _cpu(c.get("resources"), "requests")


def template_env(deployment: dict, name: str, env: str) -> str | None:
    spec = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    for item in (container(spec, name) or {}).get("env") or []:
        if item.get("name") == env:
            return item.get("value")
    return None


def is_ready(pod: dict) -> bool:
    """Ready condition True and not being deleted."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def live(pods: list[dict]) -> list[dict]:
    """Pods not being deleted and not finished (an evicted pod stays listed with phase
    Failed until it is garbage-collected), by name."""
    alive = [
        p
        for p in pods
        if not (p.get("metadata") or {}).get("deletionTimestamp")
        and (p.get("status") or {}).get("phase") not in ("Failed", "Succeeded")
    ]
    return sorted(alive, key=lambda p: p["metadata"]["name"])


def owned_by(pods: list[dict], deployment: str) -> list[dict]:
    """The pods a Deployment's own ReplicaSets control.

    Label selectors of different Deployments may overlap (the API does not prevent it); what
    keeps them apart is the controller reference. A Deployment's ReplicaSet is named
    ``<deployment>-<pod-template-hash>`` and labels its pods with that hash
    (pkg/controller/deployment/sync.go), so a pod belongs to the Deployment when its
    controller is that ReplicaSet.
    """
    out = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        rs_hash = (meta.get("labels") or {}).get("pod-template-hash")
        for ref in meta.get("ownerReferences") or []:
            if (
                ref.get("controller")
                and ref.get("kind") == "ReplicaSet"
                and rs_hash
                and ref.get("name") == f"{deployment}-{rs_hash}"
            ):
                out.append(pod)
                break
    return out


def is_scheduled(pod: dict) -> bool:
    """Bound to a node (a Pending pod without room is not)."""
    return bool((pod.get("spec") or {}).get("nodeName"))


def typical_cores(pods: list[dict], name: str, default_millicores: int) -> int:
    """Whole cores most live pods run with (allocated, not requested: a resize in progress has
    not given them the new CPU yet), the template's when there are none; at least 1."""
    values = [allocated_millicores(p, name) for p in live(pods)]
    values = [v for v in values if v is not None]
    millicores = Counter(values).most_common(1)[0][0] if values else default_millicores
    return max(1, round(millicores / 1000))


def resize_state(pod: dict, name: str, target_millicores: int) -> str:
    """Where an in-place resize of ``name`` to ``target_millicores`` stands.

    Returns:
        ``Infeasible`` or ``Deferred`` (condition PodResizePending with that reason),
        ``Error`` (PodResizeInProgress with reason Error: the kubelet failed to actuate it),
        ``in progress`` (PodResizeInProgress, or the kubelet has not acted yet) or ``done``
        (the container runs with the target). Conditions as documented in "Resize CPU and
        Memory Resources assigned to Containers" (kubernetes.io, Kubernetes 1.33+).
    """
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == RESIZE_PENDING and cond.get("status") == "True":
            reason = cond.get("reason") or "Deferred"
            return "Infeasible" if reason == "Infeasible" else "Deferred"
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == RESIZE_IN_PROGRESS and cond.get("status") == "True":
            return "Error" if cond.get("reason") == "Error" else "in progress"
    if allocated_millicores(pod, name) == target_millicores:
        return "done"
    return "in progress"


def settled(pod: dict, name: str, cores: int) -> bool:
    """The pod asks for and runs with ``cores`` (requests, and limits when it has one)."""
    target = cores * 1000
    request = desired_millicores(pod, name)
    limit = desired_limit_millicores(pod, name)
    return (
        request == target
        and limit == _limit_for(request, limit, target)
        and allocated_millicores(pod, name) == target
        and resize_state(pod, name, target) == "done"
    )


def resize_patch(pod: dict, name: str, cores: int) -> dict | None:
    """Strategic-merge body for ``pods/{name}/resize``: CPU requests and limits together, so a
    Guaranteed pod stays Guaranteed (a pod without a CPU limit gets none); None when the spec
    already asks for ``cores``."""
    target = cores * 1000
    request = desired_millicores(pod, name)
    limit = desired_limit_millicores(pod, name)
    new_limit = _limit_for(request, limit, target)
    if request == target and limit == new_limit:
        return None
    resources: dict = {"requests": {"cpu": cpu_quantity(cores)}}
    if new_limit is not None:
        resources["limits"] = {"cpu": _millicores_quantity(new_limit)}
    return {
        "metadata": {"resourceVersion": pod["metadata"]["resourceVersion"]},
        "spec": {"containers": [{"name": name, "resources": resources}]},
    }


def _limit_for(request: int | None, limit: int | None, target: int) -> int | None:
    """The CPU limit that goes with a request of ``target`` millicores: none stays none; a limit
    equal to the request (Guaranteed CPU) follows it, so the pod stays Guaranteed; a higher
    limit keeps its headroom above the request, so a Burstable pod stays Burstable (the API
    server refuses a resize that changes the QoS class)."""
    if limit is None:
        return None
    if request is None or limit == request:
        return target
    return target + max(0, limit - request)


def _millicores_quantity(millicores: int) -> str:
    return cpu_quantity(millicores // 1000) if millicores % 1000 == 0 else f"{millicores}m"


def scale_patch(scale: dict, replicas: int) -> dict | None:
    """Merge-patch body for ``deployments/{name}/scale``, or None if it already has them."""
    if (scale.get("spec") or {}).get("replicas") == replicas:
        return None
    return {
        "metadata": {"resourceVersion": scale["metadata"]["resourceVersion"]},
        "spec": {"replicas": int(replicas)},
    }


def hpa_patch(hpa: dict, min_replicas: int) -> dict | None:
    """Merge-patch body setting the HPA's ``minReplicas`` (at most its ``maxReplicas``)."""
    spec = hpa.get("spec") or {}
    value = min(int(min_replicas), int(spec.get("maxReplicas", min_replicas)))
    if spec.get("minReplicas", 1) == value:
        return None
    return {
        "metadata": {"resourceVersion": hpa["metadata"]["resourceVersion"]},
        "spec": {"minReplicas": value},
    }


def hpa_for(hpas: list[dict], deployment: str) -> dict | None:
    """The HPA whose scaleTargetRef is the Deployment, or None."""
    for hpa in hpas:
        ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        if ref.get("kind") == "Deployment" and ref.get("name") == deployment:
            return hpa
    return None


def template_patch(
    deployment: dict, name: str, cores: int, batch: int, batch_env: str | None
) -> dict | None:
    """Strategic-merge body writing ``cores`` (and the batch env var) into the pod template;
    None when the template already has them. This rolls the Deployment's pods."""
    spec = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    c = container(spec, name) or {}
    limits = _cpu(c.get("resources"), "limits")
    same_cpu = template_millicores(deployment, name) == cores * 1000 and limits in (
        None,
        cores * 1000,
    )
    same_batch = batch_env is None or template_env(deployment, name, batch_env) == str(batch)
    if same_cpu and same_batch:
        return None
    item: dict = {"name": name}
    if not same_cpu:
        resources: dict = {"requests": {"cpu": cpu_quantity(cores)}}
        if limits is not None:
            resources["limits"] = {"cpu": cpu_quantity(cores)}
        item["resources"] = resources
    if not same_batch:
        item["env"] = [{"name": batch_env, "value": str(batch)}]
    return {
        "metadata": {"resourceVersion": deployment["metadata"]["resourceVersion"]},
        "spec": {"template": {"spec": {"containers": [item]}}},
    }
