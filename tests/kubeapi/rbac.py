"""Authentication and RBAC authorisation as kube-apiserver performs them.

Authentication ("Authenticating", https://kubernetes.io/docs/reference/access-authn-authz/
authentication/): every request carries ``Authorization: Bearer <token>``; a token maps to a
user name and groups. A service account's token authenticates as
``system:serviceaccount:<namespace>:<name>`` with the groups ``system:serviceaccounts``,
``system:serviceaccounts:<namespace>`` and ``system:authenticated``
(staging/src/k8s.io/apiserver/pkg/authentication/serviceaccount/util.go). Anonymous requests are
refused (401), as on a server started with ``--anonymous-auth=false``.

Authorisation ("Using RBAC Authorization", https://kubernetes.io/docs/reference/
access-authn-authz/rbac/), following plugin/pkg/auth/authorizer/rbac/rbac.go and
pkg/registry/rbac/validation/rule.go:

* ClusterRoleBindings grant their ClusterRole's rules in every namespace; RoleBindings grant a
  Role of their own namespace, or a ClusterRole scoped to the RoleBinding's namespace.
* A Role or ClusterRole that no binding references grants nothing.
* Subjects: ``User`` (by name), ``Group`` (by group), ``ServiceAccount`` (namespace defaults to
  the binding's, as ``appliesToUser`` does).
* Rules match verb, API group, resource (``pods/resize`` for a subresource, ``*`` and ``*/sub``
  wildcards, pkg/apis/rbac/v1/evaluation_helpers.go) and resourceNames. A rule with
  resourceNames never matches a request without a name (list, create), as the real server.
* Members of ``system:masters`` are always allowed (the privileged-group authorizer).

Rules are loaded from the same manifests the cluster gets (``deploy/*.yaml``), so a verb the
actuator needs but the manifests do not grant fails here exactly as on a cluster: 403.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

SA_PREFIX = "system:serviceaccount:"
MASTERS = "system:masters"
RBAC_KINDS = ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")


class RbacDocumentError(ValueError):
    """An RBAC document the API server would not accept (kind, name or fields missing)."""


@dataclass(frozen=True)
class Identity:
    """An authenticated user: name and groups (``user.Info`` of the apiserver)."""

    user: str
    groups: tuple[str, ...] = ("system:authenticated",)

    @classmethod
    def service_account(cls, namespace: str, name: str) -> Identity:
        return cls(
            f"{SA_PREFIX}{namespace}:{name}",
            ("system:serviceaccounts", f"system:serviceaccounts:{namespace}",
             "system:authenticated"),
        )


@dataclass(frozen=True)
class Rule:
    """One PolicyRule of a Role or ClusterRole."""

    api_groups: frozenset[str]
    resources: frozenset[str]
    verbs: frozenset[str]
    resource_names: frozenset[str]

    def allows(self, group: str, resource: str, verb: str, name: str | None) -> bool:
        return (
            ("*" in self.verbs or verb in self.verbs)
            and ("*" in self.api_groups or group in self.api_groups)
            and any(_resource_matches(r, resource) for r in self.resources)
            # RuleAllows: a rule with resourceNames needs a name to match; list and create
            # requests carry none, so such a rule never grants them.
            and (not self.resource_names or (bool(name) and name in self.resource_names))
        )


def _resource_matches(rule_resource: str, requested: str) -> bool:
    """ResourceMatches of evaluation_helpers.go: exact, ``*``, or ``*/<subresource>``."""
    if rule_resource in ("*", requested):
        return True
    if "/" not in requested:
        return False
    sub = requested.split("/", 1)[1]
    return rule_resource == f"*/{sub}"


@dataclass(frozen=True)
class Binding:
    """A RoleBinding (``namespace`` set) or ClusterRoleBinding (``namespace`` None)."""

    namespace: str | None
    role_kind: str
    role_name: str
    subjects: tuple[dict, ...]

    def applies_to(self, who: Identity) -> bool:
        for s in self.subjects:
            kind, name = s.get("kind"), s.get("name")
            if kind == "User" and name == who.user:
                return True
            if kind == "Group" and name in who.groups:
                return True
            if kind == "ServiceAccount":
                ns = s.get("namespace") or self.namespace
                if ns and who.user == f"{SA_PREFIX}{ns}:{name}":
                    return True
        return False


class Authorizer:
    """Roles, ClusterRoles and their bindings; :meth:`allowed` decides one request."""

    def __init__(self) -> None:
        self.roles: dict[tuple[str, str], list[Rule]] = {}
        self.cluster_roles: dict[str, list[Rule]] = {}
        self.bindings: list[Binding] = []
        self.service_accounts: set[tuple[str, str]] = set()

    @classmethod
    def from_files(cls, *paths: Path) -> Authorizer:
        auth = cls()
        for path in paths:
            auth.add_documents(yaml.safe_load_all(Path(path).read_text()))
        return auth

    def add_documents(self, docs: Iterable[dict | None]) -> None:
        """Add RBAC objects and ServiceAccounts (other kinds are ignored, as ``kubectl apply``
        of a mixed manifest would create them elsewhere).

        Raises:
            RbacDocumentError: a Role/Binding without a name, namespace, roleRef or rules shape
                the API server requires.
        """
        for doc in docs:
            if not doc:
                continue
            if not isinstance(doc, dict):
                raise RbacDocumentError(f"not a Kubernetes object: {doc!r:.80}")
            kind, meta = doc.get("kind"), doc.get("metadata") or {}
            name = meta.get("name")
            if kind not in RBAC_KINDS and kind != "ServiceAccount":
                continue
            if not name:
                raise RbacDocumentError(f"{kind}: metadata.name: Required value")
            namespace = meta.get("namespace", "default")
            if kind == "ServiceAccount":
                self.service_accounts.add((namespace, name))
            elif kind == "Role":
                self.roles[(namespace, name)] = _rules(doc, kind, name)
            elif kind == "ClusterRole":
                self.cluster_roles[name] = _rules(doc, kind, name)
            else:
                ref = doc.get("roleRef") or {}
                if ref.get("kind") not in ("Role", "ClusterRole") or not ref.get("name"):
                    raise RbacDocumentError(f"{kind} {name}: roleRef: Required value")
                if kind == "ClusterRoleBinding" and ref["kind"] != "ClusterRole":
                    raise RbacDocumentError(
                        f"{kind} {name}: roleRef.kind: Unsupported value: {ref['kind']!r}"
                    )
                self.bindings.append(
                    Binding(
                        namespace if kind == "RoleBinding" else None,
                        ref["kind"],
                        ref["name"],
                        tuple(doc.get("subjects") or ()),
                    )
                )

    def _rules_for(self, who: Identity, namespace: str | None) -> Iterable[Rule]:
        for b in self.bindings:
            if b.namespace is not None and b.namespace != namespace:
                continue
            if not b.applies_to(who):
                continue
            if b.role_kind == "ClusterRole":
                yield from self.cluster_roles.get(b.role_name, [])
            else:
                yield from self.roles.get((b.namespace, b.role_name), [])

    def allowed(
        self,
        who: Identity,
        namespace: str | None,
        group: str,
        resource: str,
        verb: str,
        name: str | None = None,
    ) -> bool:
        """``resource`` is ``pods`` or ``pods/resize`` (resource/subresource), as in Roles."""
        if MASTERS in who.groups:
            return True
        return any(r.allows(group, resource, verb, name) for r in self._rules_for(who, namespace))


def _rules(doc: dict, kind: str, name: str) -> list[Rule]:
    out = []
    for i, rule in enumerate(doc.get("rules") or []):
        if not isinstance(rule, dict) or not rule.get("verbs"):
            raise RbacDocumentError(f"{kind} {name}: rules[{i}].verbs: Required value")
        out.append(
            Rule(
                frozenset(rule.get("apiGroups") or []),
                frozenset(rule.get("resources") or []),
                frozenset(rule["verbs"]),
                frozenset(rule.get("resourceNames") or []),
            )
        )
    return out
