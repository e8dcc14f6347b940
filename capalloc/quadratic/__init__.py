r"""The quadratic toy model (paper, section 3): exact expected loss and its gradient.

Pure numpy; every other layer above this one sees the model only through these
functions and the per-feature closed forms of :mod:`capalloc.quadratic.closed_form`
(:math:`\ell`, :math:`g`, :math:`N^*`, :math:`C(\mu)`: the one copy every solver uses).
"""

from capalloc.quadratic.model import (
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
