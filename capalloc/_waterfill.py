r"""Exact water-filling for the quadratic model (method ``"waterfill"``).

For features with :math:`K_i \ge 3` the optimum is :math:`C_i(\mu)` of
:mod:`capalloc._kernels` with :math:`\sum_i C_i(\mu) = d`; the segment of the
piecewise form :math:`m + A/\mu - B` holding ``d`` is located among the
breakpoints and its linear equation in :math:`1/\mu` solved exactly. For
:math:`K_i \le 3` the objective is concave and the top-``d`` features by
:math:`\ell_i(0) - \ell_i(1) = (K_i - 1) v_i^2` are monosemantic. Mixed
curvature is solved exactly by :mod:`capalloc._mixed`.

Large problems first solve a strided sample to bracket :math:`\mu`, then one
pass over all features keeps only those with a breakpoint inside the bracket,
so the cost is one linear pass plus a sort of a small set (expected
:math:`O(n)`); a bracket that misses falls back to the full sort.

Ties: with ``K = 3`` exactly, features whose importance equals the threshold
share the remaining capacity equally (the limit :math:`K \to 3^+`); with
``K < 3`` ties are broken by lower index first.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _kernels
from ._problems import QuadraticProblem
from ._result import AllocationResult, make_result, smallest_threshold
from ._solve import register_method

__all__ = ["waterfill"]

_SAMPLE = 1 << 14  # sample size used to bracket mu on large problems
_LARGE = 1 << 16  # problems with more features than this use the bracket


def _top_d(v: np.ndarray, K: np.ndarray, d: int) -> np.ndarray:
    """Concave case: the ``d`` features of largest ``(K - 1) v^2`` get capacity 1."""
    gain = (K - 1) * v * v
    C = np.zeros_like(v)
    if d > 0:
        order = np.argsort(-gain, kind="stable")[:d]
        C[order] = 1.0
    C[v == 0] = 0.0
    return C


def convex_mu(v: np.ndarray, K: np.ndarray, budget: float) -> tuple[float, float, int]:
    """``(mu, share, nseg)`` solving ``S(mu) = budget`` for features with ``K >= 3``.

    ``budget`` must lie strictly between 0 and the number of features with ``v > 0``.
    """
    n = v.size
    if n > _LARGE:
        found = _bracketed(v, K, budget)
        if found is not None:
            return found
    return _kernels.sweep(v, K, float(budget), 0.0, 0.0, 0.0, math.inf)


def _bracketed(v: np.ndarray, K: np.ndarray, budget: float) -> tuple[float, float, int] | None:
    n = v.size
    stride = n // _SAMPLE
    vs, Ks = v[::stride], K[::stride]
    frac = budget / n
    expect = frac * vs.size
    spread = 6.0 * math.sqrt(max(expect * (1 - frac), 1.0)) + 2.0
    lo_budget = min(expect + spread, np.count_nonzero(vs) - 0.5)
    hi_budget = max(expect - spread, 0.5)
    if not (0 < hi_budget < lo_budget):
        return None
    mu_lo = _kernels.sweep(vs, Ks, lo_budget, 0.0, 0.0, 0.0, math.inf)[0]
    mu_hi = _kernels.sweep(vs, Ks, hi_budget, 0.0, 0.0, 0.0, math.inf)[0]
    if not (0 < mu_lo < mu_hi):
        return None
    s_lo, s_hi, m0, A0, B0, live = _kernels.bracket_pass(v, K, mu_lo, mu_hi)
    if not (s_hi <= budget <= s_lo):
        return None
    mu, share, nseg = _kernels.sweep(v[live], K[live], float(budget), m0, A0, B0, mu_hi)
    if not (mu_lo <= mu <= mu_hi):
        return None
    return mu, share, nseg + 1


def _solve_one(v: np.ndarray, K: np.ndarray, d: int) -> tuple[np.ndarray, int]:
    """Capacities of one (unbatched) problem, and the number of segments visited."""
    npos = int(np.count_nonzero(v))
    if d >= npos:
        return (v > 0).astype(float), 0
    if d == 0:
        return np.zeros_like(v), 0
    if np.all(K >= 3):
        mu, share, nseg = convex_mu(v, K, float(d))
        C = _kernels.convex_capacities(v, K, mu, share)
        return _polish(C, v, K, d), nseg
    if np.all(K <= 3):
        return _top_d(v, K, d), 0
    from ._mixed import mixed_capacities

    return mixed_capacities(v, K, d)


def _polish(C: np.ndarray, v: np.ndarray, K: np.ndarray, d: int) -> np.ndarray:
    """Spread the rounding error of ``sum(C) - d`` over the polysemantic features.

    Near ``K = 3`` the formula for ``C_i`` divides a cancelled difference by
    ``K - 3``; restoring the exact budget keeps the allocation feasible and ties
    exactly equal.
    """
    poly = (C > 0) & (C < 1) & (K != 3)
    if np.any(poly):
        excess = C.sum() - d
        C[poly] = np.clip(C[poly] - excess / np.count_nonzero(poly), 0.0, 1.0)
    return C


@register_method("waterfill", problems=(QuadraticProblem,), exact=True, batched=True)
def waterfill(problem: QuadraticProblem) -> AllocationResult:
    r"""Exact water-filling for the quadratic model (any kurtosis, batched).

    .. math::

        C_i = \Pi_{[0,1]}\Big(\frac{(K_i-1) v_i/\mu - 2}{K_i - 3}\Big),
        \qquad \sum_i C_i = d, \qquad T = 2\mu^2

    Parameters
    ----------
    problem : QuadraticProblem
        Unbatched or batched problem.

    Returns
    -------
    AllocationResult
        ``nit`` counts the breakpoints visited.

    References
    ----------
    .. [1] Scherlis et al., arXiv:2210.01892 (equal marginal benefit).

    Examples
    --------
    >>> from capalloc import QuadraticProblem, waterfill
    >>> res = waterfill(QuadraticProblem([1.0, 1.0, 1.0], d=2, kurtosis=5.0))
    >>> res.capacity.round(12).tolist()
    [0.666666666667, 0.666666666667, 0.666666666667]
    """
    if not isinstance(problem, QuadraticProblem):
        raise TypeError(f"problem must be a QuadraticProblem, got {type(problem).__name__}")
    v, K, d = problem.importance, problem.kurtosis, problem.d
    if problem.batched:
        if np.all(K >= 3):
            C, _, nseg = _kernels.batch_waterfill(np.ascontiguousarray(v),
                                                  np.ascontiguousarray(K), d)
            nit = int(nseg.sum())
        else:
            rows = [_solve_one(v[r], K[r], d) for r in range(v.shape[0])]
            C = np.array([c for c, _ in rows]).reshape(v.shape)
            nit = sum(s for _, s in rows)
    else:
        C, nit = _solve_one(np.ascontiguousarray(v), np.ascontiguousarray(K), d)
    return make_result(problem, C, smallest_threshold(problem, C), method="waterfill", nit=nit)
