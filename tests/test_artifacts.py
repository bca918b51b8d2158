"""The artifact store: layout by kind, service and run time; URIs only; retention given now."""

from __future__ import annotations

import pandas as pd
import pytest

from surgecast.artifacts import ArtifactStore

T = pd.Timestamp("2024-03-05T10:05:00Z")


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path):
    if request.param == "local":
        yield ArtifactStore(str(tmp_path / "store"))
        return
    root = f"memory://surgecast-test-{id(request)}"
    store = ArtifactStore(root)
    yield store
    if store.fs.exists(store.base):
        store.fs.rm(store.base, recursive=True)


def test_layout_by_kind_service_day_and_time_and_round_trip(store):
    uri = store.write_json("plans", "resnet", T, {"service": "resnet", "n": 1})
    assert isinstance(uri, str)
    assert uri.endswith("/plans/resnet/2024-03-05/100500.json")
    assert uri.startswith("file:///" if store.local else "memory://")
    assert ArtifactStore.read_json(uri) == {"service": "resnet", "n": 1}
    # a retried run (same now) rewrites the same artifact
    assert store.write_json("plans", "resnet", T, {"n": 2}) == uri
    assert ArtifactStore.read_json(uri) == {"n": 2}


def test_entries_and_latest_respect_the_time_limits(store):
    times = [T - pd.Timedelta(days=1), T - pd.Timedelta(minutes=5), T, T + pd.Timedelta(hours=1)]
    uris = [store.write_json("forecasts", "svc", t, {"i": i}) for i, t in enumerate(times)]
    store.write_json("forecasts", "other", T, {})
    entries = store.entries("forecasts", "svc", start=T - pd.Timedelta(hours=1), end=T)
    assert [e.uri for e in entries] == uris[1:3]
    assert store.latest("forecasts", "svc", at_or_before=T).uri == uris[2]
    assert store.latest("forecasts", "svc", at_or_before=T - pd.Timedelta(hours=2)).uri == uris[0]
    assert store.latest("forecasts", "svc", at_or_before=T - pd.Timedelta(days=2)) is None
    assert store.latest("forecasts", "nobody", at_or_before=T) is None
    assert store.services("forecasts") == ["other", "svc"]


def test_retention_deletes_old_days_but_keeps_the_newest_model(store):
    old = T - pd.Timedelta(days=20)
    store.write_json("decisions", "svc", old, {})
    store.write_json("decisions", "svc", T, {})
    store.write_bytes("models", "svc", old, b"model", "pkl")
    store.write_json("models", "svc", old, {"pickle": "..."})
    store.write_json("models", "other", old - pd.Timedelta(days=1), {})
    store.write_json("models", "other", old, {})
    deleted = store.prune(T, retention_days=14)
    assert any(u.endswith("/decisions/svc/" + f"{old:%Y-%m-%d}") for u in deleted)
    assert [e.at for e in store.entries("decisions", "svc")] == [T]
    # the only model of svc is old but kept; of other only the newest day is kept
    assert [e.at for e in store.entries("models", "svc")] == [old]
    assert [e.at for e in store.entries("models", "other")] == [old]
    assert store.prune(T, retention_days=14) == []


def test_record_files_named_by_date_are_pruned_too(tmp_path):
    store = ArtifactStore(str(tmp_path))
    folder = tmp_path / "decisions" / "svc"
    folder.mkdir(parents=True)
    (folder / "2024-01-01.jsonl").write_text("{}\n")
    (folder / "counters.json").write_text("{}\n")
    store.prune(T, retention_days=14)
    assert sorted(p.name for p in folder.iterdir()) == ["counters.json"]


def test_times_must_be_tz_aware_and_kinds_known(store):
    with pytest.raises(ValueError, match="tz-aware"):
        store.uri("plans", "svc", pd.Timestamp("2024-01-01T00:00:00"))
    with pytest.raises(ValueError, match="artifact kind"):
        store.uri("pictures", "svc", T)
