"""The subset of the Kubernetes API the actuator uses, over the official ``kubernetes`` client.

Objects travel as plain JSON dicts (the API's own field names), read with
``_preload_content=False`` so that fields newer than the client's models survive. Every write
is declarative and conditional: :func:`converge` reads the object fresh, builds the patch that
sets the wanted values (``replicas: 7``, never "+2") with the ``resourceVersion`` it read, and
writes it. A 409 Conflict starts over from a fresh read; 5xx, 429 and timeouts are retried after a
backoff; both a bounded number of times. Whatever happens is returned as a :class:`WriteResult`,
never raised, so the caller can record it.

Kubernetes quantity strings exist only here and in the modules that build patches.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from kubernetes.utils import parse_quantity

from actuator.errors import ActuatorInputError

RETRIABLE_STATUS = frozenset({429, 500, 502, 503, 504})


# --------------------------------------------------------------------------------------------
# quantities


def cpu_millicores(quantity: Any) -> int:
    """A CPU quantity (``"2"``, ``"500m"``, ``"1.5"``, ``2``) in millicores (rounded up).

    Parsed by the client's own ``kubernetes.utils.parse_quantity`` (every suffix the API server
    accepts); a negative, infinite or binary-suffixed (``Ki``, ``Mi``: memory, not CPU) value is
    refused.

    Raises:
        ValueError: not a CPU quantity.
    """
    text = str(quantity).strip()
    if text.endswith("i"):
        raise ValueError(f"not a CPU quantity: {quantity!r}")
    try:
        value = parse_quantity(text)
    except (ValueError, TypeError, ArithmeticError):
        raise ValueError(f"not a CPU quantity: {quantity!r}") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"not a CPU quantity: {quantity!r}")
    return math.ceil(value * 1000)


def cpu_quantity(cores: int) -> str:
    """Whole cores as the canonical quantity string: 4 -> ``"4"``."""
    return str(int(cores))


# --------------------------------------------------------------------------------------------
# retries


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one write (or read) tries.

    Attributes:
        attempts: tries per call, the first included; conflicts and retriable errors both count.
        backoff_s: wait before the first retry of an error; doubles every time (s). Conflicts
            are retried at once, on a fresh read.
        request_timeout_s: client-side timeout of one HTTP request (s).
    """

    attempts: int = 4
    backoff_s: float = 0.5
    request_timeout_s: float = 10.0


@dataclass
class WriteResult:
    """What one declarative write did.

    Attributes:
        outcome: ``applied`` (the server accepted the patch), ``unchanged`` (already in the
            wanted state: nothing sent), ``dry-run`` (server-side dry run passed; nothing
            persisted) or ``failed``.
        attempts: HTTP writes sent.
        errors: every error met on the way, retried or not, one line each.
        body: the object the server returned (or the fresh read for ``unchanged``).
    """

    outcome: str
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    body: dict | None = None

    @property
    def ok(self) -> bool:
        return self.outcome != "failed"


def describe_error(exc: BaseException) -> str:
    """One line: ``409 Conflict: <message>`` or ``timeout: <detail>``."""
    if isinstance(exc, ApiException):
        message = ""
        try:
            message = json.loads(exc.body or "{}").get("message", "")
        except (TypeError, ValueError, AttributeError):
            message = str(exc.body or "")[:200]
        text = f"{exc.status} {exc.reason or ''}".strip()
        return f"{text}: {message}".rstrip(": ").replace("\n", " ")
    name = "timeout" if "timeout" in type(exc).__name__.lower() else type(exc).__name__
    return f"{name}: {exc}".replace("\n", " ")[:300]


def is_retriable(exc: BaseException) -> bool:
    """5xx, 429 and transport errors (timeouts, resets) may succeed on a retry."""
    if isinstance(exc, ApiException):
        return exc.status in RETRIABLE_STATUS or exc.status == 0
    return isinstance(exc, urllib3.exceptions.HTTPError | OSError)


def is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, ApiException) and exc.status == 409


def converge(
    read: Callable[[], dict],
    build: Callable[[dict], dict | None],
    write: Callable[[dict], dict],
    *,
    retry: RetryPolicy,
    sleep: Callable[[float], None],
    dry_run: bool = False,
) -> WriteResult:
    """Bring one object to a wanted state with a declarative patch.

    Args:
        read: fresh GET of the object.
        build: the patch that sets the wanted values on this version of the object (with its
            ``resourceVersion``), or None if it already has them.
        write: sends a patch, returns the object.
        retry: bounds and backoff.
        sleep: waits between retries (s); injected so tests and backtests control time.
        dry_run: the write is a server-side dry run; the outcome is ``dry-run``.
    """
    result = WriteResult("failed")
    backoff = retry.backoff_s
    for attempt in range(retry.attempts):
        try:
            current = read()
            patch = build(current)
            if patch is None:
                # After a write whose answer was lost (a timeout), the fresh read shows it landed.
                landed = "dry-run" if dry_run else "applied"
                result.outcome = landed if result.attempts else "unchanged"
                result.body = current
                return result
            result.attempts += 1
            result.body = write(patch)
            result.outcome = "dry-run" if dry_run else "applied"
            return result
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            result.errors.append(describe_error(exc))
            if not (is_conflict(exc) or is_retriable(exc)):
                return result
            if not is_conflict(exc) and attempt < retry.attempts - 1:
                sleep(backoff)
                backoff *= 2
    return result


def read_with_retries(
    read: Callable[[], Any], *, retry: RetryPolicy, sleep: Callable[[float], None]
) -> tuple[Any, list[str]]:
    """``read()`` with bounded retries of retriable errors.

    Returns:
        (value or None, errors met). None means every attempt failed or the error was final.
    """
    errors: list[str] = []
    backoff = retry.backoff_s
    for attempt in range(retry.attempts):
        try:
            return read(), errors
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            errors.append(describe_error(exc))
            if not is_retriable(exc) or attempt == retry.attempts - 1:
                break
            sleep(backoff)
            backoff *= 2
    return None, errors


# --------------------------------------------------------------------------------------------
# the API


class KubeApi:
    """Reads and patches of Deployments, their scale, pods, HPAs, and Event creation: the
    production :class:`actuator.port.ClusterPort` (the backtest's is ``SimPort``, on the model).

    Args:
        api_client: a configured ``kubernetes.client.ApiClient``.
        request_timeout_s: client-side timeout of every request (s).
    """

    def __init__(self, api_client: k8s.ApiClient, *, request_timeout_s: float = 10.0) -> None:
        self.api_client = api_client
        self.apps = k8s.AppsV1Api(api_client)
        self.core = k8s.CoreV1Api(api_client)
        self.autoscaling = k8s.AutoscalingV2Api(api_client)
        self.coordination = k8s.CoordinationV1Api(api_client)
        self.timeout = request_timeout_s

    def _json(self, response) -> dict:
        return json.loads(response.data or b"{}")

    def _opts(self) -> dict:
        return {"_preload_content": False, "_request_timeout": self.timeout}

    def deployment(self, namespace: str, name: str) -> dict:
        return self._json(self.apps.read_namespaced_deployment(name, namespace, **self._opts()))

    def scale(self, namespace: str, name: str) -> dict:
        return self._json(
            self.apps.read_namespaced_deployment_scale(name, namespace, **self._opts())
        )

    def pods(self, namespace: str, match_labels: dict[str, str]) -> list[dict]:
        selector = ",".join(f"{k}={v}" for k, v in sorted(match_labels.items()))
        body = self._json(
            self.core.list_namespaced_pod(namespace, label_selector=selector, **self._opts())
        )
        return list(body.get("items") or [])

    def pod(self, namespace: str, name: str) -> dict:
        return self._json(self.core.read_namespaced_pod(name, namespace, **self._opts()))

    def hpa(self, namespace: str, name: str) -> dict:
        return self._json(
            self.autoscaling.read_namespaced_horizontal_pod_autoscaler(
                name, namespace, **self._opts()
            )
        )

    def hpas(self, namespace: str) -> list[dict]:
        body = self._json(
            self.autoscaling.list_namespaced_horizontal_pod_autoscaler(namespace, **self._opts())
        )
        return list(body.get("items") or [])

    def patch_scale(self, namespace: str, name: str, body: dict, *, dry_run: bool) -> dict:
        return self._json(
            self.apps.patch_namespaced_deployment_scale(
                name,
                namespace,
                body,
                dry_run="All" if dry_run else None,
                _content_type="application/merge-patch+json",
                **self._opts(),
            )
        )

    def patch_hpa(self, namespace: str, name: str, body: dict, *, dry_run: bool) -> dict:
        return self._json(
            self.autoscaling.patch_namespaced_horizontal_pod_autoscaler(
                name,
                namespace,
                body,
                dry_run="All" if dry_run else None,
                _content_type="application/merge-patch+json",
                **self._opts(),
            )
        )

    def patch_resize(self, namespace: str, pod: str, body: dict, *, dry_run: bool) -> dict:
        """PATCH ``/api/v1/namespaces/{namespace}/pods/{pod}/resize`` (strategic merge)."""
        return self._json(
            self.core.patch_namespaced_pod_resize(
                pod,
                namespace,
                body,
                dry_run="All" if dry_run else None,
                _content_type="application/strategic-merge-patch+json",
                **self._opts(),
            )
        )

    def patch_deployment(self, namespace: str, name: str, body: dict, *, dry_run: bool) -> dict:
        return self._json(
            self.apps.patch_namespaced_deployment(
                name,
                namespace,
                body,
                dry_run="All" if dry_run else None,
                _content_type="application/strategic-merge-patch+json",
                **self._opts(),
            )
        )

    def configmap(self, namespace: str, name: str) -> dict:
        return self._json(self.core.read_namespaced_config_map(name, namespace, **self._opts()))

    def lease(self, namespace: str, name: str) -> dict:
        return self._json(
            self.coordination.read_namespaced_lease(name, namespace, **self._opts())
        )

    def create_lease(self, namespace: str, body: dict) -> dict:
        return self._json(
            self.coordination.create_namespaced_lease(namespace, body, **self._opts())
        )

    def patch_lease(self, namespace: str, name: str, body: dict) -> dict:
        """Merge-patch a Lease; a ``metadata.resourceVersion`` in the patch makes it conditional
        (409 Conflict when the Lease changed since it was read).

        A patch, not a PUT: the client turns a PUT or POST body into its ``V1Lease`` model,
        whose ``datetime`` fields serialise without the six fraction digits ``MicroTime``
        requires whenever the microseconds are 0 (the API server then answers 400); a patch
        body is sent as it is."""
        return self._json(
            self.coordination.patch_namespaced_lease(
                name,
                namespace,
                body,
                _content_type="application/merge-patch+json",
                **self._opts(),
            )
        )

    def create_event(self, namespace: str, body: dict) -> dict:
        return self._json(self.core.create_namespaced_event(namespace, body, **self._opts()))


def api_client_for(
    *,
    kubeconfig: str | None = None,
    context: str | None = None,
    host: str | None = None,
) -> k8s.ApiClient:
    """An ``ApiClient`` from a kubeconfig file (or the in-cluster service account), or a plain
    ``host`` URL (tests). urllib3's own retries (the client's ``Configuration.retries``) are
    off: :func:`converge` owns every retry, because (1) a 409 must be retried on a fresh read
    with a new patch, which a transport-level retry cannot do; (2) a timed-out PATCH may have
    landed, so it is re-read, not re-sent; (3) its waits go through the injected ``sleep``, so
    the backtest and the tests run them on their clock, while urllib3 sleeps on the wall
    clock; (4) every retry, whatever its cause, is counted in the decision record.

    Raises:
        ActuatorInputError: no usable configuration (one line).
    """
    from kubernetes import config as k8s_config

    if host is not None:
        configuration = k8s.Configuration(host=host)
    else:
        configuration = k8s.Configuration()
        try:
            try:
                k8s_config.load_kube_config(
                    config_file=kubeconfig, context=context, client_configuration=configuration
                )
            except k8s_config.ConfigException:
                if kubeconfig is not None or context is not None:
                    raise
                k8s_config.load_incluster_config(client_configuration=configuration)
        except (
            k8s_config.ConfigException,
            ValueError,
            OSError,
            TypeError,
            KeyError,
            AttributeError,
        ) as exc:  # a malformed kubeconfig fails deep in the loader with any of these
            raise ActuatorInputError(f"kubeconfig: {exc}") from None
    configuration.retries = False
    return k8s.ApiClient(configuration)
