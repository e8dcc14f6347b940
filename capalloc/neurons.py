r"""Feature- and neuron-level measures of a (trained) embedding ``W`` of shape ``(..., d, n)``.

Columns :math:`W_i \in \mathbb R^d` embed the ``n`` features; rows
:math:`W_k` are the ``d`` hidden units (neurons). Leading axes are instances.

* :func:`dimensions_per_feature` -- Elhage et al.'s :math:`D^* = d / \|W\|_F^2`.
* :func:`feature_dimensionality` -- their per-feature
  :math:`D_i = \|W_i\|^2 / \sum_j (\hat W_i \cdot W_j)^2`.
* :func:`neuron_monosemanticity` and :func:`neuron_polysemantic_counts` -- Jermyn,
  Schiefer & Hubinger's neuron-level measure on single-feature inputs.

Every function takes numpy arrays (or anything :func:`numpy.asarray` takes);
:func:`dimensions_per_feature` and :func:`neuron_monosemanticity` also take torch
tensors and then return tensors (torch is never imported here).

References
----------
.. [1] N. Elhage et al., "Toy Models of Superposition", Transformer Circuits
   Thread (2022), section "The geometry of superposition".
.. [2] A. S. Jermyn, N. Schiefer, E. Hubinger, "Engineering Monosemanticity in Toy
   Models", arXiv:2211.09169.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from capalloc._lib.validation import as_float_array, short

__all__ = [
    "MONOSEMANTIC_THRESHOLD",
    "dimensions_per_feature",
    "feature_dimensionality",
    "neuron_monosemanticity",
    "neuron_polysemantic_counts",
]

#: Jermyn et al.'s threshold: a neuron is monosemantic when its measure exceeds it.
MONOSEMANTIC_THRESHOLD = 0.999


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _embedding(W: Any, name: str = "W") -> np.ndarray:
    return as_float_array(W, name, min_ndim=2)


def dimensions_per_feature(W: Any) -> Any:
    r"""Elhage et al.'s dimensions per feature, :math:`D^* = d / \|W\|_F^2`.

    With every feature of unit norm, :math:`\|W\|_F^2` counts the features
    represented, so :math:`D^*` is the share of a dimension each one gets:
    1 when ``d`` features are kept orthogonally, 1/2 for antipodal pairs,
    2/5 for pentagons. (Infinite for ``W = 0``.)

    Parameters
    ----------
    W : (..., d, n) array_like or torch.Tensor
        Embeddings, instances on the leading axes.

    Returns
    -------
    ndarray or torch.Tensor of shape ``(...)``
        (a float for a single ``(d, n)`` numpy embedding).

    Examples
    --------
    >>> import numpy as np
    >>> from capalloc.neurons import dimensions_per_feature
    >>> pentagon = np.array([[np.cos(a), np.sin(a)] for a in 2 * np.pi * np.arange(5) / 5]).T
    >>> round(dimensions_per_feature(pentagon), 12)
    0.4
    >>> orthogonal = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]  # two kept, two ignored
    >>> antipodal = [[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]]  # two antipodal pairs
    >>> dimensions_per_feature(np.array([orthogonal, antipodal])).tolist()
    [1.0, 0.5]
    """
    if _is_torch(W):
        return W.shape[-2] / (W**2).sum(dim=(-2, -1))
    arr = _embedding(W)
    with np.errstate(divide="ignore"):
        out = arr.shape[-2] / np.einsum("...kn,...kn->...", arr, arr)
    return float(out) if out.ndim == 0 else out


def feature_dimensionality(W: Any, tol: float = 1e-12) -> np.ndarray:
    r"""Per-feature dimensionality :math:`D_i = \|W_i\|^2 / \sum_j (\hat W_i \cdot W_j)^2`.

    :math:`\hat W_i = W_i / \|W_i\|`; the sum includes :math:`j = i`. A feature
    alone in its directions has :math:`D_i = 1`; features of a regular
    ``k``-gon in a plane (or an antipodal pair, ``k = 2``) have :math:`2/k`, of a
    tetrahedron :math:`3/4`, of a triangle :math:`2/3`. A zero column
    (norm at most ``tol``) has :math:`D_i = 0`. Since
    :math:`D_i = (W_i \cdot W_i)^2 / \sum_j (W_i \cdot W_j)^2`, it is the capacity
    :math:`C_i` of Scherlis et al. (:func:`capalloc.capacity`), read as a dimension.

    Parameters
    ----------
    W : (..., d, n) array_like
    tol : float, default 1e-12
        Columns with :math:`\|W_i\| \le` ``tol`` count as ignored.

    Returns
    -------
    (..., n) ndarray

    Examples
    --------
    >>> import numpy as np
    >>> from capalloc.neurons import feature_dimensionality
    >>> triangle = np.array([[np.cos(a), np.sin(a)] for a in 2 * np.pi * np.arange(3) / 3]).T
    >>> W = np.zeros((3, 5))
    >>> W[:2, :3], W[2, 3] = triangle, 2.0   # a triangle, a lone feature, an ignored one
    >>> feature_dimensionality(W).round(6).tolist()
    [0.666667, 0.666667, 0.666667, 1.0, 0.0]
    """
    arr = _embedding(W)
    gram = np.einsum("...ki,...kj->...ij", arr, arr)
    norms2 = np.einsum("...ii->...i", gram).copy()
    kept = norms2 > tol**2
    safe = np.where(kept, norms2, 1.0)
    interference = (gram**2).sum(axis=-1) / safe  # sum_j (W_i . W_j)^2 / |W_i|^2
    return np.where(kept, norms2 / np.where(kept, interference, 1.0), 0.0)


def neuron_monosemanticity(W: Any, bias: Any = None) -> Any:
    r"""Jermyn et al.'s neuron monosemanticity on single-feature inputs.

    Feeding the unit input :math:`x = e_i` gives neuron ``k`` the activation
    :math:`a_{ki} = \mathrm{ReLU}(W_{ki} + b_k)`; the neuron's measure is

    .. math:: M_k = \frac{\max_i a_{ki}}{\sum_i a_{ki}} \in [1/n, 1],

    1 when one feature alone activates it. A dead neuron (no feature activates
    it, :math:`\sum_i a_{ki} = 0`) gets NaN.

    Parameters
    ----------
    W : (..., d, n) array_like or torch.Tensor
        Encoder weights (rows are neurons).
    bias : (..., d) array_like or torch.Tensor, optional
        Hidden bias :math:`b` (default 0).

    Returns
    -------
    (..., d) ndarray or torch.Tensor

    Examples
    --------
    >>> import numpy as np
    >>> from capalloc.neurons import neuron_monosemanticity
    >>> W = np.array([[1.0, -0.5, 0.0], [0.5, 0.5, 0.0], [-1.0, -1.0, -1.0]])
    >>> neuron_monosemanticity(W).tolist()
    [1.0, 0.5, nan]
    >>> neuron_monosemanticity(W, bias=[0.5, -0.25, 0.0]).tolist()
    [0.75, 0.5, nan]
    """
    if _is_torch(W):
        pre = W if bias is None else W + bias[..., None]
        a = pre.clamp(min=0)
        total = a.sum(dim=-1)
        return a.max(dim=-1).values / total  # 0/0 = nan for dead neurons
    arr = _embedding(W)
    if bias is not None:
        b = as_float_array(bias, "bias")
        if b.shape != arr.shape[:-1]:
            raise ValueError(
                f"bias must have shape {arr.shape[:-1]} (W's (..., d)), got {short(b)}"
            )
        arr = arr + b[..., None]
    a = np.maximum(arr, 0.0)
    total = a.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, a.max(axis=-1) / np.where(total > 0, total, 1.0), np.nan)


def neuron_polysemantic_counts(
    W: Any, bias: Any = None, threshold: float = MONOSEMANTIC_THRESHOLD
) -> dict[str, np.ndarray]:
    r"""Count monosemantic, polysemantic and dead neurons per instance.

    Neuron ``k`` is monosemantic when :math:`M_k >` ``threshold`` (Jermyn et
    al.: 0.999), dead when no single feature activates it, else polysemantic
    (:math:`M_k` of :func:`neuron_monosemanticity`).

    Parameters
    ----------
    W : (..., d, n) array_like
    bias : (..., d) array_like, optional
    threshold : float in (0, 1), default 0.999

    Returns
    -------
    dict
        ``"monosemantic"``, ``"polysemantic"``, ``"dead"``: integer arrays of
        shape ``(...)`` (0-d for one embedding).

    Examples
    --------
    >>> import numpy as np
    >>> from capalloc.neurons import neuron_polysemantic_counts
    >>> W = np.array([[1.0, -0.5, 0.0], [0.5, 0.5, 0.0], [-1.0, -1.0, -1.0]])
    >>> {k: int(v) for k, v in neuron_polysemantic_counts(W).items()}
    {'monosemantic': 1, 'polysemantic': 1, 'dead': 1}
    """
    if isinstance(threshold, bool) or not 0 < float(threshold) < 1:
        raise ValueError(f"threshold must lie in (0, 1), got {short(threshold)}")
    if _is_torch(W):
        W = W.detach().cpu().numpy()
        bias = None if bias is None else bias.detach().cpu().numpy()
    M = neuron_monosemanticity(W, bias)
    dead = np.isnan(M)
    mono = ~dead & (np.nan_to_num(M) > threshold)
    return {
        "monosemantic": mono.sum(axis=-1),
        "polysemantic": (~dead & ~mono).sum(axis=-1),
        "dead": dead.sum(axis=-1),
    }
