r"""Exact water-filling for the quadratic model (method ``"waterfill"``).

For features with :math:`K_i \ge 3` the optimum is :math:`C_i(\mu)` of
:mod:`capalloc.allocation.methods.kernels` with :math:`\sum_i C_i(\mu) = d`; the segment of the
piecewise form :math:`m + A/\mu - B` holding ``d`` is located among the
breakpoints and its linear equation in :math:`1/\mu` solved exactly. For
:math:`K_i \le 3` the objective is concave and the top-``d`` features by
:math:`\ell_i(0) - \ell_i(1) = (K_i - 1) v_i^2` are monosemantic. Mixed
curvature is solved exactly by :mod:`capalloc.allocation.methods.mixed`.

Large problems first solve a strided sample (itself the same way) to bracket
:math:`\mu`, then one pass over all features verifies the bracket and keeps only
the features with a breakpoint inside it; a few such rounds leave a small set to
sort. A last pass writes the capacities with the loss, threshold and KKT
certificate (:func:`capalloc.allocation.methods.kernels.finish`), so a solve reads the importances
about twice (expected :math:`O(n)`). A bracket that fails verification is retried
wider once, then the sweep runs on what is left: the result is exact either way.

Ties: with ``K = 3`` exactly, features whose importance equals the threshold
share the remaining capacity equally (the limit :math:`K \to 3^+`); with
``K < 3`` ties are broken by lower index first.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import numpy as np

from capalloc._lib.validation import check_positive
from capalloc.allocation.methods import load_kernels
from capalloc.allocation.methods.mixed import mixed_capacities
from capalloc.allocation.problems import QuadraticProblem
from capalloc.allocation.result import (
    CERTIFY_TOL,
    AllocationResult,
    level_certificate,
    make_result,
)
from capalloc.allocation.solve import register_method

__all__ = ["waterfill"]

_SAMPLE = 1 << 13  # smallest sample used to bracket mu on large problems
_SAMPLE_FRACTION = 64  # larger problems sample one feature in this many
_SPREAD = 4.0  # standard deviations between the sampled bracket and the budget
_WIDEN = 4.0  # a bracket that fails verification is retried this much wider, once
_SMALL = 1 << 15  # live sets up to this size are swept directly
_NUMPY_MAX = 1 << 15  # unbatched problems up to this size are solved in numpy (no JIT)
_HUGE = 2.0**500  # rows whose largest importance lies outside [_TINY, _HUGE] are solved
_TINY = 2.0**-500  # rescaled (see _rescaled)


def _top_d(v: np.ndarray, K: np.ndarray | float, d: int) -> np.ndarray:
    """Concave case: the ``d`` features of largest ``(K - 1) v^2`` get capacity 1 (rows
    of a 2-D ``v`` each)."""
    gain = np.sqrt(K - 1) * v  # the square root of the gain: no overflow or underflow
    C = np.zeros_like(v)
    if d > 0:
        top = np.argsort(-gain, axis=-1, kind="stable")[..., :d]
        np.put_along_axis(C, top, 1.0, axis=-1)
    C[gain == 0] = 0.0  # zero importance, or K = 1 where the loss vanishes identically
    return C


def convex_mu(v: np.ndarray, K: np.ndarray | float, budget: float) -> tuple[float, float, int]:
    """``(mu, share, nseg)`` solving ``S(mu) = budget`` for features with ``K >= 3``.

    ``budget`` must be positive; ``mu = 0`` means it covers every feature with
    ``v > 0`` (all of them saturate). See :func:`convex_levels`.
    """
    levels, rounds = convex_levels(v, K, [budget])
    mu, share, nseg = levels[0]
    return mu, share, nseg + rounds


def convex_levels(v, K, budgets, m0=0.0, A0=0.0, B0=0.0, top=math.inf):
    """``(mu, share, nseg)`` for each of ``budgets``, and the number of narrowing rounds.

    Features above ``top`` are summarised by the aggregate ``(m0, A0, B0)`` (see
    :mod:`capalloc.allocation.methods.kernels`). Large inputs are narrowed first: each round solves a
    strided sample (recursively, the same way) for two budgets a few standard
    deviations beyond the requested ones, verifies that bracket exactly with one
    pass over the features, and keeps only those with a breakpoint inside it. A
    bracket that fails verification is retried wider once, then stops the
    narrowing: the final sweep is always exact.
    """
    lo, hi = min(budgets), max(budgets)
    rounds = 0
    while v.size > _SMALL and rounds < 4:
        narrowed = _narrow(v, K, lo, hi, m0, A0, B0, top)
        if narrowed is None:
            narrowed = _narrow(v, K, lo, hi, m0, A0, B0, top, _WIDEN)
        if narrowed is None:
            break
        if isinstance(narrowed, str):  # "saturated": every budget covers all features
            return [(0.0, math.nan, 0)] * len(budgets), rounds + 1
        v, K, m0, A0, B0, top = narrowed
        rounds += 1
    return load_kernels().sweep_sorted(v, K, budgets, m0, A0, B0, top), rounds


def _take(K, index):
    """``K[index]``, where a scalar ``K`` (shared by every feature) stays as it is."""
    return K if np.ndim(K) == 0 else K[index]


def _narrow(v, K, lo, hi, m0, A0, B0, top, widen=1.0):
    """One bracketing round (see :func:`convex_levels`) for budgets in ``[lo, hi]``: the
    live features and their aggregate, ``"saturated"`` when ``lo`` covers every
    positive feature, or ``None`` when the round cannot help."""
    stride = max(v.size // max(v.size // _SAMPLE_FRACTION, _SAMPLE), 1)
    # contiguous copies: the kernels then see the array types of the live sets, and
    # compile for fewer signatures
    vs, Ks = v[::stride].copy(), (K if np.ndim(K) == 0 else K[::stride].copy())
    f = vs.size / v.size
    # the sample stands for the live features: scale the fixed aggregate alike
    fixed = m0 + (A0 / top - B0 if math.isfinite(top) else 0.0)
    p = min(max(f * (hi - fixed) / vs.size, 0.0), 1.0)  # rough live share near the root
    spread = widen * (_SPREAD * math.sqrt(max(vs.size * p * (1 - p), 1.0)) + 2.0)
    t_hi, t_lo = f * hi + spread, f * lo - spread
    # budgets the sample cannot reach bracket down to the smallest double (t_hi) or
    # up to the top (t_lo); the others are solved, on the sample, the same way
    reach = np.count_nonzero(vs) if m0 == 0 and not math.isfinite(top) else math.inf
    want = [t for t in (t_hi, t_lo) if 0.0 < t < reach]
    levels = convex_levels(vs, Ks, want, f * m0, f * A0, f * B0, top)[0] if want else []
    mus = {t: mu for t, (mu, _, _) in zip(want, levels, strict=True)}
    mu_lo = mus.get(t_hi, 5e-324) or 5e-324
    mu_hi = min(mus.get(t_lo, top), top)
    if not mu_lo < mu_hi:
        return None
    dm, dA, dB, live, vl, npos, s_lo, s_hi = load_kernels().bracket_pass(v, K, mu_lo, mu_hi)
    if m0 == 0 and not math.isfinite(top) and npos <= lo:
        return "saturated"
    m1, A1, B1 = m0 + dm, A0 + dA, B0 + dB
    if not (m1 + A1 / mu_hi - B1 + s_hi <= lo and hi <= m1 + A1 / mu_lo - B1 + s_lo):
        return None
    return vl, _take(K, live), m1, A1, B1, mu_hi


def _rescaled(
    problem: QuadraticProblem, every_row: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """The importances, and ``None``; or, where a row's largest importance lies outside
    ``[_TINY, _HUGE]`` (its losses ``(K - 1) v^2`` would overflow or underflow), or for
    every row when ``every_row``, the rows scaled by powers of two (exact) that centre
    the exponents of their largest and smallest positive importance on 0, and those
    exponents as an ``(..., 1)`` array. The allocation is invariant under ``v -> s v`` (results are certified, and
    their threshold and loss computed, on the importances as given)."""
    v = problem.importance
    if not (every_row or problem.batched) and _TINY <= problem.vmax <= _HUGE:
        return v, None
    if v.size == 0:
        return v, None
    top = np.max(v, axis=-1, keepdims=True)
    out = (every_row | (top > _HUGE) | (top < _TINY)) & (top > 0)
    if not np.any(out):
        return v, None
    bottom = np.min(np.where(v > 0, v, np.inf), axis=-1, keepdims=True)
    # centre the row's range on 1 (in exponent), so squares of both ends stay in range
    middle = (np.frexp(top)[1] + np.frexp(np.where(out, bottom, 1.0))[1]) // 2
    shift = np.where(out, -middle, 0)
    if not np.any(shift):
        return v, None
    scaled = np.ldexp(v, shift)  # exact, and no scale factor to overflow (subnormal rows)
    # a row spanning more than the float range would lose its smallest importances: it
    # is solved as given (its certificate, on levels, still holds it to account)
    lost = np.count_nonzero(scaled, axis=-1) < np.count_nonzero(v, axis=-1)
    if np.any(lost):
        shift = np.where(lost[..., None], 0, shift)
        scaled = np.ldexp(v, shift)
    return scaled, shift


def _solve_one(
    v: np.ndarray, K: np.ndarray | float, d: int, curvature: str
) -> tuple[np.ndarray, int, tuple | None]:
    """Capacities of one (unbatched) problem, the number of segments visited, and
    ``(T, loss, kkt)`` where the convex path computed them on the way."""
    if d == 0:
        return np.zeros_like(v), 0, None
    if curvature == "convex" and d < v.size:  # d >= #(v > 0) gives mu = 0: all saturate
        mu, share, nseg = convex_mu(v, K, float(d))
        C = np.empty(v.size)
        kern = load_kernels()
        if v.size < kern.PARALLEL_MIN:
            return C, nseg, kern.finish_serial(v, K, mu, share, float(d), C)
        return C, nseg, kern.finish(v, K, mu, share, float(d), C)
    if d >= np.count_nonzero(v):
        return (v > 0).astype(float), 0, None
    if curvature == "concave":
        return _top_d(v, K, d), 0, None
    return *mixed_capacities(v, np.asarray(K), d), None  # mixed: K varies, an array


def _robust(v, v0, K, Ks, d, C, T, loss, kkt):
    """Re-solve the rows whose certificate failed with :func:`capalloc.allocation.methods.mixed.mixed_capacities`
    (exact for any curvature, per-segment sums of positive terms: no running sums) on the
    importances ``v`` (rescaled) and certify them again on ``v0`` (as given); returns the
    updated ``(C, T, loss, kkt)``."""
    certificate = load_kernels().certificate
    if C.ndim == 1:
        Cr = mixed_capacities(v, np.broadcast_to(Ks, v.shape).astype(float), d)[0]
        return Cr, *certificate(v0, K, Cr, d)
    T, loss, kkt = (np.array(x, dtype=float) for x in (T, loss, kkt))
    Kb, Ksb = np.broadcast_to(K, v.shape), np.broadcast_to(Ks, v.shape)
    for r in np.flatnonzero(kkt > CERTIFY_TOL):
        C[r] = mixed_capacities(v[r], Ksb[r].astype(float), d)[0]
        T[r], loss[r], kkt[r] = certificate(v0[r], Kb[r], C[r], d)
    return C, T, loss, kkt


_ENGINES = ("auto", "numpy", "compiled")
_JIT_PAYS = 1.0  # seconds of numpy solves in one process after which "auto" compiles
_SPENT = [0.0]  # seconds spent in numpy solves so far


def _numpy_pays(problem: QuadraticProblem) -> bool:
    """The ``"auto"`` rule: numpy while compiling would cost more than it saves."""
    if problem.batched or problem.n > _NUMPY_MAX or _SPENT[0] > _JIT_PAYS:
        return False
    return "capalloc.allocation.methods.kernels" not in sys.modules


def _small(problem: QuadraticProblem, fallback: bool) -> AllocationResult | None:
    """An unbatched problem in numpy alone (sorting-based, exact for any curvature:
    :func:`~capalloc.allocation.methods.mixed.mixed_capacities`), certified on levels.
    Not certified: ``None`` where the compiled path may take over (``fallback``), else
    the result with its status."""
    d = problem.d
    v, _ = _rescaled(problem, every_row=True)
    K = np.broadcast_to(problem.kurtosis, v.shape)
    if d == 0:
        C, nit = np.zeros(v.shape), 0
    elif problem.curvature == "concave" and d < np.count_nonzero(v):
        C, nit = _top_d(v, K, d), 0  # concave (K = 3 everywhere counts as convex: ties share)
    else:
        C, nit = mixed_capacities(v, K, d)
    T, loss, kkt = level_certificate(problem, C)
    if fallback and not kkt <= CERTIFY_TOL:
        return None
    return make_result(problem, C, T, method="waterfill", nit=nit, loss=loss, kkt=kkt, copy=False)


@register_method("waterfill", problems=(QuadraticProblem,), exact=True, batched=True)
def waterfill(
    problem: QuadraticProblem, *, engine: str = "auto", threads: int | None = None
) -> AllocationResult:
    r"""Exact water-filling for the quadratic model (any kurtosis, batched).

    .. math::

        C_i = \Pi_{[0,1]}\Big(\frac{(K_i-1) v_i/\mu - 2}{K_i - 3}\Big),
        \qquad \sum_i C_i = d, \qquad T = 2\mu^2

    Parameters
    ----------
    problem : QuadraticProblem
        Unbatched or batched problem.
    engine : {"auto", "numpy", "compiled"}, default "auto"
        ``"numpy"``: sorting-based, for unbatched problems (no JIT compilation; about
        3 ms at ``n = 10^3``, 30 ms at ``10^4``). ``"compiled"``: the numba kernels
        (compiled on first use, then 10-100 times faster). ``"auto"``: numpy for
        unbatched problems of up to 32 768 features until the kernels are loaded in
        this process or numpy solves have taken a second in total, compiled
        otherwise (and wherever numpy's answer fails its certificate). Both are exact
        and certified; they may differ in the last bits.
    threads : int, optional
        Threads of the compiled kernels' parallel passes (problems of 2**18 features
        or more, and batches). Default: the cores no other process is running on
        at the call (at least one), so that an idle machine uses every core and a
        busy neighbour does not stall every pass at its barrier
        (``NUMBA_NUM_THREADS``, when set, is the default instead).

    Returns
    -------
    AllocationResult
        ``nit`` counts the breakpoints visited (candidates examined, in numpy).

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
    if engine not in _ENGINES:
        raise ValueError(f"engine must be one of {list(_ENGINES)}, got {engine!r}")
    if engine == "numpy" and problem.batched:
        raise ValueError(f"engine='numpy' solves unbatched problems, got {problem!r}")
    if engine == "numpy" or (engine == "auto" and _numpy_pays(problem)):
        start = time.perf_counter()
        result = _small(problem, fallback=engine == "auto")
        _SPENT[0] += time.perf_counter() - start
        if result is not None:  # None: not certified, the compiled path takes over
            return result
    if threads is not None:
        threads = check_positive(threads, "threads", integer=True)
    kern = load_kernels()
    with kern.threads(threads, problem.importance.size):
        return _compiled(problem, kern)


def _sorted_rows(V: np.ndarray, K: Any) -> np.ndarray:
    """The rows of a batch sorted by numpy (vectorised, several times faster than
    numba's sort) where one kurtosis is shared, so that the sweeps need not sort; an
    empty ``(0, n)`` array otherwise."""
    if np.ndim(K) == 0 and V.shape[0] > 1:
        return np.sort(V, axis=1)
    return np.empty((0, V.shape[1]))


def _compiled(problem: QuadraticProblem, kern: Any) -> AllocationResult:
    """:func:`waterfill` by the numba kernels (module ``kern``)."""
    K, d = problem.kurtosis, problem.d
    # A band (v, (K-1)v/2) narrower than ~1e-12 relative is a few ulps of mu wide and
    # cannot be resolved: such features are solved as K = 3 (a step shared at mu = v);
    # the certificate then uses the true K (its residual is of order |K - 3|).
    Ks = kern.compact(K)  # a float, or the stored values: checks stay O(stored)
    lo, hi = problem.krange  # from the validation: no pass over K unless K comes near 3
    snapped = False
    if lo < 3 + 1e-12 and hi > 3 - 1e-12:
        near3 = np.abs(np.asarray(Ks) - 3) < 1e-12
        snapped = bool(near3.any())
        if snapped:
            Ks = np.where(near3, 3.0, Ks)
            Ks = float(Ks) if Ks.ndim == 0 else Ks
            lo, hi = float(np.min(Ks)), float(np.max(Ks))
    curvature = "convex" if not lo < 3 else "concave" if hi <= 3 else "mixed"
    # the fast convex path is rescaled only where it must be (it reads v twice at most)
    v, shift = _rescaled(problem, every_row=curvature == "mixed")
    cert = None
    if problem.batched:
        v = np.ascontiguousarray(v)  # rows are read one by one
        if curvature == "convex":
            C = np.empty(v.shape)
            T, loss, kkt, _, nseg = kern.batch_waterfill(v, Ks, d, C, _sorted_rows(v, Ks))
            cert, nit = (T, loss, kkt), int(nseg.sum())
        else:  # rows by their own curvature: the convex ones batched, the others one by one
            Kr = np.broadcast_to(np.asarray(Ks), v.shape)
            convex = np.all(Kr >= 3, axis=1)
            C, nit = np.empty(v.shape), 0
            rows = np.flatnonzero(convex)
            if rows.size:
                Cc, Vc, Kc = (
                    np.empty((rows.size, v.shape[1])),
                    np.ascontiguousarray(v[rows]),
                    kern.compact(Kr[rows]),
                )
                nseg = kern.batch_waterfill(Vc, Kc, d, Cc, _sorted_rows(Vc, Kc))[-1]
                C[rows], nit = Cc, int(nseg.sum())
            concave = np.all(Kr <= 3, axis=1) & ~convex
            C[concave] = _top_d(v[concave], Kr[concave], d)
            for r in np.flatnonzero(~convex & ~concave):
                C[r], seg, _ = _solve_one(v[r], np.ascontiguousarray(Kr[r]), d, "mixed")
                nit += seg
    else:
        C, nit, cert = _solve_one(v, Ks, d, curvature)
    # certified on the given importances: levels h range like v, so nothing overflows
    v0 = problem.importance
    if cert is None or snapped or shift is not None:
        cert = kern.certificate(v0, K, C, d)
    T, loss, kkt = cert
    if np.max(kkt, initial=0.0) > CERTIFY_TOL:  # not certified: the robust path, certified
        C, T, loss, kkt = _robust(v, v0, K, Ks, d, C, T, loss, kkt)
    return make_result(problem, C, T, method="waterfill", nit=nit, loss=loss, kkt=kkt, copy=False)
