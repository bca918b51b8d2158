"""Wiring for the actuator stage: the plan file, the service spec, the API client, one run.

The services come from the same YAML file as ``surgecast run`` (:func:`surgecast.settings.
load_settings`): every service there is an :class:`actuator.spec.ServiceSpec`. Without a config,
a shadow-only spec is built from command-line flags for a single-stage plan.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from actuator.apply import RunOptions, actuate
from actuator.errors import ActuatorInputError
from actuator.guards import Bounds
from actuator.kube import KubeApi, api_client_for
from actuator.records import DecisionRecord, record_path
from actuator.spec import ServiceSpec, WorkloadSpec
from planner.plan import Plan, utc_timestamp
from surgecast.settings import load_settings

MAX_FILE_BYTES = 16 * 1024 * 1024
"""Largest plan file read (16 MiB): far above any real one, and it keeps a
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
    except ActuatorInputError as exc:  # the one input-error type: only the file is added
        raise ActuatorInputError(f"{path}: not a plan: {exc}") from None


def load_service_specs(path: str | Path) -> list[ServiceSpec]:
    """Every service of a YAML service config (the file ``surgecast run`` reads).

    Raises:
        ActuatorInputError: missing or unreadable file, a .toml/.json file (the old format), or
            a config that breaks a rule (one line naming the file, service and field).
    """
    settings = load_settings(path)
    return [settings.actuator_config(name) for name in settings.names]


def default_service_spec(
    plan: Plan, *, namespace: str, deployment: str | None, container: str
) -> ServiceSpec:
    """A shadow-mode spec for a single-stage plan from command-line flags.

    Its bounds are wide (the guard defaults): a shadow run patches nothing, and the record shows
    what the plan would have asked for.
    """
    if plan.steps and len(plan.steps[0].replicas) > 1:
        raise ActuatorInputError(
            f"plan {plan.service} has {len(plan.steps[0].replicas)} stages: give a "
            "--config that names a Deployment per stage"
        )
    workload = WorkloadSpec(
        deployment=deployment or plan.service, container=container, bounds=Bounds()
    )
    return ServiceSpec(name=plan.service, namespace=namespace, workloads=(workload,))


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
        service_config: the YAML service config (as for ``surgecast run``); without it a
            shadow spec is built from
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
            "--active: needs --config (the allow-list, bounds and step limits); "
            "without it apply is shadow-only"
        )
    plan = read_plan(plan_file)
    switched = None
    if service_config is not None:
        services = load_service_specs(service_config)
        if active:
            # Only the plan's service is switched: --active must not turn on every service a
            # shared config file lists.
            mine = next((s for s in services if s.name == plan.service), None)
            if mine is not None and not mine.active:
                switched = mine.mode
            services = [
                s.model_copy(update={"mode": "active"}) if s.name == plan.service else s
                for s in services
            ]
    else:
        services = [
            default_service_spec(
                plan, namespace=namespace, deployment=deployment, container=container
            )
        ]
    when = utc_timestamp(now, "--now") if now is not None else pd.Timestamp.now(tz="UTC")
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
