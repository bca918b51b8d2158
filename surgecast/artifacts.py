"""The artifact store: every stage's output as a file under one root, addressed by URI.

Layout: ``<root>/<kind>/<service>/<YYYY-MM-DD>/<HHMMSS>.<ext>``, by the UTC time of the run
that wrote it (the run's ``now``, never the wall clock), so a retried run rewrites the same file
and a day's artifacts can be listed, scored or deleted together. Kinds: :data:`KINDS`.

The root is a local directory (the default) or any fsspec URL (``s3://bucket/prefix``,
``gs://...``, ``memory://`` in tests). Stages exchange URIs (``file:///...``, ``s3://...``) and
nothing else, so Airflow's XCom and the command line carry only strings.

Retention (:meth:`ArtifactStore.prune`) deletes whole days older than the retention, given
``now``; the newest fitted model of a service is always kept, however old.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pandas as pd

KINDS = ("history", "forecasts", "plans", "decisions", "models", "accuracy")
"""history: the RPS history a run read; forecasts: Forecast.to_dict; plans: Plan.to_dict;
decisions: decision records; models: fitted models (pickle + JSON sidecar); accuracy: daily
accuracy reports."""

_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})")
_STAMP = re.compile(r"^(\d{6})\.")


@dataclass(frozen=True)
class Entry:
    """One stored artifact: when its run was, and where it is."""

    at: pd.Timestamp
    uri: str


class ArtifactStore:
    """Artifacts under ``root`` (a local directory or an fsspec URL).

    Args:
        root: the store's root.
    """

    def __init__(self, root: str) -> None:
        from fsspec.core import url_to_fs

        self.root = str(root)
        self.fs, self.base = url_to_fs(self.root)
        self.base = self.base.rstrip("/")
        self.local = "file" in _protocols(self.fs)

    # ---- addresses
    def path(self, kind: str, service: str, at: pd.Timestamp, ext: str = "json") -> str:
        """The file system path of an artifact (no protocol)."""
        if kind not in KINDS:
            raise ValueError(f"artifact kind {kind!r} is not one of {', '.join(KINDS)}")
        at = _utc(at)
        return f"{self.base}/{kind}/{service}/{at:%Y-%m-%d}/{at:%H%M%S}.{ext}"

    def uri(self, kind: str, service: str, at: pd.Timestamp, ext: str = "json") -> str:
        """The URI of an artifact: ``file:///...`` for a local root, else the root's scheme."""
        return self.fs.unstrip_protocol(self.path(kind, service, at, ext))

    # ---- writing and reading
    def write_json(self, kind: str, service: str, at: pd.Timestamp, data: Any) -> str:
        """Write ``data`` as JSON; return its URI."""
        text = json.dumps(data, indent=1, sort_keys=False, default=_json_default, allow_nan=False)
        return self.write_bytes(kind, service, at, text.encode("utf-8"), "json")

    def write_bytes(
        self, kind: str, service: str, at: pd.Timestamp, data: bytes, ext: str
    ) -> str:
        """Write raw bytes; return the URI. Local writes are atomic (temporary file + rename)."""
        path = self.path(kind, service, at, ext)
        parent = path.rsplit("/", 1)[0]
        if self.local:
            self.fs.makedirs(parent, exist_ok=True)
            tmp = f"{path}.tmp"
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, path)
        else:
            self.fs.pipe_file(path, data)
        return self.fs.unstrip_protocol(path)

    @staticmethod
    def read_bytes(uri: str) -> bytes:
        """The bytes at ``uri`` (any fsspec URI or local path).

        Raises:
            FileNotFoundError: nothing there.
        """
        from fsspec.core import url_to_fs

        fs, path = url_to_fs(uri)
        return fs.cat_file(path)

    @classmethod
    def read_json(cls, uri: str) -> Any:
        """The JSON document at ``uri``.

        Raises:
            FileNotFoundError: nothing there.
            ValueError: not JSON.
        """
        return json.loads(cls.read_bytes(uri).decode("utf-8"))

    # ---- listing
    def entries(
        self,
        kind: str,
        service: str,
        *,
        start: pd.Timestamp | None = None,
        end: pd.Timestamp | None = None,
        ext: str = "json",
    ) -> list[Entry]:
        """Artifacts of one kind and service with ``start <= at <= end``, oldest first."""
        start = None if start is None else _utc(start)
        end = None if end is None else _utc(end)
        out: list[Entry] = []
        for day, folder in self._days(kind, service):
            if start is not None and day < start.normalize():
                continue
            if end is not None and day > end.normalize():
                continue
            out += [
                e
                for e in self._files(folder, day, ext)
                if (start is None or e.at >= start) and (end is None or e.at <= end)
            ]
        return sorted(out, key=lambda e: e.at)

    def latest(
        self, kind: str, service: str, *, at_or_before: pd.Timestamp, ext: str = "json"
    ) -> Entry | None:
        """The newest artifact written at or before ``at_or_before``, or None."""
        limit = _utc(at_or_before)
        for day, folder in sorted(self._days(kind, service), reverse=True):
            if day > limit.normalize():
                continue
            found = [e for e in self._files(folder, day, ext) if e.at <= limit]
            if found:
                return max(found, key=lambda e: e.at)
        return None

    def services(self, kind: str) -> list[str]:
        """Services that have artifacts of ``kind``."""
        return sorted(p.rsplit("/", 1)[-1] for p in self._ls(f"{self.base}/{kind}", dirs=True))

    # ---- retention
    def prune(self, now: pd.Timestamp, retention_days: float) -> list[str]:
        """Delete every day of artifacts that ended more than ``retention_days`` before ``now``.

        The day that holds a service's newest model is kept. Entries named by a date (the
        store's day folders, and ``<YYYY-MM-DD>.jsonl`` record files) are the unit deleted.

        Returns:
            The URIs deleted.
        """
        cutoff = _utc(now) - pd.Timedelta(days=retention_days)
        deleted: list[str] = []
        for kind_path in self._ls(self.base, dirs=True):
            kind = kind_path.rsplit("/", 1)[-1]
            if kind not in KINDS:
                continue
            for service_path in self._ls(kind_path, dirs=True):
                keep = None
                if kind == "models":
                    dated = sorted(self._dated(service_path))
                    keep = dated[-1][1] if dated else None
                for day, path in self._dated(service_path):
                    if day + pd.Timedelta(days=1) <= cutoff and path != keep:
                        self.fs.rm(path, recursive=True)
                        deleted.append(self.fs.unstrip_protocol(path))
        return deleted

    # ---- internals
    def _ls(self, path: str, *, dirs: bool) -> list[str]:
        try:
            listing = self.fs.ls(path, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        want = "directory" if dirs else "file"
        return [
            item["name"].rstrip("/")
            for item in listing
            if item.get("type") == want and item["name"].rstrip("/") != path.rstrip("/")
        ]

    def _dated(self, folder: str) -> list[tuple[pd.Timestamp, str]]:
        """(day, path) of every entry of ``folder`` whose name starts with a date."""
        try:
            names = [item["name"].rstrip("/") for item in self.fs.ls(folder, detail=True)]
        except (FileNotFoundError, NotADirectoryError):
            return []
        out = []
        for path in names:
            match = _DATE.match(path.rsplit("/", 1)[-1])
            if match:
                try:
                    out.append((pd.Timestamp(match.group(1), tz="UTC"), path))
                except ValueError:
                    continue
        return out

    def _days(self, kind: str, service: str) -> list[tuple[pd.Timestamp, str]]:
        folder = f"{self.base}/{kind}/{service}"
        return [(day, path) for day, path in self._dated(folder) if self.fs.isdir(path)]

    def _files(self, folder: str, day: pd.Timestamp, ext: str) -> list[Entry]:
        out = []
        for path in self._ls(folder, dirs=False):
            name = path.rsplit("/", 1)[-1]
            match = _STAMP.match(name)
            if not match or not name.endswith(f".{ext}"):
                continue
            hhmmss = match.group(1)
            at = day + pd.Timedelta(
                hours=int(hhmmss[:2]), minutes=int(hhmmss[2:4]), seconds=int(hhmmss[4:])
            )
            out.append(Entry(at, self.fs.unstrip_protocol(path)))
        return out


def _protocols(fs) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _utc(ts) -> pd.Timestamp:
    stamp = pd.Timestamp(ts)
    if stamp.tzinfo is None:
        raise ValueError(f"{ts!r}: artifact times must be tz-aware (UTC)")
    return stamp.tz_convert("UTC")


def _json_default(value: Any) -> Any:
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, tuple | set):
        return list(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
