"""The cluster port: the Kubernetes API calls the actuator makes, as a protocol.

Two implementations: :class:`actuator.kube.KubeApi` over the official client (production) and
``surgecast.offline.port.SimPort`` over the in-memory cluster model (the backtest). Everything in
``actuator/`` types against :class:`ClusterPort`, so the backtest runs the code that ships.

Objects travel as plain JSON dicts with the API's own field names; every write is a patch (or a
create) and returns the object the server answered. An error answer is raised as an exception
whose ``status`` is the HTTP code: :class:`kubernetes.client.exceptions.ApiException` from the
client, :class:`PortError` from an in-process implementation. ``PortError`` *is* an
``ApiException``, so every handler written for the API's errors (the retry classification of
:func:`actuator.kube.is_retriable` / :func:`~actuator.kube.is_conflict`,
:func:`~actuator.kube.describe_error`, the Lease's 404/409 handling, the kill switch's 404)
treats both alike, with no second code path to drift.
"""

from __future__ import annotations

import json
from typing import Protocol, runtime_checkable

from kubernetes.client.exceptions import ApiException


class PortError(ApiException):
    """An error answer of an in-process port, shaped as the client raises it.

    Args:
        status: the HTTP code (404 NotFound, 409 Conflict, 422 Invalid, 403 Forbidden, ...).
        reason: the HTTP reason phrase (``Not Found``, ``Conflict``), as the client's
            exception carries it.
        message: the Status message, one line.
    """

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(status=status, reason=reason)
        self.message = message
        self.body = json.dumps(
            {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": status,
             "message": message}
        )

    def __str__(self) -> str:
        return f"({self.status}) {self.reason}: {self.message}"

    def __reduce__(self):
        return (type(self), (self.status, self.reason, self.message))


@runtime_checkable
class ClusterPort(Protocol):
    """The reads and writes of one actuator run (and of the Lease and kill switch it checks).

    ``dry_run`` writes go through validation and admission and persist nothing (``dryRun=All``).
    """

    def deployment(self, namespace: str, name: str) -> dict: ...

    def scale(self, namespace: str, name: str) -> dict: ...

    def pods(self, namespace: str, match_labels: dict[str, str]) -> list[dict]: ...

    def pod(self, namespace: str, name: str) -> dict: ...

    def hpa(self, namespace: str, name: str) -> dict: ...

    def hpas(self, namespace: str) -> list[dict]: ...

    def patch_scale(self, namespace: str, name: str, body: dict, *, dry_run: bool) -> dict: ...

    def patch_hpa(self, namespace: str, name: str, body: dict, *, dry_run: bool) -> dict: ...

    def patch_resize(self, namespace: str, pod: str, body: dict, *, dry_run: bool) -> dict: ...

    def patch_deployment(
        self, namespace: str, name: str, body: dict, *, dry_run: bool
    ) -> dict: ...

    def configmap(self, namespace: str, name: str) -> dict: ...

    def lease(self, namespace: str, name: str) -> dict: ...

    def create_lease(self, namespace: str, body: dict) -> dict: ...

    def patch_lease(self, namespace: str, name: str, body: dict) -> dict: ...

    def create_event(self, namespace: str, body: dict) -> dict: ...
