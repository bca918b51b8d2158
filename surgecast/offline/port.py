"""The cluster port on the in-memory cluster model: what the backtest hands ``actuate``.

:class:`SimPort` implements :class:`actuator.port.ClusterPort` by calling the same handlers the
tests' HTTP server calls (:class:`surgecast.offline.apiserver.ApiHandlers`), on the same paths
the official client requests, with the same patch types. So a write the Kubernetes API would
refuse (a stale resourceVersion, a resize that changes the QoS class, a quota exceeded) is
refused here alike, with the same code, and the actuator's retries and records see the same
thing. There is no authentication or RBAC (the backtest is its own cluster admin) and no
transport: nothing times out, and the clock moves only when the caller moves it.
"""

from __future__ import annotations

from http import HTTPStatus

from actuator.port import PortError
from surgecast.offline.apiserver import DEFAULT_VERSION, ApiError, ApiHandlers
from surgecast.offline.cluster import ClusterModel

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"


class SimPort:
    """:class:`actuator.port.ClusterPort` on a :class:`ClusterModel`, in process.

    Args:
        cluster: the model; its clock is the simulation's.
        version: (major, minor) of the modelled server (``pods/resize`` from 1.33).

    Attributes:
        writes: successful writes in order, as (method, path, dry run), for tests and reports.
    """

    def __init__(
        self, cluster: ClusterModel, *, version: tuple[int, int] = DEFAULT_VERSION
    ) -> None:
        self.cluster = cluster
        self.handlers = ApiHandlers(cluster, version=version)
        self.writes: list[tuple[str, str, bool]] = []

    def _call(
        self,
        method: str,
        path: str,
        *,
        body=None,
        content_type: str = "",
        dry_run: bool = False,
        query: dict | None = None,
    ) -> dict:
        query = dict(query or {})
        if dry_run:
            query["dryRun"] = "All"
        try:
            _, answer = self.handlers.call(method, path, query, body, content_type)
        except ApiError as exc:
            # The client's ApiException carries the HTTP reason phrase ("Not Found"), not the
            # Status reason ("NotFound"): so does the port's.
            raise PortError(exc.code, _phrase(exc.code), exc.message) from None
        if method != "GET":
            self.writes.append((method, path, dry_run))
        return answer

    # reads -----------------------------------------------------------------------------------

    def deployment(self, namespace: str, name: str) -> dict:
        return self._call("GET", f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")

    def scale(self, namespace: str, name: str) -> dict:
        return self._call("GET", f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale")

    def pods(self, namespace: str, match_labels: dict[str, str]) -> list[dict]:
        selector = ",".join(f"{k}={v}" for k, v in sorted(match_labels.items()))
        body = self._call(
            "GET", f"/api/v1/namespaces/{namespace}/pods", query={"labelSelector": selector}
        )
        return list(body.get("items") or [])

    def pod(self, namespace: str, name: str) -> dict:
        return self._call("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")

    def hpa(self, namespace: str, name: str) -> dict:
        return self._call("GET", _hpa_path(namespace, name))

    def hpas(self, namespace: str) -> list[dict]:
        return list(self._call("GET", _hpa_path(namespace)).get("items") or [])

    def configmap(self, namespace: str, name: str) -> dict:
        return self._call("GET", f"/api/v1/namespaces/{namespace}/configmaps/{name}")

    def lease(self, namespace: str, name: str) -> dict:
        return self._call("GET", _lease_path(namespace, name))

    # writes ----------------------------------------------------------------------------------

    def patch_scale(self, namespace: str, name: str, body: dict, *, dry_run: bool) -> dict:
        path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"
        return self._call("PATCH", path, body=body, content_type=MERGE, dry_run=dry_run)

    def patch_hpa(self, namespace: str, name: str, body: dict, *, dry_run: bool) -> dict:
        return self._call(
            "PATCH", _hpa_path(namespace, name), body=body, content_type=MERGE, dry_run=dry_run
        )

    def patch_resize(self, namespace: str, pod: str, body: dict, *, dry_run: bool) -> dict:
        path = f"/api/v1/namespaces/{namespace}/pods/{pod}/resize"
        return self._call("PATCH", path, body=body, content_type=STRATEGIC, dry_run=dry_run)

    def patch_deployment(self, namespace: str, name: str, body: dict, *, dry_run: bool) -> dict:
        path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}"
        return self._call("PATCH", path, body=body, content_type=STRATEGIC, dry_run=dry_run)

    def create_lease(self, namespace: str, body: dict) -> dict:
        return self._call("POST", _lease_path(namespace), body=body)

    def patch_lease(self, namespace: str, name: str, body: dict) -> dict:
        return self._call("PATCH", _lease_path(namespace, name), body=body, content_type=MERGE)

    def create_event(self, namespace: str, body: dict) -> dict:
        return self._call("POST", f"/api/v1/namespaces/{namespace}/events", body=body)


def _hpa_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers"
    return base if name is None else f"{base}/{name}"


def _lease_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    return base if name is None else f"{base}/{name}"


def _phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return ""
