"""The service config: one YAML file, validated once at the edge, passed down as frozen settings.

Layout of the file (see ``data/services.example.yaml``)::

    prometheus: {url, timeout_s, attempts, backoff_s, verify_tls, ca_file, auth: {...}}
    artifacts:  {root, retention_days, actuator_dir}
    kubernetes: {kubeconfig, context, host}
    pushgateway_url: http://pushgateway:9091
    run_interval_s: 300
    defaults:   {every per-service key}          # fleet defaults
    services:   [{name, query, namespace, deployment, ...}, ...]   # per-service overrides

Each service is ``defaults`` deep-merged with its own table (nested tables such as ``forecast``,
``data`` and ``bounds`` merge key by key). Secrets (a Prometheus bearer token or basic-auth
password) are read here, once, from a file or from an environment variable whose NAME the file
gives; stage code receives the value and never reads the environment.

Every problem is refused with one line that names the file, the service and the field, e.g.
``services.yaml: service resnet: forecast.horizon_steps: must be an integer >= 1, got 0``.
"""

from __future__ import annotations

import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from actuator.config import ServiceConfig, WorkloadConfig
from actuator.errors import ActuatorInputError
from actuator.guards import Bounds
from forecasting.errors import BadInputError
from forecasting.models import MODELS, QUANTILES
from planner.errors import PlannerInputError
from planner.policy import PolicySettings

MAX_POINTS_PER_SERIES = 11_000
"""Prometheus refuses a range query that would return more points per series than this."""

MODES = ("shadow", "active")
AUTH_TYPES = ("none", "bearer", "basic")
_SERVICE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$")


class SettingsError(BadInputError):
    """A bad service config; the message is one line naming the file, service and field."""


class _FieldError(ValueError):
    """Raised inside settings classes; the loader prefixes the file and service."""

    def __init__(self, name: str, problem: str) -> None:
        self.name, self.problem = name, problem
        super().__init__(f"{name}: {problem}")

    def within(self, prefix: str) -> _FieldError:
        """The same error with ``prefix`` in front of the field's name."""
        return _FieldError(f"{prefix}{self.name}", self.problem)


def _positive(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not (math.isfinite(value) and value > 0):
            raise _FieldError(name, f"must be > 0, got {value}")


def _non_negative(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not (math.isfinite(value) and value >= 0):
            raise _FieldError(name, f"must be >= 0, got {value}")


# --------------------------------------------------------------------------------------------
# fleet-level settings


@dataclass(frozen=True)
class AuthSettings:
    """How surgecast authenticates to Prometheus."""

    type: str = "none"
    """``none``, ``bearer`` (``Authorization: Bearer <token>``) or ``basic`` (user + password)."""

    username: str | None = None
    """Basic auth only: the user name."""

    secret_file: str | None = None
    """File holding the bearer token or the basic-auth password (read once, stripped)."""

    secret_env: str | None = None
    """NAME of the environment variable holding the token or password (read once at load)."""

    secret: str | None = field(default=None, repr=False, compare=False)
    """The token or password itself, filled in by :func:`load_settings`; never in the file."""

    def __post_init__(self) -> None:
        if self.type not in AUTH_TYPES:
            raise _FieldError("type", f"{self.type!r} is not one of {', '.join(AUTH_TYPES)}")
        given = [k for k in ("secret_file", "secret_env") if getattr(self, k) is not None]
        if self.type == "none":
            if given or self.username is not None:
                raise _FieldError(given[0] if given else "username", "set, but type is none")
            return
        if len(given) != 1:
            raise _FieldError("secret_file", "give exactly one of secret_file or secret_env")
        if self.type == "basic" and not self.username:
            raise _FieldError("username", "basic auth needs a user name")
        if self.type == "bearer" and self.username is not None:
            raise _FieldError("username", "bearer auth takes no user name")

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers for bearer auth (empty otherwise)."""
        if self.type == "bearer" and self.secret:
            return {"Authorization": f"Bearer {self.secret}"}
        return {}

    @property
    def basic(self) -> tuple[str, str] | None:
        """``(user, password)`` for basic auth, else None."""
        if self.type == "basic":
            return (str(self.username), self.secret or "")
        return None


@dataclass(frozen=True)
class PrometheusSettings:
    """Where and how the RPS histories are read."""

    url: str = "http://localhost:9090"
    """Base URL of the Prometheus HTTP API (``http(s)://host:port[/prefix]``)."""

    timeout_s: float = 10.0
    """Timeout of one HTTP request (s)."""

    attempts: int = 3
    """Tries per range query, the first included (connection errors, timeouts, 5xx, 429)."""

    backoff_s: float = 1.0
    """Wait before the first retry; doubles each time (s)."""

    verify_tls: bool = True
    """Verify the server's TLS certificate (https URLs). Off only for a lab."""

    ca_file: str | None = None
    """CA bundle that signs the server's certificate (PEM); None: the system's CAs."""

    max_points: int = MAX_POINTS_PER_SERIES
    """Most points per series in one range query; longer ranges are split into chunks."""

    auth: AuthSettings = AuthSettings()
    """Authentication (bearer token or basic auth)."""

    def __post_init__(self) -> None:
        if not re.match(r"^https?://[^\s/]+", str(self.url)):
            raise _FieldError("url", f"{self.url!r} is not an http(s) URL")
        _positive(self, "timeout_s", "backoff_s")
        if self.attempts < 1:
            raise _FieldError("attempts", f"must be an integer >= 1, got {self.attempts}")
        if not 2 <= self.max_points <= MAX_POINTS_PER_SERIES:
            raise _FieldError(
                "max_points", f"must be in 2..{MAX_POINTS_PER_SERIES}, got {self.max_points}"
            )


@dataclass(frozen=True)
class ArtifactSettings:
    """Where forecasts, plans, decision records and fitted models are kept."""

    root: str = "artifacts"
    """Local directory (relative to the config file) or fsspec URL (``s3://bucket/prefix``)."""

    retention_days: float = 14.0
    """Artifacts older than this many days are deleted (the newest model is always kept)."""

    actuator_dir: str | None = None
    """Local directory for the actuator's own record lines when ``root`` is a remote URL
    (None: ``root`` itself when local, else a ``surgecast-actuator`` folder in the temp dir)."""

    def __post_init__(self) -> None:
        if not str(self.root):
            raise _FieldError("root", "must not be empty")
        _positive(self, "retention_days")


@dataclass(frozen=True)
class KubernetesSettings:
    """How the actuator reaches the cluster."""

    kubeconfig: str | None = None
    """kubeconfig file; None: ``$KUBECONFIG``/``~/.kube/config``, then the in-cluster account."""

    context: str | None = None
    """kubeconfig context; None: the current one."""

    host: str | None = None
    """Plain API server URL without credentials (``kubectl proxy``, tests); overrides the rest."""


# --------------------------------------------------------------------------------------------
# per-service settings


@dataclass(frozen=True)
class DataSettings:
    """What an RPS history read from Prometheus must satisfy before anything acts on it."""

    step_s: float = 60.0
    """Resolution of the history (s): the range query's step and the forecast's step."""

    max_staleness_s: float = 180.0
    """Refuse the history when its last sample is older than this before ``now`` (s)."""

    max_gap_steps: int = 60
    """Longest run of missing points that is filled; a longer gap is refused."""

    max_missing_share: float = 0.2
    """Refuse the history when more than this share of its points is missing."""

    def __post_init__(self) -> None:
        _positive(self, "step_s", "max_staleness_s")
        if self.max_gap_steps < 0:
            raise _FieldError("max_gap_steps", f"must be >= 0, got {self.max_gap_steps}")
        if not 0 <= self.max_missing_share < 1:
            raise _FieldError(
                "max_missing_share", f"must be in [0, 1), got {self.max_missing_share}"
            )


@dataclass(frozen=True)
class ForecastSettings:
    """The forecasting model of a service and how often it is refitted."""

    model: str = "hybrid"
    """Registered model: hybrid, lgbm_lags, ets, seasonal_naive or naive."""

    quantiles: tuple[float, ...] = QUANTILES
    """Quantiles stored with every forecast (a subset of the models' 0.5, 0.9, 0.95, 0.99)."""

    plan_quantile: float = 0.95
    """The quantile the planner sizes capacity for; one of ``quantiles``."""

    horizon_steps: int = 15
    """Forecast steps ahead (of ``data.step_s``)."""

    history_days: float = 3.0
    """History read every run: the model's context (one day + one step for the seasonal
    models) and enough for a seasonal-naive fallback to be calibrated (about 2.1 days)."""

    fit_days: float = 8.0
    """History a (re)fit reads (the model trains on up to its last 7 days, after calibration)."""

    refit_every_h: float = 24.0
    """A stored model older than this is refitted by the retraining run (h)."""

    seed: int = 0
    """Seed of every stochastic part of the model."""

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise _FieldError("model", f"{self.model!r} is not one of {', '.join(MODELS)}")
        bad = [q for q in self.quantiles if not any(math.isclose(q, m) for m in QUANTILES)]
        if not self.quantiles or bad:
            raise _FieldError(
                "quantiles",
                f"{list(self.quantiles)}: each must be one of {', '.join(map(str, QUANTILES))}",
            )
        if not any(math.isclose(self.plan_quantile, q) for q in self.quantiles):
            raise _FieldError(
                "plan_quantile", f"{self.plan_quantile} is not one of quantiles {self.quantiles}"
            )
        if self.horizon_steps < 1:
            raise _FieldError(
                "horizon_steps", f"must be an integer >= 1, got {self.horizon_steps}"
            )
        _positive(self, "history_days", "fit_days", "refit_every_h")
        if self.fit_days < self.history_days:
            raise _FieldError(
                "fit_days", f"{self.fit_days} is shorter than history_days {self.history_days}"
            )


@dataclass(frozen=True)
class WorkloadSettings:
    """One Deployment of a service (one per pipeline stage)."""

    deployment: str
    """The Deployment's name (in the service's namespace)."""

    container: str = "server"
    """The container whose CPU is resized (the model server)."""

    stage: str | None = None
    """The profile stage this Deployment runs; None for a single-stage service."""

    bounds: Bounds = field(default_factory=Bounds)
    """Hard limits: replicas, integer cores per pod, batch."""

    hpa: str | None = None
    """The HorizontalPodAutoscaler that scales this Deployment, if any (None: looked up)."""

    batch_env: str | None = None
    """Container env var holding the batch size, if the model server reads one."""


@dataclass(frozen=True)
class ServiceSettings:
    """Everything surgecast knows about one service."""

    name: str
    """The service's name: artifact folders, metrics labels and records use it."""

    query: str
    """PromQL expression whose value is the service's load in requests per second, e.g.
    ``sum(rate(http_requests_total{service="resnet"}[1m]))``; one series."""

    namespace: str
    """The namespace of every Deployment of the service."""

    workloads: tuple[WorkloadSettings, ...]
    """One Deployment per stage (the allow-list). A single-stage service may give
    ``deployment``, ``container`` (and ``bounds``, ``hpa``, ``batch_env``) at the top level."""

    profile: str
    """Latency profile or pipeline: a file (relative to the config file) or a bundled name."""

    slo_ms: float
    """End-to-end latency SLO at the profile's percentile (ms)."""

    mode: str = "shadow"
    """``shadow`` (compute, dry-run and record; patch nothing) or ``active`` (patch)."""

    cold_start_s: float = 60.0
    """Time for a new replica to become ready (s)."""

    resize_s: float = 2.0
    """Time for an in-place CPU resize to take effect (s)."""

    stabilisation_s: float = 300.0
    """No scale-in within this long after the last scale-up (s)."""

    plan_expiry_s: float = 600.0
    """A plan older than this when the actuator runs is never applied (s)."""

    max_replica_step: int | None = None
    """At most this many replicas added or removed per run and Deployment (None: no limit)."""

    max_core_step: int | None = None
    """At most this many cores per pod added or removed per run (None: no limit)."""

    resize_timeout_s: float = 30.0
    """How long a run waits for in-place resizes before adding replicas instead (s)."""

    rewrite_template: bool = False
    """Also write the target cores into the pod template while the load is stable."""

    data: DataSettings = DataSettings()
    """Checks on the RPS history."""

    forecast: ForecastSettings = ForecastSettings()
    """Model, quantiles, horizon, history windows and refit cadence."""

    def __post_init__(self) -> None:
        if not _SERVICE_NAME.match(self.name):
            raise _FieldError("name", f"{self.name!r}: use lower-case letters, digits, - _ .")
        if not self.query.strip():
            raise _FieldError("query", "must be a PromQL expression")
        if self.mode not in MODES:
            raise _FieldError("mode", f"{self.mode!r} is not one of {', '.join(MODES)}")
        if not (math.isfinite(self.slo_ms) and self.slo_ms > 0):
            raise _FieldError("slo_ms", f"must be > 0, got {self.slo_ms}")
        _non_negative(self, "cold_start_s", "resize_s", "stabilisation_s", "resize_timeout_s")
        _positive(self, "plan_expiry_s")

    @property
    def active(self) -> bool:
        return self.mode == "active"

    @property
    def step_s(self) -> float:
        return self.data.step_s

    def policy(self) -> PolicySettings:
        """The planner's settings for this service."""
        lows = [w.bounds.min_replicas for w in self.workloads]
        highs = [w.bounds.max_replicas for w in self.workloads]
        return PolicySettings(
            slo_ms=self.slo_ms,
            cold_start_s=self.cold_start_s,
            resize_s=self.resize_s,
            stabilisation_s=self.stabilisation_s,
            min_replicas=min(lows),
            max_replicas=max(highs),
            quantile=self.forecast.plan_quantile,
        )


@dataclass(frozen=True)
class Settings:
    """The whole config: fleet settings and every service."""

    source: str
    """The file the settings were read from (for messages)."""

    services: tuple[ServiceSettings, ...]
    """Every managed service, in file order."""

    prometheus: PrometheusSettings = PrometheusSettings()
    """The Prometheus the histories come from."""

    artifacts: ArtifactSettings = ArtifactSettings()
    """The artifact store."""

    kubernetes: KubernetesSettings = KubernetesSettings()
    """How the actuator reaches the cluster."""

    pushgateway_url: str | None = None
    """Prometheus Pushgateway that receives run metrics (None: no metrics)."""

    run_interval_s: float = 300.0
    """Time between two scaling runs (s): the schedule of the scaling DAG, and how far ahead
    the actuator applies plan steps."""

    def service(self, name: str) -> ServiceSettings:
        """The service called ``name``.

        Raises:
            SettingsError: no such service; the message lists them.
        """
        for svc in self.services:
            if svc.name == name:
                return svc
        have = ", ".join(s.name for s in self.services)
        raise SettingsError(f"{self.source}: no service {name!r}; the config has {have}")

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.services]

    def actuator_config(self, name: str) -> ServiceConfig:
        """The actuator's settings for one service."""
        svc = self.service(name)
        try:
            return _actuator_config(svc, self)
        except ActuatorInputError as exc:  # validated at load; kept for a changed actuator
            raise SettingsError(f"{self.source}: service {name}: {exc}") from None


def _actuator_config(svc: ServiceSettings, settings: Settings) -> ServiceConfig:
    return ServiceConfig(
        service=svc.name,
        namespace=svc.namespace,
        workloads=tuple(
            WorkloadConfig(
                deployment=w.deployment,
                container=w.container,
                stage=w.stage,
                bounds=w.bounds,
                hpa=w.hpa,
                batch_env=w.batch_env,
            )
            for w in svc.workloads
        ),
        mode=svc.mode,
        max_replica_step=svc.max_replica_step,
        max_core_step=svc.max_core_step,
        stabilisation_s=svc.stabilisation_s,
        plan_expiry_s=svc.plan_expiry_s,
        run_interval_s=settings.run_interval_s,
        resize_timeout_s=svc.resize_timeout_s,
        rewrite_template=svc.rewrite_template,
        pushgateway_url=settings.pushgateway_url,
    )


# --------------------------------------------------------------------------------------------
# loading


FLEET_KEYS = (
    "prometheus",
    "artifacts",
    "kubernetes",
    "pushgateway_url",
    "run_interval_s",
    "defaults",
    "services",
)
_WORKLOAD_KEYS = ("deployment", "container", "stage", "bounds", "hpa", "batch_env")


def load_settings(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate a service config file; resolve secrets once.

    Args:
        path: the YAML file.
        environ: where ``secret_env`` names are looked up (default ``os.environ``); the only
            place surgecast reads the environment.

    Raises:
        SettingsError: one line naming the file, the service and the field.
    """
    file = Path(path)
    where = str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError(f"{where}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{where}: cannot read: {exc}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SettingsError(f"{where}: not valid YAML{at}: {problem}") from None
    return settings_from_dict(data, source=where, base=file.parent, environ=environ)


def settings_from_dict(
    data: Any,
    *,
    source: str = "<config>",
    base: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Validate plain data (a parsed config) into :class:`Settings`.

    Args:
        data: the parsed file.
        source: the file's name, for messages.
        base: folder relative paths (profiles, artifact root, secret files) are resolved in.
        environ: see :func:`load_settings`.
    """
    environ = os.environ if environ is None else environ
    base = Path(".") if base is None else base
    if not isinstance(data, dict):
        raise SettingsError(f"{source}: expected a mapping at the top level")
    unknown = sorted(set(data) - set(FLEET_KEYS))
    if unknown:
        raise SettingsError(f"{source}: unknown key(s) {', '.join(unknown)}")

    def fleet(key: str, cls: type):
        try:
            return _build(cls, data.get(key) or {}, key)
        except _FieldError as exc:
            raise SettingsError(f"{source}: {exc}") from None

    prometheus = fleet("prometheus", PrometheusSettings)
    prometheus = _with_secret(prometheus, base, environ, source)
    artifacts = fleet("artifacts", ArtifactSettings)
    artifacts = _resolve_root(artifacts, base)
    kubernetes = fleet("kubernetes", KubernetesSettings)
    if kubernetes.kubeconfig is not None:
        kubernetes = _replace(kubernetes, kubeconfig=str(_path(kubernetes.kubeconfig, base)))
    try:
        pushgateway = _convert(data.get("pushgateway_url"), str | None, "pushgateway_url")
        interval = _convert(data.get("run_interval_s", 300.0), float, "run_interval_s")
    except _FieldError as exc:
        raise SettingsError(f"{source}: {exc}") from None
    if pushgateway is not None and not re.match(r"^https?://[^\s/]+", pushgateway):
        raise SettingsError(f"{source}: pushgateway_url: {pushgateway!r} is not an http(s) URL")
    if not (math.isfinite(interval) and interval > 0):
        raise SettingsError(f"{source}: run_interval_s: must be > 0, got {interval}")

    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise SettingsError(f"{source}: defaults: expected a mapping")
    raw_services = data.get("services")
    if not isinstance(raw_services, list) or not raw_services:
        raise SettingsError(f"{source}: services: expected a non-empty list of services")
    services = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_services):
        if not isinstance(raw, dict):
            raise SettingsError(f"{source}: services[{i}]: expected a mapping")
        name = raw.get("name")
        label = f"service {name}" if isinstance(name, str) and name else f"services[{i}]"
        if name in seen:
            raise SettingsError(f"{source}: {label}: name: given twice")
        seen.add(name)
        merged = _deep_merge(defaults, raw)
        try:
            svc = _service(merged, base)
        except _FieldError as exc:
            raise SettingsError(f"{source}: {label}: {exc}") from None
        services.append(svc)
    settings = Settings(
        source=source,
        services=tuple(services),
        prometheus=prometheus,
        artifacts=artifacts,
        kubernetes=kubernetes,
        pushgateway_url=pushgateway,
        run_interval_s=interval,
    )
    for svc in settings.services:
        try:
            _actuator_config(svc, settings)
        except ActuatorInputError as exc:
            raise SettingsError(f"{source}: service {svc.name}: {exc}") from None
    return settings


def _service(data: dict, base: Path) -> ServiceSettings:
    data = dict(data)
    flat = {k: data.pop(k) for k in _WORKLOAD_KEYS if k in data and k != "bounds"}
    bounds = data.pop("bounds", None)
    if "workloads" in data and flat:
        raise _FieldError(next(iter(flat)), "give either workloads or deployment, not both")
    raw = data.get("workloads") if "workloads" in data else [flat]
    if not isinstance(raw, list) or not raw:
        raise _FieldError("workloads", "expected a non-empty list of Deployments")
    workloads = []
    for i, entry in enumerate(raw):
        what = "workloads" if "workloads" in data else ""
        prefix = f"{what}[{i}]." if what else ""
        if not isinstance(entry, dict):
            raise _FieldError(f"{what}[{i}]", "expected a mapping")
        entry = dict(entry)
        entry["bounds"] = _deep_merge(bounds or {}, entry.get("bounds") or {})
        try:
            workloads.append(_build(WorkloadSettings, entry, ""))
        except _FieldError as exc:
            raise exc.within(prefix) from None
    data["workloads"] = workloads
    svc = _build(ServiceSettings, data, "")
    return _check_profile(svc, base)


def _check_profile(svc: ServiceSettings, base: Path) -> ServiceSettings:
    """Resolve the profile (a file relative to the config, else a bundled name) and check that
    the Deployments name its stages."""
    from surgecast.planning import load_profile

    candidate = _path(svc.profile, base)
    profile = str(candidate) if candidate.exists() else svc.profile
    try:
        pipeline = load_profile(profile)
    except PlannerInputError as exc:
        raise _FieldError("profile", str(exc)) from None
    stages = pipeline.stage_names
    if len(stages) != len(svc.workloads):
        raise _FieldError(
            "workloads",
            f"profile {pipeline.name} has {len(stages)} stage(s) ({', '.join(stages)}), "
            f"the service names {len(svc.workloads)} Deployment(s)",
        )
    if len(stages) > 1:
        named = sorted(str(w.stage) for w in svc.workloads)
        if named != sorted(stages):
            raise _FieldError(
                "workloads", f"stages {named} do not match the profile's {sorted(stages)}"
            )
    return _replace(svc, profile=profile)


def _with_secret(
    prometheus: PrometheusSettings, base: Path, environ: Mapping[str, str], source: str
) -> PrometheusSettings:
    auth = prometheus.auth
    if auth.type == "none":
        return prometheus
    if auth.secret_env is not None:
        value = environ.get(auth.secret_env)
        if not value:
            raise SettingsError(
                f"{source}: prometheus.auth.secret_env: environment variable "
                f"{auth.secret_env} is not set"
            )
    else:
        secret_path = _path(str(auth.secret_file), base)
        try:
            value = secret_path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SettingsError(
                f"{source}: prometheus.auth.secret_file: cannot read {secret_path}: "
                f"{exc.strerror or exc}"
            ) from None
        if not value:
            raise SettingsError(f"{source}: prometheus.auth.secret_file: {secret_path} is empty")
    return _replace(prometheus, auth=_replace(auth, secret=value))


def _resolve_root(artifacts: ArtifactSettings, base: Path) -> ArtifactSettings:
    root = artifacts.root
    if "://" in root:
        return artifacts
    return _replace(artifacts, root=str(_path(root, base).resolve()))


def _path(text: str, base: Path) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def _deep_merge(defaults: Any, override: Any) -> Any:
    if isinstance(defaults, dict) and isinstance(override, dict):
        out = dict(defaults)
        for key, value in override.items():
            out[key] = _deep_merge(defaults.get(key), value) if key in defaults else value
        return out
    return override


def _replace(obj, **changes):
    import dataclasses

    return dataclasses.replace(obj, **changes)


# --------------------------------------------------------------------------------------------
# typed conversion of plain data into the dataclasses above


def _build(cls: type, data: Any, where: str):
    """``cls(**data)`` with every value checked against the field's annotation."""
    prefix = f"{where}." if where else ""
    if not isinstance(data, dict):
        raise _FieldError(where or cls.__name__, f"expected a mapping, got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.name not in ("secret", "source")}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise _FieldError(f"{prefix}{unknown[0]}", "unknown key")
    missing = [n for n, f in known.items() if n not in data and f.default is MISSING
               and f.default_factory is MISSING]
    if missing:
        raise _FieldError(f"{prefix}{missing[0]}", "missing")
    values = {}
    for name, value in data.items():
        values[name] = _convert(value, hints[name], f"{prefix}{name}")
    try:
        return cls(**values)
    except _FieldError as exc:
        raise exc.within(prefix) from None
    except (ValueError, TypeError) as exc:  # e.g. Bounds' own checks
        raise _FieldError(where or cls.__name__, str(exc).removeprefix("bounds: ")) from None


def _convert(value: Any, hint: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], name)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _FieldError(name, f"expected a list, got {_kind(value)}")
        return tuple(_convert(v, args[0], f"{name}[{i}]") for i, v in enumerate(value))
    if is_dataclass(hint):
        if isinstance(value, hint):
            return value
        return _build(hint, value, name)
    if hint is bool:
        if not isinstance(value, bool):
            raise _FieldError(name, f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _FieldError(name, f"expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _FieldError(name, f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise _FieldError(name, f"must be finite, got {value}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _FieldError(name, f"expected text, got {_kind(value)} {value!r}")
        return value
    raise TypeError(f"{name}: unsupported annotation {hint!r}")  # a programming error


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", type(None): "nothing"}.get(
        type(value), type(value).__name__
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML would keep the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)
