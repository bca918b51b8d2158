"""Cleaning of RPS histories: contract checks, resampling and explicit gap filling.

The RPS history contract (DESIGN.md section 2): a ``pd.Series`` of float64 requests per second,
>= 0, named ``"rps"``, on a tz-aware UTC ``DatetimeIndex`` that is strictly increasing and regular
at the step; NaN means "no data for this interval". Sources may return gaps; this module fills
short gaps explicitly, reports how many points it filled, and refuses (``BadInputError``) gaps
that are too long and histories that are too short.

Pure: no file I/O, numpy and pandas only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from forecasting.errors import BadInputError

UTC_NAMES = frozenset({"UTC", "Etc/UTC", "tzutc()"})
"""Time-zone names accepted as UTC: ``datetime.timezone.utc``, zoneinfo/pytz ``UTC`` and
``Etc/UTC``, dateutil ``tzutc()``."""


@dataclass(frozen=True)
class CleanWindow:
    """A gap-free trailing window of an RPS history, ready for decomposition and models."""

    rps: pd.Series
    """The window: float64 rps >= 0, no NaN, ``window_steps`` points on the regular UTC grid; its
    last index is the last grid point at or before ``end``."""

    filled_points: int
    """How many points of the window were NaN and were filled (interpolated or carried)."""

    longest_gap_steps: int
    """Length, in steps, of the longest run of NaN in the window before filling (0: none)."""


def format_time(ts: pd.Timestamp) -> str:
    """A UTC timestamp as ISO 8601 with suffix ``Z``, e.g. ``2024-01-01T00:16:00Z``."""
    stamp = pd.Timestamp(ts)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
        return stamp.isoformat() + "Z"
    return stamp.isoformat()


def format_step(step: pd.Timedelta) -> str:
    """A step as a short human duration: ``10 s``, ``1 min``, ``90 s``, ``2 h``."""
    seconds = pd.Timedelta(step).total_seconds()
    if seconds > 0 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds > 0 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def is_utc(tz: object) -> bool:
    """Whether a tzinfo is UTC itself (not merely a zone that is at offset 0 today)."""
    return tz is not None and str(tz) in UTC_NAMES


def infer_step(index: pd.DatetimeIndex, *, source: str = "rps") -> pd.Timedelta:
    """The native step of a time index: the most common difference between neighbours.

    Gaps (missing rows) do not change the answer as long as most neighbours are one step apart.

    Args:
        index: timestamps in increasing order; at least 2.
        source: name of the input, for error messages.

    Returns:
        The step, > 0.

    Raises:
        BadInputError: fewer than 2 timestamps, or the most common difference is not positive.
    """
    if len(index) < 2:
        raise BadInputError(
            f"{source}: need at least 2 timestamps to infer the time step, have {len(index)}"
        )
    diffs_ns = np.diff(_as_ns(index))
    values, counts = np.unique(diffs_ns, return_counts=True)
    step_ns = int(values[np.argmax(counts)])
    if step_ns <= 0:
        raise BadInputError(f"{source}: timestamps are not increasing, cannot infer the time step")
    return pd.Timedelta(step_ns, unit="ns")


def check_index(rps: pd.Series, *, source: str = "rps") -> pd.Timedelta:
    """Check the index half of the contract and return the step.

    Args:
        rps: the series whose index to check.
        source: name of the input, for error messages.

    Returns:
        The regular step of the index, > 0.

    Raises:
        BadInputError: not a DatetimeIndex; no time zone or not UTC; fewer than 2 points; not
            strictly increasing; not regular at the step.
    """
    index = rps.index
    if not isinstance(index, pd.DatetimeIndex):
        raise BadInputError(f"{source}: index must be a DatetimeIndex, got {type(index).__name__}")
    if index.tz is None:
        raise BadInputError(f"{source}: index has no time zone; localise it to UTC")
    if not is_utc(index.tz):
        raise BadInputError(f"{source}: index is in time zone {index.tz}, not UTC")
    ns = _as_ns(index)
    diffs_ns = np.diff(ns)
    bad = np.flatnonzero(diffs_ns <= 0)
    if bad.size:
        i = int(bad[0]) + 1
        if diffs_ns[i - 1] == 0:
            raise BadInputError(
                f"{source}: index has a duplicate timestamp at position {i} "
                f"({format_time(index[i])}, same as position {i - 1})"
            )
        raise BadInputError(
            f"{source}: index not strictly increasing at position {i} "
            f"({format_time(index[i])} after {format_time(index[i - 1])})"
        )
    if diffs_ns.size and (diffs_ns == diffs_ns[0]).all():
        return pd.Timedelta(int(diffs_ns[0]), unit="ns")  # the usual case, without sorting
    step = infer_step(index, source=source)
    off = np.flatnonzero(diffs_ns != step.value)
    if off.size:
        i = int(off[0]) + 1
        raise BadInputError(
            f"{source}: index not regular at the {format_step(step)} step: "
            f"{format_time(index[i - 1])} is followed by {format_time(index[i])}"
        )
    return step


def check_values(rps: pd.Series, *, source: str = "rps") -> None:
    """Check the value half of the contract: float dtype, finite or NaN, >= 0.

    Raises:
        BadInputError: non-float dtype, an infinite value or a negative value (first one named).
    """
    if rps.dtype.kind != "f":
        raise BadInputError(
            f"{source}: values must be float (NaN = no data), got dtype {rps.dtype}"
        )
    values = rps.to_numpy()
    infinite = np.flatnonzero(np.isinf(values))
    if infinite.size:
        i = int(infinite[0])
        raise BadInputError(f"{source}: infinite rps {values[i]} at {format_time(rps.index[i])}")
    negative = np.flatnonzero(values < 0)
    if negative.size:
        i = int(negative[0])
        raise BadInputError(f"{source}: negative rps {values[i]:g} at {format_time(rps.index[i])}")


def validate_rps(rps: pd.Series, *, source: str = "rps") -> pd.Timedelta:
    """Check a whole series against the RPS history contract and return its step.

    Raises:
        BadInputError: see ``check_index`` and ``check_values``.
    """
    if not isinstance(rps, pd.Series):
        raise BadInputError(f"{source}: expected a pandas Series, got {type(rps).__name__}")
    step = check_index(rps, source=source)
    check_values(rps, source=source)
    return step


def resample_mean(rps: pd.Series, step: str | pd.Timedelta, source: str = "rps") -> pd.Series:
    """Mean-resample an RPS history to a coarser step.

    Each output point is the mean of the valid (non-NaN) values in the bin ``[t, t + step)``,
    labelled by the bin start ``t``; NaN where the bin has no valid value. Bins are anchored at
    the Unix epoch, so 10 s data starting at 00:00:05 gives 1-min bins at whole minutes (00:00,
    00:01, ...); edge bins may hold fewer native points than the others.

    Args:
        rps: an RPS history (the contract), at its native step.
        step: the output step; a whole multiple of the native step. Equal to the native step
            returns the series unchanged.
        source: name of the input, for error messages.

    Returns:
        The resampled history (the contract), float64, name ``"rps"``.

    Raises:
        BadInputError: the input breaks the contract, or ``step`` is not a positive whole
            multiple of the native step.
    """
    native = validate_rps(rps, source=source)
    target = parse_step(step, source=source)
    if target < native:
        raise BadInputError(
            f"{source}: step {format_step(target)} is finer than the native step "
            f"{format_step(native)}; only coarser steps can be computed"
        )
    if target.value % native.value != 0:
        raise BadInputError(
            f"{source}: step {format_step(target)} is not a whole multiple of the native step "
            f"{format_step(native)}"
        )
    if target == native:
        return rps.astype("float64").rename("rps")
    binned = rps.resample(target, origin="epoch", closed="left", label="left").mean()
    return binned.astype("float64").rename("rps")


def parse_step(step: str | pd.Timedelta, *, source: str = "rps") -> pd.Timedelta:
    """A step given as text (``"1min"``, ``"10s"``) or Timedelta, checked to be positive."""
    try:
        parsed = pd.Timedelta(step)
    except (ValueError, TypeError):
        raise BadInputError(f"{source}: cannot parse step {step!r} as a duration") from None
    if pd.isna(parsed) or parsed <= pd.Timedelta(0):
        raise BadInputError(f"{source}: step must be a positive duration, got {step!r}")
    return parsed


def clean_window(
    rps: pd.Series,
    *,
    end: pd.Timestamp | None = None,
    window_steps: int,
    max_gap_steps: int = 60,
    source: str = "rps",
) -> CleanWindow:
    """The trailing window of ``window_steps`` points ending at ``end``, with short gaps filled.

    Leak-free: only the index is read beyond ``end`` (to check the grid); the window is sliced
    first and every value check and fill works on the window alone. Gaps are filled as follows:
    a NaN run inside the window is linearly interpolated between its neighbours in the window; a
    run touching the window start takes the first valid value; a run touching the window end
    carries the last valid value forward. Valid values are never changed.

    Args:
        rps: an RPS history (the contract); NaN = no data.
        end: last time that may be used, tz-aware UTC; defaults to the last index. The window
            ends at the last grid point at or before ``end``.
        window_steps: number of points in the window, >= 1.
        max_gap_steps: longest NaN run (in steps) that may be filled, >= 0.
        source: name of the input (file path or series name) for error messages.

    Returns:
        The filled window with the number of points filled and the longest gap.

    Raises:
        BadInputError: the series breaks the contract (checked on the window for values); ``end``
            is naive, not UTC, before the first point or after the last; fewer than
            ``window_steps`` points up to ``end``; the window is all NaN; or it holds a NaN run
            longer than ``max_gap_steps``.
    """
    _check_window_args(window_steps, max_gap_steps)
    if not isinstance(rps, pd.Series):
        raise BadInputError(f"{source}: expected a pandas Series, got {type(rps).__name__}")
    step = check_index(rps, source=source)
    window = _slice_window(rps, end, window_steps, step, source)
    check_values(window, source=source)
    values = window.to_numpy(dtype="float64", copy=True)
    missing = np.isnan(values)
    where = f"window of {window_steps} points of {format_step(step)} ending {_end_text(window)}"
    if missing.all():
        raise BadInputError(
            f"{source}: no data in the {where}: all NaN from {format_time(window.index[0])}"
        )
    runs = nan_runs(missing)
    longest = int(runs[:, 1].max()) if len(runs) else 0
    if longest > max_gap_steps:
        start, length = (int(x) for x in runs[np.argmax(runs[:, 1])])
        raise BadInputError(
            f"{source}: gap of {length} missing points ({_duration(length * step)}) from "
            f"{format_time(window.index[start])} to {format_time(window.index[start + length - 1])}"
            f" is longer than max_gap_steps={max_gap_steps} in the {where}"
        )
    filled = fill_gaps(values, missing)
    series = pd.Series(filled, index=window.index, name="rps")
    return CleanWindow(rps=series, filled_points=int(missing.sum()), longest_gap_steps=longest)


def nan_runs(missing: np.ndarray) -> np.ndarray:
    """Runs of True in a boolean array.

    Returns:
        Integer array of shape (n_runs, 2): start position and length of each run, in order.
    """
    padded = np.concatenate(([False], missing, [False])).astype(np.int8)
    edges = np.diff(padded)
    starts = np.flatnonzero(edges == 1)
    stops = np.flatnonzero(edges == -1)
    return np.column_stack((starts, stops - starts)).astype(np.int64)


def fill_gaps(values: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """Fill NaN positions: linear inside, first valid value before, last valid value after.

    Args:
        values: float array with at least one non-NaN value.
        missing: ``np.isnan(values)``.

    Returns:
        A new array; positions that were valid keep their exact values.
    """
    out = values.copy()
    positions = np.arange(values.size)
    valid = ~missing
    # np.interp clamps outside the valid range: the leading run gets the first valid value and
    # the trailing run the last one (carried forward), which is exactly the leak-free rule.
    out[missing] = np.interp(positions[missing], positions[valid], values[valid])
    return out


def _check_window_args(window_steps: int, max_gap_steps: int) -> None:
    if int(window_steps) != window_steps or window_steps < 1:
        raise BadInputError(
            f"clean_window: window_steps must be an integer >= 1, got {window_steps}"
        )
    if int(max_gap_steps) != max_gap_steps or max_gap_steps < 0:
        raise BadInputError(
            f"clean_window: max_gap_steps must be an integer >= 0, got {max_gap_steps}"
        )


def _slice_window(
    rps: pd.Series,
    end: pd.Timestamp | None,
    window_steps: int,
    step: pd.Timedelta,
    source: str,
) -> pd.Series:
    """The last ``window_steps`` points at or before ``end`` (index already checked)."""
    index = rps.index
    stop = pd.Timestamp(index[-1]) if end is None else _check_end(end, source)
    if stop < index[0]:
        raise BadInputError(
            f"{source}: end {format_time(stop)} is before the first point {format_time(index[0])}"
        )
    if stop > index[-1]:
        raise BadInputError(
            f"{source}: end {format_time(stop)} is after the last point {format_time(index[-1])}"
        )
    available = int(index.searchsorted(stop, side="right"))
    if available < window_steps:
        raise BadInputError(
            f"{source}: history too short: need {window_steps} points of {format_step(step)} "
            f"up to {format_time(stop)}, have {available}"
        )
    return rps.iloc[available - window_steps : available]


def _check_end(end: pd.Timestamp, source: str) -> pd.Timestamp:
    try:
        stop = pd.Timestamp(end)
    except (ValueError, TypeError):
        raise BadInputError(f"{source}: cannot read end {end!r} as a timestamp") from None
    if stop.tzinfo is None:
        raise BadInputError(f"{source}: end {stop.isoformat()} has no time zone; give it in UTC")
    if not is_utc(stop.tzinfo):
        raise BadInputError(f"{source}: end {stop.isoformat()} is in {stop.tzinfo}, not UTC")
    return stop


def _end_text(window: pd.Series) -> str:
    return format_time(window.index[-1])


def _duration(span: pd.Timedelta) -> str:
    minutes = span.total_seconds() / 60
    if minutes < 2:
        return f"{span.total_seconds():g} s"
    if minutes < 120:
        return f"{minutes:g} min"
    return f"{minutes / 60:.1f} h"


def _as_ns(index: pd.DatetimeIndex) -> np.ndarray:
    """Timestamps as int64 nanoseconds since the epoch, whatever the index's unit."""
    return index.as_unit("ns").asi8
