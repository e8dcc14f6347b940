"""One entry point, :func:`solve`, dispatching to registered methods."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from capalloc._lib.registry import Registry
from capalloc.allocation.problems import QuadraticProblem, SeparableProblem
from capalloc.allocation.result import AllocationResult

__all__ = ["solve", "methods", "register_method", "get_method", "MethodInfo"]


@dataclass(frozen=True)
class MethodInfo:
    """A registered solver method."""

    name: str
    function: Callable[..., AllocationResult]
    problems: tuple[type, ...]
    exact: bool
    batched: bool
    summary: str


_REGISTRY: Registry[MethodInfo] = Registry("method")
# The built-in methods and the modules that register them when imported: a solve loads
# only its method's module (scipy and cvxpy stay unloaded for a water-filling solve).
_METHOD_MODULES = {
    "waterfill": "capalloc.allocation.methods.waterfill",
    "scipy": "capalloc.allocation.methods.scipy_methods",
    "slsqp": "capalloc.allocation.methods.scipy_methods",
    "cvxpy": "capalloc.allocation.methods.cvxpy_method",
}


def register_method(
    name: str,
    *,
    problems: tuple[type, ...] = (QuadraticProblem,),
    exact: bool = True,
    batched: bool = False,
) -> Callable[[Callable[..., AllocationResult]], Callable[..., AllocationResult]]:
    """Decorator registering ``function(problem, **options) -> AllocationResult`` under ``name``.

    Parameters
    ----------
    name : str
        Method name used by ``solve(..., method=name)``.
    problems : tuple of type
        Problem classes the method accepts.
    exact : bool
        Whether the method is exact to rounding (KKT residual near machine precision).
    batched : bool
        Whether the method accepts batched ``(m, n)`` problems natively.
    """

    def wrap(function: Callable[..., AllocationResult]) -> Callable[..., AllocationResult]:
        summary = (function.__doc__ or "").strip().splitlines()[0] if function.__doc__ else ""
        _REGISTRY.add(name, MethodInfo(name, function, problems, exact, batched, summary))
        return function

    return wrap


_LOADED = False


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    import importlib

    for module in dict.fromkeys(_METHOD_MODULES.values()):  # each registers its methods
        importlib.import_module(module)
    _LOADED = True


def methods() -> list[str]:
    """Names of the registered methods.

    Examples
    --------
    >>> import capalloc
    >>> "waterfill" in capalloc.methods()
    True
    """
    _load_all()
    return _REGISTRY.names()


def get_method(name: str) -> MethodInfo:
    """The :class:`MethodInfo` registered under ``name`` (``ValueError`` listing valid names)."""
    if name in _METHOD_MODULES:
        import importlib

        importlib.import_module(_METHOD_MODULES[name])
    else:
        _load_all()
    if name not in _REGISTRY:
        raise ValueError(f"method must be one of {['auto', *_REGISTRY.names()]}, got {name!r}")
    return _REGISTRY[name]


def _auto(problem: Any) -> str:
    """The ``"auto"`` rule.

    QuadraticProblem -> ``waterfill`` (exact for any kurtosis, batched too).
    SeparableProblem -> ``scipy`` (dual root finding when convex, vertex
    enumeration when concave, exact one-fractional search when mixed).
    """
    return "waterfill" if isinstance(problem, QuadraticProblem) else "scipy"


def solve(
    problem: QuadraticProblem | SeparableProblem, method: str = "auto", **options: Any
) -> AllocationResult:
    r"""Optimal allocation of capacity.

    .. math::

        \min_C \sum_i \ell_i(C_i) \quad \text{s.t.} \quad 0 \le C_i \le 1,\ \sum_i C_i \le d

    Parameters
    ----------
    problem : QuadraticProblem or SeparableProblem
        The problem (a batched QuadraticProblem gives batched result fields).
    method : str, default "auto"
        One of :func:`methods`, or ``"auto"``: ``waterfill`` for quadratic
        problems, ``scipy`` for separable ones.
    **options
        Passed to the method.

    Returns
    -------
    AllocationResult
        Non-convergence is reported by ``status`` and an :class:`AllocationWarning`.

    References
    ----------
    .. [1] Scherlis et al., "Polysemanticity and Capacity in Neural Networks",
       arXiv:2210.01892.

    Examples
    --------
    >>> import capalloc
    >>> res = capalloc.solve(capalloc.QuadraticProblem([4.0, 2.0, 1.0, 0.2], d=2, kurtosis=10.0))
    >>> res.capacity.round(4).tolist(), res.labels.tolist()
    ([1.0, 0.7619, 0.2381, 0.0], ['monosemantic', 'polysemantic', 'polysemantic', 'ignored'])
    """
    if not isinstance(problem, (QuadraticProblem, SeparableProblem)):
        raise TypeError(f"problem must be a QuadraticProblem or SeparableProblem, got {problem!r}")
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {method!r}")
    info = get_method(_auto(problem) if method == "auto" else method)
    if not isinstance(problem, info.problems):
        raise ValueError(
            f"method {info.name!r} does not solve {type(problem).__name__}; use one of "
            f"{[m for m, i in _REGISTRY.items() if isinstance(problem, i.problems)]}"
        )
    return info.function(problem, **options)  # a result not certified optimal warns
