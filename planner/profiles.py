"""Latency profiles (the Themis latency model), pipelines of them, and fitting from measurements.

Themis (K. Razavi, M. Salmani, M. Mühlhäuser, B. Koldehofe, L. Wang, "A Tale of Two Scales:
Reconciling Horizontal and Vertical Scaling for Inference Serving Systems", arXiv:2407.14843,
2024) models the tail latency of one replica running batches of ``b`` requests on ``c`` CPU cores
as

    l(b, c) = α·b/c + β·b + γ/c + ζ        (ms)

a parallel part that shrinks with the cores (α·b + γ)/c and a serial part β·b + ζ (Amdahl). The
replica then serves h(b, c) = 1000·b / l(b, c) requests per second.

Profile files are TOML (stdlib ``tomllib``) or JSON with the same keys; a file with ``stages``
names a pipeline of profile files in request order. A CSV of measurements ``cores,batch,p99_ms``
is fitted on load. This is the planner's only I/O.
"""

from __future__ import annotations

import csv
import json
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import curve_fit

from planner.errors import PlannerInputError

PROFILE_SUFFIXES = (".toml", ".json")
MAX_PROFILE_CORES = 256
"""Largest ``max_cores``: a replica runs on one node, and the largest nodes have a few hundred
cores. Together with MAX_PROFILE_BATCH it bounds the shapes the DP enumerates."""
MAX_PROFILE_BATCH = 1_024
"""Largest ``max_batch``."""
MAX_PROFILE_BYTES = 1024 * 1024
"""Largest profile or pipeline file read (1 MiB; real ones are a few hundred bytes)."""
MAX_MEASUREMENT_BYTES = 16 * 1024 * 1024
"""Largest measurement CSV read (16 MiB)."""
MAX_LATENCY_MS = 3_600_000.0
"""Largest measured latency accepted: an hour."""
_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,251}[A-Za-z0-9])?$")
"""A profile or pipeline name: letters, digits, '-', '_' and '.' (no path separators)."""
DEFAULT_MEMORY_MB = 1024.0
"""Memory per replica assumed for a profile fitted from a CSV (the CSV does not say)."""


@dataclass(frozen=True)
class LatencyProfile:
    """Tail latency of one model replica as a function of batch size and CPU cores.

    Attributes:
        name: model name, e.g. ``"resnet18"``.
        alpha: ms per request per core (parallel part that scales with the batch).
        beta: ms per request (serial part that scales with the batch).
        gamma: ms per core (parallel fixed cost).
        zeta: ms (serial fixed cost; may be negative as a fitted intercept).
        max_cores: largest integer number of cores per replica; cores are 1..max_cores.
        max_batch: largest batch size; batches are 1..max_batch.
        memory_mb: memory per replica (MiB).
        percentile: the latency percentile the coefficients describe.
        source: provenance of the coefficients.

    Invariants: alpha, beta, gamma >= 0 (more cores never slow a batch down, a bigger batch never
    takes less time) and l(b, c) > 0 on the whole grid.
    """

    name: str
    alpha: float
    beta: float
    gamma: float
    zeta: float
    max_cores: int
    max_batch: int
    memory_mb: float
    percentile: float = 99.0
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise PlannerInputError(
                f"profile name {str(self.name)[:80]!r}: use letters, digits, '-', '_' and '.'"
            )
        if not isinstance(self.source, str):
            raise PlannerInputError(f"profile {self.name!r}: source must be a text")
        where = f"profile {self.name!r}"
        for key in ("alpha", "beta", "gamma", "zeta", "memory_mb", "percentile"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise PlannerInputError(f"{where}: {key} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise PlannerInputError(f"{where}: {key} must be finite, got {value}")
        for key in ("alpha", "beta", "gamma"):
            if getattr(self, key) < 0:
                raise PlannerInputError(f"{where}: {key} must be >= 0, got {getattr(self, key)}")
        for key, high in (("max_cores", MAX_PROFILE_CORES), ("max_batch", MAX_PROFILE_BATCH)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PlannerInputError(f"{where}: {key} must be an integer >= 1, got {value!r}")
            if value > high:
                raise PlannerInputError(f"{where}: {key} must be at most {high}, got {value}")
        if self.memory_mb < 0:
            raise PlannerInputError(f"{where}: memory_mb must be >= 0, got {self.memory_mb}")
        if not 0 < self.percentile < 100:
            raise PlannerInputError(
                f"{where}: percentile must be in (0, 100), got {self.percentile}"
            )
        # With alpha, beta, gamma >= 0 the smallest latency is at batch 1 and the most cores.
        fastest = self.latency_ms(1, self.max_cores)
        if fastest <= 0:
            raise PlannerInputError(
                f"{where}: latency must be > 0 for every batch and core count, "
                f"got {fastest:.3f} ms at batch 1 on {self.max_cores} cores"
            )

    def latency_ms(self, batch, cores):
        """l(b, c) in ms at the profile's percentile; scalars or numpy arrays (broadcast)."""
        return self.alpha * batch / cores + self.beta * batch + self.gamma / cores + self.zeta

    def throughput_rps(self, batch, cores):
        """h(b, c) = 1000·b / l(b, c): requests per second one replica serves back to back."""
        return 1000.0 * batch / self.latency_ms(batch, cores)

    def capacity_rps(self, config) -> float:
        """What a stage shape serves (rps): replicas × h(batch, cores). The one capacity every
        planner, guard, controller and report uses."""
        return config.replicas * float(self.throughput_rps(config.batch, config.cores))

    def to_dict(self) -> dict:
        """The profile as the keys of a profile file."""
        return {
            "name": self.name,
            "alpha": self.alpha,
            "beta": self.beta,
            "gamma": self.gamma,
            "zeta": self.zeta,
            "max_cores": self.max_cores,
            "max_batch": self.max_batch,
            "memory_mb": self.memory_mb,
            "percentile": self.percentile,
            "source": self.source,
        }


@dataclass(frozen=True)
class Pipeline:
    """Models served in sequence: every request passes stage 1, then stage 2, ...

    Attributes:
        name: pipeline name, e.g. ``"video"``; a one-model pipeline takes the model's name.
        stages: one latency profile per stage, in request order (at least one).
    """

    name: str
    stages: tuple[LatencyProfile, ...]

    def __post_init__(self) -> None:
        if not self.stages:
            raise PlannerInputError(f"pipeline {self.name!r}: no stages")
        if not all(isinstance(s, LatencyProfile) for s in self.stages):
            raise PlannerInputError(f"pipeline {self.name!r}: stages must be LatencyProfiles")

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)


@dataclass(frozen=True)
class FitReport:
    """How well a fitted profile reproduces its measurements.

    Attributes:
        r2: coefficient of determination of p99_ms.
        rmse_ms: root-mean-square error (ms).
        max_abs_err_ms: largest absolute error (ms).
        n: number of measurements.
    """

    r2: float
    rmse_ms: float
    max_abs_err_ms: float
    n: int


# --------------------------------------------------------------------------------------------
# files


def bundled_profile(name: str) -> Path:
    """The path of a profile bundled with the package: ``"resnet18"``, ``"yolov5n"``, ``"video"``.

    Looks in ``surgecast/_bundled_data/profiles`` (a wheel install) and then in ``data/profiles``
    beside the packages (a checkout).

    Raises:
        PlannerInputError: no such profile; the message lists the bundled ones.
    """
    folders = [folder for folder in _bundled_dirs() if folder.is_dir()]
    if Path(name).name == name and name not in {"", ".", ".."}:
        for folder in folders:
            for candidate in (folder / name, *(folder / f"{name}{s}" for s in PROFILE_SUFFIXES)):
                if candidate.is_file():
                    return candidate
    names = sorted({p.stem for f in folders for s in PROFILE_SUFFIXES for p in f.glob(f"*{s}")})
    listing = ", ".join(names) if names else "none (no bundled profiles folder found)"
    raise PlannerInputError(f"{name}: no such bundled profile; available: {listing}")


def _bundled_dirs() -> list[Path]:
    root = Path(__file__).resolve().parent.parent
    return [root / "surgecast" / "_bundled_data" / "profiles", root / "data" / "profiles"]


def load_pipeline(
    path: str | Path,
    *,
    max_cores: int | None = None,
    max_batch: int | None = None,
    memory_mb: float = DEFAULT_MEMORY_MB,
) -> Pipeline:
    """Read a profile file (a one-stage pipeline), a pipeline file, or a CSV of measurements.

    Args:
        path: ``.toml``/``.json`` profile or pipeline file, or ``.csv`` with ``cores,batch,p99_ms``.
        max_cores, max_batch: limits of a profile fitted from a CSV; default: the largest measured
            (the fit is not trusted beyond the measurements). Ignored for profile files, which
            state their own limits.
        memory_mb: memory per replica of a profile fitted from a CSV.

    Raises:
        PlannerInputError: missing or malformed file, or a profile that breaks its invariants.
    """
    path = Path(path)
    _check_file(path, "profile file", MAX_PROFILE_BYTES)
    if path.suffix.lower() == ".csv":
        cores, batch, _ = read_measurements(path)
        if not _NAME.match(path.stem):
            raise PlannerInputError(f"{path}: the file name is not a valid profile name")
        profile, _ = fit_profile(
            path,
            name=path.stem,
            max_cores=int(cores.max()) if max_cores is None else max_cores,
            max_batch=int(batch.max()) if max_batch is None else max_batch,
            memory_mb=memory_mb,
        )
        return Pipeline(profile.name, (profile,))
    data = _read_mapping(path)
    if "stages" in data:
        return _pipeline_from_mapping(data, path)
    profile = _profile_from_mapping(data, path)
    return Pipeline(profile.name, (profile,))


def _check_file(path: Path, what: str, max_bytes: int) -> None:
    """Refuse a missing, non-regular (a FIFO would block) or oversized file."""
    try:
        if not path.exists():
            raise PlannerInputError(f"{path}: {what} not found")
        if not path.is_file():
            raise PlannerInputError(f"{path}: not a regular file (a {what} is needed)")
        size = path.stat().st_size
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        if isinstance(exc, PlannerInputError):
            raise
        raise PlannerInputError(f"{str(path)[:200]}: cannot read: {exc}") from None
    if size > max_bytes and path.suffix.lower() != ".csv":
        raise PlannerInputError(f"{path}: {size:,} bytes is too large for a {what}")
    if size > MAX_MEASUREMENT_BYTES:
        raise PlannerInputError(f"{path}: {size:,} bytes is too large for a {what}")


def _read_mapping(path: Path) -> dict:
    suffix = path.suffix.lower()
    if suffix not in PROFILE_SUFFIXES:
        raise PlannerInputError(f"{path}: unknown format {suffix!r}; use .toml, .json or .csv")
    _check_file(path, "profile file", MAX_PROFILE_BYTES)
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise PlannerInputError(f"{path}: cannot read profile: {exc}") from None
    except RecursionError:
        raise PlannerInputError(f"{path}: cannot read profile: nested too deeply") from None
    if not isinstance(data, dict):
        raise PlannerInputError(f"{path}: a profile file holds one table of keys")
    return data


def _profile_from_mapping(data: dict, path: Path) -> LatencyProfile:
    required = ("name", "alpha", "beta", "gamma", "zeta", "max_cores", "max_batch", "memory_mb")
    missing = [key for key in required if key not in data]
    if missing:
        raise PlannerInputError(f"{path}: missing key(s) {', '.join(missing)}")
    known = {*required, "percentile", "source"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise PlannerInputError(f"{path}: unknown key(s) {', '.join(unknown)}")
    try:
        return LatencyProfile(**data)
    except PlannerInputError as exc:
        raise PlannerInputError(f"{path}: {exc}") from None


def _pipeline_from_mapping(data: dict, path: Path) -> Pipeline:
    stages = data["stages"]
    if not isinstance(stages, list) or not stages or not all(isinstance(s, str) for s in stages):
        raise PlannerInputError(f"{path}: stages must be a non-empty list of profile names")
    if len(stages) > 64:
        raise PlannerInputError(f"{path}: {len(stages)} stages; at most 64")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not _NAME.match(name):
        raise PlannerInputError(f"{path}: name {str(name)[:80]!r} is not a valid pipeline name")
    unknown = sorted(set(data) - {"name", "stages"})
    if unknown:
        raise PlannerInputError(f"{path}: unknown key(s) {', '.join(unknown)}")
    profiles = []
    for stage in stages:
        if not _NAME.match(stage):
            # A stage names a file beside the pipeline file; never a path elsewhere.
            raise PlannerInputError(f"{path}: stage {stage[:80]!r} is not a profile name")
        stage_path = _sibling_profile(path.parent, stage)
        if stage_path is None:
            raise PlannerInputError(f"{path}: stage {stage!r}: no such profile beside the file")
        stage_data = _read_mapping(stage_path)
        if "stages" in stage_data:
            raise PlannerInputError(f"{path}: stage {stage!r} is itself a pipeline")
        profiles.append(_profile_from_mapping(stage_data, stage_path))
    return Pipeline(name, tuple(profiles))


def _sibling_profile(folder: Path, stage: str) -> Path | None:
    for candidate in (folder / stage, *(folder / f"{stage}{s}" for s in PROFILE_SUFFIXES)):
        if candidate.is_file():
            return candidate
    return None


# --------------------------------------------------------------------------------------------
# fitting


def read_measurements(csv_path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``cores, batch, p99_ms`` columns of a measurement CSV (int, int, float arrays).

    Raises:
        PlannerInputError: missing file or column, a non-numeric value, cores or batch that are
            not integers >= 1, or a latency that is not > 0.
    """
    path = Path(csv_path)
    _check_file(path, "measurements file", MAX_MEASUREMENT_BYTES)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PlannerInputError(f"{path}: cannot read measurements: {exc}") from None
    columns = ("cores", "batch", "p99_ms")
    if not rows or any(col not in rows[0] for col in columns):
        raise PlannerInputError(f"{path}: expected a header with columns cores,batch,p99_ms")
    values = np.empty((len(rows), 3))
    for i, row in enumerate(rows):
        for j, col in enumerate(columns):
            try:
                values[i, j] = float(row[col])
            except (TypeError, ValueError):
                raise PlannerInputError(
                    f"{path}: row {i + 2}: {col} is not a number: {row[col]!r}"
                ) from None
    cores, batch, p99 = values.T
    for name, col, high in (
        ("cores", cores, MAX_PROFILE_CORES),
        ("batch", batch, MAX_PROFILE_BATCH),
    ):
        bad = np.flatnonzero(~(col >= 1) | (col != np.round(col)))
        if bad.size:
            raise PlannerInputError(
                f"{path}: row {bad[0] + 2}: {name} must be an integer >= 1, got {col[bad[0]]}"
            )
        bad = np.flatnonzero(col > high)
        if bad.size:
            raise PlannerInputError(
                f"{path}: row {bad[0] + 2}: {name} must be at most {high}, got {col[bad[0]]:g}"
            )
    bad = np.flatnonzero(~((p99 > 0) & (p99 <= MAX_LATENCY_MS)))
    if bad.size:
        raise PlannerInputError(
            f"{path}: row {bad[0] + 2}: p99_ms must be > 0 and at most {MAX_LATENCY_MS:g}, "
            f"got {p99[bad[0]]}"
        )
    return cores.astype(np.int64), batch.astype(np.int64), p99


def _model(x: np.ndarray, alpha: float, beta: float, gamma: float, zeta: float) -> np.ndarray:
    batch, cores = x
    return alpha * batch / cores + beta * batch + gamma / cores + zeta


def fit_profile(
    csv_path: str | Path,
    *,
    name: str,
    max_cores: int,
    max_batch: int,
    memory_mb: float,
) -> tuple[LatencyProfile, FitReport]:
    """Fit α, β, γ, ζ to measurements ``cores,batch,p99_ms`` with ``scipy.optimize.curve_fit``.

    The model is linear in its coefficients; the fit bounds α, β, γ at >= 0 (the profile's
    invariants) and leaves ζ free. Four coefficients need the features b/c, b, 1/c and 1 to be
    linearly independent: at least two core counts and two batch sizes, not all on one line.

    Returns:
        The profile (with the given limits and memory) and the fit quality on the measurements.

    Raises:
        PlannerInputError: bad measurements, too few to identify the coefficients, or a fit that
            breaks the profile invariants.
    """
    path = Path(csv_path)
    cores, batch, p99 = read_measurements(path)
    features = np.column_stack([batch / cores, batch, 1.0 / cores, np.ones_like(p99)])
    if np.linalg.matrix_rank(features) < 4:
        raise PlannerInputError(
            f"{path}: {len(p99)} measurements cannot identify alpha, beta, gamma, zeta; "
            "measure at least 2 core counts and 2 batch sizes, with a batch > 1 at 2 core counts"
        )
    # The unconstrained least-squares solution, clipped into the bounds, is the starting point.
    start, *_ = np.linalg.lstsq(features, p99, rcond=None)
    start[:3] = np.maximum(start[:3], 0.0)
    try:
        coef, _ = curve_fit(
            _model,
            np.vstack([batch, cores]).astype(np.float64),
            p99,
            p0=start,
            bounds=([0.0, 0.0, 0.0, -np.inf], [np.inf, np.inf, np.inf, np.inf]),
        )
    except (RuntimeError, ValueError) as exc:  # no convergence, or a singular problem
        raise PlannerInputError(f"{path}: the latency model does not fit: {exc}") from None
    alpha, beta, gamma_, zeta = (float(v) for v in coef)
    profile = LatencyProfile(
        name=name,
        alpha=alpha,
        beta=beta,
        gamma=gamma_,
        zeta=zeta,
        max_cores=max_cores,
        max_batch=max_batch,
        memory_mb=float(memory_mb),
        source=f"fitted to {path.name} ({len(p99)} measurements)",
    )
    return profile, _fit_report(p99, profile.latency_ms(batch, cores))


def _fit_report(measured: np.ndarray, fitted: np.ndarray) -> FitReport:
    residual = measured - fitted
    total = float(np.sum((measured - measured.mean()) ** 2))
    r2 = 1.0 - float(np.sum(residual**2)) / total if total > 0 else 1.0
    return FitReport(
        r2=r2,
        rmse_ms=float(np.sqrt(np.mean(residual**2))),
        max_abs_err_ms=float(np.max(np.abs(residual))),
        n=len(measured),
    )
