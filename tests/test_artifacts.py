"""The artifact store: layout by kind, service and run time; URIs only; retention given now and
the wall clock; DNS-1123 service names only; atomic writes; corrupt artifacts read as one error."""

from __future__ import annotations

import gzip
import json
import os
import threading

import pandas as pd
import pytest

from surgecast.live.artifacts import KINDS, ArtifactError, ArtifactStore, check_service_name

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
    deleted = store.prune(T, retention_days=14, wall_clock=lambda: T.timestamp())
    assert any(u.endswith("/decisions/svc/" + f"{old:%Y-%m-%d}") for u in deleted)
    assert [e.at for e in store.entries("decisions", "svc")] == [T]
    # the only model of svc is old but kept; of other only the newest day is kept
    assert [e.at for e in store.entries("models", "svc")] == [old]
    assert [e.at for e in store.entries("models", "other")] == [old]
    assert store.prune(T, retention_days=14, wall_clock=lambda: T.timestamp()) == []


def test_record_files_named_by_date_are_pruned_too(tmp_path):
    store = ArtifactStore(str(tmp_path))
    folder = tmp_path / "decisions" / "svc"
    folder.mkdir(parents=True)
    (folder / "2024-01-01.jsonl").write_text("{}\n")
    (folder / "2024-03-05.jsonl").write_text("{}\n")
    (folder / "counters.json").write_text("{}\n")
    store.prune(T, retention_days=14, wall_clock=lambda: T.timestamp())
    assert sorted(p.name for p in folder.iterdir()) == ["2024-03-05.jsonl", "counters.json"]


def test_times_must_be_tz_aware_and_kinds_known(store):
    with pytest.raises(ValueError, match="tz-aware"):
        store.uri("plans", "svc", pd.Timestamp("2024-01-01T00:00:00"))
    with pytest.raises(ValueError, match="artifact kind"):
        store.uri("pictures", "svc", T)


# --------------------------------------------------------------------------------------------
# retention against the clock, names, atomic writes, corrupt artifacts


def _every_kind(store, service: str, days: int) -> None:
    for kind in KINDS:
        for d in range(days, -1, -1):
            store.write_json(kind, service, T - pd.Timedelta(days=d), {"d": d})


def test_a_future_now_prunes_from_the_wall_clock_not_from_now(store):
    _every_kind(store, "svc", days=20)
    # `run --once --now` two years ahead while the wall clock says T: nothing within the
    # retention before T goes, whatever now says.
    deleted = store.prune(T + pd.Timedelta(days=730), retention_days=14,
                          wall_clock=lambda: T.timestamp())
    for kind in KINDS:
        days = sorted({e.at.normalize() for e in store.entries(kind, "svc")})
        assert days[0] == (T - pd.Timedelta(days=14)).normalize(), kind
        assert days[-1] == T.normalize()
    assert len(deleted) == len(KINDS) * 6  # T-20 .. T-15 of every kind
    # the same prune when the wall clock has really moved on two years: only the newest day
    # of every kind and service is left
    store.prune(T + pd.Timedelta(days=730), retention_days=14,
                wall_clock=lambda: (T + pd.Timedelta(days=730)).timestamp())
    for kind in KINDS:
        assert [e.at for e in store.entries(kind, "svc")] == [T], kind


def test_retention_refuses_a_retention_that_is_not_positive(store):
    for bad in (0, -1, float("nan"), float("inf"), "14"):
        with pytest.raises(ValueError, match="retention_days"):
            store.prune(T, retention_days=bad)


@pytest.mark.parametrize(
    "name",
    ["../../..", "..", ".", "", "/etc", "a/b", "a/../../b", "Upper", "a_b", "a..b", "-a",
     "a-", "x" * 254, "a b", "a\x00b", None, 7],
)
def test_service_names_that_are_not_dns_1123_never_become_paths(store, tmp_path, name):
    before = sorted(p for p in tmp_path.rglob("*"))
    for attempt in (
        lambda: store.write_json("plans", name, T, {}),
        lambda: store.write_bytes("history", name, T, b"x", "json.gz"),
        lambda: store.entries("decisions", name),
        lambda: store.latest("decisions", name, at_or_before=T),
        lambda: store.uri("plans", name, T),
    ):
        with pytest.raises(ArtifactError, match="not a DNS-1123 name"):
            attempt()
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_dns_1123_names_are_accepted(store):
    for name in ("a", "svc-00", "resnet.prod", "x" * 63):
        assert check_service_name(name) == name
        assert f"/plans/{name}/" in store.write_json("plans", name, T, {})
    with pytest.raises(ArtifactError, match="extension"):
        store.write_bytes("plans", "a", T, b"", "../json")


def test_read_doc_turns_every_kind_of_damage_into_one_error(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    good = json.dumps({"kind": "plan", "values": list(range(200))}).encode()
    cases = {
        "truncated json": ("json", good[: len(good) // 2]),
        "empty": ("json", b""),
        "not utf-8": ("json", b"\xff\xfe{}"),
        "a list": ("json", b"[1, 2]"),
        "truncated gz": ("json.gz", gzip.compress(good)[:30]),
        "not gzip": ("json.gz", good),
    }
    for i, (what, (ext, data)) in enumerate(cases.items()):
        uri = store.write_bytes("plans", "svc", T + pd.Timedelta(seconds=i), data, ext)
        with pytest.raises(ArtifactError, match="corrupt artifact") as info:
            ArtifactStore.read_doc(uri)
        assert uri in str(info.value) and "\n" not in str(info.value), what
    with pytest.raises(ArtifactError, match="artifact missing"):
        ArtifactStore.read_doc(store.uri("plans", "svc", T - pd.Timedelta(days=1)))
    uri = store.write_bytes("plans", "svc", T, gzip.compress(good), "json.gz")
    assert ArtifactStore.read_doc(uri)["kind"] == "plan"


def test_readers_never_see_a_partial_write(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    docs = [{"writer": w, "pad": "x" * 400_000} for w in range(2)]
    uri = store.write_json("decisions", "svc", T, docs[0])
    failures: list[str] = []

    def writer(w: int) -> None:
        for _ in range(40):
            store.write_json("decisions", "svc", T, docs[w])

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    reads = 0
    while any(t.is_alive() for t in threads):
        try:
            assert ArtifactStore.read_doc(uri)["pad"] == docs[0]["pad"]
        except ArtifactError as exc:
            failures.append(str(exc))
        reads += 1
    for t in threads:
        t.join()
    assert failures == [] and reads > 0
    folder = tmp_path / "store" / "decisions" / "svc" / f"{T:%Y-%m-%d}"
    assert [p.name for p in folder.iterdir()] == [f"{T:%H%M%S}.json"]  # no temporary left


def test_a_failed_write_leaves_the_previous_artifact_whole(tmp_path, monkeypatch):
    store = ArtifactStore(str(tmp_path / "store"))
    uri = store.write_json("plans", "svc", T, {"n": 1})

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        store.write_json("plans", "svc", T, {"n": 2, "pad": "x" * 10_000})
    monkeypatch.undo()
    assert ArtifactStore.read_doc(uri) == {"n": 1}
    folder = tmp_path / "store" / "plans" / "svc" / f"{T:%Y-%m-%d}"
    assert [p.name for p in folder.iterdir()] == [f"{T:%H%M%S}.json"]
