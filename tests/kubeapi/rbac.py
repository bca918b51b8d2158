"""RBAC as the API server enforces it for one ServiceAccount: the union of the Roles' rules.

Rules are read from the manifests in ``deploy/`` (the same files a cluster gets), so a verb the
actuator needs but the manifests do not grant fails here exactly as it would on a cluster:
403 Forbidden.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class Rule:
    namespace: str
    api_groups: frozenset[str]
    resources: frozenset[str]
    verbs: frozenset[str]
    resource_names: frozenset[str]

    def allows(self, namespace: str, group: str, resource: str, verb: str, name: str | None):
        return (
            namespace == self.namespace
            and (group in self.api_groups or "*" in self.api_groups)
            and (resource in self.resources or "*" in self.resources)
            and (verb in self.verbs or "*" in self.verbs)
            and (not self.resource_names or name in self.resource_names)
        )


def load_rules(*paths: Path) -> list[Rule]:
    """Every rule of every Role in the YAML files (multi-document)."""
    rules: list[Rule] = []
    for path in paths:
        for doc in yaml.safe_load_all(Path(path).read_text()):
            if not doc or doc.get("kind") != "Role":
                continue
            namespace = doc["metadata"].get("namespace", "default")
            for rule in doc.get("rules") or []:
                rules.append(
                    Rule(
                        namespace,
                        frozenset(rule.get("apiGroups") or []),
                        frozenset(rule.get("resources") or []),
                        frozenset(rule.get("verbs") or []),
                        frozenset(rule.get("resourceNames") or []),
                    )
                )
    return rules


def allowed(rules, namespace, group, resource, verb, name=None) -> bool:
    """``resource`` is ``pods`` or ``pods/resize`` (resource/subresource), as in Roles."""
    return any(r.allows(namespace, group, resource, verb, name) for r in rules)
