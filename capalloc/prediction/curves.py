r"""Capacity-constrained loss curves: the loss of a trained model whose feature ``i`` is held
at capacity ``c`` while everything else trains freely.

.. math::

    L^*_i(c) = \min_{W, b}\ L(W, b) \quad \text{s.t.}\ C_i(W) = c

is measured by training with the penalty :math:`\lambda\, \bar L\, (C_i(W) - c)^2` (:math:`\bar L`
the current loss, held constant, so that :math:`\lambda` is scale-free; on
:func:`capalloc.capacity` of the torch weights, which is differentiable), one instance per
target ``c``, all in one batched run. For a separable loss
:math:`L^*_i(c) = \ell_i(c) + G(d - c)`, with :math:`G(B)` the optimum of the other
features on the budget :math:`B`; :func:`quadratic_curve` computes that exactly for the
quadratic model (by bisection on the level, sharing no code with the solvers), which is
what the measured curve is tested against. Its slope at the free optimum is the
marginal benefit of capacity, and how it bends says where a feature prefers to sit:
a curve with its minimum inside (0, 1) is a polysemantic feature, one falling all the
way to :math:`c = 1` a monosemantic one. Needs torch (except :func:`quadratic_curve`).

Examples
--------
>>> import numpy as np
>>> from capalloc.prediction.curves import quadratic_curve
>>> L = quadratic_curve(0.9 ** np.arange(6), 3, 10.0, feature=2, capacities=[0.0, 1.0])
>>> bool(L[1] < L[0])  # the third most important of six features wants its capacity
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from capalloc._lib.validation import check_positive, short
from capalloc.prediction.compare import make_importance
from capalloc.quadratic import closed_form

__all__ = ["constrained_loss_curve", "quadratic_curve"]


def _others_optimum(v: np.ndarray, K: float, budget: float) -> float:
    """Least :math:`\\sum_j \\ell_j(C_j)` with :math:`\\sum_j C_j \\le` ``budget``
    (convex ``K > 3``): bisection on the level ``mu`` of :math:`C_j(\\mu)`."""
    if budget >= np.count_nonzero(v):
        return 0.0
    if budget <= 0:
        return float(closed_form.feature_loss(0.0, v, K).sum())
    lo, hi = 1e-300, float((K - 1) * v.max())  # capacity sum d at lo, 0 at hi
    for _ in range(200):
        mid = np.sqrt(lo * hi)
        if closed_form.capacity_at(mid, v, K).sum() > budget:
            lo = mid
        else:
            hi = mid
    return float(closed_form.feature_loss(closed_form.capacity_at(hi, v, K), v, K).sum())


def quadratic_curve(
    importance: Any, d: int, kurtosis: float, *, feature: int, capacities: Sequence[float]
) -> np.ndarray:
    r"""Exact :math:`L^*_i(c) = \ell_i(c) + G(d - c)` of the quadratic model (``K > 3``)."""
    v = np.asarray(importance, dtype=float)
    K = float(kurtosis)
    if not K > 3:
        raise ValueError(f"kurtosis must exceed 3 (convex losses), got {kurtosis!r}")
    rest = np.delete(v, feature)
    return np.array(
        [
            float(closed_form.feature_loss(c, v[feature], K)) + _others_optimum(rest, K, d - c)
            for c in capacities
        ]
    )


def constrained_loss_curve(
    model: str = "quadratic",
    *,
    feature: int = 4,
    capacities: Sequence[float] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
    n: int = 20,
    d: int = 10,
    sparsity: float = 0.8,
    importance: str = "decay",
    strength: float = 300.0,
    steps: int = 3000,
    seed: int = 0,
    eval_batch: int = 1 << 16,
) -> list[dict[str, Any]]:
    r"""Measure :math:`L^*_i(c)` for each target capacity (module docstring).

    Rows: ``model``, ``sparsity``, ``feature``, ``target`` (``c``), ``capacity`` (reached
    :math:`C_i`), ``loss`` (unpenalised: on a fresh batch of ``eval_batch`` samples, or for
    the quadratic model exactly, :func:`capalloc.quadratic.model.quadratic_loss` at the
    trained ``W`` with the best bias), and for the quadratic model ``exact``
    (:func:`quadratic_curve` at the reached capacity, :math:`K = 3/(1 - S)`).
    """
    cs = [float(c) for c in capacities]
    if not cs or any(not 0.0 <= c <= 1.0 for c in cs):
        raise ValueError(f"capacities must lie in [0, 1], got {short(capacities)}")
    strength = check_positive(strength, "strength")
    v = make_importance(n, importance)
    if not (isinstance(feature, (int, np.integer)) and 0 <= feature < n):
        raise ValueError(f"feature must be an index in [0, {n}), got {feature!r}")
    import torch

    from capalloc._capacity import capacity
    from capalloc.training import TrainConfig
    from capalloc.training.torch_models import Penalised, build_model, fit

    cfg = TrainConfig(steps=steps, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    inner = build_model(model, v, d, sparsity, instances=len(cs), generator=gen)
    target = torch.tensor(cs, dtype=inner.W.dtype)

    def held(model: Any, plain: Any) -> Any:
        return strength * plain.detach() * (capacity(model.W)[:, feature] - target) ** 2

    fit(Penalised(inner, held), cfg, generator=gen, desc="capacity-held")
    W = inner.W.detach().double().numpy()
    reached = capacity(W)[:, feature]
    K = 3.0 / (1.0 - sparsity)
    if model == "quadratic":
        from capalloc.quadratic.model import quadratic_loss

        loss = np.asarray(quadratic_loss(W, v, K), dtype=float)
        exact = quadratic_curve(v, d, K, feature=feature, capacities=reached)
    else:
        with torch.no_grad():
            loss = inner.loss(inner.sample(eval_batch, gen)).double().numpy()
        exact = np.full(len(cs), np.nan)
    return [
        {
            "model": model,
            "sparsity": float(sparsity),
            "feature": int(feature),
            "target": c,
            "capacity": round(float(r), 4),
            "loss": round(float(x), 6),
            "exact": None if np.isnan(e) else round(float(e), 6),
        }
        for c, r, x, e in zip(cs, reached, loss, exact, strict=True)
    ]
