"""RPS sources: ``timestamp,rps`` CSV files and the traces bundled with the package.

File I/O lives here; every function returns an RPS history in the contract of
``forecasting.cleaning`` (float64 rps >= 0 named ``"rps"``, tz-aware UTC ``DatetimeIndex``,
strictly increasing and regular at the step, NaN = no data). Bad files are refused with a
one-line ``BadInputError`` naming the file and the problem; rows are counted from 1 after the
header.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

import surgecast
from forecasting.cleaning import format_step, format_time, infer_step, resample_mean
from forecasting.errors import BadInputError
from planner.plan import EARLIEST, LATEST

DEFAULT_TRACE = "twitter_1min.csv"
"""The bundled trace used when none is named: Twitter sample stream, 1-min means, 22 days."""

UTC_SUFFIXES = ("Z", "+00:00")
"""The accepted ways to mark a timestamp as UTC."""

NO_DATA_TEXT = frozenset({"nan", ""})
"""rps fields that mean "no data" (compared lower-cased and stripped)."""

MAX_GRID_BLOWUP = 10
"""Refuse a file whose regular grid would hold this many times more points than it has rows
(and more than ``MIN_GRID_REFUSED`` points): a sign of a stray timestamp, not of gaps."""

MIN_GRID_REFUSED = 100_000
"""Grids up to this many points are always accepted, however sparse the rows."""

MAX_GRID_POINTS = 50_000_000
"""Largest regular grid built (400 MB of float64): 1.6 years of 1-second points."""

MAX_CSV_BYTES = 512 * 1024 * 1024
"""Largest trace file read (512 MiB; a year of 1-minute rows is ~20 MB, of 10 s rows ~120 MB)."""


def load_rps_csv(path: str | Path, *, step: str | pd.Timedelta | None = None) -> pd.Series:
    """Read a ``timestamp,rps`` CSV into an RPS history.

    The file holds ISO 8601 UTC timestamps (suffix ``Z`` or ``+00:00``), interval starts, in
    strictly increasing order, and rps values (requests per second, >= 0; ``nan`` or an empty
    field = no data). Other columns are ignored. The native step is the most common difference
    between neighbouring timestamps; rows missing from that grid become NaN.

    Args:
        path: the CSV file.
        step: optional output step (``"1min"``, ``pd.Timedelta``), a whole multiple of the native
            step; the history is then mean-resampled to it (``resample_mean``).

    Returns:
        The RPS history at the native step, or at ``step`` if given. Index name ``"timestamp"``.

    Raises:
        BadInputError: one line naming the file and the problem: file not found, empty, missing
            columns, unparsable or non-UTC timestamps, unsorted or duplicate timestamps,
            timestamps off the grid, unparsable, infinite or negative rps, or a bad ``step``.
    """
    file = Path(path)
    source = str(file)
    frame = _read_frame(file, source)
    stamps = _parse_timestamps(frame["timestamp"], source)
    _check_increasing(stamps, source)
    values = _parse_rps(frame["rps"], source)
    _check_rps_values(values, stamps, source)
    rps = _on_regular_grid(values, stamps, source)
    if step is None:
        return rps
    return resample_mean(rps, step, source)


def bundled_trace(name: str) -> Path:
    """The path of a file bundled in the repository's ``data/`` folder.

    Looks first in ``surgecast/_bundled_data`` (where a wheel install puts ``data/``), then in
    ``data/`` beside the package (an editable install or a checkout).

    Args:
        name: a file name such as ``"twitter_1min.csv"``; the ``.csv`` may be left out.

    Raises:
        BadInputError: no such file; the message lists the bundled CSV files.
    """
    folders = [folder for folder in bundled_data_dirs() if folder.is_dir()]
    if Path(name).name == name and name not in {"", ".", ".."}:
        for folder in folders:
            for candidate in (folder / name, folder / f"{name}.csv"):
                if candidate.is_file():
                    return candidate
    available = sorted({p.name for folder in folders for p in folder.glob("*.csv")})
    listing = ", ".join(available) if available else "none (no bundled data folder found)"
    raise BadInputError(f"{name}: no such bundled trace; available: {listing}")


def bundled_data_dirs() -> list[Path]:
    """Where bundled data may live, in search order: wheel install, then checkout."""
    package = Path(surgecast.__file__).resolve().parent
    return [package / "_bundled_data", package.parent / "data"]


def _read_frame(file: Path, source: str) -> pd.DataFrame:
    """The raw table: ``timestamp`` as text, ``rps`` as float where the C parser manages."""
    try:
        if not file.exists():
            raise BadInputError(f"{source}: file not found")
        if file.is_dir():
            raise BadInputError(f"{source}: is a directory, not a CSV file")
        if not file.is_file():  # a FIFO or a device would block or never end
            raise BadInputError(f"{source}: not a regular file")
        size = file.stat().st_size
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        if isinstance(exc, BadInputError):
            raise
        raise BadInputError(f"{source[:200]}: cannot read: {exc}") from None
    if size == 0:
        raise BadInputError(f"{source}: empty file (no bytes)")
    if size > MAX_CSV_BYTES:
        raise BadInputError(f"{source}: {size:,} bytes is more than the {MAX_CSV_BYTES:,} read")
    try:
        frame = pd.read_csv(
            file,
            dtype={"timestamp": object},
            keep_default_na=False,
            na_values={"rps": ["nan", ""]},
            skipinitialspace=True,
            encoding="utf-8-sig",
        )
    except pd.errors.EmptyDataError:
        raise BadInputError(f"{source}: empty file (no header, no rows)") from None
    except UnicodeDecodeError as exc:
        raise BadInputError(
            f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    except pd.errors.ParserError as exc:
        raise BadInputError(f"{source}: not a valid CSV file: {exc}") from None
    except (OSError, ValueError) as exc:  # e.g. a NUL byte the C parser cannot take
        raise BadInputError(f"{source}: cannot read as CSV: {exc}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in ("timestamp", "rps") if c not in frame.columns]
    if missing:
        have = ", ".join(repr(c) for c in frame.columns)
        raise BadInputError(
            f"{source}: missing {'columns' if len(missing) > 1 else 'column'} "
            f"{' and '.join(repr(c) for c in missing)}; "
            f"the header has {have} (expected 'timestamp,rps')"
        )
    if len(frame) == 0:
        raise BadInputError(f"{source}: empty file (header only, no data rows)")
    return frame


def _parse_timestamps(column: pd.Series, source: str) -> pd.DatetimeIndex:
    """Vectorised parse; every text must end in ``Z`` or ``+00:00`` and parse as ISO 8601."""
    text = column.astype(object)
    utc_marked = text.str.endswith(UTC_SUFFIXES).fillna(False).to_numpy(dtype=bool)
    stamps = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    bad = np.flatnonzero(~utc_marked | stamps.isna().to_numpy())
    if bad.size:
        i = int(bad[0])
        raise _timestamp_problem(str(text.iloc[i]), i + 1, source)
    outside = np.flatnonzero(((stamps < EARLIEST) | (stamps >= LATEST)).to_numpy())
    if outside.size:
        i = int(outside[0])
        raise BadInputError(
            f"{source}: timestamp at row {i + 1} is outside the years "
            f"{EARLIEST.year}..{LATEST.year - 1}: {text.iloc[i]!r}"
        )
    return pd.DatetimeIndex(stamps, name="timestamp").as_unit("ns")


def _timestamp_problem(raw: str, row: int, source: str) -> BadInputError:
    """Why one timestamp text was refused."""
    try:
        stamp = pd.Timestamp(raw.strip())
    except (ValueError, TypeError, OverflowError):
        stamp = pd.NaT
    if pd.isna(stamp):
        return BadInputError(f"{source}: cannot parse timestamp at row {row}: {raw!r}")
    if stamp.tzinfo is None:
        return BadInputError(
            f"{source}: timestamp at row {row} has no UTC offset: {raw!r} "
            f"(write it with suffix 'Z', e.g. {format_time(stamp.tz_localize('UTC'))})"
        )
    if stamp.utcoffset() != pd.Timedelta(0):
        return BadInputError(
            f"{source}: timestamp at row {row} is not UTC (offset {stamp.tzinfo}): {raw!r}"
        )
    return BadInputError(
        f"{source}: timestamp at row {row} is not ISO 8601 UTC ending in 'Z' or '+00:00': {raw!r}"
    )


def _check_increasing(stamps: pd.DatetimeIndex, source: str) -> None:
    diffs_ns = np.diff(stamps.as_unit("ns").asi8)
    bad = np.flatnonzero(diffs_ns <= 0)
    if not bad.size:
        return
    i = int(bad[0]) + 1
    row = i + 1
    if diffs_ns[i - 1] == 0:
        raise BadInputError(
            f"{source}: duplicate timestamp at row {row} ({format_time(stamps[i])}, "
            f"same as row {row - 1})"
        )
    raise BadInputError(
        f"{source}: timestamps not strictly increasing at row {row} "
        f"({format_time(stamps[i])} after {format_time(stamps[i - 1])})"
    )


def _parse_rps(column: pd.Series, source: str) -> np.ndarray:
    """rps as float64; the slow path (text) runs only when the C parser could not make floats."""
    if column.dtype.kind in "iuf":
        return column.to_numpy(dtype="float64")
    text = column.astype(object).where(column.notna(), "").astype(str).str.strip()
    numbers = pd.to_numeric(text, errors="coerce")
    bad = np.flatnonzero((numbers.isna() & ~text.str.lower().isin(NO_DATA_TEXT)).to_numpy())
    if bad.size:
        i = int(bad[0])
        raise BadInputError(
            f"{source}: cannot parse rps at row {i + 1}: {text.iloc[i]!r} "
            "(write a number; nan or an empty field means no data)"
        )
    return numbers.to_numpy(dtype="float64")


def _check_rps_values(values: np.ndarray, stamps: pd.DatetimeIndex, source: str) -> None:
    infinite = np.flatnonzero(np.isinf(values))
    if infinite.size:
        i = int(infinite[0])
        raise BadInputError(
            f"{source}: infinite rps at row {i + 1} ({format_time(stamps[i])}): {values[i]}"
        )
    negative = np.flatnonzero(values < 0)
    if negative.size:
        i = int(negative[0])
        raise BadInputError(
            f"{source}: negative rps at row {i + 1} ({format_time(stamps[i])}): {values[i]:g}"
        )


def _on_regular_grid(values: np.ndarray, stamps: pd.DatetimeIndex, source: str) -> pd.Series:
    """Place the rows on the full grid at the native step; missing rows become NaN."""
    step = infer_step(stamps, source=source)
    offsets_ns = stamps.as_unit("ns").asi8 - stamps.as_unit("ns").asi8[0]
    off_grid = np.flatnonzero(offsets_ns % step.value != 0)
    if off_grid.size:
        i = int(off_grid[0])
        raise BadInputError(
            f"{source}: timestamp at row {i + 1} ({format_time(stamps[i])}) is off the "
            f"{format_step(step)} grid that starts at {format_time(stamps[0])} "
            "(the step is the most common difference between rows)"
        )
    positions = offsets_ns // step.value
    n_points = int(positions[-1]) + 1
    if n_points > MAX_GRID_POINTS:
        raise BadInputError(
            f"{source}: spans {n_points:,} points of {format_step(step)}, more than the "
            f"{MAX_GRID_POINTS:,} a history may hold"
        )
    if n_points > max(MAX_GRID_BLOWUP * len(values), MIN_GRID_REFUSED):
        raise BadInputError(
            f"{source}: {len(values)} rows would span {n_points} points of "
            f"{format_step(step)}: more than {100 - 100 // MAX_GRID_BLOWUP}% missing"
        )
    grid = np.full(n_points, np.nan)
    grid[positions] = values
    index = pd.date_range(stamps[0], periods=n_points, freq=step, name="timestamp")
    return pd.Series(grid, index=index, name="rps")
