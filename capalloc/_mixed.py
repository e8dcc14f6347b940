"""Placeholder: exact mixed-curvature search (written by the solver work)."""

from __future__ import annotations

import numpy as np


def mixed_capacities(v: np.ndarray, K: np.ndarray, d: int) -> tuple[np.ndarray, int]:
    raise NotImplementedError("mixed curvature is not implemented yet")
