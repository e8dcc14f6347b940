"""Toy models whose trained embeddings capalloc analyses.

``quadratic`` is pure numpy (exact expected loss); the torch models live in
``capalloc.models.torch_models`` and load torch only when imported.
"""

from .quadratic import (
    capacity_form_loss,
    optimal_bias,
    predict,
    quadratic_loss,
    quadratic_loss_grad,
    target,
)

__all__ = [
    "capacity_form_loss",
    "optimal_bias",
    "predict",
    "quadratic_loss",
    "quadratic_loss_grad",
    "target",
]
