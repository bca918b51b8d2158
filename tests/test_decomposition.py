"""CEEMDAN decomposition: equivalence with EMD-signal, leak-freedom, exact reconstruction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PyEMD import EMD

from forecasting import _emd_kernels as kernels
from forecasting.decomposition import (
    CeemdanSettings,
    ceemdan,
    decompose,
    fixed_imfs,
    white_noise,
)
from forecasting.errors import BadInputError

# Equivalence tolerance: the fast backend follows EMD-signal's arithmetic step by step, so the
# components agree to within a few ulps of the signal's scale (observed: bit-identical).
EQUIV_RTOL = 1e-9


def _window(series: pd.Series, end: str, n: int) -> np.ndarray:
    """A gap-free window of a real trace (interior gaps interpolated, as cleaning does)."""
    win = series.loc[: pd.Timestamp(end)].iloc[-n:]
    return win.interpolate(limit_direction="both").to_numpy()


def _assert_equivalent(fast: np.ndarray, ref: np.ndarray, signal: np.ndarray) -> None:
    assert fast.shape == ref.shape, f"IMF counts differ: fast {fast.shape[0]}, pyemd {ref.shape[0]}"
    tol = EQUIV_RTOL * np.std(signal)
    worst = np.max(np.abs(fast - ref))
    assert worst <= tol, f"components differ by {worst:.3g} > {tol:.3g}"


# --------------------------------------------------------------------------------------------
# kernels against EMD-signal's EMD


def _quantised_walk(seed: int, n: int, step: float) -> np.ndarray:
    """A random walk rounded to a grid: plateaus, exact zeros and ties at the edges."""
    rng = np.random.default_rng(seed)
    return np.round(np.cumsum(rng.normal(size=n)) / step) * step


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(8, 160),
    step=st.sampled_from([0.01, 0.5, 1.0, 2.0]),
)
def test_find_extrema_matches_emd_signal(seed: int, n: int, step: float) -> None:
    x = _quantised_walk(seed, n, step)
    t = np.arange(n, dtype=float)
    ref_max, _, ref_min, _, ref_zero = EMD._find_extrema_simple(t, x)
    imax, imin, n_zero = kernels.find_extrema(x)
    np.testing.assert_array_equal(imax, ref_max.astype(int))
    np.testing.assert_array_equal(imin, ref_min.astype(int))
    assert n_zero == len(ref_zero)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(20, 240),
    step=st.sampled_from([0.001, 0.25, 1.0]),
    max_imf=st.sampled_from([-1, 1, 2]),
)
def test_emd_matches_emd_signal(seed: int, n: int, step: float, max_imf: int) -> None:
    x = _quantised_walk(seed, n, step) + np.sin(np.arange(n) / 3.0)
    try:
        ref = EMD().emd(x, max_imf=max_imf)
    except Exception:  # an input EMD-signal itself refuses: ours must refuse too
        with pytest.raises(ValueError):
            kernels.emd(x, max_imf)
        return
    ours = kernels.emd(x, max_imf)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=EQUIV_RTOL * max(np.std(x), 1.0))


def test_emd_of_white_noise_is_identical() -> None:
    for seed in range(3):
        x = np.random.RandomState(seed).normal(size=1440)
        np.testing.assert_array_equal(kernels.emd(x, -1), EMD().emd(x, max_imf=-1))


# --------------------------------------------------------------------------------------------
# CEEMDAN: fast backend against EMD-signal on windows of the real traces


@pytest.mark.parametrize(
    ("trace", "end"),
    [
        ("twitter_1min", "2024-01-04T00:00Z"),
        ("azure_1min", "2024-05-14T00:00Z"),
        ("nasa_1min", "1995-07-14T00:00Z"),
    ],
)
def test_fast_backend_matches_emd_signal_on_real_traces(request, trace: str, end: str) -> None:
    signal = _window(request.getfixturevalue(trace), end, 1440)
    cfg = CeemdanSettings(trials=20, seed=7)
    ref = ceemdan(signal, cfg, backend="pyemd")
    fast = ceemdan(signal, cfg, backend="fast")
    _assert_equivalent(fast, ref, signal)
    assert np.max(np.abs(fast.sum(axis=0) - signal)) <= 1e-9


def test_fed_the_same_noise_both_backends_agree(twitter_1min: pd.Series) -> None:
    """Noise realisations given explicitly (a subclass of EMD-signal's CEEMDAN takes them)."""
    signal = _window(twitter_1min, "2024-01-09T12:00Z", 720)
    noise = np.random.default_rng(2024).uniform(-1.7, 1.7, size=(16, signal.size))
    cfg = CeemdanSettings(trials=16, seed=0)
    ref = ceemdan(signal, cfg, backend="pyemd", noise=noise)
    fast = ceemdan(signal, cfg, backend="fast", noise=noise)
    _assert_equivalent(fast, ref, signal)
    # And it really used that noise: the seed's own noise gives other components.
    own = ceemdan(signal, cfg, backend="fast")
    assert own.shape != fast.shape or not np.allclose(own, fast)


def test_max_imf_agrees_with_emd_signal(azure_1min: pd.Series) -> None:
    signal = _window(azure_1min, "2024-05-12T06:00Z", 600)
    cfg = CeemdanSettings(trials=10, seed=3, max_imf=4)
    fast = ceemdan(signal, cfg, backend="fast")
    _assert_equivalent(fast, ceemdan(signal, cfg, backend="pyemd"), signal)
    assert fast.shape[0] == 5


# --------------------------------------------------------------------------------------------
# the decomposition API


def test_reconstruction_and_contract(twitter_1min: pd.Series) -> None:
    series = twitter_1min.interpolate()
    cutoff = pd.Timestamp("2024-01-05T10:00Z")
    dec = decompose(series, cutoff=cutoff, window=1440, n_imfs=6, trials=20)
    comps = dec.components
    assert list(comps.columns) == ["imf_1", "imf_2", "imf_3", "imf_4", "imf_5", "imf_6", "residue"]
    assert comps.index[-1] == cutoff and len(comps) == 1440
    assert comps.index.equals(series.loc[:cutoff].index[-1440:])
    assert dec.reconstruction_error(series) <= 1e-9
    assert dec.cutoff == cutoff


def test_leak_free(twitter_1min: pd.Series) -> None:
    """Changing any value after the cutoff changes nothing in the decomposition made there."""
    series = twitter_1min.interpolate()
    cutoff = pd.Timestamp("2024-01-06T07:31Z")
    before = decompose(series, cutoff=cutoff, window=720, trials=20)
    tampered = series.copy()
    after_cutoff = tampered.index > cutoff
    tampered[after_cutoff] = np.random.default_rng(1).uniform(0, 1e4, after_cutoff.sum())
    tampered = tampered.drop(tampered.index[-100:])
    after = decompose(tampered, cutoff=cutoff, window=720, trials=20)
    pd.testing.assert_frame_equal(before.components, after.components, check_exact=True)


def test_deterministic_for_a_seed(azure_1min: pd.Series) -> None:
    cutoff = pd.Timestamp("2024-05-15T18:00Z")
    a = decompose(azure_1min, cutoff=cutoff, window=720, trials=20, seed=11)
    b = decompose(azure_1min, cutoff=cutoff, window=720, trials=20, seed=11)
    c = decompose(azure_1min, cutoff=cutoff, window=720, trials=20, seed=12)
    pd.testing.assert_frame_equal(a.components, b.components, check_exact=True)
    assert not np.allclose(a.components["imf_1"], c.components["imf_1"])


def test_fixed_k_merges_the_low_frequency_rows(twitter_1min: pd.Series) -> None:
    series = twitter_1min.interpolate()
    cutoff = pd.Timestamp("2024-01-10T00:00Z")
    full = ceemdan(series.loc[:cutoff].iloc[-1440:].to_numpy(), CeemdanSettings(trials=20))
    assert full.shape[0] - 1 > 4, "the window must have more than K IMFs for this test"
    dec = decompose(series, cutoff=cutoff, window=1440, n_imfs=4, trials=20)
    np.testing.assert_allclose(dec.components.iloc[:, :4].to_numpy().T, full[:4], atol=1e-9)
    np.testing.assert_allclose(
        dec.components["residue"].to_numpy(), full[4:].sum(axis=0), atol=1e-9
    )
    assert dec.imfs_found == 5  # "more than K"


def test_fixed_imfs_pads_and_merges() -> None:
    rows = np.arange(12, dtype=float).reshape(4, 3)  # 3 IMFs + residue
    merged = fixed_imfs(rows, 2)
    np.testing.assert_array_equal(merged, [[0, 1, 2], [3, 4, 5], [15, 17, 19]])
    padded = fixed_imfs(rows, 5)
    assert padded.shape == (6, 3)
    np.testing.assert_array_equal(padded[3:5], 0)
    np.testing.assert_array_equal(padded[-1], rows[-1])
    np.testing.assert_array_equal(padded.sum(axis=0), rows.sum(axis=0))


def test_constant_window_is_all_residue() -> None:
    idx = pd.date_range("2024-01-01", periods=100, freq="1min", tz="UTC")
    dec = decompose(pd.Series(5.0, index=idx, name="rps"), window=100, n_imfs=3)
    np.testing.assert_array_equal(dec.components["residue"], 5.0)
    np.testing.assert_array_equal(dec.components[["imf_1", "imf_2", "imf_3"]], 0.0)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"window": 5000}, "history too short"),
        ({"cutoff": pd.Timestamp("2024-01-01T12:00")}, "no time zone"),
        ({"n_imfs": 0}, "n_imfs"),
        ({"trials": 0}, "trials"),
    ],
)
def test_bad_arguments_are_refused(kwargs, problem: str) -> None:
    idx = pd.date_range("2024-01-01", periods=1000, freq="1min", tz="UTC")
    series = pd.Series(np.sin(np.arange(1000) / 7.0) + 2, index=idx, name="rps")
    with pytest.raises(BadInputError, match=problem) as err:
        decompose(series, **{"window": 200, **kwargs})
    assert "\n" not in str(err.value)


def test_missing_values_are_refused(twitter_1min: pd.Series) -> None:
    with pytest.raises(BadInputError, match="missing points; clean it first"):
        decompose(twitter_1min, cutoff=pd.Timestamp("2024-01-02T00:00Z"), window=1440)


def test_white_noise_is_emd_signal_noise() -> None:
    from PyEMD import CEEMDAN

    reference = CEEMDAN(trials=5, seed=42, parallel=False)
    np.testing.assert_array_equal(
        white_noise(50, 5, 42), reference.generate_noise(reference.noise_scale, (5, 50))
    )
