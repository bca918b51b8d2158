"""Regime shifts built from real traces, for testing forecasters where history misleads them.

Each function returns a copy of an RPS series with one change injected and the time from which
a forecaster that trusts the past is misled. The changes are the ones that break forecasters
in production:

* :func:`event_then_quiet`: event days (a plateau well above the usual load for hours) followed
  by an ordinary day, so day-before features replay an event that does not come;
* :func:`level_shift`: the load steps to a new level and stays there (a client moved over);
* :func:`flash_crowd`: a short, steep surge unlike anything in the history.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from forecasting.errors import BadInputError


def _check(rps: pd.Series, at: pd.Timestamp) -> None:
    if not isinstance(rps.index, pd.DatetimeIndex) or rps.index.tz is None:
        raise BadInputError(f"{rps.name or 'rps'}: index must be a tz-aware DatetimeIndex")
    if not rps.index[0] < at <= rps.index[-1]:
        raise BadInputError(f"{rps.name or 'rps'}: {at} is not inside the series")


def event_then_quiet(
    rps: pd.Series,
    quiet_day: pd.Timestamp,
    event_days: int = 2,
    start: str = "10:00",
    hours: float = 8.0,
    extra: float = 2.0,
) -> tuple[pd.Series, pd.Timestamp]:
    """``event_days`` days before ``quiet_day`` carry an event: from ``start`` for ``hours``,
    the load is raised by ``extra`` times that day's median. ``quiet_day`` is left as it was.
    Returns the series and the time on the quiet day at which the event would have started."""
    quiet_day = pd.Timestamp(quiet_day).normalize()
    _check(rps, quiet_day)
    out = rps.copy()
    offset = pd.Timedelta(start + ":00")
    for k in range(1, event_days + 1):
        day = quiet_day - pd.Timedelta(days=k)
        begin = day + offset
        span = (out.index >= begin) & (out.index < begin + pd.Timedelta(hours=hours))
        median = float(out.loc[day : day + pd.Timedelta(days=1)].median())
        out[span] = out[span] + extra * median
    return out, quiet_day + offset


def level_shift(
    rps: pd.Series, at: pd.Timestamp, factor: float = 1.8
) -> tuple[pd.Series, pd.Timestamp]:
    """From ``at`` on, the load is ``factor`` times what it was."""
    at = pd.Timestamp(at)
    _check(rps, at)
    out = rps.copy()
    out[out.index >= at] *= factor
    return out, at


def flash_crowd(
    rps: pd.Series, at: pd.Timestamp, minutes: int = 20, factor: float = 6.0
) -> tuple[pd.Series, pd.Timestamp]:
    """For ``minutes`` from ``at``, the load is ``factor`` times what it was (rising over the
    first two minutes, as the Twitter trace's surges do)."""
    at = pd.Timestamp(at)
    _check(rps, at)
    out = rps.copy()
    span = (out.index >= at) & (out.index < at + pd.Timedelta(minutes=minutes))
    rising = out.index[span] < at + pd.Timedelta(minutes=2)
    out[span] *= np.where(rising, 1.0 + (factor - 1.0) / 2, factor)
    return out, at
