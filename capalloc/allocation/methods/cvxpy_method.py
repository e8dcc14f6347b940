r"""Conic and mixed-integer reference for the quadratic model (method ``"cvxpy"``).

For :math:`K > 3` the per-feature loss splits into partial fractions,

.. math::

    \ell(C) = \frac{2 (K-1) v^2 (1 - C)}{2 + (K-3) C}
            = -\frac{2 (K-1) v^2}{K-3} + \frac{2 (K-1)^2 v^2}{K-3}\,
              \frac{1}{2 + (K-3) C},

a constant plus a positive multiple of ``inv_pos`` of an affine function, which
is DCP; :math:`K = 3` features are linear, :math:`\ell = 2 v^2 (1 - C)`. The
multiplier of :math:`\sum_i C_i \le d` is the threshold :math:`T = 2\mu^2`.
With every :math:`K \le 3` the loss is concave and, the budget being an integer,
the optimum is a 0/1 vertex: the problem is the binary program
:math:`\max \sum_i (K_i-1) v_i^2 z_i` subject to :math:`\sum_i z_i \le d`.

cvxpy is imported when the method runs, never by ``import capalloc``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from capalloc.allocation.methods.scipy_methods import APPROX_TOL
from capalloc.allocation.problems import QuadraticProblem
from capalloc.allocation.result import (
    NOT_CONVERGED,
    SUCCESS,
    AllocationResult,
    make_result,
    smallest_threshold,
)
from capalloc.allocation.solve import register_method

__all__ = ["solve_cvxpy"]

# Tolerances passed to a solver unless the caller gives its own.
_DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "CLARABEL": {
        "tol_gap_abs": 1e-10,
        "tol_gap_rel": 1e-10,
        "tol_feas": 1e-10,
        "tol_ktratio": 1e-8,
    },
    "SCS": {"eps_abs": 1e-9, "eps_rel": 1e-9, "max_iters": 100_000},
    "HIGHS": {"output_flag": False},
}
_MIP_SOLVERS = ("HIGHS", "SCIP", "GLPK_MI", "CBC", "GUROBI", "CPLEX", "MOSEK")


def _pick(cp: Any, preferred: tuple[str, ...], what: str) -> str:
    installed = cp.installed_solvers()
    for name in preferred:
        if name in installed:
            return name
    raise ValueError(
        f"method 'cvxpy' needs a solver for the {what} problem, one of "
        f"{list(preferred)}; installed: {installed}"
    )


def _solve(cp: Any, prob: Any, solver: str, options: dict[str, Any]) -> tuple[bool, str, int]:
    """Run ``prob.solve``; ``(optimal, message, iterations)`` and never an exception."""
    opts = {**_DEFAULT_OPTIONS.get(solver, {}), **options}
    try:
        with warnings.catch_warnings():  # an inaccurate solve is reported by the status
            warnings.simplefilter("ignore", UserWarning)
            prob.solve(solver=solver, **opts)
    except cp.error.SolverError as exc:
        return False, f"cvxpy solver {solver} failed: {exc}", 0
    stats = prob.solver_stats
    nit = int(stats.num_iters) if stats is not None and stats.num_iters is not None else 0
    ok = prob.status == cp.OPTIMAL
    return ok, "optimal" if ok else f"cvxpy status {prob.status!r} from {solver}", nit


def _convex_row(
    cp: Any, v: np.ndarray, K: np.ndarray, d: int, solver: str | None, options: dict[str, Any]
) -> tuple[np.ndarray, float, bool, str, int]:
    """Convex row (every ``K >= 3``), importances already scaled to max 1."""
    n = v.size
    C = cp.Variable(n)
    curved = K > 3
    a = np.where(curved, K - 3, 1.0)
    c2 = 2 * (K - 1) ** 2 * v * v / a
    terms = []
    if curved.any():
        idx = np.flatnonzero(curved)
        terms.append(c2[idx] @ cp.inv_pos(2 + cp.multiply(a[idx], C[idx])))
    if (~curved).any():
        idx = np.flatnonzero(~curved)
        terms.append(-2 * (v[idx] ** 2) @ C[idx])
    budget = cp.sum(C) <= d
    prob = cp.Problem(cp.Minimize(cp.sum(cp.hstack(terms))), [C >= 0, C <= 1, budget])
    name = solver or _pick(cp, ("CLARABEL", "SCS"), "convex conic")
    ok, msg, nit = _solve(cp, prob, name, options)
    if C.value is None:
        return np.zeros(n), 0.0, False, msg, nit
    T = float(budget.dual_value) if budget.dual_value is not None else 0.0
    return np.clip(np.asarray(C.value, float), 0.0, 1.0), max(T, 0.0), ok, msg, nit


def _concave_row(
    cp: Any, v: np.ndarray, K: np.ndarray, d: int, solver: str | None, options: dict[str, Any]
) -> tuple[np.ndarray, float, bool, str, int]:
    """Concave row (every ``K <= 3``): the binary program over 0/1 vertices."""
    n = v.size
    z = cp.Variable(n, boolean=True)
    gain = (K - 1) * v * v
    prob = cp.Problem(cp.Maximize(gain @ z), [cp.sum(z) <= d])
    name = solver or _pick(cp, _MIP_SOLVERS, "mixed-integer")
    ok, msg, nit = _solve(cp, prob, name, options)
    if z.value is None:
        return np.zeros(n), np.nan, False, msg, nit
    return np.round(np.asarray(z.value, float)).clip(0.0, 1.0) + 0.0, np.nan, ok, msg, nit


@register_method("cvxpy", problems=(QuadraticProblem,), exact=False)
def solve_cvxpy(
    problem: QuadraticProblem, *, solver: str | None = None, **solver_options: Any
) -> AllocationResult:
    r"""Reference solution of the quadratic-model allocation with cvxpy.

    .. math::

        \min_{0 \le C \le 1,\ \sum_i C_i \le d}\ \sum_{i: K_i > 3}
        \frac{2 (K_i-1)^2 v_i^2}{K_i-3}\,\mathrm{inv\_pos}\big(2 + (K_i-3) C_i\big)
        - \sum_{i: K_i = 3} 2 v_i^2 C_i

    Convex rows (every :math:`K_i \ge 3`) are solved as a conic program (CLARABEL
    by default) and the threshold is the multiplier of the budget constraint.
    Concave rows (every :math:`K_i \le 3`) are solved as the binary program of the
    0/1 vertices (HiGHS by default), exact because ``d`` is an integer. Importances
    are divided by :math:`s = \max_i v_i` before solving, which keeps the conic
    solver well conditioned; capacities are unchanged by it and the loss and the
    threshold are multiplied back by :math:`s^2`. Batched problems run row by row.

    Parameters
    ----------
    problem : QuadraticProblem
        Convex or concave rows; mixed curvature raises ``ValueError``.
    solver : str, optional
        A cvxpy solver name; default CLARABEL (convex) or HIGHS (concave).
    **solver_options
        Passed to :meth:`cvxpy.Problem.solve`; they override the default tight
        tolerances (CLARABEL ``tol_gap_abs = tol_gap_rel = tol_feas = 1e-10``).

    Returns
    -------
    AllocationResult
        ``nit``: solver iterations (summed over rows); ``status = 1`` with the
        solver's message when a solve is not optimal or fails.

    Raises
    ------
    ValueError
        For mixed curvature (some :math:`K_i < 3 < K_j` in one row).

    References
    ----------
    .. [1] Scherlis et al., "Polysemanticity and Capacity in Neural Networks",
       arXiv:2210.01892.

    Examples
    --------
    >>> from capalloc import QuadraticProblem
    >>> from capalloc.allocation.methods.cvxpy_method import solve_cvxpy
    >>> res = solve_cvxpy(QuadraticProblem([4.0, 2.0, 1.0, 0.2], d=2, kurtosis=10.0))
    >>> res.capacity.round(4).tolist()
    [1.0, 0.7619, 0.2381, 0.0]
    """
    if not isinstance(problem, QuadraticProblem):
        raise TypeError(f"problem must be a QuadraticProblem, got {type(problem).__name__}")
    V = np.atleast_2d(problem.importance)
    KK = np.atleast_2d(problem.kurtosis)
    mixed = np.any(KK < 3, axis=1) & np.any(KK > 3, axis=1)
    if mixed.any():
        raise ValueError(
            f"method 'cvxpy' handles convex (all K >= 3) or concave (all K <= 3) problems; "
            f"row(s) {np.flatnonzero(mixed)[:5].tolist()} mix both. Use method='waterfill' "
            f"or 'scipy' for mixed curvature"
        )
    import cvxpy as cp

    d = problem.d
    C = np.zeros(V.shape)
    T = np.full(V.shape[0], np.nan)
    nit, failures = 0, []
    for r in range(V.shape[0]):
        v, K = V[r], KK[r]
        pos = v > 0
        if d >= np.count_nonzero(pos) or d == 0:
            C[r] = pos if d else 0.0
            continue
        s = float(v.max())
        solve_row = _convex_row if np.all(K >= 3) else _concave_row
        c, t, ok, msg, it = solve_row(cp, v[pos] / s, K[pos], d, solver, solver_options)
        C[r, pos] = c
        T[r] = t * s * s
        nit += it
        if not ok:
            failures.append((r, msg))
    # rows without a multiplier (trivial or binary) take the smallest valid one
    fallback = np.atleast_1d(smallest_threshold(problem, C.reshape(problem.importance.shape)))
    T = np.where(np.isnan(T), fallback, T)
    status, message = SUCCESS, None
    if failures:
        status = NOT_CONVERGED
        where = f"row {failures[0][0]}: " if problem.batched else ""
        message = where + failures[0][1]
    shape = problem.importance.shape
    return make_result(
        problem,
        C.reshape(shape),
        T if problem.batched else float(T[0]),
        method="cvxpy",
        nit=nit,
        status=status,
        message=message,
        certify=APPROX_TOL,
    )
