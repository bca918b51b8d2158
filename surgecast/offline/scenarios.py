"""Stress scenarios built from a bundled trace, reproducible from a seed.

A scenario reshapes the per-second arrivals of a backtest (history and span alike, so the
forecaster sees in its past what the scenario put there) by a multiplier over time: extra
arrivals are Poisson at the trace's own rate times (multiplier - 1); fewer are a binomial
thinning. The trace's own burstiness is kept underneath.

* ``flash-crowd``: on each simulated day, the load rises to 10-50x within 1-5 minutes at a
  seeded time, holds for 10 minutes and falls back over 10 (the web's flash crowds: a link on a
  front page, a launch).
* ``event-then-quiet``: the day before the span is an event day (x4 from 08:00 to 20:00 UTC);
  the span is an ordinary day. Day-before features and a calibration day that saw the event
  must not make the quiet day expensive.
* ``slow-ramp``: the load grows linearly to x3 over the span (an adoption curve, a migration).
* ``x3``: three times the load throughout, history included.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from forecasting.errors import BadInputError

SCENARIOS: tuple[str, ...] = ("flash-crowd", "event-then-quiet", "slow-ramp", "x3")
"""Every stress scenario, by name."""

DAY_S = 86_400


@dataclass(frozen=True)
class Reshaped:
    """The arrivals after a scenario, and what it did (for the report)."""

    counts: np.ndarray
    multiplier: np.ndarray
    description: str


def apply_scenario(
    name: str, counts: np.ndarray, span_start: int, span_seconds: int, seed: int
) -> Reshaped:
    """Reshape per-second ``counts`` (history, then the span from index ``span_start``).

    Raises:
        BadInputError: an unknown scenario, or a span it does not fit.
    """
    if name not in SCENARIOS:
        raise BadInputError(f"--scenario: unknown {name!r}; choose from {', '.join(SCENARIOS)}")
    rng = np.random.default_rng([seed, SCENARIOS.index(name)])
    n = len(counts)
    m = np.ones(n)
    if name == "flash-crowd":
        parts = []
        for day in range(max(1, span_seconds // DAY_S)):
            length = min(DAY_S, span_seconds - day * DAY_S)
            factor = float(rng.uniform(10.0, 50.0))
            rise_s = int(rng.integers(60, 301))
            hold_s, fall_s = 600, 600
            room = length - rise_s - hold_s - fall_s
            if room <= 0:
                raise BadInputError(
                    "--scenario flash-crowd: the span must last at least 30 minutes"
                )
            at = span_start + day * DAY_S + int(rng.integers(room // 10, max(room // 10 + 1,
                                                                              room * 9 // 10)))
            _ramp(m, at, at + rise_s, 1.0, factor)
            m[at + rise_s : at + rise_s + hold_s] = factor
            _ramp(m, at + rise_s + hold_s, at + rise_s + hold_s + fall_s, factor, 1.0)
            parts.append(f"x{factor:.0f} within {rise_s} s at span second {at - span_start:,}")
        description = "flash crowd: " + "; ".join(parts) + " (10 min hold, 10 min fall)"
    elif name == "event-then-quiet":
        if span_start < DAY_S:
            raise BadInputError(
                "--scenario event-then-quiet: needs a day of history before the span"
            )
        day_before = span_start - DAY_S
        m[day_before + 8 * 3600 : day_before + 20 * 3600] = 4.0
        description = "event day: x4 08:00-20:00 UTC on the day before the span; the span as is"
    elif name == "slow-ramp":
        m[span_start : span_start + span_seconds] = np.linspace(1.0, 3.0, span_seconds)
        m[span_start + span_seconds :] = 3.0
        description = "slow ramp: x1 to x3 linearly over the span"
    else:
        m[:] = 3.0
        description = "x3: three times the load throughout, history included"
    return Reshaped(_reshape(counts, m, rng), m, description)


def _ramp(m: np.ndarray, start: int, end: int, low: float, high: float) -> None:
    m[start:end] = np.linspace(low, high, end - start, endpoint=False)


def _reshape(counts: np.ndarray, m: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = counts.astype(np.float64).copy()
    up = m > 1.0
    if up.any():  # extra arrivals at the trace's rate (its minute mean around each second)
        rate = np.convolve(counts, np.full(60, 1 / 60), mode="same")
        out[up] += rng.poisson(rate[up] * (m[up] - 1.0))
    down = m < 1.0
    if down.any():
        out[down] = rng.binomial(counts[down].astype(np.int64), m[down])
    return out
