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

import numpy as np

from . import _kernels
from ._problems import QuadraticProblem
from ._result import AllocationResult, make_result
from ._solve import register_method

__all__ = ["waterfill"]

_SAMPLE = 1 << 14  # sample size used to bracket mu on large problems
_SMALL = 1 << 15  # live sets up to this size are swept directly


def _top_d(v: np.ndarray, K: np.ndarray, d: int) -> np.ndarray:
    """Concave case: the ``d`` features of largest ``(K - 1) v^2`` get capacity 1."""
    gain = (K - 1) * v * v
    C = np.zeros_like(v)
    if d > 0:
        order = np.argsort(-gain, kind="stable")[:d]
        C[order] = 1.0
    C[gain == 0] = 0.0  # zero importance, or K = 1 where the loss vanishes identically
    return C


def convex_mu(v: np.ndarray, K: np.ndarray, budget: float) -> tuple[float, float, int]:
    """``(mu, share, nseg)`` solving ``S(mu) = budget`` for features with ``K >= 3``.

    ``budget`` must lie strictly between 0 and the number of features with
    ``v > 0``. Large inputs are narrowed by sampled brackets first: each round
    solves a strided sample for two budgets a few standard deviations apart,
    verifies the bracket exactly, and keeps only the features with a
    breakpoint inside it; a bracket that fails verification stops the
    narrowing, so the final sweep is always exact.
    """
    m0 = A0 = B0 = 0.0
    top = math.inf
    rounds = 0
    while v.size > _SMALL and rounds < 4:
        narrowed = _narrow(v, K, budget, m0, A0, B0, top)
        if narrowed is None:
            break
        v, K, m0, A0, B0, top = narrowed
        rounds += 1
    mu, share, nseg = _kernels.sweep(v, K, float(budget), m0, A0, B0, top)
    return mu, share, nseg + rounds


def _narrow(v, K, budget, m0, A0, B0, top):
    """One bracketing round (see :func:`convex_mu`); ``None`` when it cannot help."""
    stride = max(v.size // _SAMPLE, 1)
    vs, Ks = v[::stride], K[::stride]
    f = vs.size / v.size
    target = f * budget
    # the sample stands for the live features: scale the fixed aggregate alike
    fixed = m0 + (A0 / top - B0 if math.isfinite(top) else 0.0)
    expect = target - f * fixed  # rough live capacity in the sample near the root
    p = min(max(expect / vs.size, 0.0), 1.0)
    spread = 5.0 * math.sqrt(max(vs.size * p * (1 - p), 1.0)) + 2.0
    mu_lo = _kernels.sweep(vs, Ks, target + spread, f * m0, f * A0, f * B0, top)[0]
    if mu_lo <= 0:  # the sample never reaches that budget: use the smallest breakpoint
        positive = v[v > 0]
        mu_lo = float(positive.min()) if positive.size else 0.0
    if target - spread > 0:
        mu_hi = min(_kernels.sweep(vs, Ks, target - spread, f * m0, f * A0, f * B0, top)[0], top)
    else:
        mu_hi = top
    if not (0.0 < mu_lo < mu_hi):
        return None
    dm, dA, dB, live = _kernels.bracket_pass(v, K, mu_lo, mu_hi)
    vl, Kl = v[live], K[live]
    m1, A1, B1 = m0 + dm, A0 + dA, B0 + dB
    if not (_kernels.total_capacity(vl, Kl, mu_hi, m1, A1, B1) <= budget
            <= _kernels.total_capacity(vl, Kl, mu_lo, m1, A1, B1)):
        return None
    return vl, Kl, m1, A1, B1, mu_hi


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
        return _kernels.polish(C, K, float(d)), nseg
    if np.all(K <= 3):
        return _top_d(v, K, d), 0
    from ._mixed import mixed_capacities

    return mixed_capacities(v, K, d)


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
    # A band (v, (K-1)v/2) narrower than ~1e-12 relative is a few ulps of mu wide and
    # cannot be resolved: such features are solved as K = 3 (a step shared at mu = v);
    # the certificate below uses the true K (its residual is of order |K - 3|).
    Ks = np.where(np.abs(K - 3) < 1e-12, 3.0, K) if np.any(np.abs(K - 3) < 1e-12) else K
    if problem.batched:
        if np.all(Ks >= 3):
            C, _, nseg = _kernels.batch_waterfill(np.ascontiguousarray(v),
                                                  np.ascontiguousarray(Ks), d)
            nit = int(nseg.sum())
        else:
            rows = [_solve_one(v[r], Ks[r], d) for r in range(v.shape[0])]
            C = np.array([c for c, _ in rows]).reshape(v.shape)
            nit = sum(s for _, s in rows)
        T, norms, loss, kkt = _kernels.batch_certificate(v, K, C, float(d))
    else:
        C, nit = _solve_one(v, Ks, d)
        T = _kernels.smallest_threshold(v, K, C)
        norms = np.empty_like(C)
        loss, kkt = _kernels.quadratic_certificate(v, K, C, T, float(d), norms)
    return make_result(problem, C, T, method="waterfill", nit=nit, loss=loss, norms=norms,
                       kkt=kkt)
