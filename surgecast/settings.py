"""The service config: one YAML file, validated once at the edge, passed down as frozen settings.

Layout of the file (see ``data/services.example.yaml``)::

    prometheus: {url, timeout_s, query_deadline_s, attempts, backoff_s, verify_tls, ca_file,
                 allow_insecure_auth, auth: {...}}
    artifacts:  {root, retention_days, actuator_dir}
    kubernetes: {kubeconfig, context, host}
    pushgateway_url: http://pushgateway:9091
    run_interval_s: 300
    run_timeout_s: 120
    defaults:   {every per-service key}          # fleet defaults
    services:   [{name, query, namespace, deployment, bounds, ...}, ...]   # per-service

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
import re
import types
import typing
import urllib.parse
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from actuator.config import REQUIRED_BOUNDS, ServiceConfig, WorkloadConfig
from actuator.errors import ActuatorInputError
from actuator.guards import Bounds
from forecasting.errors import BadInputError
from forecasting.models import MODELS, QUANTILES
from planner.errors import PlannerInputError
from planner.policy import PolicySettings

MAX_POINTS_PER_SERIES = 11_000
"""Prometheus refuses a range query that would return more points per series than this."""

MAX_CONFIG_BYTES = 1 << 20
"""A config file larger than this (1 MiB) is refused before it is parsed."""

MODES = ("shadow", "active")
AUTH_TYPES = ("none", "bearer", "basic")

# DNS-1123 names as the API server validates them
# (kubernetes/kubernetes staging/src/k8s.io/apimachinery/pkg/util/validation/validation.go,
# IsDNS1123Label and IsDNS1123Subdomain): a label is at most 63 characters of [a-z0-9-],
# starting and ending alphanumeric; a subdomain is labels joined by dots, at most 253 characters.
# Namespaces and container names are labels (pkg/apis/core/validation/validation.go),
# Deployments and HPAs subdomains (pkg/apis/apps/validation, pkg/apis/autoscaling/validation).
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_LABEL = re.compile(rf"^(?=.{{1,63}}$){_LABEL}$")
DNS_SUBDOMAIN = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

MAX_REPLICAS = 10_000
"""Largest ``bounds.max_replicas`` accepted (a typo guard; Kubernetes itself allows int32)."""
MAX_CORES = 1024
"""Largest ``bounds.max_cores`` accepted (more cores than any single node has)."""
MAX_BATCH = 4096
"""Largest ``bounds.max_batch`` accepted."""
DEFAULT_RUN_TIMEOUT_S = 120.0
"""Per-service run budget when ``run_timeout_s`` is not given (capped at ``run_interval_s``)."""


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


def _show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages (a value may be huge)."""
    text = repr(value) if isinstance(value, str | int | float | bool | None) else _kind(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _key(key: Any) -> str:
    """A mapping key for messages: text as is (cut short), anything else shown by kind."""
    return (key if len(key) <= 60 else f"{key[:57]}...") if isinstance(key, str) else _show(key)


def _in_range(obj, name: str, low: float, high: float, *, low_open: bool = False,
              unit: str = "") -> None:
    """Refuse ``obj.name`` outside ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    value = getattr(obj, name)
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        left = "(" if low_open else "["
        raise _FieldError(name, f"must be in {left}{low:g}, {high:g}]{unit}, got {value:g}")


def _int_range(obj, name: str, low: int, high: int) -> None:
    value = getattr(obj, name)
    if not low <= value <= high:
        raise _FieldError(name, f"must be an integer in {low}..{high}, got {value}")


def check_name(value: str, name: str, pattern: re.Pattern = DNS_LABEL) -> None:
    """Refuse ``value`` unless it is a DNS-1123 label (or the ``pattern`` given).

    Raises:
        _FieldError: naming ``name``; the value is shown cut short.
    """
    if not pattern.match(value):
        kind = "DNS-1123 subdomain" if pattern is DNS_SUBDOMAIN else "DNS-1123 label"
        rule = (
            "lower-case letters, digits, '-' and '.', at most 253"
            if pattern is DNS_SUBDOMAIN
            else "lower-case letters, digits and '-', at most 63"
        )
        raise _FieldError(
            name, f"{_show(value)} is not a valid Kubernetes name ({kind}: {rule} characters, "
            "starting and ending with a letter or digit)"
        )


def check_url(url: str, name: str) -> urllib.parse.SplitResult:
    """Refuse anything but a plain ``http(s)://host[:port][/path]`` URL.

    Credentials in the URL (``user:password@``) are refused without echoing the URL: they would
    be printed in messages and stored in every artifact that names the server.

    Raises:
        _FieldError: naming ``name``.
    """
    if "@" in url:
        raise _FieldError(
            name, "must not carry credentials (user:password@host); give them in "
            "prometheus.auth (secret_file or secret_env), never in a URL"
        )
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url) or len(url) > 2048:
        raise _FieldError(name, f"{_show(url)} is not an http(s) URL")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise _FieldError(name, f"{_show(url)} is not an http(s) URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _FieldError(name, f"{_show(url)} is not an http(s) URL")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise _FieldError(name, "must not carry a query string or fragment")
    return parts


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
            raise _FieldError("type", f"{_show(self.type)} is not one of {', '.join(AUTH_TYPES)}")
        given = [k for k in ("secret_file", "secret_env") if getattr(self, k) is not None]
        if self.type == "none":
            if given or self.username is not None:
                raise _FieldError(given[0] if given else "username", "set, but type is none")
            return
        if len(given) != 1:
            raise _FieldError("secret_file", "give exactly one of secret_file or secret_env")
        if self.secret_env is not None and not _ENV_NAME.match(self.secret_env):
            raise _FieldError(
                "secret_env", f"{_show(self.secret_env)} is not an environment variable name"
            )
        if self.type == "basic":
            if not self.username:
                raise _FieldError("username", "basic auth needs a user name")
            # RFC 7617 section 2: the user-id of Basic auth must not contain a colon.
            if ":" in self.username or any(ord(c) < 32 for c in self.username):
                raise _FieldError("username", "must not contain ':' or control characters")
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
    """Base URL of the Prometheus HTTP API (``http(s)://host:port[/prefix]``); no credentials,
    query string or fragment."""

    timeout_s: float = 10.0
    """Timeout of connecting and of each read from the socket (s), in (0, 300]."""

    query_deadline_s: float = 30.0
    """Whole-exchange deadline of one HTTP request, whatever the server does (s), in (0, 600]:
    a server that answers one byte at a time is cut off here, not after ``timeout_s`` per byte."""

    attempts: int = 3
    """Tries per range query, the first included (connection errors, timeouts, 5xx, 429), 1..10."""

    backoff_s: float = 1.0
    """Wait before the first retry; doubles each time (s), in (0, 60]."""

    verify_tls: bool = True
    """Verify the server's TLS certificate (https URLs). Off only for a lab."""

    ca_file: str | None = None
    """CA bundle that signs the server's certificate (PEM); None: the system's CAs."""

    max_points: int = MAX_POINTS_PER_SERIES
    """Most points per series in one range query; longer ranges are split into chunks."""

    allow_insecure_auth: bool = False
    """LAB ONLY. Send the token or password over plain ``http://`` to a host that is not a
    loopback address, where anyone on the path can read it. Never set it in production: give
    Prometheus an ``https://`` URL instead."""

    auth: AuthSettings = AuthSettings()
    """Authentication (bearer token or basic auth)."""

    def __post_init__(self) -> None:
        parts = check_url(str(self.url), "url")
        _in_range(self, "timeout_s", 0, 300, low_open=True, unit=" s")
        _in_range(self, "query_deadline_s", 0, 600, low_open=True, unit=" s")
        _in_range(self, "backoff_s", 0, 60, low_open=True, unit=" s")
        _int_range(self, "attempts", 1, 10)
        if not 2 <= self.max_points <= MAX_POINTS_PER_SERIES:
            raise _FieldError(
                "max_points", f"must be in 2..{MAX_POINTS_PER_SERIES}, got {self.max_points}"
            )
        if (
            self.auth.type != "none"
            and parts.scheme == "http"
            and not is_loopback(parts.hostname)
            and not self.allow_insecure_auth
        ):
            raise _FieldError(
                "auth",
                f"{self.auth.type} auth over plain http:// would send the secret in clear text "
                f"to {parts.hostname}; use an https:// URL (allow_insecure_auth: true is a "
                "lab-only switch)",
            )


@dataclass(frozen=True)
class ArtifactSettings:
    """Where forecasts, plans, decision records and fitted models are kept."""

    root: str = "artifacts"
    """Local directory (relative to the config file) or fsspec URL (``s3://bucket/prefix``)."""

    retention_days: float = 14.0
    """Artifacts older than this many days are deleted (the newest model is always kept); at
    least 1 (less would delete the records of the day being written), at most 3650."""

    actuator_dir: str | None = None
    """Local directory for the actuator's own record lines when ``root`` is a remote URL
    (None: ``root`` itself when local, else a ``surgecast-actuator`` folder in the temp dir)."""

    def __post_init__(self) -> None:
        if not str(self.root).strip():
            raise _FieldError("root", "must not be empty")
        if "\x00" in self.root:
            raise _FieldError("root", "must not contain NUL characters")
        if "://" in self.root and "@" in self.root.split("://", 1)[1].split("/", 1)[0]:
            raise _FieldError(
                "root", "must not carry credentials (user:password@); use the storage's own "
                "credential chain (environment, instance role)"
            )
        _in_range(self, "retention_days", 1, 3650, unit=" days")


@dataclass(frozen=True)
class KubernetesSettings:
    """How the actuator reaches the cluster."""

    kubeconfig: str | None = None
    """kubeconfig file; None: ``$KUBECONFIG``/``~/.kube/config``, then the in-cluster account."""

    context: str | None = None
    """kubeconfig context; None: the current one."""

    host: str | None = None
    """Plain API server URL without credentials (``kubectl proxy``, tests); overrides the rest."""

    def __post_init__(self) -> None:
        if self.host is not None:
            check_url(self.host, "host")


# --------------------------------------------------------------------------------------------
# per-service settings


@dataclass(frozen=True)
class DataSettings:
    """What an RPS history read from Prometheus must satisfy before anything acts on it."""

    step_s: float = 60.0
    """Resolution of the history (s), in [1, 3600]: the range query's step and the forecast's."""

    max_staleness_s: float = 180.0
    """Refuse the history when its last sample is older than this before ``now`` (s)."""

    max_gap_steps: int = 60
    """Longest run of missing points that is filled; a longer gap is refused."""

    max_missing_share: float = 0.2
    """Refuse the history when more than this share of its points is missing."""

    max_rps: float | None = None
    """Absolute ceiling (rps): a history with any sample above it is refused as implausible.
    None: no ceiling (the jump check below still applies)."""

    jump_factor: float = 10.0
    """A sample more than this many times the recent robust maximum (the highest
    ``2 * jump_confirm_steps - 1``-point running median over the day before it, at least
    ``jump_floor_rps``) is a jump that must be confirmed. On the bundled traces (the Twitter
    flash crowd included) no sample exceeds 1.2x (Twitter) or 1.5x (Azure, 10 s) that maximum
    after the first day."""

    jump_confirm_steps: int = 3
    """Consecutive samples a jump needs before the history is used: a newer, shorter jump
    refuses the history (``implausible``); an older one that did not last is dropped as missing."""

    jump_floor_rps: float = 1.0
    """The robust maximum is taken as at least this (rps), so a service waking from zero load is
    not a jump."""

    def __post_init__(self) -> None:
        _in_range(self, "step_s", 1, 3600, unit=" s")
        _in_range(self, "max_staleness_s", 0, 86_400, low_open=True, unit=" s")
        _int_range(self, "max_gap_steps", 0, 100_000)
        if not 0 <= self.max_missing_share < 1:
            raise _FieldError(
                "max_missing_share", f"must be in [0, 1), got {self.max_missing_share}"
            )
        if self.max_rps is not None:
            _in_range(self, "max_rps", 0, 1e12, low_open=True, unit=" rps")
        _in_range(self, "jump_factor", 1, 1e9, low_open=True)
        _int_range(self, "jump_confirm_steps", 1, 1440)
        _in_range(self, "jump_floor_rps", 0, 1e12, unit=" rps")


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
    """Forecast steps ahead (of ``data.step_s``), 1..1440."""

    history_days: float = 3.0
    """History read every run: the model's context (one day + one step for the seasonal
    models) and enough for a seasonal-naive fallback to be calibrated (about 2.1 days)."""

    fit_days: float = 8.0
    """History a (re)fit reads (the model trains on up to its last 7 days, after calibration);
    at most 60 days."""

    refit_every_h: float = 24.0
    """A stored model older than this is refitted by the retraining run (h), at most 30 days."""

    seed: int = 0
    """Seed of every stochastic part of the model (0..2**32 - 1, numpy's range)."""

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise _FieldError("model", f"{_show(self.model)} is not one of {', '.join(MODELS)}")
        bad = [q for q in self.quantiles if not any(math.isclose(q, m) for m in QUANTILES)]
        if not self.quantiles or bad or len(self.quantiles) > len(QUANTILES):
            raise _FieldError(
                "quantiles",
                f"{list(self.quantiles)[:8]}: each must be one of "
                f"{', '.join(map(str, QUANTILES))}",
            )
        if not any(math.isclose(self.plan_quantile, q) for q in self.quantiles):
            raise _FieldError(
                "plan_quantile", f"{self.plan_quantile} is not one of quantiles {self.quantiles}"
            )
        if self.horizon_steps < 1:
            raise _FieldError(
                "horizon_steps", f"must be an integer >= 1, got {self.horizon_steps}"
            )
        _int_range(self, "horizon_steps", 1, 1440)
        _in_range(self, "history_days", 0, 60, low_open=True, unit=" days")
        _in_range(self, "fit_days", 0, 60, low_open=True, unit=" days")
        _in_range(self, "refit_every_h", 0, 720, low_open=True, unit=" h")
        _int_range(self, "seed", 0, 2**32 - 1)
        if self.fit_days < self.history_days:
            raise _FieldError(
                "fit_days", f"{self.fit_days} is shorter than history_days {self.history_days}"
            )


@dataclass(frozen=True)
class WorkloadSettings:
    """One Deployment of a service (one per pipeline stage)."""

    deployment: str
    """The Deployment's name (in the service's namespace), a DNS-1123 subdomain."""

    container: str = "server"
    """The container whose CPU is resized (the model server), a DNS-1123 label."""

    stage: str | None = None
    """The profile stage this Deployment runs; None for a single-stage service."""

    bounds: Bounds = field(default_factory=Bounds)
    """Hard limits: replicas, integer cores per pod, batch. The config must state
    min/max replicas and min/max cores (in the service or in ``defaults.bounds``)."""

    hpa: str | None = None
    """The HorizontalPodAutoscaler that scales this Deployment, if any (None: looked up)."""

    batch_env: str | None = None
    """Container env var holding the batch size, if the model server reads one."""

    def __post_init__(self) -> None:
        check_name(self.deployment, "deployment", DNS_SUBDOMAIN)
        check_name(self.container, "container", DNS_LABEL)
        if self.hpa is not None:
            check_name(self.hpa, "hpa", DNS_SUBDOMAIN)
        if self.batch_env is not None and not _ENV_NAME.match(self.batch_env):
            raise _FieldError("batch_env", f"{_show(self.batch_env)} is not an env var name")
        if self.stage is not None and not re.match(r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,62}$",
                                                   self.stage):
            raise _FieldError("stage", f"{_show(self.stage)} is not a stage name")
        b = self.bounds
        for name, value, top in (("max_replicas", b.max_replicas, MAX_REPLICAS),
                                 ("max_cores", b.max_cores, MAX_CORES),
                                 ("max_batch", b.max_batch, MAX_BATCH)):
            if value > top:
                raise _FieldError(f"bounds.{name}", f"must be at most {top}, got {value}")


_STEP_NULL = (
    "null no longer means unlimited: give a number (an integer >= 1; the default is 4)"
)


@dataclass(frozen=True)
class ServiceSettings:
    """Everything surgecast knows about one service."""

    name: str
    """The service's name, a DNS-1123 label: artifact folders, metrics labels, the Lease and
    records use it."""

    query: str
    """PromQL expression whose value is the service's load in requests per second, e.g.
    ``sum(rate(http_requests_total{service="resnet"}[1m]))``; one series."""

    namespace: str
    """The namespace of every Deployment of the service, a DNS-1123 label."""

    workloads: tuple[WorkloadSettings, ...]
    """One Deployment per stage (the allow-list). A single-stage service may give
    ``deployment``, ``container`` (and ``bounds``, ``hpa``, ``batch_env``) at the top level."""

    profile: str
    """Latency profile or pipeline: a file (relative to the config file) or a bundled name."""

    slo_ms: float
    """End-to-end latency SLO at the profile's percentile (ms), in (0, 600000]."""

    mode: str = "shadow"
    """``shadow`` (compute, dry-run and record; patch nothing) or ``active`` (patch). ``active``
    only in the service's own table, never from ``defaults``."""

    cold_start_s: float = 60.0
    """Time for a new replica to become ready (s), in [0, 3600]."""

    resize_s: float = 2.0
    """Time for an in-place CPU resize to take effect (s), in [0, 600]."""

    stabilisation_s: float = 300.0
    """No scale-in within this long after the last scale-up (s), in [0, 86400]."""

    plan_expiry_s: float = 600.0
    """A plan older than this when the actuator runs is never applied (s), in (0, 86400]."""

    max_replica_step: int = 4
    """Replicas one run may add or remove per Deployment, at least (an integer >= 1; there is
    no "unlimited"). With ``max_step_ratio`` the step is ``max(this, ceil(ratio * current))``."""

    max_core_step: int = 4
    """Cores per pod one run may add or remove, at least (an integer >= 1; same rule)."""

    max_step_ratio: float = 1.0
    """Proportional part of both step limits, in [0, 10] (1.0: at most double or halve per run,
    or the absolute step if larger: the Kubernetes HPA's default "4 pods or 100 %" policy)."""

    resize_timeout_s: float = 30.0
    """How long a run waits for in-place resizes before adding replicas instead (s), [0, 600]."""

    rewrite_template: bool = False
    """Also write the target cores into the pod template while the load is stable."""

    kill_switch: str = "surgecast-control"
    """ConfigMap whose ``data.paused: "true"`` pauses the actuator: a name in the service's
    namespace, or ``namespace/name`` for one switch across namespaces."""

    data: DataSettings = DataSettings()
    """Checks on the RPS history."""

    forecast: ForecastSettings = ForecastSettings()
    """Model, quantiles, horizon, history windows and refit cadence."""

    def __post_init__(self) -> None:
        check_name(self.name, "name", DNS_LABEL)
        if not self.query.strip() or len(self.query) > 10_000 or "\x00" in self.query:
            raise _FieldError("query", "must be a PromQL expression (at most 10000 characters)")
        check_name(self.namespace, "namespace", DNS_LABEL)
        if "/" in self.kill_switch:
            switch_ns, switch = self.kill_switch.split("/", 1)
            check_name(switch_ns, "kill_switch", DNS_LABEL)
            check_name(switch, "kill_switch", DNS_SUBDOMAIN)
        else:
            check_name(self.kill_switch, "kill_switch", DNS_SUBDOMAIN)
        if self.mode not in MODES:
            raise _FieldError("mode", f"{_show(self.mode)} is not one of {', '.join(MODES)}")
        if not (math.isfinite(self.slo_ms) and self.slo_ms > 0):
            raise _FieldError("slo_ms", f"must be > 0, got {self.slo_ms}")
        _in_range(self, "slo_ms", 0, 600_000, low_open=True, unit=" ms")
        _in_range(self, "cold_start_s", 0, 3600, unit=" s")
        _in_range(self, "resize_s", 0, 600, unit=" s")
        _in_range(self, "stabilisation_s", 0, 86_400, unit=" s")
        _in_range(self, "plan_expiry_s", 0, 86_400, low_open=True, unit=" s")
        _in_range(self, "resize_timeout_s", 0, 600, unit=" s")
        _in_range(self, "max_step_ratio", 0, 10)
        for key in ("max_replica_step", "max_core_step"):
            if getattr(self, key) < 1:
                raise _FieldError(key, f"must be an integer >= 1, got {getattr(self, key)}")
        _int_range(self, "max_replica_step", 1, MAX_REPLICAS)
        _int_range(self, "max_core_step", 1, MAX_CORES)
        deployments = [w.deployment for w in self.workloads]
        if len(set(deployments)) != len(deployments):
            raise _FieldError("workloads", f"a Deployment is named twice in {deployments}")

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
    """Time between two scaling runs (s), in [30, 3600]: the schedule of the scaling DAG, and
    how far ahead the actuator applies plan steps."""

    run_timeout_s: float = DEFAULT_RUN_TIMEOUT_S
    """Budget of one service's run (s), in [1, run_interval_s]: reading, forecasting, planning
    and acting for one service end by then (a run that outlives the interval would overlap the
    next). Not given: 120 s, or ``run_interval_s`` if that is shorter."""

    def service(self, name: str) -> ServiceSettings:
        """The service called ``name``.

        Raises:
            SettingsError: no such service; the message lists them.
        """
        for svc in self.services:
            if svc.name == name:
                return svc
        have = ", ".join(s.name for s in self.services)
        raise SettingsError(f"{self.source}: no service {_show(name)}; the config has {have}")

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
        max_step_ratio=svc.max_step_ratio,
        stabilisation_s=svc.stabilisation_s,
        plan_expiry_s=svc.plan_expiry_s,
        run_interval_s=settings.run_interval_s,
        resize_timeout_s=svc.resize_timeout_s,
        rewrite_template=svc.rewrite_template,
        pushgateway_url=settings.pushgateway_url,
        kill_switch=svc.kill_switch,
        cold_start_s=svc.cold_start_s,
    )


# --------------------------------------------------------------------------------------------
# loading


FLEET_KEYS = (
    "prometheus",
    "artifacts",
    "kubernetes",
    "pushgateway_url",
    "run_interval_s",
    "run_timeout_s",
    "defaults",
    "services",
)
_WORKLOAD_KEYS = ("deployment", "container", "stage", "bounds", "hpa", "batch_env")
_NOT_IN_DEFAULTS = ("name", "workloads", "deployment")
"""Keys that identify a service or what it owns: given once per service, never inherited."""


def load_settings(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate a service config file; resolve secrets once.

    Args:
        path: the YAML file (at most :data:`MAX_CONFIG_BYTES`; no anchors or aliases).
        environ: where ``secret_env`` names are looked up (default ``os.environ``); the only
            place surgecast reads the environment.

    Raises:
        SettingsError: one line naming the file, the service and the field.
    """
    file = Path(path)
    where = str(file)
    if file.exists() and not file.is_file():  # a FIFO or device would block the read
        raise SettingsError(f"{where}: not a regular file")
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
        raise SettingsError(f"{source}: expected a mapping at the top level, got {_kind(data)}")
    unknown = sorted(map(_key, set(data) - set(FLEET_KEYS)))
    if unknown:
        raise SettingsError(f"{source}: unknown key(s) {', '.join(unknown)}")

    def fleet(key: str, cls: type):
        value = data.get(key)
        try:
            return _build(cls, {} if value is None else value, key)
        except _FieldError as exc:
            raise SettingsError(f"{source}: {exc}") from None

    prometheus = fleet("prometheus", PrometheusSettings)
    prometheus = _with_secret(prometheus, base, environ, source)
    artifacts = fleet("artifacts", ArtifactSettings)
    kubernetes = fleet("kubernetes", KubernetesSettings)
    try:
        artifacts = _resolve_root(artifacts, base)
        if kubernetes.kubeconfig is not None:
            kubeconfig = str(_path(kubernetes.kubeconfig, base, "kubernetes.kubeconfig"))
            kubernetes = _replace(kubernetes, kubeconfig=kubeconfig)
        pushgateway = _convert(data.get("pushgateway_url"), str | None, "pushgateway_url")
        if pushgateway is not None:
            check_url(pushgateway, "pushgateway_url")
        interval = _convert(data.get("run_interval_s", 300.0), float, "run_interval_s")
        if not 30 <= interval <= 3600:
            raise _FieldError("run_interval_s", f"must be in [30, 3600] s, got {interval:g}")
        timeout = _convert(
            data.get("run_timeout_s", min(DEFAULT_RUN_TIMEOUT_S, interval)), float,
            "run_timeout_s",
        )
        if not 1 <= timeout <= interval:
            raise _FieldError(
                "run_timeout_s",
                f"must be in [1, run_interval_s = {interval:g}] s (a run must end before the "
                f"next one starts), got {timeout:g}",
            )
    except _FieldError as exc:
        raise SettingsError(f"{source}: {exc}") from None

    defaults = data.get("defaults")
    defaults = {} if defaults is None else defaults
    if not isinstance(defaults, dict):
        raise SettingsError(f"{source}: defaults: expected a mapping, got {_kind(defaults)}")
    for key in _NOT_IN_DEFAULTS:
        if key in defaults:
            raise SettingsError(f"{source}: defaults.{key}: give it in each service, not in "
                                "defaults")
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
            raise SettingsError(f"{source}: services[{i}]: expected a mapping, got {_kind(raw)}")
        name = raw.get("name")
        label = (
            f"service {name}"
            if isinstance(name, str) and DNS_LABEL.match(name)
            else f"services[{i}]"
        )
        if isinstance(name, str) and name in seen:
            raise SettingsError(f"{source}: {label}: name: given twice")
        merged = _deep_merge(defaults, raw)
        try:
            svc = _service(merged, base)
        except _FieldError as exc:
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
    settings = Settings(
        source=source,
        services=tuple(services),
        prometheus=prometheus,
        artifacts=artifacts,
        kubernetes=kubernetes,
        pushgateway_url=pushgateway,
        run_interval_s=interval,
        run_timeout_s=timeout,
    )
    for svc in settings.services:
        try:
            _actuator_config(svc, settings)
        except ActuatorInputError as exc:
            raise SettingsError(f"{source}: service {svc.name}: {_one_line(exc)}") from None
    return settings


def _service(data: dict, base: Path) -> ServiceSettings:
    data = dict(data)
    flat = {k: data.pop(k) for k in _WORKLOAD_KEYS if k in data and k != "bounds"}
    bounds = data.pop("bounds", None)
    if bounds is not None and not isinstance(bounds, dict):
        raise _FieldError("bounds", f"expected a mapping, got {_kind(bounds)}")
    if "workloads" in data and flat:
        raise _FieldError(next(iter(flat)), "give either workloads or deployment, not both")
    raw = data.get("workloads") if "workloads" in data else [flat]
    if not isinstance(raw, list) or not raw:
        raise _FieldError("workloads", "expected a non-empty list of Deployments")
    if len(raw) > 64:
        raise _FieldError("workloads", f"at most 64 Deployments per service, got {len(raw)}")
    workloads = []
    for i, entry in enumerate(raw):
        what = "workloads" if "workloads" in data else ""
        prefix = f"{what}[{i}]." if what else ""
        if not isinstance(entry, dict):
            raise _FieldError(f"{what}[{i}]", f"expected a mapping, got {_kind(entry)}")
        entry = dict(entry)
        own = entry.get("bounds")
        if own is not None and not isinstance(own, dict):
            raise _FieldError(f"{prefix}bounds", f"expected a mapping, got {_kind(own)}")
        entry["bounds"] = _deep_merge(bounds or {}, own or {})
        for key in REQUIRED_BOUNDS:
            if key not in entry["bounds"]:
                raise _FieldError(
                    f"{prefix}bounds.{key}",
                    "missing: every Deployment states its bounds (give it in the service or in "
                    "defaults.bounds)",
                )
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

    candidate = _path(svc.profile, base, "profile")
    try:
        exists = candidate.is_file()
    except OSError:
        exists = False
    profile = str(candidate) if exists else svc.profile
    try:
        pipeline = load_profile(profile)
    except PlannerInputError as exc:
        raise _FieldError("profile", _one_line(exc)) from None
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
        value = value.strip()
    else:
        try:
            secret_path = _path(str(auth.secret_file), base, "prometheus.auth.secret_file")
        except _FieldError as exc:
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
    return _replace(prometheus, auth=_replace(auth, secret=value))


def _resolve_root(artifacts: ArtifactSettings, base: Path) -> ArtifactSettings:
    root = artifacts.root
    if "://" in root:
        return artifacts
    return _replace(artifacts, root=str(_path(root, base, "artifacts.root").resolve()))


def _path(text: str, base: Path, name: str) -> Path:
    """``text`` as a path, relative to ``base`` unless absolute (``~`` expanded)."""
    if "\x00" in text:
        raise _FieldError(name, "must not contain NUL characters")
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # ~user that does not exist
        raise _FieldError(name, f"{_show(text)}: cannot expand the home directory") from None
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


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())[:300]


# --------------------------------------------------------------------------------------------
# typed conversion of plain data into the dataclasses above


_NULL_MESSAGES = {"max_replica_step": _STEP_NULL, "max_core_step": _STEP_NULL}


def _build(cls: type, data: Any, where: str):
    """``cls(**data)`` with every value checked against the field's annotation."""
    prefix = f"{where}." if where else ""
    if not isinstance(data, dict):
        raise _FieldError(where or cls.__name__, f"expected a mapping, got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.name not in ("secret", "source")}
    unknown = sorted(map(_key, set(data) - set(known)))
    if unknown:
        raise _FieldError(f"{prefix}{unknown[0]}", "unknown key")
    missing = [n for n, f in known.items() if n not in data and f.default is MISSING
               and f.default_factory is MISSING]
    if missing:
        raise _FieldError(f"{prefix}{missing[0]}", "missing")
    values = {}
    for name, value in data.items():
        if value is None and name in _NULL_MESSAGES:
            raise _FieldError(f"{prefix}{name}", _NULL_MESSAGES[name])
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
    if value is None:
        raise _FieldError(name, "must be given a value, got null")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _FieldError(name, f"expected a list, got {_kind(value)}")
        if len(value) > 100:
            raise _FieldError(name, f"at most 100 entries, got {len(value)}")
        return tuple(_convert(v, args[0], f"{name}[{i}]") for i, v in enumerate(value))
    if is_dataclass(hint):
        if isinstance(value, hint):
            return value
        return _build(hint, value, name)
    if hint is bool:
        if not isinstance(value, bool):
            raise _FieldError(name, f"expected true or false, got {_show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _FieldError(name, f"expected an integer, got {_show(value)}")
        if abs(value) > 2**63:
            raise _FieldError(name, f"{_show(value)} is out of range")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _FieldError(name, f"expected a number, got {_show(value)}")
        try:
            number = float(value)
        except OverflowError:
            raise _FieldError(name, f"{_show(value)} is out of range") from None
        if not math.isfinite(number):
            raise _FieldError(name, f"must be finite, got {value}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise _FieldError(name, f"expected text, got {_show(value)}")
        return value
    raise TypeError(f"{name}: unsupported annotation {hint!r}")  # a programming error


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", type(None): "nothing"}.get(
        type(value), type(value).__name__
    )


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
                    None, None, f"key {_show(key)} given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)
