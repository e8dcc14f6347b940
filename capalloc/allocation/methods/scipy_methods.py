r"""Reference solvers built on :mod:`scipy.optimize` (methods ``"scipy"`` and ``"slsqp"``).

Both solve

.. math::

    \min_C \sum_i \ell_i(C_i) \quad \text{s.t.} \quad 0 \le C_i \le 1,\ \sum_i C_i \le d

by routes independent of the water-filling sweep of :mod:`capalloc.allocation.methods.waterfill`, so
that the methods can check each other.

``"scipy"`` (exact) works on the dual. With marginal benefits
:math:`g_i = -\ell_i'`, decreasing in :math:`C_i` for convex losses, the optimum is
:math:`C_i(T) = \Pi_{[0,1]}(g_i^{-1}(T))` with the threshold :math:`T` the root of
:math:`\sum_i C_i(T) = d`, found by :func:`scipy.optimize.brentq`. For the quadratic
model the inverse is closed form (:math:`T = 2\mu^2`) and the residual is compiled
with numba (:mod:`~capalloc.allocation.methods.kernels`, loaded on first use); for a general :class:`~capalloc.SeparableProblem` the inverse is a
vectorised bisection over all features at once. Concave problems are solved by
the vertex rule and mixed-curvature problems by an exact finite search over the
single concave feature that may be fractional.

``"slsqp"`` (not exact) is a multistart :func:`scipy.optimize.minimize` with
``method="SLSQP"``: a dense local solver for small, possibly nonconvex, reference
problems.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, cast

import numpy as np
from scipy import optimize

from capalloc.allocation.methods import load_kernels
from capalloc.allocation.problems import QuadraticProblem, SeparableProblem
from capalloc.allocation.result import (
    NOT_CONVERGED,
    SUCCESS,
    AllocationResult,
    level_certificate,
    make_result,
    smallest_threshold,
)
from capalloc.allocation.solve import register_method
from capalloc.quadratic import closed_form

__all__ = ["solve_scipy", "solve_slsqp", "MAX_MIXED_N", "MAX_SLSQP_N"]

MAX_MIXED_N = 64
"""Largest ``n`` for which ``"scipy"`` runs its finite search on mixed curvature."""

MAX_SLSQP_N = 200
"""Largest ``n`` accepted by ``"slsqp"`` (dense quasi-Newton updates cost :math:`O(n^2)`)."""

_HALVINGS = 60  # bisection steps of the vectorised inverse (2**-60 < machine epsilon)
_RTOL = 4 * np.finfo(float).eps  # the smallest relative tolerance brentq accepts
_GRID = 64  # initial threshold grid of the mixed search
_GRID_STEP = 1.0 / 16  # largest budget step between neighbouring grid thresholds
_GRID_MAX = 4096  # cap on grid thresholds


# ---------------------------------------------------------------------------
# Quadratic model: closed-form inverse, compiled residual
# ---------------------------------------------------------------------------


def _restore_budget(
    C: np.ndarray, K: np.ndarray, target: float, movable: np.ndarray | None = None
) -> np.ndarray:
    r"""Move the fractional convex features of ``movable`` so that ``sum(C) = target`` (in place).

    On one segment :math:`dC_i/d(1/\mu) = \mu (C_i + 2/(K_i - 3))`, so a step ``s`` in
    ``1/mu`` moves feature ``i`` by :math:`s\,w_i`, :math:`w_i \propto C_i + 2/(K_i-3)`,
    and every level :math:`h_i` by the same relative amount: the features stay on one
    water level while the budget is met to rounding, however steep :math:`C(\mu)` is
    near ``K = 3`` (where no representable ``mu`` meets it). Features with ``K = 3``
    exactly, when fractional, are the infinitely steep ones and share the step
    equally. Sums are :func:`math.fsum`.
    """
    live = (C > 0) & (C < 1) & (K >= 3)
    if movable is not None:
        live &= movable
    for _ in range(3):
        idx = np.flatnonzero(live & (C > 0) & (C < 1))
        rest = target - math.fsum(C)
        if not idx.size or rest == 0 or not math.isfinite(rest):
            break
        k3 = K[idx] - 3
        if np.any(k3 == 0):
            w = (k3 == 0).astype(float)
        else:
            kappa = float(k3.min())
            w = kappa * C[idx] + 2 * (kappa / k3)  # (C_i + 2/(K_i-3)) scaled by min(K-3)
        C[idx] = np.clip(C[idx] + (rest / math.fsum(w)) * w, 0.0, 1.0)
    return C


def _gain_order(v: np.ndarray, K: np.ndarray, idx: np.ndarray) -> np.ndarray:
    r"""``idx`` sorted by :math:`\ell_i(0) - \ell_i(1) = (K_i - 1) v_i^2` descending (ties:
    lower index first), keeping only positive gains; compared as the exponent and
    mantissa of :math:`\sqrt{K_i - 1}\, v_i`, so no square over- or underflows."""
    idx = idx[(v[idx] > 0) & (K[idx] > 1)]
    m, e = np.frexp(v[idx])
    m2, e2 = np.frexp(m * np.sqrt(K[idx] - 1))
    return idx[np.lexsort((idx, -m2, -(e.astype(np.int64) + e2)))]


def _quad_vertex(v: np.ndarray, K: np.ndarray, d: int) -> np.ndarray:
    """Concave (``K <= 3``) row: the ``d`` largest gains get capacity 1."""
    C = np.zeros(v.size)
    C[_gain_order(v, K, np.arange(v.size))[:d]] = 1.0
    return C


def _centred(v: np.ndarray) -> np.ndarray:
    """``v`` times an exact power of two centring the exponents of its positive entries
    (the solution is scale free), so that squares of both ends stay in range where
    the row spans fewer than ~1000 binary orders; the top is kept below ``2**500``."""
    pos = v[v > 0]
    if not pos.size:
        return v
    e = np.frexp(pos)[1]
    lo, hi = int(e.min()), int(e.max())
    shift = max((lo + hi) // 2, hi - 500)
    return np.ldexp(v, -shift)


def _quad_finish(v: np.ndarray, K: np.ndarray, d: int, mu: float) -> np.ndarray:
    """Capacities from an approximate root ``mu``: make it exact, or resolve ``K = 3`` ties.

    The polysemantic set at ``mu`` fixes the segment ``S = m + A/mu - B``, and its
    linear equation in ``1/mu`` gives the exact root when it stays on the segment.
    Otherwise ``brentq`` stopped at a jump of the step function, where ``K = 3``
    features tie at the threshold; those features share what is left of the budget.
    """
    kern = load_kernels()
    m, npoly, A, B = kern.dual_segment(v, K, mu)
    if npoly and d - m + B > 0:
        mu2 = A / (d - m + B)
        if kern.dual_segment(v, K, mu2)[:2] == (m, npoly):
            return kern.dual_capacities(v, K, mu2)
    if abs(kern.dual_excess(math.log(mu), v, K, float(d))) > 1e-9:
        lin = (K == 3) & (v > 0)
        if lin.any():
            vt = v[lin][np.argmin(np.abs(v[lin] - mu))]
            if abs(vt - mu) <= 1e-9 * mu:
                tied = lin & (v == vt)
                C = kern.dual_capacities(v, K, vt)
                C[tied] = np.clip((d - C.sum()) / np.count_nonzero(tied), 0.0, 1.0)
                return C
    return kern.dual_capacities(v, K, mu)


def _quad_convex(
    v: np.ndarray, K: np.ndarray, d: int, xtol: float, maxiter: int
) -> tuple[np.ndarray, int, bool]:
    """One convex row with ``0 < d < #{v > 0}``: ``(C, brentq iterations, converged)``."""
    pos = v > 0
    lo = math.log(v[pos].min()) - 1.0  # every feature monosemantic: S = #{v > 0} > d
    # every feature ignored: S = 0 (logs, as (K - 1) v may overflow)
    hi = float(np.max(np.log(K[pos] - 1) + np.log(v[pos]))) - math.log(2.0) + 1.0
    kern = load_kernels()
    x, info = optimize.brentq(
        kern.dual_excess,
        lo,
        hi,
        args=(v, K, float(d)),
        xtol=xtol,
        rtol=_RTOL,
        maxiter=maxiter,
        full_output=True,
        disp=False,
    )
    mu = math.exp(x)
    if not info.converged:
        return kern.dual_capacities(v, K, mu), info.iterations, False
    return _quad_finish(v, K, d, mu), info.iterations, True


# ---------------------------------------------------------------------------
# Per-feature views of one problem (row)
# ---------------------------------------------------------------------------


class _View:
    """Numeric per-feature access to one separable objective (one problem row).

    ``loss`` and ``benefit`` map a capacity vector of shape ``(n,)`` to per-feature
    values; ``linear`` flags features whose benefit is constant.
    """

    def __init__(
        self,
        loss: Callable[[np.ndarray], Any],
        benefit: Callable[[np.ndarray], Any],
        n: int,
        linear: np.ndarray,
    ) -> None:
        self.n = n
        self.calls = 0
        self._loss = loss
        self._benefit = benefit
        zeros, ones = np.zeros(n), np.ones(n)
        self.l0, self.l1 = self.loss(zeros), self.loss(ones)
        self.g0, self.g1 = self.benefit(zeros), self.benefit(ones)
        self.linear = np.asarray(linear, bool) | (self.g0 == self.g1)

    def loss(self, C: np.ndarray) -> np.ndarray:
        return np.asarray(self._loss(C), dtype=float)

    def benefit(self, C: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.asarray(self._benefit(C), dtype=float)

    @property
    def gain(self) -> np.ndarray:
        r""":math:`\ell_i(0) - \ell_i(1)`, the value of a whole unit of capacity."""
        return self.l0 - self.l1

    def inverse(self, T: float, mask: np.ndarray) -> np.ndarray:
        r""":math:`\Pi_{[0,1]}(g_i^{-1}(T))` on ``mask`` (0 elsewhere), ``g_i`` decreasing.

        Ties break towards 0: a feature with :math:`g_i(0) \le T` gets 0.
        """
        C = np.zeros(self.n)
        live = mask & (self.g0 > T)
        C[live & (self.g1 >= T)] = 1.0
        mid = live & (self.g1 < T)
        if mid.any():
            lo, hi = np.zeros(self.n), np.ones(self.n)
            for _ in range(_HALVINGS):
                c = 0.5 * (lo + hi)
                up = self.benefit(c) > T
                lo = np.where(up, c, lo)
                hi = np.where(up, hi, c)
            C[mid] = 0.5 * (lo + hi)[mid]
        return C


class _QuadView(_View):
    """:class:`_View` of one quadratic-model row, with the closed-form inverse."""

    def __init__(self, v: np.ndarray, K: np.ndarray) -> None:
        self.v, self.K = v, K
        super().__init__(self._quad_loss, self._quad_benefit, v.size, K == 3)

    def _quad_loss(self, C: np.ndarray) -> np.ndarray:
        return closed_form.feature_loss(C, self.v, self.K)

    def _quad_benefit(self, C: np.ndarray) -> np.ndarray:
        return closed_form.feature_benefit(C, self.v, self.K)

    def inverse(self, T: float, mask: np.ndarray) -> np.ndarray:
        mu = math.sqrt(max(T, 0.0) / 2)
        return np.where(mask, closed_form.capacity_at(mu, self.v, self.K), 0.0)


# ---------------------------------------------------------------------------
# The three regimes
# ---------------------------------------------------------------------------


def _vertex(view: _View, mask: np.ndarray, d: int) -> np.ndarray:
    r"""Concave rule: the ``d`` features of ``mask`` with the largest positive
    :math:`\ell_i(0) - \ell_i(1)` get capacity 1 (ties: lower index first)."""
    C = np.zeros(view.n)
    idx = np.flatnonzero(mask & (view.gain > 0))
    C[idx[np.argsort(-view.gain[idx], kind="stable")[:d]]] = 1.0
    return C


def _convex_dual(
    view: _View, mask: np.ndarray, budget: float, xtol: float, maxiter: int
) -> tuple[np.ndarray, float, int, bool]:
    """Optimal capacities of the convex features in ``mask`` for a budget.

    Returns ``(C, T, brentq iterations, converged)``; ``C`` is 0 off ``mask``.
    """
    C0 = view.inverse(0.0, mask)
    if C0.sum() <= budget:  # the budget does not bind
        return C0, 0.0, 0, True
    if budget <= 0:
        return np.zeros(view.n), float(np.max(view.g0[mask])), 0, True

    def excess(x: float) -> float:
        return float(view.inverse(math.exp(x), mask).sum() - budget)

    x_hi = math.log(np.max(view.g0[mask]))  # every feature at 0
    step, x_lo = 1.0, x_hi - 1.0
    while excess(x_lo) <= 0 and step < 1024:
        step *= 2
        x_lo = x_hi - step
    x, info = optimize.brentq(
        excess, x_lo, x_hi, xtol=xtol, rtol=_RTOL, maxiter=maxiter, full_output=True, disp=False
    )
    T = math.exp(x)
    C = view.inverse(T, mask)
    gap = budget - C.sum()
    tie = mask & view.linear & (np.abs(view.g0 - T) <= 1e-8 * T)
    if info.converged and abs(gap) > 1e-9 and tie.any():
        # brentq stopped at a jump: features of constant benefit T share the rest
        T = float(view.g0[tie][np.argmin(np.abs(view.g0[tie] - T))])
        tied = mask & view.linear & (view.g0 == T)
        C = view.inverse(T, mask)
        C[tied] = np.clip((budget - C.sum()) / np.count_nonzero(tied), 0.0, 1.0)
    return C, T, info.iterations, info.converged


class _MixedSearch:
    r"""Exact search for mixed curvature.

    At an optimum at most one concave (or linear) feature ``j`` is fractional; the
    other concave features are 0 or 1 and, given their number ``k`` at 1, the best
    ones are the ``k`` largest gains :math:`\ell_i(0) - \ell_i(1)` (``j`` excluded).
    The convex features ``X`` follow the dual curve :math:`C_X(T)`, which is optimal
    for its own budget :math:`S_X(T)`, so each candidate ``(k, j)`` is a 1-D problem
    in :math:`T` with :math:`t_j = d - k - S_X(T) \in (0, 1)`:

    .. math::

        h_{kj}(T) = \ell_j(t_j(T)) + \sum_{i \in X} \ell_i(C_i(T)) + \text{const}_{kj}.

    The candidates without a fractional concave feature are solved exactly by the
    dual. For the others, the local minima of :math:`h_{kj}` are bracketed on a grid
    of thresholds, refined until neighbours differ by at most 1/16 in budget, and
    solved by ``brentq`` on the stationarity condition :math:`g_j(t_j) = T`; the best
    of all candidates is exact.
    """

    def __init__(
        self, view: _View, mask_x: np.ndarray, mask_v: np.ndarray, d: int, xtol: float, maxiter: int
    ) -> None:
        self.view, self.d = view, d
        self.X = mask_x & (view.g0 > 0)  # convex features that can ever take capacity
        self.xtol, self.maxiter = xtol, maxiter
        self.V = self._order(mask_v)  # by gain, descending
        self.nit = 0
        self.ok = True

    def _order(self, mask_v: np.ndarray) -> np.ndarray:
        """Features of ``mask_v`` with positive gain, by gain descending (ties: lower index)."""
        gain = self.view.gain
        V = np.flatnonzero(mask_v & (gain > 0))
        return V[np.argsort(-gain[V], kind="stable")]

    def _dual(self, budget: int) -> np.ndarray:
        """Optimal convex capacities (on ``X``) for an integer budget."""
        C, _, nit, ok = _convex_dual(self.view, self.X, budget, self.xtol, self.maxiter)
        self.nit += nit
        self.ok &= ok
        return C

    def solve(self) -> np.ndarray:
        best_C: np.ndarray | None = None
        best = math.inf
        for k in range(min(self.d, self.V.size) + 1):
            C = self._dual(self.d - k)
            C[self.V[:k]] = 1.0
            val = float(self.view.loss(C).sum())
            if val < best:
                best_C, best = C, val
        if self.X.any() and self.V.size:
            for C in self._fractional():
                val = float(self.view.loss(C).sum())
                if val < best:
                    best_C, best = C, val
        # None only when every candidate loss is NaN or inf; passed on unchanged as before
        return cast(np.ndarray, best_C)

    def _point(self, x: float) -> tuple[np.ndarray, float]:
        C = self.view.inverse(math.exp(x), self.X)
        return C, float(C.sum())

    def _grid(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Log-thresholds ``x``, convex capacities and budgets ``S_X``, sorted by ``x``."""
        view, X, d = self.view, self.X, self.d
        lo_budget = d - min(self.d, self.V.size) - 1  # the window of S_X that matters
        top = min(d, float(view.inverse(0.0, X).sum()))
        x_hi = math.log(np.max(view.g0[X]))
        step, x_lo = 1.0, x_hi - 1.0
        while self._point(x_lo)[1] < top - 1e-12 and step < 1024:
            step *= 2
            x_lo = x_hi - step
        pts = {x: self._point(x) for x in np.linspace(x_lo, x_hi, _GRID)}
        while len(pts) < _GRID_MAX:
            xs = sorted(pts)
            S = np.array([pts[x][1] for x in xs])
            wide = np.flatnonzero(
                (np.abs(np.diff(S)) > _GRID_STEP)
                & (np.maximum(S[:-1], S[1:]) > lo_budget)
                & (np.minimum(S[:-1], S[1:]) < d)
                & (np.diff(xs) > 1e-12 * (1 + abs(x_hi)))
            )
            if not wide.size:
                break
            for i in wide[: _GRID_MAX - len(pts)]:
                x = 0.5 * (xs[i] + xs[i + 1])
                pts[x] = self._point(x)
        todo = sorted(pts)
        return (
            np.array(todo),
            np.array([pts[x][0] for x in todo]),
            np.array([pts[x][1] for x in todo]),
        )

    def _fractional(self) -> list[np.ndarray]:
        r"""Stationary points with one fractional concave feature, a local minimum in ``T``.

        Along the dual curve :math:`dh_{kj}/dT = S_X'(T)\,(g_j(t_j) - T)` with
        :math:`S_X' \le 0`, so local minima are where :math:`F = g_j(t_j(T)) - T` changes
        sign from + to -. One call of the marginal benefit gives :math:`g_j(t)` for every
        ``j`` at once, so each grid threshold costs one call per ``k``.
        """
        view, V, d = self.view, self.V, self.d
        xs, CX, S = self._grid()
        out = []
        for k in range(min(d - 1, V.size - 1) + 1):
            t = d - k - S  # increasing along xs
            valid = np.flatnonzero((t > 0) & (t < 1))
            if not valid.size:
                continue
            rows = np.arange(max(valid[0] - 1, 0), min(valid[-1] + 2, xs.size))
            F = np.empty((rows.size, V.size))
            for r, g in enumerate(rows):
                C = CX[g].copy()
                C[V] = min(max(t[g], 0.0), 1.0)
                F[r] = view.benefit(C)[V] - math.exp(xs[g])
            for r, col in zip(*np.nonzero((F[:-1] > 0) & (F[1:] <= 0)), strict=True):
                C = self._root(k, col, V[col], xs[rows[r]], xs[rows[r + 1]])
                if C is not None:
                    out.append(C)
        return out

    def _assemble(self, k: int, col: int, j: int, x: float) -> tuple[np.ndarray, float]:
        """Capacities at threshold ``exp(x)`` with ``j`` fractional and ``k`` others at 1."""
        C, s = self._point(x)
        t = self.d - k - s
        others = np.delete(self.V, col)
        C[others[:k]] = 1.0
        C[j] = min(max(t, 0.0), 1.0)
        return C, t

    def _root(self, k: int, col: int, j: int, a: float, b: float) -> np.ndarray | None:
        """Solve :math:`g_j(t_j(T)) = T` on ``[a, b]`` (log thresholds); ``None`` if ``t_j`` leaves (0, 1)."""

        def stationarity(x: float) -> float:
            C, _ = self._assemble(k, col, j, x)
            return float(self.view.benefit(C)[j]) - math.exp(x)

        x, info = optimize.brentq(
            stationarity,
            a,
            b,
            xtol=self.xtol,
            rtol=_RTOL,
            maxiter=self.maxiter,
            full_output=True,
            disp=False,
        )
        self.nit += info.iterations
        self.ok &= info.converged
        return self._finish(k, col, j, x)

    def _finish(self, k: int, col: int, j: int, x: float) -> np.ndarray | None:
        """Capacities at the bracketed root ``x``; ``None`` if ``t_j`` is not in (0, 1)."""
        C, t = self._assemble(k, col, j, x)
        return C if 0 < t < 1 else None


class _QuadMixedSearch(_MixedSearch):
    r""":class:`_MixedSearch` on a quadratic row, exact on the active set of each root.

    Between breakpoints the convex budget is :math:`S_X = m + A/\mu - B`
    (:math:`a_i = (K_i-1) v_i/(K_i-3)`, :math:`b_i = 2/(K_i-3)` summed afresh over the
    fractional features), so once ``brentq`` has bracketed a root its segment gives
    the root in closed form, and the budget is restored by a step in :math:`1/\mu`
    (:func:`_restore_budget`): near ``K = 3``, where :math:`S_X` jumps by far more than
    1e-9 between neighbouring doubles ``mu``, no threshold alone meets the budget.
    The concave order compares :math:`\sqrt{K_i-1}\, v_i` (no squares).
    """

    def __init__(
        self,
        view: _QuadView,
        mask_x: np.ndarray,
        mask_v: np.ndarray,
        d: int,
        xtol: float,
        maxiter: int,
    ) -> None:
        self.qv = view
        super().__init__(view, mask_x, mask_v, d, xtol, maxiter)

    def _order(self, mask_v: np.ndarray) -> np.ndarray:
        return _gain_order(self.qv.v, self.qv.K, np.flatnonzero(mask_v))

    def _dual(self, budget: int) -> np.ndarray:
        C = np.zeros(self.view.n)
        X = np.flatnonzero(self.X)
        v, K = self.qv.v[X], self.qv.K[X]
        if budget >= np.count_nonzero(v):
            C[X] = (v > 0).astype(float)
        elif budget > 0:
            CX, nit, ok = _quad_convex(v, K, budget, self.xtol, self.maxiter)
            self.nit += nit
            self.ok &= ok
            C[X] = _restore_budget(np.array(CX, dtype=float), K, float(budget))
        return C

    def _segment(self, mu: float) -> tuple[np.ndarray, np.ndarray]:
        """Masks (over all features) of the convex features at 1 and fractional at ``mu``."""
        v, K = self.qv.v, self.qv.K
        with np.errstate(over="ignore"):
            mono = self.X & (v >= mu)
            poly = self.X & ~mono & ((K - 1) * v > 2 * mu)
        return mono, poly

    def _finish(self, k: int, col: int, j: int, x: float) -> np.ndarray | None:
        fallback = super()._finish(k, col, j, x)
        v, K, d = self.qv.v, self.qv.K, self.d
        mu0 = math.sqrt(math.exp(x) / 2)
        mono, poly = self._segment(mu0)
        m = int(np.count_nonzero(mono))
        A = math.fsum((K[poly] - 1) * v[poly] / (K[poly] - 3))
        B = math.fsum(2 / (K[poly] - 3))
        # t_j = c0 - A u (u = 1/mu) and h_j(t_j) = mu: linear in u
        c0 = d - k - m + B
        Kj, vj = float(K[j]), float(v[j])
        num = 2 + (Kj - 3) * c0
        den = (Kj - 1) * vj + (Kj - 3) * A
        u = num / den if den != 0 else math.nan
        if not (u > 0 and math.isfinite(u) and math.isfinite(1 / u)):
            return fallback
        mu = 1 / u
        mono2, poly2 = self._segment(mu)
        if not (np.array_equal(mono, mono2) and np.array_equal(poly, poly2)):
            return fallback
        t = ((Kj - 1) * vj * u - 2) / (Kj - 3) if Kj != 3 else c0 - A * u
        if not 0 < t < 1:
            return fallback
        C = np.zeros(self.view.n)
        C[self.X] = closed_form.capacity_at(mu, v[self.X], K[self.X])
        others = np.delete(self.V, col)
        C[others[:k]] = 1.0
        # the budget's rounding goes to the steeper side: the convex features (capacity
        # moving by B per unit of mu/mu) or j (by 2/|K_j - 3|, large for K_j near 3)
        if np.any(poly) and (Kj == 3 or 2 / abs(Kj - 3) <= B):
            _restore_budget(C, K, d - t, movable=self.X)  # C holds the k concave ones
        else:
            t = d - math.fsum(C)
            if not 0 < t < 1:
                return fallback
        C[j] = t
        return C


def _mixed(
    view: _View, kinds: np.ndarray, d: int, xtol: float, maxiter: int
) -> tuple[np.ndarray, int, bool]:
    if view.n > MAX_MIXED_N:
        raise ValueError(
            f"method 'scipy' solves mixed curvature by an exact search whose cost grows like "
            f"n**2; n={view.n} exceeds MAX_MIXED_N={MAX_MIXED_N}. Use method='slsqp' (local, "
            f"n <= {MAX_SLSQP_N}) or, for a QuadraticProblem, method='waterfill'"
        )
    convex = (kinds == "convex") & ~view.linear
    search = (
        _QuadMixedSearch(view, convex, ~convex, d, xtol, maxiter)
        if isinstance(view, _QuadView)
        else _MixedSearch(view, convex, ~convex, d, xtol, maxiter)
    )
    return search.solve(), search.nit, search.ok


def _quad_row(
    v: np.ndarray, K: np.ndarray, d: int, xtol: float, maxiter: int
) -> tuple[np.ndarray, int, bool]:
    """``(C, nit, converged)`` for one quadratic row."""
    if d >= np.count_nonzero(v):
        return (v > 0).astype(float), 0, True
    if d == 0:
        return np.zeros_like(v), 0, True
    if np.all(K >= 3):
        return _quad_convex(v, K, d, xtol, maxiter)
    if np.all(K <= 3):
        return _quad_vertex(v, K, d), 0, True
    view = _QuadView(_centred(v), K)
    kinds = np.where(K > 3, "convex", np.where(K < 3, "concave", "linear"))
    return _mixed(view, kinds, d, xtol, maxiter)


def _separable(
    problem: SeparableProblem, xtol: float, maxiter: int
) -> tuple[np.ndarray, int, bool]:
    kinds = problem.curvature
    if np.any(kinds == "mixed"):
        bad = np.flatnonzero(kinds == "mixed")
        raise ValueError(
            f"method 'scipy' needs each loss convex, concave or linear on [0, 1]; features "
            f"{bad[:5].tolist()} are 'mixed'. Use method='slsqp' for a local solution"
        )
    view = _View(problem.loss, problem.marginal_benefit, problem.n, kinds == "linear")
    everything = np.ones(problem.n, bool)
    if np.all(np.isin(kinds, ("convex", "linear"))):
        C, _, nit, ok = _convex_dual(view, everything, problem.d, xtol, maxiter)
        return C, nit, ok
    if np.all(np.isin(kinds, ("concave", "linear"))):
        return _vertex(view, everything, problem.d), 0, True
    return _mixed(view, kinds, problem.d, xtol, maxiter)


def _quad_result(problem: QuadraticProblem, C: np.ndarray, **fields: Any) -> AllocationResult:
    """Result of a quadratic problem, certified on levels (numpy)."""
    C = np.ascontiguousarray(C, dtype=float)
    T, loss, kkt = level_certificate(problem, C)
    return make_result(problem, C, T, loss=loss, kkt=kkt, **fields)


#: Approximate methods (slsqp, cvxpy) report success only below this KKT residual.
APPROX_TOL = 1e-4


def _quad_row_safe(
    v: np.ndarray, K: np.ndarray, d: int, xtol: float, maxiter: int
) -> tuple[np.ndarray, int, bool]:
    """:func:`_quad_row`, turning a failed root bracket into a non-converged row."""
    try:
        C, nit, ok = _quad_row(v, np.where(np.abs(K - 3) < 1e-12, 3.0, K), d, xtol, maxiter)
    except ValueError as exc:  # brentq: no sign change (rounding on extreme magnitudes)
        if "different signs" not in str(exc):
            raise
        return np.zeros_like(v), 0, False
    if np.all(K >= 3) and 0 < d < np.count_nonzero(v):
        # K within 1e-12 of 3 was solved as 3: one Newton step restores the true budget
        C = _restore_budget(np.array(C, dtype=float), K, float(d))
    return C, nit, ok


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@register_method("scipy", problems=(QuadraticProblem, SeparableProblem), exact=True)
def solve_scipy(
    problem: QuadraticProblem | SeparableProblem, *, xtol: float = 1e-14, maxiter: int = 200
) -> AllocationResult:
    r"""Exact allocation by dual root finding with :func:`scipy.optimize.brentq`.

    .. math::

        \sum_i \Pi_{[0,1]}\big(g_i^{-1}(T)\big) = d, \qquad g_i = -\ell_i',
        \qquad \text{quadratic model: } C_i(\mu) = \Pi_{[0,1]}\Big(\frac{(K_i-1) v_i/\mu - 2}
        {K_i - 3}\Big),\ T = 2\mu^2

    Convex problems (every loss convex or linear) are solved by ``brentq`` on
    :math:`\log\mu` (quadratic model, numba residual; the root is then made exact on
    its segment, and features with ``K = 3`` tied at the threshold share the rest of
    the budget) or on :math:`\log T` (separable losses, each :math:`g_i^{-1}` by a
    vectorised bisection of 60 halvings). Concave problems take the top ``d``
    features by :math:`\ell_i(0) - \ell_i(1)`. Mixed curvature uses that at most one
    concave feature is fractional: for each number ``k`` of concave features at 1
    and each candidate fractional feature ``j`` it minimises over the threshold of
    the convex features: ``min(d, n_cc) + 1`` dual solves for the candidates with no
    fractional feature, then the local minima of the other candidates are bracketed
    on a grid of thresholds (neighbours at most 1/16 apart in budget; two minima
    inside one grid cell would be missed) and solved by ``brentq`` on
    :math:`g_j(t_j) = T`. With :math:`n_{cc}` concave features the work is
    :math:`O(n_{cc} \min(d, n_{cc}))` stationarity checks on the grid, so the search is
    limited to ``n <= MAX_MIXED_N`` (64).

    Parameters
    ----------
    problem : QuadraticProblem or SeparableProblem
        A batched quadratic problem is solved row by row.
    xtol : float, default 1e-14
        Absolute ``brentq`` tolerance on :math:`\log\mu` or :math:`\log T` (a relative
        tolerance on the threshold).
    maxiter : int, default 200
        Most ``brentq`` iterations per root.

    Returns
    -------
    AllocationResult
        ``nit`` counts ``brentq`` iterations (summed over rows and sub-problems).
        A root that did not converge gives ``status = 1`` and the last iterate.

    Raises
    ------
    ValueError
        Mixed curvature with ``n > MAX_MIXED_N``, or a separable loss of ``"mixed"``
        curvature on [0, 1].

    References
    ----------
    .. [1] Scherlis et al., "Polysemanticity and Capacity in Neural Networks",
       arXiv:2210.01892 (equal marginal benefit).

    Examples
    --------
    >>> from capalloc import QuadraticProblem
    >>> from capalloc.allocation.methods.scipy_methods import solve_scipy
    >>> res = solve_scipy(QuadraticProblem([4.0, 2.0, 1.0, 0.2], d=2, kurtosis=10.0))
    >>> res.capacity.round(4).tolist()
    [1.0, 0.7619, 0.2381, 0.0]
    """
    if not isinstance(problem, (QuadraticProblem, SeparableProblem)):
        raise TypeError(
            f"problem must be a QuadraticProblem or SeparableProblem, got {type(problem).__name__}"
        )
    xtol = float(xtol)
    if not xtol > 0:
        raise ValueError(f"xtol must be > 0, got {xtol!r}")
    maxiter = _check_int(maxiter, "maxiter", 1)
    if isinstance(problem, SeparableProblem):
        C, nit, ok = _separable(problem, xtol, maxiter)
        failed = [] if ok else [0]
    else:
        v, K = problem.importance, problem.kurtosis
        rows = (
            [
                _quad_row_safe(
                    np.ascontiguousarray(v[r]), np.ascontiguousarray(K[r]), problem.d, xtol, maxiter
                )
                for r in range(v.shape[0])
            ]
            if problem.batched
            else [
                _quad_row_safe(
                    np.ascontiguousarray(v), np.ascontiguousarray(K), problem.d, xtol, maxiter
                )
            ]
        )
        C = np.array([c for c, _, _ in rows]) if problem.batched else rows[0][0]
        nit = sum(n for _, n, _ in rows)
        failed = [r for r, (_, _, ok) in enumerate(rows) if not ok]
    status, message = SUCCESS, None
    if failed:
        where = f" (rows {failed[:5]})" if problem.batched else ""
        status = NOT_CONVERGED
        message = f"brentq did not converge in maxiter={maxiter} iterations{where}"
    if isinstance(problem, QuadraticProblem):
        return _quad_result(problem, C, method="scipy", nit=nit, status=status, message=message)
    return make_result(
        problem,
        C,
        smallest_threshold(problem, C),
        method="scipy",
        nit=nit,
        status=status,
        message=message,
    )


# ---------------------------------------------------------------------------
# SLSQP
# ---------------------------------------------------------------------------


def _slsqp_row(
    loss: Callable[[np.ndarray], Any],
    benefit: Callable[[np.ndarray], Any],
    n: int,
    d: int,
    starts: int,
    rng: np.random.Generator,
    maxiter: int,
    upper: np.ndarray,
) -> tuple[np.ndarray, int, bool, str]:
    """Best of ``starts`` SLSQP runs: ``(C, nit, success, message)``.

    ``upper`` holds the upper bounds (0 pins features that cannot matter).
    """
    if n == 0:
        return np.zeros(0), 0, True, "optimal"
    scale = float(np.sum(np.abs(loss(np.zeros(n)))))
    scale = scale if scale > 0 and np.isfinite(scale) else 1.0

    def f(C: np.ndarray) -> float:
        return float(np.sum(loss(C))) / scale

    def jac(C: np.ndarray) -> np.ndarray:
        return -np.asarray(benefit(C), dtype=float) / scale

    cons = [{"type": "ineq", "fun": lambda C: d - np.sum(C), "jac": lambda C: -np.ones(n)}]
    x0s = [np.full(n, min(d / n, 1.0)) * upper]
    for _ in range(starts - 1):
        x = rng.uniform(0.0, 1.0, n) * upper
        x0s.append(x * min(1.0, d / x.sum()) if x.sum() > 0 else x)
    bounds = optimize.Bounds(np.zeros(n), upper)
    best = None
    for x0 in x0s:
        res = optimize.minimize(
            f,
            x0,
            jac=jac,
            method="SLSQP",
            bounds=bounds,
            constraints=cons,
            options={"ftol": 1e-14, "maxiter": maxiter},
        )
        C = np.clip(res.x, 0.0, upper)
        if C.sum() > d:
            C *= d / C.sum()
        val = f(C)
        key = (not res.success, val)
        if best is None or key < best[0]:
            best = (key, C, int(getattr(res, "nit", 0)), bool(res.success), str(res.message))
    assert best is not None  # x0s is never empty
    _, C, nit, ok, msg = best
    return C, nit, ok, msg


@register_method("slsqp", problems=(QuadraticProblem, SeparableProblem), exact=False)
def solve_slsqp(
    problem: QuadraticProblem | SeparableProblem,
    *,
    starts: int = 8,
    seed: int = 0,
    maxiter: int = 500,
) -> AllocationResult:
    r"""Multistart SLSQP on the primal: a local reference for small, possibly nonconvex problems.

    .. math::

        \min_{C \in [0,1]^n} \sum_i \ell_i(C_i) \quad \text{s.t.} \quad \sum_i C_i \le d,
        \qquad \nabla = -\big(g_1(C_1), \dots, g_n(C_n)\big)

    :func:`scipy.optimize.minimize` with ``method="SLSQP"``, the analytic gradient
    and the objective divided by :math:`\sum_i |\ell_i(0)|`, run from the uniform
    allocation :math:`C_i = \min(d/n, 1)` and ``starts - 1`` random feasible points;
    the best converged run is kept. Convex problems have one optimum (accuracy about
    ``1e-6`` in ``C``); on nonconvex ones every run finds a local optimum only.

    Parameters
    ----------
    problem : QuadraticProblem or SeparableProblem
        ``n <= MAX_SLSQP_N`` (200); a batched quadratic problem runs row by row.
    starts : int, default 8
        Number of starting points (the first is the uniform one).
    seed : int, default 0
        Seed of the random starting points.
    maxiter : int, default 500
        Most SLSQP iterations per start.

    Returns
    -------
    AllocationResult
        ``nit``: SLSQP iterations of the kept run (summed over rows); ``status = 1``
        when no run converged.

    Raises
    ------
    ValueError
        If ``n > MAX_SLSQP_N``.

    Examples
    --------
    >>> from capalloc import QuadraticProblem
    >>> from capalloc.allocation.methods.scipy_methods import solve_slsqp
    >>> res = solve_slsqp(QuadraticProblem([4.0, 2.0, 1.0, 0.2], d=2, kurtosis=10.0))
    >>> res.capacity.round(4).tolist()
    [1.0, 0.7619, 0.2381, 0.0]
    """
    if not isinstance(problem, (QuadraticProblem, SeparableProblem)):
        raise TypeError(
            f"problem must be a QuadraticProblem or SeparableProblem, got {type(problem).__name__}"
        )
    if problem.n > MAX_SLSQP_N:
        raise ValueError(
            f"method 'slsqp' is a dense reference for small problems (n <= {MAX_SLSQP_N}), "
            f"got n={problem.n}; use method='waterfill' or 'scipy'"
        )
    starts = _check_int(starts, "starts", 1)
    maxiter = _check_int(maxiter, "maxiter", 1)
    rng = np.random.default_rng(seed)
    if isinstance(problem, SeparableProblem):
        views = [(problem.loss, problem.marginal_benefit, np.ones(problem.n))]
    else:
        v = np.atleast_2d(problem.importance)
        K = np.atleast_2d(problem.kurtosis)
        views = []
        for r in range(v.shape[0]):
            q = _QuadView(v[r], K[r])
            views.append((q.loss, q.benefit, (v[r] > 0).astype(float)))  # v = 0: C = 0
    rows = [
        _slsqp_row(lo, be, problem.n, problem.d, starts, rng, maxiter, up) for lo, be, up in views
    ]
    C = np.array([c for c, *_ in rows]).reshape(
        np.shape(problem.importance) if isinstance(problem, QuadraticProblem) else (problem.n,)
    )
    failed = [r for r, row in enumerate(rows) if not row[2]]
    status = NOT_CONVERGED if failed else SUCCESS
    message = f"SLSQP: {rows[failed[0]][3]}" if failed else None
    # the threshold from the clearly interior features (SLSQP leaves ~1e-9 at the bounds)
    snapped = np.where(C > 1 - 1e-7, 1.0, C)
    return make_result(
        problem,
        C,
        smallest_threshold(problem, snapped),
        method="slsqp",
        nit=sum(row[1] for row in rows),
        status=status,
        message=message,
        certify=APPROX_TOL,
    )
