"""Apply a Plan to a service's Deployments: observe, target, change, watch, record.

One run for one service (:func:`actuate`):

1. Refuse the whole plan if it is for a service not in the config, names a stage without a
   Deployment, or has expired (recorded; nothing touched).
2. Per Deployment: read it, its pods and its HPA; take the due plan steps' state through the
   guards (:mod:`actuator.target`).
3. Change, make-before-break: add replicas; resize ready pods in place; wait up to the resize
   timeout and add replicas for resizes that are Infeasible or still Deferred; remove replicas;
   rewrite the template (only with ``rewrite_template``, only while the load is stable).
   Every write is declarative and retried by :func:`actuator.kube.converge`; after the first
   failure the run stops and records the rest as ``not attempted``. In shadow mode every write
   is a server-side dry run.
4. Record: an Event on every Deployment, metrics to the Pushgateway, one JSON line with every
   change and its outcome. The record is written even if the run dies half-way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd

from actuator import pods as P
from actuator.config import ServiceConfig, WorkloadConfig
from actuator.guards import allowed_workload
from actuator.kube import KubeApi, RetryPolicy, converge, describe_error, read_with_retries
from actuator.records import (
    Change,
    DecisionRecord,
    WorkloadRecord,
    append_record,
    event_body,
    last_scale_up_s,
    push_metrics,
    update_counters,
)
from actuator.target import (
    Floor,
    StageTarget,
    due_steps,
    fallback_replicas,
    refusal,
    stage_target,
    stage_workloads,
    wanted_state,
)
from planner.dp import StageConfig
from planner.plan import Plan, iso, utc_timestamp

STABLE_KINDS = ("hold", "scale-in")
"""Plan steps that mean the load is stable: the pod template may be rewritten."""


@dataclass(frozen=True)
class RunOptions:
    """How one run talks to the API; the defaults suit a real cluster.

    Attributes:
        retry: bounded retries of every call.
        poll_s: interval between two looks at pending resizes (s).
        sleep: waits (s); injected so tests drive a fake clock.
        load_stable: whether the load is stable (template rewrites allowed); None: stable when
            every plan step is a hold or a scale-in.
        last_scale_up_s: epoch seconds of the last scale-up, for the stabilisation guard; None:
            taken from the service's decision records.
    """

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    poll_s: float = 2.0
    sleep: Callable[[float], None] = time.sleep
    load_stable: bool | None = None
    last_scale_up_s: float | None = None


@dataclass
class _Observed:
    deployment: dict
    pods: list[dict]
    hpa: dict | None
    current: StageConfig


@dataclass
class _Run:
    """State shared by the steps of one run."""

    config: ServiceConfig
    api: KubeApi
    options: RunOptions
    record: DecisionRecord
    artifacts: Path
    stopped: bool = False
    observed: dict[str, _Observed] = field(default_factory=dict)

    @property
    def dry_run(self) -> bool:
        return not self.config.active


def actuate(
    plan: Plan,
    services: Sequence[ServiceConfig],
    api: KubeApi,
    *,
    now,
    artifacts: Path,
    floors: Mapping[int, Floor] | None = None,
    options: RunOptions | None = None,
) -> DecisionRecord:
    """Apply the due part of ``plan`` to the service it names; record the decision.

    Args:
        plan: the planner's Plan.
        services: the service configs; only a service named here is touched.
        api: the Kubernetes API.
        now: the run's time (tz-aware timestamp or ISO string); never read from a clock here.
        artifacts: root of the artifact store; the record goes to
            ``decisions/<service>/<YYYY-MM-DD>.jsonl`` under it.
        floors: reactive floor per plan stage index (optional).
        options: retries, resize polling, sleep, overrides.

    Returns:
        The decision record, as written.
    """
    now = utc_timestamp(now, "now")
    options = options or RunOptions()
    config = next((c for c in services if c.service == plan.service), None)
    if config is None:
        known = [f"service {c.service}" for c in services]
        record = _new_record(plan, "shadow", now, None, None)
        record.refused = allowed_workload(f"service {plan.service}", known)
        append_record(artifacts, record, now)
        return record
    last_up = options.last_scale_up_s
    if last_up is None:
        last_up = last_scale_up_s(
            artifacts, config.service, config.mode, now, config.stabilisation_s
        )
    record = _new_record(plan, config.mode, now, config, last_up)
    run = _Run(config, api, options, record, Path(artifacts))
    try:
        record.refused = refusal(plan, config, now)
        if record.refused is None:
            _apply(run, plan, now, floors or {}, last_up)
        _announce(run, now)
    except Exception as exc:
        record.errors.append(f"internal error: {exc!r}")
        raise
    finally:
        append_record(artifacts, record, now)
    return record


def _new_record(plan, mode, now, config, last_up) -> DecisionRecord:
    return DecisionRecord(
        service=plan.service,
        mode=mode,
        run_at=iso(now),
        inputs={
            "plan_cutoff": iso(plan.cutoff),
            "plan_steps": len(plan.steps),
            "stage_names": list(plan.stage_names),
            "slo_ms": plan.slo_ms,
            "run_interval_s": None if config is None else config.run_interval_s,
            "plan_expiry_s": None if config is None else config.plan_expiry_s,
            "last_scale_up_at": None
            if last_up is None
            else iso(pd.Timestamp(last_up, unit="s", tz="UTC")),
        },
        quantile=plan.quantile,
    )


# --------------------------------------------------------------------------------------------
# the run


def _apply(run: _Run, plan: Plan, now, floors: Mapping[int, Floor], last_up) -> None:
    config, record = run.config, run.record
    due = due_steps(plan, now, config.run_interval_s)
    record.due_steps = [i for i, s in enumerate(plan.steps) if s in due]
    record.chosen_step = due[-1].to_dict() if due else None
    stable = run.options.load_stable
    if stable is None:
        stable = all(s.kind in STABLE_KINDS for s in plan.steps)
    record.inputs["load_stable"] = stable
    if floors:
        record.inputs["observed_rps"] = max(f.observed_rps for f in floors.values())
    for stage, workload in stage_workloads(plan, config):
        wrec = WorkloadRecord(workload.deployment, stage)
        record.workloads.append(wrec)
        observed = _observe(run, workload, wrec)
        if observed is None:
            run.stopped = True
            continue
        fallback_batch = due[-1].batch[stage] if due else observed.current.batch
        current = StageConfig(observed.current.replicas, observed.current.cores, fallback_batch)
        if workload.batch_env and observed.current.batch:
            current = observed.current
        target = stage_target(
            config,
            workload,
            stage,
            due,
            current,
            now=now,
            last_scale_up_s=last_up,
            floor=floors.get(stage),
        )
        wrec.current, wrec.wanted, wrec.target = (
            asdict(target.current),
            asdict(target.wanted),
            asdict(target.target),
        )
        wrec.bound_by = list(target.notes)
        # What the plan alone asks for, without the current state: the base of a resize
        # fallback, so that a re-run does not stack replicas on the fallback's own.
        plan_replicas = (
            wanted_state(due, stage, StageConfig(1, 1, 1), now).replicas
            if due
            else target.current.replicas
        )
        _change(
            run,
            target,
            observed,
            wrec,
            stable,
            plan_replicas,
            due[-1].reason if due else "no step due",
        )
    if config.active:
        for wrec in record.workloads:
            _observe_after(run, wrec)


def _observe(run: _Run, workload: WorkloadConfig, wrec: WorkloadRecord) -> _Observed | None:
    """Read the Deployment, its pods and its HPA; None (errors recorded) if any read fails."""
    ns, name = run.config.namespace, workload.deployment
    retry, sleep = run.options.retry, run.options.sleep

    def read(what: str, fn):
        value, errors = read_with_retries(fn, retry=retry, sleep=sleep)
        if value is None:
            run.record.errors.append(f"read {what}: {errors[-1] if errors else 'failed'}")
        return value

    deployment = read(f"deployments/{name}", lambda: run.api.deployment(ns, name))
    if deployment is None:
        return None
    labels = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    pods = read(f"pods of {name}", lambda: run.api.pods(ns, labels))
    if pods is None:
        return None
    hpa = None
    if workload.hpa:
        hpa = read(
            f"horizontalpodautoscalers/{workload.hpa}", lambda: run.api.hpa(ns, workload.hpa)
        )
        if hpa is None:
            return None
    else:
        hpas = read("horizontalpodautoscalers", lambda: run.api.hpas(ns))
        if hpas is None:
            return None
        hpa = P.hpa_for(hpas, name)
    wrec.hpa = None if hpa is None else hpa["metadata"]["name"]
    if P.template_millicores(deployment, workload.container) is None:
        run.record.errors.append(
            f"deployments/{name}: container {workload.container} has no CPU request"
        )
        return None
    cores = P.typical_cores(
        pods, workload.container, P.template_millicores(deployment, workload.container)
    )
    batch = 0
    if workload.batch_env:
        value = P.template_env(deployment, workload.container, workload.batch_env)
        batch = int(value) if value and value.isdigit() else 0
    replicas = int((deployment.get("spec") or {}).get("replicas", 1))
    observed = _Observed(deployment, pods, hpa, StageConfig(replicas, cores, batch))
    run.observed[name] = observed
    return observed


def _change(
    run: _Run,
    target: StageTarget,
    observed: _Observed,
    wrec: WorkloadRecord,
    stable: bool,
    plan_replicas: int,
    step_reason: str,
) -> None:
    """Make-before-break: replicas up, resize in place (with fallback), replicas down,
    template.

    The fallback for refused resizes adds replicas on top of what the plan asks for
    (``plan_replicas``, within the guards' target), not on top of the current count, so a
    re-run while the resizes stay refused asks for the same count again.
    """
    goal, now_n = target.target, target.current.replicas
    if goal.replicas > now_n:
        _do(run, _replicas_change(run, target, observed, now_n, goal.replicas, step_reason))
    missing = _resize(run, target, observed, step_reason)
    final, note = goal.replicas, None
    if missing:
        base = replace(goal, replicas=min(goal.replicas, plan_replicas))
        final, note = fallback_replicas(base, missing, target.workload)
        final = max(final, goal.replicas) if final >= now_n else final
    if note:
        wrec.bound_by.append(note)
    if final > max(goal.replicas, now_n):
        why = f"in-place resize short by {missing / 1000:g} cores: add replicas instead"
        _do(
            run,
            _replicas_change(
                run,
                target,
                observed,
                max(goal.replicas, now_n),
                final,
                why,
                what="fallback replicas",
            ),
        )
    elif final < now_n:
        _do(run, _replicas_change(run, target, observed, now_n, final, step_reason))
    _template(run, target, observed, stable)


def _do(run: _Run, item: tuple[Change, Callable, Callable, Callable]) -> Change:
    """Run one declarative write (or record it as not attempted after a failure)."""
    change, read, build, write = item
    run.record.changes.append(change)
    if run.stopped:
        change.outcome = "not attempted"
        return change
    result = converge(
        read,
        build,
        lambda body: write(body, dry_run=run.dry_run),
        retry=run.options.retry,
        sleep=run.options.sleep,
        dry_run=run.dry_run,
    )
    change.outcome, change.attempts, change.errors = result.outcome, result.attempts, result.errors
    if not result.ok:
        run.record.errors.append(f"{change.target}: {result.errors[-1]}")
        run.stopped = True
    return change


def _replicas_change(run, target, observed, before, after, reason, what="replicas"):
    ns, name = run.config.namespace, target.workload.deployment
    direction = "up" if after > before else "down"
    if observed.hpa is not None:
        hpa = observed.hpa["metadata"]["name"]
        change = Change(
            name,
            "hpa minReplicas",
            f"horizontalpodautoscalers/{hpa}",
            before,
            after,
            reason,
            direction,
        )
        return (
            change,
            lambda: run.api.hpa(ns, hpa),
            lambda obj: P.hpa_patch(obj, after),
            lambda body, dry_run: run.api.patch_hpa(ns, hpa, body, dry_run=dry_run),
        )
    change = Change(name, what, f"deployments/{name}/scale", before, after, reason, direction)
    return (
        change,
        lambda: run.api.scale(ns, name),
        lambda obj: P.scale_patch(obj, after),
        lambda body, dry_run: run.api.patch_scale(ns, name, body, dry_run=dry_run),
    )


def _resize(run: _Run, target: StageTarget, observed: _Observed, reason: str) -> int:
    """Resize every ready pod that is not at the target cores; wait for the kubelet.

    Returns:
        Millicores the Infeasible or still-Deferred resizes leave missing (0 in shadow mode).
    """
    ns, wl = run.config.namespace, target.workload
    cores = target.target.cores
    watched: list[tuple[Change, str]] = []
    for pod in P.live(observed.pods):
        pod_name = pod["metadata"]["name"]
        if P.settled(pod, wl.container, cores):
            continue
        before = round((P.desired_millicores(pod, wl.container) or 0) / 1000, 3)
        direction = (
            "up" if cores * 1000 > (P.allocated_millicores(pod, wl.container) or 0) else "down"
        )
        change = Change(
            wl.deployment, "cpu", f"pods/{pod_name}/resize", before, cores, reason, direction
        )
        if not P.is_ready(pod):
            change.outcome = "skipped"
            change.reason = "pod not ready yet: resized by a later run once ready"
            run.record.changes.append(change)
            continue
        _do(
            run,
            (
                change,
                lambda n=pod_name: run.api.pod(ns, n),
                lambda obj: P.resize_patch(obj, wl.container, cores),
                lambda body, dry_run, n=pod_name: run.api.patch_resize(
                    ns, n, body, dry_run=dry_run
                ),
            ),
        )
        if change.outcome in ("applied", "unchanged") and not run.dry_run:
            watched.append((change, pod_name))
    if not watched:
        return 0
    return _watch_resizes(run, wl, cores, watched)


def _watch_resizes(run: _Run, wl: WorkloadConfig, cores: int, watched) -> int:
    """Poll the resized pods until each is done or Infeasible, or the timeout passes."""
    ns, target_m = run.config.namespace, cores * 1000
    pending = {name: change for change, name in watched}
    allocated: dict[str, int] = {}
    waited = 0.0
    while True:
        for name in list(pending):
            pod, errors = read_with_retries(
                lambda n=name: run.api.pod(ns, n), retry=run.options.retry, sleep=run.options.sleep
            )
            change = pending[name]
            if pod is None:
                change.errors += errors
                change.resize = "unknown"
                run.record.errors.append(f"pods/{name}: {errors[-1] if errors else 'read failed'}")
                del pending[name]
                continue
            state = P.resize_state(pod, wl.container, target_m)
            change.resize = state
            allocated[name] = P.allocated_millicores(pod, wl.container) or 0
            if state in ("done", "Infeasible"):
                del pending[name]
        if not pending or waited >= run.config.resize_timeout_s:
            break
        step = min(run.options.poll_s, run.config.resize_timeout_s - waited)
        run.options.sleep(step)
        waited += step
    missing = 0
    for change, name in watched:
        if change.resize in ("Infeasible", "Deferred"):
            missing += max(0, target_m - allocated.get(name, target_m))
    return missing


def _template(run: _Run, target: StageTarget, observed: _Observed, stable: bool) -> None:
    wl = target.workload
    if not run.config.rewrite_template:
        return
    ns, name = run.config.namespace, wl.deployment
    goal = target.target
    if (
        P.template_patch(observed.deployment, wl.container, goal.cores, goal.batch, wl.batch_env)
        is None
    ):
        return
    before = round(P.template_millicores(observed.deployment, wl.container) / 1000, 3)
    change = Change(
        name,
        "template",
        f"deployments/{name}",
        before,
        goal.cores,
        "pod template follows the target while the load is stable",
    )
    if not stable:
        change.outcome = "skipped"
        change.reason = "load not stable: the template (which rolls the pods) is left as is"
        run.record.changes.append(change)
        return
    _do(
        run,
        (
            change,
            lambda: run.api.deployment(ns, name),
            lambda obj: P.template_patch(obj, wl.container, goal.cores, goal.batch, wl.batch_env),
            lambda body, dry_run: run.api.patch_deployment(ns, name, body, dry_run=dry_run),
        ),
    )


def _observe_after(run: _Run, wrec: WorkloadRecord) -> None:
    """What the cluster reports at the end of the run: spec and ready replicas, cores."""
    ns = run.config.namespace
    wl = next(w for w in run.config.workloads if w.deployment == wrec.deployment)
    try:
        dep = run.api.deployment(ns, wl.deployment)
        labels = (dep.get("spec") or {}).get("selector", {}).get("matchLabels") or {}
        pods = run.api.pods(ns, labels)
    except Exception as exc:  # recorded, the run's outcome stands
        run.record.errors.append(f"read back {wl.deployment}: {describe_error(exc)}")
        return
    ready = [p for p in pods if P.is_ready(p)]
    cores = [P.allocated_millicores(p, wl.container) or 0 for p in ready]
    wrec.after = {
        "replicas": int((dep.get("spec") or {}).get("replicas", 0)),
        "ready_replicas": len(ready),
        "cores": round(max(cores) / 1000, 3) if cores else 0,
        "ready_cores_total": round(sum(cores) / 1000, 3),
    }


# --------------------------------------------------------------------------------------------
# event and metrics


def _announce(run: _Run, now) -> None:
    """An Event on every Deployment read this run, then the metrics; failures are recorded."""
    record, config = run.record, run.config
    if record.refused and not run.observed:
        _observe_for_event(run)
    for name, observed in run.observed.items():
        body = event_body(record, config.namespace, observed.deployment, now)
        value, errors = read_with_retries(
            lambda b=body: _create_event(run.api, config.namespace, b),
            retry=run.options.retry,
            sleep=run.options.sleep,
        )
        if value is None:
            record.errors.append(f"event on deployments/{name}: {errors[-1]}")
            record.event = f"failed: {errors[-1]}"
        elif record.event is None:
            record.event = f"{body['reason']} ({value})"
    if not run.observed:
        record.event = "not created: no Deployment could be read"
    counters = update_counters(run.artifacts, record)
    if config.pushgateway_url is None:
        record.metrics = "not configured"
        return
    try:
        push_metrics(config.pushgateway_url, record, counters)
        record.metrics = f"pushed to {config.pushgateway_url}"
    except OSError as exc:
        record.errors.append(f"pushgateway: {exc}")
        record.metrics = f"failed: {exc}"


def _create_event(api: KubeApi, namespace: str, body: dict) -> str:
    from kubernetes.client.exceptions import ApiException

    try:
        api.create_event(namespace, body)
    except ApiException as exc:
        if exc.status == 409:  # a retried create of this run's Event: it is there
            return "already created"
        raise
    return "created"


def _observe_for_event(run: _Run) -> None:
    """A refused plan still leaves an Event on the service's Deployments (read only)."""
    for wl in run.config.workloads:
        value, errors = read_with_retries(
            lambda w=wl: run.api.deployment(run.config.namespace, w.deployment),
            retry=run.options.retry,
            sleep=run.options.sleep,
        )
        if value is None:
            run.record.errors.append(f"read deployments/{wl.deployment}: {errors[-1]}")
            continue
        run.observed[wl.deployment] = _Observed(value, [], None, StageConfig(1, 1, 1))
