r"""Helpers for testing allocation solvers: a certificate checker, random instances,
an independent brute-force reference and a library of reference problems.

Every solver method must pass :func:`check_kkt` on the problems of
:data:`REFERENCE_PROBLEMS` and on random instances from
:func:`random_quadratic_problem`; small problems of any curvature can be compared
against :func:`brute_force`, which shares no code with the solvers.

Only numpy is imported with this module (scipy is loaded by :func:`brute_force`).

Examples
--------
>>> import numpy as np
>>> import capalloc
>>> from capalloc.testing import check_kkt, random_quadratic_problem
>>> problem = random_quadratic_problem(np.random.default_rng(0), n=6, d=2, kurtosis="mixed")
>>> check_kkt(problem, capalloc.solve(problem))
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import numpy as np

from capalloc._capacity import LABELS, classify
from capalloc.allocation.problems import QuadraticProblem, SeparableProblem
from capalloc.allocation.result import kkt_residual

__all__ = [
    "check_kkt",
    "random_importance",
    "random_kurtosis",
    "random_quadratic_problem",
    "random_hard_problem",
    "as_separable",
    "random_separable_problem",
    "brute_force",
    "BruteForceResult",
    "bisection_reference",
    "scaled_loss",
    "relative_excess_loss",
    "ReferenceProblem",
    "REFERENCE_PROBLEMS",
]

KURTOSIS_KINDS = ("convex", "concave", "mixed", "any")


# ---------------------------------------------------------------------------
# Certificate checker
# ---------------------------------------------------------------------------


def _rows(x: Any) -> str:
    """Short text for the values of a (possibly batched) check."""
    return np.array2string(np.asarray(x), threshold=8, precision=4)


def check_kkt(
    problem: QuadraticProblem | SeparableProblem, result: Any, rtol: float = 1e-9
) -> None:
    r"""Assert that ``result`` is a certified optimum of ``problem``.

    Checks, row by row for batched problems:

    * shapes, finiteness, :math:`T \ge 0`;
    * feasibility: :math:`-r \le C_i \le 1 + r` and :math:`\sum_i C_i \le d + r\max(d, 1)`;
    * the relative KKT residual (:func:`capalloc.kkt_residual`) is at most ``rtol``,
      recomputed here and as reported by the result;
    * the budget is used up, :math:`\sum_i C_i = \min(d, \#\{v_i > 0\})`, when :math:`T > 0`;
    * ``result.loss`` equals :math:`\sum_i \ell_i(C_i)` and (quadratic model) ``result.norms``
      equals the optimal norms at ``C``;
    * ``result.labels`` are consistent with the capacities.

    Parameters
    ----------
    problem : QuadraticProblem or SeparableProblem
    result : AllocationResult
    rtol : float, default 1e-9
        Tolerance in units of capacity (the residual is scale free).

    Raises
    ------
    AssertionError
        Listing every failed check, with the problem and method.

    Examples
    --------
    >>> import capalloc
    >>> from capalloc.testing import check_kkt
    >>> p = capalloc.QuadraticProblem([3.0, 2.0, 1.0], d=1, kurtosis=10.0)
    >>> check_kkt(p, capalloc.solve(p))
    """
    quadratic = isinstance(problem, QuadraticProblem)
    shape = problem.importance.shape if isinstance(problem, QuadraticProblem) else (problem.n,)
    errors: list[str] = []
    C = np.asarray(result.capacity, dtype=float)
    T = np.asarray(result.threshold, dtype=float)

    def fail(message: str) -> None:
        errors.append(message)

    if C.shape != shape:
        fail(f"capacity has shape {C.shape}, expected {shape}")
    elif T.shape != shape[:-1]:
        fail(f"threshold has shape {T.shape}, expected {shape[:-1]}")
    elif not (np.all(np.isfinite(C)) and np.all(np.isfinite(T))):
        fail(f"non-finite capacity or threshold: C={_rows(C)}, T={_rows(T)}")
    else:
        d = problem.d
        total = C.sum(axis=-1)
        if np.any(T < 0):
            fail(f"negative threshold {_rows(T)}")
        if C.size and (C.min() < -rtol or C.max() > 1 + rtol):
            fail(f"capacities outside [0, 1]: min {C.min()!r}, max {C.max()!r}")
        if np.any(total > d + rtol * max(d, 1)):
            fail(f"budget exceeded: sum(C) = {_rows(total)} > d = {d}")
        res = np.asarray(kkt_residual(problem, C, T))
        if np.any(res > rtol):
            fail(f"KKT residual {_rows(res)} > rtol = {rtol:g}")
        reported = np.asarray(result.kkt_residual, dtype=float)
        if reported.shape != res.shape or np.any(~(reported <= rtol)):
            fail(
                f"reported kkt_residual {_rows(reported)} > rtol = {rtol:g} (recomputed "
                f"{_rows(res)})"
            )
        npos = (
            np.count_nonzero(problem.importance > 0, axis=-1)
            if isinstance(problem, QuadraticProblem)
            else np.full(shape[:-1], problem.n)
        )
        target = np.minimum(d, npos)
        short = (T > 0) & (np.abs(total - target) > rtol * np.maximum(target, 1))
        if np.any(short):
            fail(
                f"threshold > 0 but sum(C) - min(d, #positive) = {_rows(total - target)} "
                f"(sum(C) = {_rows(total)}, budget used up at an optimum)"
            )
        loss = np.sum(problem.loss(C), axis=-1)
        scale = np.sum(problem.loss(np.zeros(shape)), axis=-1)
        got = np.asarray(result.loss, dtype=float)
        if got.shape != loss.shape or np.any(~(np.abs(got - loss) <= rtol * scale)):
            fail(f"loss {_rows(got)} != sum of per-feature losses {_rows(loss)}")
        if quadratic:
            norms = problem.optimal_norms(C)
            if np.shape(result.norms) != shape or not np.allclose(
                result.norms, norms, rtol=1e-12, atol=0
            ):
                fail("norms differ from problem.optimal_norms(capacity)")
        labels = np.asarray(result.labels)
        if labels.shape != shape or not set(labels.ravel().tolist()) <= set(LABELS):
            fail(f"labels of shape {labels.shape} with values {sorted(set(labels.ravel()))}")
        else:
            tol = float(getattr(result, "label_tol", 1e-9))
            if np.any(labels != classify(C, atol=tol)):
                fail(f"labels inconsistent with capacities at atol={tol:g}")
    if errors:
        method = getattr(result, "method", "?")
        raise AssertionError(
            f"check_kkt failed for {problem!r} (method {method!r}):\n  - " + "\n  - ".join(errors)
        )


# ---------------------------------------------------------------------------
# Random instances
# ---------------------------------------------------------------------------


def _shape(n: int, batched: Any, rng: np.random.Generator) -> tuple[int, ...]:
    if batched is None or batched is False:
        return (n,)
    m = int(rng.integers(2, 6)) if batched is True else int(batched)
    return (m, n)


def random_importance(
    rng: np.random.Generator,
    shape: int | tuple[int, ...],
    *,
    decades: float = 2.0,
    ties: float = 0.0,
    zeros: float = 0.0,
) -> np.ndarray:
    """Log-uniform importances in ``[10**-decades, 10**decades]``.

    Parameters
    ----------
    rng : numpy.random.Generator
    shape : int or tuple of int
    decades : float, default 2
        Half-width of the range in decades.
    ties : float, default 0
        Probability that an entry copies another entry of its row.
    zeros : float, default 0
        Probability that an entry is exactly zero.

    Returns
    -------
    v : ndarray of shape ``shape``
    """
    v = 10.0 ** rng.uniform(-decades, decades, shape)
    if ties > 0 and v.shape[-1] > 1:
        copy = rng.random(v.shape) < ties
        src = rng.integers(0, v.shape[-1], v.shape)
        v = np.where(copy, np.take_along_axis(v, src, axis=-1), v)
    if zeros > 0:
        v = np.where(rng.random(v.shape) < zeros, 0.0, v)
    return v


def random_kurtosis(
    rng: np.random.Generator,
    shape: int | tuple[int, ...],
    kind: str = "any",
    *,
    linear: float = 0.0,
) -> np.ndarray:
    """Random kurtosis: ``"convex"`` (``K >= 3``), ``"concave"`` (``1 <= K <= 3``),
    ``"mixed"`` (both sides in every row, when a row has two or more features) or
    ``"any"`` (one of the three, or one shared value).

    ``linear`` is the probability of an entry being exactly 3.
    """
    if kind not in KURTOSIS_KINDS:
        raise ValueError(f"kind must be one of {KURTOSIS_KINDS}, got {kind!r}")
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if kind == "any":
        kind = str(rng.choice(["convex", "concave", "mixed", "shared"]))
        if kind == "shared":
            K = rng.choice([1.0, 1.8, 2.5, 3.0, 3.5, 5.0, 9.0, 30.0])
            return np.full(shape, float(K))
    convex = 3.0 + 10.0 ** rng.uniform(-1.5, 1.5, shape)
    concave = 1.0 + 2.0 * rng.uniform(0.02, 0.98, shape)
    if kind == "convex":
        K = convex
    elif kind == "concave":
        K = concave
    else:
        side = rng.random(shape) < 0.5
        if shape[-1] >= 2:  # force both sides in every row
            side[..., 0] = True
            side[..., 1] = False
            side = np.take_along_axis(
                side, rng.permuted(np.broadcast_to(np.arange(shape[-1]), shape), axis=-1), axis=-1
            )
        K = np.where(side, convex, concave)
    if linear > 0:
        K = np.where(rng.random(shape) < linear, 3.0, K)
    return K


def random_quadratic_problem(
    rng: np.random.Generator,
    n: int | None = None,
    d: int | None = None,
    kurtosis: str = "any",
    batched: bool | int | None = None,
    *,
    decades: float = 2.0,
    ties: float = 0.0,
    zeros: float = 0.0,
    linear: float = 0.0,
) -> QuadraticProblem:
    """A random :class:`~capalloc.QuadraticProblem`.

    Parameters
    ----------
    rng : numpy.random.Generator
    n : int, optional
        Number of features (default: 2 to 8).
    d : int, optional
        Budget (default: 0 to ``n``, mostly strictly between).
    kurtosis : {"convex", "concave", "mixed", "any"}
        See :func:`random_kurtosis`.
    batched : bool or int, optional
        ``True`` for a batch of 2 to 5 rows, an int for that many rows.
    decades, ties, zeros, linear : float
        Passed to :func:`random_importance` and :func:`random_kurtosis`.

    Returns
    -------
    QuadraticProblem

    Examples
    --------
    >>> import numpy as np
    >>> from capalloc.testing import random_quadratic_problem
    >>> random_quadratic_problem(np.random.default_rng(1), n=5, d=2, kurtosis="convex").curvature
    'convex'
    """
    if n is None:
        n = int(rng.integers(2, 9))
    if d is None:
        d = int(rng.integers(1, n)) if n > 1 and rng.random() < 0.8 else int(rng.integers(0, n + 2))
    shape = _shape(n, batched, rng)
    v = random_importance(rng, shape, decades=decades, ties=ties, zeros=zeros)
    K = random_kurtosis(rng, shape, kurtosis, linear=linear)
    return QuadraticProblem(v, d, K)


#: Profiles of :func:`random_hard_problem`.
HARD_PROFILES = ("loguniform", "geometric", "powerlaw", "decades", "near3", "batched")


def random_hard_problem(
    rng: np.random.Generator, profile: str | None = None, *, max_n: int = 10_000
) -> QuadraticProblem:
    """A convex or concave quadratic problem of the kinds that break water-filling sums.

    Profiles: ``"loguniform"`` (importances log-uniform over up to 600 decades, anywhere
    in 1e-300..1e300), ``"geometric"`` and ``"powerlaw"`` (``r**i`` and ``i**-a`` over
    10**3..``max_n`` features, spanning 30 to 300 decades), ``"decades"`` (importances
    spaced by whole decades, kurtosis up to 1e6), ``"near3"`` (kurtosis within 1e-15 to
    1e-6 of 3, either side), ``"batched"`` (rows of a batch, each its own scale).
    """
    profile = profile or str(rng.choice(HARD_PROFILES))
    if profile not in HARD_PROFILES:
        raise ValueError(f"profile must be one of {HARD_PROFILES}, got {profile!r}")
    concave = rng.random() < 0.15
    K: Any = (
        1 + 2 * rng.random()
        if concave
        else 3 + 10.0 ** rng.uniform(-3, 6)
        if rng.random() < 0.6
        else 3 + 10.0 ** rng.uniform(-3, 6, 1)
    )
    if profile == "loguniform":
        n = int(rng.integers(2, 2000))
        lo = rng.uniform(-300, 300)
        hi = min(300.0, lo + rng.uniform(0, 600))
        v = 10.0 ** rng.uniform(lo, hi, n)
    elif profile in ("geometric", "powerlaw"):
        n = int(rng.integers(1000, max(max_n, 1001) + 1))
        decades = rng.uniform(30, 300)
        i = np.arange(1, n + 1, dtype=float)
        v = (
            10.0 ** (-decades * (i - 1) / (n - 1))
            if profile == "geometric"
            else i ** -(decades / np.log10(n))
        )
        v = v * 10.0 ** rng.uniform(-300 + decades, 300) / v.max()
    elif profile == "decades":
        n = int(rng.integers(2, 300))
        v = 10.0 ** (rng.integers(-300, 300, n).astype(float))
        K = 3 + 10.0 ** rng.uniform(-3, 6, n) if not concave else K
    elif profile == "near3":
        n = int(rng.integers(2, 500))
        v = 10.0 ** rng.uniform(-5, 5, n)
        side = 1.0 if not concave else -1.0
        K = 3 + side * 10.0 ** rng.uniform(-15, -6, n)
        if rng.random() < 0.5:
            K = float(K[0])
    else:
        m, n = int(rng.integers(2, 50)), int(rng.integers(2, 200))
        v = 10.0 ** (rng.uniform(-20, 20, (m, n)) + rng.uniform(-280, 280, (m, 1)))
    if np.ndim(K) == 1 and K.size != v.shape[-1]:
        K = np.resize(K, v.shape[-1])
    rng.shuffle(v, axis=-1)
    d = int(rng.integers(1, max(v.shape[-1], 2)))
    return QuadraticProblem(v, d, K)


def as_separable(problem: QuadraticProblem) -> SeparableProblem:
    """The same (unbatched) quadratic problem as a :class:`~capalloc.SeparableProblem`,
    for checking general-purpose methods against quadratic-model ones."""
    if problem.batched:
        raise ValueError("as_separable needs an unbatched problem")
    K = problem.kurtosis
    curvature = np.where(K > 3, "convex", np.where(K < 3, "concave", "linear"))
    return SeparableProblem(
        problem.loss,
        problem.marginal_benefit,
        n=problem.n,
        d=problem.d,
        curvature=curvature,
        norms=problem.optimal_norms,
    )


def random_separable_problem(
    rng: np.random.Generator, n: int | None = None, d: int | None = None, kurtosis: str = "convex"
) -> SeparableProblem:
    """A random quadratic-model problem wrapped by :func:`as_separable`."""
    return as_separable(random_quadratic_problem(rng, n, d, kurtosis))


# ---------------------------------------------------------------------------
# Brute force
# ---------------------------------------------------------------------------


class BruteForceResult(NamedTuple):
    """Optimum found by :func:`brute_force`."""

    capacity: np.ndarray
    loss: Any


def _convex_part(
    v: np.ndarray, K: np.ndarray, budgets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact optimum of the strictly convex features (``K > 3``) for each budget.

    Direct approach, shared with no solver: the breakpoints of
    :math:`S(\\mu) = \\sum_i \\Pi_{[0,1]}(((K_i-1)v_i/\\mu - 2)/(K_i-3))` are listed,
    :math:`S` is evaluated at all of them, and on the interval that brackets the
    budget the active set gives :math:`\\mu` in closed form.

    Returns ``(values, capacities)`` of shapes ``(b,)`` and ``(b, len(v))``.
    """
    budgets = np.asarray(budgets, dtype=float)
    nb = budgets.size
    if v.size == 0:
        return np.zeros(nb), np.zeros((nb, 0))
    a = (K - 1) * v / (K - 3)
    b = 2 / (K - 3)

    def caps(mu: np.ndarray) -> np.ndarray:
        return np.clip(a / mu[..., None] - b, 0.0, 1.0)

    bp = np.unique(np.concatenate([v, (K - 1) * v / 2]))
    S = caps(bp).sum(axis=-1)  # non-increasing in mu
    i = np.clip(np.searchsorted(-S, -budgets, side="right"), 1, bp.size - 1)
    lo, hi = bp[i - 1], bp[i]
    raw = a / np.sqrt(lo * hi)[:, None] - b
    poly = (raw > 0) & (raw < 1)
    A = np.sum(np.where(poly, a, 0.0), axis=-1)
    Bc = np.sum(np.where(poly, b, 0.0), axis=-1)
    m = np.sum(raw >= 1, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu = np.where(A > 0, A / (budgets - m + Bc), np.sqrt(lo * hi))
    # numpy accepts arrays for nan/posinf; its stubs only allow floats
    mu = np.clip(np.nan_to_num(mu, nan=hi, posinf=hi), lo, hi)  # type: ignore[call-overload]
    C = caps(mu)
    C = np.where(budgets[:, None] <= 0, 0.0, np.where(budgets[:, None] >= v.size, 1.0, C))
    loss = np.sum(2 * (K - 1) * v * v * (1 - C) / (2 + (K - 3) * C), axis=-1)
    return loss, C


def _brute_one(v: np.ndarray, K: np.ndarray, d: int, grid: int) -> tuple[np.ndarray, float]:
    from scipy.optimize import minimize_scalar

    n = v.size
    C = np.zeros(n)
    pos = v > 0
    if d >= np.count_nonzero(pos):
        C[pos] = 1.0
        return C, 0.0
    M = np.flatnonzero(pos & (K > 3))  # strictly convex: solved exactly for any budget
    N = np.flatnonzero(pos & (K <= 3))  # linear or concave: at most one fractional
    vM, KM = v[M], K[M]
    gain = (K[N] - 1) * v[N] ** 2  # loss at capacity 0 (loss at 1 is 0)

    def ell(j: int | np.integer, t: Any) -> Any:
        return 2 * (K[j] - 1) * v[j] ** 2 * (1 - t) / (2 + (K[j] - 3) * t)

    # phi[j][B] = min over t in [0, min(1, B)] of ell_j(t) + G(B - t), for every budget B
    frac: dict[tuple[int, int], tuple[float, float]] = {}
    for jj, j in enumerate(N):
        if K[j] == 1:
            continue  # zero loss: never worth a fraction of a dimension
        for B in range(1, d + 1):
            ts = np.linspace(0.0, 1.0, grid)
            vals = ell(j, ts) + _convex_part(vM, KM, B - ts)[0]
            cands = [(float(vals[i]), float(ts[i])) for i in (0, grid - 1)]
            local = np.flatnonzero((vals[1:-1] <= vals[:-2]) & (vals[1:-1] <= vals[2:])) + 1
            for i in local:
                out = minimize_scalar(
                    lambda t, j=j, B=B: float(
                        ell(j, t) + _convex_part(vM, KM, np.asarray([B - t]))[0][0]
                    ),
                    bounds=(ts[i - 1], ts[i + 1]),
                    method="bounded",
                    options={"xatol": 1e-13},
                )
                cands.append((float(out.fun), float(out.x)))
                cands.append((float(vals[i]), float(ts[i])))
            frac[jj, B] = min(cands)

    best: tuple[float, tuple[int, ...], int, float] = (np.inf, (), -1, 0.0)
    for size in range(0, min(d, N.size) + 1):
        for U in itertools.combinations(range(N.size), size):
            B = d - size
            rest = [jj for jj in range(N.size) if jj not in U]
            base = float(np.sum(gain[rest]))
            value = base + float(_convex_part(vM, KM, np.asarray([B]))[0][0])
            if value < best[0]:
                best = (value, U, -1, 0.0)
            for jj in rest:
                if (jj, B) in frac:
                    f, t = frac[jj, B]
                    value = base - float(gain[jj]) + f
                    if value < best[0]:
                        best = (value, U, jj, t)
    _, U, jj, t = best
    C[N[list(U)]] = 1.0
    rem: float = d - len(U)
    if jj >= 0:
        C[N[jj]] = t
        rem -= t
    C[M] = _convex_part(vM, KM, np.asarray([rem]))[1][0]
    loss = float(np.sum(2 * (K - 1) * v * v * (1 - C) / (2 + (K - 3) * C)))
    return C, loss


def brute_force(problem: QuadraticProblem, *, grid: int = 257) -> BruteForceResult:
    r"""Exact optimum of a small quadratic-model problem by exhaustive search.

    Independent of the package's solvers. Features with :math:`K_i \le 3`
    (linear or concave) are enumerated at 0 or 1 with at most one of them
    fractional (moving capacity between two of them changes a concave function,
    so an optimum with at most one fraction exists). For each choice the strictly
    convex features take the rest of the budget, solved exactly by listing the
    breakpoints of their water-filling; a fractional feature's share ``t`` is
    found by a grid of ``grid`` points refined with
    :func:`scipy.optimize.minimize_scalar` around every local minimum.

    Parameters
    ----------
    problem : QuadraticProblem
        Unbatched or batched; cost grows like :math:`2^{n}` (meant for ``n <= 8``).
    grid : int, default 257
        Grid points for the fractional share.

    Returns
    -------
    BruteForceResult
        ``(capacity, loss)``, batched like the problem.

    Examples
    --------
    >>> from capalloc import QuadraticProblem
    >>> from capalloc.testing import brute_force
    >>> C, loss = brute_force(QuadraticProblem([1.0, 0.6], d=1, kurtosis=[2.5, 5.0]))
    >>> C.round(9).tolist(), round(loss, 12)
    ([0.666666667, 0.333333333], 1.32)
    """
    if not isinstance(problem, QuadraticProblem):
        raise TypeError(f"brute_force needs a QuadraticProblem, got {type(problem).__name__}")
    v = np.atleast_2d(problem.importance)
    K = np.atleast_2d(problem.kurtosis)
    rows = [_brute_one(v[r], K[r], problem.d, grid) for r in range(v.shape[0])]
    C = np.array([c for c, _ in rows]).reshape(problem.importance.shape)
    loss = np.array([f for _, f in rows])
    return BruteForceResult(C, loss if problem.batched else float(loss[0]))


# ---------------------------------------------------------------------------
# Bisection oracle (any size, K >= 3 or K <= 3) and losses over the whole float range
# ---------------------------------------------------------------------------


def _oracle_capacity(v: np.ndarray, K: np.ndarray, mu: float) -> np.ndarray:
    """Optimal response to water level ``mu`` in the form ``x + 2 (x - 1)/(K - 3)``,
    ``x = v / mu`` (no cancellation near ``K = 3``; a step ``x > 1`` at ``K = 3``)."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        x = v / mu
        c = np.where(K == 3, (x > 1).astype(float), x + 2 * (x - 1) / (K - 3))
    return np.where(v > 0, np.clip(np.nan_to_num(c, nan=1.0), 0.0, 1.0), 0.0)


def _oracle_row(v: np.ndarray, K: np.ndarray, d: int) -> np.ndarray:
    import math

    if np.all(K <= 3) and np.any(K < 3):  # concave (or linear): the top d by loss gain
        with np.errstate(divide="ignore"):  # K = 1: no gain at all
            gain = np.where(v > 0, 2 * np.log(np.where(v > 0, v, 1.0)) + np.log(K - 1), -np.inf)
        C = np.zeros(v.size)
        C[np.argsort(-gain, kind="stable")[:d]] = 1.0
        return np.where(np.isfinite(gain), C, 0.0)
    if np.any(K < 3):
        raise ValueError("bisection_reference needs K >= 3 everywhere or K <= 3 everywhere")
    if d >= np.count_nonzero(v):
        return (v > 0).astype(float)
    # S(mu) = sum C_i(mu) is non-increasing; positive doubles are ordered as their bits
    lo, hi = np.float64(5e-324).view(np.int64), np.float64(np.finfo(float).max).view(np.int64)
    total = lambda bits: math.fsum(_oracle_capacity(v, K, float(np.int64(bits).view(float))))  # noqa: E731
    while hi - lo > 1:  # invariant: S(lo) >= d > S(hi)
        mid = lo + (hi - lo) // 2
        if total(mid) >= d:
            lo = mid
        else:
            hi = mid
    C_lo, C_hi = (_oracle_capacity(v, K, float(np.int64(b).view(float))) for b in (lo, hi))
    s_lo, s_hi = math.fsum(C_lo), math.fsum(C_hi)
    theta = (d - s_hi) / (s_lo - s_hi) if s_lo > s_hi else 1.0
    return C_hi + theta * (C_lo - C_hi)


def bisection_reference(problem: QuadraticProblem) -> np.ndarray:
    r"""Optimal capacities by bisection on the water level, sharing no code with the solvers.

    For :math:`K_i \ge 3` everywhere, :math:`S(\mu) = \sum_i C_i(\mu)` is bisected over
    all positive doubles (ordered as their bit patterns; at most 64 steps, each sum
    exact by :func:`math.fsum`) down to two adjacent levels, and the budget is met by
    interpolating between their capacities. For :math:`K_i \le 3` everywhere the top
    ``d`` features by :math:`\ell_i(0) - \ell_i(1) = (K_i - 1) v_i^2` (compared as
    logarithms, so tiny importances keep their order) are monosemantic. Works for
    any magnitude of importances; ``O(64 n)`` per row.

    Parameters
    ----------
    problem : QuadraticProblem
        Unbatched or batched, convex or concave (not mixed: use :func:`brute_force`).

    Returns
    -------
    capacity : (n,) or (m, n) ndarray

    Examples
    --------
    >>> from capalloc import QuadraticProblem
    >>> from capalloc.testing import bisection_reference
    >>> bisection_reference(QuadraticProblem([4.0, 2.0, 1.0, 0.2], d=2, kurtosis=10.0)).round(4)
    array([1.    , 0.7619, 0.2381, 0.    ])
    """
    v = np.atleast_2d(problem.importance)
    K = np.broadcast_to(problem.kurtosis, problem.importance.shape).reshape(v.shape)
    C = np.array([_oracle_row(v[r], K[r], problem.d) for r in range(v.shape[0])])
    return C.reshape(problem.importance.shape)


def scaled_loss(problem: QuadraticProblem, capacity: Any) -> tuple[np.ndarray, np.ndarray]:
    r"""The total loss as ``(mantissa, exponent)`` with loss ``= mantissa * 2**exponent``,
    free of overflow and underflow: :math:`v_i = m_i 2^{e_i}` exactly, so
    :math:`\ell_i = m_i^2 f_i(C_i) 2^{2 e_i}` with :math:`f_i = 2 (K_i-1)(1-C_i)/(2+(K_i-3)C_i)`,
    summed relative to the largest exponent. Batched problems give arrays of rows."""
    C = np.atleast_2d(np.asarray(capacity, dtype=float))
    v = np.atleast_2d(problem.importance)
    K = np.broadcast_to(problem.kurtosis, problem.importance.shape).reshape(v.shape)
    m, e = np.frexp(v)
    with np.errstate(all="ignore"):
        f = np.where(K == 1, 0.0, 2 * (K - 1) * (1 - C) / (2 + (K - 3) * C))
    live = (f != 0) & (m != 0)
    E = np.max(np.where(live, 2 * e, np.iinfo(np.int64).min), axis=-1, keepdims=True)
    E = np.where(np.any(live, axis=-1, keepdims=True), E, 0)
    mant = np.sum(np.where(live, np.ldexp(m * m * f, np.where(live, 2 * e - E, 0)), 0.0), axis=-1)
    out = mant, E[:, 0]
    return out if problem.batched else (out[0][0:1].reshape(()), out[1][0:1].reshape(()))


def relative_excess_loss(problem: QuadraticProblem, capacity: Any, reference: Any) -> Any:
    """``(loss(capacity) - loss(reference)) / loss(reference)`` over the whole float
    range (see :func:`scaled_loss`); 0 where both losses are 0, inf where only the
    reference's is."""
    (ma, ea), (mb, eb) = scaled_loss(problem, capacity), scaled_loss(problem, reference)
    E = np.maximum(ea, eb)
    a, b = np.ldexp(ma, ea - E), np.ldexp(mb, eb - E)
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.where(b > 0, (a - b) / b, np.where(a > 0, np.inf, 0.0))
    return float(gap) if np.ndim(gap) == 0 else gap


# ---------------------------------------------------------------------------
# Reference problems
# ---------------------------------------------------------------------------


class ReferenceProblem(NamedTuple):
    """A problem with its optimum derived by hand.

    ``capacity`` is the unique optimum, or (``unique=False``) the one chosen by the
    documented tie rule of ``"waterfill"``; ``loss`` is always unique.
    """

    problem: QuadraticProblem
    capacity: np.ndarray
    loss: float
    unique: bool = True


def _ref(v: Any, d: int, K: Any, C: Any, loss: float, unique: bool = True) -> ReferenceProblem:
    return ReferenceProblem(QuadraticProblem(v, d, K), np.array(C, dtype=float), loss, unique)


REFERENCE_PROBLEMS: dict[str, ReferenceProblem] = {
    # n = 2, d = 1, a = 2, b = 1, K = 10 > 1 + 2a/b = 5: polysemantic. Spec section 5:
    # c^2 = (K-1)(aK-a-2b)/((K-3)(K+1)) = 9*16/77 = 144/77, e^2 = 9*5/77 = 45/77, and
    # C_1 = c^2/(c^2+e^2) = 16/21, C_2 = 5/21. Water level: (9*3/mu - 4)/7 = 1, mu = 27/11;
    # loss of a polysemantic feature 2(K-1) v (mu - v)/(K-3): 36*(5/11)/7 + 18*(16/11)/7 = 468/77.
    "two_features_polysemantic": _ref([2.0, 1.0], 1, 10.0, [16 / 21, 5 / 21], 468 / 77),
    # Same importances, K = 4 < 5: the stronger feature takes the dimension; loss (K-1) b^2 = 3.
    "two_features_monosemantic": _ref([2.0, 1.0], 1, 4.0, [1.0, 0.0], 3.0),
    # On the boundary K = 1 + 2a/b = 5: e^2 = (K-1)(bK-b-2a)/... = 0, c^2 = 4*6/12 = 2 = a;
    # mu = 2 gives C = [1, 0]; loss (K-1) b^2 = 4.
    "two_features_boundary": _ref([2.0, 1.0], 1, 5.0, [1.0, 0.0], 4.0),
    # Equal importances, K = 5: C = d/n = 2/3 each; mu from (4/mu - 2)/2 = 2/3 is 6/5 and each
    # loses 2*4*1*(6/5 - 1)/2 = 0.8.
    "equal_importance_convex": _ref([1.0, 1.0, 1.0], 2, 5.0, [2 / 3] * 3, 2.4),
    # Five equal features, K = 9 (Gaussian at density 1/3), d = 2: C = 2/5 each; each loses
    # 2*8*0.6/(2 + 6*0.4) = 24/11.
    "equal_importance_sparse": _ref(np.ones(5), 2, 9.0, [0.4] * 5, 5 * 24 / 11),
    # Three bands (the solve() example): v = 4 monosemantic (v >= mu), v = 2, 1 share one
    # dimension exactly as in the two-feature case (mu = 27/11), v = 0.2 ignored
    # ((K-1)v/2 = 0.9 <= mu) and loses (K-1) v^2 = 0.36.
    "three_bands": _ref(
        [4.0, 2.0, 1.0, 0.2], 2, 10.0, [1.0, 16 / 21, 5 / 21, 0.0], 468 / 77 + 0.36
    ),
    # K = 2 < 3: concave, top-d by (K-1) v^2; the ignored feature loses (K-1) v^2 = 1.
    "concave_top_d": _ref([1.0, 3.0, 2.0], 2, 2.0, [0.0, 1.0, 1.0], 1.0),
    # K = 3: linear, top-d; ignored ones lose 2 v^2: 2*1 + 2*4 = 10.
    "linear_top_d": _ref([1.0, 3.0, 2.0], 1, 3.0, [0.0, 1.0, 0.0], 10.0),
    # K = 3 with equal importances: every split of d = 2 is optimal with loss 3*2*(1 - C) summed
    # = 2*(3 - 2) = 2; waterfill's rule splits equally.
    "linear_ties": _ref([1.0, 1.0, 1.0], 2, 3.0, [2 / 3] * 3, 2.0, unique=False),
    # K = 2 ties: lower index first; loss of the ignored one (K-1) v^2 = 1.
    "concave_ties": _ref([1.0, 1.0, 1.0], 2, 2.0, [1.0, 1.0, 0.0], 1.0, unique=False),
    # d >= n: everything monosemantic, zero loss.
    "budget_covers_all": _ref([1.0, 2.0], 3, 7.0, [1.0, 1.0], 0.0),
    # d = 0: everything ignored, loss sum (K-1) v^2 = 4*(1 + 4) = 20.
    "zero_budget": _ref([1.0, 2.0], 0, 5.0, [0.0, 0.0], 20.0),
    # A zero importance is ignored and costs nothing; the rest is two_features_polysemantic.
    "zero_importance": _ref([0.0, 1.0, 2.0], 1, 10.0, [0.0, 5 / 21, 16 / 21], 468 / 77),
    # One feature, one dimension.
    "single_feature": _ref([3.0], 1, 2.0, [1.0], 0.0),
    # Mixed curvature, a polysemantic concave feature. v = [1, 0.6], K = [2.5, 5], d = 1.
    # Concave j at level mu: t = ((K-1)v/mu - 2)/(K-3) = 4 - 3/mu on mu in (0.75, 1);
    # convex: C = 2*0.6/mu - 1. t + C = 1 gives 2 = 1.8/mu, mu = 0.9, t = 2/3, C = 1/3.
    # Second order: A = 2*0.6 = 1.2 <= a_j = 1.5/0.5 = 3, a minimum; the only stationary point.
    # Losses: 2 mu v_j (1 - t) = 0.6 and 2*4*0.6*(0.9 - 0.6)/2 = 0.72: 1.32, below both
    # vertices (concave at 1: 4*0.36 = 1.44; convex at 1: 1.5*1 = 1.5).
    "mixed_fractional_concave": _ref([1.0, 0.6], 1, [2.5, 5.0], [2 / 3, 1 / 3], 1.32),
    # Mixed, vertex optimum: v = [1, 1], K = [2, 10], d = 1. With t for the concave feature,
    # the loss l_1(t) + l_2(1-t) has derivative g_2(1-t) - g_1(t), where the marginal benefits
    # are g_1(t) = 2/(2-t)^2 <= 2 and g_2(s) = 162/(2+7s)^2 >= 2: it never decreases, so
    # t = 0 is optimal and the loss is l_1(0) = (K-1) v^2 = 1 (t = 1 would lose 9).
    "mixed_vertex": _ref([1.0, 1.0], 1, [2.0, 10.0], [0.0, 1.0], 1.0),
}
"""Problems with optimal capacities and losses derived by hand (see the comments in
the source). Keys are descriptive names."""
