"""Allocation problems: frozen, validated once at construction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from capalloc._lib.validation import (
    check_budget,
    importance_and_max,
    kurtosis_and_range,
    readonly,
    short,
)
from capalloc.distributions import InputLaw
from capalloc.quadratic import closed_form

__all__ = ["QuadraticProblem", "SeparableProblem", "Problem"]


@dataclass(frozen=True, repr=False, eq=False)
class QuadraticProblem:
    r"""Capacity allocation for the quadratic model.

    .. math::

        \min_{C} \sum_i \ell_i(C_i), \quad
        \ell_i(C) = \frac{2 (K_i - 1) v_i^2 (1 - C)}{2 + (K_i - 3) C},
        \quad 0 \le C_i \le 1, \quad \sum_i C_i \le d

    Parameters
    ----------
    importance : (n,) or (m, n) array_like of float
        Importances :math:`v_i \ge 0`; a 2-D array is a batch of ``m`` problems.
        The problem keeps a read-only copy, except of an array that is already
        read-only, C-contiguous float64 (``v.setflags(write=False)``, a memory-mapped
        file, another problem's ``importance``), which it uses as it is: for large inputs that saves
        a copy, and such an array must not change while the problem is in use.
    d : int
        Embedding dimension (capacity budget), ``d >= 0``.
    kurtosis : float, array_like or InputLaw, default 3
        Fourth moments :math:`K_i \ge 1`: a scalar, per feature ``(n,)``, or any
        shape that broadcasts to ``importance``. An :class:`~capalloc.distributions.InputLaw`
        gives its kurtosis.

    Attributes
    ----------
    vmax : float
        The largest importance, found by the validation (solvers use it to rescale
        importances whose squared losses would overflow).
    krange : tuple of float
        The smallest and largest kurtosis (NaN for an empty problem), found by the
        validation: the curvature of the problem without another pass.

    References
    ----------
    .. [1] Scherlis et al., "Polysemanticity and Capacity in Neural Networks",
       arXiv:2210.01892.

    Examples
    --------
    >>> from capalloc import QuadraticProblem
    >>> QuadraticProblem([3.0, 2.0, 1.0], d=1, kurtosis=10.0)
    QuadraticProblem(n=3, d=1, kurtosis in [10, 10])
    """

    importance: np.ndarray
    d: int
    kurtosis: Any = 3.0
    vmax: float = field(init=False, repr=False, compare=False, default=0.0)
    krange: tuple[float, float] = field(init=False, repr=False, compare=False, default=(1.0, 1.0))

    def __post_init__(self) -> None:
        v, vmax = importance_and_max(self.importance, ndim=(1, 2))
        object.__setattr__(self, "vmax", vmax)
        d = check_budget(self.d, "d")
        K = self.kurtosis.kurtosis if isinstance(self.kurtosis, InputLaw) else self.kurtosis
        K, klo, khi = kurtosis_and_range(K)
        object.__setattr__(self, "krange", (klo, khi))
        try:
            Kb = np.broadcast_to(K, v.shape)
        except ValueError:
            raise ValueError(
                f"kurtosis of shape {np.shape(K)} does not broadcast to importance shape {v.shape}"
            ) from None
        # a scalar kurtosis stays a read-only zero-stride view: no n-sized copy
        object.__setattr__(self, "importance", readonly(v, float, copy="shared"))
        object.__setattr__(self, "kurtosis", Kb if K.ndim == 0 else readonly(Kb, float))
        object.__setattr__(self, "d", d)

    @property
    def n(self) -> int:
        """Number of features."""
        return int(self.importance.shape[-1])

    @property
    def batched(self) -> bool:
        """Whether this is a batch of problems (2-D importance)."""
        return self.importance.ndim == 2

    @property
    def curvature(self) -> str:
        """``"convex"`` (all K >= 3), ``"concave"`` (all K <= 3) or ``"mixed"``."""
        lo, hi = self.krange
        if not lo < 3:  # NaN (no features) counts as convex
            return "convex"
        if hi <= 3:
            return "concave"
        return "mixed"

    def loss(self, C: Any) -> np.ndarray:
        r"""Per-feature optimal loss :math:`\ell_i(C_i) = 2 h_i v_i (1 - C_i)` (broadcasts)."""
        return closed_form.feature_loss(C, self.importance, self.kurtosis)

    def marginal_benefit(self, C: Any) -> np.ndarray:
        r"""Marginal benefit :math:`-\ell_i'(C_i) = 2 (K_i-1)^2 v_i^2 / (2 + (K_i-3) C_i)^2 = 2 h_i^2`."""
        return closed_form.feature_benefit(C, self.importance, self.kurtosis)

    def benefit_level(self, C: Any) -> np.ndarray:
        r"""Level :math:`h_i = \sqrt{g_i/2} = (K_i-1) v_i/(2 + (K_i-3) C_i)` of the marginal
        benefit (ranges like ``v``, where :math:`g_i` would under- or overflow)."""
        return closed_form.benefit_level(C, self.importance, self.kurtosis)

    def optimal_norms(self, C: Any) -> np.ndarray:
        r"""Optimal squared norms :math:`N_i^* = (K_i-1) v_i C_i / (2 + (K_i-3) C_i) = h_i C_i`."""
        return closed_form.feature_norm(C, self.importance, self.kurtosis)

    def __repr__(self) -> str:
        K = self.kurtosis
        batch = f"m={self.importance.shape[0]}, " if self.batched else ""
        return (
            (
                f"QuadraticProblem({batch}n={self.n}, d={self.d}, "
                f"kurtosis in [{K.min():.4g}, {K.max():.4g}])"
            )
            if K.size
            else (f"QuadraticProblem({batch}n=0, d={self.d})")
        )


@dataclass(frozen=True, repr=False, eq=False)
class SeparableProblem:
    r"""Capacity allocation for any separable per-feature loss.

    .. math::

        \min_{C} \sum_i \ell_i(C_i), \quad 0 \le C_i \le 1, \quad \sum_i C_i \le d

    Build it from a sympy expression with :meth:`from_sympy`, or give numeric
    callables directly.

    Parameters
    ----------
    loss : callable
        ``loss(C) -> (n,) ndarray``: per-feature loss at capacities ``C`` of shape ``(n,)``.
    marginal_benefit : callable
        ``marginal_benefit(C) -> (n,) ndarray``: :math:`-\ell_i'(C_i)`.
    n : int
        Number of features.
    d : int
        Capacity budget.
    curvature : str or (n,) array_like of str, default "convex"
        Per feature ``"convex"``, ``"concave"``, ``"linear"`` or ``"mixed"`` on [0, 1];
        a single string applies to all.
    norms : callable, optional
        ``norms(C)``: model-specific optimal squared norms, reported in results.

    Examples
    --------
    >>> import numpy as np
    >>> from capalloc import SeparableProblem
    >>> w = np.array([3.0, 1.0])
    >>> p = SeparableProblem(lambda C: w * (1 - C) ** 2, lambda C: 2 * w * (1 - C), n=2, d=1)
    >>> p
    SeparableProblem(n=2, d=1, curvature=convex)
    """

    loss: Callable[[np.ndarray], np.ndarray]
    marginal_benefit: Callable[[np.ndarray], np.ndarray]
    n: int
    d: int
    curvature: Any = "convex"
    norms: Callable[[np.ndarray], np.ndarray] | None = field(default=None)

    _KINDS = ("convex", "concave", "linear", "mixed")

    def __post_init__(self) -> None:
        for name in ("loss", "marginal_benefit"):
            if not callable(getattr(self, name)):
                raise TypeError(f"{name} must be callable, got {short(getattr(self, name))}")
        n = check_budget(self.n, "n")
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "d", check_budget(self.d, "d"))
        curv = np.broadcast_to(np.asarray(self.curvature, dtype=str), (n,)).copy()
        bad = set(curv.tolist()) - set(self._KINDS)
        if bad:
            raise ValueError(f"curvature must be one of {self._KINDS}, got {sorted(bad)}")
        curv.setflags(write=False)
        object.__setattr__(self, "curvature", curv)
        probe = np.asarray(self.loss(np.zeros(n)), dtype=float)
        if probe.shape != (n,):
            raise ValueError(f"loss(C) must return shape ({n},), got {probe.shape}")

    @classmethod
    def from_sympy(cls, expr: Any, C: Any, params: dict[Any, Any], d: int) -> SeparableProblem:
        r"""Build from a sympy expression ``expr`` in the symbol ``C``.

        Parameters
        ----------
        expr : sympy.Expr
            Per-feature loss :math:`\ell(C; \theta)`.
        C : sympy.Symbol
            The capacity symbol.
        params : dict of sympy.Symbol -> (n,) array_like
            Per-feature values of every other symbol in ``expr`` (scalars broadcast).
        d : int
            Capacity budget.
        """
        from capalloc.theory import compile_separable, curvature_class

        symbols = list(params)
        values = [np.asarray(params[s], dtype=float) for s in symbols]
        n = int(np.broadcast_shapes(*(v.shape for v in values), (1,))[0]) if values else 1
        values = [np.broadcast_to(v, (n,)) for v in values]
        compiled = compile_separable(expr, C, symbols)
        curv = curvature_class(compiled, values)

        def loss(c: np.ndarray) -> np.ndarray:
            return np.broadcast_to(compiled.loss(c, *values), np.shape(c)).astype(float)

        def benefit(c: np.ndarray) -> np.ndarray:
            return np.broadcast_to(compiled.marginal_benefit(c, *values), np.shape(c)).astype(float)

        return cls(loss, benefit, n=n, d=d, curvature=curv)

    @property
    def batched(self) -> bool:
        return False

    def optimal_norms(self, C: Any) -> np.ndarray:
        return np.full(np.shape(C), np.nan) if self.norms is None else self.norms(C)

    def __repr__(self) -> str:
        kinds = sorted(set(self.curvature.tolist()))
        return f"SeparableProblem(n={self.n}, d={self.d}, curvature={'/'.join(kinds)})"


Problem = QuadraticProblem | SeparableProblem
