r"""Symbolic derivations behind the allocation problem (the only sympy user).

Everything here starts from the capacity form of the quadratic-model loss of one
feature with importance :math:`v`, kurtosis :math:`K = E[x^4]`, squared norm
:math:`N = |W_i|^2` and capacity :math:`C`,

.. math::

    L(N, C) = (K - 1)(v - N)^2 + 2 N^2 \left(\frac{1}{C} - 1\right),

and lets sympy do the algebra: the optimal norm :math:`N^*(C)`, the per-feature
loss :math:`\ell(C) = L(N^*(C), C)`, the marginal benefit :math:`-\ell'(C)`, the
curvature :math:`\ell''(C)` and its sign, and the two-feature one-neuron optimum.
The expressions are derived once (:func:`derive`, cached) and compiled once with
:func:`sympy.lambdify` into numpy functions that broadcast over arrays; nothing in
the solvers calls sympy at solve time.

:func:`compile_separable` and :func:`curvature_class` do the same for any
user-supplied per-feature loss (they back
:meth:`capalloc.SeparableProblem.from_sympy`).

This module imports sympy at import time; ``import capalloc`` loads it lazily
(``capalloc.theory``) so the fast path never pays for sympy.

References
----------
.. [1] A. Scherlis, K. Sachan, A. S. Jermyn, J. Benton and B. Shlegeris,
   "Polysemanticity and Capacity in Neural Networks", arXiv:2210.01892.

Examples
--------
>>> from capalloc import theory
>>> d = theory.derive()
>>> d.curvature_sign
K - 3
>>> round(float(theory.per_feature_loss(0.5, 1.0, 5.0)), 6)
1.333333
>>> float(theory.two_feature_threshold(2.0, 1.0))
5.0
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sympy as sp

from capalloc._lib.validation import as_float_array, check_capacity, check_kurtosis, short
from capalloc.quadratic.closed_form import (
    curvature,
    marginal_benefit,
    optimal_norm,
    per_feature_loss,
)

__all__ = [
    "CompiledLoss",
    "Derivation",
    "compile_separable",
    "curvature",
    "curvature_class",
    "derive",
    "marginal_benefit",
    "optimal_norm",
    "per_feature_loss",
    "two_feature_optimum",
    "two_feature_threshold",
]

CURVATURE_CLASSES = ("convex", "concave", "linear", "mixed")


# ---------------------------------------------------------------------------
# The derivation
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Derivation:
    r"""Symbolic results for the quadratic model, as sympy expressions.

    Single feature (symbols ``C``, ``v``, ``K``, ``N``):

    .. math::

        N^*(C) = \frac{(K-1) v C}{2 + (K-3) C}, \qquad
        \ell(C) = \frac{2 (K-1) v^2 (1-C)}{2 + (K-3) C},

        -\ell'(C) = \frac{2 (K-1)^2 v^2}{(2 + (K-3) C)^2}, \qquad
        \ell''(C) = \frac{4 (K-1)^2 (K-3) v^2}{(2 + (K-3) C)^3}.

    Two features, one neuron (symbols ``a >= b > 0``, model
    :math:`\hat y = (c x_1 + e x_2)^2 + \beta`): the optimum is polysemantic iff
    :math:`K > 1 + 2a/b`, and then

    .. math::

        c^2 = \frac{(K-1)(aK - a - 2b)}{(K-3)(K+1)}, \quad
        e^2 = \frac{(K-1)(bK - b - 2a)}{(K-3)(K+1)}, \quad
        \beta = \frac{2(a+b)}{K+1}.

    Attributes
    ----------
    C, v, K, N : sympy.Symbol
        Capacity (nonnegative), importance (positive), kurtosis (positive; the
        results assume :math:`K \ge 1`), squared norm (real).
    loss : sympy.Expr
        :math:`L(N, C)`, the capacity form of the per-feature loss.
    optimal_norm : sympy.Expr
        :math:`N^*(C)`, the root of :math:`\partial L / \partial N = 0`.
    per_feature_loss : sympy.Expr
        :math:`\ell(C) = L(N^*(C), C)`, factored.
    marginal_benefit : sympy.Expr
        :math:`-\ell'(C)`.
    curvature : sympy.Expr
        :math:`\ell''(C)`.
    curvature_sign : sympy.Expr
        What is left of :math:`\ell''` after removing the factors that are
        provably positive for :math:`0 \le C \le 1`, :math:`K > 1`, :math:`v > 0`;
        it comes out as ``K - 3``, which is the sign rule.
    a, b : sympy.Symbol
        The two importances of the two-feature problem (positive).
    polysemantic_threshold : sympy.Expr
        The critical kurtosis :math:`1 + 2a/b`.
    c2, e2, beta : sympy.Expr
        The polysemantic optimum :math:`c^2`, :math:`e^2`, :math:`\beta`.

    References
    ----------
    .. [1] Scherlis et al., "Polysemanticity and Capacity in Neural Networks",
       arXiv:2210.01892.

    Examples
    --------
    >>> from capalloc.theory import derive
    >>> d = derive()
    >>> d.polysemantic_threshold
    (2*a + b)/b
    """

    C: sp.Symbol
    v: sp.Symbol
    K: sp.Symbol
    N: sp.Symbol
    loss: sp.Expr
    optimal_norm: sp.Expr
    per_feature_loss: sp.Expr
    marginal_benefit: sp.Expr
    curvature: sp.Expr
    curvature_sign: sp.Expr
    a: sp.Symbol
    b: sp.Symbol
    polysemantic_threshold: sp.Expr
    c2: sp.Expr
    e2: sp.Expr
    beta: sp.Expr


def _affine_in(expr: sp.Expr, x: sp.Symbol) -> bool:
    """Whether ``expr`` is a polynomial of degree exactly one in ``x``."""
    return bool(expr.has(x) and expr.is_polynomial(x) and sp.degree(expr, x) == 1)


def _unprovable_factors(expr: sp.Expr, C: sp.Symbol, subs: dict[Any, Any]) -> sp.Expr:
    """Product of the factors of ``expr`` not provably positive for ``0 <= C <= 1``.

    A factor ``base**p`` is positive when ``base`` is: a base free of ``C`` is
    checked with sympy's assumptions after ``subs``; a base affine in ``C`` is
    monotone, so it is positive on [0, 1] iff it is positive at both ends.
    """
    keep = sp.Integer(1)
    for factor in sp.Mul.make_args(sp.factor(expr)):
        base, _ = factor.as_base_exp()
        if not base.has(C):
            ends = [base]
        elif _affine_in(base, C):
            ends = [base.subs(C, 0), base.subs(C, 1)]
        else:
            keep *= factor
            continue
        if not all(sp.simplify(e.subs(subs)).is_positive for e in ends):
            keep *= factor
    return keep


@functools.lru_cache(maxsize=1)
def derive() -> Derivation:
    r"""Derive the single-feature and two-feature results symbolically (cached).

    Steps: solve :math:`\partial L/\partial N = 0` for :math:`N^*`; substitute to
    get :math:`\ell(C)`; differentiate; factor :math:`\ell''` and drop the factors
    that are positive for :math:`C \in [0, 1]`, :math:`K > 1`, :math:`v > 0`
    (what remains, :math:`K - 3`, is the sign). For two features in one
    neuron, the feature of importance :math:`b` gets capacity in the
    water-filling optimum iff its marginal benefit at :math:`C = 0` exceeds that
    of the other feature at :math:`C = 1`; equating the two gives the critical
    :math:`K`. The explicit optimum comes independently from the stationarity of
    the exact loss in :math:`P = c^2`, :math:`Q = e^2`,

    .. math::

        L(P, Q) = (K-1)(a-P)^2 + (K-1)(b-Q)^2 + 4 P Q,
        \qquad \beta = (a - P) + (b - Q).

    Returns
    -------
    Derivation
        The expressions and the symbols they are written in.

    References
    ----------
    .. [1] Scherlis et al., "Polysemanticity and Capacity in Neural Networks",
       arXiv:2210.01892.

    Examples
    --------
    >>> from capalloc.theory import derive
    >>> d = derive()
    >>> d.optimal_norm
    C*v*(K - 1)/(C*K - 3*C + 2)
    >>> d.per_feature_loss.subs(d.C, 0)
    v**2*(K - 1)
    """
    C = sp.Symbol("C", nonnegative=True)
    v = sp.Symbol("v", positive=True)
    K = sp.Symbol("K", positive=True)
    N = sp.Symbol("N", real=True)
    loss = (K - 1) * (v - N) ** 2 + 2 * N**2 * (1 / C - 1)

    (n_star,) = sp.solve(sp.diff(loss, N), N)
    n_star = sp.factor(n_star)
    ell = sp.factor(sp.simplify(loss.subs(N, n_star)))
    benefit = sp.factor(-sp.diff(ell, C))
    curv = sp.factor(sp.diff(ell, C, 2))
    kappa = sp.Symbol("kappa", positive=True)  # K = 1 + kappa > 1
    sign = _unprovable_factors(curv, C, {K: 1 + kappa})

    # Two features, one neuron: b enters iff -l_b'(0) > -l_a'(1).
    a, b = sp.symbols("a b", positive=True)
    roots = sp.solve(sp.Eq(benefit.subs({C: 0, v: b}), benefit.subs({C: 1, v: a})), K)
    above_one = [r for r in roots if sp.simplify(r - 1).is_positive]
    if len(above_one) != 1:  # pragma: no cover - guards the derivation itself
        raise RuntimeError(f"expected one critical kurtosis above 1, got {roots}")
    threshold = sp.factor(above_one[0])

    P, Q = sp.symbols("P Q", real=True)
    exact = (K - 1) * (a - P) ** 2 + (K - 1) * (b - Q) ** 2 + 4 * P * Q
    opt = sp.solve([sp.diff(exact, P), sp.diff(exact, Q)], [P, Q], dict=True)[0]
    c2, e2 = sp.factor(opt[P]), sp.factor(opt[Q])
    beta = sp.factor(sp.simplify(a + b - c2 - e2))

    return Derivation(
        C=C,
        v=v,
        K=K,
        N=N,
        loss=loss,
        optimal_norm=n_star,
        per_feature_loss=ell,
        marginal_benefit=benefit,
        curvature=curv,
        curvature_sign=sign,
        a=a,
        b=b,
        polysemantic_threshold=threshold,
        c2=c2,
        e2=e2,
        beta=beta,
    )


# ---------------------------------------------------------------------------
# Compiled two-feature functions (the single-feature closed forms are
# capalloc.quadratic.closed_form, re-exported here; the tests check them against derive())
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _compiled() -> dict[str, Callable[..., Any]]:
    """Lambdify the two-feature derivation once."""
    d = derive()
    pair = {
        name: sp.lambdify((d.a, d.b, d.K), getattr(d, name), modules="numpy")
        for name in ("c2", "e2", "beta")
    }
    pair["threshold"] = sp.lambdify((d.a, d.b), d.polysemantic_threshold, modules="numpy")
    return pair


# ---------------------------------------------------------------------------
# Two features, one neuron
# ---------------------------------------------------------------------------


def _check_pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a = as_float_array(a, "a")
    b = as_float_array(b, "b")
    if b.size and b.min() <= 0:
        raise ValueError(f"b must be > 0, got {float(b.min())!r}")
    below = a < b
    if np.any(below):
        bad_a, bad_b = (float(np.broadcast_to(x, below.shape)[below].ravel()[0]) for x in (a, b))
        raise ValueError(
            f"a must be >= b (a is the larger importance), got a={bad_a!r}, b={bad_b!r}"
        )
    return a, b


def two_feature_threshold(a: Any, b: Any) -> Any:
    r"""Critical kurtosis above which two features share one neuron.

    For :math:`n = 2` features with importances :math:`a \ge b > 0` and
    :math:`d = 1`, the optimum is polysemantic iff :math:`K` exceeds

    .. math::

        K^* = 1 + \frac{2a}{b}.

    The value is evaluated from :attr:`Derivation.polysemantic_threshold`, which
    :func:`derive` obtains by equating :math:`-\ell_b'(0)` and :math:`-\ell_a'(1)`.

    Parameters
    ----------
    a, b : array_like of float
        Importances, :math:`a \ge b > 0` (broadcast together).

    Returns
    -------
    ndarray or float
        :math:`K^*` (always :math:`\ge 3`). For sparse Gaussian inputs
        (:math:`K = 3/p`) polysemanticity needs :math:`p < 3/K^*`.

    References
    ----------
    .. [1] Scherlis et al., "Polysemanticity and Capacity in Neural Networks",
       arXiv:2210.01892.

    Examples
    --------
    >>> from capalloc.theory import two_feature_threshold
    >>> [float(two_feature_threshold(a, 1.0)) for a in (1.0, 2.0)]
    [3.0, 5.0]
    """
    a, b = _check_pair(a, b)
    out = np.asarray(_compiled()["threshold"](a, b), dtype=float)
    return np.broadcast_to(out, np.broadcast_shapes(a.shape, b.shape))[()]


def two_feature_optimum(a: Any, b: Any, K: Any) -> tuple[Any, Any, Any]:
    r"""Exact optimum of :math:`\hat y = (c x_1 + e x_2)^2 + \beta` for :math:`y = a x_1^2 + b x_2^2`.

    With :math:`K^* = 1 + 2a/b`: for :math:`K > K^*` the optimum is polysemantic,

    .. math::

        c^2 = \frac{(K-1)(aK - a - 2b)}{(K-3)(K+1)}, \quad
        e^2 = \frac{(K-1)(bK - b - 2a)}{(K-3)(K+1)}, \quad
        \beta = \frac{2(a+b)}{K+1},

    and for :math:`K \le K^*` it is monosemantic, :math:`(c^2, e^2, \beta) = (a, 0, b)`
    (both branches agree at :math:`K = K^*`). At :math:`a = b`, :math:`K = 3` the
    loss is flat along the budget and the monosemantic point is one of many optima.

    Parameters
    ----------
    a, b : array_like of float
        Importances, :math:`a \ge b > 0`.
    K : array_like of float
        Kurtosis :math:`K \ge 1` (broadcasts with ``a`` and ``b``).

    Returns
    -------
    c2, e2, beta : ndarray or float
        Squared weights of the two features and the optimal bias.

    References
    ----------
    .. [1] Scherlis et al., "Polysemanticity and Capacity in Neural Networks",
       arXiv:2210.01892.

    Examples
    --------
    >>> from capalloc.theory import two_feature_optimum
    >>> [round(float(x), 6) for x in two_feature_optimum(1.0, 1.0, 7.0)]
    [0.75, 0.75, 0.5]
    >>> [round(float(x), 6) for x in two_feature_optimum(2.0, 1.0, 4.0)]
    [2.0, 0.0, 1.0]
    """
    a, b = _check_pair(a, b)
    K = check_kurtosis(K, "K")
    shape = np.broadcast_shapes(a.shape, b.shape, K.shape)
    f = _compiled()
    poly = K > f["threshold"](a, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        c2 = np.where(poly, f["c2"](a, b, K), a)
        e2 = np.where(poly, f["e2"](a, b, K), 0.0)
        beta = np.where(poly, f["beta"](a, b, K), b)
    c2, e2, beta = (np.broadcast_to(np.asarray(x, dtype=float), shape)[()] for x in (c2, e2, beta))
    return c2, e2, beta


# ---------------------------------------------------------------------------
# User-supplied separable losses
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CompiledLoss:
    r"""A per-feature loss :math:`\ell(C; \theta)` and its derivatives, compiled to numpy.

    Attributes
    ----------
    expr : sympy.Expr
        The loss expression.
    C : sympy.Symbol
        The capacity symbol.
    params : tuple of sympy.Symbol
        The other symbols, in the order the callables take them.
    benefit_expr, curvature_expr : sympy.Expr
        :math:`-\partial \ell / \partial C` and :math:`\partial^2 \ell / \partial C^2`.
    loss, marginal_benefit, curvature : callable
        ``f(C, *params) -> ndarray``, broadcasting over all arguments.
    """

    expr: sp.Expr
    C: sp.Symbol
    params: tuple[sp.Symbol, ...]
    benefit_expr: sp.Expr
    curvature_expr: sp.Expr
    loss: Callable[..., np.ndarray]
    marginal_benefit: Callable[..., np.ndarray]
    curvature: Callable[..., np.ndarray]


def _broadcasting(fn: Callable[..., Any]) -> Callable[..., np.ndarray]:
    """Wrap a lambdified function so its output has the broadcast shape of its inputs."""

    def wrapped(*args: Any) -> np.ndarray:
        arrays = [np.asarray(x, dtype=float) for x in args]
        shape = np.broadcast_shapes(*(x.shape for x in arrays))
        return np.broadcast_to(np.asarray(fn(*arrays), dtype=float), shape)

    return wrapped


def compile_separable(
    expr: Any, C_symbol: sp.Symbol, param_symbols: Iterable[sp.Symbol] = ()
) -> CompiledLoss:
    r"""Differentiate and compile a per-feature loss :math:`\ell(C; \theta)`.

    .. math::

        \ell(C; \theta), \qquad -\frac{\partial \ell}{\partial C}, \qquad
        \frac{\partial^2 \ell}{\partial C^2}

    Results are cached on ``(expr, C_symbol, param_symbols)``.

    Parameters
    ----------
    expr : sympy.Expr or str
        The loss; its free symbols must be ``C_symbol`` and ``param_symbols``.
    C_symbol : sympy.Symbol
        The capacity variable.
    param_symbols : iterable of sympy.Symbol
        The per-feature parameters, in the order the compiled callables take them.

    Returns
    -------
    CompiledLoss
        Callables ``loss(C, *params)``, ``marginal_benefit(C, *params)`` and
        ``curvature(C, *params)``.

    Raises
    ------
    TypeError
        If ``C_symbol`` or a parameter is not a sympy symbol.
    ValueError
        If ``expr`` has symbols that are neither ``C_symbol`` nor parameters.

    Examples
    --------
    >>> import sympy as sp
    >>> from capalloc.theory import compile_separable
    >>> C, w = sp.symbols("C w")
    >>> f = compile_separable(w * (1 - C) ** 2, C, [w])
    >>> f.marginal_benefit([0.0, 0.5], 3.0).tolist()
    [6.0, 3.0]
    """
    if not isinstance(C_symbol, sp.Symbol):
        raise TypeError(f"C_symbol must be a sympy Symbol, got {short(C_symbol)}")
    params = tuple(param_symbols)
    for p in params:
        if not isinstance(p, sp.Symbol):
            raise TypeError(f"param_symbols must hold sympy Symbols, got {short(p)}")
    if C_symbol in params:
        raise ValueError(f"param_symbols must not contain C_symbol {C_symbol}")
    try:
        expr = sp.sympify(expr)
    except (sp.SympifyError, TypeError) as exc:
        raise TypeError(f"expr must be a sympy expression, got {short(expr)}") from exc
    return _compile(expr, C_symbol, params)


@functools.lru_cache(maxsize=128)
def _compile(expr: sp.Expr, C: sp.Symbol, params: tuple[sp.Symbol, ...]) -> CompiledLoss:
    unknown = expr.free_symbols - {C, *params}
    if unknown:
        raise ValueError(
            f"expr has symbols {sorted(map(str, unknown))} that are neither "
            f"C_symbol ({C}) nor in param_symbols {list(params)}"
        )
    benefit = -sp.diff(expr, C)
    curv = sp.diff(expr, C, 2)
    args = (C, *params)
    return CompiledLoss(
        expr=expr,
        C=C,
        params=params,
        benefit_expr=benefit,
        curvature_expr=curv,
        loss=_broadcasting(sp.lambdify(args, expr, modules="numpy")),
        marginal_benefit=_broadcasting(sp.lambdify(args, benefit, modules="numpy")),
        curvature=_broadcasting(sp.lambdify(args, curv, modules="numpy")),
    )


def _factor_sign(
    factor: sp.Expr, compiled: CompiledLoss, values: list[np.ndarray], shape: tuple[int, ...]
) -> np.ndarray:
    """Sign of one factor of the curvature on [0, 1], per feature.

    ``+1``: >= 0 on [0, 1] and not identically 0; ``-1``: <= 0 likewise;
    ``0``: identically 0; ``nan``: not decided here.
    """
    C, params = compiled.C, compiled.params

    def at(expr: sp.Expr) -> np.ndarray:
        return np.broadcast_to(
            np.asarray(sp.lambdify(params, expr, "numpy")(*values), dtype=float), shape
        )

    base, p = factor.as_base_exp()
    if not p.is_number or not p.is_real:
        base, p = factor, sp.Integer(1)
    if not base.has(C):
        s = np.sign(at(base))
    elif _affine_in(base, C):  # monotone in C: its ends decide
        e0, e1 = at(base.subs(C, 0)), at(base.subs(C, 1))
        s = np.where(e0 * e1 < 0, np.nan, np.sign(e0 + e1))
    else:
        return np.full(shape, np.nan)
    if p == 1:
        return s
    if p.is_integer:
        if p.is_even:  # base**p >= 0; a negative power of a base vanishing inside is undecided
            s = np.where(
                s == 0, 0.0 if p > 0 else np.nan, np.where(np.isnan(s) & (p < 0), np.nan, 1.0)
            )
        elif p < 0:
            s = np.where(s == 0, np.nan, s)
        return s
    return np.where(s == 1, 1.0, np.where((s == 0) & (p > 0), 0.0, np.nan))


def curvature_class(
    compiled: CompiledLoss, params_arrays: Sequence[Any], grid: Any = None, *, rtol: float = 1e-9
) -> np.ndarray:
    r"""Classify each feature's loss as convex, concave, linear or mixed on :math:`C \in [0, 1]`.

    .. math::

        \text{convex} \iff \ell'' \ge 0, \quad \text{concave} \iff \ell'' \le 0,
        \quad \text{linear} \iff \ell'' \equiv 0 \quad \text{on } [0, 1];

    otherwise ``"mixed"``.

    **Symbolic where possible.** sympy factors :math:`\ell''` and the sign of the
    product is the product of the factors' signs. A factor ``base**p`` is decided
    exactly when ``base`` is free of ``C`` (evaluated at the feature's parameters)
    or affine in ``C`` (monotone, so its values at 0 and 1 decide), with the usual
    rules for integer and real powers. **Numerically otherwise.** Features with an
    undecided factor (e.g. ``sin(5*C)``, or an affine factor that changes sign
    inside the interval) are classified from :math:`\ell''` on ``grid``; values
    within ``rtol`` times the largest :math:`|\ell''|` on the grid count as zero
    and non-finite values are ignored. A sign change between grid points can be
    missed there.

    Parameters
    ----------
    compiled : CompiledLoss
        From :func:`compile_separable`.
    params_arrays : sequence of array_like of float
        One array per ``compiled.params`` (broadcast together, typically ``(n,)``).
    grid : (g,) array_like of float, optional
        Capacities in [0, 1] for the numerical fallback; default 257 equally
        spaced points.
    rtol : float, default 1e-9
        Relative tolerance for zero in the numerical fallback.

    Returns
    -------
    ndarray of str
        One of ``"convex"``, ``"concave"``, ``"linear"``, ``"mixed"`` per feature,
        with the broadcast shape of ``params_arrays``.

    Examples
    --------
    >>> import sympy as sp
    >>> from capalloc.theory import compile_separable, curvature_class, derive
    >>> d = derive()
    >>> f = compile_separable(d.per_feature_loss, d.C, [d.v, d.K])
    >>> curvature_class(f, [1.0, [2.0, 3.0, 5.0]]).tolist()
    ['concave', 'linear', 'convex']
    >>> C = sp.Symbol("C")
    >>> curvature_class(compile_separable(sp.sin(5 * C), C), []).tolist()
    'mixed'
    """
    if not isinstance(compiled, CompiledLoss):
        raise TypeError(f"compiled must be a CompiledLoss, got {short(compiled)}")
    values = [as_float_array(x, f"params_arrays[{i}]") for i, x in enumerate(params_arrays)]
    if len(values) != len(compiled.params):
        raise ValueError(
            f"params_arrays must hold {len(compiled.params)} arrays (one per "
            f"{list(compiled.params)}), got {len(values)}"
        )
    grid = np.linspace(0.0, 1.0, 257) if grid is None else check_capacity(grid, "grid").ravel()
    if grid.size < 2:
        raise ValueError(f"grid must hold at least 2 capacities, got {short(grid)}")
    shape = np.broadcast_shapes(*(x.shape for x in values))

    # Symbolic: product of per-factor signs.
    factored = sp.factor(compiled.curvature_expr)
    sign = np.ones(shape)
    for factor in sp.Mul.make_args(factored):
        with np.errstate(divide="ignore", invalid="ignore"):
            sign = sign * _factor_sign(factor, compiled, values, shape)
    out = np.empty(shape, dtype="<U7")
    out[sign > 0] = "convex"
    out[sign < 0] = "concave"
    out[sign == 0] = "linear"

    # Numerical fallback on the grid for undecided features.
    todo = np.isnan(sign)
    if np.any(todo):
        g = grid.reshape((-1,) + (1,) * len(shape))
        with np.errstate(divide="ignore", invalid="ignore"):
            vals = compiled.curvature(g, *values).reshape(grid.size, -1)[:, todo.ravel()]
        vals = np.where(np.isfinite(vals), vals, 0.0)
        tol = rtol * np.max(np.abs(vals), axis=0)
        pos, neg = np.any(vals > tol, axis=0), np.any(vals < -tol, axis=0)
        flat = out.reshape(-1)  # a view: out is freshly allocated
        flat[todo.ravel()] = np.select(
            [pos & neg, pos, neg], ["mixed", "convex", "concave"], "linear"
        )
    return out
