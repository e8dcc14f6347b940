"""Plain-numpy twins of the water-filling kernels and naive reference formulas, for tests.

Each twin implements the maths of a kernel of :mod:`capalloc.allocation.methods.kernels`
without numba (vectorised over breakpoints); the tests compare them on moderate inputs.
The whole-float-range reference is :func:`capalloc.testing.bisection_reference`.
"""

from __future__ import annotations

import math

import numpy as np

from capalloc.quadratic import closed_form


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
    live = np.flatnonzero(~mono & ~ign & ~poly)
    ends = [closed_form.capacity_at(mu, v[live], K[live]).sum() for mu in (mu_lo, mu_hi)]
    return (
        float(mono.sum()),
        float(A0),
        float(B0),
        live,
        v[live],
        float(np.count_nonzero(v)),
        *ends,
    )


def quad_capacities_numpy(v, K, mu):
    """Capacities ``C_i(mu)`` of features with ``K >= 3``, written from the paper's form
    ``clip(((K - 1) v / mu - 2) / (K - 3), 0, 1)`` (a unit step ``v > mu`` at ``K = 3``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.clip(((K - 1) * v / mu - 2) / (K - 3), 0.0, 1.0)
    c = np.where(K == 3, (v > mu).astype(float), c)
    return np.where(v > 0, c, 0.0)


def quad_segment_numpy(v, K, mu):
    """Twin of the scipy method's segment kernel: ``(m, npoly, A, B)`` at ``mu``."""
    pos, lin = v > 0, K == 3
    mono = pos & np.where(lin, v > mu, v >= mu)
    poly = pos & ~lin & ~mono & ((K - 1) * v > 2 * mu)
    A = math.fsum((K[poly] - 1) * v[poly] / (K[poly] - 3))
    B = math.fsum(2 / (K[poly] - 3))
    return int(mono.sum()), int(poly.sum()), A, B
