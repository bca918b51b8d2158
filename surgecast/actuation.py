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


def read_plan(path: str | Path) -> Plan:
    """A Plan from the JSON ``surgecast plan --out`` writes.

    Raises:
        ActuatorInputError: missing file, invalid JSON, or a plan that breaks the contract.
    """
    path = Path(path)
    if not path.is_file():
        raise ActuatorInputError(f"{path}: plan file not found")
    try:
        return Plan.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, PlannerInputError) as exc:
        raise ActuatorInputError(f"{path}: not a plan: {exc}") from None


def load_service_configs(path: str | Path) -> list[ServiceConfig]:
    """Service configs from a JSON or TOML file (module docstring).

    Raises:
        ActuatorInputError: missing or unreadable file, or a config that breaks a rule (the
            message names the file and the field).
    """
    path = Path(path)
    if not path.is_file():
        raise ActuatorInputError(f"{path}: service config file not found")
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ActuatorInputError(f"{path}: cannot read: {exc}") from None
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
    """Apply a plan file once (shadow unless ``active`` or the config says ``active``).

    Args:
        plan_file: Plan JSON.
        service_config: JSON/TOML service config; without it a shadow config is built from
            ``namespace``, ``deployment`` (default: the plan's service) and ``container``.
        kubeconfig, context: the cluster (default: the usual kubeconfig, else in-cluster).
        active: act for real, whatever the config's mode.
        now: the run's time (ISO 8601 with zone); default: the current time.
        artifacts: root of the artifact store for the decision records.
        request_timeout_s: client timeout of one API request (s).

    Raises:
        ActuatorInputError: bad files or arguments, or no usable cluster configuration.
    """
    plan = read_plan(plan_file)
    if service_config is not None:
        services = load_service_configs(service_config)
    else:
        services = [
            default_service_config(
                plan, namespace=namespace, deployment=deployment, container=container
            )
        ]
    if active:
        services = [replace(s, mode="active") for s in services]
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
    return ApplyResult(record, record_path(Path(artifacts), record.service, when))


def _api_client(kubeconfig: str | None, context: str | None):
    if kubeconfig is not None and not Path(kubeconfig).is_file():
        raise ActuatorInputError(f"--kubeconfig: {kubeconfig}: file not found")
    return api_client_for(kubeconfig=kubeconfig, context=context)
