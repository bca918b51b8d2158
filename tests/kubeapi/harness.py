"""One interface over the fake API server and a real cluster, so the same actuator tests run on
both: set up a Deployment, hand the actuator an API, move time, read the state back.

The real-cluster variant needs ``KUBECONFIG`` and a namespace (``SURGECAST_TEST_NAMESPACE``,
default ``surgecast-test``) where it may create and delete Deployments; time there is the wall
clock and faults cannot be injected, so only the fault-free tests take it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
from kubernetes import client as k8s

from actuator.kube import KubeApi, api_client_for
from kubeapi.cluster import Clock, FakeCluster, Node
from kubeapi.server import FakeApiServer

REPO = Path(__file__).resolve().parents[2]
RBAC = REPO / "deploy" / "rbac.yaml"
RBAC_TEMPLATE = REPO / "deploy" / "rbac-template-rewrite.yaml"
NAMESPACE = "inference"
ACTUATOR_SA = "surgecast-actuator"


def client_for(url: str, token: str | None) -> k8s.ApiClient:
    """An ``ApiClient`` for ``url`` that sends ``Authorization: Bearer <token>`` (none without
    a token), with urllib3's retries off as :func:`actuator.kube.api_client_for` has them."""
    configuration = k8s.Configuration(
        host=url, api_key={"authorization": f"Bearer {token}"} if token else None
    )
    configuration.retries = False
    return k8s.ApiClient(configuration)


class FakeHarness:
    """The fake API server on loopback with a test clock (see :mod:`kubeapi`).

    The actuator's :class:`KubeApi` (``self.api``) authenticates as the service account
    ``surgecast-actuator`` in ``inference`` and is held to the RBAC of ``rbac_files``.

    Args:
        start_delay_s, resize_delay_s, nodes: passed to :class:`FakeCluster`.
        rbac_files: manifests the server enforces (default ``deploy/rbac.yaml``).
        request_timeout_s: the actuator client's timeout per request (s).
        version: (major, minor) of the fake server (default: 1.33).
        **cluster_options: further :class:`FakeCluster` fields.
    """

    kind = "fake"

    def __init__(
        self,
        *,
        start_delay_s: float = 30.0,
        resize_delay_s: float = 2.0,
        nodes: list[Node] | None = None,
        rbac_files: list[Path] | None = None,
        request_timeout_s: float = 2.0,
        version: tuple[int, int] | None = None,
        start_s: float | None = None,
        **cluster_options,
    ) -> None:
        self.namespace = NAMESPACE
        # start_s: the test clock's start (epoch s); the real time for entry points that check
        # their "now" against the wall clock (the CLI), else a fixed day.
        self.clock = Clock() if start_s is None else Clock(float(start_s))
        self.cluster = FakeCluster(
            self.clock,
            start_delay_s=start_delay_s,
            resize_delay_s=resize_delay_s,
            nodes=nodes or [Node("node-1", 64_000)],
            **cluster_options,
        )
        server_options = {} if version is None else {"version": version}
        self.server = FakeApiServer(self.cluster, rbac_files or [RBAC], **server_options).start()
        self._clients: list[k8s.ApiClient] = []
        self.actuator_token = self.server.service_account_token(NAMESPACE, ACTUATOR_SA)
        self.api = KubeApi(self.client(self.actuator_token), request_timeout_s=request_timeout_s)
        self.admin = self.client(self.server.issue_token("admin", ["system:masters"]))

    def client(self, token: str | None) -> k8s.ApiClient:
        """An ``ApiClient`` with ``token`` (None: no credentials), closed with the harness."""
        api_client = client_for(self.server.url, token)
        self._clients.append(api_client)
        return api_client

    def service_account_client(self, name: str, namespace: str = NAMESPACE) -> k8s.ApiClient:
        """A client authenticated as the service account ``namespace/name``."""
        return self.client(self.server.service_account_token(namespace, name))

    def write_kubeconfig(self, path: Path, token: str | None = None) -> Path:
        """A kubeconfig for the fake server authenticating with ``token`` (default: the
        actuator's), for entry points that take a kubeconfig file (CLI, service config)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.server.url}}],
            "users": [{"name": "fake", "user": {"token": token or self.actuator_token}}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "fake", "namespace": self.namespace},
                }
            ],
        }
        path.write_text(json.dumps(config))
        return path

    def add_rbac(self, *documents: dict | str) -> None:
        """More Roles, ClusterRoles and bindings (dicts or YAML text)."""
        self.server.add_rbac(*documents)

    @property
    def faults(self):
        return self.server.faults

    def now(self) -> pd.Timestamp:
        return self.clock.timestamp()

    def sleep(self, seconds: float) -> None:
        self.clock.advance(seconds)

    advance = sleep

    def add_deployment(self, name: str, *, replicas: int, cores: int, **kwargs) -> None:
        self.cluster.add_deployment(self.namespace, name, replicas=replicas, cores=cores, **kwargs)

    def state(self, name: str) -> dict:
        return self.cluster.state(self.namespace, name)

    def events(self, name: str) -> list[dict]:
        return [
            e
            for e in self.cluster.list("events", self.namespace)
            if e["involvedObject"]["name"] == name
        ]

    def close(self) -> None:
        self.server.stop()
        for api_client in self._clients:
            api_client.close()


class ClusterHarness:
    """A real cluster from ``KUBECONFIG``: wall-clock time, real pods (image from
    ``SURGECAST_TEST_IMAGE``, default ``registry.k8s.io/pause:3.10``)."""

    kind = "cluster"

    def __init__(self, **_: object) -> None:
        from kubernetes import client as k8s

        self.namespace = os.environ.get("SURGECAST_TEST_NAMESPACE", "surgecast-test")
        self.image = os.environ.get("SURGECAST_TEST_IMAGE", "registry.k8s.io/pause:3.10")
        client = api_client_for(kubeconfig=os.environ["KUBECONFIG"])
        self.api = KubeApi(client, request_timeout_s=10.0)
        self.apps = k8s.AppsV1Api(client)
        self.core = k8s.CoreV1Api(client)
        self.created: list[str] = []
        self.faults = None

    def now(self) -> pd.Timestamp:
        return pd.Timestamp.now(tz="UTC")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    advance = sleep

    def add_deployment(self, name: str, *, replicas: int, cores: int, **_: object) -> None:
        import yaml

        doc = yaml.safe_load((REPO / "deploy" / "example-deployment.yaml").read_text())
        doc["metadata"].update(name=name, namespace=self.namespace, labels={"app": name})
        doc["spec"]["replicas"] = replicas
        doc["spec"]["selector"] = {"matchLabels": {"app": name}}
        doc["spec"]["template"]["metadata"]["labels"] = {"app": name}
        c = doc["spec"]["template"]["spec"]["containers"][0]
        c.update(image=self.image)
        c.pop("readinessProbe", None)
        c.pop("ports", None)
        c["resources"] = {
            "requests": {"cpu": str(cores), "memory": "64Mi"},
            "limits": {"cpu": str(cores), "memory": "64Mi"},
        }
        self.apps.create_namespaced_deployment(self.namespace, doc)
        self.created.append(name)
        deadline = time.monotonic() + 180
        while self.state(name)["ready"] < replicas and time.monotonic() < deadline:
            time.sleep(2)

    def state(self, name: str) -> dict:
        from actuator import pods as P

        dep = self.api.deployment(self.namespace, name)
        pods = P.live(self.api.pods(self.namespace, {"app": name}))
        ready = [p for p in pods if P.is_ready(p)]
        container = dep["spec"]["template"]["spec"]["containers"][0]["name"]
        return {
            "replicas": dep["spec"]["replicas"],
            "pods": len(pods),
            "ready": len(ready),
            "ready_millicores": sorted(P.allocated_millicores(p, container) for p in ready),
            "desired_millicores": sorted(P.desired_millicores(p, container) for p in pods),
            "template_millicores": P.template_millicores(dep, container),
            "hpa_min": None,
        }

    def events(self, name: str) -> list[dict]:
        body = self.core.list_namespaced_event(
            self.namespace,
            field_selector=f"involvedObject.name={name}",
            _preload_content=False,
        )
        return json.loads(body.data)["items"]

    def close(self) -> None:
        for name in self.created:
            self.apps.delete_namespaced_deployment(name, self.namespace)


class ServedModel:
    """The fake API server on a cluster model that someone else owns and moves: the backtest's
    engine, whose clock it is. The server never moves that clock (no fault delays are set);
    every request brings the model to the clock's time and no further, as the in-process port's
    do.

    Args:
        cluster: the model to serve (its Deployments may already exist).
        rbac_files: manifests the server enforces (default ``deploy/rbac.yaml``).
        request_timeout_s: the client timeout of every :class:`KubeApi` it hands out; long,
            since a wall-clock timeout on a loaded machine would be a retry the in-process run
            never makes.
    """

    def __init__(
        self,
        cluster: FakeCluster,
        *,
        rbac_files: list[Path] | None = None,
        request_timeout_s: float = 60.0,
    ) -> None:
        self.cluster = cluster
        self.server = FakeApiServer(cluster, rbac_files or [RBAC]).start()
        self.request_timeout_s = request_timeout_s
        self._clients: list[k8s.ApiClient] = []

    def api(self, service_account: str, namespace: str = NAMESPACE) -> KubeApi:
        """Production's port, authenticated as the service account ``namespace/name``."""
        token = self.server.service_account_token(namespace, service_account)
        api_client = client_for(self.server.url, token)
        self._clients.append(api_client)
        return KubeApi(api_client, request_timeout_s=self.request_timeout_s)

    def add_rbac(self, *documents: dict | str) -> None:
        self.server.add_rbac(*documents)

    def close(self) -> None:
        self.server.stop()
        for api_client in self._clients:
            api_client.close()
