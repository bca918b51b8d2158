"""The Plan contract (DESIGN section 2): what the planner hands to the actuator.

A Plan is a time-ordered list of steps; each step is a declarative target state of every stage
(replicas, cores, batch) that must hold from ``effective_at`` on, and ``apply_at`` is when the
actuator has to start so that it does: a cold start ahead for a step that adds replicas, a resize
delay ahead for an in-place change. ``to_dict``/``from_dict`` give a JSON-serialisable round trip
so the actuator can run in another process.
"""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, dataclass, fields
from numbers import Integral, Real
from typing import Any

import pandas as pd

from planner.errors import PlannerInputError

KINDS = ("scale-out", "bridge", "consolidate", "scale-in", "hold")
"""scale-out adds replicas; bridge resizes in place for a surge (fast, Themis' vertical stage);
consolidate resizes to the cost-optimal shape once new replicas are ready; scale-in lowers the
cost after the stabilisation window; hold keeps the current state."""


MAX_REPLICAS = 150_000
"""No stage can need more pods than a whole cluster holds: Kubernetes supports at most 150,000
(https://kubernetes.io/docs/setup/best-practices/cluster-large/)."""
MAX_CORES = 1_024
"""Most cores per replica: a pod runs on one node."""
MAX_BATCH = 65_536
"""Largest batch size."""
MAX_STEPS = 10_000
"""Most steps in one plan (a week of minutes is 10,080 points; plans hold a few steps)."""
MAX_STAGES = 64
"""Most stages in one pipeline."""
EARLIEST = pd.Timestamp("1970-01-01T00:00:00Z")
LATEST = pd.Timestamp("2200-01-01T00:00:00Z")
"""Plan times outside [EARLIEST, LATEST) are refused: year 9999 is a typo, and would overflow
pandas' nanosecond arithmetic (which ends in 2262)."""

SERVICE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
"""A plan's service: an RFC 1123 label, as Kubernetes validates object names
(k8s.io/apimachinery/pkg/util/validation/validation.go, IsDNS1123Label). It becomes a path
component of the decision records and a label value of the metrics, so nothing else is read."""
STAGE_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,251}[A-Za-z0-9])?$")
"""A stage name: a profile's name (letters, digits, '-', '_', '.'; no path separators)."""


def utc_timestamp(value: Any, what: str, *, utc_only: bool = False) -> pd.Timestamp:
    """A tz-aware UTC ``pd.Timestamp`` from a timestamp, datetime or ISO 8601 string: the one
    parser of times that come from outside (flags, plan files, forecast files).

    Args:
        value: the time.
        what: the input's name for the message, e.g. ``--at``.
        utc_only: refuse any offset but UTC (``Z`` or ``+00:00``), as command-line flags do;
            otherwise a time in another zone is converted.

    Raises:
        PlannerInputError: unparseable (words such as ``now`` too: pandas would read the wall
            clock), without a time zone, not UTC when ``utc_only``, or outside
            [``EARLIEST``, ``LATEST``).
    """
    try:
        if isinstance(value, str):
            if not any(ch.isdigit() for ch in value):
                raise ValueError(value)
            value = value.strip()
        ts = pd.Timestamp(value)
    except (TypeError, ValueError, OverflowError):
        raise PlannerInputError(
            f"{what}: cannot parse {value!r} as an ISO 8601 timestamp"
        ) from None
    if pd.isna(ts):
        raise PlannerInputError(f"{what}: {value!r} is not a timestamp")
    if ts.tzinfo is None:
        raise PlannerInputError(
            f"{what}: {value!r} has no time zone; give it in UTC, e.g. {value}Z"
        )
    if utc_only and ts.utcoffset() != pd.Timedelta(0):
        raise PlannerInputError(f"{what}: {value!r} is not UTC (offset {ts.utcoffset()})")
    ts = ts.tz_convert("UTC")
    if not EARLIEST <= ts < LATEST:
        raise PlannerInputError(
            f"{what}: {value!r} is outside {EARLIEST.year}..{LATEST.year - 1}"
        )
    return ts


def iso(ts: pd.Timestamp) -> str:
    """``2024-01-01T07:34:30Z``, with microseconds only when there are any."""
    text = ts.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%S")
    if ts.microsecond:
        text += f".{ts.microsecond:06d}"
    return text + "Z"


@dataclass(frozen=True)
class PlanStep:
    """One target state of every stage.

    Attributes:
        effective_at: when the state must be in place (tz-aware UTC).
        apply_at: when the actuator starts it: effective_at minus the cold start for a step that
            adds replicas, minus the resize delay for an in-place change (never before the
            plan's cutoff). A step that adds replicas and gives the running pods fewer cores
            starts the new replicas at apply_at and shrinks the running pods only at
            effective_at, once the new ones are ready, so capacity never dips in between.
        replicas, cores, batch: per stage, in pipeline order.
        reason: one readable sentence: the load, when, which quantile, and what it does.
        expected_latency_ms: end-to-end tail latency of the state under the latency model.
        capacity_rps: the load the state carries (min over stages of replicas · throughput).
        kind: one of :data:`KINDS`.
        load_rps: the load the state is sized for (before headroom).
        feasible: the state meets the SLO and carries ``load_rps`` with headroom; False when the
            bounds or the time left make that impossible (the reason says what is missing).
    """

    effective_at: pd.Timestamp
    apply_at: pd.Timestamp
    replicas: tuple[int, ...]
    cores: tuple[int, ...]
    batch: tuple[int, ...]
    reason: str
    expected_latency_ms: float
    capacity_rps: float
    kind: str
    load_rps: float = 0.0
    feasible: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "effective_at", utc_timestamp(self.effective_at, "effective_at"))
        object.__setattr__(self, "apply_at", utc_timestamp(self.apply_at, "apply_at"))
        for key, high in (("replicas", MAX_REPLICAS), ("cores", MAX_CORES), ("batch", MAX_BATCH)):
            object.__setattr__(self, key, _counts(getattr(self, key), key, high))
        if not len(self.replicas) == len(self.cores) == len(self.batch) >= 1:
            raise PlannerInputError("plan step: replicas, cores and batch need one value per stage")
        for key in ("capacity_rps", "load_rps", "expected_latency_ms"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, Real):
                raise PlannerInputError(f"plan step: {key} must be a number, got {value!r}")
            # An infeasible state may have an unbounded latency; nothing may be NaN or < 0.
            finite = math.isfinite(value) or key == "expected_latency_ms"
            if math.isnan(value) or value < 0 or not finite:
                raise PlannerInputError(f"plan step: {key} must be a number >= 0, got {value}")
        if not isinstance(self.reason, str) or len(self.reason) > 10_000:
            raise PlannerInputError("plan step: reason must be a text of at most 10,000 characters")
        if not isinstance(self.feasible, bool):
            raise PlannerInputError(
                f"plan step: feasible must be true or false, got {self.feasible!r}"
            )
        if not isinstance(self.kind, str) or self.kind not in KINDS:
            raise PlannerInputError(
                f"plan step: kind {self.kind!r} is not one of {', '.join(KINDS)}"
            )
        if self.apply_at > self.effective_at:
            raise PlannerInputError("plan step: apply_at is after effective_at")

    @property
    def cost_cores(self) -> int:
        return sum(n * c for n, c in zip(self.replicas, self.cores, strict=True))

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["effective_at"] = iso(self.effective_at)
        out["apply_at"] = iso(self.apply_at)
        for key in ("replicas", "cores", "batch"):
            out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: dict) -> PlanStep:
        """The inverse of :meth:`to_dict`; times must be ISO 8601 texts, counts JSON integers.

        Raises:
            PlannerInputError: missing or unknown keys, or values that break the contract.
        """
        values = _known(cls, data, "plan step")
        for key in ("effective_at", "apply_at"):
            if not isinstance(values[key], str):
                raise PlannerInputError(
                    f"plan step: {key} must be an ISO 8601 text, got {values[key]!r}"
                )
        for key in ("replicas", "cores", "batch"):
            if not isinstance(values[key], list) or len(values[key]) > MAX_STAGES:
                raise PlannerInputError(
                    f"plan step: {key} must be a list of at most {MAX_STAGES} integers"
                )
        try:
            return cls(**values)
        except PlannerInputError:
            raise
        except (TypeError, ValueError) as exc:
            raise PlannerInputError(f"plan step: {exc}") from None


@dataclass(frozen=True)
class Plan:
    """The planner's output for one service at one cutoff.

    Attributes:
        service: the service's name.
        cutoff: the last observation the plan used, and the time it was made (tz-aware UTC).
        steps: target states in time order (by effective_at, then apply_at).
        quantile: the forecast quantile the plan sized for.
        slo_ms: the end-to-end latency SLO.
        stage_names: the pipeline's stages, in the order of the per-stage tuples.
    """

    service: str
    cutoff: pd.Timestamp
    steps: tuple[PlanStep, ...]
    quantile: float
    slo_ms: float
    stage_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "cutoff", utc_timestamp(self.cutoff, "cutoff"))
        object.__setattr__(self, "steps", tuple(self.steps))
        object.__setattr__(self, "stage_names", tuple(self.stage_names))
        order = [(s.effective_at, s.apply_at) for s in self.steps]
        if order != sorted(order):
            raise PlannerInputError("plan: steps are not in time order")
        widths = {len(s.replicas) for s in self.steps}
        if len(widths) > 1:
            raise PlannerInputError("plan: steps give different numbers of stages")
        if self.stage_names and widths and widths != {len(self.stage_names)}:
            raise PlannerInputError(
                f"plan: {len(self.stage_names)} stage_names for steps of {widths.pop()} stages"
            )
        for key in ("quantile", "slo_ms"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, Real):
                raise PlannerInputError(f"plan: {key} must be a number, got {value!r}")
        if not (0 < self.quantile < 1 and math.isfinite(self.slo_ms) and self.slo_ms > 0):
            raise PlannerInputError(
                f"plan: quantile must be in (0, 1) and slo_ms > 0, got {self.quantile}, "
                f"{self.slo_ms}"
            )

    def to_dict(self) -> dict:
        return {
            "service": self.service,
            "cutoff": iso(self.cutoff),
            "quantile": self.quantile,
            "slo_ms": self.slo_ms,
            "stage_names": list(self.stage_names),
            "steps": [s.to_dict() for s in self.steps],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        """The inverse of :meth:`to_dict`.

        Raises:
            PlannerInputError: missing or unknown keys, or values that break the contract.
        """
        values = _known(cls, data, "plan")
        service = values["service"]
        if not isinstance(service, str) or not SERVICE_NAME.match(service):
            raise PlannerInputError(
                f"plan: service {str(service)[:80]!r} is not a valid Kubernetes name "
                "(RFC 1123 label: lower-case letters, digits and '-', at most 63)"
            )
        names = values.get("stage_names", [])
        if not isinstance(names, list) or len(names) > MAX_STAGES:
            raise PlannerInputError(f"plan: stage_names must be a list of at most {MAX_STAGES}")
        for name in names:
            if not isinstance(name, str) or not STAGE_NAME.match(name):
                raise PlannerInputError(f"plan: stage name {str(name)[:80]!r} is not a valid name")
        if not isinstance(values["cutoff"], str):
            raise PlannerInputError(
                f"plan: cutoff must be an ISO 8601 text, got {values['cutoff']!r}"
            )
        steps = values.get("steps")
        if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
            raise PlannerInputError("plan: steps must be a list of objects")
        if len(steps) > MAX_STEPS:
            raise PlannerInputError(f"plan: {len(steps)} steps; at most {MAX_STEPS}")
        values["steps"] = tuple(PlanStep.from_dict(s) for s in steps)
        try:
            return cls(**values)
        except PlannerInputError:
            raise
        except (TypeError, ValueError) as exc:
            raise PlannerInputError(f"plan: {exc}") from None


def _counts(values: Any, key: str, high: int) -> tuple[int, ...]:
    """Per-stage integers in [1, high]; floats (even 2.0) and booleans are refused."""
    if isinstance(values, str | bytes) or not hasattr(values, "__iter__"):
        raise PlannerInputError(f"plan step: {key} must be a list of integers, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, Integral) or not 1 <= v <= high:
            raise PlannerInputError(
                f"plan step: {key} must be integers in [1, {high:,}], got {v!r}"
            )
        out.append(int(v))
    return tuple(out)


def _known(cls: type, data: dict, what: str) -> dict:
    if not isinstance(data, dict):
        raise PlannerInputError(f"{what}: expected an object, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING}
    missing = sorted(required - set(data))
    unknown = sorted(set(data) - names)
    if missing or unknown:
        raise PlannerInputError(
            f"{what}: missing key(s) {', '.join(missing) or '-'}; "
            f"unknown key(s) {', '.join(unknown) or '-'}"
        )
    return dict(data)
