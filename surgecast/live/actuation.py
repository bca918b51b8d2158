"""Wiring for the actuator stage: plan and service-config files, the API client, one run.

The service config file is JSON (``.json``) or TOML (``.toml``): either one service table (the
keys of :class:`actuator.config.ServiceConfig`) or ``services = [ ... ]`` with several. Example
(TOML)::

    service = "resnet18"
    namespace = "inference"
    deployment = "resnet18"
    container = "server"
    mode = "shadow"
    max_replica_step = 4
    bounds = { min_replicas = 2, max_replicas = 20, min_cores = 1, max_cores = 8 }
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from actuator.apply import RunOptions, actuate
from actuator.config import ServiceConfig, WorkloadConfig
from actuator.errors import ActuatorInputError
from actuator.kube import KubeApi, api_client_for
from actuator.records import DecisionRecord, record_path
from planner.errors import PlannerInputError
from planner.plan import Plan, utc_timestamp

MAX_FILE_BYTES = 16 * 1024 * 1024
"""Largest plan or service config file read (16 MiB): far above any real one, and it keeps a
hostile file from exhausting memory."""


def _read_text(path: Path, what: str) -> str:
    """The text of a regular file of at most ``MAX_FILE_BYTES``.

    Raises:
        ActuatorInputError: missing, a directory or other non-regular file (a FIFO would block
            the read), too large, unreadable or not UTF-8.
    """
    try:
        if not path.exists():
            raise ActuatorInputError(f"{path}: {what} not found")
        if path.is_dir():
            raise ActuatorInputError(f"{path}: is a directory, not a {what}")
        if not path.is_file():
            raise ActuatorInputError(f"{path}: not a regular file")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ActuatorInputError(
                f"{path}: {size:,} bytes is larger than the {MAX_FILE_BYTES:,} a {what} may have"
            )
        return path.read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        if isinstance(exc, ActuatorInputError):
            raise
        if isinstance(exc, UnicodeDecodeError):
            raise ActuatorInputError(
                f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
            ) from None
        raise ActuatorInputError(f"{path}: cannot read: {exc}") from None


def read_plan(path: str | Path) -> Plan:
    """A Plan from the JSON ``surgecast plan --out`` writes.

    Raises:
        ActuatorInputError: missing, unreadable or oversized file, invalid JSON, or a plan that
            breaks the contract (:meth:`planner.plan.Plan.from_dict`).
    """
    path = Path(path)
    text = _read_text(path, "plan file")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        problem = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ActuatorInputError(f"{path}: not a plan: invalid JSON: {problem}") from None
    try:
        return Plan.from_dict(data)
    except PlannerInputError as exc:
        raise ActuatorInputError(f"{path}: not a plan: {exc}") from None


def load_service_configs(path: str | Path) -> list[ServiceConfig]:
    """Service configs from a JSON or TOML file (module docstring).

    Raises:
        ActuatorInputError: missing or unreadable file, or a config that breaks a rule (the
            message names the file and the field).
    """
    path = Path(path)
    text = _read_text(path, "service config file")
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, RecursionError) as exc:
        problem = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ActuatorInputError(f"{path}: cannot read: {problem}") from None
    tables = data.get("services") if isinstance(data, dict) and "services" in data else [data]
    if not isinstance(tables, list) or not tables:
        raise ActuatorInputError(f"{path}: services: expected a non-empty list of tables")
    try:
        return [ServiceConfig.from_dict(t) for t in tables]
    except ActuatorInputError as exc:
        raise ActuatorInputError(f"{path}: {exc}") from None


def default_service_config(
    plan: Plan, *, namespace: str, deployment: str | None, container: str
) -> ServiceConfig:
    """A shadow-mode config for a single-stage plan from command-line flags."""
    if plan.steps and len(plan.steps[0].replicas) > 1:
        raise ActuatorInputError(
            f"plan {plan.service} has {len(plan.steps[0].replicas)} stages: give a "
            "--service-config that names a Deployment per stage"
        )
    workload = WorkloadConfig(deployment or plan.service, container)
    return ServiceConfig(plan.service, namespace, (workload,))


@dataclass(frozen=True)
class ApplyResult:
    """One run of ``surgecast apply``: the record and where it was written."""

    record: DecisionRecord
    record_file: Path
    switched_active: str | None = None
    """The mode the config gave the plan's service when ``--active`` switched it (None: not
    switched)."""


def apply_plan_file(
    plan_file: str | Path,
    *,
    service_config: str | Path | None = None,
    namespace: str = "default",
    deployment: str | None = None,
    container: str = "server",
    kubeconfig: str | None = None,
    context: str | None = None,
    active: bool = False,
    now: str | None = None,
    artifacts: str | Path = "artifacts",
    request_timeout_s: float = 10.0,
) -> ApplyResult:
    """Apply a plan file once: shadow, unless the service config or ``active`` says active.

    Active changes need a service config: it is the allow-list, the bounds and the step limits
    (DESIGN section 6). Without one the run is shadow-only: a config is built from the flags,
    the changes are validated by server-side dry runs and recorded, nothing is patched.

    Args:
        plan_file: Plan JSON.
        service_config: JSON/TOML service config; without it a shadow config is built from
            ``namespace``, ``deployment`` (default: the plan's service) and ``container``.
        kubeconfig, context: the cluster (default: the usual kubeconfig, else in-cluster).
        active: act for real for the service the plan names (only that one; the other services
            of the config keep their mode). Needs ``service_config``.
        now: the run's time (ISO 8601 with zone); default: the current time.
        artifacts: root of the artifact store for the decision records.
        request_timeout_s: client timeout of one API request (s).

    Raises:
        ActuatorInputError: bad files or arguments, ``active`` without a service config, or no
            usable cluster configuration.
    """
    if active and service_config is None:
        raise ActuatorInputError(
            "--active: needs --service-config (the allow-list, bounds and step limits); "
            "without it apply is shadow-only"
        )
    plan = read_plan(plan_file)
    switched = None
    if service_config is not None:
        services = load_service_configs(service_config)
        if active:
            # Only the plan's service is switched: --active must not turn on every service a
            # shared config file lists.
            mine = next((s for s in services if s.service == plan.service), None)
            if mine is not None and not mine.active:
                switched = mine.mode
            services = [
                replace(s, mode="active") if s.service == plan.service else s for s in services
            ]
    else:
        services = [
            default_service_config(
                plan, namespace=namespace, deployment=deployment, container=container
            )
        ]
    try:
        when = utc_timestamp(now, "--now") if now is not None else pd.Timestamp.now(tz="UTC")
    except PlannerInputError as exc:
        raise ActuatorInputError(str(exc)) from None
    api = KubeApi(_api_client(kubeconfig, context), request_timeout_s=request_timeout_s)
    record = actuate(
        plan,
        services,
        api,
        now=when,
        artifacts=Path(artifacts),
        options=RunOptions(),
    )
    return ApplyResult(record, record_path(Path(artifacts), record.service, when), switched)


def _api_client(kubeconfig: str | None, context: str | None):
    """The API client, with an error that says what is missing and how to give it."""
    if kubeconfig is not None:
        path = Path(kubeconfig)
        if not path.is_file():
            state = "is a directory" if path.is_dir() else "file not found"
            raise ActuatorInputError(f"--kubeconfig: {kubeconfig}: {state}")
    try:
        return api_client_for(kubeconfig=kubeconfig, context=context)
    except ActuatorInputError as exc:
        if kubeconfig is None and context is None:
            raise ActuatorInputError(
                "no cluster to talk to: no kubeconfig file ($KUBECONFIG or ~/.kube/config) "
                "and not running in a pod (KUBERNETES_SERVICE_HOST/PORT unset); set "
                f"KUBECONFIG, pass --kubeconfig FILE [--context NAME], or run in-cluster ({exc})"
            ) from None
        flag = "--context" if kubeconfig is None else "--kubeconfig"
        raise ActuatorInputError(f"{flag}: {str(exc).removeprefix('kubeconfig: ')}") from None
    except Exception as exc:
        # The client parses the kubeconfig YAML itself; a malformed file surfaces as a YAML,
        # type or attribute error rather than its ConfigException. It is still a bad input.
        where = kubeconfig if kubeconfig is not None else "the default kubeconfig"
        raise ActuatorInputError(
            f"--kubeconfig: {where}: not a usable kubeconfig ({type(exc).__name__}: {exc})"
        ) from None
