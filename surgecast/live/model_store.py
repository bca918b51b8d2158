"""Fitted models in the artifact store, as data only: written atomically, read defensively.

Layout (one fitted model, written by the run at ``now``)::

    <root>/models/<service>/<YYYY-MM-DD>/<HHMMSS>.json           metadata + state document
    <root>/models/<service>/<YYYY-MM-DD>/<HHMMSS>.residuals.npy  conformal residuals (float64)
    <root>/models/<service>/<YYYY-MM-DD>/<HHMMSS>.<learner>.txt  LightGBM model text

The metadata (:class:`ModelMeta`) embeds the model's state document
(``forecasting.model_state.StateDoc``), so the store's listing of ``.json`` artifacts still
finds one entry per model. The state files are written first, each atomically
(``ArtifactStore.write_bytes``), and the metadata last, so a metadata file only ever names a
complete model. The metadata records the size and SHA-256 of each state file; a file that
differs (truncated, rewritten half-way, from another model) is refused. The hashes guard
integrity, not authenticity: whoever can write the store can write both, which is why nothing
stored is ever executed (no pickle anywhere; see ``forecasting.model_state``).

Reading trusts no location a file names. The metadata's own URI must resolve inside the store
root under ``models/<service>/<day>/`` (same scheme, no ``..``, no symlink leading out of a
local root); the state files' locations are derived from it, never read from the metadata, and
their names come from a fixed pattern (a word and ``.npy`` or ``.txt``). Every read is capped
in size. Anything wrong raises :class:`StoredModelError` with the reason, and the forecast
stage refits.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from forecasting.errors import first_problem
from forecasting.model_state import (
    FILE_NAME,
    ModelStateError,
    StateDoc,
    dump_state,
    load_state,
    state_files,
    state_from_files,
)
from surgecast.live.artifacts import ArtifactStore, Entry
from surgecast.settings import ServiceSettings

MODEL_FORMAT = 2
"""Version of the stored model layout. 1 was a pickle (never read: refitted); 2 is the layout
above. A model of another version is refused and refitted."""

MAX_META_BYTES = 64 * 1024
"""Largest metadata file read (a real one is under 1 KiB)."""

MAX_FILE_BYTES = 64 * 1024 * 1024
"""Largest state file read. A booster of 300 trees of 31 leaves is about 1 MB of text."""

MAX_FILES = 8
"""State files one model may list (a hybrid has four)."""

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_META_NAME = re.compile(r"^(\d{6})\.json$")


class StoredModelError(ValueError):
    """A stored model that must not be used; the message says why (the caller refits)."""


# --------------------------------------------------------------------------------------------
# the metadata schema


class StoredFile(BaseModel):
    """One state file as written: its size (bytes) and SHA-256 (hex)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    bytes: int = Field(ge=0, le=MAX_FILE_BYTES)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ModelMeta(BaseModel):
    """``<HHMMSS>.json``: what was fitted, on what, and the files that hold it.

    Attributes:
        format: :data:`MODEL_FORMAT`.
        service: the service the model forecasts (also the folder it lives in).
        model: registered model name.
        horizon_steps: forecast steps.
        step_s: spacing of the history (s).
        seed: seed of the fit.
        fitted_at: the run time of the fit (ISO 8601, UTC).
        history_start, history_end: first and last point of the history fitted on.
        history_points: points in that history.
        fit_seconds: wall time of the fit (s).
        fit_error: why the fit failed (the model answers with the seasonal naive), or None.
        state: the model's state document (its own schema version inside).
        files: state file name -> size and hash; the names are a word and ``.npy``/``.txt``.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    format: Literal[2]
    service: str = Field(min_length=1, max_length=253)
    model: str = Field(min_length=1, max_length=64)
    horizon_steps: int = Field(ge=1)
    step_s: float = Field(gt=0, allow_inf_nan=False)
    seed: int = Field(ge=0)
    fitted_at: str = Field(max_length=64)
    history_start: str = Field(max_length=64)
    history_end: str = Field(max_length=64)
    history_points: int = Field(ge=0)
    fit_seconds: float = Field(ge=0, allow_inf_nan=False)
    fit_error: str | None = Field(max_length=4000)
    state: StateDoc
    files: dict[str, StoredFile] = Field(min_length=1, max_length=MAX_FILES)

    @field_validator("files")
    @classmethod
    def _plain_names(cls, files: dict[str, StoredFile]) -> dict[str, StoredFile]:
        for name in files:
            if not FILE_NAME.match(name):
                raise ValueError(f"{name!r} is not a plain state file name")
        return files


def _parse_meta(data: bytes) -> ModelMeta:
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise StoredModelError(f"metadata is not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise StoredModelError("metadata is not a JSON object")
    version = doc.get("format")
    if version != MODEL_FORMAT:
        hint = " (a pickle: never loaded)" if "pickle" in doc else ""
        raise StoredModelError(
            f"metadata format {version!r}{hint} is not {MODEL_FORMAT} (another version)"
        )
    try:
        return ModelMeta.model_validate(doc)
    except ValidationError as exc:
        raise StoredModelError(f"metadata {first_problem(exc)}") from None


def matches(meta: ModelMeta, svc: ServiceSettings) -> bool:
    """The model was fitted for the service's current settings (model, horizon, step, seed)."""
    f = svc.forecast
    return (
        meta.service == svc.name
        and meta.model == f.model
        and meta.horizon_steps == f.horizon_steps
        and meta.step_s == float(svc.step_s)
        and meta.seed == f.seed
    )


# --------------------------------------------------------------------------------------------
# locations: everything read must resolve inside the store root


def _protocols(store: ArtifactStore) -> tuple[str, ...]:
    protocol = store.fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _inside(store: ArtifactStore, uri: Any) -> str:
    """The file system path of ``uri`` (no protocol) if it lies inside the store root.

    Raises:
        StoredModelError: another scheme or bucket, a relative or non-normal path (``..``,
            ``.``, ``//``), a path outside the root, or a local path whose symlinks lead out.
    """
    from fsspec.core import split_protocol

    if not isinstance(uri, str) or not uri or len(uri) > 4096 or "\x00" in uri:
        raise StoredModelError(f"{str(uri)[:200]!r}: not a store URI")
    protocol, rest = split_protocol(uri)
    if protocol is None:
        if not store.local:
            raise StoredModelError(f"{uri}: no scheme; the store is {store.root}")
    elif protocol not in _protocols(store):
        raise StoredModelError(f"{uri}: scheme {protocol!r} is not the store's ({store.root})")
    if ".." in rest.split("/"):
        raise StoredModelError(f"{uri}: '..' in the path")
    path = store.fs._strip_protocol(uri)
    base = store.base
    if posixpath.normpath(path) != path or not path.startswith(base + "/"):
        raise StoredModelError(f"{uri}: outside the store root {store.root}")
    if store.local:
        # Symlinks are followed by the OS on open; the real path must stay under the real root.
        real, real_base = os.path.realpath(path), os.path.realpath(base)
        if os.path.commonpath([real, real_base]) != real_base:
            raise StoredModelError(f"{uri}: resolves to {real}, outside the store root")
    return path


def _layout(store: ArtifactStore, meta_uri: str) -> tuple[str, str, str]:
    """(service, metadata path, stem of the state files' paths) of the metadata at ``meta_uri``,
    which must be ``<root>/models/<service>/<YYYY-MM-DD>/<HHMMSS>.json``."""
    path = _inside(store, meta_uri)
    parts = path[len(store.base) + 1 :].split("/")
    if (
        len(parts) != 4
        or parts[0] != "models"
        or not _DAY.match(parts[2])
        or not _META_NAME.match(parts[3])
    ):
        raise StoredModelError(
            f"{meta_uri}: not a model metadata location (models/<service>/<day>/<HHMMSS>.json)"
        )
    return parts[1], path, path[: -len(".json")]


def _read_capped(store: ArtifactStore, path: str, cap: int, what: str) -> bytes:
    """The bytes at ``path`` (inside the root), refusing anything larger than ``cap``."""
    try:
        if store.local and not os.path.isfile(path):
            raise StoredModelError(f"{what}: missing or not a regular file")
        size = store.fs.size(path)
        if size is None or size > cap:
            raise StoredModelError(f"{what}: {size} bytes, over the limit of {cap}")
        data = store.fs.cat_file(path, start=0, end=cap + 1)
    except FileNotFoundError:
        raise StoredModelError(f"{what}: missing") from None
    except OSError as exc:
        raise StoredModelError(f"{what}: unreadable ({exc})") from None
    if len(data) > cap:
        raise StoredModelError(f"{what}: over the limit of {cap} bytes")
    return data


# --------------------------------------------------------------------------------------------
# reading


def read_meta(store: ArtifactStore, meta_uri: str) -> ModelMeta:
    """The validated metadata at ``meta_uri`` (inside the store, in its service's folder).

    Raises:
        StoredModelError: outside the store, oversized, not JSON, another format, or not the
            schema.
    """
    service, path, _ = _layout(store, meta_uri)
    meta = _parse_meta(_read_capped(store, path, MAX_META_BYTES, "metadata"))
    if meta.service != service:
        raise StoredModelError(f"metadata names service {meta.service!r}, stored under {service!r}")
    return meta


def read_files(store: ArtifactStore, meta_uri: str, meta: ModelMeta) -> dict[str, bytes]:
    """The model's state files, each checked against the size and hash in ``meta``.

    Raises:
        StoredModelError: a file is missing, outside the store, oversized or differs.
    """
    _, _, stem = _layout(store, meta_uri)
    files = {}
    for name, stored in meta.files.items():
        path = _inside(store, store.fs.unstrip_protocol(f"{stem}.{name}"))
        data = _read_capped(store, path, min(stored.bytes, MAX_FILE_BYTES), name)
        if len(data) != stored.bytes:
            raise StoredModelError(f"{name}: {len(data)} bytes, the metadata says {stored.bytes}")
        if hashlib.sha256(data).hexdigest() != stored.sha256:
            raise StoredModelError(f"{name}: content differs from the metadata's SHA-256")
        files[name] = data
    return files


def load(store: ArtifactStore, meta_uri: str) -> tuple[Any, ModelMeta]:
    """The fitted model stored at ``meta_uri`` and its metadata; nothing is unpickled.

    Raises:
        StoredModelError: any reason the model must not be used (see the module docstring),
            including a state that disagrees with its metadata.
    """
    meta = read_meta(store, meta_uri)
    files = read_files(store, meta_uri, meta)
    try:
        model = load_state(state_from_files(meta.state.model_dump(), files))
    except ModelStateError as exc:
        raise StoredModelError(str(exc)) from None
    step_s = model.step_.total_seconds()
    disagree = [
        key
        for key, ours, theirs in (
            ("model", model.name, meta.model),
            ("horizon_steps", model.horizon, meta.horizon_steps),
            ("seed", model.seed, meta.seed),
            ("step_s", step_s, meta.step_s),
            ("fit_error", model.fit_error_, meta.fit_error),
        )
        if ours != theirs
    ]
    if disagree:
        raise StoredModelError(f"state and metadata disagree on {', '.join(disagree)}")
    return model, meta


@dataclass(frozen=True)
class Lookup:
    """What :func:`find` found.

    Attributes:
        entry: the model to use, or None (fit one).
        meta: its metadata, or None.
        refused: why the newest stored model was refused (the caller refits), or None.
    """

    entry: Entry | None
    meta: ModelMeta | None = None
    refused: str | None = None


def find(store: ArtifactStore, svc: ServiceSettings, now: pd.Timestamp) -> Lookup:
    """The newest model of ``svc`` stored at or before ``now`` for its current settings.

    Models fitted for other settings are passed over. The newest model that cannot be used
    (unreadable, another format such as a pickle, schema violation, a state file that differs
    from its metadata) stops the search: an older model is not silently used instead, the
    caller refits, and ``refused`` says why.
    """
    for entry in reversed(store.entries("models", svc.name, end=now)):
        try:
            meta = read_meta(store, entry.uri)
            if not matches(meta, svc):
                continue
            read_files(store, entry.uri, meta)
        except StoredModelError as exc:
            return Lookup(None, None, f"stored model {entry.uri} refused: {exc}")
        return Lookup(entry, meta)
    return Lookup(None)


# --------------------------------------------------------------------------------------------
# writing


def write(
    store: ArtifactStore, service: str, now: pd.Timestamp, model: Any, fields: dict
) -> str:
    """Store a fitted model: its state files, then the metadata that names them.

    Args:
        fields: the metadata's descriptive fields (all of :class:`ModelMeta` but ``format``,
            ``state`` and ``files``).

    Returns:
        URI of the metadata.
    """
    state = dump_state(model)
    listed = {}
    for name, data in state_files(state).items():
        store.write_bytes("models", service, now, data, name)
        listed[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    meta = {"format": MODEL_FORMAT, **fields, "state": state.doc, "files": listed}
    ModelMeta.model_validate(meta)  # never write what the reader would refuse
    return store.write_json("models", service, now, meta)
