"""The three patch types of the Kubernetes API, as far as the actuator and its tests use them.

* JSON merge patch (RFC 7386, ``application/merge-patch+json``): objects merge recursively, null
  deletes a key, anything else (lists included) replaces.
* Strategic merge patch (``application/strategic-merge-patch+json``): as merge patch, except that
  lists with a merge key in the Kubernetes schema merge item by item on that key (containers,
  env, ports and conditions below); ``$patch: delete`` / ``$patch: replace`` directives on list
  items are honoured.
* JSON patch (RFC 6902, ``application/json-patch+json``): add, remove, replace, move, copy, test.

Errors carry the status the real server answers with
(staging/src/k8s.io/apiserver/pkg/endpoints/handlers/patch.go): a patch document that cannot be
decoded is 400 BadRequest; a JSON patch that does not apply is 422 Invalid ("the server rejected
our request due to an error in our request"); a strategic merge list item without its merge key
is a plain error there, which the server answers as 500 with an empty reason
(``interpretStrategicMergePatchError`` passes it through, ``ErrorToAPIStatus`` makes it 500).
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
REJECTED = "the server rejected our request due to an error in our request"


class PatchError(ValueError):
    """The patch cannot be applied.

    Attributes:
        code: HTTP status the server answers with (400, 422 or 500).
        reason: the Status reason (``BadRequest``, ``Invalid`` or ``""``).
        cause: the underlying message (a Status cause), or None.
    """

    def __init__(self, message: str, *, code: int = 422, reason: str = "Invalid",
                 cause: str | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.cause = code, reason, cause


def _rejected(cause: str) -> PatchError:
    return PatchError(REJECTED, code=422, reason="Invalid", cause=cause)


def go_value(value: Any) -> str:
    """``fmt.Sprintf("%v")`` of a decoded JSON value, as Go prints it in error messages."""
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_value(v)}" for k, v in sorted(value.items())) + "]"
    if isinstance(value, list):
        return "[" + " ".join(go_value(v) for v in value) + "]"
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


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
            # mergepatch.ErrNoMergeKey's text (staging/src/k8s.io/apimachinery/pkg/util/
            # mergepatch/errors.go); the server answers it as a 500 with no reason.
            raise PatchError(
                f"map: {go_value(item)} does not contain declared merge key: {merge_key}",
                code=500,
                reason="",
            )
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


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise _rejected(f"JSON pointer must be empty or start with a \"/\": {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def _index(container: list, part: str, *, insert: bool = False) -> int:
    if insert and part == "-":
        return len(container)
    if not part.isdigit():
        raise _rejected(f"Unable to access invalid index: {part}")
    i = int(part)
    if i > len(container) or (i == len(container) and not insert):
        raise _rejected(f"Unable to access invalid index: {i}")
    return i


def _parent(doc: Any, parts: list[str], path: str) -> Any:
    node = doc
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[_index(node, part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise _rejected(f"doc is missing path: {path!r}: missing value")
    if not isinstance(node, dict | list):
        raise _rejected(f"doc is missing path: {path!r}: missing value")
    return node


def _get(parent: Any, last: str, path: str) -> Any:
    if isinstance(parent, list):
        return parent[_index(parent, last)]
    if last not in parent:
        raise _rejected(f"doc is missing key: {path}: missing value")
    return parent[last]


def _remove(parent: Any, last: str, path: str) -> Any:
    if isinstance(parent, list):
        return parent.pop(_index(parent, last))
    if last not in parent:
        raise _rejected(f"remove operation does not apply: doc is missing key: {path}")
    return parent.pop(last)


def _add(parent: Any, last: str, value: Any, *, replace: bool = False) -> None:
    if isinstance(parent, list):
        i = _index(parent, last, insert=not replace)
        if replace:
            parent[i] = value
        else:
            parent.insert(i, value)
    else:
        parent[last] = value


def json_patch(target: Any, ops: list) -> Any:
    """RFC 6902 add / remove / replace / move / copy / test.

    Raises:
        PatchError: 422 when an operation does not apply (missing path, failed test, unknown
            op), as the server answers a patch it decoded but could not apply.
    """
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict):
            raise PatchError(f"not a JSON patch operation: {go_value(op)}", code=400,
                             reason="BadRequest")
        kind, path = op.get("op"), op.get("path")
        if kind not in ("add", "remove", "replace", "move", "copy", "test"):
            raise _rejected(f"Unexpected kind: {kind}")
        parts = _pointer(path)
        if not parts:
            raise _rejected("JSON patch: the whole document cannot be replaced")
        if kind in ("add", "replace", "test") and "value" not in op:
            raise _rejected(f"{kind} operation: missing value")
        parent, last = _parent(doc, parts, path), parts[-1]
        if kind == "test":
            if _get(parent, last, path) != op["value"]:
                raise _rejected(f"testing value {path} failed: test failed")
        elif kind == "add":
            _add(parent, last, copy.deepcopy(op["value"]))
        elif kind == "replace":
            if isinstance(parent, dict) and last not in parent:
                raise _rejected(f"replace operation does not apply: doc is missing key: {path}")
            _add(parent, last, copy.deepcopy(op["value"]), replace=True)
        elif kind == "remove":
            _remove(parent, last, path)
        else:  # move, copy
            source = op.get("from")
            from_parts = _pointer(source)
            if not from_parts:
                raise _rejected(f"{kind} operation: invalid from {source!r}")
            from_parent = _parent(doc, from_parts, source)
            if kind == "move":
                value = _remove(from_parent, from_parts[-1], source)
            else:
                value = copy.deepcopy(_get(from_parent, from_parts[-1], source))
            _add(_parent(doc, parts, path), last, value)
    return doc


def apply_patch(target: dict, body: Any, content_type: str) -> dict:
    """Apply a patch of ``content_type`` to ``target``.

    Raises:
        PatchError: malformed patch (400), one that does not apply (422) or a strategic list
            item without its merge key (500).
        LookupError: a content type the API does not take (the caller answers 415).
    """
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/merge-patch+json":
        if not isinstance(body, dict):
            # evanphx/json-patch MergePatch: ErrBadJSONPatch, answered as BadRequest.
            raise PatchError("Invalid JSON Patch", code=400, reason="BadRequest")
        return merge_patch(target, body)
    if kind == "application/strategic-merge-patch+json":
        if not isinstance(body, dict):
            raise PatchError("invalid JSON document", code=400, reason="BadRequest")
        return strategic_merge_patch(target, body)
    if kind == "application/json-patch+json":
        if not isinstance(body, list):
            raise PatchError(
                f"json: cannot unmarshal {_json_kind(body)} into Go value of type "
                "jsonpatch.Patch",
                code=400,
                reason="BadRequest",
            )
        return json_patch(target, body)
    raise LookupError(kind)


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "null" if value is None else "array"
