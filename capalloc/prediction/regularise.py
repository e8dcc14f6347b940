r"""A differentiable capacity penalty and the loss-versus-monosemanticity frontier.

The penalty of an embedding ``W`` (``(..., d, n)``, a torch tensor) is

.. math::

    P(W) = \sum_i C_i (1 - C_i), \qquad C_i = \frac{\lVert W_i\rVert^4}{\sum_j (W_i\cdot W_j)^2},

built on :func:`capalloc.capacity` (which accepts torch tensors and is differentiable);
it vanishes exactly when every feature is monosemantic (:math:`C = 1`) or ignored
(:math:`C = 0`). :func:`frontier` trains the model on :math:`L + \lambda P` for several
strengths :math:`\lambda` and reports the unpenalised loss and the polysemantic fraction.

Examples
--------
>>> import torch
>>> from capalloc.prediction.regularise import capacity_penalty
>>> W = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 1.0]])  # a pair and a column
>>> float(capacity_penalty(W))
0.5
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from capalloc._capacity import capacity
from capalloc._lib.validation import short

__all__ = ["capacity_penalty", "frontier", "DEFAULT_STRENGTHS"]

#: Penalty strengths of :func:`frontier` (0: unconstrained training).
DEFAULT_STRENGTHS = (0.0, 0.003, 0.01, 0.03, 0.1, 0.3)


def capacity_penalty(W: Any) -> Any:
    r""":math:`\sum_i C_i (1 - C_i)` over the last axis (features), per instance.

    Parameters
    ----------
    W : (..., d, n) torch.Tensor or array_like

    Returns
    -------
    (...) tensor or ndarray
    """
    C = capacity(W)
    return (C * (1 - C)).sum(-1)


def frontier(
    model: str = "relu-ae",
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    *,
    n: int = 20,
    d: int = 10,
    sparsity: float = 0.8,
    seeds: int = 2,
    steps: int = 2000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Train ``model`` with the penalty at each strength; one row per strength.

    Rows: ``strength``, ``loss`` (unpenalised, mean over seeds on a fresh batch),
    ``polysemantic_fraction`` (mean over seeds, :func:`capalloc.training.trained_labels`),
    ``penalty`` (mean :math:`P` at the end). Importances :math:`0.9^i`. Needs torch.
    """
    lam = [float(x) for x in strengths]
    if not lam or any(not np.isfinite(x) or x < 0 for x in lam):
        raise ValueError(f"strengths must be non-negative numbers, got {short(strengths)}")
    import torch

    from capalloc.training import TrainConfig, polysemantic_summary, trained_labels
    from capalloc.training.result import effective_capacity
    from capalloc.training.torch_models import build_model, default_importance, fit

    cfg = TrainConfig(steps=steps, seed=seed)
    m = len(lam) * seeds
    weights = torch.tensor(np.repeat(lam, seeds), dtype=torch.float32)

    gen = torch.Generator().manual_seed(seed)
    inner = build_model(model, default_importance(n), d, sparsity, instances=m, generator=gen)

    class _Penalised(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        @property
        def W(self) -> Any:
            return self.inner.W

        @property
        def m(self) -> int:
            return self.inner.m

        def sample(self, batch: int, generator: Any = None) -> Any:
            return self.inner.sample(batch, generator)

        def loss(self, x: Any) -> Any:
            return self.inner.loss(x) + weights * capacity_penalty(self.inner.W)

    fit(_Penalised(), cfg, generator=gen, desc="frontier")
    with torch.no_grad():
        loss = inner.loss(inner.sample(cfg.eval_batch, gen)).numpy().astype(float)
        pen = capacity_penalty(inner.W).numpy().astype(float)
    W = inner.W.detach().numpy().astype(float)
    summary = polysemantic_summary(trained_labels(W), effective_capacity(W))
    poly = np.asarray(summary["polysemantic_fraction"], dtype=float)
    rows = []
    for k, x in enumerate(lam):
        sl = slice(k * seeds, (k + 1) * seeds)
        rows.append(
            {
                "model": model,
                "sparsity": float(sparsity),
                "strength": x,
                "loss": round(float(loss[sl].mean()), 6),
                "polysemantic_fraction": round(float(poly[sl].mean()), 4),
                "penalty": round(float(pen[sl].mean()), 4),
            }
        )
    return rows
