"""Capacity allocation (paper, section 5): problems, the certified result, ``solve`` and
its methods (``methods/``), and the sensitivity of the optimum."""

from capalloc.allocation.problems import QuadraticProblem, SeparableProblem
from capalloc.allocation.result import AllocationResult, AllocationWarning, kkt_residual
from capalloc.allocation.solve import get_method, methods, register_method, solve

__all__ = [
    "AllocationResult",
    "AllocationWarning",
    "QuadraticProblem",
    "SeparableProblem",
    "get_method",
    "kkt_residual",
    "methods",
    "register_method",
    "solve",
]
