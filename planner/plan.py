"""The Plan contract (DESIGN section 2): what the planner hands to the actuator.

A Plan is a time-ordered list of steps; each step is a declarative target state of every stage
(replicas, cores, batch) that must hold from ``effective_at`` on, and ``apply_at`` is when the
actuator has to start so that it does: a cold start ahead for a step that adds replicas, a resize
delay ahead for an in-place change. ``to_dict``/``from_dict`` give a JSON-serialisable round trip
so the actuator can run in another process.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, fields
from typing import Any

import pandas as pd

from planner.errors import PlannerInputError

KINDS = ("scale-out", "bridge", "consolidate", "scale-in", "hold")
"""scale-out adds replicas; bridge resizes in place for a surge (fast, Themis' vertical stage);
consolidate resizes to the cost-optimal shape once new replicas are ready; scale-in lowers the
cost after the stabilisation window; hold keeps the current state."""


def utc_timestamp(value: Any, what: str) -> pd.Timestamp:
    """A tz-aware UTC ``pd.Timestamp`` from a timestamp, datetime or ISO string.

    Raises:
        PlannerInputError: unparseable, or without a time zone.
    """
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise PlannerInputError(f"{what}: not a timestamp: {value!r} ({exc})") from None
    if ts is pd.NaT:
        raise PlannerInputError(f"{what}: not a timestamp: {value!r}")
    if ts.tzinfo is None:
        raise PlannerInputError(f"{what}: {value!r} has no time zone; give UTC, e.g. ...Z")
    return ts.tz_convert("UTC")


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
        for key in ("replicas", "cores", "batch"):
            object.__setattr__(self, key, tuple(int(v) for v in getattr(self, key)))
        if not len(self.replicas) == len(self.cores) == len(self.batch) >= 1:
            raise PlannerInputError("plan step: replicas, cores and batch need one value per stage")
        if self.kind not in KINDS:
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
        try:
            return cls(**_known(cls, data, "plan step"))
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
        steps = values.get("steps")
        if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
            raise PlannerInputError("plan: steps must be a list of objects")
        values["steps"] = tuple(PlanStep.from_dict(s) for s in steps)
        return cls(**values)


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
