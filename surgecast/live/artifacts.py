"""The artifact store: every stage's output as a file under one root, addressed by URI.

Layout: ``<root>/<kind>/<service>/<YYYY-MM-DD>/<HHMMSS>.<ext>``, by the UTC time of the run
that wrote it (the run's ``now``, never the wall clock), so a retried run rewrites the same file
and a day's artifacts can be listed, scored or deleted together. Kinds: :data:`KINDS`.

The root is a local directory (the default) or any fsspec URL (``s3://bucket/prefix``,
``gs://...``, ``memory://`` in tests). Stages exchange URIs (``file:///...``, ``s3://...``) and
nothing else, so Airflow's XCom and the command line carry only strings.

Retention (:meth:`ArtifactStore.prune`) deletes whole days older than the retention, counted
from the earlier of ``now`` and the wall clock (a run replayed with a future ``now`` cannot empty
the store); the newest day of every kind and service is always kept, however old.

Every write is atomic: a reader sees the old artifact or the new one, never a part. Locally a
temporary file in the same folder is written, flushed to disk and renamed over the artifact
(``rename(2)`` replaces atomically within one file system); on object stores a single PUT is
already all-or-nothing, and the write is read back and compared. Reading is defensive:
:meth:`ArtifactStore.read_doc` turns a missing, truncated or corrupt artifact into one
:class:`ArtifactError` the stages record and skip.

Service names are checked before any path is built: only DNS-1123 names (as Kubernetes
validates object names) reach the file system, so no name can climb out of the root.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import os
import re
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from forecasting.errors import BadInputError

KINDS = ("history", "forecasts", "plans", "decisions", "models", "accuracy")
"""history: the RPS history a run read; forecasts: Forecast.to_dict; plans: Plan.to_dict;
decisions: decision records; models: fitted models (JSON metadata and state, npy residuals,
LightGBM model text; see :mod:`surgecast.live.model_store`, never pickle); accuracy: daily accuracy
reports."""

_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})")
_STAMP = re.compile(r"^(\d{6})\.")
# A DNS-1123 subdomain, as the API server validates object names
# (kubernetes/kubernetes staging/src/k8s.io/apimachinery/pkg/util/validation/validation.go,
# IsDNS1123Subdomain): lower-case labels of [a-z0-9-] joined by single dots, at most 253
# characters. No "/", no "..", never empty or absolute: safe as one path component.
_SERVICE = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_EXT = re.compile(r"^[a-z0-9]+(\.[a-z0-9]+)*$")


class ArtifactError(BadInputError):
    """An artifact that cannot be used (missing, truncated, not JSON, not a JSON object), or an
    address that must not be built (a service name that is not DNS-1123). One line naming the
    artifact or name and the problem."""


def check_service_name(service: Any) -> str:
    """``service`` if it is a DNS-1123 subdomain (see ``_SERVICE``), else :class:`ArtifactError`.

    Raises:
        ArtifactError: empty, too long, upper case, or holding ``/``, ``..``, spaces, ``_``.
    """
    if not isinstance(service, str) or not _SERVICE.match(service):
        raise ArtifactError(
            f"service name {service!r}: not a DNS-1123 name (lower-case letters, digits, '-' "
            "and single '.' between them, at most 253 characters); refused as an artifact path"
        )
    return service


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
        """The file system path of an artifact (no protocol).

        Raises:
            ValueError: unknown kind, or a time without a zone.
            ArtifactError: a service name that is not DNS-1123, or a malformed extension.
        """
        folder = self._folder(kind, service)
        if not isinstance(ext, str) or not _EXT.match(ext):
            raise ArtifactError(f"artifact extension {ext!r}: use lower-case letters and digits")
        at = _utc(at)
        return f"{folder}/{at:%Y-%m-%d}/{at:%H%M%S}.{ext}"

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
        """Write raw bytes atomically; return the URI.

        Local: a uniquely named temporary file beside the artifact (so two writers of the same
        artifact never share one), fsync, ``os.replace``. Remote: one PUT (all-or-nothing on
        object stores), read back and compared.

        Raises:
            OSError: the write failed or did not read back as written (nothing half-written is
                left under the artifact's name).
        """
        path = self.path(kind, service, at, ext)
        if self.local:
            _write_atomic(path, data)
        else:
            self.fs.pipe_file(path, data)
            if self.fs.cat_file(path) != data:
                raise OSError(f"{self.fs.unstrip_protocol(path)}: did not read back as written")
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

    @classmethod
    def read_doc(cls, uri: str) -> dict:
        """The JSON object at ``uri`` (gzip-compressed when it ends in ``.gz``).

        Raises:
            ArtifactError: missing, unreadable, truncated, not JSON or not a JSON object; the
                message names the URI.
        """
        try:
            data = cls.read_bytes(uri)
            if uri.endswith(".gz"):
                data = gzip.decompress(data)
            doc = json.loads(data.decode("utf-8"))
        except FileNotFoundError:
            raise ArtifactError(f"{uri}: artifact missing") from None
        except (OSError, EOFError, zlib.error, ValueError) as exc:
            # gzip.BadGzipFile is an OSError, a truncated gzip an EOFError, bad JSON or UTF-8
            # a ValueError.
            raise ArtifactError(f"{uri}: corrupt artifact: {exc}") from None
        if not isinstance(doc, dict):
            raise ArtifactError(f"{uri}: corrupt artifact: a JSON {type(doc).__name__}, "
                                "not an object")
        return doc

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
        """Services that have artifacts of ``kind`` (folders with non-DNS-1123 names ignored)."""
        names = (p.rsplit("/", 1)[-1] for p in self._ls(f"{self.base}/{kind}", dirs=True))
        return sorted(n for n in names if _SERVICE.match(n))

    # ---- retention
    def prune(
        self,
        now: pd.Timestamp,
        retention_days: float,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> list[str]:
        """Delete every day of artifacts that ended more than ``retention_days`` before the
        earlier of ``now`` and the wall clock.

        The wall clock bounds ``now`` so that a run with a future time (a typo, a replay) cannot
        age every artifact out. The newest day of every kind and service is kept however old, so
        a service that has not run for a while keeps its last model, forecast, plan and record.
        Entries named by a date (the store's day folders, and ``<YYYY-MM-DD>.jsonl`` record
        files) are the unit deleted.

        Args:
            now: the run's time (tz-aware).
            retention_days: days kept (> 0).
            wall_clock: the real time, epoch seconds (injected by tests).

        Returns:
            The URIs deleted.

        Raises:
            ValueError: ``retention_days`` not a positive finite number, or ``now`` naive.
        """
        if not isinstance(retention_days, int | float) or not (
            math.isfinite(retention_days) and retention_days > 0
        ):
            raise ValueError(f"retention_days: must be a positive number, got {retention_days!r}")
        wall = pd.Timestamp(wall_clock(), unit="s", tz="UTC")
        cutoff = min(_utc(now), wall) - pd.Timedelta(days=retention_days)
        deleted: list[str] = []
        for kind_path in self._ls(self.base, dirs=True):
            kind = kind_path.rsplit("/", 1)[-1]
            if kind not in KINDS:
                continue
            for service_path in self._ls(kind_path, dirs=True):
                dated = self._dated(service_path)
                if not dated:
                    continue
                newest = max(day for day, _ in dated)
                for day, path in dated:
                    if day == newest or day + pd.Timedelta(days=1) > cutoff:
                        continue
                    try:
                        self.fs.rm(path, recursive=True)
                    except FileNotFoundError:  # pruned meanwhile by another run
                        continue
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

    def _folder(self, kind: str, service: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"artifact kind {kind!r} is not one of {', '.join(KINDS)}")
        return f"{self.base}/{kind}/{check_service_name(service)}"

    def _days(self, kind: str, service: str) -> list[tuple[pd.Timestamp, str]]:
        folder = self._folder(kind, service)
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


def _write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to the local ``path`` so that readers never see a partial file."""
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    # The leading dot keeps the temporary file out of listings (_STAMP needs a digit first).
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; artifacts are read by other tools
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # Persist the rename itself (the folder entry), or a crash could lose the new name.
    with contextlib.suppress(OSError):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


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
