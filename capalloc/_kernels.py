r"""Numba kernels of the exact water-filling solver, each with a plain-numpy twin.

Notation (quadratic model, features with :math:`K_i \ge 3` and :math:`v_i > 0`):
with :math:`T = 2\mu^2`, feature ``i`` has capacity

.. math::

    C_i(\mu) = \Pi_{[0,1]}\Big(\frac{(K_i-1) v_i/\mu - 2}{K_i - 3}\Big)
             = \Pi_{[0,1]}(a_i/\mu - b_i),\qquad
    a_i = \frac{(K_i-1) v_i}{K_i-3},\ b_i = \frac{2}{K_i-3},

ignored for :math:`\mu \ge (K_i-1)v_i/2`, monosemantic for :math:`\mu \le v_i`, and a
unit step at :math:`\mu = v_i` when :math:`K_i = 3`. Between breakpoints
:math:`S(\mu) = \sum_i C_i(\mu) = m + A/\mu - B`, so once the segment holding
:math:`S(\mu) = d` is found, :math:`\mu = A / (d - m + B)` exactly.

The kernels never see the other features: callers pass the aggregate
``(m0, A0, B0)`` of features whose state is fixed above ``mu_top``.
Twins (``*_numpy``) implement the same maths without numba; tests compare them,
and the test suite also runs once under ``NUMBA_DISABLE_JIT=1``.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = [
    "sweep",
    "sweep_numpy",
    "convex_capacities",
    "convex_capacities_numpy",
    "bracket_pass",
    "bracket_pass_numpy",
    "total_capacity",
    "quadratic_certificate",
    "smallest_threshold",
    "batch_certificate",
    "polish",
    "batch_waterfill",
]

ENTER, SATURATE, JUMP = 0, 1, 2


@numba.njit(cache=True, inline="always")
def _add(total, comp, x):  # pragma: no cover - compiled
    """Neumaier-compensated ``total + x``: returns the new ``(total, comp)``."""
    t = total + x
    if abs(total) >= abs(x):
        comp += (total - t) + x
    else:
        comp += (x - t) + total
    return t, comp


@numba.njit(cache=True, error_model="numpy")
def sweep(v, K, budget, m0, A0, B0, mu_top):  # pragma: no cover - compiled
    """Find ``mu`` with ``S(mu) = budget`` below ``mu_top``.

    Returns ``(mu, share, nseg)``; ``share`` is the capacity of each ``K = 3``
    feature with ``v == mu`` (NaN when ``mu`` is not a jump point), ``nseg`` the
    number of breakpoints visited. ``mu = 0`` means the budget is never reached.
    """
    n = v.size
    ev_mu = np.empty(2 * n)
    ev_idx = np.empty(2 * n, dtype=np.int64)
    ev_kind = np.empty(2 * n, dtype=np.int64)
    m = m0
    A = A0
    B = B0
    # A and B are sums of many terms added and later removed: keep Neumaier
    # compensations (cA, cB) so that no drift builds up over millions of events.
    cA = 0.0
    cB = 0.0
    # Features polysemantic right now. When none is left, A and B are exactly the
    # caller's aggregate again: resetting them drops the rounding residue of
    # terms added and removed (which can be 1e300 times larger than later terms).
    npoly = 0
    ne = 0
    for i in range(n):
        vi = v[i]
        Ki = K[i]
        if Ki == 3.0:
            if vi > mu_top:
                m += 1.0
            else:
                ev_mu[ne] = vi
                ev_idx[ne] = i
                ev_kind[ne] = JUMP
                ne += 1
        else:
            hi = (Ki - 1.0) * vi / 2.0
            if vi > mu_top:
                m += 1.0
            else:
                if hi > mu_top:
                    A, cA = _add(A, cA, (Ki - 1.0) * vi / (Ki - 3.0))
                    B, cB = _add(B, cB, 2.0 / (Ki - 3.0))
                    npoly += 1
                else:
                    ev_mu[ne] = hi
                    ev_idx[ne] = i
                    ev_kind[ne] = ENTER
                    ne += 1
                ev_mu[ne] = vi
                ev_idx[ne] = i
                ev_kind[ne] = SATURATE
                ne += 1
    order = np.argsort(-ev_mu[:ne], kind="mergesort")
    prev = mu_top
    k = 0
    nseg = 0
    while k < ne:
        mu_e = ev_mu[order[k]]
        nseg += 1
        s_before = m + (A + cA) / mu_e - (B + cB)
        if s_before >= budget:
            denom = budget - m + (B + cB)
            mu = (A + cA) / denom if (A + cA > 0.0 and denom > 0.0) else mu_e
            mu = min(max(mu, mu_e), prev)
            return mu, np.nan, nseg
        jumps = 0.0
        while k < ne and ev_mu[order[k]] == mu_e:
            j = ev_idx[order[k]]
            kind = ev_kind[order[k]]
            if kind == JUMP:
                m += 1.0
                jumps += 1.0
            else:
                sign = 1.0 if kind == ENTER else -1.0
                A, cA = _add(A, cA, sign * (K[j] - 1.0) * v[j] / (K[j] - 3.0))
                B, cB = _add(B, cB, sign * 2.0 / (K[j] - 3.0))
                if kind == SATURATE:
                    m += 1.0
                    npoly -= 1
                else:
                    npoly += 1
            k += 1
        if npoly == 0:
            A, cA, B, cB = A0, 0.0, B0, 0.0
        s_after = m + (A + cA) / mu_e - (B + cB)
        if s_after >= budget:
            share = (budget - (s_after - jumps)) / jumps if jumps > 0.0 else np.nan
            return mu_e, min(max(share, 0.0), 1.0), nseg
        prev = mu_e
    if A + cA > 0.0:  # features polysemantic on the whole range below the last breakpoint
        denom = budget - m + (B + cB)
        if denom > 0.0:
            return min((A + cA) / denom, prev), np.nan, nseg
    return 0.0, np.nan, nseg


def sweep_numpy(v, K, budget, m0, A0, B0, mu_top):
    """Plain-numpy twin of :func:`sweep` (vectorised over breakpoints)."""
    v = np.asarray(v, float)
    K = np.asarray(K, float)
    lin = K == 3.0
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(lin, 0.0, (K - 1) * v / (K - 3))
        b = np.where(lin, 0.0, 2.0 / (K - 3))
    hi = np.where(lin, v, (K - 1) * v / 2)
    above = v > mu_top
    m = m0 + np.count_nonzero(above)
    poly_top = ~above & ~lin & (hi > mu_top)
    A = A0 + a[poly_top].sum()
    B = B0 + b[poly_top].sum()
    live = ~above
    enter = live & ~lin & ~poly_top
    jump = live & lin
    sat = live & ~lin
    mus = np.concatenate([hi[enter], v[sat], v[jump]])
    dA = np.concatenate([a[enter], -a[sat], np.zeros(jump.sum())])
    dB = np.concatenate([b[enter], -b[sat], np.zeros(jump.sum())])
    dm = np.concatenate([np.zeros(enter.sum()), np.ones(sat.sum()), np.ones(jump.sum())])
    dj = np.concatenate([np.zeros(enter.sum() + sat.sum()), np.ones(jump.sum())])
    order = np.argsort(-mus, kind="mergesort")
    mus, dA, dB, dm, dj = mus[order], dA[order], dB[order], dm[order], dj[order]
    # aggregates after each event, and before the first event of each group of equal mu
    cA, cB, cm, cj = (A + np.cumsum(dA), B + np.cumsum(dB), m + np.cumsum(dm), np.cumsum(dj))
    first = np.searchsorted(-mus, -mus, side="left")
    last = np.searchsorted(-mus, -mus, side="right") - 1
    pA = np.concatenate([[A], cA])[first]
    pB = np.concatenate([[B], cB])[first]
    pm = np.concatenate([[m], cm])[first]
    s_before = pm + pA / mus - pB
    s_after = cm[last] + cA[last] / mus - cB[last]
    hit = np.flatnonzero((s_before >= budget) | (s_after >= budget))
    if hit.size:
        e = first[hit[0]]
        prev = mu_top if e == 0 else mus[e - 1]
        if s_before[e] >= budget:
            denom = budget - pm[e] + pB[e]
            mu = pA[e] / denom if (pA[e] > 0 and denom > 0) else mus[e]
            return min(max(mu, mus[e]), prev), np.nan, e + 1
        jumps = cj[last[e]] - (cj[e - 1] if e else 0.0)
        share = (budget - (s_after[e] - jumps)) / jumps if jumps > 0 else np.nan
        return mus[e], float(np.clip(share, 0.0, 1.0)) if jumps > 0 else np.nan, e + 1
    fA, fB, fm = (cA[-1], cB[-1], cm[-1]) if mus.size else (A, B, m)
    prev = mus[-1] if mus.size else mu_top
    if fA > 0 and budget - fm + fB > 0:
        return min(fA / (budget - fm + fB), prev), np.nan, mus.size
    return 0.0, np.nan, mus.size


@numba.njit(cache=True, error_model="numpy")
def convex_capacities(v, K, mu, share):  # pragma: no cover - compiled
    """Capacities at ``mu`` (``share`` for ``K = 3`` features with ``v == mu``)."""
    n = v.size
    C = np.empty(n)
    for i in range(n):
        if v[i] == 0.0:
            C[i] = 0.0
        elif K[i] == 3.0:
            if v[i] > mu:
                C[i] = 1.0
            elif v[i] < mu:
                C[i] = 0.0
            else:
                C[i] = share if share == share else 0.0
        else:
            c = ((K[i] - 1.0) * v[i] / mu - 2.0) / (K[i] - 3.0)
            C[i] = min(max(c, 0.0), 1.0)
    return C


def convex_capacities_numpy(v, K, mu, share):
    """Plain-numpy twin of :func:`convex_capacities`."""
    v = np.asarray(v, float)
    K = np.asarray(K, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.clip(((K - 1) * v / mu - 2) / (K - 3), 0.0, 1.0)
    tie = 0.0 if np.isnan(share) else share
    step = np.where(v > mu, 1.0, np.where(v < mu, 0.0, tie))
    return np.where(v == 0, 0.0, np.where(K == 3, step, c))


@numba.njit(cache=True, error_model="numpy")
def bracket_pass(v, K, mu_lo, mu_hi):  # pragma: no cover - compiled
    """One pass over the features for a bracket ``mu_lo < mu_hi``.

    Returns ``(m0, A0, B0, live)``: the aggregate of features whose state is the
    same on the whole bracket (monosemantic count ``m0``; polysemantic sums
    ``A0 = sum a_i``, ``B0 = sum b_i``; ignored ones drop out) and the indices of
    the others, those with a breakpoint inside ``[mu_lo, mu_hi]``.
    """
    n = v.size
    live = np.empty(n, dtype=np.int64)
    nl = 0
    m0 = 0.0
    A0 = 0.0
    B0 = 0.0
    cA = 0.0  # Neumaier compensations
    cB = 0.0
    for i in range(n):
        vi = v[i]
        Ki = K[i]
        if vi > mu_hi:
            m0 += 1.0
        elif (Ki - 1.0) * vi < 2.0 * mu_lo or vi == 0.0:
            pass  # ignored on the whole bracket (K = 3 included: then hi = v)
        elif Ki != 3.0 and vi < mu_lo and (Ki - 1.0) * vi > 2.0 * mu_hi:
            A0, cA = _add(A0, cA, (Ki - 1.0) * vi / (Ki - 3.0))
            B0, cB = _add(B0, cB, 2.0 / (Ki - 3.0))
        else:
            live[nl] = i
            nl += 1
    return m0, A0 + cA, B0 + cB, live[:nl]


def bracket_pass_numpy(v, K, mu_lo, mu_hi):
    """Plain-numpy twin of :func:`bracket_pass`."""
    v = np.asarray(v, float)
    K = np.broadcast_to(np.asarray(K, float), v.shape)
    mono = v > mu_hi
    ign = ~mono & (((K - 1) * v < 2 * mu_lo) | (v == 0))
    poly = ~mono & ~ign & (K != 3) & (v < mu_lo) & ((K - 1) * v > 2 * mu_hi)
    with np.errstate(divide="ignore", invalid="ignore"):
        A0 = np.sum(((K - 1) * v / (K - 3))[poly])
        B0 = np.sum((2 / (K - 3))[poly])
    return float(mono.sum()), float(A0), float(B0), np.flatnonzero(~mono & ~ign & ~poly)


@numba.njit(cache=True, error_model="numpy")
def total_capacity(v, K, mu, m0, A0, B0):  # pragma: no cover - compiled
    """``S(mu)``: the aggregate ``m0 + A0/mu - B0`` plus the capacities of ``v``."""
    s = m0 + A0 / mu - B0
    for i in range(v.size):
        if v[i] == 0.0:
            continue
        if K[i] == 3.0:
            s += 1.0 if v[i] > mu else 0.0
        else:
            s += min(max(((K[i] - 1.0) * v[i] / mu - 2.0) / (K[i] - 3.0), 0.0), 1.0)
    return s


@numba.njit(cache=True, inline="always")
def _h(v, K, C):  # pragma: no cover - compiled
    """``(K - 1) v / (2 + (K - 3) C)``; 0 for ``K = 1`` (where ``l`` vanishes identically)."""
    if K == 1.0:
        return 0.0
    return (K - 1.0) * v / (2.0 + (K - 3.0) * C)


@numba.njit(cache=True, error_model="numpy")
def smallest_threshold(v, K, C):  # pragma: no cover - compiled
    """``max`` of the marginal benefit over features with ``C < 1`` (twin:
    :func:`capalloc._result.smallest_threshold`)."""
    T = 0.0
    for i in range(v.size):
        if C[i] < 1.0:
            T = max(T, 2.0 * _h(v[i], K[i], C[i]) ** 2)
    return T


@numba.njit(cache=True, error_model="numpy")
def quadratic_certificate(v, K, C, T, d, norms):  # pragma: no cover - compiled
    """Fill ``norms`` with the optimal squared norms; return ``(loss, kkt_residual)``.

    Fused one-pass-per-quantity version of ``problem.optimal_norms``,
    ``problem.loss`` and :func:`capalloc.kkt_residual` (their numpy forms are the twins).
    """
    n = v.size
    loss = 0.0
    total = 0.0
    comp = 0.0
    gmax = 0.0
    for i in range(n):
        h = _h(v[i], K[i], C[i])
        norms[i] = h * C[i]
        loss += 2.0 * h * v[i] * (1.0 - C[i])
        total, comp = _add(total, comp, C[i])
        gmax = max(gmax, 2.0 * h * h)
    scale = max(gmax, T)
    if scale <= 0.0:
        scale = 1.0
    total += comp
    res = max(total - d, 0.0) / max(d, 1.0)
    for i in range(n):
        g = 2.0 * _h(v[i], K[i], C[i]) ** 2
        step = min(max(C[i] + (g - T) / scale, 0.0), 1.0)
        res = max(res, abs(C[i] - step), -C[i], C[i] - 1.0)
    if total < min(d, n) - 1e-12:
        res = max(res, abs(T / scale * (d - total)))
    return loss, res


@numba.njit(cache=True, parallel=True, error_model="numpy")
def batch_certificate(V, KK, C, d):  # pragma: no cover - compiled
    """Row-wise :func:`smallest_threshold` and :func:`quadratic_certificate`."""
    m, n = V.shape
    T = np.empty(m)
    loss = np.empty(m)
    kkt = np.empty(m)
    norms = np.empty((m, n))
    for r in numba.prange(m):
        T[r] = smallest_threshold(V[r], KK[r], C[r])
        loss[r], kkt[r] = quadratic_certificate(V[r], KK[r], C[r], T[r], d, norms[r])
    return T, norms, loss, kkt


@numba.njit(cache=True, error_model="numpy")
def polish(C, K, d):  # pragma: no cover - compiled
    r"""Spread the rounding error of ``sum(C) - d`` over polysemantic features (in place).

    Near ``K = 3`` the capacity formula divides a cancelled difference by
    ``K - 3``; restoring the exact budget keeps the allocation feasible and
    exact ties equal. The error is removed by one step in ``1/mu``: feature
    ``i`` moves in proportion to :math:`dC_i/d(1/\mu) \propto C_i + 2/(K_i-3)`,
    so all features stay on one water level (steep features near ``K = 3``
    absorb almost all of it) and the KKT residual stays at rounding level.
    """
    total = 0.0
    comp = 0.0
    weight = 0.0
    for i in range(C.size):
        total, comp = _add(total, comp, C[i])
        if 0.0 < C[i] < 1.0 and K[i] != 3.0:
            weight += C[i] + 2.0 / (K[i] - 3.0)
    if weight == 0.0:
        return C
    shift = (total + comp - d) / weight
    for i in range(C.size):
        if 0.0 < C[i] < 1.0 and K[i] != 3.0:
            C[i] = min(max(C[i] - shift * (C[i] + 2.0 / (K[i] - 3.0)), 0.0), 1.0)
    return C


@numba.njit(cache=True, parallel=True, error_model="numpy")
def batch_waterfill(V, KK, d):  # pragma: no cover - compiled
    """Water-filling for a batch of convex problems (rows), in parallel.

    Returns ``(C, mu, nseg)`` with ``mu = -1`` for rows where the budget covers
    every feature of positive importance.
    """
    m, n = V.shape
    C = np.empty((m, n))
    MU = np.empty(m)
    NSEG = np.zeros(m, dtype=np.int64)
    for r in numba.prange(m):
        v = V[r]
        K = KK[r]
        npos = 0
        for i in range(n):
            if v[i] > 0.0:
                npos += 1
        if d >= npos:
            for i in range(n):
                C[r, i] = 1.0 if v[i] > 0.0 else 0.0
            MU[r] = -1.0
        elif d == 0:
            for i in range(n):
                C[r, i] = 0.0
            MU[r] = np.inf
        else:
            mu, share, nseg = sweep(v, K, float(d), 0.0, 0.0, 0.0, np.inf)
            C[r] = polish(convex_capacities(v, K, mu, share), K, float(d))
            MU[r] = mu
            NSEG[r] = nseg
    return C, MU, NSEG
