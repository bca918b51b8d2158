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

from actuator.kube import KubeApi, api_client_for
from kubeapi.cluster import Clock, FakeCluster, Node
from kubeapi.server import FakeApiServer

REPO = Path(__file__).resolve().parents[2]
RBAC = REPO / "deploy" / "rbac.yaml"
RBAC_TEMPLATE = REPO / "deploy" / "rbac-template-rewrite.yaml"
NAMESPACE = "inference"


class FakeHarness:
    """The fake API server on loopback with a test clock (see :mod:`kubeapi`)."""

    kind = "fake"

    def __init__(
        self,
        *,
        start_delay_s: float = 30.0,
        resize_delay_s: float = 2.0,
        nodes: list[Node] | None = None,
        rbac_files: list[Path] | None = None,
        request_timeout_s: float = 2.0,
    ) -> None:
        self.namespace = NAMESPACE
        self.clock = Clock()
        self.cluster = FakeCluster(
            self.clock,
            start_delay_s=start_delay_s,
            resize_delay_s=resize_delay_s,
            nodes=nodes or [Node("node-1", 64_000)],
        )
        self.server = FakeApiServer(self.cluster, rbac_files or [RBAC]).start()
        self.api = KubeApi(
            api_client_for(host=self.server.url), request_timeout_s=request_timeout_s
        )

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
        self.api.api_client.close()


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
