r"""Incidental polysemanticity (Lecomte et al. 2023): polysemantic neurons with capacity to spare.

With at least as many neurons as features (``d >= n``), the allocation optimum
gives every feature its own dimension (every :math:`C_i = 1`), yet training the
``neuron`` model (:math:`h = \mathrm{ReLU}(W x)`, :math:`\hat x = \mathrm{ReLU}(W^\top h + b)`)
with an L1 penalty on the activations still leaves some neurons serving
several features: features whose largest initial weights fall on the same
neuron can keep sharing it. Lecomte et al. estimate about :math:`n^2 / (4d)` such
neurons; :func:`incidental_polysemanticity` counts them (Jermyn et al.'s
measure, :func:`capalloc.neurons.neuron_polysemantic_counts`) next to that estimate.

References
----------
.. [1] V. Lecomte et al., "What Causes Polysemanticity? An Alternative Origin
   Story of Mixed Selectivity from Incidental Causes" (2023).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from capalloc._lib.validation import check_positive, short
from capalloc.neurons import neuron_polysemantic_counts

__all__ = ["incidental_polysemanticity"]


def incidental_polysemanticity(
    n: int = 16,
    ds: Sequence[int] = (16, 32, 64),
    density: float | None = None,
    *,
    activation_l1: float = 0.03,
    seeds: int = 4,
    steps: int = 3000,
    batch_size: int = 512,
    lr: float = 1e-2,
    device: str = "cpu",
    seed: int = 0,
) -> list[dict[str, Any]]:
    r"""Count polysemantic neurons of the neuron model with ``d >= n`` against :math:`n^2/(4d)`.

    Returns
    -------
    list of dict
        Per ``d``: ``n``, ``d``, ``polysemantic``, ``monosemantic``, ``dead`` (per
        seed), ``polysemantic_mean``, ``expected`` (:math:`n^2/(4d)`), ``loss``
        and ``train_seconds``.

    Examples
    --------
    >>> from capalloc.experiments.incidental import incidental_polysemanticity
    >>> rows = incidental_polysemanticity(4, [4, 8], steps=50, seeds=1)  # doctest: +SKIP
    >>> [r["expected"] for r in rows]  # doctest: +SKIP
    [1.0, 0.5]
    """
    n = check_positive(n, "n", integer=True)
    seeds = check_positive(seeds, "seeds", integer=True)
    widths = [check_positive(d, "d", integer=True) for d in ds]
    if not widths or min(widths) < n:
        raise ValueError(f"ds must be neuron counts >= n={n}, got {short(list(ds))}")
    p = 1.0 / n if density is None else float(density)
    if not 0 < p <= 1:
        raise ValueError(f"density must lie in (0, 1], got {short(density)}")
    from capalloc.training import TrainConfig
    from capalloc.training.torch_models import train_model

    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, device=device, seed=seed)
    rows = []
    for d in widths:
        run = train_model(
            "neuron",
            np.ones((seeds, n)),
            d=d,
            sparsity=1.0 - p,
            activation_l1=activation_l1,
            config=config,
        )
        counts = neuron_polysemantic_counts(run.W)
        rows.append(
            {
                "n": n,
                "d": d,
                "polysemantic": counts["polysemantic"].tolist(),
                "monosemantic": counts["monosemantic"].tolist(),
                "dead": counts["dead"].tolist(),
                "polysemantic_mean": float(np.mean(counts["polysemantic"])),
                "expected": n * n / (4 * d),
                "loss": float(np.mean(run.loss)),
                "train_seconds": run.elapsed,
            }
        )
    return rows
