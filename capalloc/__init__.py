"""capalloc: optimal allocation of feature capacity in neural networks.

After A. Scherlis et al., "Polysemanticity and Capacity in Neural Networks",
arXiv:2210.01892. ``import capalloc`` stays light: sympy, cvxpy, torch and
matplotlib load only when a function that needs them is called.
"""

from __future__ import annotations

import importlib
from typing import Any

from capalloc import distributions
from capalloc._capacity import (
    IGNORED,
    LABELS,
    MONOSEMANTIC,
    POLYSEMANTIC,
    CapacityReport,
    FeaturesAxisWarning,
    capacity,
    capacity_report,
    classify,
    label_counts,
    leverage,
    numerical_rank,
)
from capalloc.allocation import (
    AllocationResult,
    AllocationWarning,
    QuadraticProblem,
    SeparableProblem,
    get_method,
    kkt_residual,
    methods,
    register_method,
    solve,
)
from capalloc.allocation.methods.waterfill import waterfill
from capalloc.quadratic.model import (
    capacity_form_loss,
    optimal_bias,
    quadratic_loss,
    quadratic_loss_grad,
)

__version__ = "0.1.0"

# Names whose modules are heavy or optional, loaded on first access: a module path
# (a public module of capalloc), or the module that defines the name.
_LAZY = {
    "theory": "capalloc.theory",
    "testing": "capalloc.testing",
    "plots": "capalloc.plots",
    "experiments": "capalloc.experiments",
    "sweep": "capalloc.experiments.sweep",
    "sensitivity": "capalloc.allocation.sensitivity",
    "autodiff": "capalloc.autodiff",
    "fit_importance": "capalloc.allocation.inverse",
    "train": "capalloc.training.train",
    "geometry": "capalloc.geometry",
    "profiles": "capalloc.profiles",
    "parse_profile": "capalloc.profiles",
    "solve_scipy": "capalloc.allocation.methods.scipy_methods",
    "solve_slsqp": "capalloc.allocation.methods.scipy_methods",
    "solve_cvxpy": "capalloc.allocation.methods.cvxpy_method",
    "train_quadratic": "capalloc.training.train",
    "TrainResult": "capalloc.training.train",
    "TrainConfig": "capalloc.training.config",
    "find_blocks": "capalloc.geometry",
    "Block": "capalloc.geometry",
    "is_block_semi_orthogonal": "capalloc.geometry",
    "realize": "capalloc.geometry",
    "tight_frame": "capalloc.geometry",
    "neurons": "capalloc.neurons",
    "dimensions_per_feature": "capalloc.neurons",
    "feature_dimensionality": "capalloc.neurons",
    "neuron_monosemanticity": "capalloc.neurons",
    "neuron_polysemantic_counts": "capalloc.neurons",
}
_MODULES = {
    "theory",
    "testing",
    "plots",
    "experiments",
    "sweep",
    "sensitivity",
    "autodiff",
    "train",
    "geometry",
    "profiles",
    "neurons",
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
    "capacity_report",
    "CapacityReport",
    "FeaturesAxisWarning",
    "numerical_rank",
    "capacity_form_loss",
    "classify",
    "distributions",
    "label_counts",
    "leverage",
    "optimal_bias",
    "quadratic_loss",
    "quadratic_loss_grad",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'capalloc' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    value = module if name in _MODULES else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
