"""The reproduction experiments (``reproductions``), the sweep engine they run on
(``sweep``) and the solver benchmark (``bench``)."""

from capalloc.experiments import reproductions
from capalloc.experiments.reproductions import *  # noqa: F403  (its __all__, re-exported)

__all__ = list(reproductions.__all__)
