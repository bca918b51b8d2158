"""CEEMDAN decomposition of the RPS window that ends at a forecast origin.

CEEMDAN (complete ensemble EMD with adaptive noise) in the improved form of Colominas et al.
(2014), as implemented by EMD-signal: the signal is scaled to unit standard deviation; the first
mode is the ensemble mean of the first EMD mode of ``x + ε·E1(w_t)``; mode k is the residual
minus the ensemble mean of the local means of ``r_{k-1} + β_{k-1}·E_k(w_t)`` with
``β_{k-1} = ε·std(r_{k-1})``, where ``E_k(w_t)`` is the k-th EMD mode of white-noise
realisation t, normalised by the standard deviation of its first mode. It stops after ``max_imf``
modes, or when the residual has no more IMF, or its range or total power falls below a threshold.

Two backends compute it:

* ``pyemd``: EMD-signal itself, the reference (``parallel=False`` so that it is reproducible).
* ``fast``: the same algorithm with compiled sifting kernels (``_emd_kernels``) and a cache of
  the noise realisations' EMDs, which do not depend on the signal: they are computed once per
  (window length, trials, seed, modes kept) and reused for every window.

Leak-free use: :func:`decompose` reads only the ``window`` points that end at ``cutoff``.

References:
    M. E. Torres, M. A. Colominas, G. Schlotthauer, P. Flandrin, "A complete ensemble empirical
    mode decomposition with adaptive noise", ICASSP 2011, pp. 4144-4147.
    M. A. Colominas, G. Schlotthauer, M. E. Torres, "Improved complete ensemble EMD: a suitable
    tool for biomedical signal processing", Biomed. Signal Process. Control 14, 2014, pp. 19-29.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from threading import Lock
from typing import Literal

import numpy as np
import pandas as pd

from forecasting.errors import BadInputError

Backend = Literal["fast", "pyemd"]
BACKENDS: tuple[str, ...] = ("fast", "pyemd")

# CEEMDAN's own stopping thresholds (EMD-signal's defaults), on the unit-variance signal.
CEEMDAN_RANGE_THR = 0.01
CEEMDAN_POWER_THR = 0.05
MAX_STAGES = 100


@dataclass(frozen=True)
class CeemdanSettings:
    """How to decompose.

    Attributes:
        trials: noise realisations in the ensemble.
        epsilon: noise amplitude relative to the residual's standard deviation.
        seed: seed of the noise realisations (numpy ``RandomState``, standard normal).
        max_imf: stop after this many IMFs (-1: until the residual is a trend).
    """

    trials: int = 100
    epsilon: float = 0.005
    seed: int = 0
    max_imf: int = -1

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise BadInputError(f"CEEMDAN trials: must be at least 1, got {self.trials}")
        if not self.epsilon > 0:
            raise BadInputError(f"CEEMDAN epsilon: must be positive, got {self.epsilon}")
        if self.max_imf == 0 or self.max_imf < -1:
            raise BadInputError(f"CEEMDAN max_imf: must be -1 or positive, got {self.max_imf}")


def white_noise(n: int, trials: int, seed: int) -> np.ndarray:
    """The standard normal noise realisations, shape (trials, n), as EMD-signal draws them."""
    return np.random.RandomState(seed).normal(loc=0.0, scale=1.0, size=(trials, n))


# --------------------------------------------------------------------------------------------
# fast backend


class _NoiseModeCache:
    """LRU cache of the noise realisations' normalised EMD modes.

    A 1-day window at 1 minute with 100 trials and 8 modes kept takes 9 MB; 1 week takes 65 MB.
    """

    def __init__(self, max_entries: int = 4) -> None:
        self._entries: OrderedDict[tuple[int, int, int, int], tuple[np.ndarray, np.ndarray]] = (
            OrderedDict()
        )
        self._max_entries = max_entries
        self._lock = Lock()

    def get(self, n: int, trials: int, seed: int, keep_rows: int) -> tuple[np.ndarray, np.ndarray]:
        key = (n, trials, seed, keep_rows)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        value = noise_modes(white_noise(n, trials, seed), keep_rows)
        with self._lock:
            self._entries[key] = value
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


NOISE_MODES = _NoiseModeCache()


def _threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def emd_batch(
    inputs: np.ndarray, max_imf: int, keep_rows: int, *, from_end: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """EMD of every row of ``inputs``, rows split over threads (the kernels release the GIL).

    Returns:
        (rows, counts) as :func:`forecasting._emd_kernels.emd_rows`; independent of the number
        of threads, since each row's EMD is computed alone.
    """
    from forecasting import _emd_kernels as kernels

    inputs = np.ascontiguousarray(inputs, dtype=np.float64)
    workers = min(_threads(), inputs.shape[0])
    if workers <= 1:
        return kernels.emd_rows(inputs, max_imf, keep_rows, from_end)
    bounds = np.linspace(0, inputs.shape[0], workers + 1).astype(int)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = list(
            pool.map(
                lambda ab: kernels.emd_rows(inputs[ab[0] : ab[1]], max_imf, keep_rows, from_end),
                itertools.pairwise(bounds),
            )
        )
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def noise_modes(noises: np.ndarray, keep_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """EMD modes of each noise realisation, each divided by the std of its first mode.

    Returns:
        (modes, counts): modes has shape (trials, keep_rows, n); counts[t] is how many rows the
        EMD of realisation t has in all (its modes past ``keep_rows`` are not kept).
    """
    modes, counts = emd_batch(noises, -1, keep_rows)
    for t in range(modes.shape[0]):
        k = min(int(counts[t]), keep_rows)
        modes[t, :k] = modes[t, :k] / np.std(modes[t, 0])
    return modes, counts


def warm_up() -> float:
    """Compile (first run on a machine, about 20 s) or load the cached kernels; seconds taken."""
    from forecasting import _emd_kernels as kernels

    started = time.perf_counter()
    kernels.emd_rows(np.sin(np.arange(32.0) / 3.0)[None, :], 1, 1, False)
    return time.perf_counter() - started


def _keep_rows(n: int, max_imf: int) -> int:
    # An EMD of white noise acts as a dyadic filter bank: about log2(n) modes.
    return max_imf if max_imf > 0 else int(math.log2(max(n, 2))) + 8


def _ceemdan_fast(x: np.ndarray, settings: CeemdanSettings, noise: np.ndarray | None) -> np.ndarray:
    n = x.size
    trials = settings.trials
    keep = _keep_rows(n, settings.max_imf)
    if noise is None:
        modes, counts = NOISE_MODES.get(n, trials, settings.seed, keep)
    else:
        modes, counts = noise_modes(noise, keep)

    scale = np.std(x)
    s = x / scale
    # First mode: ensemble mean of the first EMD row of s + eps * E1(w_t).
    first_rows, _ = emd_batch(s + settings.epsilon * modes[:, 0], 1, 1)
    total = np.zeros(n)
    for t in range(trials):
        total += first_rows[t, 0]
    imfs = [total / trials]
    residual = s - imfs[0]
    for _ in range(MAX_STAGES):
        if _ceemdan_finished(s, imfs, settings.max_imf):
            break
        k = len(imfs)
        if k >= keep and np.any(counts > k):
            raise RuntimeError(f"CEEMDAN needs noise mode {k + 1}, only {keep} kept")
        beta = settings.epsilon * np.std(residual)
        perturbed = np.repeat(residual[None, :], trials, axis=0)
        has_mode = counts > k
        if k < keep:
            perturbed[has_mode] += beta * modes[has_mode, k]
        # Local mean: the last EMD row (residue) of each perturbed residual.
        last_rows, _ = emd_batch(perturbed, 1, 1, from_end=True)
        mean = np.zeros(n)
        for t in range(trials):
            mean += last_rows[t, 0] / trials
        imfs.append(residual - mean)
        residual = mean.copy()
    return _with_residue(s, imfs) * scale


def _ceemdan_finished(s: np.ndarray, imfs: list[np.ndarray], max_imf: int) -> bool:
    """CEEMDAN's end test: enough modes, or the residual is a trend, flat or powerless."""
    if 0 < max_imf <= len(imfs):
        return True
    rest = s - np.sum(np.array(imfs), axis=0)
    _, count = emd_batch(rest[None, :], 1, 1)
    if count[0] == 1:  # no IMF left in the residual
        return True
    if np.max(rest) - np.min(rest) < CEEMDAN_RANGE_THR:
        return True
    return bool(np.sum(np.abs(rest)) < CEEMDAN_POWER_THR)


def _with_residue(s: np.ndarray, imfs: list[np.ndarray]) -> np.ndarray:
    rows = np.array(imfs)
    return np.vstack((rows, s - np.sum(rows, axis=0)))


# --------------------------------------------------------------------------------------------
# pyemd backend (the reference)


def _pyemd_ceemdan(settings: CeemdanSettings, noise: np.ndarray | None):
    from PyEMD import CEEMDAN

    class _GivenNoiseCEEMDAN(CEEMDAN):
        """EMD-signal's CEEMDAN fed with given noise realisations."""

        def generate_noise(self, scale, size):
            if noise is None:
                return super().generate_noise(scale, size)
            if tuple(np.shape(noise)) != tuple(size):
                raise ValueError(f"noise has shape {np.shape(noise)}, expected {size}")
            return np.array(noise, dtype=np.float64) * scale

    return _GivenNoiseCEEMDAN(
        trials=settings.trials, epsilon=settings.epsilon, parallel=False, seed=settings.seed
    )


def _ceemdan_pyemd(
    x: np.ndarray, settings: CeemdanSettings, noise: np.ndarray | None
) -> np.ndarray:
    return _pyemd_ceemdan(settings, noise).ceemdan(x, max_imf=settings.max_imf)


# --------------------------------------------------------------------------------------------
# public API


def ceemdan(
    x: np.ndarray,
    settings: CeemdanSettings | None = None,
    *,
    backend: Backend = "fast",
    noise: np.ndarray | None = None,
) -> np.ndarray:
    """CEEMDAN of a 1-D signal.

    Args:
        x: signal, finite float values, at least 4 points, not constant.
        settings: trials, epsilon, seed, max_imf.
        backend: ``fast`` or ``pyemd``.
        noise: optional noise realisations of shape (trials, len(x)) to use instead of the ones
            drawn from ``settings.seed`` (both backends accept it; the equivalence test uses it).

    Returns:
        Array of shape (m + 1, len(x)): m IMFs, highest frequency first, then the residue. Rows
        sum to ``x`` up to rounding.
    """
    settings = settings or CeemdanSettings()
    x = np.ascontiguousarray(x, dtype=np.float64)
    if x.ndim != 1 or x.size < 4:
        raise BadInputError(f"CEEMDAN input: need a 1-D signal of at least 4 points, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise BadInputError("CEEMDAN input: contains NaN or infinite values")
    if np.std(x) == 0:
        raise BadInputError("CEEMDAN input: the signal is constant")
    if backend == "fast":
        return _ceemdan_fast(x, settings, noise)
    if backend == "pyemd":
        return _ceemdan_pyemd(x, settings, noise)
    raise BadInputError(
        f"CEEMDAN backend: unknown {backend!r}; choose one of {', '.join(BACKENDS)}"
    )


@dataclass(frozen=True)
class Decomposition:
    """CEEMDAN components of the RPS window that ends at ``cutoff``.

    Attributes:
        components: columns ``imf_1..imf_K`` (highest frequency first) and ``residue``, indexed
            like the window; they sum to the window's values.
        cutoff: the last observation used; nothing after it was read.
        imfs_found: IMFs CEEMDAN found before fixing K (K+1 means "more than K": CEEMDAN stops
            after K, and its residue is the sum of the rows it did not extract).
        backend: which implementation computed it.
        settings: the CEEMDAN settings used.
    """

    components: pd.DataFrame
    cutoff: pd.Timestamp
    imfs_found: int
    backend: str
    settings: CeemdanSettings

    @property
    def n_imfs(self) -> int:
        return self.components.shape[1] - 1

    def reconstruction_error(self, window: pd.Series) -> float:
        """Largest absolute difference between the sum of the components and ``window``."""
        total = self.components.sum(axis=1).to_numpy()
        return float(np.max(np.abs(total - window.loc[self.components.index].to_numpy())))


def component_names(n_imfs: int) -> list[str]:
    return [f"imf_{i}" for i in range(1, n_imfs + 1)] + ["residue"]


def fixed_imfs(rows: np.ndarray, n_imfs: int) -> np.ndarray:
    """Bring CEEMDAN rows (m IMFs + residue) to exactly ``n_imfs`` IMFs + residue.

    Rows past ``n_imfs`` are merged into the residue; missing IMFs are zero rows placed just
    before the residue (the signal had no oscillation at those scales).
    """
    m = rows.shape[0] - 1
    if m > n_imfs:
        return np.vstack((rows[:n_imfs], rows[n_imfs:].sum(axis=0)))
    if m < n_imfs:
        pad = np.zeros((n_imfs - m, rows.shape[1]))
        return np.vstack((rows[:m], pad, rows[m:]))
    return rows


def decompose(
    rps: pd.Series,
    *,
    cutoff: pd.Timestamp | None = None,
    window: int = 1440,
    n_imfs: int = 8,
    trials: int = 100,
    epsilon: float = 0.005,
    seed: int = 0,
    backend: Backend = "fast",
) -> Decomposition:
    """Decompose the ``window`` points of ``rps`` that end at ``cutoff`` into K IMFs + residue.

    Args:
        rps: RPS history (contract of DESIGN section 2) with no missing values in the window:
            clean it first (``forecasting.cleaning.clean_window``).
        cutoff: last timestamp to use (default: the last one); must be tz-aware UTC.
        window: number of points, e.g. 1440 for one day at 1 minute.
        n_imfs: K, the fixed number of IMFs returned; CEEMDAN stops after K, so the residue
            holds every lower-frequency row. Fewer found are padded with zero rows.
        trials, epsilon, seed: CEEMDAN ensemble settings.
        backend: ``fast`` or ``pyemd``.

    Returns:
        A :class:`Decomposition`. A constant window yields zero IMFs and the window as residue.
    """
    name = rps.name or "rps"
    if n_imfs < 1:
        raise BadInputError(f"{name}: n_imfs must be at least 1, got {n_imfs}")
    if window < 4:
        raise BadInputError(f"{name}: window must be at least 4 points, got {window}")
    if cutoff is None:
        if rps.empty:
            raise BadInputError(f"{name}: empty series")
        cutoff = rps.index[-1]
    cutoff = pd.Timestamp(cutoff)
    if cutoff.tzinfo is None:
        raise BadInputError(f"{name}: cutoff {cutoff} has no time zone; give it in UTC")
    # Read nothing after the cutoff: slice first, then work on the slice only.
    past = rps.loc[:cutoff]
    if len(past) < window:
        raise BadInputError(
            f"{name}: history too short: need {window} points up to {cutoff.isoformat()}, "
            f"have {len(past)}"
        )
    win = past.iloc[-window:]
    values = win.to_numpy(dtype=np.float64)
    missing = int(np.count_nonzero(~np.isfinite(values)))
    if missing:
        raise BadInputError(
            f"{name}: window ending {cutoff.isoformat()} has {missing} missing points; "
            "clean it first"
        )
    settings = CeemdanSettings(trials=trials, epsilon=epsilon, seed=seed, max_imf=n_imfs)
    if np.std(values) == 0:
        rows = np.vstack((np.zeros((n_imfs, values.size)), values))
        found = 0
    else:
        raw = ceemdan(values, settings, backend=backend)
        found = raw.shape[0] - 1
        rows = fixed_imfs(raw, n_imfs)
        if found == n_imfs and not _is_trend_row(raw[-1]):
            found = n_imfs + 1
        # The residue absorbs rounding, so the rows sum to the window exactly as computed.
        rows[-1] = values - rows[:-1].sum(axis=0)
    components = pd.DataFrame(rows.T, index=win.index, columns=component_names(n_imfs))
    return Decomposition(
        components=components,
        cutoff=win.index[-1],
        imfs_found=found,
        backend=backend,
        settings=settings,
    )


def _is_trend_row(row: np.ndarray) -> bool:
    """Whether a row has at most two interior extrema (EMD would not sift it further)."""
    d = np.diff(row)
    return int(np.count_nonzero(d[:-1] * d[1:] < 0)) <= 2
