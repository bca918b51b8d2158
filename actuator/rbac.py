"""Least-privilege RBAC generated from the service config: the actuator may touch exactly the
allow-listed workloads.

One Role and RoleBinding per namespace of the fleet (a namespaced Role, never a ClusterRole), for
the actuator's ServiceAccount. Rules with ``resourceNames`` wherever Kubernetes can scope them
(docs "Using RBAC Authorization", "Referring to resources": ``resourceNames`` cannot restrict
``list``, ``watch`` or ``create``, whose requests carry no object name at authorisation time):

* ``deployments`` get, ``deployments/scale`` get + patch: only the allow-listed Deployments;
* ``horizontalpodautoscalers`` get + patch: only the HPAs the config names; get + ``list`` (no
  patch) when a Deployment's HPA is looked up rather than named, so an HPA the config does not
  name is found and recorded but never moved;
* ``deployments`` patch only for the services with ``rewrite_template``, scoped to theirs;
* ``leases`` get + patch: only the services' Leases (``surgecast-<service>``); ``create`` cannot
  be scoped, so it is a rule of its own;
* ``configmaps`` get: only the kill switch;
* ``pods`` get + list and ``pods/resize`` patch: pods have generated names, so these cannot be
  scoped by name; the actuator only resizes pods selected by an allow-listed Deployment's
  selector;
* ``events`` create (unscoped, as every controller's).

With ``bridge=True`` the in-place bridge controller's ServiceAccount (``surgecast-bridge``) gets
its own Role per namespace (:func:`bridge_manifests`): Deployments get, pods get + list,
``pods/resize`` patch, its Leases ``surgecast-bridge-<service>`` get + patch, the
pipeline's Leases get (to give way while a run holds one), Lease create, events create and the
kill switch get. Never ``deployments/scale`` or HPAs: the bridge never touches replicas.
"""

from __future__ import annotations

from collections.abc import Sequence

from actuator.lease import lease_name
from actuator.spec import ServiceSpec

ACCOUNT = "surgecast-actuator"
BRIDGE_ACCOUNT = "surgecast-bridge"


def rbac_manifests(
    services: Sequence[ServiceSpec],
    *,
    account: str = ACCOUNT,
    account_namespace: str | None = None,
    bridge: bool = False,
) -> list[dict]:
    """ServiceAccount, and per namespace a Role and RoleBinding granting only what the actuator
    needs for ``services``.

    Args:
        services: the service configs (their namespaces, Deployments, HPAs, kill switches).
        account: the actuator's ServiceAccount.
        account_namespace: where the ServiceAccount lives (default: the first service's
            namespace); the RoleBindings of other namespaces bind it across namespaces.
        bridge: also the bridge controller's manifests (:func:`bridge_manifests`).

    Returns:
        Plain manifests, in apply order.
    """
    home, docs, by_ns, switches = _account(services, account, account_namespace)
    for ns in sorted(set(by_ns) | set(switches)):
        docs.append(_role(ns, by_ns.get(ns, []), account, sorted(switches.get(ns, ()))))
        docs.append(_binding(ns, account, home))
    if bridge:
        docs += bridge_manifests(services, account_namespace=home)
    return docs


def bridge_manifests(
    services: Sequence[ServiceSpec],
    *,
    account: str = BRIDGE_ACCOUNT,
    account_namespace: str | None = None,
) -> list[dict]:
    """The bridge controller's ServiceAccount, and per namespace its Role and RoleBinding:
    in-place resizes of the services' pods and its own Leases, nothing that moves replicas.

    Args:
        services: the service configs.
        account: the bridge's ServiceAccount.
        account_namespace: where it lives (default: the first service's namespace).
    """
    home, docs, by_ns, switches = _account(services, account, account_namespace)
    for ns in sorted(set(by_ns) | set(switches)):
        rules = []
        mine = by_ns.get(ns, [])
        if mine:
            deployments = sorted({w.deployment for s in mine for w in s.workloads})
            bridge_leases = sorted({lease_name(f"bridge-{s.name}") for s in mine})
            pipeline_leases = sorted({lease_name(s.name) for s in mine})
            rules += [
                _rule("apps", "deployments", ["get"], deployments),
                _rule("", "pods", ["get", "list"]),
                _rule("", "pods/resize", ["patch"]),
                _rule("coordination.k8s.io", "leases", ["get", "patch"], bridge_leases),
                _rule("coordination.k8s.io", "leases", ["get"], pipeline_leases),
                _rule("coordination.k8s.io", "leases", ["create"]),
                _rule("", "events", ["create"]),
            ]
        if switches.get(ns):
            rules.append(_rule("", "configmaps", ["get"], sorted(switches[ns])))
        docs.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": account, "namespace": ns},
                "rules": rules,
            }
        )
        docs.append(_binding(ns, account, home))
    return docs



def _account(
    services: Sequence[ServiceSpec], account: str, account_namespace: str | None
) -> tuple[str, list[dict], dict[str, list[ServiceSpec]], dict[str, set[str]]]:
    """(the account's namespace, [its ServiceAccount], services by namespace, kill switches by
    namespace): what every set of manifests starts from."""
    if not services:
        raise ValueError("rbac: no services in the config")
    home = account_namespace or services[0].namespace
    docs: list[dict] = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": account, "namespace": home},
        }
    ]
    by_ns: dict[str, list[ServiceSpec]] = {}
    for svc in services:
        by_ns.setdefault(svc.namespace, []).append(svc)
    return home, docs, by_ns, _switches(services)

def _switches(services: Sequence[ServiceSpec]) -> dict[str, set[str]]:
    switches: dict[str, set[str]] = {}
    for svc in services:
        ns, name = svc.kill_switch_ref
        switches.setdefault(ns, set()).add(name)
    return switches


def _binding(namespace: str, account: str, home: str) -> dict:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": account, "namespace": namespace},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": home}],
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": account,
        },
    }


def _role(
    namespace: str, services: Sequence[ServiceSpec], account: str, switches: list[str]
) -> dict:
    if not services:  # a namespace that holds only a fleet-wide kill switch
        return {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": account, "namespace": namespace},
            "rules": [_rule("", "configmaps", ["get"], switches)],
        }
    deployments = sorted({w.deployment for s in services for w in s.workloads})
    hpas = sorted({w.hpa for s in services for w in s.workloads if w.hpa})
    look_up_hpas = any(w.hpa is None for s in services for w in s.workloads)
    leases = sorted({lease_name(s.name) for s in services})
    rules: list[dict] = [
        _rule("apps", "deployments", ["get"], deployments),
        _rule("apps", "deployments/scale", ["get", "patch"], deployments),
        _rule("", "pods", ["get", "list"]),
        _rule("", "pods/resize", ["patch"]),
    ]
    if hpas:
        rules.append(_rule("autoscaling", "horizontalpodautoscalers", ["get", "patch"], hpas))
    if look_up_hpas:
        # Finding the HPA that targets a Deployment needs list, which names cannot scope; no
        # unscoped patch is granted, so an HPA is moved only if the config names it.
        rules.append(_rule("autoscaling", "horizontalpodautoscalers", ["get", "list"]))
    rewrites = sorted(
        {w.deployment for s in services if s.rewrite_template for w in s.workloads}
    )
    if rewrites:
        rules.append(_rule("apps", "deployments", ["patch"], rewrites))
    rules += [
        _rule("coordination.k8s.io", "leases", ["get", "patch"], leases),
        _rule("coordination.k8s.io", "leases", ["create"]),
        _rule("", "events", ["create"]),
    ]
    if switches:
        rules.append(_rule("", "configmaps", ["get"], switches))
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": account, "namespace": namespace},
        "rules": rules,
    }


def _rule(group: str, resource: str, verbs: list[str], names: list[str] | None = None) -> dict:
    rule: dict = {"apiGroups": [group], "resources": [resource], "verbs": verbs}
    if names:
        rule["resourceNames"] = list(names)
    return rule
