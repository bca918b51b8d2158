"""The in-place bridge controller on any cluster port (the decision is :mod:`actuator.bridge`).

One tick for one service (:meth:`BridgeController.tick`):

1. **Leader**: take the Lease ``surgecast-bridge-<service>``; a replica that does not hold it does
   nothing (the holder records and pushes), so replicas of the controller never fight.
2. **Precedence**: while the pipeline's actuator holds the service's Lease ``surgecast-<service>``
   the tick is skipped (recorded): the pipeline owns replicas and the envelope, and its run is
   changing them.
3. **Safety, as the actuator**: a ``now`` far from the wall clock, or the kill switch ConfigMap
   (active mode), turn the tick into a record-only one (server-side dry runs, as shadow mode).
4. **Signal**: the injected reader (production: a Prometheus instant query over the bridge's
   short window, :mod:`surgecast.live.bridge`). No usable signal: nothing moves.
5. **Envelope**: the service's latest plan. An expired (``plan_expiry_s``, by the wall clock
   too), corrupt or missing plan gives no floor from a plan: the floor is then the cores
   of the Deployment's pod template (the reactive fallback: the bridge grows pods for a surge and
   gives the cores back down to the template, never below).
6. **Decide** (:func:`actuator.bridge.decide`) and **resize** the ready pods through the
   actuator's own declarative, retried write path (:func:`actuator.apply.resize_calls` with
   :func:`actuator.kube.converge`); never replicas. A resize the kubelet reports ``Infeasible``
   is reverted (the scheduler would keep reserving it) and that pod is not asked again for as
   many cores for ``refused_cooldown_s``: no hot loop.
7. **Record** like the pipeline's runs (:class:`actuator.records.DecisionRecord`, ``kind:
   "bridge"``, the same files): every tick that changes or would change something, and every
   change of what holds it back; a steady state writes nothing. Metrics go to the Pushgateway
   every tick (job ``surgecast_bridge``; ``surgecast_bridge_last_run_timestamp_seconds`` is the
   heartbeat).
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from actuator import pods as P
from actuator.apply import default_identity, kill_switch, resize_calls
from actuator.bridge import (
    DOWN,
    HOLD,
    UP,
    BridgeDecision,
    StageNow,
    bridge_settings,
    decide,
    envelope,
    held_by,
    plan_step_now,
)
from actuator.guards import not_expired
from actuator.kube import RetryPolicy, converge, read_with_retries
from actuator.lease import Lease, lease_name
from actuator.records import (
    Change,
    DecisionRecord,
    WorkloadRecord,
    append_record,
    event_body,
    last_scale_up_s,
    push_metrics,
)
from actuator.spec import BridgeSpec
from planner.plan import Plan, iso
from planner.profiles import Pipeline

log = logging.getLogger(__name__)

BRIDGE_JOB = "surgecast_bridge"
"""Pushgateway job of the bridge's metrics (the actuator pushes ``surgecast_actuator``)."""


def bridge_lease_name(service: str) -> str:
    """The bridge's Lease of ``service``: ``surgecast-bridge-<service>``."""
    return lease_name(f"bridge-{service}")


# --------------------------------------------------------------------------------------------
# options and state


@dataclass(frozen=True)
class BridgeOptions:
    """How the controller talks to the world; the defaults suit production.

    Attributes:
        wall_clock: the real time (epoch s); injected so tests drive a test clock.
        sleep: waits between retries (s).
        retry: bounded retries of one API call; short, as the next tick comes in seconds.
        max_clock_skew_s: the largest difference between a tick's ``now`` and the wall clock
            before it only records (as the actuator's).
        identity: this replica's name in the Leases.
        refused_cooldown_s: a pod whose resize was Infeasible is not asked again for as many
            cores for this long (s).
        interval_s: overrides every service's ``bridge.interval_s`` (the CLI's --interval).
        knobs: replaces every service's bridge settings (benchmarks, tests); None: the spec's.
    """

    wall_clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    retry: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(attempts=2, backoff_s=0.2, request_timeout_s=5.0)
    )
    max_clock_skew_s: float = 120.0
    identity: str = field(default_factory=lambda: default_identity())
    refused_cooldown_s: float = 120.0
    interval_s: float | None = None
    knobs: BridgeSpec | None = None


@dataclass
class _ServiceState:
    """What the controller remembers of one service between ticks (this replica only)."""

    lease: Lease
    last_up_s: float | None = None
    recovered: bool = False
    window: deque = field(default_factory=deque)
    last_key: str | None = None
    refused: dict[str, tuple[int, float]] = field(default_factory=dict)
    counters: dict[str, int] = field(
        default_factory=lambda: {"decisions": 0, "changes_applied": 0, "errors": 0}
    )


@dataclass(frozen=True)
class TickResult:
    """One tick of one service.

    Attributes:
        service: its name.
        leader: this replica held the bridge's Lease (only then does it act or record).
        record: the decision record of the tick (also when not written).
        written: the record was written (a change, or a new reason to hold).
        decision: the bridge's decision, None when the tick stopped before deciding.
    """

    service: str
    leader: bool
    record: DecisionRecord | None
    written: bool = False
    decision: BridgeDecision | None = None


@dataclass
class _Stage:
    index: int
    workload: Any
    deployment: dict
    ready: list[dict]
    live: list[dict]
    batch: int
    batch_from: str


Signal = Callable[[Any, BridgeSpec, pd.Timestamp, DecisionRecord], "float | None"]
"""(service, bridge knobs, now, record) -> the fast load signal (rps) at ``now`` from data at or
before it, or None with the problem appended to ``record.errors``."""

Plans = Callable[[Any, pd.Timestamp, DecisionRecord], "tuple[Plan | None, str]"]
"""(service, now, record) -> the service's latest plan at or before ``now``, or None and why
not (no plan, unreadable, carries an error). The controller checks its service and expiry."""

Model = Callable[[Any], "tuple[Pipeline, float]"]
"""service -> (its latency profile, its end-to-end SLO in ms)."""


class BridgeController:
    """The bridge for a set of services, on any cluster port.

    The same controller runs in production (``surgecast bridge``: the Kubernetes API, a
    Prometheus signal, the artifact store's plans) and in the backtest (the simulated cluster,
    the simulated load seen through the same window and delay, the plans the simulated pipeline
    wrote).

    Args:
        services: name -> the service's spec (:class:`actuator.spec.ServiceSpec` or a subclass).
        api: the cluster port (:class:`actuator.port.ClusterPort`).
        records_root: where the decision records go (the actuator's folder).
        signal: reads the fast signal (:data:`Signal`).
        plans: finds the latest plan (:data:`Plans`).
        model: the service's latency profile and SLO (:data:`Model`).
        options: clocks, retries, identity.
    """

    def __init__(
        self,
        services: Callable[[str], Any],
        api: Any,
        *,
        records_root: Path,
        signal: Signal,
        plans: Plans,
        model: Model,
        options: BridgeOptions | None = None,
    ) -> None:
        self.services = services
        self.api = api
        self.records_root = Path(records_root)
        self.signal = signal
        self.plans = plans
        self.model = model
        self.options = options or BridgeOptions()
        self._state: dict[str, _ServiceState] = {}

    # ---- public

    def knobs(self, service: str) -> BridgeSpec:
        """The bridge settings of ``service`` (with the --interval override)."""
        knobs = self.options.knobs or bridge_settings(self.services(service))
        if self.options.interval_s is not None:

            knobs = knobs.model_copy(update={"interval_s": float(self.options.interval_s)})
        return knobs

    def tick(self, service: str, now: pd.Timestamp | None = None) -> TickResult:
        """One tick of ``service`` at ``now`` (default: the wall clock)."""
        svc = self.services(service)
        knobs = self.knobs(service)
        wall_s = float(self.options.wall_clock())
        now = pd.Timestamp(wall_s, unit="s", tz="UTC") if now is None else now
        state = self._state_of(svc, knobs)
        why = state.lease.acquire(now_s=wall_s)
        if why is not None:
            # Another replica acts. What this one remembered goes stale meanwhile: if it leads
            # again it learns the last up-move from the records and starts a fresh window.
            state.recovered, state.last_key = False, None
            state.window.clear()
            return TickResult(svc.name, False, None)
        record = DecisionRecord(
            service=svc.name,
            mode=svc.mode,
            run_at=iso(now),
            inputs={
                "lease": {"name": state.lease.name, "identity": state.lease.identity},
                "interval_s": knobs.interval_s,
                "signal_window_s": knobs.signal_window_s,
                "scale_down_after_s": knobs.scale_down_after_s,
                "wall_clock_at": iso(pd.Timestamp(wall_s, unit="s", tz="UTC")),
            },
            kind="bridge",
        )
        decision = None
        try:
            decision = self._tick(svc, knobs, state, record, now, wall_s)
        except Exception as exc:  # recorded, and the loop goes on with the next tick
            record.errors.append(f"internal error: {exc!r:.300}")
            log.exception("%s: bridge tick failed", svc.name)
        written = self._finish(svc, state, record, now, wall_s)
        return TickResult(svc.name, True, record, written, decision)

    def release(self) -> None:
        """Release every Lease this replica holds (clean shutdown)."""
        for state in self._state.values():
            state.lease.release(now_s=float(self.options.wall_clock()))

    # ---- the tick

    def _state_of(self, svc: Any, knobs: BridgeSpec) -> _ServiceState:
        if svc.name not in self._state:
            lease = Lease(
                self.api,
                svc.namespace,
                bridge_lease_name(svc.name),
                self.options.identity,
                duration_s=max(15.0, 3 * knobs.interval_s),
            )
            self._state[svc.name] = _ServiceState(lease)
        return self._state[svc.name]

    def _tick(self, svc, knobs, state, record, now, wall_s) -> BridgeDecision | None:
        opts = self.options
        # The pipeline owns replicas and the envelope: while its run holds the service's Lease,
        # the bridge keeps out of its way.
        pipeline_lease, errors = read_with_retries(
            lambda: self._lease_or_none(svc.namespace, lease_name(svc.name)),
            retry=opts.retry,
            sleep=opts.sleep,
        )
        if pipeline_lease is None:
            why = errors[-1] if errors else "no answer"
            record.refused = f"lease {lease_name(svc.name)} unreadable ({why}): skipped"
            return None
        holder = held_by(pipeline_lease, wall_s)
        if holder is not None:
            record.refused = f"the pipeline's run {holder} holds lease {lease_name(svc.name)}: " \
                "skipped (it owns replicas and the envelope)"
            return None
        skew = now.timestamp() - wall_s
        if abs(skew) > opts.max_clock_skew_s:
            record.held = (
                f"replay: the tick's now is {skew:+.0f} s from the wall clock (more than "
                f"{opts.max_clock_skew_s:g} s): recorded, nothing changed"
            )
        elif svc.active:
            record.held = kill_switch(self.api, svc.kill_switch_ref)
        # the fast signal
        rps = self.signal(svc, knobs, now, record)
        if rps is None:
            return None
        state.window.append((now.timestamp(), rps))
        while state.window and state.window[0][0] < now.timestamp() - knobs.scale_down_after_s:
            state.window.popleft()
        record.inputs["signal_rps"] = rps
        # the envelope
        plan, why_no_plan = self._plan(svc, now, wall_s, record)
        pipeline, slo_ms = self.model(svc)
        stages = self._observe(svc, pipeline, plan, now, record)
        if stages is None:
            return None
        if not state.recovered:
            # A new leader learns the last up-move (its own or another's) from the records.
            problems: list[str] = []
            state.last_up_s = last_scale_up_s(
                self.records_root, svc.name, svc.mode, now, knobs.scale_down_after_s,
                problems=problems,
            )
            record.errors += problems
            state.recovered = True
        views = [
            StageNow(
                profile,
                s.batch,
                tuple(P.allocated_millicores(p, s.workload.container) or 0 for p in s.ready),
                *_asked_cores(s.ready, s.workload.container),
            )
            for profile, s in zip(pipeline.stages, stages, strict=True)
        ]
        env = envelope(
            plan,
            now,
            min_cores=[s.workload.bounds.min_cores for s in stages],
            max_cores=[s.workload.bounds.max_cores for s in stages],
            bridge_max_cores=knobs.max_cores,
            template_cores=[
                max(1, -(-(P.template_millicores(s.deployment, s.workload.container) or 1000)
                         // 1000))
                for s in stages
            ],
            why_no_plan=why_no_plan,
        )
        record.inputs["envelope"] = {
            "floor_cores": list(env.floor_cores),
            "ceiling_cores": list(env.ceiling_cores),
            "source": env.source,
        }
        record.inputs["last_scale_up_at"] = (
            None if state.last_up_s is None else iso(pd.Timestamp(state.last_up_s, unit="s",
                                                                  tz="UTC"))
        )
        decision = decide(
            knobs,
            views,
            env,
            rps=rps,
            slo_ms=slo_ms,
            now_s=now.timestamp(),
            last_up_s=state.last_up_s,
            window_peak_rps=max(r for _, r in state.window),
            window_start_s=state.window[0][0],
        )
        record.inputs["decision"] = {
            "direction": decision.direction,
            "cores": list(decision.cores),
            "need_cores": list(decision.need_cores),
            "carried": decision.carried,
            "target_rps": round(decision.target_rps, 3),
            "reason": decision.reason,
            # what kind of hold or move this is, without its numbers (rate-limits the records)
            "reason_kind": _kind(decision.reason),
        }
        dry_run = not svc.active or record.held is not None
        for s, view, cores in zip(stages, views, decision.cores, strict=True):
            wrec = WorkloadRecord(s.workload.deployment, s.index)
            wrec.current = {"replicas": view.ready, "cores": view.cores, "batch": s.batch}
            wrec.target = {"replicas": view.ready, "cores": cores, "batch": s.batch}
            wrec.bound_by.append(f"batch from {s.batch_from}")
            record.workloads.append(wrec)
            if not dry_run:
                self._revert_refused(svc, s, state, record, now)
            self._resize(svc, s, cores, decision, state, record, now, dry_run,
                         level=decision.levels(s.index))
        if decision.direction == UP and any(
            c.direction == "up" and c.outcome in ("applied", "dry-run") for c in record.changes
        ):
            state.last_up_s = now.timestamp()
        return decision

    def _lease_or_none(self, namespace: str, name: str) -> dict | None:
        try:
            return self.api.lease(namespace, name)
        except Exception as exc:
            if getattr(exc, "status", None) == 404:
                return {}  # never taken: nobody holds it
            raise

    def _plan(self, svc, now, wall_s, record) -> tuple[Plan | None, str]:
        """The latest usable plan at ``now``, else None and why not."""
        plan, why = self.plans(svc, now, record)
        if plan is None:
            return None, why
        if plan.service != svc.name:
            return None, f"plan is for {plan.service!r}, not {svc.name!r}"
        record.inputs["plan_cutoff"] = iso(plan.cutoff)
        expired = not_expired(
            now_s=max(wall_s, now.timestamp()),
            created_s=plan.cutoff.timestamp(),
            expiry_s=svc.plan_expiry_s,
        )
        if expired:
            return None, f"{expired} (by the wall clock too)"
        return plan, ""

    def _observe(self, svc, pipeline, plan, now, record) -> list[_Stage] | None:
        """Every stage's Deployment and pods; None (errors recorded) when any read fails."""
        opts = self.options
        names = list(pipeline.stage_names)
        out = []
        for workload in svc.workloads:
            index = 0 if len(svc.workloads) == 1 else (
                names.index(workload.stage) if workload.stage in names else -1
            )
            if index < 0:
                record.errors.append(f"workload {workload.deployment}: stage {workload.stage} is "
                                     "not a stage of the profile: not touched")
                return None
            dep, errors = read_with_retries(
                lambda w=workload: self.api.deployment(svc.namespace, w.deployment),
                retry=opts.retry, sleep=opts.sleep,
            )
            if dep is None:
                record.errors.append(f"read deployments/{workload.deployment}: {errors[-1]}")
                return None
            labels = ((dep.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            if not labels:
                record.errors.append(f"deployments/{workload.deployment}: no matchLabels")
                return None
            pods, errors = read_with_retries(
                lambda lab=labels: self.api.pods(svc.namespace, lab),
                retry=opts.retry, sleep=opts.sleep,
            )
            if pods is None:
                record.errors.append(f"read pods of {workload.deployment}: {errors[-1]}")
                return None
            live = P.live(P.owned_by(pods, workload.deployment))
            batch, source = 1, "default (1: the least throughput per pod)"
            env_batch = (
                P.template_env(dep, workload.container, workload.batch_env)
                if workload.batch_env else None
            )
            step = None
            if plan is not None and plan.steps:
                step = plan_step_now(plan, now)
            if env_batch and env_batch.isdigit():
                batch, source = int(env_batch), f"env {workload.batch_env}"
            elif step is not None and index < len(step.batch):
                batch, source = int(step.batch[index]), "the plan"
            out.append(_Stage(index, workload, dep, [p for p in live if P.is_ready(p)], live,
                              batch, source))
        out.sort(key=lambda s: s.index)
        if [s.index for s in out] != list(range(len(names))):
            record.errors.append(
                f"the workloads cover stages {[s.index for s in out]} of {len(names)}: not touched"
            )
            return None
        return out

    def _revert_refused(self, svc, stage: _Stage, state, record, now) -> None:
        """Ask an Infeasible resize back to what the pod runs; remember the refusal."""
        container = stage.workload.container
        for pod in stage.live:
            name = pod["metadata"]["name"]
            desired = P.desired_millicores(pod, container) or 0
            allocated = P.allocated_millicores(pod, container) or 0
            if desired <= allocated or P.resize_state(pod, container, desired) != "Infeasible":
                continue
            back = max(1, -(-allocated // 1000))
            state.refused[name] = (-(-desired // 1000), now.timestamp()
                                   + self.options.refused_cooldown_s)
            change = Change(
                stage.workload.deployment, "cpu", f"pods/{name}/resize", desired / 1000, back,
                "revert a resize the kubelet refused (Infeasible): the spec would keep "
                "reserving the refused CPU", "down",
            )
            self._write(svc, change, name, container, back, record, dry_run=False)

    def _resize(self, svc, stage: _Stage, cores: int, decision, state, record, now,
                dry_run: bool, *, level: bool = False) -> None:
        """Resize the stage's ready pods towards ``cores``: the smaller ones on an up-move, the
        larger ones on a down-move; with ``level`` every pod, the larger ones first (what they
        give back makes room on their nodes for the smaller ones)."""
        if decision.direction == HOLD:
            return
        container = stage.workload.container
        pods = stage.ready
        if level:
            pods = sorted(pods, key=lambda p: -(P.desired_millicores(p, container) or 0))
        for pod in pods:
            name = pod["metadata"]["name"]
            desired = P.desired_millicores(pod, container) or 0
            up = desired < cores * 1000
            if desired == cores * 1000 or (not level and (
                    (decision.direction == UP and not up) or (decision.direction == DOWN and up))):
                continue
            change = Change(
                stage.workload.deployment, "cpu", f"pods/{name}/resize", desired / 1000, cores,
                decision.reason[:500], "up" if up else "down",
            )
            refused = state.refused.get(name)
            if refused is not None and refused[1] > now.timestamp() and up and cores >= refused[0]:
                change.outcome = "skipped"
                change.reason = (
                    f"{refused[0]} cores were refused (Infeasible) on this pod; not asked again "
                    f"before {iso(pd.Timestamp(refused[1], unit='s', tz='UTC'))}"
                )
                record.changes.append(change)
                continue
            self._write(svc, change, name, container, cores, record, dry_run=dry_run)

    def _write(self, svc, change: Change, pod: str, container: str, cores: int, record,
               *, dry_run: bool) -> None:
        read, build, write = resize_calls(self.api, svc.namespace, pod, container, cores)
        result = converge(
            read,
            build,
            lambda body: write(body, dry_run=dry_run),
            retry=self.options.retry,
            sleep=self.options.sleep,
            dry_run=dry_run,
        )
        change.outcome, change.attempts, change.errors = (
            result.outcome, result.attempts, result.errors,
        )
        if not result.ok:
            record.errors.append(f"{change.target}: {result.errors[-1]}")
        record.changes.append(change)

    # ---- record, event, metrics

    def _finish(self, svc, state, record, now, wall_s) -> bool:
        counters = state.counters
        counters["decisions"] += 1
        counters["changes_applied"] += record.applied
        counters["errors"] += len(record.errors)
        moved = [c for c in record.changes if c.outcome in ("applied", "dry-run", "failed")]
        key = _key(record)
        written = bool(moved) or key != state.last_key
        if written:
            if moved:
                self._event(svc, record, now)
            try:
                append_record(self.records_root, record, now)
            except OSError as exc:
                log.error("%s: bridge record not written: %s", svc.name, exc)
                written = False
            state.last_key = key
        url = svc.pushgateway_url
        if url is None:
            record.metrics = "not configured"
            return written
        gauges = {
            "signal_rps": ("The fast signal's load (rps)", record.inputs.get("signal_rps") or 0.0),
            "held": ("1 when the tick only recorded or skipped", float(
                bool(record.held or record.refused))),
        }
        try:
            push_metrics(url, record, counters, job=BRIDGE_JOB, gauges=gauges, timeout_s=2.0)
            record.metrics = f"pushed to {url}"
        except (OSError, ValueError) as exc:
            record.metrics = f"failed: {exc}"
            log.warning("%s: bridge metrics not pushed: %s", svc.name, exc)
        return written

    def _event(self, svc, record, now) -> None:
        for wl in record.workloads:
            dep = {"metadata": {"name": wl.deployment}}
            body = event_body(record, svc.namespace, dep, now)
            value, errors = read_with_retries(
                lambda b=body: self.api.create_event(svc.namespace, b),
                retry=self.options.retry, sleep=self.options.sleep,
            )
            record.event = "created" if value is not None else f"failed: {errors[-1]}"


def _asked_cores(ready: Sequence[dict], container: str) -> tuple[int, int]:
    """The whole cores the ready pods ask for: the largest spec (a pod asked up counts) and the
    smallest (a new pod from the template among pods grown in place)."""
    values = [P.desired_millicores(p, container) or 0 for p in ready] or [0]
    return max(1, -(-max(values) // 1000)), max(1, -(-min(values) // 1000))


def _kind(reason: str) -> str:
    """The reason's words up to the envelope's source, for telling holds apart."""
    return re.sub(r"[\d.,]+", "#", reason.split(" [", 1)[0])


def _key(record: DecisionRecord) -> str:
    """What a record says, without its numbers: a new key means a new reason worth a line."""
    decision = record.inputs.get("decision") or {}
    parts = [
        str(decision.get("direction")),
        str(decision.get("cores")),
        str(decision.get("reason_kind")),
        record.held or "",
        record.refused or "",
        "|".join(record.errors[:3]),
    ]
    return re.sub(r"\d+(\.\d+)?", "#", " / ".join(parts))
