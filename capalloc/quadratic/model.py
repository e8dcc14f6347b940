r"""The quadratic toy model and its exact expected loss.

Target :math:`y = \sum_i v_i x_i^2`, model :math:`\hat y = \lVert W x\rVert^2 + b`
with independent features of mean 0, variance 1 and fourth moment :math:`K_i`.
The expected squared error is exact in closed form:

.. math::

    L(W, b) = \sum_i (K_i - 1)(v_i - N_i)^2
              + \Big(\sum_i (v_i - N_i) - b\Big)^2
              + 2 \sum_{i \ne j} (W_i \cdot W_j)^2,

with :math:`N_i = \lVert W_i\rVert^2`. All functions cost :math:`O(n d^2)`;
:math:`\sum_{i\ne j}(W_i\cdot W_j)^2 = \lVert W W^\top\rVert_F^2 - \sum_i N_i^2`, so
no ``(n, n)`` matrix is formed.

References
----------
.. [1] Scherlis et al., "Polysemanticity and Capacity in Neural Networks",
   arXiv:2210.01892, section on the quadratic model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from capalloc._lib.validation import as_float_array, check_importance, check_kurtosis

__all__ = [
    "quadratic_loss",
    "quadratic_loss_grad",
    "optimal_bias",
    "capacity_form_loss",
    "predict",
    "target",
]


def _inputs(W: Any, importance: Any, kurtosis: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    W = as_float_array(W, "W", min_ndim=2)
    n = W.shape[-1]
    v = check_importance(importance, ndim=(1, 2) if W.ndim > 2 else (1,))
    if v.shape[-1] != n:
        raise ValueError(f"importance must have length n={n} (columns of W), got shape {v.shape}")
    try:
        np.broadcast_shapes(W.shape[:-2], v.shape[:-1])
    except ValueError:
        raise ValueError(
            f"importance of shape {v.shape} does not match the batch shape {W.shape[:-2]} of W"
        ) from None
    K = check_kurtosis(kurtosis)
    if K.ndim and K.shape[-1] != n:
        raise ValueError(f"kurtosis must be a scalar or have length n={n}, got shape {K.shape}")
    return W, v, K


def _parts(W: np.ndarray):
    N = np.einsum("...kn,...kn->...n", W, W)
    M = W @ np.swapaxes(W, -1, -2)
    cross = np.einsum("...ij,...ij->...", M, M) - np.einsum("...n,...n->...", N, N)
    return N, M, cross


def optimal_bias(W: Any, importance: Any) -> Any:
    r"""Bias minimising the expected loss: :math:`b^* = \sum_i (v_i - \lVert W_i\rVert^2)`.

    Parameters
    ----------
    W : (..., d, n) array_like
    importance : (n,) array_like

    Returns
    -------
    b : float or (...,) ndarray

    Examples
    --------
    >>> import numpy as np
    >>> from capalloc import optimal_bias
    >>> optimal_bias(np.eye(2, 3), [1.0, 1.0, 0.5])
    0.5
    """
    W, v, _ = _inputs(W, importance, 3.0)
    b = np.sum(v - np.einsum("...kn,...kn->...n", W, W), axis=-1)
    return float(b) if np.ndim(b) == 0 else b


def quadratic_loss(W: Any, importance: Any, kurtosis: Any, bias: Any = None) -> Any:
    r"""Exact expected squared error of the quadratic model.

    .. math::

        L(W, b) = \sum_i (K_i - 1)(v_i - N_i)^2 + \Big(\sum_i (v_i - N_i) - b\Big)^2
                  + 2\sum_{i\ne j} (W_i\cdot W_j)^2

    Parameters
    ----------
    W : (..., d, n) array_like of float
        Embedding matrix.
    importance : (n,) array_like of float
        Importances :math:`v_i \ge 0`.
    kurtosis : float or (n,) array_like of float
        Fourth moments :math:`K_i = E[x_i^4] \ge 1`.
    bias : float, optional
        Output bias; ``None`` uses the optimal bias.

    Returns
    -------
    loss : float or (...,) ndarray

    References
    ----------
    .. [1] Scherlis et al., arXiv:2210.01892.

    Examples
    --------
    >>> import numpy as np
    >>> from capalloc import quadratic_loss
    >>> quadratic_loss(np.eye(2, 3), [1.0, 1.0, 0.5], kurtosis=3.0)  # third feature ignored
    0.5
    """
    W, v, K = _inputs(W, importance, kurtosis)
    N, _, cross = _parts(W)
    resid = np.sum(v - N, axis=-1)
    bias_term = 0.0 if bias is None else (resid - as_float_array(bias, "bias")) ** 2
    loss = np.sum((K - 1) * (v - N) ** 2, axis=-1) + bias_term + 2 * cross
    return float(loss) if np.ndim(loss) == 0 else loss


def quadratic_loss_grad(
    W: Any, importance: Any, kurtosis: Any, bias: Any = None
) -> tuple[Any, np.ndarray]:
    r"""Exact expected loss and its gradient with respect to ``W``.

    .. math::

        \frac{\partial L}{\partial W_i} = -4\big[(K_i - 1)(v_i - N_i) + r\big] W_i
            + 8\big(W W^\top W_i - N_i W_i\big),
        \qquad r = \sum_j (v_j - N_j) - b

    (``r = 0`` at the optimal bias).

    Returns
    -------
    loss : float or (...,) ndarray
    grad : (..., d, n) ndarray

    Examples
    --------
    >>> import numpy as np
    >>> from capalloc import quadratic_loss_grad
    >>> loss, grad = quadratic_loss_grad(np.eye(2, 3), [1.0, 1.0, 0.5], 3.0)
    >>> float(np.abs(grad).max())
    0.0
    """
    W, v, K = _inputs(W, importance, kurtosis)
    N, M, cross = _parts(W)
    resid = np.sum(v - N, axis=-1)
    r = np.zeros_like(resid) if bias is None else resid - as_float_array(bias, "bias")
    loss = np.sum((K - 1) * (v - N) ** 2, axis=-1) + r**2 + 2 * cross
    coef = -4 * ((K - 1) * (v - N) + np.asarray(r)[..., None]) - 8 * N
    grad = W * coef[..., None, :] + 8 * (M @ W)
    return (float(loss) if np.ndim(loss) == 0 else loss), grad


def capacity_form_loss(C: Any, norms: Any, importance: Any, kurtosis: Any) -> Any:
    r"""The quadratic-model loss written through capacities and squared norms.

    .. math::

        L = \sum_i \Big[(K_i - 1)(v_i - N_i)^2 + 2 N_i^2 \Big(\frac{1}{C_i} - 1\Big)\Big]

    A feature with ``N_i = 0`` contributes :math:`(K_i-1) v_i^2` whatever its
    capacity; ``C_i = 0`` with ``N_i > 0`` is impossible and raises.

    Parameters
    ----------
    C : (..., n) array_like
        Capacities in [0, 1].
    norms : (..., n) array_like
        Squared column norms :math:`N_i = \lVert W_i\rVert^2 \ge 0`.
    importance, kurtosis
        As in :func:`quadratic_loss`.

    Examples
    --------
    >>> from capalloc import capacity_form_loss
    >>> capacity_form_loss([0.5, 0.5], [1.0, 1.0], [1.0, 1.0], 3.0)  # antipodal pair
    4.0
    """
    C = as_float_array(C, "C", min_ndim=1)
    N = as_float_array(norms, "norms")
    v = check_importance(importance, ndim=(1, 2))
    K = check_kurtosis(kurtosis)
    n = C.shape[-1]
    if N.shape != C.shape:
        raise ValueError(f"norms must have the shape of C {C.shape}, got shape {N.shape}")
    if v.shape[-1] != n:
        raise ValueError(f"importance must have length n={n} (as C), got shape {v.shape}")
    if K.ndim and K.shape[-1] != n:
        raise ValueError(f"kurtosis must be a scalar or have length n={n}, got shape {K.shape}")
    if C.min(initial=0) < 0 or C.max(initial=0) > 1:
        raise ValueError(f"C must lie in [0, 1], got range [{C.min()}, {C.max()}]")
    if N.min(initial=0) < 0:
        raise ValueError(f"norms must be >= 0, found {N.min()!r}")
    if np.any((C == 0) & (N > 0)):
        raise ValueError("C = 0 with norms > 0 is impossible (a non-zero column has C > 0)")
    with np.errstate(divide="ignore", invalid="ignore"):
        inter = np.where(N > 0, 2 * N**2 * (1 / np.where(C > 0, C, 1.0) - 1), 0.0)
    loss = np.sum((K - 1) * (v - N) ** 2 + inter, axis=-1)
    return float(loss) if np.ndim(loss) == 0 else loss


def target(x: Any, importance: Any) -> Any:
    r"""Target :math:`y = \sum_i v_i x_i^2` for samples ``x`` of shape ``(m, n)`` (numpy or torch)."""
    return (x * x) @ importance


def predict(W: Any, x: Any, bias: float = 0.0) -> Any:
    r"""Model output :math:`\hat y = \lVert W x\rVert^2 + b` for samples ``x`` of shape ``(m, n)``."""
    h = x @ W.T
    return (h * h).sum(-1) + bias
