"""Training the toy models (paper, section 4 onwards): exact and sampled training of the
quadratic model (``train``) and the torch models (``torch_models``, needs the ``[torch]``
extra)."""

from capalloc.training.train import TrainResult, train_methods, train_quadratic

__all__ = ["TrainResult", "train_methods", "train_quadratic"]
