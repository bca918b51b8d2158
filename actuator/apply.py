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

import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd
import urllib3

from actuator import pods as P
from actuator.guards import allowed_workload, not_expired
from actuator.kube import RetryPolicy, converge, describe_error, read_with_retries
from actuator.lease import Lease, lease_name
from actuator.port import ClusterPort
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
from actuator.spec import ServiceSpec, WorkloadSpec
from actuator.target import (
    Floor,
    StageTarget,
    due_steps,
    fallback_replicas,
    refusal,
    stage_target,
    stage_workloads,
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
        wall_clock: the real time (epoch seconds). An active run acts only when its ``now`` is
            within ``max_clock_skew_s`` of it; a replayed or cleared old run only records.
            Injected so tests drive a test clock; production keeps ``time.time``.
        max_clock_skew_s: the largest difference between ``now`` and the wall clock an active
            run tolerates (s).
        identity: who holds the service's Lease while this run acts (host, process, random).
        lease_duration_s: how long the Lease stays held if this run dies without releasing it
            (s); longer than a run with its retries and resize timeout.
    """

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    poll_s: float = 2.0
    sleep: Callable[[float], None] = time.sleep
    load_stable: bool | None = None
    last_scale_up_s: float | None = None
    wall_clock: Callable[[], float] = time.time
    max_clock_skew_s: float = 120.0
    identity: str = field(default_factory=lambda: default_identity())
    lease_duration_s: float = 180.0


@dataclass
class _Observed:
    deployment: dict
    pods: list[dict]
    hpa: dict | None
    current: StageConfig


@dataclass
class _Run:
    """State shared by the steps of one run."""

    config: ServiceSpec
    api: ClusterPort
    options: RunOptions
    record: DecisionRecord
    artifacts: Path
    stopped: bool = False
    observed: dict[str, _Observed] = field(default_factory=dict)
    lease: Lease | None = None

    @property
    def dry_run(self) -> bool:
        """Shadow mode, or an active run that may only record (``record.held`` says why)."""
        return not self.config.active or self.record.held is not None


def actuate(
    plan: Plan,
    services: Sequence[ServiceSpec],
    api: ClusterPort,
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
        api: the cluster port (the Kubernetes API, or the backtest's model).
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
    config = next((c for c in services if c.name == plan.service), None)
    problems: list[str] = []
    if config is None:
        known = [f"service {c.name}" for c in services]
        record = _new_record(plan, "shadow", now, None, None)
        record.refused = allowed_workload(f"service {plan.service}", known)
        append_record(artifacts, record, now)
        return record
    record = _new_record(plan, config.mode, now, config, None)
    run = _Run(config, api, options, record, Path(artifacts))
    try:
        record.refused = refusal(plan, config, now) or _shared_workload(config, services)
        if record.refused is None and config.active:
            record.held = _hold_active(run, plan, now)
            if record.refused is None and record.held is None:
                run.lease, record.held = _take_lease(run, now)
        # The records are read once the Lease is held: a run that finished just before has
        # written its record (before releasing), so its scale-up is seen.
        last_up = options.last_scale_up_s
        if last_up is None:
            last_up = last_scale_up_s(
                artifacts,
                config.name,
                config.mode,
                now,
                config.stabilisation_s,
                problems=problems,
            )
        record.errors += problems
        record.inputs["last_scale_up_at"] = (
            None if last_up is None else iso(pd.Timestamp(last_up, unit="s", tz="UTC"))
        )
        if record.refused is None:
            _apply(run, plan, now, floors or {}, last_up)
        _announce(run, now)
    except Exception as exc:
        record.errors.append(f"internal error: {exc!r}")
        raise
    finally:
        # The record is written before the Lease is released (the next holder reads it).
        try:
            append_record(artifacts, record, now)
        finally:
            if run.lease is not None:
                _release_lease(run)
    return record


def default_identity() -> str:
    """``<host>-<pid>-<random>``: unique per process, readable in ``kubectl get lease``."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _shared_workload(config: ServiceSpec, services: Sequence[ServiceSpec]) -> str | None:
    """Why ``config`` may not act because another service claims one of its Deployments."""
    mine = set(config.allow_list)
    for other in services:
        if other is config or other.name == config.name:
            continue
        shared = sorted(mine & set(other.allow_list))
        if shared:
            return (
                f"workload {shared[0]} is claimed by services {config.name} and "
                f"{other.name}: one Deployment, one owner"
            )
    return None


def _hold_active(run: _Run, plan: Plan, now: pd.Timestamp) -> str | None:
    """Why an active run may only record, or None; may also refuse the plan outright.

    * ``now`` far from the wall clock: a replayed or cleared old run (or a run from the future)
      is not the present; it records what it would do and changes nothing.
    * the plan expired by the wall clock (it may be fresh by the run's ``now``).
    * the operator's kill switch (a ConfigMap) says paused, or cannot be read.
    """
    opts, config = run.options, run.config
    wall_s = float(opts.wall_clock())
    skew = now.timestamp() - wall_s
    run.record.inputs["wall_clock_at"] = iso(pd.Timestamp(wall_s, unit="s", tz="UTC"))
    if abs(skew) > opts.max_clock_skew_s:
        return (
            f"replay: the run's now is {skew:+.0f} s from the wall clock "
            f"(more than {opts.max_clock_skew_s:g} s): recorded, nothing changed"
        )
    expired = not_expired(
        now_s=max(wall_s, now.timestamp()),
        created_s=plan.cutoff.timestamp(),
        expiry_s=config.plan_expiry_s,
    )
    if expired:
        run.record.refused = f"{expired} (by the wall clock)"
        return None
    return _kill_switch(run)


def _kill_switch(run: _Run) -> str | None:
    return kill_switch(run.api, run.config.kill_switch_ref)


def kill_switch(api: ClusterPort, ref: tuple[str, str]) -> str | None:
    """Why the operator's kill switch ConfigMap ``ref`` (namespace, name) pauses active writes,
    or None. Not found: not paused; unreadable for any other reason: paused, to be safe. The
    actuator and the bridge controller read it the same way."""
    from kubernetes.client.exceptions import ApiException

    ns, name = ref
    try:
        cm = api.configmap(ns, name)
    except (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
        if isinstance(exc, ApiException) and exc.status == 404:
            return None
        why = describe_error(exc)
        return f"kill switch configmaps/{name} unreadable ({why}): paused to be safe"
    paused = str((cm.get("data") or {}).get("paused", "")).strip().lower()
    if paused in ("true", "yes", "1"):
        return f"paused by the kill switch configmaps/{name} (data.paused={paused})"
    return None


def _lease_duration_s(run: _Run) -> float:
    """Long enough for the slowest run: per Deployment, the resize timeout and a few bounded
    write retries; renewed before every write all the same (:func:`_still_ours`)."""
    per_workload = run.config.resize_timeout_s + 120.0
    return max(run.options.lease_duration_s, per_workload * len(run.config.workloads))


def _take_lease(run: _Run, now: pd.Timestamp) -> tuple[Lease | None, str | None]:
    """The service's Lease for this run, or why the run may only record."""
    lease = Lease(
        run.api,
        run.config.namespace,
        lease_name(run.config.name),
        run.options.identity,
        duration_s=_lease_duration_s(run),
    )
    why = lease.acquire(now_s=float(run.options.wall_clock()))
    run.record.inputs["lease"] = {"name": lease.name, "identity": lease.identity}
    if why is not None:
        return None, why
    return lease, None


def _release_lease(run: _Run) -> None:
    """Release; a failure is left to the Lease's expiry (the record is already written)."""
    run.lease.release(now_s=float(run.options.wall_clock()))


def _still_ours(run: _Run) -> str | None:
    """Before an active write: renew the Lease (so a slow run never outlives it) and read the
    kill switch again (so a pause stops a run that is under way). Why not to write, or None."""
    if run.lease is None:
        return None
    why = run.lease.acquire(now_s=float(run.options.wall_clock()))
    if why is None:
        why = _kill_switch(run)
    return why


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
    due = due_steps(plan, now, config.run_interval_s, lead_s=config.fallback_lead_s)
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
        _change(run, target, observed, wrec, stable, due[-1].reason if due else "no step due")
    if config.active:
        for wrec in record.workloads:
            _observe_after(run, wrec)


def _observe(run: _Run, workload: WorkloadSpec, wrec: WorkloadRecord) -> _Observed | None:
    """Read the Deployment, its pods and its HPA; None (errors recorded) if any read fails or
    the configured HPA does not scale this Deployment."""
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
    if not labels:
        run.record.errors.append(f"deployments/{name}: no matchLabels selector; not touched")
        return None
    pods = read(f"pods of {name}", lambda: run.api.pods(ns, labels))
    if pods is None:
        return None
    owned = P.owned_by(pods, name)
    if len(owned) < len(pods):
        run.record.errors.append(
            f"deployments/{name}: {len(pods) - len(owned)} pod(s) match its selector but "
            "belong to another controller: ignored"
        )
    pods = owned
    hpa = None
    if workload.hpa:
        hpa = read(
            f"horizontalpodautoscalers/{workload.hpa}", lambda: run.api.hpa(ns, workload.hpa)
        )
        if hpa is None:
            return None
        if P.hpa_for([hpa], name) is None:
            ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
            run.record.errors.append(
                f"horizontalpodautoscalers/{workload.hpa} scales {ref.get('kind')}/"
                f"{ref.get('name')}, not deployments/{name}: not touched"
            )
            return None
    else:
        hpas = read("horizontalpodautoscalers", lambda: run.api.hpas(ns))
        if hpas is None:
            return None
        hpa = P.hpa_for(hpas, name)
        if hpa is not None:
            # An HPA scales this Deployment but the config does not name it: writing the scale
            # would fight it, and moving an HPA nobody allow-listed is not ours to do.
            found = hpa["metadata"]["name"]
            run.record.errors.append(
                f"deployments/{name} is scaled by horizontalpodautoscalers/{found}, which the "
                f"service config does not name (hpa: {found}): not touched"
            )
            return None
    wrec.hpa = None if hpa is None else hpa["metadata"]["name"]
    template_m = P.template_millicores(deployment, workload.container)
    if template_m is None:
        run.record.errors.append(
            f"deployments/{name}: container {workload.container} has no CPU request"
        )
        return None
    cores = P.typical_cores(pods, workload.container, template_m)
    batch = 0
    if workload.batch_env:
        value = P.template_env(deployment, workload.container, workload.batch_env)
        batch = int(value) if value and value.isdigit() else 0
    replicas = int((deployment.get("spec") or {}).get("replicas", 1))
    if hpa is not None:
        # Under an HPA the actuator's lever is the HPA's floor: the guards (stabilisation, step,
        # scale-in confirmation) judge moves of minReplicas; the HPA may run more replicas on
        # its own metric, and the actuator never fights it.
        replicas = int((hpa.get("spec") or {}).get("minReplicas", 1))
    observed = _Observed(deployment, pods, hpa, StageConfig(replicas, cores, batch))
    run.observed[name] = observed
    return observed


def _change(
    run: _Run,
    target: StageTarget,
    observed: _Observed,
    wrec: WorkloadRecord,
    stable: bool,
    step_reason: str,
) -> None:
    """Make-before-break: replicas up, resize in place (with fallback), replicas down,
    template.

    Replicas are removed only once every resize this run asked for is confirmed (the kubelet
    reports the new CPU allocated): a resize still in progress, deferred, infeasible, failed or
    refused by the API counts as missing CPU. Missing CPU is made up with extra replicas sized by
    what a new pod really gets (the template's CPU), through the step limit and the bounds.
    The missing CPU is counted against the target with every pod that stays, so the fallback
    replicas of an earlier run count too: a re-run while resizes stay refused adds nothing more.
    """
    goal, now_n = target.target, target.current.replicas
    if goal.replicas > now_n:
        _do(run, _replicas_change(run, target, observed, wrec, now_n, goal.replicas, step_reason))
    ready = [p for p in P.live(observed.pods) if P.is_ready(p)]
    if goal.cores < target.current.cores and len(ready) < goal.replicas:
        # Make before break in place too: the running pods shrink only once the replicas
        # that take over their load are ready (a later run does it).
        wrec.bound_by.append(
            f"make before break: pods keep {target.current.cores} cores until "
            f"{goal.replicas} replicas are ready ({len(ready)} now)"
        )
        target = replace(target, target=replace(goal, cores=target.current.cores))
        goal = target.target
    running, unconfirmed = _resize(run, target, observed, step_reason)
    needed = min(goal.replicas, (target.needed or goal).replicas) * goal.cores * 1000
    final = goal.replicas
    if unconfirmed and goal.replicas < now_n:
        # Remove only as many replicas as the confirmed CPU allows, counting the worst case:
        # the ReplicaSet picks which pods go, so the smallest may be the ones that stay. A
        # reshape that waits for room on the node thus still makes progress, run by run.
        smallest = sorted(running)
        final = next(
            (k for k in range(goal.replicas, now_n) if sum(smallest[:k]) >= needed), now_n
        )
        wrec.bound_by.append(
            f"make before break: {final} of {now_n} replicas kept until the resized pods are "
            f"confirmed at {goal.cores} cores"
        )
    template_m = P.template_millicores(observed.deployment, target.workload.container) or 1000
    # What the Deployment will carry with ``final`` replicas: the pods it runs, as confirmed
    # (the smallest, when some go), and new ones at the target (resized by a later run once
    # ready, like starting pods).
    kept = sorted(running)[:final] if final < len(running) else running
    expected = sum(kept) + max(0, final - len(kept)) * goal.cores * 1000
    missing = max(0, needed - expected) if running and not run.stopped else 0
    waiting = [p for p in P.live(observed.pods) if not P.is_scheduled(p)]
    if missing and waiting:
        # Pods already wait for room: more would wait too. The record says so.
        wrec.bound_by.append(
            f"no fallback replicas: {len(waiting)} pod(s) already Pending without room"
        )
        missing = 0
    if missing:
        wanted, note = fallback_replicas(
            final,
            missing,
            new_pod_millicores=template_m,
            current_replicas=now_n,
            config=run.config,
            workload=target.workload,
        )
        if note:
            wrec.bound_by.append(note)
        final = max(wanted, final)
    if final > max(goal.replicas, now_n):
        new_pod_m = P.template_millicores(observed.deployment, target.workload.container) or 0
        why = (
            f"in-place resizes short by {missing / 1000:g} cores: add replicas of "
            f"{new_pod_m / 1000:g} cores instead"
        )
        _do(
            run,
            _replicas_change(
                run,
                target,
                observed,
                wrec,
                max(goal.replicas, now_n),
                final,
                why,
                what="fallback replicas",
            ),
        )
    elif final < now_n:
        _do(run, _replicas_change(run, target, observed, wrec, now_n, final, step_reason))
    _template(run, target, observed, stable)


def _do(
    run: _Run, item: tuple[Change, Callable, Callable, Callable], *, stop: bool = True
) -> Change:
    """Run one declarative write (or record it as not attempted after a failure).

    Args:
        stop: a failure stops the run (later changes are not attempted). In-place resizes pass
            False: a refused resize is made up with replicas, which must still be tried.
    """
    change, read, build, write = item
    run.record.changes.append(change)
    if run.stopped:
        change.outcome = "not attempted"
        return change
    if not run.dry_run:
        why = _still_ours(run)
        if why is not None:
            change.outcome = "not attempted"
            run.record.errors.append(f"{change.target}: {why}")
            run.stopped = True
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
        run.stopped = run.stopped or stop
    return change


def _replicas_change(run, target, observed, wrec, before, after, reason, what="replicas"):
    ns, name = run.config.namespace, target.workload.deployment
    direction = "up" if after > before else "down"
    if observed.hpa is not None:
        # Under an HPA the actuator moves its floor: the change is to minReplicas, from what
        # the HPA has now (the replicas may be higher: the HPA's own metric wants more).
        hpa = observed.hpa["metadata"]["name"]
        hpa_spec = observed.hpa.get("spec") or {}
        before = int(hpa_spec.get("minReplicas", 1))
        ceiling = int(hpa_spec.get("maxReplicas", after))
        if after > ceiling:
            wrec.bound_by.append(
                f"hpa {hpa}: minReplicas {after} capped at its maxReplicas {ceiling}"
            )
            reason = f"{reason}; capped at the HPA's maxReplicas {ceiling}"
            after = ceiling
        direction = "up" if after > before else "down" if after < before else "none"
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


def _resize(
    run: _Run, target: StageTarget, observed: _Observed, reason: str
) -> tuple[list[int], bool]:
    """Resize every ready pod that is not at the target cores; wait for the kubelet.

    Returns:
        (running, unconfirmed); empty and False in shadow mode. ``running``: per live pod, the
        millicores it is confirmed to run with: a resize refused by the API (403, 404 on a
        cluster without the subresource, 5xx after retries) or not done by the resize timeout
        (Infeasible, Deferred, in progress, Error) adds nothing; a pod still starting counts
        at the target, as a later run resizes it once ready (if that fails, that run falls
        back). ``unconfirmed``: some pod is not confirmed at the target yet, so no replica
        may go.
    """
    ns, wl = run.config.namespace, target.workload
    cores = target.target.cores
    target_m = cores * 1000
    watched: list[tuple[Change, str]] = []
    unconfirmed = False
    for pod in P.live(observed.pods):
        pod_name = pod["metadata"]["name"]
        if P.settled(pod, wl.container, cores):
            continue
        before = round((P.desired_millicores(pod, wl.container) or 0) / 1000, 3)
        allocated = P.allocated_millicores(pod, wl.container) or 0
        direction = "up" if target_m > allocated else "down"
        change = Change(
            wl.deployment, "cpu", f"pods/{pod_name}/resize", before, cores, reason, direction
        )
        if not P.is_ready(pod):
            change.outcome = "skipped"
            change.reason = "pod not ready yet: resized by a later run once ready"
            run.record.changes.append(change)
            continue
        _do(run, (change, *resize_calls(run.api, ns, pod_name, wl.container, cores)), stop=False)
        if not run.dry_run and change.outcome in ("applied", "unchanged"):
            watched.append((change, pod_name))
        elif not run.dry_run:
            unconfirmed = unconfirmed or direction == "up"
    if run.dry_run:
        return [], False
    confirmed = _watch_resizes(run, wl, cores, watched) if watched else {}
    for change, name in watched:
        if change.resize in ("Infeasible", "Error") and change.direction == "up":
            _revert(run, wl, name, confirmed.get(name, 0))
    unconfirmed = unconfirmed or any(
        c.resize != "done" and c.direction == "up" for c, _ in watched
    )
    running = []
    for pod in P.live(observed.pods):
        name = pod["metadata"]["name"]
        if name in confirmed:
            running.append(confirmed[name])
        elif P.is_ready(pod):
            running.append(P.allocated_millicores(pod, wl.container) or 0)
        else:
            running.append(max(target_m, P.desired_millicores(pod, wl.container) or 0))
    return running, unconfirmed


def _revert(run: _Run, wl: WorkloadSpec, pod_name: str, allocated_m: int) -> None:
    """Ask for what the pod runs with again after a resize the kubelet refused for good.

    The scheduler reserves the larger of the desired and the allocated resources of a pod
    whose resize is pending ("Resize CPU and Memory Resources assigned to Containers",
    kubernetes.io), so a refused resize left in the spec would keep room from the fallback
    replicas meant to replace it.
    """
    back = max(1, -(-allocated_m // 1000))
    ns = run.config.namespace
    change = Change(
        wl.deployment,
        "cpu",
        f"pods/{pod_name}/resize",
        None,
        back,
        "revert a refused resize: the spec would keep reserving the refused CPU on the node",
    )
    _do(run, (change, *resize_calls(run.api, ns, pod_name, wl.container, back)), stop=False)


def resize_calls(
    api: ClusterPort, namespace: str, pod: str, container: str, cores: int
) -> tuple[Callable[[], dict], Callable[[dict], dict | None], Callable[..., dict]]:
    """The (read, build, write) of one declarative in-place resize of ``pod`` to ``cores``
    (CPU requests and limits together), for :func:`actuator.kube.converge`: a fresh GET of the
    pod, the ``pods/{pod}/resize`` patch with the ``resourceVersion`` read (None when the spec
    already asks for ``cores``), and the PATCH (``write(body, dry_run=...)``). The actuator's
    runs and the bridge controller resize through it."""
    return (
        lambda: api.pod(namespace, pod),
        lambda obj: P.resize_patch(obj, container, cores),
        lambda body, dry_run: api.patch_resize(namespace, pod, body, dry_run=dry_run),
    )


def _watch_resizes(run: _Run, wl: WorkloadSpec, cores: int, watched) -> dict[str, int]:
    """Poll the resized pods until each is done or Infeasible, or the timeout passes.

    Returns:
        Per pod, the millicores it is confirmed to run with: the target when the kubelet reports
        the resize done, else what it reports allocated (0 when the pod cannot be read).
    """
    ns, target_m = run.config.namespace, cores * 1000
    pending = {name: change for change, name in watched}
    allocated: dict[str, int] = {name: 0 for _, name in watched}
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
            if state in ("done", "Infeasible", "Error"):
                del pending[name]
        if not pending or waited >= run.config.resize_timeout_s:
            break
        step = min(run.options.poll_s, run.config.resize_timeout_s - waited)
        run.options.sleep(step)
        waited += step
    return allocated


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
        pods = P.live(P.owned_by(run.api.pods(ns, labels), wl.deployment))
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


def _create_event(api: ClusterPort, namespace: str, body: dict) -> str:
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
