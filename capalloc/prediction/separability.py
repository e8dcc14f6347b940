r"""How much of a trained model's loss its capacities determine: the basis test.

Capacities depend on the embedding only through the Gram matrix :math:`W^\top W`, so
they do not change when the hidden space is rotated, :math:`W \to Q W` with
:math:`Q` orthogonal. A loss that is a function of the capacities (as the quadratic
model's is at its optimum, :math:`\sum_i \ell_i(C_i)`) cannot change either. So the
ratio

.. math::

    \rho = \frac{\mathbb E_Q\, L(Q W,\ b^*(Q W))}{L(W,\ b^*(W))}

over random rotations :math:`Q` (Haar), with the output bias re-optimised in closed
form for each, measures how far a model is from *any* capacity-only description:
:math:`\rho = 1` means the capacities (and the geometry they summarise) carry the
whole loss; :math:`\rho > 1` means the trained model also uses its privileged neuron
basis, which no per-feature loss :math:`\ell_i(C_i)` can express.

Exact checks, which :func:`basis_dependence` reports alongside: the quadratic model
(:math:`\sum_k (Wx)_k^2 = \lVert W x\rVert^2`) and the ReLU autoencoder
(:math:`\hat x = \mathrm{ReLU}(W^\top W x + b)`) give :math:`\rho = 1` to rounding;
permuting the neurons changes no model's loss. Needs torch.

Examples
--------
>>> from capalloc.prediction.separability import haar_rotations
>>> Q = haar_rotations(3, 4, seed=0)
>>> Q.shape, bool(abs(Q[0] @ Q[0].T - __import__("numpy").eye(4)).max() < 1e-12)
((3, 4, 4), True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from capalloc._lib.validation import check_positive
from capalloc.prediction.compare import check_sparsities, make_importance

__all__ = ["basis_dependence", "haar_rotations", "rotated_losses"]


def haar_rotations(count: int, d: int, *, seed: int = 0, angle: float | None = None) -> np.ndarray:
    r"""``count`` random orthogonal ``d x d`` matrices, shape ``(count, d, d)``.

    ``angle=None``: Haar-distributed (QR of Gaussian matrices with the signs of ``R``'s
    diagonal moved into ``Q``). A number: :math:`\exp(\theta A)` with :math:`A` a random
    antisymmetric matrix scaled so that no plane turns by more than ``angle`` radians
    (small angles probe how sharply the loss depends on the basis).
    """
    count = check_positive(count, "count", integer=True)
    d = check_positive(d, "d", integer=True)
    G = np.random.default_rng(seed).standard_normal((count, d, d))
    if angle is None:
        Q, R = np.linalg.qr(G)
        return Q * np.sign(np.diagonal(R, axis1=-2, axis2=-1))[:, None, :]
    from scipy.linalg import expm

    theta = check_positive(angle, "angle")
    A = G - np.swapaxes(G, -1, -2)
    A /= np.maximum(np.linalg.norm(A, ord=2, axis=(-2, -1)), 1e-300)[:, None, None]
    return np.stack([expm(theta * a) for a in A])


def _loss_with_best_bias(model: Any, x: Any) -> Any:
    """Per-instance loss of ``model`` on ``x``; a scalar-output model's bias is first set
    to its exact optimum for the current ``W`` (the mean residual)."""
    import torch

    with torch.no_grad():
        if hasattr(model, "target") and model.b.ndim == 1:  # scalar output: y = sum f(Wx) + b
            free = model.activation(model.embed(x)).sum(-1)
            model.b.copy_((model.target(x) - free).mean(-1))
        return model.loss(x)


def rotated_losses(
    model: Any, W: Any, bias: Any, rotations: np.ndarray, x: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Losses of ``model`` (``m`` instances) at ``W``, at ``Q W`` for each rotation and at
    ``W`` with its neurons reversed, each with its bias re-optimised, on one batch ``x``.

    Returns ``(base (m,), rotated (r, m), permuted (m,))``.
    """
    import torch

    W0 = torch.tensor(np.asarray(W), dtype=model.W.dtype)
    b0 = torch.tensor(np.asarray(bias), dtype=model.W.dtype)

    def at(Wnew: Any) -> np.ndarray:
        with torch.no_grad():
            model.W.copy_(Wnew)
            model.b.copy_(b0)
        return _loss_with_best_bias(model, x).double().numpy()

    base = at(W0)
    Qs = torch.as_tensor(rotations, dtype=model.W.dtype)
    rotated = np.stack([at(Q @ W0) for Q in Qs])
    permuted = at(torch.flip(W0, dims=[-2]))
    return base, rotated, permuted


def basis_dependence(
    model: str = "relu",
    *,
    n: int = 20,
    d: int = 10,
    importance: str = "decay",
    sparsities: Sequence[float] = (0.5, 0.8, 0.9),
    seeds: int = 3,
    steps: int = 2000,
    rotations: int = 8,
    angles: Sequence[float | None] = (None,),
    seed: int = 0,
    eval_batch: int = 1 << 16,
) -> list[dict[str, Any]]:
    r"""Train ``model`` and measure :math:`\rho` (module docstring), one row per sparsity
    and rotation angle (``None``: Haar-random rotations, see :func:`haar_rotations`).

    Rows: ``model``, ``sparsity``, ``angle``, ``loss`` (trained ``W``, best bias; mean over seeds),
    ``rotated_loss`` (mean over rotations and seeds), ``ratio`` (mean over seeds of
    the per-seed :math:`\rho`), ``ratio_min``/``ratio_max`` (over rotations and seeds),
    ``permuted_ratio`` (neurons reversed: 1 for every model), ``max_capacity_change``
    (under rotation: rounding only). The same evaluation batch serves every rotation
    (common random numbers), so the ratios are sharper than the losses.
    """
    from capalloc._capacity import capacity

    rotations = check_positive(rotations, "rotations", integer=True)
    S = check_sparsities(sparsities)
    import torch

    from capalloc.training import TrainConfig
    from capalloc.training.torch_models import build_model, train_model

    v = make_importance(n, importance)
    sp = np.repeat(S, seeds)
    run = train_model(model, v, d=d, sparsity=sp, config=TrainConfig(steps=steps, seed=seed))
    W = np.asarray(run.W, dtype=float)
    probe = build_model(model, v, d, sp, dtype=torch.float64)
    x = probe.sample(eval_batch, torch.Generator().manual_seed(seed + 1))
    rows = []
    for angle in angles:
        Qs = haar_rotations(rotations, d, seed=seed, angle=angle)
        base, rotated, permuted = rotated_losses(probe, W, run.bias, Qs, x)
        dC = max(float(np.abs(capacity(Q @ W) - capacity(W)).max()) for Q in Qs)
        rows += _rows(model, S, seeds, importance, n, d, angle, base, rotated, permuted, dC)
    return rows


def _rows(model, S, seeds, importance, n, d, angle, base, rotated, permuted, dC):  # noqa: ANN001, ANN202
    rho = rotated / base
    rows = []
    for k, s in enumerate(S):
        sl = slice(k * seeds, (k + 1) * seeds)
        rows.append(
            {
                "model": model,
                "sparsity": s,
                "angle": angle,
                "importance": importance,
                "n": n,
                "d": d,
                "loss": round(float(base[sl].mean()), 6),
                "rotated_loss": round(float(rotated[:, sl].mean()), 6),
                "ratio": round(float(rho[:, sl].mean()), 4),
                "ratio_min": round(float(rho[:, sl].min()), 4),
                "ratio_max": round(float(rho[:, sl].max()), 4),
                "permuted_ratio": round(float((permuted[sl] / base[sl]).max()), 6),
                "max_capacity_change": float(f"{dC:.2g}"),
            }
        )
    return rows
