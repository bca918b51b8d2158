"""Fitted models at rest are data: round trips are exact, and nothing stored is ever executed.

Every registered model is stored (JSON state, LightGBM model text, npy residuals) and restored
with forecasts equal to the bit. The forecast stage reads models only from inside the store
root, refuses pickles, foreign formats, schema violations, corrupt, truncated, oversized or
relocated files with a reason in the forecast record, and refits.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forecasting.model_state import (
    ModelStateError,
    check_lightgbm_text,
    dump_state,
    load_state,
    state_files,
    state_from_files,
)
from forecasting.models import MODELS, make_model
from surgecast.live import model_store
from surgecast.live.artifacts import ArtifactStore
from surgecast.live.pipeline import MODEL_FORMAT, forecast, load_model, usable_model
from surgecast.offline.sources import load_rps_csv
from surgecast.settings import settings_from_dict

DATA = Path(__file__).resolve().parents[1] / "data"
STEP = pd.Timedelta(minutes=5)
SERVICE = "svc-a"
# Small settings keep the fits quick (the hybrid on a short window with few trials).
SMALL = {
    "hybrid": {"window": 288, "trials": 3, "n_imfs": 3, "train_every": 24, "train_days": 1.0},
    "lgbm_lags": {"train_every": 12, "train_days": 1.0},
    "ets": {"context": 120},
}


@pytest.fixture(scope="module")
def twitter() -> pd.Series:
    return load_rps_csv(DATA / "twitter_1min.csv", step="5min")


@pytest.fixture(scope="module")
def azure() -> pd.Series:
    return load_rps_csv(DATA / "azure_llm_code_2024_10s.csv", step="5min")


def _fields(model, rps: pd.Series, at: pd.Timestamp) -> dict:
    return {
        "service": SERVICE,
        "model": model.name,
        "horizon_steps": model.horizon,
        "step_s": model.step_.total_seconds(),
        "seed": model.seed,
        "fitted_at": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "history_start": rps.index[0].isoformat(),
        "history_end": rps.index[-1].isoformat(),
        "history_points": len(rps),
        "fit_seconds": 0.0,
        "fit_error": model.fit_error_,
    }


# --------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize(
    ("trace", "name"),
    [("twitter", name) for name in MODELS]
    + [("azure", name) for name in ("naive", "seasonal_naive", "lgbm_lags")],
)
def test_round_trip_forecasts_are_identical(request, tmp_path, trace, name):
    rps = request.getfixturevalue(trace)
    model = make_model(name, horizon=6, calibration_every=12, **SMALL.get(name, {}))
    fit = rps.iloc[: model.min_history_steps + 12]
    model.fit(fit)
    assert model.fit_error_ is None
    store = ArtifactStore(str(tmp_path / "store"))
    at = fit.index[-1] + STEP
    uri = model_store.write(store, SERVICE, at, model, _fields(model, fit, at))
    restored, meta = load_model(store, uri)
    assert type(restored) is type(model) and meta["format"] == MODEL_FORMAT
    for offset in (0, 17, 150):
        cutoff = fit.index[-1] + offset * STEP
        a, b = model.forecast(rps, cutoff=cutoff), restored.forecast(rps, cutoff=cutoff)
        assert a.fallback is None and b.fallback is None
        assert np.array_equal(a.mean.to_numpy(), b.mean.to_numpy())
        assert np.array_equal(a.quantiles.to_numpy(), b.quantiles.to_numpy())
    # data only: the metadata (with the state document), npy residuals, LightGBM text
    stem = at.strftime("%H%M%S")
    names = sorted(p.name for p in (tmp_path / "store").rglob("*") if p.is_file())
    boosters = {"lgbm_lags": ["model"], "hybrid": ["comp", "raw"], "adaptive": ["model"]}
    arrays = ["residuals", "prior"] if name == "adaptive" else ["residuals"]
    assert names == sorted(
        [f"{stem}.json"]
        + [f"{stem}.{a}.npy" for a in arrays]
        + [f"{stem}.{b}.txt" for b in boosters.get(name, [])]
    )


# --------------------------------------------------------------------------------------------
# the forecast stage over a local store


def _settings(root: Path, model: str = "seasonal_naive"):
    return settings_from_dict(
        {
            "artifacts": {"root": str(root)},
            "defaults": {
                "namespace": "inference",
                "profile": "resnet18",
                "slo_ms": 750,
                "cold_start_s": 60,
                "bounds": {"min_replicas": 1, "max_replicas": 10, "min_cores": 1,
                           "max_cores": 4},
                "data": {"step_s": 300},
                "forecast": {"model": model, "horizon_steps": 6},
            },
            "services": [{"name": SERVICE, "query": "rps", "deployment": SERVICE}],
        },
        base=root.parent,
    )


def _run_forecast(settings, rps: pd.Series, now: pd.Timestamp) -> dict:
    """The forecast stage on the 8 days of ``rps`` before ``now`` (as ``ingest`` stores it)."""
    store = ArtifactStore(settings.artifacts.root)
    history = rps.loc[now - pd.Timedelta(days=8) : now - STEP]
    doc = {
        "kind": "history",
        "service": SERVICE,
        "step_s": 300.0,
        "start": history.index[0].isoformat(),
        "values": [None if not np.isfinite(v) else float(v) for v in history.to_numpy()],
        "error": None,
    }
    data = gzip.compress(json.dumps(doc).encode("utf-8"), mtime=0)
    uri = store.write_bytes("history", SERVICE, now, data, "json.gz")
    out = ArtifactStore.read_json(forecast(settings, SERVICE, uri, now))
    assert out["error"] is None, out["error"]
    return out


T1 = pd.Timestamp("2024-01-12T00:00:00Z")
T2 = T1 + pd.Timedelta(minutes=10)


@pytest.fixture(scope="module")
def fitted_store(tmp_path_factory, twitter) -> tuple[Path, dict]:
    """A store holding one lgbm_lags model fitted by the forecast stage at T1."""
    root = tmp_path_factory.mktemp("fitted") / "store"
    doc = _run_forecast(_settings(root, "lgbm_lags"), twitter, T1)
    return root, doc


@pytest.fixture
def store_copy(tmp_path, fitted_store) -> tuple[Path, str]:
    """A private copy of ``fitted_store``: (root, path of the model's metadata)."""
    root = tmp_path / "store"
    shutil.copytree(fitted_store[0], root, symlinks=True)
    return root, str(root / "models" / SERVICE / "2024-01-12" / "000000.json")


def test_a_stored_model_is_used_by_the_next_forecast(tmp_path, fitted_store, twitter):
    first = fitted_store[1]["model"]
    assert first["refit_reason"] is None and first["fallback"] is None
    assert first["name"] == "lgbm_lags" and first["fitted_at"] == "2024-01-12T00:00:00Z"
    root = tmp_path / "store"
    shutil.copytree(fitted_store[0], root)
    settings = _settings(root, "lgbm_lags")
    store = ArtifactStore(str(root))
    meta_uri = store.uri("models", SERVICE, T1)
    assert first["uri"] == ArtifactStore(str(fitted_store[0])).uri("models", SERVICE, T1)
    doc = _run_forecast(settings, twitter, T2)
    assert doc["model"]["uri"] == meta_uri and doc["model"]["refit_reason"] is None
    assert doc["model"]["fitted_at"] == "2024-01-12T00:00:00Z"
    assert [e.uri for e in store.entries("models", SERVICE)] == [meta_uri]  # no refit
    # the forecast is the stored model's, and the store holds no pickle
    model, _ = load_model(store, meta_uri)
    expected = model.forecast(twitter.loc[: T2 - STEP])
    assert doc["forecast"]["mean"] == [float(v) for v in expected.mean]
    files = sorted(p.name for p in (root / "models").rglob("*") if p.is_file())
    assert files == ["000000.json", "000000.model.txt", "000000.residuals.npy"]
    meta = json.loads((root / "models" / SERVICE / "2024-01-12" / "000000.json").read_text())
    assert "pickle" not in meta and meta["format"] == MODEL_FORMAT


# --------------------------------------------------------------------------------------------
# hostile and broken stores


class _Marker:
    """Unpickling this creates ``path`` (it stands for any code an attacker would run)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _rewrite(meta_path: str, name: str, data: bytes) -> None:
    """Replace a state file and update its size and hash, as an attacker with write access
    to the store can."""
    folder, stem = os.path.split(meta_path[: -len(".json")])
    Path(folder, f"{stem}.{name}").write_bytes(data)
    meta = json.loads(Path(meta_path).read_text())
    meta["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    Path(meta_path).write_text(json.dumps(meta))


def _edit_meta(meta_path: str, change) -> None:
    meta = json.loads(Path(meta_path).read_text())
    change(meta)
    Path(meta_path).write_text(json.dumps(meta))


def _assert_refitted(doc: dict, root: Path, *reason: str) -> None:
    store = ArtifactStore(str(root))
    new = store.uri("models", SERVICE, T2)
    assert doc["model"]["uri"] == new and doc["model"]["fitted_at"] == "2024-01-12T00:10:00Z"
    why = doc["model"]["refit_reason"]
    assert why is not None and why.startswith(
        f"stored model {store.uri('models', SERVICE, T1)} refused: "
    )
    for part in reason:
        assert part in why, why
    load_model(store, new)  # the refit is stored and loads


def test_the_crafted_payload_runs_when_unpickled(tmp_path):
    """Control: the payload the tests below plant does run code when unpickled."""
    marker = tmp_path / "control"
    pickle.loads(pickle.dumps(_Marker(str(marker))))
    assert marker.exists()


@pytest.mark.parametrize("how", ["format-1 pickle", "pickle key", "object npy"])
def test_a_planted_pickle_never_runs_and_the_run_refits(store_copy, twitter, tmp_path, how):
    root, meta_path = store_copy
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Marker(str(marker)))
    if how == "format-1 pickle":
        # exactly what the pickle-based store wrote: a pickle and a metadata naming it
        store = ArtifactStore(str(root))
        pkl = store.write_bytes("models", SERVICE, T1, payload, "pkl")
        _edit_meta(meta_path, lambda m: (m.clear(), m.update(
            format=1, service=SERVICE, model="lgbm_lags", horizon_steps=6, step_s=300.0,
            seed=0, fitted_at="2024-01-12T00:00:00Z", pickle=pkl)))
        reason = ("metadata format 1 (a pickle: never loaded) is not 2",)
    elif how == "pickle key":
        outside = tmp_path / "evil.pkl"
        outside.write_bytes(payload)
        _edit_meta(meta_path, lambda m: m.update(pickle=outside.as_uri()))
        reason = ("metadata pickle: Extra inputs are not permitted",)
    else:
        buf = io.BytesIO()
        np.save(buf, np.array([_Marker(str(marker))], dtype=object), allow_pickle=True)
        _rewrite(meta_path, "residuals.npy", buf.getvalue())
        reason = ("residuals.npy: not a plain npy array",)
    doc = _run_forecast(_settings(root, "lgbm_lags"), twitter, T2)
    assert not marker.exists()
    _assert_refitted(doc, root, *reason)


def _booster_text(meta_path: str) -> str:
    return Path(meta_path[: -len(".json")] + ".model.txt").read_text()


def _other_booster() -> bytes:
    import lightgbm as lgb

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    params = {"verbose": -1, "num_threads": 1, "seed": 0}
    return lgb.train(params, lgb.Dataset(x, x[:, 0]), num_boost_round=3).model_to_string().encode()


CORRUPTIONS = {
    # a truncated booster with its hash fixed crashed LightGBM's parser (SIGSEGV)
    "booster truncated": (
        lambda p: _rewrite(p, "model.txt", _booster_text(p)[:60000].encode()),
        "model.txt: tree ", "does not fit its tree_sizes entry",
    ),
    # a misspelt field crashed it too (std::terminate); same length, so tree_sizes still fit
    "booster field": (
        lambda p: _rewrite(p, "model.txt",
                           _booster_text(p).replace("leaf_value=", "leaf_vaLue=", 1).encode()),
        "model.txt: tree 0: fields",
    ),
    "booster cycle": (
        lambda p: _rewrite(p, "model.txt",
                           _booster_text(p).replace("\nleft_child=1 ", "\nleft_child=0 ", 1)
                           .encode()),
        "model.txt: tree 0: node 0 reached twice",
    ),
    "booster of another model": (
        lambda p: _rewrite(p, "model.txt", _other_booster()),
        "model.txt: max_feature_idx='2', expected 15",
    ),
    "booster changed, hash not": (
        lambda p: Path(p[: -len(".json")] + ".model.txt").write_text(
            _booster_text(p).replace("shrinkage=1\n", "shrinkage=2\n", 1)),
        "model.txt: content differs from the metadata's SHA-256",
    ),
    "booster truncated, hash not": (
        lambda p: Path(p[: -len(".json")] + ".model.txt").write_text(_booster_text(p)[:1000]),
        "model.txt: 1000 bytes, the metadata says",
    ),
    "metadata truncated": (
        lambda p: Path(p).write_text(Path(p).read_text()[:200]),
        "metadata is not JSON",
    ),
    "metadata oversized": (
        lambda p: Path(p).write_text(Path(p).read_text() + " " * model_store.MAX_META_BYTES),
        "metadata: ", "over the limit of 65536",
    ),
    "residuals float32": (
        lambda p: _rewrite(p, "residuals.npy", _npy(np.zeros((24, 6), dtype=np.float32))),
        "residuals.npy: must be a float64 array, got float32",
    ),
    "residuals shape": (
        lambda p: _rewrite(p, "residuals.npy", _npy(np.zeros((24, 5)))),
        "residuals.npy: shape (24, 5) does not match",
    ),
    "schema violation": (
        lambda p: _edit_meta(p, lambda m: m.update(horizon_steps="6")),
        "metadata horizon_steps: Input should be a valid integer",
    ),
    "state schema violation": (
        lambda p: _edit_meta(p, lambda m: m["state"]["params"].update(n_estimators=-1)),
        "state: params.n_estimators must be an integer >= 1, got -1",
    ),
    "file name with a path": (
        lambda p: _edit_meta(p, lambda m: m["files"].update(
            {"../../../../etc/passwd": m["files"]["model.txt"]})),
        "is not a plain state file name",
    ),
    "foreign format": (
        lambda p: _edit_meta(p, lambda m: m.update(format=3)),
        "metadata format 3 is not 2 (another version)",
    ),
    "foreign state version": (
        lambda p: _edit_meta(p, lambda m: m["state"].update(schema_version=9)),
        "metadata state.schema_version: Input should be 2",
    ),
}


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_a_broken_model_is_refused_and_refitted(store_copy, twitter, case):
    root, meta_path = store_copy
    corrupt, *reason = CORRUPTIONS[case]
    corrupt(meta_path)
    doc = _run_forecast(_settings(root, "lgbm_lags"), twitter, T2)
    _assert_refitted(doc, root, *reason)


# --------------------------------------------------------------------------------------------
# locations


def test_metadata_outside_the_root_is_refused(tmp_path, store_copy, twitter):
    root, _ = store_copy
    store = ArtifactStore(str(root))
    day = root / "models" / SERVICE / "2024-01-12"
    # a complete, valid model in another folder
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(root, elsewhere)
    other = elsewhere / "models" / SERVICE / "2024-01-12" / "000000.json"
    rel = os.path.relpath(other, day)
    cases = {
        other.as_uri(): "outside the store root",
        str(other): "outside the store root",
        f"{day.as_uri()}/{rel}": "'..' in the path",
        f"s3://bucket/models/{SERVICE}/2024-01-12/000000.json": "scheme 's3'",
        f"memory://{root}/models/{SERVICE}/2024-01-12/000000.json": "scheme 'memory'",
        f"models/{SERVICE}/2024-01-12/000000.json": "outside the store root",
        f"{root.as_uri()}/history/{SERVICE}/2024-01-12/000000.json": "not a model metadata",
    }
    for uri, reason in cases.items():
        with pytest.raises(model_store.StoredModelError, match=reason.replace("'", ".")):
            load_model(store, uri)
    # a symlink in the store leading out of it: the metadata
    link = day / "000500.json"
    link.symlink_to(other)
    with pytest.raises(model_store.StoredModelError, match="outside the store root"):
        load_model(store, store.uri("models", SERVICE, T1 + pd.Timedelta(minutes=5)))
    link.unlink()
    # ... and a state file (same bytes, so the hash alone would pass)
    residuals = day / "000000.residuals.npy"
    outside = tmp_path / "residuals.npy"
    shutil.copy(residuals, outside)
    residuals.unlink()
    residuals.symlink_to(outside)
    with pytest.raises(model_store.StoredModelError, match=r"residuals\.npy: .* outside"):
        load_model(store, store.uri("models", SERVICE, T1))
    assert usable_model(store, _settings(root, "lgbm_lags").service(SERVICE), T2) is None
    doc = _run_forecast(_settings(root, "lgbm_lags"), twitter, T2)
    _assert_refitted(doc, root, "residuals.npy", "outside the store root")


# --------------------------------------------------------------------------------------------
# the state schema on its own


@pytest.fixture(scope="module")
def naive_state(twitter):
    model = make_model("seasonal_naive", horizon=6, calibration_every=12)
    return dump_state(model.fit(twitter.iloc[:800]))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda d: d["params"].update(extra=1), r"unexpected \['extra'\]"),
        (lambda d: d["params"].update(horizon=True), "params.horizon.*valid integer"),
        (lambda d: d["params"].update(calibration_days=float("nan")), "finite number"),
        (lambda d: d.update(season=100), "season 100 is not the steps per day"),
        (lambda d: d.update(boosters=["model"]), "boosters must be"),
        (lambda d: d.update(weight=0.5), "weight: only a hybrid has it"),
        (lambda d: d.update(model="os.system"), "not a registered model"),
        (lambda d: d.update(schema_version=1), "schema_version 1 is not 2"),
    ],
)
def test_state_schema_violations_are_refused(naive_state, change, reason):
    doc = json.loads(json.dumps(naive_state.doc))
    change(doc)
    files = state_files(naive_state)
    with pytest.raises(ModelStateError, match=reason):
        load_state(state_from_files(doc, files))
    # the untouched state loads
    load_state(state_from_files(naive_state.doc, files))


def test_non_finite_residuals_are_refused(naive_state):
    bad = naive_state.residuals.copy()
    bad[0, 0] = np.inf
    files = {"residuals.npy": _npy(bad)}
    with pytest.raises(ModelStateError, match=r"residuals\.npy: has non-finite values"):
        load_state(state_from_files(naive_state.doc, files))


def test_lightgbm_text_checks_accept_lightgbm_output_and_nothing_else():
    text = _other_booster().decode()
    check_lightgbm_text(text, 3, 3, "m.txt")
    for bad, reason in [
        (text[: len(text) // 2], "tree"),
        (text.replace("tree_sizes=", "tree_sizes=1 "), "tree 0 does not fit"),
        (text.replace("[boosting: gbdt]", "import os"), "unexpected line"),
        (text.replace("num_cat=0", "num_cat=1", 1), "categorical"),
        (text.replace("decision_type=2", "decision_type=1", 1), "decision_type"),
    ]:
        with pytest.raises(ModelStateError, match=reason):
            check_lightgbm_text(bad, 3, 300, "m.txt")
    with pytest.raises(ModelStateError, match=r"1\.\.2 positive sizes"):
        check_lightgbm_text(text, 3, 2, "m.txt")
