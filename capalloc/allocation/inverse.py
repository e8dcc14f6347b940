r"""The inverse problem: importances from observed capacities.

The optimal allocation of the quadratic model depends on the importances only through
:math:`v/\mu` (it is invariant under :math:`v \to s v`), so importances can be recovered
up to that scale at most. Fix the water level :math:`\mu` (the ``level``; threshold
:math:`T = 2\mu^2`). Each feature's benefit level :math:`h_i(C) = (K_i-1) v_i/(2 + (K_i-3) C)`
must then satisfy the optimality conditions:

.. math::

    0 < C_i < 1:&\quad h_i(C_i) = \mu
    &&\Longleftrightarrow\ v_i = \mu\,\frac{2 + (K_i - 3)\, C_i}{K_i - 1}
    \quad\text{(identifiable)}\\
    C_i = 1:&\quad h_i(1) = v_i \ge \mu
    &&\text{(monosemantic: a lower bound)}\\
    C_i = 0:&\quad h_i(0) = \tfrac{K_i-1}{2} v_i \le \mu
    &&\text{(ignored: an upper bound)}

For :math:`K_i \ge 3` (convex features) these conditions are also sufficient: every
importance vector inside the bounds, with the identified polysemantic values, reproduces
the capacities exactly, and no other does (up to scale). For :math:`K_i < 3` they are
necessary only (the optimum of a non-convex problem is global, not only stationary): the
fit reports whether its representative vector reproduces the capacities. With the budget
slack (:math:`\sum C < d`), every feature of positive importance is monosemantic, so
monosemantic features only need :math:`v_i > 0` and ignored ones :math:`v_i = 0`.

References
----------
.. [1] A. Scherlis et al., "Polysemanticity and Capacity in Neural Networks",
   arXiv:2210.01892 (equal marginal benefit).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from capalloc._capacity import IGNORED, MONOSEMANTIC, POLYSEMANTIC, classify
from capalloc._lib.validation import (
    check_budget,
    check_capacity,
    check_kurtosis,
    check_positive,
    readonly,
)
from capalloc.allocation.problems import QuadraticProblem
from capalloc.allocation.result import AllocationWarning

__all__ = ["ImportanceFit", "fit_importance"]

#: representative importances inside the open bounds: monosemantic at this multiple of
#: the level, ignored at this fraction of their upper bound
_MONO_FACTOR = 2.0
_IGNORED_FACTOR = 0.5


@dataclass(frozen=True, repr=False, eq=False)
class ImportanceFit:
    r"""Importances that reproduce observed capacities (:func:`fit_importance`).

    Attributes
    ----------
    importance : (n,) or (m, n) ndarray
        One importance vector reproducing the capacities: the identified value for
        polysemantic features, ``2 * level`` for monosemantic ones, half the upper bound for
        ignored ones with :math:`K \ge 3` (any value inside ``[lower, upper]`` serves for
        those) and 0 for ignored ones with :math:`K < 3`.
    lower, upper : (n,) or (m, n) ndarray
        Bounds on each importance in units where the water level is ``level``
        (equal for identifiable features; ``upper`` is inf for monosemantic features).
    identifiable : (n,) or (m, n) ndarray of bool
        Features whose importance the capacities determine (polysemantic ones).
    labels : (n,) or (m, n) ndarray of str
        Regimes of the observed capacities (tolerance ``tol``).
    level : float or (m,) ndarray
        The water level :math:`\mu` fixing the scale (0 where the budget is slack).
    capacity : (n,) or (m, n) ndarray
        The optimal capacities of ``importance`` (re-solved with :func:`capalloc.solve`).
    residual : float or (m,) ndarray
        :math:`\max_i |C_i(\text{importance}) - C_i^{\text{obs}}|`.
    status : int
        0 when every row is reproduced within ``atol`` by a certified solve, else 1 (and
        an :class:`~capalloc.allocation.result.AllocationWarning`).
    message : str
    """

    importance: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    identifiable: np.ndarray
    labels: np.ndarray
    level: Any
    capacity: np.ndarray
    residual: Any
    status: int
    message: str

    def __repr__(self) -> str:
        worst = float(np.max(self.residual, initial=0.0))
        return (
            f"ImportanceFit(n={self.importance.shape[-1]}, "
            f"identifiable={int(np.count_nonzero(self.identifiable))}, "
            f"residual={worst:.2g}, status={self.status} ({self.message}))"
        )


def fit_importance(
    capacity: Any,
    d: int,
    kurtosis: Any = 3.0,
    *,
    level: float = 1.0,
    tol: float = 1e-9,
    atol: float = 1e-8,
) -> ImportanceFit:
    r"""Importances, up to scale, whose optimal allocation is the observed one.

    .. math::

        v_i = \mu\,\frac{2 + (K_i - 3)\, C_i}{K_i - 1}\ \ (0 < C_i < 1), \qquad
        v_i \ge \mu\ \ (C_i = 1), \qquad v_i \le \frac{2\mu}{K_i - 1}\ \ (C_i = 0)

    Parameters
    ----------
    capacity : (n,) or (m, n) array_like
        Observed capacities in [0, 1] (a batch of rows when 2-D).
    d : int
        Budget.
    kurtosis : float or array_like, default 3
        :math:`K_i \ge 1`, broadcasting to ``capacity``.
    level : float, default 1
        The water level :math:`\mu` that fixes the scale (the allocation cannot see it).
    tol : float, default 1e-9
        Capacities within ``tol`` of 0 or 1 count as ignored or monosemantic (use a loose
        one, e.g. 0.05, for a trained model's capacities).
    atol : float, default 1e-8
        The largest ``residual`` reported as reproduced.

    Returns
    -------
    ImportanceFit

    Raises
    ------
    ValueError
        Capacities outside [0, 1] or not finite, kurtosis below 1 or not broadcasting, a
        budget that is not a non-negative integer, a non-positive ``level``.

    Notes
    -----
    Exact (the conditions are necessary and sufficient) for :math:`K \ge 3`; for
    :math:`K < 3` the bounds are necessary conditions and ``status`` says whether the
    representative reproduces the capacities. Capacities whose sum is not ``d`` (the
    budget binds at every optimum with a polysemantic feature) are not an optimal
    allocation of any importances: ``status`` is then 1. A polysemantic feature with
    :math:`K = 1` (a loss identically 0) cannot be reproduced and is not identifiable.

    Examples
    --------
    >>> import capalloc
    >>> from capalloc.allocation.inverse import fit_importance
    >>> observed = capalloc.solve(capalloc.QuadraticProblem([4.0, 2.0, 1.0, 0.2], 2, 10.0))
    >>> fit = fit_importance(observed.capacity, 2, 10.0)
    >>> fit.status, fit.identifiable.tolist(), fit.residual < 1e-12
    (0, [False, True, True, False], True)
    >>> (fit.importance * 2.4545454545).round(4).tolist()[1:3]  # level 1: v / mu
    [2.0, 1.0]
    >>> fit.lower.round(4).tolist(), fit.upper.round(4).tolist()
    ([1.0, 0.8148, 0.4074, 0.0], [inf, 0.8148, 0.4074, 0.2222])
    """
    C = check_capacity(capacity, "capacity")
    if C.ndim not in (1, 2):
        raise ValueError(f"capacity must have 1 or 2 dimensions, got shape {C.shape}")
    d = check_budget(d, "d")
    K = check_kurtosis(kurtosis, "kurtosis")
    try:
        K = np.broadcast_to(K, C.shape)
    except ValueError:
        raise ValueError(
            f"kurtosis of shape {K.shape} does not broadcast to capacity shape {C.shape}"
        ) from None
    mu0 = check_positive(level, "level")
    tol = check_positive(tol, "tol", strict=False)
    atol = check_positive(atol, "atol", strict=False)

    labels = classify(C, atol=tol)
    mono, poly = labels == MONOSEMANTIC, labels == POLYSEMANTIC
    ign = labels == IGNORED
    # the budget binds unless the features held fall short of it (then mu = 0)
    held = np.sum(np.where(mono, 1.0, np.where(poly, C, 0.0)), axis=-1)
    slack = held < d - max(tol, 1e-12) * max(C.shape[-1], 1)
    mu = np.where(slack, 0.0, mu0)
    m = mu[..., None]
    flat = K == 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        exact = m * (2 + (K - 3) * C) / (K - 1)
        enter = 2 * m / (K - 1)  # h(0) = mu
    exact = np.where(flat | (m == 0), np.nan, exact)
    enter = np.where(flat, np.inf, enter)
    lower = np.where(poly, exact, np.where(mono, m, 0.0))
    upper = np.where(poly, exact, np.where(mono, np.inf, enter))
    # slack budget: monosemantic need only v > 0, ignored v = 0
    lower = np.where(slack[..., None] & mono, 0.0, lower)
    upper = np.where(slack[..., None] & ign, 0.0, upper)
    identifiable = poly & np.isfinite(exact)
    rep_mono = np.where(slack[..., None], mu0, _MONO_FACTOR * m)
    # ignored: inside the band when convex (sufficient there); 0 when concave, where the
    # bound is only necessary and v = 0 is ignored by every optimum
    rep_ign = np.where(np.isfinite(upper) & (K >= 3), _IGNORED_FACTOR * upper, 0.0)
    v = np.where(poly, np.where(identifiable, exact, 0.0), np.where(mono, rep_mono, rep_ign))
    v = np.where(flat & mono, mu0, v)  # K = 1: only a covering budget gives it capacity

    from capalloc.allocation.solve import solve

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AllocationWarning)
        res = solve(QuadraticProblem(v, d, K))
    got = np.asarray(res.capacity, dtype=float)
    residual = np.max(np.abs(got - C), axis=-1, initial=0.0)
    worst = float(np.max(residual, initial=0.0))
    status, message = 0, "reproduced"
    if caught or res.status != 0:
        status, message = 1, f"the re-solve is not certified ({res.message})"
    elif not worst <= atol or not np.all(identifiable | ~poly):
        status = 1
        why = (
            "features with K < 3 have necessary bounds only: other importances inside them "
            "may reproduce"
            if np.any(K < 3)
            else "not an optimal allocation at this kurtosis and budget"
        )
        message = f"not reproduced: residual {worst:.2g} > {atol:.2g} ({why})"

    if status:
        warnings.warn(f"fit_importance: {message}", AllocationWarning, stacklevel=2)
    scalar = C.ndim == 1
    return ImportanceFit(
        importance=readonly(v),
        lower=readonly(lower),
        upper=readonly(upper),
        identifiable=readonly(identifiable),
        labels=readonly(labels),
        level=float(mu) if scalar else readonly(mu),
        capacity=readonly(got),
        residual=float(residual) if scalar else readonly(residual),
        status=status,
        message=message,
    )
