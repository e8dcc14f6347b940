"""Predicting trained allocations beyond the quadratic model (issue 17).

* :mod:`capalloc.prediction.relu_ae`: exact expected losses of the ReLU autoencoder's
  sticky configurations (column, antipodal pair, ignored with a bias, regular polygons)
  with optimised norms and biases, and the combinatorial allocation over them.
* :mod:`capalloc.prediction.compare`: predicted against trained capacities for every
  registered model (torch is imported only when training).

``import capalloc.prediction`` does not import torch.
"""

from capalloc.prediction.compare import predict_capacity, prediction_rows
from capalloc.prediction.relu_ae import (
    GROUP_TYPES,
    Allocation,
    GroupType,
    feature_loss,
    ignored_loss,
    optimise_group,
    predict_relu_ae,
)

__all__ = [
    "GROUP_TYPES",
    "Allocation",
    "GroupType",
    "feature_loss",
    "ignored_loss",
    "optimise_group",
    "predict_capacity",
    "predict_relu_ae",
    "prediction_rows",
]
