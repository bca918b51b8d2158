"""The API server's handlers over a :class:`~surgecast.offline.cluster.ClusterModel`: routing,
decoding, resourceVersion preconditions, validation, admission (ResourceQuota), dry runs and
storage, in the order kube-apiserver applies them after authentication and authorisation.

Two fronts call the same :class:`ApiHandlers`, so no semantics are written twice: the backtest's
in-process port (:class:`surgecast.offline.port.SimPort`) and the tests' HTTP server
(``tests/kubeapi/server.py``, which adds authentication, RBAC and injected faults in front).
JSON in and out, errors as :class:`ApiError` with the real codes, reasons and message shapes
(staging/src/k8s.io/apimachinery/pkg/api/errors/errors.go).

Served paths (``{ns}`` any namespace):

* ``/apis/apps/v1/namespaces/{ns}/deployments[/{name}[/scale]]``: list, get, patch
* ``/api/v1/namespaces/{ns}/pods[/{name}[/resize]]``: list (label selectors), get, patch resize
  (``resize`` only from version 1.33, where the subresource appeared)
* ``/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers[/{name}]``: list, get, patch
* ``/api/v1/namespaces/{ns}/events``: list, get, create
* ``/apis/coordination.k8s.io/v1/namespaces/{ns}/leases[/{name}]`` and
  ``/api/v1/namespaces/{ns}/configmaps[/{name}]``: list, get, create, update, patch, delete

Handler order (staging/src/k8s.io/apiserver/pkg/endpoints/handlers): decode (400 on
create/update; 422 ``patch: Invalid value`` on patch), resourceVersion precondition (409),
validation (422 Invalid), admission (ResourceQuota: 403), storage. A dry run (``?dryRun=All``)
goes through every step but the last and answers what the write would have.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from surgecast.offline.cluster import ClusterModel, clone, qos_class
from surgecast.offline.patch import PatchError, apply_patch, go_value

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
    (
        r"^/apis/coordination.k8s.io/v1/namespaces/(?P<ns>[^/]+)/leases(?:/(?P<name>[^/]+))?$",
        "coordination.k8s.io",
        "leases",
        None,
    ),
    (
        r"^/api/v1/namespaces/(?P<ns>[^/]+)/configmaps(?:/(?P<name>[^/]+))?$",
        "",
        "configmaps",
        None,
    ),
]
KINDS = {
    "deployments": ("apps/v1", "Deployment"),
    "pods": ("v1", "Pod"),
    "horizontalpodautoscalers": ("autoscaling/v2", "HorizontalPodAutoscaler"),
    "events": ("v1", "Event"),
    "leases": ("coordination.k8s.io/v1", "Lease"),
    "configmaps": ("v1", "ConfigMap"),
}
# What each (resource, subresource) serves; anything else is 405 MethodNotAllowed.
SERVED = {
    ("deployments", None): {"get", "list", "patch"},
    ("deployments", "scale"): {"get", "patch"},
    ("pods", None): {"get", "list"},
    ("pods", "resize"): {"get", "patch"},
    ("horizontalpodautoscalers", None): {"get", "list", "patch"},
    ("events", None): {"get", "list", "create"},
    ("leases", None): {"get", "list", "create", "update", "patch", "delete"},
    ("configmaps", None): {"get", "list", "create", "update", "patch", "delete"},
}
VERBS = {"GET": "get", "PATCH": "patch", "POST": "create", "PUT": "update", "DELETE": "delete"}
WRITES = ("patch", "update", "delete")
PATCH_TYPES = (
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/json-patch+json",
)
DEFAULT_VERSION = (1, 33)
RESIZE_SINCE = (1, 33)  # pods/resize: KEP-1287, beta and on by default in 1.33
QUOTA_NAME = "compute-resources"


class ApiError(Exception):
    """An error answer: HTTP ``code``, Status ``reason``, ``message`` and optional details."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details



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
    who: Any = None

    @property
    def qualified(self) -> str:
        """``deployments.apps``, ``pods``: the GroupResource in error messages."""
        return f"{self.resource}.{self.group}" if self.group else self.resource

    @property
    def kind(self) -> str:
        """``Deployment.apps``, ``Scale.autoscaling``, ``Pod``: the GroupKind of 422s."""
        if self.subresource == "scale":
            return "Scale.autoscaling"
        kind = KINDS[self.resource][1]
        return f"{kind}.{self.group}" if self.group else kind



# --------------------------------------------------------------------------------------------
# the handlers


class ApiHandlers:
    """The handlers of the served resources over one cluster model.

    Args:
        cluster: the objects and controllers.
        version: (major, minor) of the server; before (1, 33) the ``pods/resize``
            subresource does not exist (404).
        before_write: called with a write's request and the stored object just before the
            write is evaluated; returns the object to evaluate against (the HTTP front injects
            a concurrent writer here). None: nothing.
    """

    def __init__(
        self,
        cluster: ClusterModel,
        *,
        version: tuple[int, int] = DEFAULT_VERSION,
        before_write: Callable[[Request, dict], dict] | None = None,
    ) -> None:
        if (
            not isinstance(version, tuple)
            or len(version) != 2
            or not all(isinstance(v, int) and v >= 0 for v in version)
        ):
            raise ValueError(f"version: expected (major, minor) integers, got {version!r}")
        self.cluster = cluster
        self.version = version
        self.before_write = before_write

    def call(
        self, method: str, path: str, query: dict | None = None, body: Any = None,
        content_type: str = "",
    ) -> tuple[int, dict]:
        """Route and serve one request whose body is a JSON-able value (None: no body).

        Raises:
            ApiError: the error answer.
        """
        raw = b"" if body is None else json.dumps(body).encode()
        return self.dispatch(self.route(method, path), query or {}, raw, content_type)

    def route(self, method: str, path: str, who: Any = None) -> Request:
        """The request a method and path name; 405 for an unknown method, 404 for a path not
        served (or ``resize`` before 1.33)."""
        if method not in VERBS:
            raise ApiError(405, "MethodNotAllowed", f"method {method} not allowed")
        for pattern, group, resource, sub in ROUTES:
            m = re.match(pattern, path)
            if m:
                if sub == "resize" and self.version < RESIZE_SINCE:
                    break  # the subresource does not exist before 1.33
                name = m.group("name")
                verb = VERBS[method]
                if method == "GET" and name is None:
                    verb = "list"
                return Request(method, path, verb, group, resource, sub, m.group("ns"), name, who)
        raise ApiError(404, "NotFound", "the server could not find the requested resource")


    def dispatch(self, req: Request, query: dict, raw: bytes, content_type: str = ""):
        """Serve one routed request.

        Args:
            req: from :meth:`route` (authorised by the caller, if it authorises).
            query: query parameters (``dryRun``, ``labelSelector``), last value of each.
            raw: the request body as sent (JSON bytes; empty for reads).
            content_type: the patch type of a PATCH.

        Returns:
            (HTTP status, JSON body).

        Raises:
            ApiError: the error answer.
        """
        if req.verb not in SERVED[(req.resource, req.subresource)]:
            raise ApiError(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )
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
                    "metadata": {"resourceVersion": str(getattr(c, "_rv", 0))},
                    "items": clone(items),
                }
            if req.verb == "create":
                return self._create(req, query, raw)
            obj = c.get(req.resource, req.namespace, req.name) if req.name else None
            if obj is None:
                raise ApiError(
                    404,
                    "NotFound",
                    f'{req.qualified} "{req.name}" not found',
                    {"name": req.name, "group": req.group, "kind": req.resource},
                )
            if req.verb == "get":
                return 200, self._view(req, obj)
            if self.before_write is not None:
                obj = self.before_write(req, obj)
            if req.verb == "update":
                return self._update(req, query, raw, obj)
            if req.verb == "delete":
                return self._delete(req, query, raw, obj)
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
        return clone(obj)

    def _dry_run(self, query: dict) -> bool:
        dry = query.get("dryRun")
        if dry not in (None, "All"):
            raise ApiError(400, "BadRequest", f'invalid dry-run value: ["{dry}"]')
        return dry == "All"

    def _conflict(self, req: Request) -> ApiError:
        return ApiError(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {req.qualified} "{req.name}": the object has '
            "been modified; please apply your changes to the latest version and try again",
            {"name": req.name, "group": req.group, "kind": req.resource},
        )

    # patch -------------------------------------------------------------------------------------

    def _patch(self, req: Request, query: dict, raw: bytes, content_type: str, obj: dict):
        kind = content_type.split(";")[0].strip().lower()
        if kind not in PATCH_TYPES:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types "
                f"include: {', '.join(PATCH_TYPES)}",
            )
        body = _json(raw)
        dry_run = self._dry_run(query)
        try:
            patched = apply_patch(self._view(req, obj), body, kind)
        except PatchError as exc:
            details = {"causes": [{"reason": "UnexpectedServerResponse", "message": exc.cause}]}
            raise ApiError(exc.code, exc.reason, str(exc), details if exc.cause else None) from None
        decode_error = _decode_error(req, patched)
        if decode_error is not None:
            # patch.go: the patched object does not decode into the type.
            shown = (
                go_value(body)
                if kind == "application/strategic-merge-patch+json"
                else json.dumps(patched, separators=(",", ":"))
            )
            raise _invalid("", "", [("patch", "Invalid", shown, decode_error)])
        meta = patched.get("metadata") if isinstance(patched.get("metadata"), dict) else {}
        if meta.get("name", req.name) != req.name:
            raise ApiError(
                400,
                "BadRequest",
                f"the name of the object ({meta.get('name')}) does not match the name on the "
                f"URL ({req.name})",
            )
        sent_rv = meta.get("resourceVersion")
        if sent_rv is not None and sent_rv != obj["metadata"]["resourceVersion"]:
            raise self._conflict(req)
        new = self._merge_back(req, obj, patched)
        self._admit(req, obj, new)
        if dry_run:
            return 200, self._view(req, new)
        stored = self.cluster.put(req.resource, new)
        _drop_generation(req.resource, stored)
        self.cluster.reconcile()
        current = self.cluster.get(req.resource, req.namespace, req.name) or stored
        return 200, self._view(req, current)

    def _merge_back(self, req: Request, obj: dict, patched: dict) -> dict:
        """Validate the patched view (422) and turn it into the stored object."""
        new = clone(obj)
        spec = patched.get("spec") or {}
        if req.subresource == "scale":
            _raise_invalid(req, _nonnegative("spec.replicas", spec.get("replicas")))
            new["spec"]["replicas"] = spec["replicas"]
            return new
        if req.subresource == "resize":
            return self._resize(req, obj, patched)
        if req.resource == "horizontalpodautoscalers":
            _raise_invalid(req, _hpa_errors(spec))
            new["spec"] = spec
            return new
        if req.resource == "deployments":
            if isinstance(patched.get("spec"), dict):
                spec.setdefault("replicas", 1)  # SetDefaults_Deployment: replicas 1
            _raise_invalid(req, _deployment_errors(obj, patched))
            new["spec"] = spec
            new["metadata"]["labels"] = (patched.get("metadata") or {}).get("labels", {})
            return new
        if req.resource in ("leases", "configmaps"):
            return self._replace_content(req, obj, patched)
        raise ApiError(405, "MethodNotAllowed", f"patch of {req.resource} is not served")

    def _replace_content(self, req: Request, obj: dict, body: dict) -> dict:
        """Leases and ConfigMaps: everything but the server-owned metadata comes from ``body``
        (ValidateObjectMetaUpdate keeps name, namespace, uid and creationTimestamp)."""
        new = clone(body)
        meta = new.setdefault("metadata", {})
        for key in ("name", "namespace", "uid", "creationTimestamp", "resourceVersion"):
            if key in obj["metadata"]:
                meta[key] = obj["metadata"][key]
        new.setdefault("apiVersion", KINDS[req.resource][0])
        new.setdefault("kind", KINDS[req.resource][1])
        _raise_invalid(req, _content_errors(req.resource, new))
        return new

    def _resize(self, req: Request, obj: dict, patched: dict) -> dict:
        """Only container cpu/memory may change, and not the QoS class (ValidatePodResize,
        pkg/apis/core/validation/validation.go)."""
        before, after = obj["spec"], patched.get("spec") or {}
        strip = lambda spec: [  # noqa: E731
            {k: v for k, v in c.items() if k not in ("resources", "resizePolicy")}
            for c in spec.get("containers", [])
        ]
        others = {k: v for k, v in after.items() if k != "containers"}
        if strip(before) != strip(after) or others != {
            k: v for k, v in before.items() if k != "containers"
        }:
            _raise_invalid(req, [("spec", "Forbidden", None,
                                  "only cpu and memory resources are mutable")])
        errors = _container_errors(after.get("containers"), "spec.containers")
        for i, c in enumerate(after.get("containers") or []):
            for kind in ("requests", "limits"):
                extra = set((c.get("resources") or {}).get(kind) or {}) - {"cpu", "memory"}
                old = (before["containers"][i].get("resources") or {}).get(kind) or {}
                for name in sorted(extra):
                    if c["resources"][kind][name] != old.get(name):
                        errors.append((f"spec.containers[{i}].resources.{kind}[{name}]",
                                       "Forbidden", None,
                                       "only cpu and memory resources are mutable"))
        _raise_invalid(req, errors)
        if qos_class(after) != qos_class(before):
            _raise_invalid(req, [("spec", "Invalid", qos_class(after),
                                  "Pod QOS Class may not change as a result of resizing")])
        new = clone(obj)
        new["spec"] = after
        return new

    def _admit(self, req: Request, old: dict, new: dict) -> None:
        """Validating admission: the namespace's ResourceQuota on ``requests.cpu`` (if the
        cluster has one, ``quota_millicores``) refuses a resize that would exceed it
        (plugin/pkg/admission/resourcequota/controller.go; resizes are checked against quota,
        docs "Resize CPU and Memory Resources assigned to Containers"). Only an increase is
        checked: a resize down is admitted even in a namespace already over quota."""
        hard = getattr(self.cluster, "quota_millicores", None)
        if hard is None or req.subresource != "resize":
            return
        delta = _pod_cpu_m(new) - _pod_cpu_m(old)
        if delta <= 0:
            return
        used = sum(
            _pod_cpu_m(p) for p in self.cluster.list("pods", req.namespace) if self._quota_counts(p)
        )
        if used + delta > hard:
            name = getattr(self.cluster, "quota_name", QUOTA_NAME)
            raise ApiError(
                403,
                "Forbidden",
                f'pods "{req.name}" is forbidden: exceeded quota: {name}, requested: '
                f"requests.cpu={_millis(delta)}, used: requests.cpu={_millis(used)}, "
                f"limited: requests.cpu={_millis(hard)}",
                {"name": req.name, "kind": "pods"},
            )

    def _quota_counts(self, pod: dict) -> bool:
        """QuotaV1Pod (pkg/quota/v1/evaluator/core/pods.go): terminal pods and pods past
        their deletion grace period use no quota."""
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return False
        meta = pod.get("metadata") or {}
        deleted, grace = meta.get("deletionTimestamp"), meta.get("deletionGracePeriodSeconds")
        if deleted and grace is not None:
            end = datetime.fromisoformat(deleted.replace("Z", "+00:00")).timestamp() + float(grace)
            return self.cluster.clock.now <= end
        return True

    # create, update, delete -------------------------------------------------------------------

    def _typed_body(self, req: Request, raw: bytes) -> dict:
        body = _json(raw)
        kind = KINDS[req.resource][1]
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", f'{kind} in version "v1" cannot be handled as a '
                           f"{kind}: json: cannot unmarshal into Go value of type {kind}")
        api_version = body.get("apiVersion")
        if api_version is not None and api_version != KINDS[req.resource][0]:
            raise ApiError(400, "BadRequest", f"the API version in the data ({api_version}) does "
                           f"not match the expected API version ({KINDS[req.resource][0]})")
        error = _decode_error(req, body)
        if error is not None:
            version = KINDS[req.resource][0].split("/")[-1]
            raise ApiError(400, "BadRequest",
                           f'{kind} in version "{version}" cannot be handled as a {kind}: {error}')
        return body

    def _create(self, req: Request, query: dict, raw: bytes):
        body = self._typed_body(req, raw)
        dry_run = self._dry_run(query)
        meta = body.get("metadata")
        if not isinstance(meta, dict):
            meta = body["metadata"] = {}
        if meta.setdefault("namespace", req.namespace) != req.namespace:
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the "
                "request",
            )
        if not meta.get("name"):
            _raise_invalid(req, [("metadata.name", "Required", None,
                                  "name or generateName is required")], name="")
        body.setdefault("apiVersion", KINDS[req.resource][0])
        body.setdefault("kind", KINDS[req.resource][1])
        _raise_invalid(req, _content_errors(req.resource, body), name=meta["name"])
        if self.cluster.get(req.resource, req.namespace, meta["name"]) is not None:
            raise ApiError(
                409,
                "AlreadyExists",
                f'{req.qualified} "{meta["name"]}" already exists',
                {"name": meta["name"], "group": req.group, "kind": req.resource},
            )
        # Server-owned fields: a client's resourceVersion, uid or timestamp is not kept.
        for key in ("resourceVersion", "uid", "creationTimestamp", "generation"):
            meta.pop(key, None)
        if dry_run:
            meta["uid"] = str(uuid.UUID(int=0))
            return 201, body
        stored = self.cluster.put(req.resource, body)
        _drop_generation(req.resource, stored)
        return 201, clone(stored)

    def _update(self, req: Request, query: dict, raw: bytes, obj: dict):
        """PUT (registry/generic/registry/store.go ``Update``): the whole object; its
        resourceVersion, if set, must be the stored one (409); leases and configmaps allow an
        unconditional update without one; no create on update (404 was answered before)."""
        body = self._typed_body(req, raw)
        dry_run = self._dry_run(query)
        meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
        if meta.get("name") != req.name:
            raise ApiError(400, "BadRequest", f"the name of the object ({meta.get('name')}) does "
                           f"not match the name on the URL ({req.name})")
        if meta.get("namespace", req.namespace) != req.namespace:
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not "
                           "match the namespace sent on the request")
        sent_rv = meta.get("resourceVersion")
        if sent_rv and sent_rv != obj["metadata"]["resourceVersion"]:
            raise self._conflict(req)
        new = self._replace_content(req, obj, body)
        if dry_run:
            return 200, new
        stored = self.cluster.put(req.resource, new)
        _drop_generation(req.resource, stored)
        return 200, clone(stored)

    def _delete(self, req: Request, query: dict, raw: bytes, obj: dict):
        """DELETE with optional DeleteOptions preconditions (uid, resourceVersion: 409 when
        they do not hold). Answers a Status Success, as for resources without graceful
        deletion."""
        options = _json(raw) if raw.strip() else {}
        if not isinstance(options, dict):
            raise ApiError(400, "BadRequest", "DeleteOptions: expected an object")
        dry = query.get("dryRun") or (options.get("dryRun") or [None])[0]
        dry_run = self._dry_run({"dryRun": dry} if dry else {})
        pre = options.get("preconditions") or {}
        meta = obj["metadata"]
        for key, label, hint in (
            ("uid", "UID", "might have been replaced and recreated"),
            ("resourceVersion", "ResourceVersion", "might have been modified"),
        ):
            if pre.get(key) is not None and pre[key] != meta.get(key):
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {req.qualified} "{req.name}": the {label} '
                    f"in the precondition ({pre[key]}) does not match the {label} in record "
                    f"({meta.get(key)}). The object {hint}",
                )
        if not dry_run:
            self.cluster.delete(req.resource, req.namespace, req.name)
        return 200, {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": req.name, "group": req.group, "kind": req.resource,
                        "uid": meta.get("uid")},
        }


# --------------------------------------------------------------------------------------------
# decoding: what makes the typed decode of an object fail


QUANTITY_RE = re.compile(r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")
ERR_FORMAT = (
    "quantities must match the regular expression "
    "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
)
ERR_SUFFIX = "unable to parse quantity's suffix"
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
MICRO_TIME_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(?:Z|[+-]\d{2}:\d{2})$"
)
INT32 = (-(2**31), 2**31 - 1)


def parse_quantity(value: Any) -> Decimal:
    """A resource quantity as ``resource.ParseQuantity`` reads it
    (staging/src/k8s.io/apimachinery/pkg/api/resource/quantity.go): a signed decimal number and
    one suffix, binary (Ki..Ei), decimal (n, u, m, "", k..E) or an exponent (e3, E-2).

    Raises:
        ValueError: with the real messages (``quantities must match the regular
            expression ...`` or ``unable to parse quantity's suffix``).
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(ERR_FORMAT)
    text = value.strip() if isinstance(value, str) else repr(value)
    m = QUANTITY_RE.match(text)
    if not m:
        raise ValueError(ERR_FORMAT)
    number, suffix = m.groups()
    digits = number.lstrip("+-")
    if digits.count(".") > 1 or not digits.replace(".", ""):
        raise ValueError(ERR_FORMAT if not digits.replace(".", "") else ERR_SUFFIX)
    base = Decimal(number)
    if suffix in _BINARY:
        return base * _BINARY[suffix]
    if suffix in _DECIMAL:
        return base.scaleb(_DECIMAL[suffix])
    if suffix[:1] in ("e", "E") and re.fullmatch(r"[-+]?[0-9]+", suffix[1:]):
        return base.scaleb(int(suffix[1:]))
    raise ValueError(ERR_SUFFIX)


def _decode_error(req: Request, obj: dict) -> str | None:
    """The first field that would not decode into the object's Go type, as a message."""
    if not isinstance(obj, dict):
        return "json: cannot unmarshal into an object"
    for key in ("metadata", "spec", "status", "data"):
        if key in obj and obj[key] is not None and not isinstance(obj[key], dict):
            return f"json: cannot unmarshal {_json_type(obj[key])} into Go struct field .{key}"
    spec = obj.get("spec") or {}
    ints: list[str] = []
    containers = None
    if req.subresource == "scale" or req.resource == "deployments":
        ints = ["replicas"]
    if req.resource == "horizontalpodautoscalers":
        ints = ["minReplicas", "maxReplicas"]
    if req.resource == "leases":
        ints = ["leaseDurationSeconds", "leaseTransitions"]
        for key in ("acquireTime", "renewTime"):
            value = spec.get(key)
            if value is not None and not (isinstance(value, str) and MICRO_TIME_RE.match(value)):
                # metav1.MicroTime: time.Parse(RFC3339Micro) needs exactly six fraction
                # digits (staging/src/k8s.io/apimachinery/pkg/apis/meta/v1/micro_time.go).
                return f"spec.{key}: {_micro_time_error(value)}"
    for key in ints:
        value = spec.get(key)
        if value is None or req.subresource == "resize":
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            return (
                f"json: cannot unmarshal {_json_type(value)} into Go struct field "
                f"spec.{key} of type int32"
            )
        if not INT32[0] <= value <= INT32[1]:
            return f"json: cannot unmarshal number {value} into Go struct field spec.{key} of " \
                   "type int32"
    if req.resource == "pods":
        containers = spec.get("containers")
    elif req.resource == "deployments" and req.subresource is None:
        template = spec.get("template") or {}
        containers = (template.get("spec") or {}).get("containers") if isinstance(
            template, dict) else None
    if containers is not None:
        if not isinstance(containers, list):
            return f"json: cannot unmarshal {_json_type(containers)} into []v1.Container"
        for c in containers:
            if not isinstance(c, dict):
                return f"json: cannot unmarshal {_json_type(c)} into v1.Container"
            resources = c.get("resources") or {}
            if not isinstance(resources, dict):
                return "json: cannot unmarshal into v1.ResourceRequirements"
            for kind in ("requests", "limits"):
                values = resources.get(kind) or {}
                if not isinstance(values, dict):
                    return f"json: cannot unmarshal into v1.ResourceList ({kind})"
                for q in values.values():
                    try:
                        parse_quantity(q)
                    except ValueError as exc:
                        return str(exc)
    if req.resource == "configmaps":
        for key in ("data", "binaryData"):
            for k, v in (obj.get(key) or {}).items():
                if not isinstance(v, str):
                    return (
                        f"json: cannot unmarshal {_json_type(v)} into Go struct field "
                        f"ConfigMap.{key} of type string ({k})"
                    )
    return None


def _micro_time_error(value: Any) -> str:
    """Go's ``time.Parse`` error for a MicroTime value that is not RFC3339Micro."""
    layout = "2006-01-02T15:04:05.000000Z07:00"
    if not isinstance(value, str):
        return f"json: cannot unmarshal {_json_type(value)} into Go value of type string"
    head = re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}", value)
    if head is None:
        return f'parsing time "{value}" as "{layout}": cannot parse "{value}" as "2006"'
    rest = value[head.end():]
    if re.match(r"^\.\d{6}", rest):
        return f'parsing time "{value}" as "{layout}": cannot parse "{rest[7:]}" as "Z07:00"'
    return f'parsing time "{value}" as "{layout}": cannot parse "{rest}" as ".000000"'


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "null"


# --------------------------------------------------------------------------------------------
# validation: field errors as field.Error renders them


FieldError = tuple[str, str, Any, str | None]  # (path, type, bad value, detail)


class GoValue(str):
    """A bad value already printed the way Go prints it (``%#v`` of a struct): not quoted."""
_CAUSE = {
    "Invalid": ("FieldValueInvalid", "Invalid value"),
    "Required": ("FieldValueRequired", "Required value"),
    "Forbidden": ("FieldValueForbidden", "Forbidden"),
    "TooLong": ("FieldValueTooLong", "Too long"),
}
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
CONFIGMAP_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def _render(value: Any) -> str:
    """``field.Error`` prints strings quoted and numbers bare; other values as Go would."""
    if isinstance(value, GoValue):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict):
        return "map[string]string{" + ", ".join(
            f"{json.dumps(str(k))}:{json.dumps(str(v))}" for k, v in sorted(value.items())
        ) + "}"
    return go_value(value)


def _body(kind: str, value: Any, detail: str | None) -> str:
    head = _CAUSE[kind][1]
    if kind == "Invalid":
        head += f": {_render(value)}"
    return f"{head}: {detail}" if detail else head


def _invalid(kind: str, name: str, errors: list[FieldError]) -> ApiError:
    """errors.NewInvalid: ``<Kind.group> "<name>" is invalid: <field error>[, ...]``."""
    texts = [f"{path}: {_body(t, value, detail)}" for path, t, value, detail in errors]
    joined = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    group_kind = kind.split(".", 1)
    details = {
        "name": name,
        "kind": group_kind[0],
        "causes": [
            {"reason": _CAUSE[t][0], "message": _body(t, value, detail), "field": path}
            for path, t, value, detail in errors
        ],
    }
    if len(group_kind) == 2:
        details["group"] = group_kind[1]
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {joined}', details)


def _raise_invalid(req: Request, errors: list[FieldError], *, name: str | None = None) -> None:
    if errors:
        raise _invalid(req.kind, req.name if name is None else name, errors)


def _nonnegative(path: str, value: Any) -> list[FieldError]:
    if value is None:
        return [(path, "Required", None, None)]
    if value < 0:
        return [(path, "Invalid", value, "must be greater than or equal to 0")]
    return []


def _container_errors(containers: Any, path: str) -> list[FieldError]:
    """Container names and resources (ValidateResourceRequirements): quantities >= 0 and
    requests <= limits for each resource that has both."""
    if not containers:
        return [(path, "Required", None, None)]
    errors: list[FieldError] = []
    for i, c in enumerate(containers):
        p = f"{path}[{i}]"
        if not c.get("name"):
            errors.append((f"{p}.name", "Required", None, None))
        res = c.get("resources") or {}
        limits, requests = res.get("limits") or {}, res.get("requests") or {}
        for kind, values in (("limits", limits), ("requests", requests)):
            for rname, q in values.items():
                if parse_quantity(q) < 0:
                    errors.append((f"{p}.resources.{kind}[{rname}]", "Invalid", str(q),
                                   "must be greater than or equal to 0"))
        for rname, q in requests.items():
            if rname in limits and parse_quantity(q) > parse_quantity(limits[rname]):
                errors.append((f"{p}.resources.requests[{rname}]", "Invalid", str(q),
                               f"must be less than or equal to {rname} limit of "
                               f"{limits[rname]}"))
    return errors


def _deployment_errors(old: dict, new: dict) -> list[FieldError]:
    """ValidateDeploymentUpdate (pkg/apis/apps/validation/validation.go): spec.selector is
    immutable in apps/v1, replicas >= 0, template labels match the selector, containers."""
    spec = new.get("spec") or {}
    errors = _nonnegative("spec.replicas", spec.get("replicas"))
    selector = spec.get("selector")
    if selector != old["spec"].get("selector"):
        errors.append(("spec.selector", "Invalid", _selector_text(selector),
                       "field is immutable"))
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    match = (selector or {}).get("matchLabels") or {}
    if any(labels.get(k) != v for k, v in match.items()):
        errors.append(("spec.template.metadata.labels", "Invalid", labels,
                       "`selector` does not match template `labels`"))
    errors += _container_errors(
        (template.get("spec") or {}).get("containers"), "spec.template.spec.containers"
    )
    return errors


def _selector_text(selector: Any) -> str:
    match = (selector or {}).get("matchLabels") if isinstance(selector, dict) else None
    labels = ", ".join(f'"{k}":"{v}"' for k, v in sorted((match or {}).items()))
    return GoValue(
        f"&v1.LabelSelector{{MatchLabels:map[string]string{{{labels}}}, "
        "MatchExpressions:[]v1.LabelSelectorRequirement(nil)}"
    )


def _hpa_errors(spec: dict) -> list[FieldError]:
    """ValidateHorizontalPodAutoscalerSpec (pkg/apis/autoscaling/validation/validation.go)."""
    errors: list[FieldError] = []
    lo, hi = spec.get("minReplicas"), spec.get("maxReplicas")
    if lo is not None and lo < 1:
        errors.append(("spec.minReplicas", "Invalid", lo, "must be greater than or equal to 1"))
    if hi is None:
        errors.append(("spec.maxReplicas", "Required", None, None))
    elif hi < 1:
        errors.append(("spec.maxReplicas", "Invalid", hi, "must be greater than 0"))
    elif lo is not None and hi < lo:
        errors.append(("spec.maxReplicas", "Invalid", hi,
                       "must be greater than or equal to `minReplicas`"))
    return errors


def _content_errors(resource: str, obj: dict) -> list[FieldError]:
    """Create/update validation of Events, Leases and ConfigMaps."""
    meta = obj.get("metadata") or {}
    errors: list[FieldError] = []
    name = meta.get("name") or ""
    if name and (len(name) > 253 or not DNS1123_SUBDOMAIN.match(name)):
        errors.append(("metadata.name", "Invalid", name,
                       "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                       "characters, '-' or '.', and must start and end with an alphanumeric "
                       "character"))
    if resource == "leases":
        # ValidateLeaseSpec (pkg/apis/coordination/validation/validation.go)
        spec = obj.get("spec") or {}
        duration, transitions = spec.get("leaseDurationSeconds"), spec.get("leaseTransitions")
        if duration is not None and duration <= 0:
            errors.append(("spec.leaseDurationSeconds", "Invalid", duration,
                           "must be greater than 0"))
        if transitions is not None and transitions < 0:
            errors.append(("spec.leaseTransitions", "Invalid", transitions,
                           "must be greater than or equal to 0"))
    elif resource == "configmaps":
        # ValidateConfigMap (pkg/apis/core/validation/validation.go): keys, 1 MiB in total.
        total = 0
        for section in ("data", "binaryData"):
            for key, value in (obj.get(section) or {}).items():
                total += len(value)
                if len(key) > 253 or not CONFIGMAP_KEY.match(key):
                    errors.append((f"{section}[{key}]", "Invalid", key,
                                   "a valid config key must consist of alphanumeric "
                                   "characters, '-', '_' or '.'"))
        if total > 1024 * 1024:
            errors.append(("data", "TooLong", None, "must have at most 1048576 bytes"))
    elif resource == "events":
        errors += _event_errors(obj)
    return errors


def _event_errors(event: dict) -> list[FieldError]:
    """legacyValidateEvent (pkg/apis/core/validation/events.go) for core/v1 Events without an
    eventTime: the involved object's namespace must be the Event's (an involved object with no
    namespace only in ``default``); its kind and name must be set and its name a valid object
    name; a reason is required."""
    errors: list[FieldError] = []
    namespace = (event.get("metadata") or {}).get("namespace") or ""
    involved = event.get("involvedObject")
    if not isinstance(involved, dict):
        return [("involvedObject", "Required", None, None)]
    inv_ns = involved.get("namespace") or ""
    if (inv_ns and inv_ns != namespace) or (not inv_ns and namespace not in ("", "default")):
        errors.append(("involvedObject.namespace", "Invalid", inv_ns,
                       "does not match event.namespace"))
    kind, name = involved.get("kind"), involved.get("name")
    if not isinstance(kind, str) or not kind:
        errors.append(("involvedObject.kind", "Required", None, None))
    elif not re.fullmatch(r"[A-Z][A-Za-z0-9]*", kind):
        errors.append(("involvedObject.kind", "Invalid", kind, "must be a Kind (CamelCase)"))
    if not isinstance(name, str) or not name:
        errors.append(("involvedObject.name", "Required", None, None))
    elif len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
        errors.append(("involvedObject.name", "Invalid", name,
                       "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                       "characters, '-' or '.'"))
    if not event.get("reason"):
        errors.append(("reason", "Required", None, None))
    if event.get("type") not in (None, "", "Normal", "Warning"):
        errors.append(("type", "Invalid", event.get("type"),
                       'supported values: "Normal", "Warning"'))
    return errors


# --------------------------------------------------------------------------------------------
# helpers


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "BadRequest", f"invalid JSON in the request body: {exc}") from None


def _pod_cpu_m(pod: dict) -> int:
    total = Decimal(0)
    for c in (pod.get("spec") or {}).get("containers") or []:
        cpu = ((c.get("resources") or {}).get("requests") or {}).get("cpu")
        if cpu is not None:
            total += parse_quantity(cpu)
    return int((total * 1000).to_integral_value(rounding="ROUND_CEILING"))


def _millis(millicores: int) -> str:
    """Canonical quantity of a CPU amount: 2000 -> ``2``, 1500 -> ``1500m``."""
    return str(millicores // 1000) if millicores % 1000 == 0 else f"{millicores}m"


def _drop_generation(resource: str, stored: dict) -> None:
    """Leases and ConfigMaps have no metadata.generation (their strategies do not set it)."""
    if resource in ("leases", "configmaps"):
        stored.get("metadata", {}).pop("generation", None)


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


def reason_for(code: int) -> str:
    return {
        500: "InternalError",
        502: "BadGateway",
        503: "ServiceUnavailable",
        504: "Timeout",
        429: "TooManyRequests",
        403: "Forbidden",
        409: "Conflict",
    }.get(code, "Unknown")


def status_body(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body
