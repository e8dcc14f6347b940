r"""Predicted against trained capacities, per model and sparsity.

Predictions (nothing is fitted to the trained models):

``"relu-ae"``
    :func:`capalloc.prediction.relu_ae.predict_relu_ae`, the exact group losses.
``"quadratic"``
    The exact optimum :func:`capalloc.solve` of
    :class:`~capalloc.QuadraticProblem` at kurtosis :math:`K = 3/(1 - S)`.
``"relu"``, ``"gelu"``
    The same quadratic-model optimum, used as a surrogate: no closed form of their
    per-feature losses is derived here.

The error of one trained instance is :math:`\frac1n\sum_i |C^{pred}_{(i)} - C^{train}_{(i)}|`
over the capacities sorted in decreasing order (:func:`capacity_error`), with the trained
:func:`~capalloc.training.effective_capacity`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from capalloc._lib.validation import check_positive, short

__all__ = [
    "MODELS",
    "capacity_error",
    "check_sparsities",
    "predict_capacity",
    "prediction_rows",
    "make_importance",
]

#: Models with a prediction.
MODELS = ("quadratic", "relu", "gelu", "relu-ae")


def make_importance(n: int, importance: str = "decay") -> np.ndarray:
    """``0.9**i`` (``"decay"``) or all ones (``"uniform"``), shape ``(n,)``.

    Examples
    --------
    >>> from capalloc.prediction.compare import make_importance
    >>> make_importance(3).tolist(), make_importance(2, "uniform").tolist()
    ([1.0, 0.9, 0.81], [1.0, 1.0])
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if importance == "decay":
        return 0.9 ** np.arange(n, dtype=float)
    if importance == "uniform":
        return np.ones(n)
    raise ValueError(f"importance must be 'decay' or 'uniform', got {importance!r}")


def check_sparsities(sparsities: Sequence[float]) -> list[float]:
    """A non-empty list of sparsities in ``[0, 1)`` as floats.

    Examples
    --------
    >>> from capalloc.prediction.compare import check_sparsities
    >>> check_sparsities((0.5, 0.9))
    [0.5, 0.9]
    """
    S = [float(x) for x in sparsities]
    if not S or any(not 0.0 <= x < 1.0 for x in S):
        raise ValueError(f"sparsities must lie in [0, 1), got {short(sparsities)}")
    return S


def capacity_error(predicted: Any, trained: Any) -> float:
    r"""Mean :math:`|C^{pred}_{(i)} - C^{train}_{(i)}|` over the sorted capacities.

    Examples
    --------
    >>> from capalloc.prediction.compare import capacity_error
    >>> capacity_error([1.0, 0.0, 0.5], [0.5, 0.9, 0.1])
    0.06666666666666667
    """
    p = np.sort(np.asarray(predicted, dtype=float))
    t = np.sort(np.asarray(trained, dtype=float))
    if p.shape != t.shape:
        raise ValueError(
            f"predicted and trained must have the same shape, got {p.shape}, {t.shape}"
        )
    return float(np.abs(p - t).mean())


def predict_capacity(model: str, importance: Any, d: int, sparsity: float) -> np.ndarray:
    """Predicted capacities of ``model`` (see the module docstring).

    Examples
    --------
    >>> from capalloc.prediction.compare import predict_capacity
    >>> predict_capacity("quadratic", [1.0, 0.5, 0.1], 1, 0.7).round(3).tolist()  # K = 10
    [0.762, 0.238, 0.0]
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {list(MODELS)}, got {model!r}")
    S = float(sparsity)
    if not 0.0 <= S < 1.0:
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity!r}")
    if model == "relu-ae":
        from capalloc.prediction.relu_ae import predict_relu_ae

        return predict_relu_ae(importance, d, S).capacity
    from capalloc.allocation import QuadraticProblem, solve

    return np.asarray(solve(QuadraticProblem(importance, d, kurtosis=3.0 / (1.0 - S))).capacity)


def prediction_rows(
    model: str,
    *,
    n: int = 20,
    d: int = 10,
    importance: str = "decay",
    sparsities: Sequence[float] = (0.5, 0.8, 0.9),
    seeds: int = 3,
    steps: int = 2000,
    seed: int = 0,
    restarts: int = 1,
) -> list[dict[str, Any]]:
    """Train ``seeds`` instances of ``model`` per sparsity and compare with the prediction.

    With ``restarts > 1`` each seed is the best (lowest final loss on a fresh batch) of
    ``restarts`` independently initialised runs: still unconstrained training, which only
    lowers the chance of ending in a poor local minimum (nothing of the prediction is used).

    Returns one row per sparsity: ``model``, ``sparsity``, ``importance``, ``n``, ``d``,
    ``restarts``, ``trained_capacity`` (one sorted list per seed), ``predicted_capacity``
    (sorted), ``error`` (per seed, :func:`capacity_error`), ``mean_error``,
    ``trained_loss`` (per seed) and ``predicted_loss`` (the exact expected loss of the
    predicted embedding for ``"relu-ae"``, else ``None``). Needs torch.
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {list(MODELS)}, got {model!r}")
    v = make_importance(n, importance)
    S = check_sparsities(sparsities)
    restarts = check_positive(restarts, "restarts", integer=True)
    from capalloc.training import TrainConfig
    from capalloc.training.torch_models import train_model

    per = seeds * restarts
    run = train_model(
        model, v, d=d, sparsity=np.repeat(S, per), config=TrainConfig(steps=steps, seed=seed)
    )
    # best restart of each seed: instances are laid out (sparsity, seed, restart)
    losses = np.asarray(run.loss, dtype=float).reshape(len(S), seeds, restarts)
    best = np.argmin(losses, axis=-1)
    C = np.asarray(run.effective_capacity).reshape(len(S), seeds, restarts, n)
    rows = []
    for k, s in enumerate(S):
        pred, pred_loss = _prediction(model, v, d, s)
        trained = C[k, np.arange(seeds), best[k]]
        trained_loss = losses[k, np.arange(seeds), best[k]]
        err = [capacity_error(pred, c) for c in trained]
        rows.append(
            {
                "model": model,
                "sparsity": s,
                "importance": importance,
                "n": n,
                "d": d,
                "trained_capacity": [np.sort(c)[::-1].round(4).tolist() for c in trained],
                "predicted_capacity": np.sort(pred)[::-1].round(4).tolist(),
                "error": [round(e, 4) for e in err],
                "mean_error": round(float(np.mean(err)), 4),
                "restarts": restarts,
                "trained_loss": [round(float(x), 6) for x in trained_loss],
                "predicted_loss": pred_loss,
            }
        )
    return rows


def _prediction(model: str, v: np.ndarray, d: int, sparsity: float) -> tuple[np.ndarray, Any]:
    """Predicted capacities and, where the prediction has one, the expected loss of the
    predicted embedding (rounded), else ``None``."""
    if model != "relu-ae":
        return predict_capacity(model, v, d, sparsity), None
    from capalloc.prediction.relu_ae import predict_relu_ae

    alloc = predict_relu_ae(v, d, sparsity)
    return alloc.capacity, round(float(alloc.loss), 6)
