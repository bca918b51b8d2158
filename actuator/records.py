"""Decision records, Kubernetes Events and run metrics: every decision on record.

A decision record is one JSON object per service per run (DESIGN section 2), appended as one line
to ``<root>/decisions/<service>/<YYYY-MM-DD>.jsonl`` (the run's UTC date). It lists every change
the run considered with its outcome, so an error part-way leaves no change unaccounted for:

* ``applied``: the server accepted the patch; ``unchanged``: already in that state, nothing sent;
* ``dry-run``: shadow mode, the server validated the patch and persisted nothing;
* ``failed``: the API refused it or retries ran out (``errors`` says why);
* ``not attempted``: an earlier change of the run failed, so the run stopped before it;
* ``skipped``: deliberately left for later (a pod not ready yet, a template while load moves).

Cumulative counters for the metrics live beside the records (``counters.json``), because a
Pushgateway keeps only the last push of a batch job.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from actuator.metrics import Sample, push
from planner.plan import iso

OUTCOMES = (
    "applied",
    "unchanged",
    "dry-run",
    "failed",
    "not attempted",
    "skipped",
)
WRITTEN = ("applied",)
PLANNED = ("applied", "dry-run")


@dataclass
class Change:
    """One declarative change to one object.

    Attributes:
        deployment: the Deployment it belongs to.
        what: ``replicas`` (scale subresource), ``hpa minReplicas``, ``cpu`` (one pod, in place),
            ``fallback replicas`` (replicas for refused resizes) or ``template``.
        target: the object, e.g. ``deployments/resnet/scale`` or ``pods/resnet-0/resize``.
        before, after: the value before and the value it sets (replicas, or cores per pod).
        reason: why, one line.
        direction: ``up`` (more capacity), ``down`` or ``none``.
        outcome: one of :data:`OUTCOMES`.
        attempts: HTTP writes sent.
        errors: errors met, retried or final, one line each.
        resize: for ``cpu`` changes in active mode, what the kubelet did: ``done``,
            ``Infeasible``, ``Deferred`` (still, after the resize timeout) or ``in progress``.
    """

    deployment: str
    what: str
    target: str
    before: Any
    after: Any
    reason: str
    direction: str = "none"
    outcome: str = "not attempted"
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    resize: str | None = None

    def line(self) -> str:
        """``resnet replicas 2 -> 6: applied (scale-out ...)``."""
        extra = f", resize {self.resize}" if self.resize else ""
        if self.errors and self.outcome == "failed":
            extra += f", {self.errors[-1]}"
        elif self.errors:
            extra += f", after {len(self.errors)} retried error(s)"
        return (
            f"{self.deployment} {self.what} {self.before} -> {self.after}: "
            f"{self.outcome}{extra} ({self.reason})"
        )


@dataclass
class WorkloadRecord:
    """One Deployment in a run.

    Attributes:
        deployment, stage: the Deployment and its plan stage index.
        hpa: the HPA scaling it, if any.
        current: replicas, cores, batch before the run (as read).
        wanted: what the due plan steps ask for.
        target: what the guards allowed.
        bound_by: one note per guard that changed the wanted state.
        after: what the cluster reports at the end of the run (active mode): spec and ready
            replicas, cores per ready pod.
    """

    deployment: str
    stage: int
    hpa: str | None = None
    current: dict | None = None
    wanted: dict | None = None
    target: dict | None = None
    bound_by: list[str] = field(default_factory=list)
    after: dict | None = None


@dataclass
class DecisionRecord:
    """One service, one run (DESIGN section 2).

    Attributes:
        service, mode: the service and ``shadow`` or ``active``.
        run_at: the run's time (UTC ISO); the plan was judged at this time.
        inputs: plan cutoff, run interval, steps in the plan, observed load, last scale-up.
        quantile: the forecast quantile the plan sized for.
        chosen_step: the latest due plan step (its ``to_dict``), None when none was due.
        due_steps: indices of the plan steps due this run.
        refused: why nothing was applied at all (expired plan, unknown workload), else None.
        held: why an active run only recorded (dry runs, as in shadow): a replayed old run, the
            kill switch, a Lease held by another run; else None.
        workloads: per Deployment, current/wanted/target state and the guards that bound it.
        changes: every change, in the order it was (or would have been) made.
        errors: every error of the run, one line each (API, event, metrics).
        event: what became of the Kubernetes Event.
        metrics: what became of the Pushgateway push.
        kind: who decided: ``actuator`` (a pipeline run applying a plan) or ``bridge`` (the
            in-place bridge controller, :mod:`surgecast.live.bridge`). Both go to the same
            files, so a bridge's up-move counts as a scale-up for the stabilisation guard, as
            the backtest counts it.
    """

    service: str
    mode: str
    run_at: str
    inputs: dict
    quantile: float | None = None
    chosen_step: dict | None = None
    due_steps: list[int] = field(default_factory=list)
    refused: str | None = None
    held: str | None = None
    workloads: list[WorkloadRecord] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    event: str | None = None
    metrics: str | None = None
    kind: str = "actuator"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["scaled_up"] = self.scaled_up
        return out

    @property
    def scaled_up(self) -> bool:
        """Capacity was raised (active) or would have been (shadow) by this run."""
        done = WRITTEN if self.mode == "active" else PLANNED
        return any(c.direction == "up" and c.outcome in done for c in self.changes)

    @property
    def applied(self) -> int:
        return sum(c.outcome == "applied" for c in self.changes)

    @property
    def failed(self) -> int:
        return sum(c.outcome == "failed" for c in self.changes)

    def summary(self) -> str:
        """One line for the Event message and logs."""
        if self.refused:
            return f"refused: {self.refused}"
        step = self.chosen_step
        mode = f"{self.mode} (record only: {self.held})" if self.held else self.mode
        head = f"{mode}: " + (step["kind"] + " step due" if step else "no plan step due")
        done = [c for c in self.changes if c.outcome not in ("unchanged",)]
        parts = [f"{c.deployment} {c.what} {c.before}->{c.after} {c.outcome}" for c in done[:6]]
        if len(done) > 6:
            parts.append(f"+{len(done) - 6} more")
        text = head + ("; " + "; ".join(parts) if parts else "; nothing to change")
        if self.errors:
            text += f"; {len(self.errors)} error(s): {self.errors[-1]}"
        return text


_SAFE_NAME = re.compile(r"^(?=.{1,63}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
INVALID_SERVICE_FOLDER = "_invalid-service-name"
"""Where records of a plan whose service name is not a DNS-1123 label go (the name is kept
inside the record), so no name can place a file outside ``<root>/decisions``."""


def service_folder(root: Path, service: str) -> Path:
    """``<root>/decisions/<service>``; a name that is not a DNS-1123 label never becomes a path."""
    name = service if isinstance(service, str) and _SAFE_NAME.match(service) else None
    return Path(root) / "decisions" / (name or INVALID_SERVICE_FOLDER)


def record_path(root: Path, service: str, now: pd.Timestamp) -> Path:
    """``<root>/decisions/<service>/<YYYY-MM-DD>.jsonl`` for the UTC date of ``now``."""
    return service_folder(root, service) / f"{now.strftime('%Y-%m-%d')}.jsonl"


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` all at once: a temporary file beside it, flushed to disk,
    then renamed over it. A crash leaves the old file or the new one, never half of either."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def append_record(root: Path, record: DecisionRecord, now: pd.Timestamp) -> Path:
    """Add ``record`` as one JSON line to the day's file; return the file.

    One ``write`` of the whole line to a file opened with ``O_APPEND``, then fsync: two runs
    appending at once (an acting run and one that only records) both land, whole. A line left
    truncated by a crash is closed with a newline first, so it stays on its own line, and
    readers skip and report it.
    """
    path = record_path(root, record.service, now)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record.to_dict(), sort_keys=True, default=str).encode("utf-8") + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as fh:
                fh.seek(size - 1)
                if fh.read(1) != b"\n":
                    line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def _lines(path: Path, problems: list[str] | None) -> list[dict]:
    """The records of one file; a line that is not a JSON object is skipped and reported."""
    out = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        if problems is not None:
            problems.append(f"decision records {path.name}: unreadable ({exc}): skipped")
        return out
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            if problems is not None:
                problems.append(
                    f"decision records {path.parent.name}/{path.name} line {number}: "
                    "corrupt (not a JSON object): skipped"
                )
            continue
        out.append(data)
    return out


def read_records(root: Path, service: str, *, problems: list[str] | None = None) -> list[dict]:
    """Every record of ``service``, oldest first; corrupt lines are skipped (and listed in
    ``problems`` when given)."""
    out: list[dict] = []
    for path in sorted(service_folder(root, service).glob("*.jsonl")):
        out += _lines(path, problems)
    return out


def last_scale_up_s(
    root: Path,
    service: str,
    mode: str,
    now: pd.Timestamp,
    window_s: float,
    *,
    problems: list[str] | None = None,
) -> float | None:
    """Epoch seconds of the latest run of ``mode`` that raised capacity, within ``window_s``
    before ``now`` (older ones do not matter to the stabilisation guard); None if none.

    Corrupt lines are skipped and reported in ``problems``: a damaged record never blocks the
    service."""
    folder = service_folder(root, service)
    since = now - pd.Timedelta(seconds=window_s)
    latest = None
    days = pd.date_range(since.normalize(), now.normalize(), freq="D")
    for day in days:
        path = folder / f"{day.strftime('%Y-%m-%d')}.jsonl"
        if not path.exists():
            continue
        for data in _lines(path, problems):
            if data.get("mode") != mode or not data.get("scaled_up"):
                continue
            try:
                at = pd.Timestamp(data.get("run_at"))
            except (ValueError, TypeError):
                continue
            if at is pd.NaT or at.tzinfo is None:
                continue
            if since <= at <= now and (latest is None or at > latest):
                latest = at
    return None if latest is None else latest.timestamp()


COUNTERS = ("decisions", "changes_applied", "errors")


def update_counters(root: Path, record: DecisionRecord) -> dict[str, int]:
    """Add this run to the service's cumulative counters (written atomically); return them.

    A corrupt counters file is set aside (``counters.json.corrupt``), counting starts again
    from this run, and the record's errors say so; it never stops the run."""
    path = service_folder(root, record.service) / "counters.json"
    counters = dict.fromkeys(COUNTERS, 0)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not all(
            isinstance(data.get(k, 0), int) and data.get(k, 0) >= 0 for k in COUNTERS
        ):
            raise ValueError("not a table of counts")
        counters.update({k: int(data.get(k, 0)) for k in COUNTERS})
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        record.errors.append(f"counters.json corrupt ({exc}): set aside, counting again")
        with contextlib.suppress(OSError):
            os.replace(path, path.with_suffix(".json.corrupt"))
    counters["decisions"] += 1
    counters["changes_applied"] += record.applied
    counters["errors"] += len(record.errors)
    atomic_write(path, (json.dumps(counters, sort_keys=True) + "\n").encode("utf-8"))
    return counters


def event_body(record: DecisionRecord, namespace: str, deployment: dict, now: pd.Timestamp) -> dict:
    """A core/v1 Event on the Deployment with the run's reason and summary.

    The name is derived from the Deployment and the run time, so a retried create of the same
    run's Event meets 409 AlreadyExists instead of duplicating it.
    """
    meta = deployment.get("metadata", {})
    name = meta.get("name", "unknown")
    if record.refused:
        reason, kind = "SurgecastRefused", "Warning"
    elif record.held:
        reason, kind = "SurgecastHeld", "Warning"
    elif record.errors:
        reason, kind = "SurgecastFailed", "Warning"
    elif record.mode == "shadow":
        reason, kind = "SurgecastShadow", "Normal"
    elif record.applied:
        reason, kind = "SurgecastScaled", "Normal"
    else:
        reason, kind = "SurgecastUnchanged", "Normal"
    stamp = iso(now)
    component = "surgecast-bridge" if record.kind == "bridge" else "surgecast-actuator"
    if record.kind == "bridge":
        reason = reason.replace("Surgecast", "SurgecastBridge", 1)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{name}.{component.replace('-actuator', '')}.{int(now.value // 1000):x}",
            "namespace": namespace,
        },
        "involvedObject": {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
            "namespace": namespace,
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "reason": reason,
        "message": record.summary()[:1024],
        "type": kind,
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": component,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def push_metrics(
    url: str,
    record: DecisionRecord,
    counters: dict[str, int],
    *,
    timeout_s: float = 5.0,
    job: str = "surgecast_actuator",
    gauges: dict[str, tuple[str, float]] | None = None,
) -> None:
    """Push the run's metrics to a Pushgateway (job ``job``, group ``service``).

    Metrics (named ``<job>_...``): cumulative decisions, applied changes and errors (counters);
    per Deployment the planned (target) and actual replicas and cores per pod; changes applied
    and errors of this run; the run's time; 1 when active, 0 in shadow; and ``gauges``
    (``{name: (help, value)}``, e.g. the bridge's signal and heartbeat).

    Raises:
        OSError: the push failed (the caller records it; never fatal).
    """
    prefix = job
    samples = [Sample(f"{prefix}_{name}", text, value) for name, (text, value) in
               (gauges or {}).items()]
    samples += [
        Sample(f"{prefix}_{key}", text, counters.get(key, 0), counter=True)
        for key, text in (
            ("decisions", "Decision records written"),
            ("changes_applied", "Changes the API server accepted"),
            ("errors", "Errors recorded (API, events, metrics)"),
        )
    ]
    samples += [
        Sample(f"{prefix}_last_run_timestamp_seconds", "Time of the last run",
               pd.Timestamp(record.run_at).timestamp()),
        Sample(f"{prefix}_active", "1 active, 0 shadow", 1 if record.mode == "active" else 0),
        Sample(f"{prefix}_last_run_changes_applied", "Changes applied by the last run",
               record.applied),
        Sample(f"{prefix}_last_run_errors", "Errors of the last run", len(record.errors)),
    ]
    for workload in record.workloads:
        per = {"deployment": workload.deployment}
        actual = workload.after or workload.current
        for kind, shape in (("planned", workload.target), ("actual", actual)):
            if not shape:
                continue
            for what in ("replicas", "cores"):
                samples.append(Sample(f"{prefix}_{kind}_{what}",
                                      f"{kind.capitalize()} {what} per Deployment",
                                      shape[what], per))
    push(url, job, record.service, samples, timeout_s=timeout_s)
