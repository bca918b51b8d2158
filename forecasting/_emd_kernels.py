"""Compiled EMD sifting kernels behind the ``fast`` CEEMDAN backend.

The algorithm is the one of EMD-signal (PyPI ``EMD-signal``, imported as ``PyEMD``) with its
default settings, so that the two backends give the same components:

* extrema: "simple" detection on a unit time grid; a plateau counts as one extremum at its
  (round-half-even) middle; zero crossings plus runs of exact zeros are counted for the
  |#extrema - #zero crossings| <= 1 test;
* boundary: the extrema closest to each edge are mirrored (``nbsym = 2`` per side) about either
  the edge sample or the outermost extremum, as in Rilling, Flandrin and Gonçalves (2003);
* envelopes: not-a-knot cubic splines through the extrema (a clamped-free three-point spline when
  only three points are left);
* sifting stops when the proto-IMF passes one of the scaled-variance, standard-deviation or
  energy-ratio tests and its numbers of extrema and zero crossings differ by at most one, or after
  ``max_iter`` iterations.

Everything works on float64 arrays sampled at unit spacing. The kernels are written with numba
so that one sifting iteration costs a few microseconds instead of the tens of microseconds that
interpreted numpy and scipy calls cost. They release the GIL, so the caller can run the trials of
an ensemble on several threads; it sums their results in trial order, so the output does not
depend on the number of threads.

References:
    G. Rilling, P. Flandrin, P. Gonçalves, "On empirical mode decomposition and its algorithms",
    IEEE-EURASIP Workshop on Nonlinear Signal and Image Processing, 2003.
    N. E. Huang et al., "The empirical mode decomposition and the Hilbert spectrum for nonlinear
    and non-stationary time series analysis", Proc. R. Soc. Lond. A 454, 1998.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_JIT = {"cache": True, "error_model": "numpy", "nogil": True}

# Stopping thresholds of one sifting (EMD-signal's EMD defaults).
SVAR_THR = 0.001
STD_THR = 0.2
ENERGY_RATIO_THR = 0.2
# Stopping thresholds of a whole EMD (EMD-signal's EMD defaults).
EMD_RANGE_THR = 0.001
EMD_POWER_THR = 0.005
NBSYM = 2
MAX_ITER = 1000


@njit(**_JIT)
def _round_half_even_mid(a: int, b: int) -> int:
    """Middle of two integer indices, rounded half to even (numpy's ``round``)."""
    s = a + b
    half = s // 2
    if s % 2 == 0:
        return half
    return half if half % 2 == 0 else half + 1


@njit(**_JIT)
def find_extrema(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Local maxima and minima of ``x`` and its number of zero crossings.

    Returns:
        (indices of maxima, indices of minima, zero crossings), indices ascending. A zero
        crossing is a sign change between neighbours or a run of exact zeros.
    """
    n = x.size
    nd = n - 1
    cap = n // 2 + 2
    imax = np.empty(cap, dtype=np.int64)
    imin = np.empty(cap, dtype=np.int64)
    nmax = 0
    nmin = 0
    n_zero = 0
    has_zero = x[0] == 0.0
    prev = x[1] - x[0]
    has_flat = prev == 0.0
    if x[0] * x[1] < 0.0:
        n_zero += 1
    for i in range(1, nd):
        xi = x[i]
        xn = x[i + 1]
        if xi * xn < 0.0:
            n_zero += 1
        if xi == 0.0:
            has_zero = True
        dn = xn - xi
        if prev * dn < 0.0:
            if prev < 0.0:
                imin[nmin] = i
                nmin += 1
            else:
                imax[nmax] = i
                nmax += 1
        elif dn == 0.0:
            has_flat = True
        prev = dn
    if x[nd] == 0.0:
        has_zero = True
    if has_zero:
        i = 0
        while i < n:
            if x[i] == 0.0:
                n_zero += 1
                while i < n and x[i] == 0.0:
                    i += 1
            else:
                i += 1

    if has_flat:
        # Plateaus: runs of zero differences, [start, stop) in difference indices.
        d = np.empty(nd)
        for i in range(nd):
            d[i] = x[i + 1] - x[i]
        if nmax + nd > cap or nmin + nd > cap:
            grown = np.empty(nmax + nd, dtype=np.int64)
            grown[:nmax] = imax[:nmax]
            imax = grown
            grown = np.empty(nmin + nd, dtype=np.int64)
            grown[:nmin] = imin[:nmin]
            imin = grown
        starts = np.empty(nd, dtype=np.int64)
        stops = np.empty(nd, dtype=np.int64)
        nrun = 0
        j = 0
        while j < nd:
            if d[j] == 0.0:
                k = j
                while k < nd and d[k] == 0.0:
                    k += 1
                starts[nrun] = j
                stops[nrun] = k
                nrun += 1
                j = k
            else:
                j += 1
        first = 0
        last = nrun
        # A plateau starting at the second difference, or one reaching the end, is no extremum.
        if last > first and starts[first] == 1:
            first += 1
        if last > first and stops[last - 1] == n - 1:
            last -= 1
        added_max = False
        added_min = False
        for r in range(first, last):
            before = d[starts[r] - 1] if starts[r] >= 1 else d[nd - 1]
            after = d[stops[r]]
            mid = _round_half_even_mid(starts[r], stops[r])
            if before > 0.0 and after < 0.0:
                imax[nmax] = mid
                nmax += 1
                added_max = True
            elif before < 0.0 and after > 0.0:
                imin[nmin] = mid
                nmin += 1
                added_min = True
        if added_max:
            imax[:nmax] = np.sort(imax[:nmax])
        if added_min:
            imin[:nmin] = np.sort(imin[:nmin])
    return imax[:nmax].copy(), imin[:nmin].copy(), n_zero


@njit(**_JIT)
def _edge_points(
    first: np.ndarray, other: np.ndarray, sign: float, x_edge: float, x_other0: float, nbsym: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Extrema to mirror at one edge, in coordinates measured from that edge.

    ``first`` holds the extrema of the kind nearest to the edge, ``other`` the other kind, both
    ascending in distance from the edge. ``sign`` is +1 when ``first`` are maxima, -1 for minima.

    Returns:
        (indices of ``first`` to mirror, indices of ``other`` to mirror, symmetry centre), each
        index array ordered from the farthest to the nearest to the edge, so that the mirrored
        positions ``2 * centre - index`` grow away from the edge... towards the signal.
    """
    nf = first.size
    no = other.size
    if sign * x_edge > sign * x_other0:
        # The edge sample lies beyond the nearest extremum: mirror about that extremum.
        mf = first[1 : min(nf, nbsym + 1)][::-1].copy()
        mo = other[0 : min(no, nbsym)][::-1].copy()
        centre = first[0]
    else:
        # Mirror about the edge sample, which then acts as an extremum of the other kind.
        mf = first[0 : min(nf, nbsym)][::-1].copy()
        k = min(no, nbsym - 1)
        mo = np.empty(k + 1, dtype=np.int64)
        mo[:k] = other[0:k][::-1]
        mo[k] = 0
        centre = 0
    if mf.size == 0:
        mf = first.copy()
    if mo.size == 0:
        mo = other.copy()
    if 2 * centre - mf[0] > 0 or 2 * centre - mo[0] > 0:
        # The mirrored points do not reach past the edge: mirror about the edge instead.
        if centre == 0:
            raise ValueError("EMD boundary: mirrored extrema do not cover the edge")
        mf = first[0 : min(nf, nbsym)][::-1].copy()
        centre = 0
    return mf, mo, centre


@njit(**_JIT)
def _dedupe(pos: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop a knot whose position equals the next one's (the later one is kept)."""
    m = pos.size
    keep = np.ones(m, dtype=np.bool_)
    for i in range(m - 1):
        if pos[i + 1] == pos[i]:
            keep[i] = False
    return pos[keep], val[keep]


@njit(**_JIT)
def envelope_knots(
    x: np.ndarray, imax: np.ndarray, imin: np.ndarray, nbsym: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Knots (positions, values) of the upper and lower envelopes, edges mirrored.

    Returns:
        (max positions, max values, min positions, min values), positions strictly increasing
        and reaching past both ends of ``x``.
    """
    n = x.size
    last = n - 1
    # Left edge, positions counted from sample 0.
    if imax[0] < imin[0]:
        lf, lo, lc = _edge_points(imax, imin, 1.0, x[0], x[imin[0]], nbsym)
        l_max, l_min = lf, lo
    else:
        lf, lo, lc = _edge_points(imin, imax, -1.0, x[0], x[imax[0]], nbsym)
        l_max, l_min = lo, lf
    # Right edge: the same rule on the reflected index axis i -> last - i.
    rmax_r = last - imax[::-1]
    rmin_r = last - imin[::-1]
    if imax[-1] > imin[-1]:
        rf, ro, rc = _edge_points(rmax_r, rmin_r, 1.0, x[last], x[imin[-1]], nbsym)
        r_max, r_min = rf, ro
    else:
        rf, ro, rc = _edge_points(rmin_r, rmax_r, -1.0, x[last], x[imax[-1]], nbsym)
        r_max, r_min = ro, rf

    out = []
    for inner, lidx, ridx in ((imax, l_max, r_max), (imin, l_min, r_min)):
        nl = lidx.size
        nr = ridx.size
        m = nl + inner.size + nr
        pos = np.empty(m)
        val = np.empty(m)
        for i in range(nl):
            pos[i] = float(2 * lc - lidx[i])
            val[i] = x[lidx[i]]
        for i in range(inner.size):
            pos[nl + i] = float(inner[i])
            val[nl + i] = x[inner[i]]
        # Reflected right-edge points, ordered by growing position.
        for i in range(nr):
            j = nr - 1 - i
            pos[nl + inner.size + i] = float(last - (2 * rc - ridx[j]))
            val[nl + inner.size + i] = x[last - ridx[j]]
        p, v = _dedupe(pos, val)
        out.append((p, v))
    return out[0][0], out[0][1], out[1][0], out[1][1]


@njit(**_JIT)
def _tridiagonal_solve(dl: np.ndarray, d: np.ndarray, du: np.ndarray, b: np.ndarray) -> None:
    """Solve a tridiagonal system in place (``b`` becomes the solution).

    Gaussian elimination with partial pivoting (rows swapped only when the subdiagonal entry
    is strictly larger), which produces the second superdiagonal ``dl`` as fill-in: the
    classic LAPACK ``gtsv`` scheme. ``dl`` and ``du`` have n-1 entries, ``d`` and ``b`` n.
    """
    n = d.size
    for i in range(n - 1):
        if abs(d[i]) >= abs(dl[i]):
            if d[i] == 0.0:
                raise ValueError("singular spline system")
            fact = dl[i] / d[i]
            d[i + 1] = d[i + 1] - fact * du[i]
            b[i + 1] = b[i + 1] - fact * b[i]
            dl[i] = 0.0
        else:
            fact = d[i] / dl[i]
            d[i] = dl[i]
            temp = d[i + 1]
            d[i + 1] = du[i] - fact * temp
            if i < n - 2:
                dl[i] = du[i + 1]
                du[i + 1] = -fact * dl[i]
            du[i] = temp
            temp = b[i]
            b[i] = b[i + 1]
            b[i + 1] = temp - fact * b[i + 1]
    if d[n - 1] == 0.0:
        raise ValueError("singular spline system")
    b[n - 1] = b[n - 1] / d[n - 1]
    if n > 1:
        b[n - 2] = (b[n - 2] - du[n - 2] * b[n - 1]) / d[n - 2]
    for i in range(n - 3, -1, -1):
        b[i] = (b[i] - du[i] * b[i + 1] - dl[i] * b[i + 2]) / d[i]


@njit(**_JIT)
def _spline_not_a_knot(px: np.ndarray, py: np.ndarray, n: int, out: np.ndarray) -> None:
    """Evaluate the not-a-knot cubic spline through (px, py), m >= 4, at 0..n-1 into ``out``.

    Node slopes come from the tridiagonal system of C2 continuity with not-a-knot ends; each
    interval [px[i], px[i+1]) is a cubic in s = t - px[i] with power-basis coefficients, the last
    interval closed on the right (the conventions of a piecewise polynomial).
    """
    m = px.size
    dx = np.empty(m - 1)
    slope = np.empty(m - 1)
    for i in range(m - 1):
        dx[i] = px[i + 1] - px[i]
        slope[i] = (py[i + 1] - py[i]) / dx[i]
    d = np.empty(m)
    du = np.empty(m - 1)
    dl = np.empty(m - 1)
    s = np.empty(m)
    for i in range(1, m - 1):
        d[i] = 2.0 * (dx[i - 1] + dx[i])
        du[i] = dx[i - 1]
        dl[i - 1] = dx[i]
        s[i] = 3.0 * (dx[i] * slope[i - 1] + dx[i - 1] * slope[i])
    w = px[2] - px[0]
    d[0] = dx[1]
    du[0] = w
    s[0] = ((dx[0] + 2.0 * w) * dx[1] * slope[0] + dx[0] * dx[0] * slope[1]) / w
    w = px[m - 1] - px[m - 3]
    d[m - 1] = dx[m - 3]
    dl[m - 2] = w
    s[m - 1] = (
        dx[m - 2] * dx[m - 2] * slope[m - 3] + (2.0 * w + dx[m - 2]) * dx[m - 3] * slope[m - 2]
    ) / w
    _tridiagonal_solve(dl, d, du, s)

    if px[0] > 0.0 or px[m - 1] < n - 1:
        raise ValueError("envelope knots do not cover the signal")
    t = 0
    for seg in range(m - 1):
        # Samples of [px[seg], px[seg+1]); the last interval is closed on the right.
        stop = px[seg + 1] if seg < m - 2 else px[seg + 1] + 0.5
        if t >= n or float(t) >= stop:
            continue
        h = dx[seg]
        c3 = py[seg]
        c2 = s[seg]
        tt = (s[seg] + s[seg + 1] - 2.0 * slope[seg]) / h
        c0 = tt / h
        c1 = (slope[seg] - s[seg]) / h - tt
        x0 = px[seg]
        while t < n and float(t) < stop:
            z = float(t) - x0
            z2 = z * z
            out[t] = c3 + c2 * z + c1 * z2 + c0 * (z2 * z)
            t += 1


@njit(**_JIT)
def _solve3(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve a 3x3 system by Gaussian elimination with partial pivoting."""
    a = a.copy()
    b = b.copy()
    for col in range(3):
        piv = col
        for r in range(col + 1, 3):
            if abs(a[r, col]) > abs(a[piv, col]):
                piv = r
        if piv != col:
            for c in range(3):
                tmp = a[col, c]
                a[col, c] = a[piv, c]
                a[piv, c] = tmp
            tmp = b[col]
            b[col] = b[piv]
            b[piv] = tmp
        for r in range(col + 1, 3):
            f = a[r, col] / a[col, col]
            for c in range(col, 3):
                a[r, c] -= f * a[col, c]
            b[r] -= f * b[col]
    xs = np.empty(3)
    for r in range(2, -1, -1):
        acc = b[r]
        for c in range(r + 1, 3):
            acc -= a[r, c] * xs[c]
        xs[r] = acc / a[r, r]
    return xs


@njit(**_JIT)
def _spline_three(px: np.ndarray, py: np.ndarray, n: int, out: np.ndarray) -> None:
    """Evaluate the cubic spline through three knots (zero curvature at both ends) at 0..n-1."""
    x0, x1, x2 = px[0], px[1], px[2]
    y0, y1, y2 = py[0], py[1], py[2]
    h1 = x1 - x0
    h2 = x2 - x1
    dy1 = y1 - y0
    dy2 = y2 - y1
    r1 = 1.0 / h1
    r2 = 1.0 / h2
    mat = np.zeros((3, 3))
    mat[0, 0] = 2.0 * r1
    mat[0, 1] = r1
    mat[1, 0] = r1
    mat[1, 1] = 2.0 * (r1 + r2)
    mat[1, 2] = r2
    mat[2, 1] = r2
    mat[2, 2] = 2.0 * r2
    rhs = np.empty(3)
    rhs[0] = 3.0 * dy1 * r1 * r1
    rhs[2] = 3.0 * dy2 * r2 * r2
    rhs[1] = rhs[0] + rhs[2]
    k = _solve3(mat, rhs)
    a1 = k[0] * h1 - dy1
    b1 = -k[1] * h1 + dy1
    a2 = k[1] * h2 - dy2
    b2 = -k[2] * h2 + dy2
    for t in range(n):
        tf = float(t)
        if tf < x0 or tf > x2:
            raise ValueError("envelope knots do not cover the signal")
        if tf < x1:
            u = (tf - x0) / h1
            v = 1.0 - u
            out[t] = v * y0 + u * y1 + u * v * (a1 * v + b1 * u)
        else:
            u = (tf - x1) / h2
            v = 1.0 - u
            out[t] = v * y1 + u * y2 + u * v * (a2 * v + b2 * u)


@njit(**_JIT)
def _envelope(px: np.ndarray, py: np.ndarray, n: int, out: np.ndarray) -> None:
    if px.size > 3:
        _spline_not_a_knot(px, py, n, out)
    else:
        _spline_three(px, py, n, out)


@njit(**_JIT)
def _sifting_done(
    new: np.ndarray, old: np.ndarray, max_val: np.ndarray, min_val: np.ndarray
) -> bool:
    """Whether the proto-IMF ``new`` passes one of the three sifting stop tests."""
    for v in max_val:
        if v < 0.0:
            return False
    for v in min_val:
        if v > 0.0:
            return False
    energy = 0.0
    for v in new:
        energy += v * v
    if energy < 1e-10:
        return False
    diff_sq = 0.0
    lo = old[0]
    hi = old[0]
    for i in range(new.size):
        dd = new[i] - old[i]
        diff_sq += dd * dd
        lo = min(lo, old[i])
        hi = max(hi, old[i])
    if diff_sq / (hi - lo) < SVAR_THR:
        return True
    rel = 0.0
    for i in range(new.size):
        q = (new[i] - old[i]) / new[i]
        rel += q * q
    if rel < STD_THR:
        return True
    old_energy = 0.0
    for v in old:
        old_energy += v * v
    return diff_sq / old_energy < ENERGY_RATIO_THR


@njit(**_JIT)
def emd(x: np.ndarray, max_imf: int) -> np.ndarray:
    """Empirical mode decomposition of ``x``.

    Args:
        x: signal, float64, unit sample spacing.
        max_imf: stop after this many IMFs; -1 for no limit.

    Returns:
        Rows: the IMFs, then the residue unless it is all within 1e-8 of zero. A sifting that
        starts (or ends) with two extrema or fewer is a trend and is not kept as an IMF.
    """
    n = x.size
    rows = np.empty((0, n))
    rows_list = []
    acc = np.zeros(n)
    n_ext = -1
    while True:
        imf = x - acc
        mean = np.empty(n)
        upper = np.empty(n)
        lower = np.empty(n)
        imax, imin, _nz = find_extrema(imf)
        finished = False
        it = 0
        while True:
            it += 1
            if it >= MAX_ITER:
                break
            n_ext = imax.size + imin.size
            if n_ext <= 2:
                finished = True
                break
            pmax, vmax, pmin, vmin = envelope_knots(imf, imax, imin, NBSYM)
            _envelope(pmax, vmax, n, upper)
            _envelope(pmin, vmin, n, lower)
            old = imf.copy()
            for i in range(n):
                mean[i] = 0.5 * (upper[i] + lower[i])
                imf[i] = imf[i] - mean[i]
            imax, imin, n_zero = find_extrema(imf)
            n_ext = imax.size + imin.size
            if _sifting_done(imf, old, vmax, vmin) and abs(n_ext - n_zero) < 2:
                break
        rows_list.append(imf)
        acc = acc + imf
        if finished:
            break
        rest = x - acc
        if rest.max() - rest.min() < EMD_RANGE_THR:
            break
        if np.abs(rest).sum() < EMD_POWER_THR:
            break
        if len(rows_list) == max_imf:
            break
    if n_ext <= 2:
        rows_list.pop()
    k = len(rows_list)
    total = np.zeros(n)
    for r in rows_list:
        total = total + r
    residue = x - total
    keep_residue = False
    for v in residue:
        if not abs(v) <= 1e-8:
            keep_residue = True
            break
    rows = np.empty((k + (1 if keep_residue else 0), n))
    for i in range(k):
        rows[i] = rows_list[i]
    if keep_residue:
        rows[k] = residue
    return rows


@njit(**_JIT)
def emd_rows(
    inputs: np.ndarray, max_imf: int, keep_rows: int, from_end: bool
) -> tuple[np.ndarray, np.ndarray]:
    """EMD of every row of ``inputs`` (the one compiled entry point for batches).

    Args:
        inputs: signals, shape (m, n).
        max_imf: as in :func:`emd`.
        keep_rows: rows of each EMD to return.
        from_end: return the last ``keep_rows`` rows (for the local mean, the last row) instead
            of the first ones.

    Returns:
        (rows, counts): rows has shape (m, keep_rows, n), zero where an EMD has fewer rows;
        counts[i] is how many rows the EMD of input i has in all.
    """
    m, n = inputs.shape
    out = np.zeros((m, keep_rows, n))
    counts = np.zeros(m, dtype=np.int64)
    for i in range(m):
        rows = emd(inputs[i], max_imf)
        total = rows.shape[0]
        counts[i] = total
        k = min(total, keep_rows)
        first = total - k if from_end else 0
        for j in range(k):
            out[i, j] = rows[first + j]
    return out, counts
