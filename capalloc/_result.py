"""The result of an allocation solve and its optimality certificate."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Any

import numpy as np

from ._capacity import classify
from ._validation import readonly

__all__ = ["AllocationResult", "AllocationWarning", "kkt_residual", "SUCCESS", "NOT_CONVERGED"]

SUCCESS = 0
NOT_CONVERGED = 1
STATUS_MESSAGES = {SUCCESS: "optimal", NOT_CONVERGED: "did not converge"}


class AllocationWarning(RuntimeWarning):
    """A solver stopped without certifying optimality (see ``result.status``)."""

def kkt_residual(problem: Any, capacity: Any, threshold: Any) -> Any:
    r"""Relative KKT residual of an allocation (0 at a KKT point).

    With marginal benefits :math:`g_i = -\ell_i'(C_i)` and threshold
    :math:`T \ge 0`, the conditions are feasibility, :math:`T (d - \sum C) = 0`
    and :math:`C_i = \Pi_{[0,1]}(C_i + (g_i - T)/s)` (the natural residual,
    zero iff :math:`0<C_i<1 \Rightarrow g_i = T`, :math:`C_i = 1 \Rightarrow g_i \ge T`,
    :math:`C_i = 0 \Rightarrow g_i \le T`). ``s`` is the largest of ``T`` and the
    :math:`g_i`, so the residual is in units of capacity and scale free; the budget
    excess :math:`\max(\sum C - d, 0)` and the unused budget
    :math:`T (d - \sum C) / s` are divided by ``max(d, 1)``.

    Parameters
    ----------
    problem : QuadraticProblem or SeparableProblem
    capacity : (n,) or (m, n) array_like
    threshold : float or (m,) array_like

    Returns
    -------
    residual : float or (m,) ndarray
    """
    C = np.asarray(capacity, dtype=float)
    T = np.asarray(threshold, dtype=float)
    g = np.asarray(problem.marginal_benefit(np.clip(C, 0.0, 1.0)), dtype=float)
    scale = np.maximum(np.max(g, axis=-1, initial=0.0), T)
    scale = np.where(scale > 0, scale, 1.0)
    Ts = (T / scale)[..., None]
    gs = g / scale[..., None]
    natural = np.abs(C - np.clip(C + gs - Ts, 0.0, 1.0))
    over = np.maximum(np.sum(C, axis=-1) - problem.d, 0.0) / max(problem.d, 1)
    bounds = np.maximum(np.maximum(-C, C - 1.0), 0.0)
    comp = np.abs(Ts[..., 0] * (problem.d - np.sum(C, axis=-1))) / max(problem.d, 1)
    comp = np.where(np.sum(C, axis=-1) >= min(problem.d, C.shape[-1]) - 1e-12, 0.0, comp)
    res = np.maximum.reduce([np.max(natural, axis=-1, initial=0.0), over,
                             np.max(bounds, axis=-1, initial=0.0), comp,
                             np.maximum(-T, 0.0)])
    return float(res) if np.ndim(res) == 0 else res


@dataclass(frozen=True, repr=False)
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
    #: the norms, or a function of no arguments computing them (see ``norms``)
    norms_source: Any = field(default=None, repr=False, compare=False)

    @cached_property
    def norms(self) -> np.ndarray:
        """Optimal squared column norms (see the class docstring)."""
        source = self.norms_source() if callable(self.norms_source) else self.norms_source
        return readonly(np.asarray(source, dtype=float), copy=not callable(self.norms_source))

    @cached_property
    def labels(self) -> np.ndarray:
        """Per-feature labels (see the class docstring)."""
        return readonly(classify(self.capacity, atol=self.label_tol))

    @property
    def success(self) -> bool:
        """Whether the solver certified optimality (``status == 0``)."""
        return self.status == SUCCESS

    def __repr__(self) -> str:
        counts = {lab: int(np.sum(self.labels == lab)) for lab in ("monosemantic", "polysemantic",
                                                                   "ignored")}
        loss = np.asarray(self.loss)
        loss_txt = f"{float(loss):.6g}" if loss.ndim == 0 else f"array(shape={loss.shape})"
        kkt = float(np.max(self.kkt_residual))
        return (f"AllocationResult(method={self.method!r}, status={self.status} "
                f"({self.message}), loss={loss_txt}, mono={counts['monosemantic']}, "
                f"poly={counts['polysemantic']}, ignored={counts['ignored']}, "
                f"kkt_residual={kkt:.2g})")


def make_result(problem: Any, capacity: np.ndarray, threshold: Any, *, method: str,
                status: int = SUCCESS, message: str | None = None, nit: int = 0,
                loss: Any = None, norms: Any = None, kkt: Any = None,
                atol: float = 1e-9, certify: float | None = None,
                copy: bool = True) -> AllocationResult:
    """Assemble an :class:`AllocationResult`; loss, norms and KKT residual are computed
    from the problem unless given.

    ``certify``: for approximate methods, a claimed success whose KKT residual
    exceeds this becomes ``NOT_CONVERGED``, so no result is reported optimal
    without a certificate. ``copy=False``: the caller hands over ``capacity`` (a fresh
    array), which is frozen in place instead of copied. Without ``norms`` they are
    computed from the problem on first access.
    """
    C = np.asarray(capacity, dtype=float)
    threshold = float(threshold) if np.ndim(threshold) == 0 else np.asarray(threshold, float)
    if loss is None:
        loss = np.sum(problem.loss(C), axis=-1)
    if kkt is None:
        kkt = kkt_residual(problem, C, threshold)
    loss = float(loss) if np.ndim(loss) == 0 else np.asarray(loss, dtype=float)
    worst = float(kkt) if np.ndim(kkt) == 0 else float(np.max(kkt, initial=0.0))
    if certify is not None:  # an unused budget at T > 0 is a failure however small T is
        npos = np.count_nonzero(np.asarray(problem.marginal_benefit(np.zeros(C.shape))) > 0,
                                axis=-1)
        unused = (np.minimum(problem.d, npos) - np.sum(C, axis=-1)) / max(problem.d, 1)
        worst = max(worst, float(np.max(np.where(np.asarray(threshold) > 0, unused, 0.0),
                                        initial=0.0)))
    if certify is not None and status == SUCCESS and not worst <= certify:
        status = NOT_CONVERGED
        message = f"KKT residual {worst:.2g} exceeds {certify:.2g}: not certified optimal"
    C = readonly(C, copy=copy)
    return AllocationResult(
        capacity=C,
        loss=readonly(loss),
        threshold=readonly(threshold),
        method=method,
        status=status,
        message=message or STATUS_MESSAGES[status],
        nit=int(nit),
        kkt_residual=readonly(kkt if np.ndim(kkt) else float(kkt)),
        label_tol=atol,
        norms_source=partial(problem.optimal_norms, C) if norms is None else norms,
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
