"""Training the toy models (paper, section 4 onwards): one config, one trainer, one result.

* :class:`TrainConfig` holds the settings of every run (steps, batch size, learning
  rate and its schedule, seed, device, dtype, restarts, ...).
* :func:`train_quadratic` trains the quadratic model exactly (L-BFGS-B on the expected
  loss) or on samples; :func:`default_config` gives each method's settings.
* :mod:`capalloc.training.torch_models` (needs the ``[torch]`` extra) holds the torch
  toy models, the input sampler, the one Adam loop ``fit`` and ``train_model``.
* Every trainer returns a :class:`TrainResult`; :func:`trained_labels`,
  :func:`effective_capacity` and :func:`polysemantic_summary` label trained embeddings.

``import capalloc.training`` does not import torch.
"""

from capalloc.training.config import TrainConfig
from capalloc.training.result import (
    TrainResult,
    effective_capacity,
    polysemantic_summary,
    trained_labels,
)
from capalloc.training.train import default_config, train_methods, train_quadratic

__all__ = [
    "TrainConfig",
    "TrainResult",
    "default_config",
    "effective_capacity",
    "polysemantic_summary",
    "train_methods",
    "train_quadratic",
    "trained_labels",
]
