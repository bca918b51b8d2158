"""The three patch types of the Kubernetes API, as far as the actuator and its tests use them.

* JSON merge patch (RFC 7386, ``application/merge-patch+json``): objects merge recursively, null
  deletes a key, anything else (lists included) replaces.
* Strategic merge patch (``application/strategic-merge-patch+json``): as merge patch, except that
  lists with a merge key in the Kubernetes schema merge item by item on that key (containers,
  env, ports and conditions below); ``$patch: delete`` / ``$patch: replace`` directives on list
  items are honoured.
* JSON patch (RFC 6902, ``application/json-patch+json``): add, remove, replace, test.
"""

from __future__ import annotations

import copy
from typing import Any

MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "ports": "containerPort",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "conditions": "type",
    "resizePolicy": "resourceName",
    "containerStatuses": "name",
}


class PatchError(ValueError):
    """The patch cannot be applied (422 Invalid or 400 BadRequest)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def strategic_merge_patch(target: Any, patch: Any, key: str | None = None) -> Any:
    """Strategic merge for the lists in :data:`MERGE_KEYS`, merge patch elsewhere."""
    if isinstance(patch, dict):
        out = copy.deepcopy(target) if isinstance(target, dict) else {}
        for k, value in patch.items():
            if k.startswith("$"):
                continue
            if value is None:
                out.pop(k, None)
            else:
                out[k] = strategic_merge_patch(out.get(k), value, k)
        return out
    if isinstance(patch, list) and key in MERGE_KEYS and isinstance(target, list):
        return _merge_list(target, patch, MERGE_KEYS[key])
    return copy.deepcopy(patch)


def _merge_list(target: list, patch: list, merge_key: str) -> list:
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return [copy.deepcopy(p) for p in patch if not (isinstance(p, dict) and "$patch" in p)]
    out = copy.deepcopy(target)
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise PatchError(f"list item without merge key {merge_key!r}: {item!r}")
        index = next(
            (
                i
                for i, t in enumerate(out)
                if isinstance(t, dict) and t.get(merge_key) == item[merge_key]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                out.pop(index)
            continue
        if index is None:
            out.append(strategic_merge_patch({}, item))
        else:
            out[index] = strategic_merge_patch(out[index], item)
    return out


def json_patch(target: Any, ops: list) -> Any:
    """RFC 6902 add / remove / replace / test."""
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"not a JSON patch operation: {op!r}")
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        if not parts:
            raise PatchError("JSON patch: the whole document cannot be replaced")
        parent = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.get(part)
            if parent is None:
                raise PatchError(f"JSON patch: no such path {op['path']}")
        last = parts[-1]
        kind = op["op"]
        if kind == "test":
            value = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if value != op.get("value"):
                raise PatchError(f"JSON patch: test failed at {op['path']}")
        elif kind in ("add", "replace"):
            if isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                if kind == "add":
                    parent.insert(index, op["value"])
                else:
                    parent[index] = op["value"]
            else:
                if kind == "replace" and last not in parent:
                    raise PatchError(f"JSON patch: replace of missing {op['path']}")
                parent[last] = op["value"]
        elif kind == "remove":
            if isinstance(parent, list):
                parent.pop(int(last))
            elif last in parent:
                del parent[last]
            else:
                raise PatchError(f"JSON patch: remove of missing {op['path']}")
        else:
            raise PatchError(f"JSON patch: unsupported op {kind!r}")
    return doc


def apply_patch(target: dict, body: Any, content_type: str) -> dict:
    """Apply a patch of ``content_type`` to ``target``.

    Raises:
        PatchError: malformed patch, or a content type the API does not take (the caller
            answers 415 for the latter).
    """
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/merge-patch+json":
        return merge_patch(target, body)
    if kind == "application/strategic-merge-patch+json":
        return strategic_merge_patch(target, body)
    if kind == "application/json-patch+json":
        if not isinstance(body, list):
            raise PatchError("JSON patch: body must be a list of operations")
        return json_patch(target, body)
    raise LookupError(kind)
