"""The service spec: what the control loop needs to know about one service, written once.

A service is a pipeline of stages; each stage runs as one Deployment. The spec names every
Deployment the actuator may change (the allow-list), the limits it must respect, the timings it
plans with and whether it acts at all (``mode``). Every entry point reads the same spec:
``surgecast run`` and ``surgecast apply`` through the YAML file of :mod:`surgecast.settings`
(whose service model extends :class:`ServiceSpec` with the forecasting keys), the bridge
controller through ``svc.bridge``, tests by constructing it. Every default below is the only
place that default is written.

Models are pydantic v2, frozen, and refuse unknown keys. Numbers are strict (``2.5`` is not an
integer, ``true`` is not a number, ``"3"`` is not a number): a config is typed by a person and a
silent coercion hides the typo. Any problem becomes ONE :class:`~planner.errors.BadInputError`
line naming the field (:func:`problem`), e.g. ``workloads[1].bounds.min_replicas: missing``;
pydantic's own multi-line text never reaches a user.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from actuator.guards import REQUIRED_BOUNDS, Bounds
from planner.errors import BadInputError

MODES = ("shadow", "active")
"""shadow: compute, validate with a server-side dry run and record, patch nothing (default).
active: patch the cluster."""

# DNS-1123 names as the API server validates them
# (kubernetes/kubernetes staging/src/k8s.io/apimachinery/pkg/util/validation/validation.go,
# IsDNS1123Label and IsDNS1123Subdomain): a label is at most 63 characters of [a-z0-9-],
# starting and ending alphanumeric; a subdomain is labels joined by dots, at most 253 characters.
# Namespaces and container names are labels (pkg/apis/core/validation/validation.go),
# Deployments and HPAs subdomains (pkg/apis/apps/validation, pkg/apis/autoscaling/validation).
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_LABEL = re.compile(rf"^(?=.{{1,63}}$){_LABEL}$")
DNS_SUBDOMAIN = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_STAGE = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,62}$")

MAX_REPLICAS = 10_000
"""Largest ``bounds.max_replicas`` accepted (a typo guard; Kubernetes itself allows int32)."""
MAX_CORES = 1024
"""Largest ``bounds.max_cores`` accepted (more cores than any single node has)."""
MAX_BATCH = 4096
"""Largest ``bounds.max_batch`` accepted."""
MAX_WORKLOADS = 64
"""Most Deployments one service may name."""

WORKLOAD_KEYS = ("deployment", "container", "stage", "bounds", "hpa", "batch_env")
"""Keys of one workload; a single-stage service may give them at the top of its table."""

_STEP_NULL = "null no longer means unlimited: give a number (an integer >= 1; the default is 4)"


# --------------------------------------------------------------------------------------------
# one line per problem


class FieldProblem(ValueError):
    """A problem with a named field, raised inside validators; :func:`problem` puts the field
    after the path of the model that raised it (``workloads[1].`` + ``bounds.min_replicas``)."""

    def __init__(self, name: str, problem: str) -> None:
        self.name, self.problem = name, problem
        super().__init__(f"{name}: {problem}")


def show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages (a value may be huge)."""
    text = repr(value) if isinstance(value, str | int | float | bool | None) else kind(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def kind(value: Any) -> str:
    """What ``value`` is, for messages: ``a mapping``, ``a list``, ``nothing`` or a type name."""
    return {dict: "a mapping", list: "a list", type(None): "nothing"}.get(
        type(value), type(value).__name__
    )


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = part if len(part) <= 60 else f"{part[:57]}..."
            out += f".{key}" if out else key
    return out


_EXPECTED = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "text",
}
_MAPPING = ("model_type", "model_attributes_type", "dict_type", "dataclass_type")


def problem(exc: ValidationError, *, flat: bool = False) -> str:
    """The first error of ``exc`` as one line ``field.path: problem``.

    Args:
        exc: pydantic's error (all of its errors; the first is reported, as a person fixes one
            at a time).
        flat: the service gave its single workload at the top of its table: ``workloads[0].``
            is left out of the path, since the file has no such key.
    """
    err = exc.errors(include_url=False)[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    if flat and loc[:2] == ("workloads", 0):
        loc = loc[2:]
    kind_ = err["type"]
    value = err.get("input")
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**63:
        text = f"{show(value)} is out of range"  # a typo of many digits, not a number to print
    elif isinstance(cause, FieldProblem):
        loc, text = (*loc, *cause.name.split(".")), cause.problem
    elif kind_ in ("value_error", "assertion_error") and cause is not None:
        text = str(cause)
        if loc and isinstance(loc[-1], str):  # "bounds: need ..." raised by Bounds itself
            text = text.removeprefix(f"{loc[-1]}: ")
    elif kind_ == "missing":
        text = "missing"
    elif kind_ in ("extra_forbidden", "unexpected_keyword_argument"):
        text = "unknown key"
    elif value is None and (kind_ in _EXPECTED or kind_ in _MAPPING):
        text = "must be given a value, got null"
    elif kind_ in _EXPECTED:
        text = f"expected {_EXPECTED[kind_]}, got {show(value)}"
    elif kind_ == "finite_number":
        text = f"must be finite, got {value}"
    elif kind_ in _MAPPING:
        text = f"expected a mapping, got {kind(value)}"
    elif kind_ in ("tuple_type", "list_type"):
        text = f"expected a list, got {kind(value)}"
    elif kind_ == "too_long":
        what = "Deployments per service" if loc == ("workloads",) else "entries"
        text = f"at most {err['ctx']['max_length']} {what}, got {err['ctx']['actual_length']}"
    elif kind_ == "too_short":
        text = "must not be empty"
    else:  # a pydantic rule without its own wording here: its message is one line
        text = err["msg"]
    path = _path(loc)
    return " ".join(f"{path}: {text}".split()) if path else " ".join(text.split())


M = TypeVar("M", bound=BaseModel)


def parse(
    model: type[M], data: Any, where: str = "", *, flat: bool = False,
    context: dict | None = None,
) -> M:
    """``model`` validated from plain data (a parsed YAML table).

    Args:
        model: the spec class.
        data: the plain data.
        where: what to put in front of the field (file, service).
        flat: see :func:`problem`.
        context: pydantic validation context (``{"file": True}``: the data comes from a file,
            so keys only code may set are refused).

    Raises:
        BadInputError: one line, ``<where>: <field>: <problem>``.
    """
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        line = problem(exc, flat=flat)
        raise BadInputError(f"{where}: {line}" if where else line) from None


class Spec(BaseModel):
    """Base of every spec model: frozen, no unknown keys, no NaN or infinity, field docs from
    the attribute docstrings below each field. Input from a file goes through :func:`parse`
    (one-line :class:`BadInputError`); code that builds a spec with a bad value gets pydantic's
    ``ValidationError`` (also a ``ValueError``): a programming error, not bad input."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True
    )


# --------------------------------------------------------------------------------------------
# typed fields: strict numbers with their ranges, Kubernetes names


def _range(low: float, high: float, *, low_open: bool = False, unit: str = "") -> Callable:
    def check(value: float) -> float:
        above = value > low if low_open else value >= low
        if not (math.isfinite(value) and above and value <= high):
            left = "(" if low_open else "["
            raise ValueError(f"must be in {left}{low:g}, {high:g}]{unit}, got {value:g}")
        return value

    return check


def Seconds(low: float, high: float, *, low_open: bool = False) -> Any:
    """A strict number of seconds in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    return Annotated[float, Strict(), AfterValidator(_range(low, high, low_open=low_open,
                                                             unit=" s"))]


def Number(low: float, high: float, *, low_open: bool = False, unit: str = "") -> Any:
    """A strict number in ``[low, high]``."""
    return Annotated[float, Strict(), AfterValidator(_range(low, high, low_open=low_open,
                                                             unit=unit))]


def Integer(low: int, high: int) -> Any:
    """A strict integer (``true`` and ``2.0`` are refused) in ``low..high``."""

    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"must be an integer in {low}..{high}, got {value}")
        return value

    return Annotated[int, Strict(), AfterValidator(check)]


def _step(high: int) -> Any:
    """A step limit: an integer >= 1; null (once "unlimited") is refused with the reason."""

    def not_null(value: Any) -> Any:
        if value is None:
            raise ValueError(_STEP_NULL)
        return value

    def check(value: int) -> int:
        if value < 1:
            raise ValueError(f"must be an integer >= 1, got {value}")
        if value > high:
            raise ValueError(f"must be an integer in 1..{high}, got {value}")
        return value

    return Annotated[int, BeforeValidator(not_null), Strict(), AfterValidator(check)]


Text = Annotated[str, Strict()]
Flag = Annotated[bool, Strict()]


def OneOf(*choices: str) -> Any:
    """Strict text that is one of ``choices``."""

    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"{show(value)} is not one of {', '.join(choices)}")
        return value

    return Annotated[str, Strict(), AfterValidator(check)]


def Matching(pattern: re.Pattern, what: str) -> Any:
    """Strict text that matches ``pattern`` (``what`` names it in the refusal)."""

    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"{show(value)} is not {what}")
        return value

    return Annotated[str, Strict(), AfterValidator(check)]


def check_name(value: str, name: str = "", pattern: re.Pattern = DNS_LABEL) -> str:
    """``value`` if it is a DNS-1123 label (or matches ``pattern``), else a one-line refusal.

    Raises:
        FieldProblem: naming ``name`` (ValueError with no name); the value is cut short.
    """
    if not pattern.match(value):
        kind_ = "DNS-1123 subdomain" if pattern is DNS_SUBDOMAIN else "DNS-1123 label"
        rule = (
            "lower-case letters, digits, '-' and '.', at most 253"
            if pattern is DNS_SUBDOMAIN
            else "lower-case letters, digits and '-', at most 63"
        )
        text = (f"{show(value)} is not a valid Kubernetes name ({kind_}: {rule} characters, "
                "starting and ending with a letter or digit)")
        raise FieldProblem(name, text) if name else ValueError(text)
    return value


Label = Annotated[str, Strict(), AfterValidator(lambda v: check_name(v, pattern=DNS_LABEL))]
"""A DNS-1123 label: namespaces, container names, service names."""
Subdomain = Annotated[str, Strict(), AfterValidator(lambda v: check_name(v, pattern=DNS_SUBDOMAIN))]
"""A DNS-1123 subdomain: Deployments, HPAs, ConfigMaps."""


def check_url(url: str, name: str = "") -> urllib.parse.SplitResult:
    """Refuse anything but a plain ``http(s)://host[:port][/path]`` URL.

    Credentials in the URL (``user:password@``) are refused without echoing the URL: they would
    be printed in messages and stored in every artifact that names the server.

    Raises:
        FieldProblem: naming ``name`` (ValueError with no name).
    """

    def refuse(text: str):
        return FieldProblem(name, text) if name else ValueError(text)

    if "@" in url:
        raise refuse(
            "must not carry credentials (user:password@host); give them in "
            "prometheus.auth (secret_file or secret_env), never in a URL"
        )
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url) or len(url) > 2048:
        raise refuse(f"{show(url)} is not an http(s) URL")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise refuse(f"{show(url)} is not an http(s) URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise refuse(f"{show(url)} is not an http(s) URL")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise refuse("must not carry a query string or fragment")
    return parts


Url = Annotated[str, Strict(), AfterValidator(lambda v: check_url(v) and v)]
"""A plain http(s) URL without credentials, query string or fragment."""


# --------------------------------------------------------------------------------------------
# the models


class BridgeSpec(Spec):
    """The in-place bridge: a fast controller that resizes pods' cores inside the envelope the
    current plan allows, between two runs of the pipeline (which owns replicas and the
    envelope). It reads a short-window load signal and answers a surge in seconds, long before
    a replica could be cold-started."""

    enabled: Flag = True
    """Run the bridge for this service (false: the pipeline alone scales it)."""

    interval_s: Seconds(1, 300) = 5.0
    """Time between two bridge decisions (s), in [1, 300]."""

    signal_window_s: Seconds(5, 600) = 30.0
    """Window of the fast load signal (s), in [5, 600]: the range of the PromQL ``rate()``
    the bridge reads; shorter reacts sooner and is noisier."""

    scale_down_after_s: Seconds(0, 3600) = 60.0
    """Cores added by the bridge are given back only after the load has stayed below them this
    long (s), in [0, 3600]; a resize is cheap, but flapping on noise is not."""

    max_cores: Integer(1, MAX_CORES) | None = None
    """Most cores per pod the bridge may set (None: the workload's ``bounds.max_cores``; the
    bounds hold either way)."""


class WorkloadSpec(Spec):
    """One stage of the service: the Deployment that runs it."""

    deployment: Subdomain
    """The Deployment's name (in the service's namespace), a DNS-1123 subdomain."""

    container: Label = "server"
    """The container whose CPU is resized (the model server), a DNS-1123 label."""

    stage: Matching(_STAGE, "a stage name") | None = None
    """The plan's (profile's) stage name this Deployment runs; None for a single-stage service."""

    bounds: Bounds
    """Hard limits: replicas, integer cores per pod, batch. A config states min/max replicas
    and min/max cores (in the workload, the service or ``defaults.bounds``): no built-in
    default decides how far a cluster grows."""

    hpa: Subdomain | None = None
    """The HorizontalPodAutoscaler that scales this Deployment, if known; None: looked up. With
    an HPA the actuator moves its ``minReplicas`` instead of the scale subresource, so the two
    never fight."""

    batch_env: Matching(ENV_NAME, "an env var name") | None = None
    """The container environment variable that holds the batch size, if the model server reads
    one. Batch changes only through the pod template (``rewrite_template``), never in place.
    None: recorded only."""

    @model_validator(mode="before")
    @classmethod
    def _bounds_stated(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            bounds = data.get("bounds", {})
            if isinstance(bounds, Mapping):
                for key in REQUIRED_BOUNDS:
                    if key not in bounds:
                        raise FieldProblem(
                            f"bounds.{key}",
                            "missing: every Deployment states its bounds (give it in the "
                            "service or in defaults.bounds)",
                        )
        return data

    @field_validator("bounds")
    @classmethod
    def _ceilings(cls, b: Bounds) -> Bounds:
        for name, top in (("max_replicas", MAX_REPLICAS), ("max_cores", MAX_CORES),
                          ("max_batch", MAX_BATCH)):
            if getattr(b, name) > top:
                raise FieldProblem(name, f"must be at most {top}, got {getattr(b, name)}")
        return b


class ServiceSpec(Spec):
    """How the control loop treats one service."""

    name: Label
    """The service's name, a DNS-1123 label: a plan is applied only to the service it names;
    artifact folders, metric labels, the Lease and the records use it."""

    namespace: Label
    """The namespace of every Deployment of the service, a DNS-1123 label."""

    workloads: Annotated[tuple[WorkloadSpec, ...], Field(min_length=1, max_length=MAX_WORKLOADS)]
    """One Deployment per plan stage: the allow-list of what may be touched. A single-stage
    service may give ``deployment``, ``container`` (and ``bounds``, ``hpa``, ``batch_env``) at
    the top level instead; a service-level ``bounds`` is merged key by key under each
    workload's own."""

    mode: OneOf(*MODES) = "shadow"
    """``shadow`` (compute, dry-run and record; patch nothing) or ``active`` (patch). In a
    fleet file ``active`` is accepted only in the service's own table, never from defaults."""

    max_replica_step: _step(MAX_REPLICAS) = 4
    """Replicas one run may add or remove per Deployment, at least (an integer >= 1; there is
    no "unlimited"). With ``max_step_ratio`` the step is ``max(this, ceil(ratio * current))``,
    the Kubernetes HPA's default "4 pods or 100 %" scale-up policy applied per run."""

    max_core_step: _step(MAX_CORES) = 4
    """Cores per pod one run may add or remove, at least (same rule)."""

    max_step_ratio: Number(0, 10) = 1.0
    """Proportional part of both step limits, in [0, 10] (1.0: at most double or halve)."""

    stabilisation_s: Seconds(0, 86_400) = 300.0
    """No scale-in within this long after the last scale-up (s), in [0, 86400]."""

    plan_expiry_s: Seconds(0, 86_400, low_open=True) = 600.0
    """A plan older than this (now minus its cutoff) is never applied (s), in (0, 86400]."""

    run_interval_s: Seconds(0, 86_400, low_open=True) = 300.0
    """Time between two scheduled runs (s); every step whose ``apply_at`` is before
    ``now + run_interval_s`` is applied now. In a fleet file it is the fleet's
    ``run_interval_s`` (one schedule for all)."""

    resize_timeout_s: Seconds(0, 600) = 30.0
    """How long a run waits for in-place resizes; a resize still deferred after it, or
    infeasible, falls back to adding replicas (s), in [0, 600]."""

    cold_start_s: Seconds(0, 3600) = 60.0
    """Time for a new replica to become ready (s), in [0, 3600]: the planner's lead time, and
    with ``resize_timeout_s`` and ``hpa_sync_s`` how early steps are applied."""

    resize_s: Seconds(0, 600) = 2.0
    """Time for an in-place CPU resize to take effect (s), in [0, 600]."""

    hpa_sync_s: Seconds(0, 600) = 15.0
    """The HPA controller's sync period (s; kube-controller-manager
    ``--horizontal-pod-autoscaler-sync-period``, default 15 s): a raised ``minReplicas``
    takes effect at the next sync."""

    kill_switch: Text = "surgecast-control"
    """The ConfigMap that pauses the actuator without a redeploy: ``name`` (in the service's
    namespace) or ``namespace/name`` (one switch for a whole fleet). ``data.paused: "true"``
    turns every active run into a record-only run and stops a run under way before its next
    write; a ConfigMap that cannot be read (other than not found) pauses too."""

    rewrite_template: Flag = False
    """Also write the target cores (and batch env) into the Deployment's pod template, which
    rolls the pods, while the load is stable. Needs the extra ``patch deployments`` rule of
    ``deploy/rbac-template-rewrite.yaml``."""

    pushgateway_url: Url | None = None
    """Prometheus Pushgateway that receives run metrics (None: no metrics). In a fleet file it
    is the fleet's ``pushgateway_url``."""

    bridge: BridgeSpec = BridgeSpec()
    """The in-place bridge controller's settings for this service."""

    @model_validator(mode="before")
    @classmethod
    def _one_workload_at_the_top(cls, data: Any) -> Any:
        """The flat form (``deployment`` at the top) as one workload, and a service-level
        ``bounds`` merged under every workload's own, key by key."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        flat = {k: data.pop(k) for k in WORKLOAD_KEYS if k in data and k != "bounds"}
        bounds = data.pop("bounds", None)
        if bounds is not None and not isinstance(bounds, Mapping):
            raise FieldProblem("bounds", f"expected a mapping, got {kind(bounds)}")
        if "workloads" in data and flat:
            raise FieldProblem(next(iter(flat)), "give either workloads or deployment, not both")
        if "workloads" not in data:
            data["workloads"] = [{**flat, "bounds": dict(bounds or {})}]
        elif bounds is not None and isinstance(data["workloads"], list | tuple):
            data["workloads"] = [
                {**w, "bounds": {**bounds, **w.get("bounds", {})}}
                if isinstance(w, Mapping) and isinstance(w.get("bounds", {}), Mapping)
                else w
                for w in data["workloads"]
            ]
        return data

    @field_validator("kill_switch")
    @classmethod
    def _switch(cls, value: str) -> str:
        if "/" in value:
            namespace, name = value.split("/", 1)
            check_name(namespace, "", DNS_LABEL)
            check_name(name, "", DNS_SUBDOMAIN)
        else:
            check_name(value, "", DNS_SUBDOMAIN)
        return value

    @model_validator(mode="after")
    def _workloads(self) -> ServiceSpec:
        names = [w.deployment for w in self.workloads]
        if len(set(names)) != len(names):
            raise FieldProblem("workloads", f"a Deployment is named twice in {names}")
        stages = [w.stage for w in self.workloads]
        if len(stages) > 1 and (None in stages or len(set(stages)) != len(stages)):
            raise FieldProblem("workloads", "with several Deployments give each its stage")
        return self

    @property
    def active(self) -> bool:
        return self.mode == "active"

    @property
    def kill_switch_ref(self) -> tuple[str, str]:
        """(namespace, name) of the kill switch ConfigMap."""
        if "/" in self.kill_switch:
            namespace, name = self.kill_switch.split("/", 1)
            return namespace, name
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


DEFAULTS = SimpleNamespace(
    **{name: f.default for name, f in ServiceSpec.model_fields.items() if not f.is_required()}
)
"""Every actuation default by field name (``DEFAULTS.cold_start_s``), read from the model: code
that needs a default without a spec (command-line flags, the offline simulator) reads it here
instead of writing the number again."""
