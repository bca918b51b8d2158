"""Fitted models as data: a JSON document, LightGBM model text and float64 arrays, never pickle.

A fitted :class:`~forecasting.models.Forecaster` is turned into a :class:`ModelState` by
:func:`dump_state` and back by :func:`load_state`; :func:`state_files` and :func:`state_from_files`
map a state to a JSON document plus named files (bytes) and back. Nothing here executes stored
content:

- the document is plain JSON validated by the pydantic schema :class:`StateDoc` (schema
  version, model name, constructor parameters, fitted values);
- ``residuals.npy`` is read by :func:`numpy.load` with ``allow_pickle=False`` and must be a
  finite float64 matrix of shape (origins, horizon);
- ``<learner>.txt`` is LightGBM's own text model format (``Booster.model_to_string`` /
  ``Booster(model_str=...)``), whose parser builds trees and never runs code; the restored
  booster must take the number of features its learner builds and have at most
  ``n_estimators`` trees.

A restored model forecasts exactly what the original did: the fitted values are stored at full
precision (JSON floats round-trip exactly; LightGBM writes thresholds and leaf values with
round-trip precision), and caches (memoised decompositions) are not state: they are rebuilt on
demand and do not change a forecast.

Anything that does not fit the schema raises :class:`ModelStateError` with the file and the
problem in its message.
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from forecasting.errors import first_problem
from forecasting.models import (
    ADAPTIVE_MEMBERS,
    LAGS,
    MODELS,
    Adaptive,
    CeemdanHybrid,
    ExponentialSmoothing,
    Forecaster,
    LightGBMLags,
    _ComponentLightGBM,
    _DirectLightGBM,
    steps_per_day,
)

STATE_VERSION = 2
"""Version of the state layout below; a state of another version is refused (the forecast
stage then refits). Version 2: LightGBM features relative to the local level, the adaptive
model."""

STATE_FILE = "state"
"""How messages name the JSON document (stored by the caller, e.g. inside its metadata)."""

RESIDUALS_FILE = "residuals.npy"
PRIOR_FILE = "prior.npy"

FILE_NAME = re.compile(r"^[a-z][a-z0-9]{0,31}\.(npy|txt)$")
"""Names a state file may have: one short word and an extension; no separator, no traversal."""

_BOOSTERS: dict[str, tuple[str, ...]] = {
    "lgbm_lags": ("model",),
    "hybrid": ("raw", "comp"),
    "adaptive": ("model",),
}
"""The LightGBM learners each model holds (file ``<name>.txt`` each)."""

MAX_ORIGINS = 1_000_000
"""Calibration origins a residual matrix may have (a week at 1 s every step is 604800)."""


class ModelStateError(ValueError):
    """A stored model state that must not be used; the message names the file and the problem."""


@dataclass(frozen=True)
class ModelState:
    """A fitted model as data.

    Attributes:
        doc: the JSON document (:class:`StateDoc` as a dict).
        boosters: LightGBM model text per learner name (``model``; ``raw`` and ``comp``).
        residuals: scaled conformal residuals, float64, shape (origins, horizon).
        prior: the adaptive model's held-out member errors, float64, shape (steps, 1 + members):
            the target's age in steps before the end of the fit, then each member's scaled
            absolute error (``adaptive`` only).
    """

    doc: dict[str, Any]
    boosters: dict[str, str]
    residuals: np.ndarray
    prior: np.ndarray | None = None


# --------------------------------------------------------------------------------------------
# the schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class EtsParams(_Strict):
    """Holt's damped-trend smoothing parameters (each in [0, 1])."""

    smoothing_level: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    smoothing_trend: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    damping_trend: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)


class StateDoc(_Strict):
    """The state document: everything a fitted model holds except boosters and residuals.

    Attributes:
        schema_version: :data:`STATE_VERSION`.
        model: registered model name (``forecasting.models.MODELS``).
        params: the constructor's parameters (every ``init`` field of the model's dataclass),
            int or float as the field's default is.
        step_ns: spacing of the history the model was fitted on (ns, > 0).
        season: steps per day at that spacing (must equal ``steps_per_day(step)``).
        fit_error: why the fit failed (the model answers with the seasonal naive), or None.
        residuals_shape: (origins, horizon) of ``residuals.npy``.
        ets: fitted Holt parameters (``ets`` with no fit error only).
        weight: the hybrid's combiner weight on the component learner, in [0, 1] (``hybrid``
            with no fit error only).
        boosters: learner names with a ``<name>.txt`` LightGBM model (``lgbm_lags``, and the
            ``adaptive`` model's LightGBM member: ``model``; ``hybrid``: ``raw`` and ``comp``;
            none when the fit failed).
        prior_shape: (steps, 1 + members) of ``prior.npy`` (``adaptive`` with no fit error only).
        fit_end_ns: time of the last point the adaptive model's members were fitted on (ns since
            the epoch); its forecasts score the members only at origins after it.
    """

    schema_version: Literal[2]
    model: str
    params: dict[str, int | float]
    step_ns: int = Field(gt=0, le=7 * 86400 * 10**9)
    season: int = Field(ge=1, le=86400)
    fit_error: str | None = Field(max_length=4000)
    residuals_shape: list[int] = Field(min_length=2, max_length=2)
    ets: EtsParams | None = None
    weight: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False)
    boosters: list[str] = Field(default_factory=list, max_length=4)
    prior_shape: list[int] | None = Field(default=None, min_length=2, max_length=2)
    fit_end_ns: int | None = Field(default=None, ge=0, lt=2**63)

    @field_validator("model")
    @classmethod
    def _registered(cls, value: str) -> str:
        if value not in MODELS:
            raise ValueError(f"{value!r} is not a registered model ({', '.join(MODELS)})")
        return value


def _init_params(cls: type[Forecaster]) -> dict[str, Any]:
    """Constructor parameters of ``cls`` and their defaults."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.init}


def _check_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The constructor parameters of model ``name``, checked against its dataclass fields."""
    expected = _init_params(MODELS[name])
    if set(params) != set(expected):
        missing = sorted(set(expected) - set(params))
        extra = sorted(set(params) - set(expected))
        raise ModelStateError(
            f"{STATE_FILE}: params of {name} must be {sorted(expected)} "
            f"(missing {missing}, unexpected {extra})"
        )
    out = {}
    for key, default in expected.items():
        value = params[key]
        if isinstance(default, int):
            # counts (horizon, window, trials, ...) are >= 1; the seed is any int >= 0
            low = 0 if key == "seed" else 1
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value < 2**63:
                raise ModelStateError(
                    f"{STATE_FILE}: params.{key} must be an integer >= {low}, got {value!r}"
                )
        elif not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ModelStateError(
                f"{STATE_FILE}: params.{key} must be a finite number >= 0, got {value!r}"
            )
        out[key] = value
    return out


def _expected_features(learner: _DirectLightGBM) -> int:
    """Columns of the learner's feature matrix (see ``_raw_features``, ``_calendar`` and
    ``_ComponentLightGBM._origin_features``)."""
    if isinstance(learner, _ComponentLightGBM):
        # h, 3 calendar columns, the last value, then (end, std, trend forecast) per component
        return 5 + 3 * (learner.n_imfs + 1)
    # last, std, range, one difference per lag, h, the day-before change, 3 calendar columns
    return 3 + len(LAGS) + 2 + 3


# --------------------------------------------------------------------------------------------
# model <-> state


def _learners(model: Forecaster) -> dict[str, _DirectLightGBM]:
    if isinstance(model, Adaptive):
        return {"model": model._members()["lgbm_lags"]}
    if isinstance(model, CeemdanHybrid):
        return {"raw": model.raw_, "comp": model.comp_}
    if isinstance(model, LightGBMLags):
        return {"model": model}
    return {}


def dump_state(model: Forecaster) -> ModelState:
    """The data-only state of a fitted model.

    Raises:
        ValueError: ``model`` is not a fitted instance of a registered model.
    """
    if type(model) is not MODELS.get(model.name):
        raise ValueError(f"{type(model).__name__}: not a registered model")
    if model.step_ is None or model.residuals_ is None:
        raise ValueError(f"{model.name}: call fit() before storing the model")
    residuals = np.ascontiguousarray(model.residuals_, dtype=np.float64)
    doc: dict[str, Any] = {
        "schema_version": STATE_VERSION,
        "model": model.name,
        "params": {key: getattr(model, key) for key in _init_params(type(model))},
        "step_ns": int(model.step_.value),
        "season": int(model.season_),
        "fit_error": model.fit_error_,
        "residuals_shape": list(residuals.shape),
    }
    boosters: dict[str, str] = {}
    prior = None
    if model.fit_error_ is None:
        # a model whose fit failed answers with the seasonal naive: nothing else is used
        if isinstance(model, ExponentialSmoothing):
            doc["ets"] = dict(model.params_)
        if isinstance(model, CeemdanHybrid):
            doc["weight"] = float(model.weights_)
        if isinstance(model, Adaptive):
            doc["ets"] = dict(model._members()["ets"].params_)
            step_ns = int(model.step_.value)
            ages = (model.fit_end_ - model.prior_times_) / step_ns
            prior = np.column_stack([ages, model.prior_errors_]).astype(np.float64)
            doc["prior_shape"] = list(prior.shape)
            doc["fit_end_ns"] = int(model.fit_end_)
        for name, learner in _learners(model).items():
            boosters[name] = learner.model_.model_to_string()
        doc["boosters"] = sorted(boosters)
    # the document must pass its own schema (catches a model whose fields drifted)
    _parse_doc(doc)
    return ModelState(doc=doc, boosters=boosters, residuals=residuals, prior=prior)


def _parse_doc(doc: Any) -> StateDoc:
    if not isinstance(doc, dict):
        raise ModelStateError(f"{STATE_FILE}: must be a JSON object")
    version = doc.get("schema_version")
    if version != STATE_VERSION:
        raise ModelStateError(
            f"{STATE_FILE}: schema_version {version!r} is not {STATE_VERSION} (another version)"
        )
    try:
        return StateDoc.model_validate(doc)
    except ValidationError as exc:
        raise ModelStateError(f"{STATE_FILE}: {first_problem(exc)}") from None


def load_state(state: ModelState) -> Forecaster:
    """A fitted model from its state; its forecasts equal the original's.

    Raises:
        ModelStateError: the state violates the schema, or a booster or array does not fit it.
    """
    doc = _parse_doc(state.doc)
    params = _check_params(doc.model, doc.params)
    model = MODELS[doc.model](**params)
    step = pd.Timedelta(doc.step_ns, unit="ns")
    if doc.season != steps_per_day(step):
        raise ModelStateError(
            f"{STATE_FILE}: season {doc.season} is not the steps per day at {step}"
        )
    model.step_, model.season_, model.fit_error_ = step, doc.season, doc.fit_error
    model.residuals_ = _check_residuals(state.residuals, doc, model.horizon)
    expected = set(_BOOSTERS.get(doc.model, ())) if doc.fit_error is None else set()
    if set(doc.boosters) != expected or set(state.boosters) != expected:
        raise ModelStateError(
            f"{STATE_FILE}: boosters must be {sorted(expected)} for {doc.model}"
            f"{'' if doc.fit_error is None else ' that failed to fit'}, "
            f"got {sorted(doc.boosters)} (files: {sorted(state.boosters)})"
        )
    adaptive = isinstance(model, Adaptive)
    if doc.fit_error is not None:
        if doc.prior_shape is not None or state.prior is not None:
            raise ModelStateError(f"{PRIOR_FILE}: a model that failed to fit has none")
        return model
    if isinstance(model, ExponentialSmoothing) or adaptive:
        if doc.ets is None:
            raise ModelStateError(f"{STATE_FILE}: ets: required for a fitted {doc.model} model")
        params = doc.ets.model_dump()
        if adaptive:
            model._members()["ets"].params_ = params
        else:
            model.params_ = params
    elif doc.ets is not None:
        raise ModelStateError(f"{STATE_FILE}: ets: only an ets or adaptive model has it")
    if adaptive:
        _load_prior(model, state.prior, doc)
    elif doc.prior_shape is not None or state.prior is not None or doc.fit_end_ns is not None:
        raise ModelStateError(f"{PRIOR_FILE}: only an adaptive model has a prior")
    if isinstance(model, CeemdanHybrid):
        if doc.weight is None:
            raise ModelStateError(f"{STATE_FILE}: weight: required for a fitted hybrid")
        model.weights_ = doc.weight
        model._learners()  # the learners take the hybrid's step and season
    elif doc.weight is not None:
        raise ModelStateError(f"{STATE_FILE}: weight: only a hybrid has it")
    for name, learner in _learners(model).items():
        learner.model_ = _booster(name, state.boosters[name], learner)
    return model


def _load_prior(model: Adaptive, prior: Any, doc: StateDoc) -> None:
    where = PRIOR_FILE
    if not isinstance(prior, np.ndarray) or prior.dtype != np.float64:
        dtype = getattr(prior, "dtype", type(prior).__name__)
        raise ModelStateError(f"{where}: must be a float64 array, got {dtype}")
    columns = 1 + len(ADAPTIVE_MEMBERS)
    if prior.ndim != 2 or prior.shape[1] != columns or not prior.shape[0] <= MAX_ORIGINS:
        raise ModelStateError(f"{where}: must be (steps, {columns}), got shape {prior.shape}")
    if doc.prior_shape is None or prior.shape != tuple(doc.prior_shape):
        raise ModelStateError(
            f"{where}: shape {prior.shape} does not match prior_shape {doc.prior_shape}"
        )
    if not np.all(np.isfinite(prior)) or np.any(prior < 0):
        raise ModelStateError(f"{where}: ages and errors must be finite and >= 0")
    if np.any(prior[:, 0] > 10 * model.lookback + model.prior_steps):
        raise ModelStateError(f"{where}: an age beyond the model's lookback")
    if doc.fit_end_ns is None:
        raise ModelStateError(f"{STATE_FILE}: fit_end_ns: required for a fitted adaptive model")
    model.fit_end_ = doc.fit_end_ns
    model.prior_times_ = doc.fit_end_ns - np.round(prior[:, 0] * doc.step_ns).astype(np.int64)
    model.prior_errors_ = np.ascontiguousarray(prior[:, 1:])


def _check_residuals(residuals: Any, doc: StateDoc, horizon: int) -> np.ndarray:
    where = RESIDUALS_FILE
    if not isinstance(residuals, np.ndarray) or residuals.dtype != np.float64:
        dtype = getattr(residuals, "dtype", type(residuals).__name__)
        raise ModelStateError(f"{where}: must be a float64 array, got {dtype}")
    if residuals.ndim != 2 or not 1 <= residuals.shape[0] <= MAX_ORIGINS:
        raise ModelStateError(f"{where}: must be (origins, horizon), got shape {residuals.shape}")
    if residuals.shape != tuple(doc.residuals_shape) or residuals.shape[1] != horizon:
        raise ModelStateError(
            f"{where}: shape {residuals.shape} does not match residuals_shape "
            f"{list(doc.residuals_shape)} and horizon {horizon}"
        )
    if not np.all(np.isfinite(residuals)):
        raise ModelStateError(f"{where}: has non-finite values")
    return residuals


def _booster(name: str, text: Any, learner: _DirectLightGBM):
    import lightgbm as lgb

    where = f"{name}.txt"
    if not isinstance(text, str) or not text.startswith("tree\n"):
        raise ModelStateError(f"{where}: not a LightGBM text model")
    # LightGBM's C++ parser is not hardened: a truncated text crashed it with SIGSEGV and a
    # malformed tree with std::terminate (lightgbm 4.7.0, src/boosting/gbdt_model_text.cpp
    # LoadModelFromString parses the trees in parallel at the offsets ``tree_sizes`` gives).
    # The text is checked in full here, so only well-formed models ever reach it.
    check_lightgbm_text(text, _expected_features(learner), learner.n_estimators, where)
    try:
        booster = lgb.Booster(model_str=text)
    except (lgb.basic.LightGBMError, ValueError) as exc:  # ValueError: its JSON trailer
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unparseable"
        raise ModelStateError(f"{where}: LightGBM refused it: {reason}") from None
    features = _expected_features(learner)
    if booster.num_feature() != features:
        raise ModelStateError(
            f"{where}: takes {booster.num_feature()} features, the learner builds {features}"
        )
    if not 1 <= booster.num_trees() <= learner.n_estimators:
        raise ModelStateError(
            f"{where}: has {booster.num_trees()} trees, expected 1..{learner.n_estimators}"
        )
    return booster


# --------------------------------------------------------------------------------------------
# state <-> files


def state_files(state: ModelState) -> dict[str, bytes]:
    """The state's binary and text parts as named files: ``residuals.npy``, ``<learner>.txt``.

    The document (``state.doc``) is JSON the caller stores itself (beside its own metadata).
    """
    buf = io.BytesIO()
    np.save(buf, state.residuals, allow_pickle=False)
    files = {RESIDUALS_FILE: buf.getvalue()}
    if state.prior is not None:
        buf = io.BytesIO()
        np.save(buf, state.prior, allow_pickle=False)
        files[PRIOR_FILE] = buf.getvalue()
    for name, text in state.boosters.items():
        files[f"{name}.txt"] = text.encode("utf-8")
    return files


def state_from_files(doc: Any, files: dict[str, bytes]) -> ModelState:
    """The state made of the JSON document ``doc`` and ``files`` (as :func:`state_files` names
    them), parsed without running code; :func:`load_state` validates it.

    Raises:
        ModelStateError: a file is missing or unexpected, not UTF-8, or not a plain npy array.
    """
    for name in files:
        if not FILE_NAME.match(name):
            raise ModelStateError(f"{name!r}: not a state file name")
    if RESIDUALS_FILE not in files:
        raise ModelStateError(f"{RESIDUALS_FILE}: missing")
    residuals = _npy(RESIDUALS_FILE, files[RESIDUALS_FILE])
    prior = _npy(PRIOR_FILE, files[PRIOR_FILE]) if PRIOR_FILE in files else None
    boosters = {}
    for name, data in files.items():
        if name.endswith(".txt"):
            try:
                boosters[name[:-4]] = data.decode("utf-8")
            except UnicodeDecodeError:
                raise ModelStateError(f"{name}: not UTF-8 text") from None
        elif name not in (RESIDUALS_FILE, PRIOR_FILE):
            raise ModelStateError(f"{name}: not part of a model state")
    return ModelState(doc=doc, boosters=boosters, residuals=residuals, prior=prior)


def _npy(name: str, data: bytes) -> np.ndarray:
    try:
        # allow_pickle=False: an object array (the only npy content that unpickles) is refused
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ModelStateError(f"{name}: not a plain npy array ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise ModelStateError(f"{name}: not a single npy array")
    return array


# --------------------------------------------------------------------------------------------
# LightGBM model text, checked before LightGBM parses it

_HEADER_KEYS = frozenset(
    (
        "version", "num_class", "num_tree_per_iteration", "label_index", "max_feature_idx",
        "objective", "feature_names", "feature_infos", "tree_sizes",
    )
)
_INTERNAL_ARRAYS = (
    "split_feature", "split_gain", "threshold", "decision_type", "left_child", "right_child",
    "internal_value", "internal_weight", "internal_count",
)
_LEAF_ARRAYS = ("leaf_value", "leaf_weight", "leaf_count")
_TREE_KEYS = frozenset(
    ("num_leaves", "num_cat", "is_linear", "shrinkage", *_INTERNAL_ARRAYS, *_LEAF_ARRAYS)
)
_INT_ARRAYS = frozenset(
    ("split_feature", "decision_type", "left_child", "right_child", "internal_count",
     "leaf_count")
)
_MAX_LEAVES = 131072  # LightGBM's own cap on num_leaves (include/LightGBM/config.h)
_INT_LINE = re.compile(r"(-?\d{1,10}( -?\d{1,10})*)?")
_FLOAT_LINE = re.compile(r"([-+0-9.eE]{1,40}( [-+0-9.eE]{1,40})*)?")
_TOKEN = re.compile(r"^[A-Za-z0-9_.:\[\]+-]+$")
_TAIL_LINE = re.compile(r"^(|feature_importances:|[A-Za-z0-9_]+=\d+|parameters:|"
                        r"\[[a-z_0-9]+: [^\]\n]*\]|end of parameters|pandas_categorical:null)$")


def _keyvals(lines: list[str], where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep or not key or key in out:
            raise ModelStateError(f"{where}: malformed or repeated line {line[:60]!r}")
        out[key] = value
    return out


def _ints(text: str, where: str) -> list[int]:
    if not _INT_LINE.fullmatch(text):
        raise ModelStateError(f"{where}: expected integers")
    return [int(t) for t in text.split(" ")] if text else []


def _floats(text: str, where: str) -> np.ndarray:
    # digits, signs, '.', 'e' only: no 'nan' or 'inf'; numpy then parses each token
    if not _FLOAT_LINE.fullmatch(text):
        raise ModelStateError(f"{where}: expected finite numbers")
    try:
        values = np.array(text.split(" ") if text else [], dtype=np.float64)
    except ValueError:
        raise ModelStateError(f"{where}: expected finite numbers") from None
    if not np.all(np.isfinite(values)):
        raise ModelStateError(f"{where}: expected finite numbers")
    return values


def check_lightgbm_text(text: str, n_features: int, max_trees: int, where: str) -> None:
    """Check a LightGBM text model (as ``Booster.model_to_string`` writes it for a regression
    on ``n_features`` numerical features) before LightGBM parses it.

    Checked: the header keys and values; ``tree_sizes`` cut the text into exactly the tree
    blocks ``Tree=0`` .. ``Tree=k-1`` (1 <= k <= ``max_trees``) followed by ``end of trees``;
    every tree has exactly the fields of a numerical tree, arrays of the right lengths, finite
    numbers, features in range, numerical decision types, and children that form one tree
    (every node and leaf reached exactly once from the root, so prediction terminates); the
    tail holds only importances, ``[key: value]`` parameters and ``pandas_categorical:null``.

    Raises:
        ModelStateError: the first problem found, prefixed with ``where``.
    """
    head, sep, _ = text.partition("\n\nTree=0\n")
    if not sep:
        raise ModelStateError(f"{where}: no trees")
    header = _keyvals(head.split("\n")[1:], where)
    if set(header) != _HEADER_KEYS:
        raise ModelStateError(f"{where}: header keys {sorted(header)} are not LightGBM's")
    fixed = {"version": "v4", "num_class": "1", "num_tree_per_iteration": "1",
             "label_index": "0", "max_feature_idx": str(n_features - 1)}
    for key, value in fixed.items():
        if header[key] != value:
            raise ModelStateError(f"{where}: {key}={header[key][:40]!r}, expected {value}")
    if not re.fullmatch(r"[a-z0-9_]{1,40}", header["objective"]):
        raise ModelStateError(f"{where}: objective {header['objective'][:40]!r} not plain")
    for key in ("feature_names", "feature_infos"):
        tokens = header[key].split(" ")
        if len(tokens) != n_features or not all(_TOKEN.match(t) for t in tokens):
            raise ModelStateError(f"{where}: {key} must list {n_features} plain tokens")
    sizes = _ints(header["tree_sizes"], f"{where}: tree_sizes")
    if not 1 <= len(sizes) <= max_trees or min(sizes) < 1:
        raise ModelStateError(f"{where}: tree_sizes must give 1..{max_trees} positive sizes")
    pos = len(head) + 2
    for i, size in enumerate(sizes):
        block = text[pos : pos + size]
        if len(block) != size or not block.startswith(f"Tree={i}\n") or not block.endswith(
            "\n\n\n"
        ):
            raise ModelStateError(f"{where}: tree {i} does not fit its tree_sizes entry")
        _check_tree(block[:-3].split("\n")[1:], n_features, f"{where}: tree {i}")
        pos += size
    tail = text[pos:]
    if not tail.startswith("end of trees\n") or not tail.endswith("\n"):
        raise ModelStateError(f"{where}: trees not followed by 'end of trees'")
    for line in tail[len("end of trees\n") : -1].split("\n"):
        if not _TAIL_LINE.match(line):
            raise ModelStateError(f"{where}: unexpected line after the trees: {line[:60]!r}")


def _check_tree(lines: list[str], n_features: int, where: str) -> None:
    kv = _keyvals(lines, where)
    if set(kv) != _TREE_KEYS:
        raise ModelStateError(f"{where}: fields {sorted(kv)} are not a numerical tree's")
    if kv["num_cat"] != "0" or kv["is_linear"] != "0":
        raise ModelStateError(f"{where}: categorical or linear trees are not used")
    _floats(kv["shrinkage"], f"{where}: shrinkage")
    [leaves] = _ints(kv["num_leaves"], f"{where}: num_leaves") or [0]
    if not 1 <= leaves <= _MAX_LEAVES:
        raise ModelStateError(f"{where}: num_leaves {leaves} out of range")
    arrays: dict[str, list] = {}
    for key in (*_INTERNAL_ARRAYS, *_LEAF_ARRAYS):
        parse = _ints if key in _INT_ARRAYS else _floats
        arrays[key] = parse(kv[key], f"{where}: {key}")
        want = leaves - 1 if key in _INTERNAL_ARRAYS else leaves
        # a single-leaf tree is written without leaf weights
        if len(arrays[key]) != want and not (key == "leaf_weight" and leaves == 1 and
                                             not arrays[key]):
            raise ModelStateError(f"{where}: {key} has {len(arrays[key])} values, not {want}")
    if any(not 0 <= f < n_features for f in arrays["split_feature"]):
        raise ModelStateError(f"{where}: split_feature out of range")
    # decision_type bits (include/LightGBM/tree.h): 1 categorical, 2 default left, 4-8 missing
    if any(d & 1 or not 0 <= d < 12 or d >> 2 == 3 for d in arrays["decision_type"]):
        raise ModelStateError(f"{where}: decision_type not a numerical split")
    if leaves == 1:
        return
    # children: >= 0 an internal node, < 0 the leaf ~child; each reached once from the root
    seen_nodes, seen_leaves, stack = set(), set(), [0]
    while stack:
        node = stack.pop()
        if node in seen_nodes:
            raise ModelStateError(f"{where}: node {node} reached twice")
        seen_nodes.add(node)
        for child in (arrays["left_child"][node], arrays["right_child"][node]):
            if child >= 0:
                if child >= leaves - 1:
                    raise ModelStateError(f"{where}: child {child} out of range")
                stack.append(child)
            else:
                leaf = ~child
                if leaf >= leaves or leaf in seen_leaves:
                    raise ModelStateError(f"{where}: leaf {leaf} out of range or reached twice")
                seen_leaves.add(leaf)
    if len(seen_nodes) != leaves - 1 or len(seen_leaves) != leaves:
        raise ModelStateError(f"{where}: nodes or leaves unreachable from the root")
