"""HTTP front of the fake API server: authentication, RBAC and injected faults in front of the
product's handlers (:class:`surgecast.offline.apiserver.ApiHandlers`, which the backtest's
in-process port calls too), in the order kube-apiserver applies them.

Served with ``ThreadingHTTPServer`` on 127.0.0.1 and a free port (port 0: nothing can race for
it), and meant to be driven only through the official client
(``kubernetes.client.Configuration(host=server.url, api_key={"authorization": "Bearer ..."})``).
Paths served: those of :mod:`surgecast.offline.apiserver`, and ``/version``.

The request pipeline (staging/src/k8s.io/apiserver/pkg/server/config.go,
``DefaultBuildHandlerChain``): panic recovery (any unexpected exception answers 500 InternalError
with a Status, never a dropped connection) -> authentication (401) -> authorisation (403) ->
the handlers.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml

from kubeapi import rbac
from surgecast.offline.apiserver import (  # noqa: F401  (parse_quantity: re-exported for tests)
    DEFAULT_VERSION,
    ApiError,
    ApiHandlers,
    Request,
    parse_quantity,
    reason_for,
    status_body,
)
from surgecast.offline.cluster import ClusterModel

# --------------------------------------------------------------------------------------------
# faults


@dataclass
class Fault:
    """Answer ``status`` for the next ``times`` requests whose method and path match; or, with
    ``delay_s``, handle them, move the test clock by ``delay_s`` and lose the answer."""

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
    conflict_path: re.Pattern | None = None
    fired: list[str] = field(default_factory=list)

    def fail(self, path: str, status: int = 503, *, times: int = 1, method: str | None = None):
        """The next ``times`` matching requests get ``status`` (nothing is changed)."""
        self.rules.append(Fault(re.compile(path), method, times, status=status))

    def delay(self, path: str, seconds: float, *, times: int = 1, method: str | None = None):
        """The next ``times`` matching requests are handled (a write is applied), the test clock
        moves by ``seconds`` (the time the answer took) and the answer is lost: the server
        closes the connection without responding, which the client sees as a transport error
        (a timeout, as far as it can tell). No real time passes."""
        self.rules.append(Fault(re.compile(path), method, times, delay_s=float(seconds)))

    def conflict_next_writes(self, n: int, *, path: str | None = None) -> None:
        """The next ``n`` writes to an existing object (patch, update, delete, dry runs too) meet
        a concurrent writer: the object's resourceVersion moves just before the write is
        evaluated, as another client's write would move it. A write that carries the
        resourceVersion it read then meets a genuine 409 Conflict, and a fresh read and retry
        succeeds; a write without a resourceVersion (unconditional) is not conflicted. With
        ``path`` (a regex), only writes to matching paths meet the other writer."""
        self.conflicts = int(n)
        self.conflict_path = None if path is None else re.compile(path)

    def match(self, method: str, path: str) -> Fault | None:
        for rule in self.rules:
            if rule.times > 0 and (rule.method in (None, method)) and rule.path.search(path):
                rule.times -= 1
                self.fired.append(f"{method} {path} -> {rule.status or f'delay {rule.delay_s}s'}")
                return rule
        return None


# --------------------------------------------------------------------------------------------
# the server


class FakeApiServer:
    """The fake API server: ``start()`` serves on 127.0.0.1, ``stop()`` shuts down.

    Args:
        cluster: the objects and controllers.
        rbac_files: manifests (ServiceAccounts, Roles, ClusterRoles and their bindings) whose
            rules the server enforces.
        version: (major, minor) the server reports on ``/version``; before (1, 33) the
            ``pods/resize`` subresource does not exist (404).
    """

    def __init__(
        self,
        cluster: ClusterModel,
        rbac_files: Sequence[Path] = (),
        *,
        version: tuple[int, int] = DEFAULT_VERSION,
    ) -> None:
        self.handlers = ApiHandlers(cluster, version=version, before_write=self._concurrent_writer)
        self.cluster = cluster
        self.version = version
        self.authorizer = rbac.Authorizer.from_files(*rbac_files)
        self.tokens: dict[str, rbac.Identity] = {}
        self.faults = Faults()
        self.log: list[tuple[str, str, int]] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # identities -------------------------------------------------------------------------------

    def issue_token(self, user: str, groups: Iterable[str] = ()) -> str:
        """A bearer token that authenticates as ``user`` with ``groups`` (plus
        ``system:authenticated``, which every authenticated request carries)."""
        if not isinstance(user, str) or not user:
            raise ValueError(f"user: expected a non-empty name, got {user!r}")
        all_groups = tuple(dict.fromkeys([*groups, "system:authenticated"]))
        return self._add_identity(rbac.Identity(user, all_groups))

    def service_account_token(self, namespace: str, name: str) -> str:
        """A token of the service account ``namespace/name`` (its user name and groups as the
        service-account authenticator sets them)."""
        return self._add_identity(rbac.Identity.service_account(namespace, name))

    def revoke_token(self, token: str) -> None:
        """From now on the token is unknown: 401."""
        self.tokens.pop(token, None)

    def _add_identity(self, who: rbac.Identity) -> str:
        digest = hashlib.sha256(f"{len(self.tokens)}:{who.user}".encode()).hexdigest()[:32]
        token = f"fake.{digest}"
        self.tokens[token] = who
        return token

    def add_rbac(self, *documents: dict | str) -> None:
        """More RBAC objects: dicts, or YAML text (multi-document)."""
        for doc in documents:
            if isinstance(doc, str):
                self.authorizer.add_documents(yaml.safe_load_all(doc))
            else:
                self.authorizer.add_documents([doc])

    # life cycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeApiServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # TCP_NODELAY on each connection: a response goes out as headers, then body (two
            # writes); with Nagle's algorithm the body waits for the client's delayed ACK of
            # the headers, ~40 ms a request on Linux loopback (the replay-equivalence test
            # makes thousands of requests).
            disable_nagle_algorithm = True

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
        fault = None
        try:
            parts = urlsplit(h.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            raw = _read_body(h)
            fault = self.faults.match(h.command, parts.path)
            if fault is not None and fault.status is not None:
                raise ApiError(fault.status, reason_for(fault.status), "injected failure")
            who = self._authenticate(h.headers.get("Authorization"))
            if parts.path in ("/version", "/version/"):
                status, body = 200, self._version_body()
            else:
                req = self.handlers.route(h.command, parts.path, who)
                self._authorize(req)
                content_type = h.headers.get("Content-Type") or ""
                status, body = self.handlers.dispatch(req, query, raw, content_type)
        except ApiError as exc:
            status, body = exc.code, status_body(exc.code, exc.reason, exc.message, exc.details)
        except Exception as exc:  # the server answers every request
            # WithPanicRecovery (staging/src/k8s.io/apiserver/pkg/server/filters/wrap.go) and
            # NewInternalError: a handler failure is a 500 Status, not a dropped connection.
            status, body = 500, status_body(
                500,
                "InternalError",
                f"Internal error occurred: {type(exc).__name__}: {exc}",
                {"causes": [{"message": f"{type(exc).__name__}: {exc}"}]},
            )
        self.log.append((h.command, h.path, status))
        if fault is not None and fault.delay_s:
            # The request was handled; its answer takes delay_s on the test clock and never
            # arrives: close the connection without a response.
            self.cluster.clock.advance(fault.delay_s)
            h.close_connection = True
            return
        data = json.dumps(body).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and left

    def _authenticate(self, header: str | None) -> rbac.Identity:
        """Bearer token -> identity; none or unknown: 401 (anonymous requests disabled)."""
        scheme, _, token = (header or "").strip().partition(" ")
        who = self.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if who is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        return who

    def _version_body(self) -> dict:
        major, minor = self.version
        return {
            "major": str(major),
            "minor": str(minor),
            "gitVersion": f"v{major}.{minor}.0",
            "gitCommit": "0" * 40,
            "gitTreeState": "clean",
            "buildDate": "2025-04-23T00:00:00Z",
            "goVersion": "go1.24.2",
            "compiler": "gc",
            "platform": "linux/amd64",
        }

    def _authorize(self, req: Request) -> None:
        resource = req.resource + (f"/{req.subresource}" if req.subresource else "")
        if self.authorizer.allowed(
            req.who, req.namespace, req.group, resource, req.verb, req.name
        ):
            return
        # responsewriters.ForbiddenStatusError and errors.NewForbidden
        # (staging/src/k8s.io/apiserver/pkg/endpoints/handlers/responsewriters/errors.go)
        what = f'{req.qualified} "{req.name}"' if req.name else req.qualified
        raise ApiError(
            403,
            "Forbidden",
            f'{what} is forbidden: User "{req.who.user}" cannot {req.verb} resource '
            f'"{resource}" in API group "{req.group}" in the namespace "{req.namespace}"',
            {"name": req.name or "", "group": req.group, "kind": resource},
        )

    def _concurrent_writer(self, req: Request, obj: dict) -> dict:
        """An injected conflict: another client writes the object first (its resourceVersion
        moves), so this request's precondition, if it carries one, is stale."""
        if self.faults.conflicts <= 0:
            return obj
        if self.faults.conflict_path is not None and not self.faults.conflict_path.search(
            req.path
        ):
            return obj
        self.faults.conflicts -= 1
        self.faults.fired.append(f"concurrent write before {req.method} {req.path}")
        return self.cluster.put(req.resource, copy.deepcopy(obj))


# --------------------------------------------------------------------------------------------


def _read_body(h: BaseHTTPRequestHandler) -> bytes:
    text = h.headers.get("Content-Length") or "0"
    if not text.isdigit():
        raise ApiError(400, "BadRequest", f"invalid Content-Length: {text!r}")
    length = int(text)
    if length > 3 * 1024 * 1024:  # the apiserver's request body limit (3 MiB)
        raise ApiError(413, "RequestEntityTooLarge", "request entity too large")
    return h.rfile.read(length) if length else b""
