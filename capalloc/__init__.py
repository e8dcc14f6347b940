"""capalloc: optimal allocation of feature capacity in neural networks.

After A. Scherlis et al., "Polysemanticity and Capacity in Neural Networks",
arXiv:2210.01892. ``import capalloc`` stays light: sympy, cvxpy, torch and
matplotlib load only when a function that needs them is called.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import distributions
from ._capacity import IGNORED, LABELS, MONOSEMANTIC, POLYSEMANTIC, capacity, classify, leverage
from ._problems import QuadraticProblem, SeparableProblem
from ._result import AllocationResult, AllocationWarning, kkt_residual
from ._solve import get_method, methods, register_method, solve
from ._waterfill import waterfill
from .models.quadratic import capacity_form_loss, optimal_bias, quadratic_loss, quadratic_loss_grad

__version__ = "0.1.0"

# Names whose modules are heavy or optional: loaded on first access.
_LAZY = {
    "theory": None,
    "testing": None,
    "plots": None,
    "experiments": None,
    "sweep": None,
    "sensitivity": None,
    "train": None,
    "geometry": None,
    "solve_scipy": "_scipy_methods",
    "solve_slsqp": "_scipy_methods",
    "solve_cvxpy": "_cvxpy_method",
    "train_quadratic": "train",
    "TrainResult": "train",
    "find_blocks": "geometry",
    "Block": "geometry",
    "is_block_semi_orthogonal": "geometry",
    "realize": "geometry",
    "tight_frame": "geometry",
}

__all__ = [
    "AllocationResult",
    "AllocationWarning",
    "IGNORED",
    "QuadraticProblem",
    "SeparableProblem",
    "get_method",
    "kkt_residual",
    "methods",
    "register_method",
    "solve",
    "waterfill",
    "LABELS",
    "MONOSEMANTIC",
    "POLYSEMANTIC",
    "__version__",
    "capacity",
    "capacity_form_loss",
    "classify",
    "distributions",
    "leverage",
    "optimal_bias",
    "quadratic_loss",
    "quadratic_loss_grad",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'capalloc' has no attribute {name!r}")
    module = _LAZY[name]
    if module is None:
        value = importlib.import_module(f"capalloc.{name}")
    else:
        value = getattr(importlib.import_module(f"capalloc.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
