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

__all__ = ["sweep", "sweep_numpy", "convex_capacities", "bracket_pass", "batch_waterfill"]

ENTER, SATURATE, JUMP = 0, 1, 2


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
                    A += (Ki - 1.0) * vi / (Ki - 3.0)
                    B += 2.0 / (Ki - 3.0)
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
        s_before = m + A / mu_e - B
        if s_before >= budget:
            denom = budget - m + B
            mu = A / denom if (A > 0.0 and denom > 0.0) else mu_e
            mu = min(max(mu, mu_e), prev)
            return mu, np.nan, nseg
        jumps = 0.0
        while k < ne and ev_mu[order[k]] == mu_e:
            j = ev_idx[order[k]]
            kind = ev_kind[order[k]]
            if kind == JUMP:
                m += 1.0
                jumps += 1.0
            elif kind == ENTER:
                A += (K[j] - 1.0) * v[j] / (K[j] - 3.0)
                B += 2.0 / (K[j] - 3.0)
            else:
                A -= (K[j] - 1.0) * v[j] / (K[j] - 3.0)
                B -= 2.0 / (K[j] - 3.0)
                m += 1.0
            k += 1
        s_after = m + A / mu_e - B
        if s_after >= budget:
            share = (budget - (s_after - jumps)) / jumps if jumps > 0.0 else np.nan
            return mu_e, min(max(share, 0.0), 1.0), nseg
        prev = mu_e
    if A > 0.0:  # poly features remain below the last breakpoint: mu = A / (budget - m + B)
        denom = budget - m + B
        if denom > 0.0:
            return min(A / denom, prev), np.nan, nseg
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
    """One pass over all features for a bracket ``mu_lo < mu_hi``.

    Returns ``(s_lo, s_hi, m0, A0, B0, live)``: the exact ``S`` at both ends, the
    aggregate of features whose state is fixed on the whole bracket, and the
    indices of the others (those with a breakpoint inside ``[mu_lo, mu_hi]``).
    """
    n = v.size
    live = np.empty(n, dtype=np.int64)
    nl = 0
    s_lo = 0.0
    s_hi = 0.0
    m0 = 0.0
    A0 = 0.0
    B0 = 0.0
    for i in range(n):
        vi = v[i]
        Ki = K[i]
        if vi == 0.0:
            continue
        if Ki == 3.0:
            hi = vi
        else:
            hi = (Ki - 1.0) * vi / 2.0
        # exact S at both ends
        for end in range(2):
            mu = mu_lo if end == 0 else mu_hi
            if Ki == 3.0:
                c = 1.0 if vi > mu else 0.0
            else:
                c = min(max(((Ki - 1.0) * vi / mu - 2.0) / (Ki - 3.0), 0.0), 1.0)
            if end == 0:
                s_lo += c
            else:
                s_hi += c
        if vi > mu_hi:
            m0 += 1.0
        elif hi < mu_lo:
            pass
        elif Ki != 3.0 and vi < mu_lo and hi > mu_hi:
            A0 += (Ki - 1.0) * vi / (Ki - 3.0)
            B0 += 2.0 / (Ki - 3.0)
        else:
            live[nl] = i
            nl += 1
    return s_lo, s_hi, m0, A0, B0, live[:nl]


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
            C[r] = convex_capacities(v, K, mu, share)
            MU[r] = mu
            NSEG[r] = nseg
    return C, MU, NSEG
