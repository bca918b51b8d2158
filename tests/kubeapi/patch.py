"""The patch types the fake API server applies: the product's (:mod:`surgecast.offline.patch`)."""

from surgecast.offline.patch import (  # noqa: F401
    PatchError,
    apply_patch,
    go_value,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)
