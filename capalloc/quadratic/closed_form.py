r"""Closed forms of the quadratic model, one feature at a time (the only copy).

A feature with importance :math:`v \ge 0`, kurtosis :math:`K \ge 1` and capacity
:math:`C \in [0, 1]`, its squared norm chosen optimally, has

.. math::

    h(C) &= \frac{(K-1)\, v}{2 + (K-3)\, C}
    &&\text{(benefit level)}\\
    N^*(C) &= h\, C, \qquad \ell(C) = 2 h v (1 - C)
    &&\text{(optimal norm, loss)}\\
    g(C) &= -\ell'(C) = 2 h^2, \qquad
    \ell''(C) = \frac{4 (K-3)\, h^2}{2 + (K-3)\, C}
    &&\text{(marginal benefit, curvature)}

and, where the marginal benefit is held at :math:`2\mu^2` (water-filling, convex
features :math:`K > 3`),

.. math::

    C(\mu) = \Pi_{[0,1]}\Big(\frac{(K-1) v/\mu - 2}{K-3}\Big)
           = \Pi_{[0,1]}\big(x + b\,(x - 1)\big),\quad x = v/\mu,\ b = \frac{2}{K-3},

monosemantic for :math:`\mu \le v`, ignored for :math:`\mu \ge (K-1) v / 2`, and a
unit step at :math:`\mu = v` when :math:`K = 3`. Between breakpoints it is affine in
:math:`1/\mu`: :math:`C = a/\mu - b` with :math:`a = (K-1) v/(K-3)`.

Every solver, the certificate, sensitivity and the problem classes evaluate these
through this module. The scalar forms (``*_scalar``) are plain Python so that the numba kernels compile them
unchanged. The sympy derivation in :mod:`capalloc.theory` is the independent check
the tests hold these formulas to. At :math:`K = 1` the loss vanishes identically and
the minimum-norm minimiser :math:`N^* = 0` is used (the formulas give 0/0 at
:math:`C = 1`).

References
----------
.. [1] A. Scherlis, K. Sachan, A. S. Jermyn, J. Benton and B. Shlegeris,
   "Polysemanticity and Capacity in Neural Networks", arXiv:2210.01892.

Examples
--------
>>> from capalloc.quadratic import closed_form as cf
>>> float(cf.per_feature_loss(0.5, 1.0, 5.0)), float(cf.marginal_benefit(0.0, 1.0, 3.0))
(1.3333333333333333, 2.0)
>>> cf.capacity_at(2.0, [4.0, 2.0, 1.0], 10.0).round(4).tolist()
[1.0, 1.0, 0.3571]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from capalloc._lib.validation import check_capacity, check_importance, check_kurtosis

__all__ = [
    "SNAP",
    "benefit_level",
    "breakpoints",
    "capacity_at",
    "capacity_scalar",
    "curvature",
    "entry_scalar",
    "feature_benefit",
    "feature_curvature",
    "feature_loss",
    "feature_norm",
    "level_scalar",
    "marginal_benefit",
    "optimal_norm",
    "per_feature_loss",
    "segment_coefficients",
    "segment_scalar",
]

#: capacities this close (times ``1 + |b|``, the rounding scale of ``x + b (x - 1)``)
#: to 0 or 1 are set to the bound, so that a feature saturating at ``mu`` gets exactly 1
SNAP = 4.0 * float(np.finfo(np.float64).eps)


# ---------------------------------------------------------------------------
# Array forms (no validation: the solvers' inner calls)
# ---------------------------------------------------------------------------


def benefit_level(C: Any, v: Any, K: Any) -> np.ndarray:
    r""":math:`h = (K-1) v / (2 + (K-3) C)`, 0 where :math:`K = 1`; broadcasts.

    :math:`h = \sqrt{g/2}` ranges like ``v`` where :math:`g` would under- or overflow.
    """
    C = np.asarray(C, dtype=float)
    K = np.asarray(K, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = np.asarray(v, dtype=float) * ((K - 1) / (2 + (K - 3) * C))
    return np.where(K == 1, 0.0, h)


def feature_loss(C: Any, v: Any, K: Any) -> np.ndarray:
    r""":math:`\ell(C) = 2 h v (1 - C) = 2 (K-1) v^2 (1 - C) / (2 + (K-3) C)`; broadcasts."""
    C = np.asarray(C, dtype=float)
    return 2 * benefit_level(C, v, K) * np.asarray(v, dtype=float) * (1 - C)


def feature_benefit(C: Any, v: Any, K: Any) -> np.ndarray:
    r""":math:`g(C) = -\ell'(C) = 2 h^2`; broadcasts."""
    return 2 * benefit_level(C, v, K) ** 2


def feature_norm(C: Any, v: Any, K: Any) -> np.ndarray:
    r""":math:`N^*(C) = h C`; broadcasts."""
    C = np.asarray(C, dtype=float)
    return benefit_level(C, v, K) * C


def feature_curvature(C: Any, v: Any, K: Any) -> np.ndarray:
    r""":math:`\ell''(C) = 4 (K-3) h^2 / (2 + (K-3) C)`; its sign is that of :math:`K - 3`."""
    C = np.asarray(C, dtype=float)
    K = np.asarray(K, dtype=float)
    h = benefit_level(C, v, K)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 4 * (K - 3) * h * h / (2 + (K - 3) * C)
    return np.where(K == 1, 0.0, out)


def breakpoints(v: Any, K: Any) -> tuple[np.ndarray, np.ndarray]:
    r"""Levels where a feature changes regime: saturates at :math:`\mu = v`, enters at
    :math:`\mu = (K-1) v / 2` (both :math:`v` when :math:`K = 3`)."""
    v = np.asarray(v, dtype=float)
    return v, (np.asarray(K, dtype=float) - 1) * v / 2


def segment_coefficients(v: Any, K: Any) -> tuple[np.ndarray, np.ndarray]:
    r"""``(a, b)`` with :math:`C(\mu) = a/\mu - b` on a feature's polysemantic band:
    :math:`a = (K-1) v / (K-3)`, :math:`b = 2 / (K-3)` (``K != 3``)."""
    K = np.asarray(K, dtype=float)
    return (K - 1) * np.asarray(v, dtype=float) / (K - 3), 2 / (K - 3)


def capacity_at(mu: float, v: Any, K: Any, share: float = 0.0) -> np.ndarray:
    r"""Capacities :math:`C(\mu)` of features with :math:`K \ge 3` at level ``mu > 0``.

    Evaluated as ``x + b (x - 1)``, ``x = v/mu``: ``x - 1`` is exact at the saturation
    breakpoint, so features with ``K`` near 3 carry only the rounding of ``x``.
    Values within :data:`SNAP` ``(1 + b)`` of a bound snap to it. A ``K = 3`` feature
    with ``v == mu`` gets ``share`` (0 if NaN); ``v = 0`` gets 0.
    """
    v = np.asarray(v, dtype=float)
    K = np.asarray(K, dtype=float)
    linear = K == 3
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        b = 2 / np.where(linear, 1.0, K - 3)
        x = v / mu
        c = x + b * (x - 1)
    snap = SNAP * (1 + np.abs(b))
    c = np.where(c < snap, 0.0, np.where(c > 1 - snap, 1.0, c))
    tie = 0.0 if np.isnan(share) else share
    step = np.where(v > mu, 1.0, np.where(v == mu, tie, 0.0))
    return np.where(v == 0, 0.0, np.where(linear, step, c))


# ---------------------------------------------------------------------------
# Scalar forms, compiled by the numba kernels (selects only, no division by zero,
# so that loops over them vectorise)
# ---------------------------------------------------------------------------


def capacity_scalar(vi, Ki, mu, share):  # noqa: ANN001, ANN201 - compiled by numba
    """:func:`capacity_at` for one feature (``share`` is NaN-safe: NaN counts as 0)."""
    linear = Ki == 3.0
    b = 2.0 / (1.0 if linear else Ki - 3.0)
    x = vi / mu  # 1 exactly where the feature saturates: no cancellation there
    c = x + b * (x - 1.0)
    snap = SNAP * (1.0 + abs(b))
    c = 0.0 if c < snap else (1.0 if c > 1.0 - snap else c)
    tie = share if share == share else 0.0
    step = 1.0 if vi > mu else (tie if vi == mu else 0.0)
    return 0.0 if vi == 0.0 else (step if linear else c)


def entry_scalar(vi, Ki):  # noqa: ANN001, ANN201 - compiled by numba
    """Level ``(K - 1) v / 2`` at which a convex feature enters (:func:`breakpoints`)."""
    return (Ki - 1.0) * vi / 2.0


def segment_scalar(vi, Ki):  # noqa: ANN001, ANN201 - compiled by numba
    """:func:`segment_coefficients` ``(a, b)`` of one feature with ``K != 3``."""
    return (Ki - 1.0) * vi / (Ki - 3.0), 2.0 / (Ki - 3.0)


def level_scalar(v, K, C):  # noqa: ANN001, ANN201 - compiled by numba
    """:func:`benefit_level` for one feature."""
    flat = K == 1.0
    return 0.0 if flat else v * ((K - 1.0) / (1.0 if flat else 2.0 + (K - 3.0) * C))


# ---------------------------------------------------------------------------
# Public, validated forms
# ---------------------------------------------------------------------------


def _checked(C: Any, v: Any, K: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, ...]]:
    C = check_capacity(C, "C")
    v = check_importance(v, "v", ndim=None)
    K = check_kurtosis(K, "K")
    return C, v, K, np.broadcast_shapes(C.shape, v.shape, K.shape)


def _public(form: Any, C: Any, v: Any, K: Any) -> Any:
    C, v, K, shape = _checked(C, v, K)
    return np.broadcast_to(form(C, v, K), shape)[()]


def optimal_norm(C: Any, v: Any, K: Any) -> Any:
    r"""Optimal squared norm of a feature at capacity ``C``.

    .. math::

        N^*(C) = \arg\min_N L(N, C) = \frac{(K-1) v C}{2 + (K-3) C}

    Parameters
    ----------
    C, v, K : array_like of float
        Capacities in [0, 1], importances :math:`v \ge 0` and kurtosis :math:`K \ge 1`,
        broadcast together.

    Returns
    -------
    ndarray or float
        :math:`N^*` with the broadcast shape (a numpy scalar for scalar inputs).
        At :math:`K = 1` the per-feature loss is zero and the minimum-norm
        minimiser 0 is returned (at :math:`C = 1` every :math:`N` is optimal).

    Examples
    --------
    >>> from capalloc.theory import optimal_norm
    >>> [round(float(x), 6) for x in optimal_norm([0.0, 0.5, 1.0], 2.0, 5.0)]
    [0.0, 1.333333, 2.0]
    """
    return _public(feature_norm, C, v, K)


def per_feature_loss(C: Any, v: Any, K: Any) -> Any:
    r"""Loss of one feature at capacity ``C`` with its norm chosen optimally.

    .. math::

        \ell(C) = \frac{2 (K-1) v^2 (1 - C)}{2 + (K-3) C},
        \qquad \ell(0) = (K-1) v^2, \quad \ell(1) = 0

    Parameters
    ----------
    C, v, K : array_like of float
        Capacities in [0, 1], importances :math:`v \ge 0` and kurtosis :math:`K \ge 1`,
        broadcast together.

    Returns
    -------
    ndarray or float
        :math:`\ell(C)` with the broadcast shape.

    Examples
    --------
    >>> from capalloc.theory import per_feature_loss
    >>> [round(float(x), 6) for x in per_feature_loss([0.0, 1.0], 2.0, 5.0)]
    [16.0, 0.0]
    """
    return _public(feature_loss, C, v, K)


def marginal_benefit(C: Any, v: Any, K: Any) -> Any:
    r"""Marginal benefit of capacity, :math:`-\ell'(C)`.

    .. math::

        -\ell'(C) = \frac{2 (K-1)^2 v^2}{(2 + (K-3) C)^2}

    Parameters
    ----------
    C, v, K : array_like of float
        Capacities in [0, 1], importances :math:`v \ge 0` and kurtosis :math:`K \ge 1`,
        broadcast together.

    Returns
    -------
    ndarray or float
        :math:`-\ell'(C)` with the broadcast shape.

    Examples
    --------
    >>> from capalloc.theory import marginal_benefit
    >>> round(float(marginal_benefit(0.0, 1.0, 3.0)), 6)  # K = 3: constant 2 v^2
    2.0
    """
    return _public(feature_benefit, C, v, K)


def curvature(C: Any, v: Any, K: Any) -> Any:
    r"""Second derivative of the per-feature loss; its sign is the sign of :math:`K - 3`.

    .. math::

        \ell''(C) = \frac{4 (K-1)^2 (K-3) v^2}{(2 + (K-3) C)^3}

    Parameters
    ----------
    C, v, K : array_like of float
        Capacities in [0, 1], importances :math:`v \ge 0` and kurtosis :math:`K \ge 1`,
        broadcast together.

    Returns
    -------
    ndarray or float
        :math:`\ell''(C)` with the broadcast shape.

    Examples
    --------
    >>> import numpy as np
    >>> from capalloc.theory import curvature
    >>> np.sign(curvature(0.5, 1.0, [2.0, 3.0, 4.0])).tolist()
    [-1.0, 0.0, 1.0]
    """
    return _public(feature_curvature, C, v, K)
