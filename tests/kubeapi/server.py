"""HTTP front of the fake API server: routing, RBAC, validation, conflicts and injected faults.

Served with ``ThreadingHTTPServer`` on 127.0.0.1 and a free port, and meant to be driven only
through the official client (``kubernetes.client.Configuration(host=server.url)``). JSON in and
out (``application/json``), errors as ``Status`` objects with the real reasons (NotFound,
Conflict, AlreadyExists, Forbidden, Invalid, UnsupportedMediaType, ServiceUnavailable).

Served paths (``{ns}`` any namespace):

* ``/apis/apps/v1/namespaces/{ns}/deployments[/{name}[/scale]]``: list, get, patch
* ``/api/v1/namespaces/{ns}/pods[/{name}[/resize]]``: list (label selectors), get, patch resize
* ``/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers[/{name}]``: list, get, patch
* ``/api/v1/namespaces/{ns}/events``: list, create

Every request is checked against the Roles in the RBAC manifests (resource/subresource and verb);
``?dryRun=All`` validates and answers without persisting. Faults are injected per path regex.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from kubeapi import rbac
from kubeapi.cluster import FakeCluster, qos_class
from kubeapi.patch import PatchError, apply_patch

ROUTES = [
    # (regex, api group, resource, subresource)
    (
        r"^/apis/apps/v1/namespaces/(?P<ns>[^/]+)/deployments(?:/(?P<name>[^/]+))?$",
        "apps",
        "deployments",
        None,
    ),
    (
        r"^/apis/apps/v1/namespaces/(?P<ns>[^/]+)/deployments/(?P<name>[^/]+)/scale$",
        "apps",
        "deployments",
        "scale",
    ),
    (r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods(?:/(?P<name>[^/]+))?$", "", "pods", None),
    (r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/resize$", "", "pods", "resize"),
    (
        r"^/apis/autoscaling/v2/namespaces/(?P<ns>[^/]+)/horizontalpodautoscalers"
        r"(?:/(?P<name>[^/]+))?$",
        "autoscaling",
        "horizontalpodautoscalers",
        None,
    ),
    (r"^/api/v1/namespaces/(?P<ns>[^/]+)/events(?:/(?P<name>[^/]+))?$", "", "events", None),
]
KINDS = {
    "deployments": ("apps/v1", "Deployment"),
    "pods": ("v1", "Pod"),
    "horizontalpodautoscalers": ("autoscaling/v2", "HorizontalPodAutoscaler"),
    "events": ("v1", "Event"),
}
VERBS = {"GET": "get", "PATCH": "patch", "POST": "create", "PUT": "update", "DELETE": "delete"}
PATCH_TYPES = (
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/json-patch+json",
)


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


@dataclass
class Fault:
    """Answer ``status`` (or delay by ``delay_s`` of real time, after handling the request) for
    the next ``times`` requests whose method and path match."""

    path: re.Pattern
    method: str | None
    times: int
    status: int | None = None
    delay_s: float = 0.0


@dataclass
class Faults:
    """Injected failures; every injected one is counted in ``fired``."""

    rules: list[Fault] = field(default_factory=list)
    conflicts: int = 0
    fired: list[str] = field(default_factory=list)

    def fail(self, path: str, status: int = 503, *, times: int = 1, method: str | None = None):
        """The next ``times`` matching requests get ``status`` (nothing is changed)."""
        self.rules.append(Fault(re.compile(path), method, times, status=status))

    def delay(self, path: str, seconds: float, *, times: int = 1, method: str | None = None):
        """The next ``times`` matching requests are handled (a write is applied), then the
        response waits ``seconds`` of real time: beyond the client's timeout, a lost answer."""
        self.rules.append(Fault(re.compile(path), method, times, delay_s=seconds))

    def conflict_next_writes(self, n: int) -> None:
        """The next ``n`` writes (PATCH, POST) answer 409 Conflict."""
        self.conflicts = n

    def match(self, method: str, path: str) -> Fault | None:
        for rule in self.rules:
            if rule.times > 0 and (rule.method in (None, method)) and rule.path.search(path):
                rule.times -= 1
                self.fired.append(f"{method} {path} -> {rule.status or f'delay {rule.delay_s}s'}")
                return rule
        return None


@dataclass
class Request:
    method: str
    path: str
    verb: str
    group: str
    resource: str
    subresource: str | None
    namespace: str
    name: str | None


class FakeApiServer:
    """The fake API server: ``start()`` serves on 127.0.0.1, ``stop()`` shuts down.

    Args:
        cluster: the objects and controllers.
        rbac_files: Role manifests whose rules the server enforces.
    """

    def __init__(self, cluster: FakeCluster, rbac_files: list[Path]) -> None:
        self.cluster = cluster
        self.rules = rbac.load_rules(*rbac_files)
        self.faults = Faults()
        self.log: list[tuple[str, str, int]] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeApiServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _handle(self) -> None:
                server.handle(self)

            do_GET = do_PATCH = do_POST = do_PUT = do_DELETE = _handle

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)

    def writes(self, method: str = "PATCH") -> list[tuple[str, str, int]]:
        """Requests with ``method`` (default: patches) that succeeded, in order, as
        (method, path with query, status)."""
        return [e for e in self.log if e[0] == method and 200 <= e[2] < 300]

    # ----------------------------------------------------------------------------------------

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        fault = self.faults.match(h.command, parts.path)
        try:
            if fault is not None and fault.status is not None:
                raise ApiError(fault.status, _reason(fault.status), "injected failure")
            req = self._route(h.command, parts.path)
            self._authorize(req)
            status, body = self._dispatch(req, query, raw, h.headers.get("Content-Type") or "")
        except ApiError as exc:
            status, body = exc.code, _status(exc.code, exc.reason, exc.message)
        self.log.append((h.command, h.path, status))
        if fault is not None and fault.delay_s:
            time.sleep(fault.delay_s)
        data = json.dumps(body).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and left

    def _route(self, method: str, path: str) -> Request:
        if method not in VERBS:
            raise ApiError(405, "MethodNotAllowed", f"method {method} not allowed")
        for pattern, group, resource, sub in ROUTES:
            m = re.match(pattern, path)
            if m:
                name = m.group("name")
                verb = VERBS[method]
                if method == "GET" and name is None:
                    verb = "list"
                return Request(method, path, verb, group, resource, sub, m.group("ns"), name)
        raise ApiError(404, "NotFound", f"the server could not find the requested resource {path}")

    def _authorize(self, req: Request) -> None:
        resource = req.resource + (f"/{req.subresource}" if req.subresource else "")
        if not rbac.allowed(self.rules, req.namespace, req.group, resource, req.verb, req.name):
            group = f"{req.group}" if req.group else ""
            raise ApiError(
                403,
                "Forbidden",
                f'{resource} "{req.name or ""}" is forbidden: User '
                f'"system:serviceaccount:{req.namespace}:surgecast-actuator" cannot {req.verb} '
                f'resource "{resource}" in API group "{group}" in the namespace '
                f'"{req.namespace}"',
            )

    def _dispatch(self, req: Request, query: dict, raw: bytes, content_type: str):
        c = self.cluster
        with c.lock:
            c.reconcile()
            if req.verb == "list":
                items = c.list(req.resource, req.namespace)
                if "labelSelector" in query:
                    items = [o for o in items if _selects(query["labelSelector"], o)]
                api_version, kind = KINDS[req.resource]
                return 200, {
                    "apiVersion": api_version,
                    "kind": f"{kind}List",
                    "metadata": {"resourceVersion": str(c._rv)},
                    "items": copy.deepcopy(items),
                }
            if req.verb == "create":
                return self._create(req, query, raw)
            obj = c.get(req.resource, req.namespace, req.name) if req.name else None
            if obj is None:
                raise ApiError(404, "NotFound", f'{req.resource} "{req.name}" not found')
            if req.verb == "get":
                return 200, self._view(req, obj)
            if req.verb != "patch":
                raise ApiError(405, "MethodNotAllowed", f"{req.verb} is not served here")
            return self._patch(req, query, raw, content_type, obj)

    def _view(self, req: Request, obj: dict) -> dict:
        if req.subresource == "scale":
            meta = obj["metadata"]
            return {
                "apiVersion": "autoscaling/v1",
                "kind": "Scale",
                "metadata": {
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "uid": meta["uid"],
                    "resourceVersion": meta["resourceVersion"],
                    "creationTimestamp": meta["creationTimestamp"],
                },
                "spec": {"replicas": obj["spec"]["replicas"]},
                "status": {
                    "replicas": obj.get("status", {}).get("replicas", 0),
                    "selector": ",".join(
                        f"{k}={v}" for k, v in obj["spec"]["selector"]["matchLabels"].items()
                    ),
                },
            }
        return copy.deepcopy(obj)

    def _write_checks(self, query: dict) -> bool:
        dry = query.get("dryRun")
        if dry not in (None, "All"):
            raise ApiError(400, "BadRequest", f"unsupported dryRun value {dry!r}")
        if self.faults.conflicts > 0:
            self.faults.conflicts -= 1
            self.faults.fired.append("409 injected")
            raise ApiError(409, "Conflict", "injected conflict: the object has been modified")
        return dry == "All"

    def _patch(self, req: Request, query: dict, raw: bytes, content_type: str, obj: dict):
        kind = content_type.split(";")[0].strip().lower()
        if kind not in PATCH_TYPES:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an "
                f"unknown format - accepted media types include: {', '.join(PATCH_TYPES)}",
            )
        try:
            body = json.loads(raw or b"null")
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"invalid JSON: {exc}") from None
        dry_run = self._write_checks(query)
        view = self._view(req, obj)
        try:
            patched = apply_patch(view, body, kind)
        except PatchError as exc:
            raise ApiError(422, "Invalid", str(exc)) from None
        sent_rv = (patched.get("metadata") or {}).get("resourceVersion")
        if sent_rv is not None and sent_rv != obj["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {req.resource} "{req.name}": the object has '
                "been modified; please apply your changes to the latest version and try again",
            )
        new = self._merge_back(req, obj, patched)
        if dry_run:
            return 200, self._view(req, new)
        stored = self.cluster.put(req.resource, new)
        self.cluster.reconcile()
        current = self.cluster.get(req.resource, req.namespace, req.name) or stored
        return 200, self._view(req, current)

    def _merge_back(self, req: Request, obj: dict, patched: dict) -> dict:
        """Validate the patched view and turn it into the stored object."""
        new = copy.deepcopy(obj)
        if req.subresource == "scale":
            replicas = (patched.get("spec") or {}).get("replicas")
            if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
                raise ApiError(422, "Invalid", f"spec.replicas: Invalid value: {replicas!r}")
            new["spec"]["replicas"] = replicas
            return new
        if req.subresource == "resize":
            return self._resize(obj, patched)
        if req.resource == "horizontalpodautoscalers":
            spec = patched.get("spec") or {}
            lo, hi = spec.get("minReplicas", 1), spec.get("maxReplicas")
            if not isinstance(lo, int) or not isinstance(hi, int) or not 1 <= lo <= hi:
                raise ApiError(
                    422,
                    "Invalid",
                    f"spec.minReplicas: Invalid value: {lo!r}: must "
                    f"be >= 1 and <= maxReplicas {hi!r}",
                )
            new["spec"] = spec
            return new
        if req.resource == "deployments":
            new["spec"] = patched.get("spec") or {}
            new["metadata"]["labels"] = (patched.get("metadata") or {}).get("labels", {})
            return new
        raise ApiError(405, "MethodNotAllowed", f"patch of {req.resource} is not served")

    def _resize(self, obj: dict, patched: dict) -> dict:
        """Only container resources may change, and not the QoS class (as the real server)."""
        before, after = obj["spec"], patched.get("spec") or {}
        strip = lambda spec: [  # noqa: E731
            {k: v for k, v in c.items() if k != "resources"} for c in spec.get("containers", [])
        ]
        others = {k: v for k, v in after.items() if k != "containers"}
        if strip(before) != strip(after) or others != {
            k: v for k, v in before.items() if k != "containers"
        }:
            raise ApiError(422, "Invalid", "Pod resize may only change container resources")
        if qos_class(after) != qos_class(before):
            raise ApiError(
                422,
                "Invalid",
                f"Pod QOS Class may not change as a result of resizing: {qos_class(before)} "
                f"-> {qos_class(after)}",
            )
        new = copy.deepcopy(obj)
        new["spec"] = after
        return new

    def _create(self, req: Request, query: dict, raw: bytes):
        if req.resource != "events":
            raise ApiError(405, "MethodNotAllowed", f"create of {req.resource} is not served")
        try:
            body = json.loads(raw or b"{}")
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"invalid JSON: {exc}") from None
        dry_run = self._write_checks(query)
        meta = body.setdefault("metadata", {})
        if not meta.get("name"):
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        if meta.setdefault("namespace", req.namespace) != req.namespace:
            raise ApiError(400, "BadRequest", "the namespace of the object does not match")
        if not body.get("involvedObject", {}).get("name") or not body.get("reason"):
            raise ApiError(422, "Invalid", "involvedObject.name and reason are required")
        if self.cluster.get("events", req.namespace, meta["name"]) is not None:
            raise ApiError(409, "AlreadyExists", f'events "{meta["name"]}" already exists')
        if dry_run:
            return 201, body
        return 201, copy.deepcopy(self.cluster.put("events", body))


def _selects(selector: str, obj: dict) -> bool:
    """Equality-based label selectors: ``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = re.split("==?", term, maxsplit=1)
            if labels.get(k) != v:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _reason(code: int) -> str:
    return {
        500: "InternalError",
        502: "BadGateway",
        503: "ServiceUnavailable",
        504: "Timeout",
        429: "TooManyRequests",
        403: "Forbidden",
        409: "Conflict",
    }.get(code, "Unknown")


def _status(code: int, reason: str, message: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
