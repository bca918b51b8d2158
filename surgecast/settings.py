"""The service config: one YAML file, validated once at the edge, passed down as frozen settings.

Every entry point reads this one file (``surgecast run``, ``apply``, ``rbac``, the bridge). Each
service in it is a :class:`ServiceSettings`, which IS the actuation spec
(:class:`actuator.spec.ServiceSpec`: Deployments, bounds, mode, step limits, timings, kill
switch, bridge; every default written there once) plus what forecasting needs (query, profile,
SLO, data checks, model). The models are pydantic v2; this module adds what a whole file needs:
strict YAML, fleet defaults, secrets, paths relative to the file, one owner per Deployment.

Layout of the file (see ``data/services.example.yaml``)::

    prometheus: {url, timeout_s, query_deadline_s, attempts, backoff_s, verify_tls, ca_file,
                 allow_insecure_auth, auth: {...}}
    artifacts:  {root, retention_days, actuator_dir}
    kubernetes: {kubeconfig, context, host}
    pushgateway_url: http://pushgateway:9091
    run_interval_s: 300
    run_timeout_s: 120
    defaults:   {every per-service key}          # fleet defaults
    services:   [{name, query, namespace, deployment, bounds, bridge, ...}, ...]   # per-service

``run_interval_s`` and ``pushgateway_url`` are the fleet's: every service's spec carries them,
and a service or ``defaults`` that gives them is refused (one schedule, one Pushgateway).

Each service is ``defaults`` deep-merged with its own table (nested tables such as ``forecast``,
``data`` and ``bounds`` merge key by key). Secrets (a Prometheus bearer token or basic-auth
password) are read here, once, from a file or from an environment variable whose NAME the file
gives; stage code receives the value and never reads the environment.

What the config cannot do, on purpose:

* grow a cluster without limits: every Deployment states its ``bounds`` (min/max replicas and
  cores), and a run moves at most ``max_replica_step`` replicas and ``max_core_step`` cores
  (integers, default 4; there is no "unlimited");
* act by inheritance: ``mode: active`` is accepted only in a service's own table, never in
  ``defaults``, so a service added to the list starts in shadow;
* touch a workload twice or by a crafted name: service, namespace, Deployment, container and
  HPA names are DNS-1123 names as the API server validates them, and one Deployment belongs to
  one service;
* leak a secret: credentials in a URL are refused (they would be printed and stored with every
  artifact), and a token or password is sent over plain ``http://`` only to a loopback address
  unless ``prometheus.allow_insecure_auth`` says otherwise (a lab-only switch);
* expand: YAML anchors and aliases are refused (a "billion laughs" file would otherwise expand
  exponentially), and so are files over :data:`MAX_CONFIG_BYTES`.

Every problem is refused with one line that names the file, the service and the field, e.g.
``services.yaml: service resnet: forecast.horizon_steps: must be an integer >= 1, got 0``.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, Field, Strict, ValidationInfo, field_validator, model_validator

from actuator.spec import (
    DEFAULTS,
    DNS_LABEL,
    ENV_NAME,
    FieldProblem,
    Flag,
    Integer,
    Matching,
    Number,
    OneOf,
    Seconds,
    ServiceSpec,
    Spec,
    Text,
    Url,
    check_url,
    kind,
    parse,
    show,
)
from forecasting import DEFAULT_MODEL
from forecasting.errors import BadInputError
from forecasting.models import MODELS, QUANTILES
from planner.policy import PolicySettings

MAX_POINTS_PER_SERIES = 11_000
"""Prometheus refuses a range query that would return more points per series than this."""

MAX_CONFIG_BYTES = 1 << 20
"""A config file larger than this (1 MiB) is refused before it is parsed."""

AUTH_TYPES = ("none", "bearer", "basic")

DEFAULT_RUN_TIMEOUT_S = 120.0
"""Per-service run budget when ``run_timeout_s`` is not given (capped at ``run_interval_s``)."""

SettingsError = BadInputError
"""A bad service config: the one input-error type; the message is one line naming the file,
service and field."""


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback IP literal (127.0.0.0/8, ::1)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------
# fleet-level settings


class AuthSettings(Spec):
    """How surgecast authenticates to Prometheus."""

    type: OneOf(*AUTH_TYPES) = "none"
    """``none``, ``bearer`` (``Authorization: Bearer <token>``) or ``basic`` (user + password)."""

    username: Text | None = None
    """Basic auth only: the user name."""

    secret_file: Text | None = None
    """File holding the bearer token or the basic-auth password (read once, stripped)."""

    secret_env: Matching(ENV_NAME, "an environment variable name") | None = None
    """NAME of the environment variable holding the token or password (read once at load)."""

    secret: str | None = Field(default=None, repr=False, exclude=True)
    """The token or password itself, filled in by :func:`load_settings`; never in the file."""

    @model_validator(mode="before")
    @classmethod
    def _no_secret_in_the_file(cls, data: Any, info: ValidationInfo) -> Any:
        if info.context and info.context.get("file") and isinstance(data, Mapping):
            if "secret" in data:
                raise FieldProblem("secret", "unknown key")
        return data

    @model_validator(mode="after")
    def _rules(self) -> AuthSettings:
        given = [k for k in ("secret_file", "secret_env") if getattr(self, k) is not None]
        if self.type == "none":
            if given or self.username is not None:
                raise FieldProblem(given[0] if given else "username", "set, but type is none")
            return self
        if len(given) != 1:
            raise FieldProblem("secret_file", "give exactly one of secret_file or secret_env")
        if self.type == "basic":
            if not self.username:
                raise FieldProblem("username", "basic auth needs a user name")
            # RFC 7617 section 2: the user-id of Basic auth must not contain a colon.
            if ":" in self.username or any(ord(c) < 32 for c in self.username):
                raise FieldProblem("username", "must not contain ':' or control characters")
        if self.type == "bearer" and self.username is not None:
            raise FieldProblem("username", "bearer auth takes no user name")
        return self

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


def _max_points(value: int) -> int:
    if not 2 <= value <= MAX_POINTS_PER_SERIES:
        raise ValueError(f"must be in 2..{MAX_POINTS_PER_SERIES}, got {value}")
    return value


class PrometheusSettings(Spec):
    """Where and how the RPS histories are read."""

    url: Url = "http://localhost:9090"
    """Base URL of the Prometheus HTTP API (``http(s)://host:port[/prefix]``); no credentials,
    query string or fragment."""

    timeout_s: Seconds(0, 300, low_open=True) = 10.0
    """Timeout of connecting and of each read from the socket (s), in (0, 300]."""

    query_deadline_s: Seconds(0, 600, low_open=True) = 30.0
    """Whole-exchange deadline of one HTTP request, whatever the server does (s), in (0, 600]:
    a server that answers one byte at a time is cut off here, not after ``timeout_s`` per byte."""

    attempts: Integer(1, 10) = 3
    """Tries per range query, the first included (connection errors, timeouts, 5xx, 429), 1..10."""

    backoff_s: Seconds(0, 60, low_open=True) = 1.0
    """Wait before the first retry; doubles each time (s), in (0, 60]."""

    verify_tls: Flag = True
    """Verify the server's TLS certificate (https URLs). Off only for a lab."""

    ca_file: Text | None = None
    """CA bundle that signs the server's certificate (PEM); None: the system's CAs."""

    max_points: Annotated[int, Strict(), AfterValidator(_max_points)] = MAX_POINTS_PER_SERIES
    """Most points per series in one range query; longer ranges are split into chunks."""

    allow_insecure_auth: Flag = False
    """LAB ONLY. Send the token or password over plain ``http://`` to a host that is not a
    loopback address, where anyone on the path can read it. Never set it in production: give
    Prometheus an ``https://`` URL instead."""

    auth: AuthSettings = AuthSettings()
    """Authentication (bearer token or basic auth)."""

    @model_validator(mode="after")
    def _no_secret_in_clear(self) -> PrometheusSettings:
        parts = check_url(self.url)
        if (
            self.auth.type != "none"
            and parts.scheme == "http"
            and not is_loopback(parts.hostname)
            and not self.allow_insecure_auth
        ):
            raise FieldProblem(
                "auth",
                f"{self.auth.type} auth over plain http:// would send the secret in clear text "
                f"to {parts.hostname}; use an https:// URL (allow_insecure_auth: true is a "
                "lab-only switch)",
            )
        return self


class ArtifactSettings(Spec):
    """Where forecasts, plans, decision records and fitted models are kept."""

    root: Text = "artifacts"
    """Local directory (relative to the config file) or fsspec URL (``s3://bucket/prefix``)."""

    retention_days: Number(1, 3650, unit=" days") = 14.0
    """Artifacts older than this many days are deleted (the newest model is always kept); at
    least 1 (less would delete the records of the day being written), at most 3650."""

    actuator_dir: Text | None = None
    """Local directory for the actuator's own record lines when ``root`` is a remote URL
    (None: ``root`` itself when local, else a ``surgecast-actuator`` folder in the temp dir)."""

    @field_validator("root")
    @classmethod
    def _root(cls, root: str) -> str:
        if not root.strip():
            raise ValueError("must not be empty")
        if "\x00" in root:
            raise ValueError("must not contain NUL characters")
        if "://" in root and "@" in root.split("://", 1)[1].split("/", 1)[0]:
            raise ValueError(
                "must not carry credentials (user:password@); use the storage's own "
                "credential chain (environment, instance role)"
            )
        return root


class KubernetesSettings(Spec):
    """How the actuator reaches the cluster."""

    kubeconfig: Text | None = None
    """kubeconfig file; None: ``$KUBECONFIG``/``~/.kube/config``, then the in-cluster account."""

    context: Text | None = None
    """kubeconfig context; None: the current one."""

    host: Url | None = None
    """Plain API server URL without credentials (``kubectl proxy``, tests); overrides the rest."""


# --------------------------------------------------------------------------------------------
# per-service settings: what forecasting needs on top of the actuation spec


class DataSettings(Spec):
    """What an RPS history read from Prometheus must satisfy before anything acts on it."""

    step_s: Seconds(1, 3600) = 60.0
    """Resolution of the history (s), in [1, 3600]: the range query's step and the forecast's."""

    max_staleness_s: Seconds(0, 86_400, low_open=True) = 180.0
    """Refuse the history when its last sample is older than this before ``now`` (s)."""

    max_gap_steps: Integer(0, 100_000) = 60
    """Longest run of missing points that is filled; a longer gap is refused."""

    max_missing_share: Annotated[float, Strict()] = 0.2
    """Refuse the history when more than this share of its points is missing, in [0, 1)."""

    max_rps: Number(0, 1e12, low_open=True, unit=" rps") | None = None
    """Absolute ceiling (rps): a history with any sample above it is refused as implausible.
    None: no ceiling (the jump check below still applies)."""

    jump_factor: Number(1, 1e9, low_open=True) = 10.0
    """A sample more than this many times the recent robust maximum (the highest
    ``2 * jump_confirm_steps - 1``-point running median over the day before it, at least
    ``jump_floor_rps``) is a jump that must be confirmed. On the bundled traces (the Twitter
    flash crowd included) no sample exceeds 1.2x (Twitter) or 1.5x (Azure, 10 s) that maximum
    after the first day."""

    jump_confirm_steps: Integer(1, 1440) = 3
    """Consecutive samples a jump needs before the history is used: a newer, shorter jump
    refuses the history (``implausible``); an older one that did not last is dropped as missing."""

    jump_floor_rps: Number(0, 1e12, unit=" rps") = 1.0
    """The robust maximum is taken as at least this (rps), so a service waking from zero load is
    not a jump."""

    @field_validator("max_missing_share")
    @classmethod
    def _share(cls, value: float) -> float:
        if not 0 <= value < 1:
            raise ValueError(f"must be in [0, 1), got {value}")
        return value


class ForecastSettings(Spec):
    """The forecasting model of a service and how often it is refitted."""

    model: OneOf(*MODELS) = DEFAULT_MODEL
    """Registered model: adaptive (the default), hybrid, lgbm_lags, ets, seasonal_naive or
    naive."""

    quantiles: Annotated[tuple[Annotated[float, Strict()], ...], Field(max_length=100)] = QUANTILES
    """Quantiles stored with every forecast (a subset of the models' 0.5, 0.9, 0.95, 0.99)."""

    plan_quantile: Annotated[float, Strict()] = 0.95
    """The quantile the planner sizes capacity for; one of ``quantiles``."""

    horizon_steps: Annotated[int, Strict()] = 15
    """Forecast steps ahead (of ``data.step_s``), 1..1440."""

    history_days: Number(0, 60, low_open=True, unit=" days") = 3.0
    """History read every run: the model's context (one day + one step for the seasonal
    models) and enough for a seasonal-naive fallback to be calibrated (about 2.1 days)."""

    fit_days: Number(0, 60, low_open=True, unit=" days") = 8.0
    """History a (re)fit reads (the model trains on up to its last 7 days, after calibration);
    at most 60 days."""

    refit_every_h: Number(0, 720, low_open=True, unit=" h") = 24.0
    """A stored model older than this is refitted by the retraining run (h), at most 30 days."""

    seed: Integer(0, 2**32 - 1) = 0
    """Seed of every stochastic part of the model (0..2**32 - 1, numpy's range)."""

    no_regret: bool = False
    """Follow the forecast only as far as it has beaten persistence over the last hour
    (:mod:`forecasting.trust`); false (the default until the evaluation protocol of
    docs/evaluation.md has validated it): always follow it."""

    @field_validator("quantiles")
    @classmethod
    def _quantiles(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        bad = [q for q in value if not any(math.isclose(q, m) for m in QUANTILES)]
        if not value or bad or len(value) > len(QUANTILES):
            raise ValueError(
                f"{list(value)[:8]}: each must be one of {', '.join(map(str, QUANTILES))}"
            )
        return value

    @field_validator("horizon_steps")
    @classmethod
    def _horizon(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be an integer >= 1, got {value}")
        if value > 1440:
            raise ValueError(f"must be an integer in 1..1440, got {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ForecastSettings:
        if not any(math.isclose(self.plan_quantile, q) for q in self.quantiles):
            raise FieldProblem(
                "plan_quantile", f"{self.plan_quantile} is not one of quantiles {self.quantiles}"
            )
        if self.fit_days < self.history_days:
            raise FieldProblem(
                "fit_days", f"{self.fit_days} is shorter than history_days {self.history_days}"
            )
        return self


class ServiceSettings(ServiceSpec):
    """Everything surgecast knows about one service: the actuation spec
    (:class:`actuator.spec.ServiceSpec`, whose defaults are the only ones) and what the
    forecasting side needs on top of it."""

    query: Text
    """PromQL expression whose value is the service's load in requests per second, e.g.
    ``sum(rate(http_requests_total{service="resnet"}[1m]))``; one series."""

    profile: Text
    """Latency profile or pipeline: a file (relative to the config file) or a bundled name."""

    slo_ms: Number(0, 600_000, low_open=True, unit=" ms")
    """End-to-end latency SLO at the profile's percentile (ms), in (0, 600000]."""

    data: DataSettings = DataSettings()
    """Checks on the RPS history."""

    forecast: ForecastSettings = ForecastSettings()
    """Model, quantiles, horizon, history windows and refit cadence."""

    @field_validator("query")
    @classmethod
    def _query(cls, value: str) -> str:
        if not value.strip() or len(value) > 10_000 or "\x00" in value:
            raise ValueError("must be a PromQL expression (at most 10000 characters)")
        return value

    @property
    def step_s(self) -> float:
        return self.data.step_s

    def policy(self) -> PolicySettings:
        """The planner's settings for this service (its timings come from the spec)."""
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


class Fleet(Spec):
    """The fleet-level part of the file: everything but ``defaults`` and ``services``."""

    prometheus: PrometheusSettings = PrometheusSettings()
    """The Prometheus the histories come from."""

    artifacts: ArtifactSettings = ArtifactSettings()
    """The artifact store."""

    kubernetes: KubernetesSettings = KubernetesSettings()
    """How the actuator reaches the cluster."""

    pushgateway_url: Url | None = None
    """Prometheus Pushgateway that receives run metrics (None: no metrics); every service's
    spec carries it."""

    run_interval_s: Seconds(30, 3600) = DEFAULTS.run_interval_s
    """Time between two scaling runs (s), in [30, 3600]: the schedule of the scaling DAG, and
    how far ahead the actuator applies plan steps; every service's spec carries it."""

    run_timeout_s: Annotated[float, Strict()] | None = None
    """Budget of one service's run (s), in [1, run_interval_s]: reading, forecasting, planning
    and acting for one service end by then (a run that outlives the interval would overlap the
    next). Not given: 120 s, or ``run_interval_s`` if that is shorter."""

    @model_validator(mode="after")
    def _timeout(self) -> Fleet:
        if self.run_timeout_s is None:  # its default depends on the interval: filled in once,
            # here, while the model is built (frozen models have no other hook for it)
            object.__setattr__(
                self, "run_timeout_s", min(DEFAULT_RUN_TIMEOUT_S, self.run_interval_s)
            )
        timeout, interval = self.run_timeout_s, self.run_interval_s
        if not 1 <= timeout <= interval:
            raise FieldProblem(
                "run_timeout_s",
                f"must be in [1, run_interval_s = {interval:g}] s (a run must end before the "
                f"next one starts), got {timeout:g}",
            )
        return self


class Settings(Fleet):
    """The whole config: fleet settings and every service."""

    source: str = "<config>"
    """The file the settings were read from (for messages)."""

    services: tuple[ServiceSettings, ...] = ()
    """Every managed service, in file order."""

    def service(self, name: str) -> ServiceSettings:
        """The service called ``name``.

        Raises:
            SettingsError: no such service; the message lists them.
        """
        for svc in self.services:
            if svc.name == name:
                return svc
        have = ", ".join(s.name for s in self.services)
        raise SettingsError(f"{self.source}: no service {show(name)}; the config has {have}")

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.services]

    def actuator_config(self, name: str) -> ServiceSpec:
        """The actuation spec of one service (the service's settings are one)."""
        return self.service(name)


# --------------------------------------------------------------------------------------------
# loading


FLEET_KEYS = (*Fleet.model_fields, "defaults", "services")
_FROM_THE_FLEET = ("run_interval_s", "pushgateway_url")
"""Spec fields a fleet file gives once at the top level, for every service."""
_NOT_IN_DEFAULTS = ("name", "workloads", "deployment")
"""Keys that identify a service or what it owns: given once per service, never inherited."""


def load_settings(
    path: str | Path,
    *,
    environ: Mapping[str, str] | None = None,
    resolve_secrets: bool = True,
) -> Settings:
    """Read and validate a service config file; resolve secrets once.

    Args:
        path: the YAML file (at most :data:`MAX_CONFIG_BYTES`; no anchors or aliases).
        environ: where ``secret_env`` names are looked up (default ``os.environ``); the only
            place surgecast reads the environment.
        resolve_secrets: False for what talks to no server (a backtest of the file's
            services): the auth settings are validated, the secret is not read.

    Raises:
        SettingsError: one line naming the file, the service and the field.
    """
    file = Path(path)
    where = str(file)
    if file.exists() and not file.is_file():  # a FIFO or device would block the read
        raise SettingsError(f"{where}: not a regular file (a config is a YAML file)")
    if file.suffix.lower() in (".toml", ".json"):
        raise SettingsError(
            f"{where}: service configs are YAML now (one file for run and apply); move the "
            "service's keys under services: in a .yaml file (see data/services.example.yaml)"
        )
    try:
        with file.open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise SettingsError(f"{where}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{where}: cannot read: {_one_line(exc)}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise SettingsError(f"{where}: larger than {MAX_CONFIG_BYTES} bytes; not a config file")
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SettingsError(f"{where}: not valid YAML{at}: {_one_line(problem)}") from None
    except RecursionError:
        raise SettingsError(f"{where}: not valid YAML: nested too deeply") from None
    return settings_from_dict(
        data, source=where, base=file.parent, environ=environ, resolve_secrets=resolve_secrets
    )


def settings_from_dict(
    data: Any,
    *,
    source: str = "<config>",
    base: Path | None = None,
    environ: Mapping[str, str] | None = None,
    resolve_secrets: bool = True,
) -> Settings:
    """Validate plain data (a parsed config) into :class:`Settings`.

    Args:
        data: the parsed file.
        source: the file's name, for messages.
        base: folder relative paths (profiles, artifact root, secret files) are resolved in.
        environ, resolve_secrets: see :func:`load_settings`.
    """
    environ = os.environ if environ is None else environ
    base = Path(".") if base is None else base
    if not isinstance(data, dict):
        raise SettingsError(f"{source}: expected a mapping at the top level, got {kind(data)}")
    unknown = sorted(_key(k) for k in set(data) - set(FLEET_KEYS))
    if unknown:
        raise SettingsError(f"{source}: unknown key(s) {', '.join(unknown)}")
    fleet_data = {
        k: ({} if v is None and k in ("prometheus", "artifacts", "kubernetes") else v)
        for k, v in data.items()
        if k in Fleet.model_fields
    }
    fleet = parse(Fleet, fleet_data, source, context={"file": True})
    prometheus = (
        _with_secret(fleet.prometheus, base, environ, source)
        if resolve_secrets
        else fleet.prometheus
    )
    try:
        artifacts = _resolve_root(fleet.artifacts, base)
        kubernetes = fleet.kubernetes
        if kubernetes.kubeconfig is not None:
            kubeconfig = str(_file(kubernetes.kubeconfig, base, "kubernetes.kubeconfig"))
            kubernetes = kubernetes.model_copy(update={"kubeconfig": kubeconfig})
    except FieldProblem as exc:
        raise SettingsError(f"{source}: {exc}") from None

    defaults = data.get("defaults")
    defaults = {} if defaults is None else defaults
    if not isinstance(defaults, dict):
        raise SettingsError(f"{source}: defaults: expected a mapping, got {kind(defaults)}")
    for key in _NOT_IN_DEFAULTS:
        if key in defaults:
            raise SettingsError(f"{source}: defaults.{key}: give it in each service, not in "
                                "defaults")
    for key in _FROM_THE_FLEET:
        if key in defaults:
            raise SettingsError(f"{source}: defaults.{key}: give it once at the top level")
    if defaults.get("mode") == "active":
        raise SettingsError(
            f"{source}: defaults.mode: active must be set in each service's own table, never "
            "in defaults (a service added later would patch the cluster unasked)"
        )
    raw_services = data.get("services")
    if not isinstance(raw_services, list) or not raw_services:
        raise SettingsError(f"{source}: services: expected a non-empty list of services")
    services: list[ServiceSettings] = []
    seen: set[str] = set()
    owners: dict[tuple[str, str], str] = {}
    for i, raw in enumerate(raw_services):
        if not isinstance(raw, dict):
            raise SettingsError(f"{source}: services[{i}]: expected a mapping, got {kind(raw)}")
        name = raw.get("name")
        label = (
            f"service {name}"
            if isinstance(name, str) and DNS_LABEL.match(name)
            else f"services[{i}]"
        )
        if isinstance(name, str) and name in seen:
            raise SettingsError(f"{source}: {label}: name: given twice")
        for key in _FROM_THE_FLEET:
            if key in raw:
                raise SettingsError(f"{source}: {label}: {key}: give it once at the top level")
        merged = _deep_merge(defaults, raw)
        merged.update(run_interval_s=fleet.run_interval_s, pushgateway_url=fleet.pushgateway_url)
        svc = parse(ServiceSettings, merged, f"{source}: {label}", flat="workloads" not in merged)
        try:
            svc = _check_profile(svc, base)
        except FieldProblem as exc:
            raise SettingsError(f"{source}: {label}: {exc}") from None
        seen.add(svc.name)
        for w in svc.workloads:
            key = (svc.namespace, w.deployment)
            if key in owners:
                raise SettingsError(
                    f"{source}: {label}: deployment: {svc.namespace}/{w.deployment} already "
                    f"belongs to service {owners[key]}; a Deployment is scaled by one service"
                )
            owners[key] = svc.name
        services.append(svc)
    return Settings(
        **{**dict(fleet), "prometheus": prometheus, "artifacts": artifacts,
           "kubernetes": kubernetes},
        source=source,
        services=tuple(services),
    )


def _check_profile(svc: ServiceSettings, base: Path) -> ServiceSettings:
    """Resolve the profile (a file relative to the config, else a bundled name) and check that
    the Deployments name its stages."""
    from surgecast.planning import load_profile

    candidate = _file(svc.profile, base, "profile")
    try:
        exists = candidate.is_file()
    except OSError:
        exists = False
    profile = str(candidate) if exists else svc.profile
    try:
        pipeline = load_profile(profile)
    except BadInputError as exc:
        raise FieldProblem("profile", _one_line(exc)) from None
    stages = pipeline.stage_names
    if len(stages) != len(svc.workloads):
        raise FieldProblem(
            "workloads",
            f"profile {pipeline.name} has {len(stages)} stage(s) ({', '.join(stages)}), "
            f"the service names {len(svc.workloads)} Deployment(s)",
        )
    if len(stages) > 1:
        named = sorted(str(w.stage) for w in svc.workloads)
        if named != sorted(stages):
            raise FieldProblem(
                "workloads", f"stages {named} do not match the profile's {sorted(stages)}"
            )
    return svc.model_copy(update={"profile": profile})


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
        value = value.strip()
    else:
        try:
            secret_path = _file(str(auth.secret_file), base, "prometheus.auth.secret_file")
        except FieldProblem as exc:
            raise SettingsError(f"{source}: {exc}") from None
        try:
            with secret_path.open("rb") as fh:
                value = fh.read(65_537).decode("utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
            raise SettingsError(
                f"{source}: prometheus.auth.secret_file: cannot read {secret_path}: {why}"
            ) from None
        if not value:
            raise SettingsError(f"{source}: prometheus.auth.secret_file: {secret_path} is empty")
    what = "secret_env" if auth.secret_env is not None else "secret_file"
    # The secret goes into an HTTP header: a line break would inject headers, and anything
    # longer than 64 KiB is not a token. The message never shows the value.
    if len(value) > 65_536 or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise SettingsError(
            f"{source}: prometheus.auth.{what}: the secret holds control characters or is "
            "longer than 64 KiB"
        )
    return prometheus.model_copy(update={"auth": auth.model_copy(update={"secret": value})})


def _resolve_root(artifacts: ArtifactSettings, base: Path) -> ArtifactSettings:
    root = artifacts.root
    if "://" in root:
        return artifacts
    return artifacts.model_copy(
        update={"root": str(_file(root, base, "artifacts.root").resolve())}
    )


def _file(text: str, base: Path, name: str) -> Path:
    """``text`` as a path, relative to ``base`` unless absolute (``~`` expanded)."""
    if "\x00" in text:
        raise FieldProblem(name, "must not contain NUL characters")
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # ~user that does not exist
        raise FieldProblem(name, f"{show(text)}: cannot expand the home directory") from None
    return path if path.is_absolute() else base / path


def _deep_merge(defaults: Any, override: Any) -> Any:
    if isinstance(defaults, dict) and isinstance(override, dict):
        out = dict(defaults)
        for key, value in override.items():
            out[key] = _deep_merge(defaults.get(key), value) if key in defaults else value
        return out
    return override


def _key(key: Any) -> str:
    """A mapping key for messages: text as is (cut short), anything else shown by kind."""
    return (key if len(key) <= 60 else f"{key[:57]}...") if isinstance(key, str) else show(key)


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())[:300]


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses what a service config never needs and an attacker can abuse.

    * a key given twice in one mapping (YAML would silently keep the last);
    * a key that is not text (``1: x``, ``[a]: b``, ``? {a: 1}``);
    * anchors and aliases (``&a``/``*a``): a "billion laughs" document of nine nested aliases
      expands to 10**9 nodes for anything that walks it; ``defaults`` does what ``<<: *a`` would.
    """

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed; use defaults instead",
                event.start_mark,
            )
        event = self.peek_event()
        if getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, "anchors (&name) are not allowed; use defaults instead",
                event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != (
                "tag:yaml.org,2002:str"
            ):
                raise yaml.constructor.ConstructorError(
                    None, None, "keys must be text", key_node.start_mark
                )
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {show(key)} given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)
