r"""Jermyn et al.'s monosemanticity interventions on the neuron model, at a CPU size.

The ``neuron`` model (:math:`h = \mathrm{ReLU}(W x + c)`,
:math:`\hat x = \mathrm{ReLU}(W^\top h + b)`) is trained under a baseline setting
and under each intervention of Jermyn, Schiefer & Hubinger ("Engineering
Monosemanticity in Toy Models"): a trained hidden bias started negative, the
same with decay on the biases, more neurons, a larger learning rate, and an L1
penalty on the activations. Each
run's neurons are counted by :func:`capalloc.neurons.neuron_polysemantic_counts`
(monosemantic when :math:`\max_i a_{ki} / \sum_i a_{ki} > 0.999` on single-feature
inputs).

References
----------
.. [1] A. S. Jermyn, N. Schiefer, E. Hubinger, "Engineering Monosemanticity in Toy
   Models", arXiv:2211.09169.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from capalloc._lib.validation import check_positive, short
from capalloc.neurons import neuron_monosemanticity, neuron_polysemantic_counts

__all__ = ["INTERVENTIONS", "monosemanticity_interventions"]

#: Intervention name: changes to the baseline (``hidden_bias``, ``bias_decay``,
#: ``neurons`` as a multiple of ``d``, ``lr`` as a multiple of the base rate,
#: ``activation_l1`` the L1 penalty on the hidden activations).
INTERVENTIONS: dict[str, dict[str, float | None]] = {
    "baseline": {},
    "negative bias": {"hidden_bias": -0.2},
    "negative bias + bias decay": {"hidden_bias": -0.2, "bias_decay": 0.1},
    "more neurons": {"neurons": 2.0},
    "higher lr": {"lr": 3.0},
    "activation L1": {"activation_l1": 0.03},
}


def monosemanticity_interventions(
    n: int = 16,
    d: int = 32,
    density: float | None = None,
    *,
    interventions: Sequence[str] = tuple(INTERVENTIONS),
    seeds: int = 4,
    steps: int = 3000,
    batch_size: int = 512,
    lr: float = 1e-2,
    device: str = "cpu",
    seed: int = 0,
) -> list[dict[str, Any]]:
    r"""Train the neuron model under each intervention and count its neurons.

    Parameters
    ----------
    n, d : int, default 16, 32
        Features (equal importance) and neurons of the baseline.
    density : float in (0, 1], optional
        Probability that a feature is active; default :math:`1/n`.
    interventions : sequence of str
        Keys of :data:`INTERVENTIONS`.
    seeds, steps, batch_size, lr, device, seed
        ``seeds`` instances per intervention (one batched run each) and the
        :class:`~capalloc.training.TrainConfig` of the baseline (AdamW).

    Returns
    -------
    list of dict
        Per intervention: ``intervention``, ``neurons``, ``monosemantic``,
        ``polysemantic``, ``dead`` (per seed), ``monosemantic_fraction`` (of the
        live neurons, mean over seeds), ``mean_monosemanticity`` (mean
        :math:`M_k` of the live neurons), ``loss`` (mean) and ``train_seconds``.

    Examples
    --------
    >>> from capalloc.experiments.monosemanticity import monosemanticity_interventions
    >>> rows = monosemanticity_interventions(4, 8, steps=50, seeds=1)  # doctest: +SKIP
    >>> [r["intervention"] for r in rows][:2]  # doctest: +SKIP
    ['baseline', 'negative bias']
    """
    n = check_positive(n, "n", integer=True)
    d = check_positive(d, "d", integer=True)
    seeds = check_positive(seeds, "seeds", integer=True)
    p = 1.0 / n if density is None else float(density)
    if not 0 < p <= 1:
        raise ValueError(f"density must lie in (0, 1], got {short(density)}")
    unknown = [name for name in interventions if name not in INTERVENTIONS]
    if unknown:
        raise ValueError(
            f"interventions must be among {list(INTERVENTIONS)}, got {short(unknown[0])}"
        )
    from capalloc.training import TrainConfig
    from capalloc.training.torch_models import train_model

    rows = []
    for name in interventions:
        change = INTERVENTIONS[name]
        neurons = int(round(d * float(change.get("neurons") or 1.0)))
        config = TrainConfig(
            steps=steps,
            batch_size=batch_size,
            lr=lr * float(change.get("lr") or 1.0),
            optimizer="adamw",
            bias_decay=float(change.get("bias_decay") or 0.0),
            device=device,
            seed=seed,
        )
        run = train_model(
            "neuron",
            np.ones((seeds, n)),
            d=neurons,
            sparsity=1.0 - p,
            hidden_bias=change.get("hidden_bias"),
            activation_l1=float(change.get("activation_l1") or 0.0),
            config=config,
        )
        counts = neuron_polysemantic_counts(run.W, run.hidden_bias)
        M = neuron_monosemanticity(run.W, run.hidden_bias)
        live = neurons - counts["dead"]
        rows.append(
            {
                "intervention": name,
                "neurons": neurons,
                "monosemantic": counts["monosemantic"].tolist(),
                "polysemantic": counts["polysemantic"].tolist(),
                "dead": counts["dead"].tolist(),
                "monosemantic_fraction": float(
                    np.mean(counts["monosemantic"] / np.maximum(live, 1))
                ),
                "mean_monosemanticity": float(np.nanmean(M)),
                "loss": float(np.mean(run.loss)),
                "train_seconds": run.elapsed,
            }
        )
    return rows
