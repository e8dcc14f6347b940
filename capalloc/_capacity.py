r"""Feature capacity of an embedding matrix.

An embedding ``h = W x`` stores feature ``i`` in column :math:`W_i` of the
``(d, n)`` matrix ``W``. Its capacity is

.. math::

    C_i = \frac{(W_i \cdot W_i)^2}{\sum_j (W_i \cdot W_j)^2} \in [0, 1],
    \qquad \sum_i C_i \le \operatorname{rank} W \le d .

Because :math:`\sum_j (W_i\cdot W_j)^2 = W_i^\top M W_i` with :math:`M = W W^\top`,
every capacity costs :math:`O(d^2)` and the ``(n, n)`` Gram matrix is never formed.

References
----------
.. [1] A. Scherlis, K. Sachan, A. S. Jermyn, J. Benton, B. Shlegeris,
   "Polysemanticity and Capacity in Neural Networks", arXiv:2210.01892 (2022).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from capalloc._lib.validation import as_float_array, check_positive

__all__ = [
    "capacity",
    "leverage",
    "classify",
    "label_counts",
    "MONOSEMANTIC",
    "POLYSEMANTIC",
    "IGNORED",
    "LABELS",
]

MONOSEMANTIC = "monosemantic"
POLYSEMANTIC = "polysemantic"
IGNORED = "ignored"
#: The three labels, in the order of decreasing capacity.
LABELS = (MONOSEMANTIC, POLYSEMANTIC, IGNORED)

_CHUNK = 8192  # columns per block: bounds the extra memory to O(d * _CHUNK)


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _check_matrix(W: Any, name: str = "W") -> np.ndarray:
    if _is_torch(W):  # every torch float dtype (bfloat16 included) widens exactly to float64
        W = W.detach().cpu().double().numpy()
    return as_float_array(W, name, min_ndim=2)


def _unit_scale(amax: Any, xp: Any = np) -> tuple[Any, Any]:
    """Powers of two ``p, q`` with ``amax * p * q`` in [0.5, 1) (``p = q = 1`` where ``amax = 0``).

    ``amax`` holds the largest absolute entry of each matrix of the batch, shape
    ``(..., 1, 1)``, as a numpy array (``xp=numpy``) or a torch tensor (``xp=torch``).
    Capacity and leverage are scale free, and multiplying by a power of two is
    exact (short of underflow), so scaling by ``p * q`` before any product or cast
    to a lower precision prevents overflow and underflow at no cost in accuracy.
    ``q`` is 1 unless ``amax`` is subnormal, where ``p * q`` alone would overflow.
    """
    e = -xp.frexp(amax)[1]
    e_p = xp.minimum(e, -xp.frexp(xp.full_like(amax, xp.finfo(amax.dtype).tiny))[1])
    one = xp.ones_like(amax)
    return xp.ldexp(one, e_p), xp.ldexp(one, e - e_p)


def _scale(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_unit_scale` of each matrix of the batch ``W``."""
    if W.size == 0:
        return _unit_scale(np.zeros(W.shape[:-2] + (1, 1)))
    axes = (-2, -1)  # max |W| without the temporary array np.abs(W)
    return _unit_scale(
        np.maximum(W.max(axis=axes, keepdims=True), -W.min(axis=axes, keepdims=True))
    )


def _scaled(W: np.ndarray, scale: tuple[np.ndarray, np.ndarray], dtype: Any) -> np.ndarray:
    """``W * p * q`` in ``dtype``, rounded once: the product is exact in float64."""
    p, q = scale
    A = np.multiply(W, p, out=np.empty(W.shape, dtype), casting="same_kind")
    if np.any(q != 1):  # subnormal max |W|: W * p is in the normal range, so this is exact
        A *= q.astype(dtype)
    return A


def _blocks(W: np.ndarray, scale: tuple[np.ndarray, np.ndarray], dtype: Any = np.float64):
    """Yield ``(columns, scaled W[..., :, columns])`` in blocks of ``_CHUNK`` columns.

    Only one scaled block exists at a time, so no full-size copy of ``W`` is made.
    """
    for start in range(0, W.shape[-1], _CHUNK):
        cols = slice(start, start + _CHUNK)
        yield cols, _scaled(W[..., :, cols], scale, dtype)


def _gram(
    W: np.ndarray, scale: tuple[np.ndarray, np.ndarray], dtype: Any = np.float64
) -> np.ndarray:
    """``A A^T`` for the scaled ``A = W p q``, shape ``(..., d, d)``, accumulated over blocks."""
    d = W.shape[-2]
    M = np.zeros(W.shape[:-2] + (d, d), dtype=dtype)
    for _, block in _blocks(W, scale, dtype):
        M += block @ np.swapaxes(block, -1, -2)
    return M


def _quadratic_forms(
    W: np.ndarray, scale: tuple[np.ndarray, np.ndarray], M: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``a_i^T M a_i`` and ``a_i^T a_i`` for every scaled column ``a_i = W_i p q``."""
    n = W.shape[-1]
    forms = np.empty(W.shape[:-2] + (n,))
    norms2 = np.empty(W.shape[:-2] + (n,))
    for cols, block in _blocks(W, scale, M.dtype):
        norms2[..., cols] = np.einsum("...kn,...kn->...n", block, block, dtype=np.float64)
        forms[..., cols] = np.einsum("...kn,...kn->...n", M @ block, block, dtype=np.float64)
    return forms, norms2


def _gram_route(
    W: np.ndarray, scale: tuple[np.ndarray, np.ndarray], dtype: Any
) -> tuple[np.ndarray, np.ndarray]:
    """``d > n``: the same forms from the smaller ``(n, n)`` Gram matrix, :math:`O(n^2 d)`."""
    A = _scaled(W, scale, dtype)
    G = np.swapaxes(A, -1, -2) @ A
    norms2 = np.einsum("...kn,...kn->...n", A, A, dtype=np.float64)
    return np.einsum("...ij,...ij->...i", G, G, dtype=np.float64), norms2


def capacity(W: Any, *, dtype: Any = None) -> Any:
    r"""Capacity of every feature (column) of an embedding matrix.

    .. math::

        C_i = \frac{\lVert W_i\rVert^4}{W_i^\top (W W^\top) W_i}

    Parameters
    ----------
    W : (..., d, n) array_like of float or torch.Tensor
        Embedding matrix; column ``i`` embeds feature ``i``. Leading batch
        dimensions are allowed.
    dtype : {None, numpy.float64, numpy.float32}, optional
        Arithmetic of the matrix products (numpy input only; reductions stay in
        float64). float32 halves memory and roughly doubles speed on large
        matrices, at a relative error near 1e-7. Torch input is computed in its
        own dtype, float16 and bfloat16 in float32.

    Returns
    -------
    C : (..., n) ndarray or torch.Tensor
        Capacities in [0, 1], of the input's type, dtype (float16 and bfloat16
        included) and device; differentiable in torch. This is also Elhage et
        al.'s "feature dimensionality".

    Notes
    -----
    Cost is :math:`O(n d^2)` time and :math:`O(d^2 + n)` extra memory (columns
    are processed in blocks); when ``d > n`` the smaller ``(n, n)`` Gram matrix
    is used instead, :math:`O(n^2 d)`.

    Each matrix is first multiplied by the power of two that brings its largest
    absolute entry into [0.5, 1), in float64 (numpy) or in the working dtype
    (torch; float16 and bfloat16 are widened to float32 first). This is exact,
    leaves capacities unchanged and comes before any cast to float32, so the
    overall magnitude never matters: any scale the input's dtype can hold works,
    from the smallest subnormal ``5e-324`` to ``1.7e308`` for numpy input, also
    with ``dtype=float32`` (subnormal entries are taken as stored, with their
    fewer significant bits).

    The precision does limit the spread of column norms within one matrix:
    :math:`q_i = a_i^\top M a_i \ge \lVert a_i\rVert^4` underflows for a column
    :math:`a_i` far shorter than the largest entry. Its capacity is accurate
    down to a norm of about ``1e-77`` times that entry in float64 (numpy or
    torch), ``2e-13`` with ``dtype=float32`` (``1e-19`` when ``d > n``) and
    ``3e-10`` in torch float32, float16 and bfloat16; below, it loses digits,
    and from about ``1e-81``, ``1e-15`` (``5e-23``) and ``6e-12`` it is exactly 0.
    Only a short column (nearly) orthogonal to all long ones is misreported so,
    as its true capacity can be up to 1; one overlapping long columns has a
    negligible true capacity anyway (of order its squared relative norm).
    Exactly zero columns get ``C = 0``.

    References
    ----------
    .. [1] Scherlis et al., "Polysemanticity and Capacity in Neural Networks",
       arXiv:2210.01892, eq. for capacity.

    Examples
    --------
    >>> import numpy as np
    >>> from capalloc import capacity
    >>> angles = 2 * np.pi * np.arange(3) / 3          # equilateral triangle in 2-D
    >>> W = np.stack([np.cos(angles), np.sin(angles)])
    >>> capacity(W).round(6)
    array([0.666667, 0.666667, 0.666667])
    """
    if _is_torch(W):
        return _capacity_torch(W)
    W = _check_matrix(W)
    dtype = np.dtype(np.float64 if dtype is None else dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    scale = _scale(W)
    d, n = W.shape[-2:]
    if d > n:
        q, norms2 = _gram_route(W, scale, dtype)
    else:
        q, norms2 = _quadratic_forms(W, scale, _gram(W, scale, dtype))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        C = np.where(q > 0, norms2**2 / np.where(q > 0, q, 1.0), 0.0)
    return np.clip(C, 0.0, 1.0)


def _capacity_torch(W: Any) -> Any:
    import torch

    if W.ndim < 2:
        raise ValueError(f"W must have at least 2 dimensions, got shape {tuple(W.shape)}")
    if not torch.isfinite(W).all():
        raise ValueError("W must be finite, found a non-finite entry")
    work = torch.promote_types(W.dtype, torch.float32)
    amax = W.detach().abs().amax(dim=(-2, -1), keepdim=True).to(work)
    p, q = _unit_scale(amax, torch)
    A = W * p * q  # in the dtype of p: float16 and bfloat16 widen (exactly) to float32
    M = A @ A.transpose(-1, -2)
    forms = ((M @ A) * A).sum(dim=-2)
    norms2 = (A * A).sum(dim=-2)
    positive = forms > 0
    safe = torch.where(positive, forms, torch.ones_like(forms))
    C = torch.where(positive, norms2**2 / safe, torch.zeros_like(forms)).clamp(0.0, 1.0)
    return C.to(W.dtype) if W.dtype.is_floating_point else C


def leverage(W: Any, rcond: float | None = None) -> np.ndarray:
    r"""Leverage score of every column, an upper bound on its capacity.

    .. math::

        \ell_i = W_i^\top (W W^\top)^{+} W_i, \qquad C_i \le \ell_i \le 1,
        \qquad \sum_i \ell_i = \operatorname{rank} W .

    Parameters
    ----------
    W : (..., d, n) array_like of float
        Embedding matrix.
    rcond : float, optional
        Singular values of ``W`` below ``rcond`` times the largest are treated
        as zero. Default ``sqrt(max(d, n) * eps)``: the computation goes through
        the eigenvalues of :math:`W W^\top` (squared singular values), which
        resolve singular values only down to about ``sqrt(eps)`` of the largest.

    Returns
    -------
    leverage : (..., n) ndarray

    Examples
    --------
    >>> import numpy as np
    >>> from capalloc import leverage
    >>> W = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    >>> leverage(W)
    array([0.5, 0.5, 0. ])
    """
    W = _check_matrix(W)
    scale = _scale(W)
    d, n = W.shape[-2:]
    if rcond is None:
        rcond = np.sqrt(max(d, n) * np.finfo(float).eps)
    rcond = check_positive(rcond, "rcond", strict=False)
    if rcond >= 1:
        raise ValueError(f"rcond must lie in [0, 1), got {rcond!r}")
    lam, U = np.linalg.eigh(_gram(W, scale))
    sing = np.sqrt(np.clip(lam, 0.0, None))
    keep = sing > rcond * sing.max(axis=-1, keepdims=True)
    inv = np.where(keep, 1.0 / np.where(keep, lam, 1.0), 0.0)
    Minv = (U * inv[..., None, :]) @ np.swapaxes(U, -1, -2)
    return np.clip(_quadratic_forms(W, scale, Minv)[0], 0.0, 1.0)


def classify(C: Any, atol: float = 1e-6) -> np.ndarray:
    """Label each capacity as monosemantic, polysemantic or ignored.

    Parameters
    ----------
    C : (..., n) array_like of float
        Capacities in [0, 1].
    atol : float, default 1e-6
        ``C >= 1 - atol`` is monosemantic, ``C <= atol`` is ignored, anything
        in between polysemantic.

    Returns
    -------
    labels : (..., n) ndarray of str
        Entries of :data:`LABELS`.

    Examples
    --------
    >>> from capalloc import classify
    >>> classify([1.0, 0.4, 0.0]).tolist()
    ['monosemantic', 'polysemantic', 'ignored']
    """
    if _is_torch(C):
        C = C.detach().cpu().numpy()
    C = as_float_array(C, "C")
    if not (0 <= atol < 0.5):
        raise ValueError(f"atol must lie in [0, 0.5), got {atol!r}")
    labels = np.full(C.shape, POLYSEMANTIC, dtype="<U12")
    labels[C >= 1 - atol] = MONOSEMANTIC
    labels[C <= atol] = IGNORED
    return labels


def label_counts(C: Any, atol: float = 1e-6) -> dict[str, int]:
    """Number of monosemantic, polysemantic and ignored features, in the order of :data:`LABELS`.

    Parameters
    ----------
    C : array_like of float, or array_like of str
        Capacities, counted as :func:`classify` labels them (without building
        the labels), or labels as :func:`classify` returns them.
    atol : float, default 1e-6
        Tolerance of :func:`classify` (capacities only).

    Returns
    -------
    counts : dict of str -> int
        One entry per label, over every axis of ``C``.

    Examples
    --------
    >>> from capalloc import label_counts
    >>> label_counts([1.0, 0.4, 0.0, 0.3])
    {'monosemantic': 1, 'polysemantic': 2, 'ignored': 1}
    >>> label_counts(["ignored", "ignored"])
    {'monosemantic': 0, 'polysemantic': 0, 'ignored': 2}
    """
    if _is_torch(C):
        C = C.detach().cpu().numpy()
    arr = np.asarray(C)
    if arr.dtype.kind in "US" or (
        arr.dtype.kind == "O" and arr.size and isinstance(arr.flat[0], str)
    ):
        return {lab: int(np.count_nonzero(arr == lab)) for lab in LABELS}
    C = as_float_array(arr, "C")
    if not (0 <= atol < 0.5):
        raise ValueError(f"atol must lie in [0, 0.5), got {atol!r}")
    mono = int(np.count_nonzero(C >= 1 - atol))
    ignored = int(np.count_nonzero(C <= atol))
    return {MONOSEMANTIC: mono, POLYSEMANTIC: C.size - mono - ignored, IGNORED: ignored}
