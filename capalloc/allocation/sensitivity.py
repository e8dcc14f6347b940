r"""How the optimal allocation of the quadratic model moves with its parameters.

For kurtosis :math:`K_i > 3` the optimum is

.. math::

    C_i = \Pi_{[0,1]}\Big(\frac{(K_i - 1) v_i/\mu - 2}{K_i - 3}\Big),
    \qquad \sum_i C_i = d, \qquad T = 2\mu^2 .

Inside a regime (the sets :math:`M` of monosemantic, :math:`P` of polysemantic
and of ignored features held fixed) the budget equation restricted to
:math:`P` is linear in :math:`1/\mu`:

.. math::

    \frac{1}{\mu} \sum_{i\in P} a_i - \sum_{i \in P} b_i = d - |M|,
    \qquad a_i = \frac{(K_i-1) v_i}{K_i-3}, \quad b_i = \frac{2}{K_i-3},

so :math:`\mu = \sum_P a_i / (d - |M| + \sum_P b_i)` and every derivative
follows in closed form (the implicit-function theorem applied to
:math:`\sum_i C_i(\mu; v, K) = d`). Derivatives of the optimal loss follow from
the envelope theorem: :math:`\partial L/\partial v_j = \partial\ell_j/\partial v_j`
and :math:`\partial L/\partial K_j = \partial\ell_j/\partial K_j` at fixed
capacities, and :math:`\partial L/\partial d = -T` (``d`` treated as continuous).

References
----------
.. [1] A. Scherlis et al., "Polysemanticity and Capacity in Neural Networks",
   arXiv:2210.01892 (equal marginal benefit; regimes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from capalloc._capacity import IGNORED, MONOSEMANTIC, POLYSEMANTIC
from capalloc._lib.validation import readonly
from capalloc.allocation.problems import QuadraticProblem
from capalloc.allocation.result import AllocationResult
from capalloc.quadratic import closed_form

__all__ = ["Sensitivity", "sensitivity"]


@dataclass(frozen=True, repr=False, eq=False)
class Sensitivity:
    r"""Derivatives of the quadratic-model optimum inside its current regime.

    ``v`` is the importance, ``K`` the per-feature kurtosis, ``d`` the budget
    (treated as continuous), :math:`\mu` the water level
    (:math:`C_i = 1 \Leftrightarrow v_i \ge \mu`), :math:`T = 2\mu^2` the
    threshold and ``loss`` the optimal expected loss. Jacobians are indexed
    ``[i, j]`` = derivative of the quantity of feature ``i`` with respect to
    the parameter of feature ``j``.

    Attributes
    ----------
    capacity : (n,) ndarray
        Optimal capacities.
    labels : (n,) ndarray of str
        The regime of each feature.
    mu, threshold, loss : float
        :math:`\mu` (NaN when no feature is polysemantic and the budget binds:
        an interval of values is then valid), :math:`T` and the loss.
    dC_dv, dC_dK : (n, n) ndarray
        :math:`\partial C_i/\partial v_j`, :math:`\partial C_i/\partial K_j`.
    dC_dd : (n,) ndarray
        :math:`\partial C_i/\partial d`.
    dmu_dv, dmu_dK, dT_dv, dT_dK, dloss_dv, dloss_dK : (n,) ndarray
        Gradients of :math:`\mu`, :math:`T` and the loss.
    dmu_dd, dT_dd, dloss_dd : float
        Derivatives with respect to ``d``.
    regime_boundaries : (n, 2) ndarray
        For each feature, the importances ``(lower, upper)`` at which it leaves
        its regime when only its own importance moves (to the regime below /
        above: monosemantic > polysemantic > ignored), with :math:`\mu` moving
        along. NaN where there is no regime on that side. Exact while no
        other feature changes regime first, i.e. when it lies inside
        ``regime_interval``.
    regime_interval : (n, 2) ndarray
        For each feature, the range of its importance (others fixed) over which
        every label stays the same: where all the derivatives above hold
        (``inf`` where no change ever comes, 0 at the bottom of the domain).
    """

    capacity: np.ndarray
    labels: np.ndarray
    mu: float
    loss: float
    dC_dv: np.ndarray
    dC_dK: np.ndarray
    dC_dd: np.ndarray
    dmu_dv: np.ndarray
    dmu_dK: np.ndarray
    dmu_dd: float
    dloss_dv: np.ndarray
    dloss_dK: np.ndarray
    dloss_dd: float
    regime_boundaries: np.ndarray
    regime_interval: np.ndarray

    @property
    def threshold(self) -> float:
        r""":math:`T = 2\mu^2`."""
        return 2 * self.mu * self.mu

    @property
    def dT_dv(self) -> np.ndarray:
        r""":math:`\partial T/\partial v_j = 4 \mu\, \partial \mu/\partial v_j`."""
        return readonly(4 * self.mu * self.dmu_dv)

    @property
    def dT_dK(self) -> np.ndarray:
        r""":math:`\partial T/\partial K_j`."""
        return readonly(4 * self.mu * self.dmu_dK)

    @property
    def dT_dd(self) -> float:
        r""":math:`\partial T/\partial d`."""
        return 4 * self.mu * self.dmu_dd

    @property
    def dC_dK_common(self) -> np.ndarray:
        """:math:`dC_i/dK` when every kurtosis moves together (row sums of ``dC_dK``)."""
        return self.dC_dK.sum(axis=1)

    @property
    def dloss_dK_common(self) -> float:
        """:math:`dL/dK` when every kurtosis moves together."""
        return float(self.dloss_dK.sum())

    def __repr__(self) -> str:
        counts = {
            lab: int(np.sum(self.labels == lab)) for lab in (MONOSEMANTIC, POLYSEMANTIC, IGNORED)
        }
        return (
            f"Sensitivity(n={self.capacity.size}, mono={counts[MONOSEMANTIC]}, "
            f"poly={counts[POLYSEMANTIC]}, ignored={counts[IGNORED]}, mu={self.mu:.6g}, "
            f"dmu_dd={self.dmu_dd:.6g}, dloss_dd={self.dloss_dd:.6g})"
        )


def sensitivity(problem: QuadraticProblem, result: AllocationResult | None = None) -> Sensitivity:
    r"""Derivatives of the optimal allocation with respect to ``v``, ``K`` and ``d``.

    .. math::

        \mu = \frac{\sum_{i\in P} (K_i-1) v_i/(K_i-3)}{d - |M| + \sum_{i\in P} 2/(K_i-3)},
        \qquad
        \frac{\partial \mu}{\partial v_j} = \frac{(K_j-1)/(K_j-3)}{d - |M| + \sum_{P} 2/(K_i-3)}
        \quad (j \in P)

    Parameters
    ----------
    problem : QuadraticProblem
        An unbatched problem with every :math:`K_i > 3` (the convex case, where
        the optimum is unique and smooth inside a regime).
    result : AllocationResult, optional
        Its solution; solved with :func:`capalloc.solve` when omitted.

    Returns
    -------
    Sensitivity

    Notes
    -----
    The regime is read from ``result.labels``. One-sided derivatives are
    returned on a regime boundary (a feature exactly at :math:`v_i = \mu` is
    counted monosemantic). With the budget slack (fewer features than ``d``)
    :math:`\mu = T = 0` and nothing moves. With the budget binding but no
    polysemantic feature, :math:`\mu` is any value between the largest
    :math:`(K_j-1)v_j/2` of the ignored and the smallest :math:`v_i` of the
    monosemantic features: ``mu`` and its derivatives are NaN, ``dloss_dd`` is
    NaN (the loss has a kink in ``d``), and the boundaries use the ends of
    that interval.

    References
    ----------
    .. [1] Scherlis et al., arXiv:2210.01892.

    Examples
    --------
    >>> import capalloc
    >>> from capalloc.allocation.sensitivity import sensitivity
    >>> p = capalloc.QuadraticProblem([4.0, 2.0, 1.0, 0.2], d=2, kurtosis=10.0)
    >>> s = sensitivity(p)
    >>> s
    Sensitivity(n=4, mono=1, poly=2, ignored=1, mu=2.45455, dmu_dd=-1.56198, dloss_dd=-12.0496)
    >>> s.dmu_dv.round(4).tolist()
    [0.0, 0.8182, 0.8182, 0.0]
    >>> s.regime_boundaries.round(4).tolist()
    [[2.4545, nan], [0.2222, 4.5], [0.4444, 9.0], [nan, 0.5455]]
    >>> s.regime_interval.round(4).tolist()  # feature 0 turns polysemantic before 1 reaches 4.5
    [[2.4545, inf], [0.2222, 3.8889], [0.4444, 2.8889], [0.0, 0.5455]]
    """
    if not isinstance(problem, QuadraticProblem):
        raise TypeError(f"problem must be a QuadraticProblem, got {type(problem).__name__}")
    if problem.batched:
        raise ValueError(f"problem must be unbatched (1-D importance), got {problem!r}")
    K = np.asarray(problem.kurtosis, dtype=float)
    if K.size and K.min() <= 3:
        raise ValueError(
            f"kurtosis must be > 3 for every feature (the convex case), got min {K.min()!r}"
        )
    if result is None:
        from capalloc.allocation.solve import solve

        result = solve(problem)
    C = np.asarray(result.capacity, dtype=float)
    if C.shape != problem.importance.shape:
        raise ValueError(
            f"result.capacity must have shape {problem.importance.shape}, got {C.shape}"
        )
    v = np.asarray(problem.importance, dtype=float)
    d = problem.d
    n = v.size
    labels = np.asarray(result.labels).copy()
    mono, poly = labels == MONOSEMANTIC, labels == POLYSEMANTIC
    ign = ~(mono | poly)

    # envelope theorem: derivatives of the optimal loss at fixed capacities
    den = 2 + (K - 3) * C
    dloss_dv = 4 * (K - 1) * v * (1 - C) / den
    dloss_dK = 4 * v * v * (1 - C) ** 2 / den**2
    loss = float(np.sum(problem.loss(C)))

    fixed = {"capacity": C, "labels": labels, "loss": loss, "dloss_dv": dloss_dv}
    fixed["dloss_dK"] = dloss_dK
    still = {"dC_dv": np.zeros((n, n)), "dC_dK": np.zeros((n, n)), "dC_dd": np.zeros(n)}
    bounds = np.full((n, 2), np.nan)

    binding = np.sum(C) >= min(d, int(np.count_nonzero(v))) - 1e-9 and d < np.count_nonzero(v)
    if not binding:  # every feature with v > 0 is monosemantic, nothing is scarce
        bounds[mono, 0] = 0.0
        bounds[~mono, 1] = 0.0
        zero = np.zeros(n)
        return _finish(
            fixed, bounds, mu=0.0, dmu_dv=zero, dmu_dK=zero, dmu_dd=0.0, dloss_dd=0.0, **still
        )

    if not poly.any():  # mu only known to lie in [lo, hi]
        lo = float(np.max(closed_form.breakpoints(v[ign], K[ign])[1], initial=0.0))
        hi = float(np.min(v[mono], initial=np.inf))
        bounds[mono, 0] = lo
        bounds[ign, 1] = 2 * hi / (K[ign] - 1)
        nan = np.full(n, np.nan)
        return _finish(
            fixed,
            bounds,
            mu=np.nan,
            dmu_dv=nan,
            dmu_dK=nan,
            dmu_dd=np.nan,
            dloss_dd=np.nan,
            **still,
        )

    Kp, vp = K[poly], v[poly]
    a, b = closed_form.segment_coefficients(vp, Kp)
    denom = (d - np.count_nonzero(mono)) + b.sum()
    mu = float(a.sum() / denom)

    dmu_dv, dmu_dK = np.zeros(n), np.zeros(n)
    dmu_dv[poly] = (Kp - 1) / (Kp - 3) / denom
    dmu_dK[poly] = 2 * (mu - vp) / ((Kp - 3) ** 2 * denom)
    dmu_dd = -mu / denom

    # C_i = ((K_i - 1) v_i / mu - 2) / (K_i - 3) on P
    dC_dmu = np.zeros(n)
    dC_dmu[poly] = -(Kp - 1) * vp / ((Kp - 3) * mu * mu)
    idx = np.flatnonzero(poly)
    dC_dv, dC_dK = still["dC_dv"], still["dC_dK"]
    dC_dv[idx, :] = np.outer(dC_dmu[poly], dmu_dv)
    dC_dv[idx, idx] += (Kp - 1) / ((Kp - 3) * mu)
    dC_dK[idx, :] = np.outer(dC_dmu[poly], dmu_dK)
    dC_dK[idx, idx] += 2 * (1 - vp / mu) / (Kp - 3) ** 2
    dC_dd = dC_dmu * dmu_dd

    # own-importance boundaries: mu is affine in v_j (slope dmu_dv[j] < 1) inside the regime
    bounds[mono, 0] = mu
    bounds[ign, 1] = 2 * mu / (K[ign] - 1)
    s = dmu_dv[poly]
    bounds[poly, 1] = vp + (mu - vp) / (1 - s)
    r = 2 / (Kp - 1)
    bounds[poly, 0] = vp + (r * mu - vp) / (1 - r * s)

    # the whole regime holds while mu stays between the others' breakpoints
    interval = _own_interval(bounds)
    saturate, enter = closed_form.breakpoints(v, K)
    up_break = np.where(mono, saturate, np.where(poly, enter, np.inf))  # mu rising past
    down_break = np.where(poly, saturate, np.where(ign, enter, -np.inf))  # mu falling past
    for pos, j in enumerate(idx):
        others = np.arange(n) != j
        mu_hi = np.min(up_break[others], initial=np.inf)
        mu_lo = np.max(down_break[others], initial=-np.inf)
        interval[j, 1] = min(interval[j, 1], v[j] + (mu_hi - mu) / s[pos])
        interval[j, 0] = max(interval[j, 0], v[j] + (mu_lo - mu) / s[pos])

    return _finish(
        fixed,
        bounds,
        interval,
        mu=mu,
        dC_dv=dC_dv,
        dC_dK=dC_dK,
        dC_dd=dC_dd,
        dmu_dv=dmu_dv,
        dmu_dK=dmu_dK,
        dmu_dd=dmu_dd,
        dloss_dd=-2 * mu * mu,
    )


def _own_interval(bounds: np.ndarray) -> np.ndarray:
    """Own-regime range of each importance: the boundaries, with 0 and inf where none."""
    interval = bounds.copy()
    interval[np.isnan(interval[:, 0]), 0] = 0.0
    interval[np.isnan(interval[:, 1]), 1] = np.inf
    return interval


def _finish(
    fixed: dict[str, Any], bounds: np.ndarray, interval: np.ndarray | None = None, **fields: Any
) -> Sensitivity:
    """The :class:`Sensitivity`, arrays read-only; ``interval`` defaults to the own-regime one."""
    if interval is None:
        interval = _own_interval(bounds)
    values = {**fixed, **fields, "regime_boundaries": bounds, "regime_interval": interval}
    frozen: dict[str, Any] = {
        k: readonly(x) if isinstance(x, np.ndarray) else float(x) for k, x in values.items()
    }
    return Sensitivity(**frozen)
