"""The result of an allocation solve and its optimality certificate."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from capalloc._capacity import classify
from capalloc._lib.validation import readonly

__all__ = [
    "AllocationResult",
    "AllocationWarning",
    "kkt_residual",
    "level_certificate",
    "SUCCESS",
    "NOT_CONVERGED",
    "CERTIFY_TOL",
]

SUCCESS = 0
NOT_CONVERGED = 1
STATUS_MESSAGES = {SUCCESS: "optimal", NOT_CONVERGED: "did not converge"}
#: The KKT residual above which no result is reported optimal (exact methods).
CERTIFY_TOL = 1e-9


class AllocationWarning(RuntimeWarning):
    """A solver stopped without certifying optimality (see ``result.status``)."""


def relative_gap(g: Any, T: Any) -> Any:
    r"""Signed relative gap :math:`(g - T)/\max(g, T)` between marginal benefits and a
    threshold, in ``[-1, 1]`` and free of overflow (0 where ``g == T``, inf included)."""
    g, T = np.asarray(g, dtype=float), np.asarray(T, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        up = 1.0 - T / g
        down = g / T - 1.0
    return np.where(g > T, up, np.where(g < T, down, 0.0))


def kkt_residual(problem: Any, capacity: Any, threshold: Any) -> Any:
    r"""Relative KKT residual of an allocation (0 exactly at a KKT point).

    With marginal benefits :math:`g_i = -\ell_i'(C_i)` and threshold :math:`T \ge 0`
    the KKT conditions are feasibility, :math:`T (d - \sum C) = 0` and, per feature,
    :math:`C_i = \Pi_{[0,1]}(C_i + (g_i - T)/s_i)` for any :math:`s_i > 0` (zero iff
    :math:`0<C_i<1 \Rightarrow g_i = T`, :math:`C_i = 1 \Rightarrow g_i \ge T`,
    :math:`C_i = 0 \Rightarrow g_i \le T`). The residual is the largest of

    * the natural residual with the per-feature scale :math:`s_i = \max(g_i, T)`, so
      each feature's mismatch is relative to its own marginal benefit and no large
      :math:`g_j` can hide a small feature's violation;
    * the bound violations :math:`\max(-C_i, C_i - 1)`;
    * the budget excess :math:`\max(\sum C - d, 0)/\max(d, 1)`;
    * the unused budget :math:`(d - \sum C)/\max(d, 1)` when :math:`T > 0` (not scaled
      by :math:`T`: at :math:`T > 0` some feature would gain from it, however little);
    * 1 for a negative or non-finite threshold, inf for non-finite capacities.

    Every term is scale free: ``v -> s v`` leaves it unchanged. Problems with a
    ``benefit_level`` (the quadratic model: :math:`h_i = \sqrt{g_i/2}`) are compared on
    levels, :math:`(h_i - \mu)/\max(h_i, \mu)` with :math:`T = 2\mu^2`: the same
    conditions, over the whole float range of importances.

    Parameters
    ----------
    problem : QuadraticProblem or SeparableProblem
    capacity : (n,) or (m, n) array_like
    threshold : float or (m,) array_like

    Returns
    -------
    residual : float or (m,) ndarray

    Examples
    --------
    >>> import capalloc
    >>> p = capalloc.QuadraticProblem([1.0, 1.0], d=1, kurtosis=5.0)
    >>> capalloc.kkt_residual(p, [0.5, 0.5], 2 * (4 / 3) ** 2)
    0.0
    >>> linear = capalloc.QuadraticProblem([1.0, 1.0], d=1, kurtosis=3.0)  # g = 2 v^2
    >>> capalloc.kkt_residual(linear, [0.5, 0.25], 2.0)  # stationary, a quarter unused
    0.25
    """
    C = np.asarray(capacity, dtype=float)
    T = np.asarray(threshold, dtype=float)
    with np.errstate(all="ignore"):
        level = getattr(problem, "benefit_level", None)
        if level is None:
            g = np.asarray(problem.marginal_benefit(np.clip(C, 0.0, 1.0)), dtype=float)
            ref = T
        else:  # compared as levels sqrt(g/2): no square to underflow
            g = np.asarray(level(np.clip(C, 0.0, 1.0)), dtype=float)
            ref = np.sqrt(T / 2)
        valid = (T >= 0) & np.isfinite(T)
        return _residual(problem.d, C, g, ref, T > 0, valid)


def _residual(d: int, C: np.ndarray, g: np.ndarray, ref: Any, positive: Any, valid: Any) -> Any:
    """The terms of :func:`kkt_residual` from the benefits ``g`` (or levels) of ``C`` and
    their reference ``ref`` (the threshold, or its level)."""
    gap = relative_gap(g, np.asarray(ref)[..., None])
    natural = np.abs(C - np.clip(C + gap, 0.0, 1.0))
    total = np.sum(C, axis=-1)
    over = np.maximum(total - d, 0.0) / max(d, 1)
    unused = np.where(positive, np.maximum(d - total, 0.0) / max(d, 1), 0.0)
    bounds = np.maximum(np.maximum(-C, C - 1.0), 0.0)
    res = np.maximum.reduce(
        [
            np.max(natural, axis=-1, initial=0.0),
            over,
            unused,
            np.max(bounds, axis=-1, initial=0.0),
            np.where(valid, 0.0, 1.0),
        ]
    )
    bad = ~np.all(np.isfinite(C), axis=-1) | np.any(np.isnan(g), axis=-1)
    res = np.where(bad | np.isnan(res), np.inf, res)
    return float(res) if np.ndim(res) == 0 else res


def level_certificate(problem: Any, capacity: Any) -> tuple[Any, Any, Any]:
    r"""``(T, loss, kkt_residual)`` of quadratic-model capacities, on levels.

    :math:`T = 2\mu^2` with :math:`\mu = \max_{i: C_i < 1} h_i` the smallest valid
    threshold (:func:`smallest_threshold` in level form), and the residual of
    :func:`kkt_residual` against :math:`\mu` itself, so that it stays finite where
    :math:`T` overflows (importances near the top of the float range).
    """
    C = np.asarray(capacity, dtype=float)
    with np.errstate(all="ignore"):
        h = np.asarray(problem.benefit_level(np.clip(C, 0.0, 1.0)), dtype=float)
        mu = np.max(np.where(C < 1.0, h, 0.0), axis=-1, initial=0.0)
        loss = np.sum(problem.loss(C), axis=-1)
        kkt = _residual(problem.d, C, h, mu, mu > 0, np.isfinite(mu))
        T = 2 * mu * mu  # inf where the level's square overflows; kkt is on levels
    return (float(T), float(loss), kkt) if np.ndim(T) == 0 else (T, loss, kkt)


@dataclass(frozen=True, repr=False, eq=False)
class AllocationResult:
    """Outcome of :func:`capalloc.solve`.

    Attributes
    ----------
    capacity : (n,) or (m, n) ndarray
        Optimal capacities :math:`C_i` (read-only).
    norms : (n,) or (m, n) ndarray
        Optimal squared column norms :math:`N_i = \\lVert W_i\\rVert^2` (quadratic model;
        NaN where the problem has no norm model). Computed from ``capacity`` on first
        access unless the method produced them (read-only).
    loss : float or (m,) ndarray
        Optimal expected loss :math:`\\sum_i \\ell_i(C_i)`.
    threshold : float or (m,) ndarray
        Lagrange multiplier of :math:`\\sum C \\le d`: the common marginal benefit
        :math:`T` (the smallest valid one where several are).
    labels : (n,) or (m, n) ndarray of str
        ``"monosemantic"``, ``"polysemantic"`` or ``"ignored"`` (derived from
        ``capacity`` with tolerance ``label_tol`` on first access).
    method : str
        The method that produced the result.
    status : int
        0 optimal, 1 did not converge.
    message : str
    nit : int
        Iterations (method specific: segments visited, solver iterations).
    kkt_residual : float or (m,) ndarray
        Relative KKT residual (see :func:`capalloc.kkt_residual`).
    label_tol : float
        Capacities within this of 0 or 1 are labelled ignored or monosemantic.
    """

    capacity: np.ndarray
    loss: Any
    threshold: Any
    method: str
    status: int
    message: str
    nit: int
    kkt_residual: Any
    label_tol: float = 1e-9
    #: the model of the optimal norms, ``norm_model(capacity)`` (``problem.optimal_norms``):
    #: norms are always derived from the capacities held, so ``replace`` cannot stale them
    norm_model: Any = field(default=None, repr=False)

    @cached_property
    def norms(self) -> np.ndarray:
        """Optimal squared column norms (see the class docstring)."""
        if self.norm_model is None:
            return readonly(np.full(np.shape(self.capacity), np.nan))
        return readonly(np.asarray(self.norm_model(self.capacity), dtype=float), copy=False)

    @cached_property
    def labels(self) -> np.ndarray:
        """Per-feature labels (see the class docstring)."""
        return readonly(classify(self.capacity, atol=self.label_tol))

    @property
    def success(self) -> bool:
        """Whether the solver certified optimality (``status == 0``)."""
        return self.status == SUCCESS

    def __repr__(self) -> str:
        counts = {
            lab: int(np.sum(self.labels == lab))
            for lab in ("monosemantic", "polysemantic", "ignored")
        }
        loss = np.asarray(self.loss)
        loss_txt = f"{float(loss):.6g}" if loss.ndim == 0 else f"array(shape={loss.shape})"
        kkt = float(np.max(self.kkt_residual))
        return (
            f"AllocationResult(method={self.method!r}, status={self.status} "
            f"({self.message}), loss={loss_txt}, mono={counts['monosemantic']}, "
            f"poly={counts['polysemantic']}, ignored={counts['ignored']}, "
            f"kkt_residual={kkt:.2g})"
        )


def make_result(
    problem: Any,
    capacity: np.ndarray,
    threshold: Any,
    *,
    method: str,
    status: int = SUCCESS,
    message: str | None = None,
    nit: int = 0,
    loss: Any = None,
    kkt: Any = None,
    atol: float = 1e-9,
    certify: float = CERTIFY_TOL,
    copy: bool = True,
) -> AllocationResult:
    """Assemble an :class:`AllocationResult`, certified: loss, norms and KKT residual are
    computed from the problem unless given.

    A claimed success whose KKT residual (see :func:`kkt_residual`; a method passing
    its own ``kkt`` must compute that form or an upper bound of it) exceeds ``certify``
    becomes ``NOT_CONVERGED``; every result that is not a success is reported by an
    :class:`AllocationWarning`. No result is labelled optimal without its certificate.
    ``copy=False``: the caller hands over ``capacity`` (a fresh array), which is frozen
    in place instead of copied. Norms are computed from the capacities on first access.
    """
    C = np.asarray(capacity, dtype=float)
    threshold = float(threshold) if np.ndim(threshold) == 0 else np.asarray(threshold, float)
    if kkt is None:
        kkt = kkt_residual(problem, C, threshold)
    if loss is None:
        with np.errstate(all="ignore"):
            loss = np.sum(problem.loss(C), axis=-1)
    loss = float(loss) if np.ndim(loss) == 0 else np.asarray(loss, dtype=float)
    worst = float(np.max(kkt, initial=0.0))
    if status == SUCCESS and not worst <= certify:
        status = NOT_CONVERGED
        message = f"KKT residual {worst:.2g} exceeds {certify:.2g}: not certified optimal"
    message = message or STATUS_MESSAGES[status]
    if status != SUCCESS:
        warnings.warn(f"{method}: {message}", AllocationWarning, stacklevel=3)
    return AllocationResult(
        capacity=readonly(C, copy=copy),
        loss=readonly(loss),
        threshold=readonly(threshold),
        method=method,
        status=status,
        message=message,
        nit=int(nit),
        kkt_residual=readonly(kkt if np.ndim(kkt) else float(kkt)),
        label_tol=atol,
        norm_model=problem.optimal_norms,
    )


def smallest_threshold(problem: Any, capacity: Any) -> Any:
    r"""The smallest valid Lagrange multiplier: :math:`T = \max_{i: C_i < 1} g_i(C_i)`.

    At an optimum every polysemantic feature has :math:`g_i = T`, ignored ones
    :math:`g_i(0) \le T` and monosemantic ones :math:`g_i(1) \ge T`; where no
    feature is polysemantic an interval of multipliers is valid and this picks
    its lower end (0 when every feature is monosemantic).
    """
    C = np.asarray(capacity, dtype=float)
    g = np.asarray(problem.marginal_benefit(C), dtype=float)
    T = np.max(np.where(C < 1.0, g, 0.0), axis=-1, initial=0.0)
    return float(T) if np.ndim(T) == 0 else T
