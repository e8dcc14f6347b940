r"""Geometry of embeddings: block structure and constructive realisation.

A ``d_b x n_b`` matrix ``A`` is semi-orthogonal if :math:`A A^\top = I` (its
columns form a Parseval frame of :math:`\mathbb R^{d_b}`). An embedding ``W`` is
block-semi-orthogonal if, up to a permutation of features and a rotation of
:math:`\mathbb R^d`,

.. math::

    W = \big[\operatorname{blockdiag}(\sqrt{\lambda_1} A_1, \dots, \sqrt{\lambda_B} A_B)
        \;\big|\; 0\big],

and :math:`\sum_i C_i = d` holds exactly when ``W`` has rank ``d`` and is
block-semi-orthogonal; inside block ``b``, :math:`C_i = N_i / \lambda_b` and
:math:`\sum_{i \in b} C_i = d_b`.

:func:`find_blocks` reads the blocks off a (trained) ``W``;
:func:`realize` goes the other way and builds a ``W`` with prescribed
capacities and squared norms, so every optimal allocation has an embedding.

References
----------
.. [1] Scherlis et al., "Polysemanticity and Capacity in Neural Networks",
   arXiv:2210.01892, section on the geometry of efficient allocations.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from capalloc._capacity import capacity
from capalloc._lib.validation import as_float_array, check_budget, readonly, short
from capalloc.allocation.result import AllocationResult

__all__ = [
    "Block",
    "find_blocks",
    "ignored_features",
    "is_block_semi_orthogonal",
    "realize",
    "tight_frame",
]

_GRAM_ENTRIES = 1 << 22  # cosine entries formed at once (chunks of rows of the Gram matrix)
_SPARSE_DENSITY = 0.25  # embeddings with at most this share of non-zero entries ...
_SPARSE_PAIRS = 1 << 26  # ... and at most this many candidate pairs use a sparse Gram
_SVD_ENTRIES = 1 << 20  # blocks with more entries get their spectrum from the smaller Gram
_MONO_ATOL = 1e-12  # capacity within this of 1 is monosemantic in realize
_GROUP_RTOL = 1e-9  # polysemantic features whose N/C agree to this share a block in realize
_SUM_ATOL = 1e-9  # per feature: slack allowed when rounding a block's capacity sum


def _check_tol(tol: Any, name: str = "tol") -> float:
    if (
        isinstance(tol, bool)
        or not isinstance(tol, numbers.Real)
        or not math.isfinite(tol)
        or not 0 < cast(float, tol) < 1
    ):  # stubs: Real does not compare with int
        raise ValueError(f"{name} must lie in (0, 1), got {short(tol)}")
    return float(tol)


def _check_embedding(W: Any) -> np.ndarray:
    W = as_float_array(W, "W", ndim=2)
    scale = np.max(np.abs(W)) if W.size else 0.0
    return W / scale if scale > 0 else W


@dataclass(frozen=True, eq=False, repr=False)
class Block:
    r"""One block of an embedding: a connected group of non-orthogonal features.

    Attributes
    ----------
    features : (n_b,) ndarray of int
        Column indices of the block's features, ascending (read-only).
    dim : int
        Numerical rank :math:`d_b` of the block's columns :math:`W_b`.
    scale : float
        :math:`\lambda_b`: the mean non-zero eigenvalue of :math:`W_b W_b^\top`
        (all of them are equal for a semi-orthogonal block, and then
        :math:`C_i = N_i/\lambda_b`).
    capacity_sum : float
        :math:`\sum_{i \in b} C_i` (capacities of the whole ``W``); equals
        ``dim`` for a semi-orthogonal block.
    residual : float
        Semi-orthogonality residual
        :math:`\lVert W_b W_b^\top - \lambda_b P_b\rVert_F / \lambda_b`, with
        :math:`P_b` the projector onto the span of the block; 0 iff the
        block is a scaled semi-orthogonal matrix.
    """

    features: np.ndarray
    dim: int
    scale: float
    capacity_sum: float
    residual: float

    @property
    def size(self) -> int:
        """Number of features :math:`n_b` in the block."""
        return int(self.features.size)

    def __repr__(self) -> str:
        feats = self.features.tolist()
        text = str(feats) if len(feats) <= 8 else f"[{', '.join(map(str, feats[:6]))}, ...]"
        return (
            f"Block(features={text}, dim={self.dim}, scale={self.scale:.6g}, "
            f"capacity_sum={self.capacity_sum:.6g}, residual={self.residual:.2g})"
        )


def _kept(W: np.ndarray, tol: float) -> np.ndarray:
    norms2 = np.einsum("kn,kn->n", W, W)
    top = norms2.max(initial=0.0)
    return norms2 > tol * top if top > 0 else np.zeros(norms2.shape, dtype=bool)


def ignored_features(W: Any, tol: float = 1e-6) -> np.ndarray:
    r"""Indices of the near-zero columns of ``W``, :math:`N_i \le \text{tol}\cdot\max_j N_j`.

    Parameters
    ----------
    W : (d, n) array_like of float
        Embedding matrix.
    tol : float, default 1e-6
        Relative threshold on squared column norms.

    Returns
    -------
    ignored : ndarray of int
        Ascending column indices.

    Examples
    --------
    >>> from capalloc.geometry import ignored_features
    >>> ignored_features([[1.0, 0.0, 1e-5], [0.0, 1.0, 0.0]]).tolist()
    [2]
    """
    W = _check_embedding(W)
    tol = _check_tol(tol)
    return np.flatnonzero(~_kept(W, tol))


def _is_sparse(Ws: np.ndarray) -> bool:
    """Whether the sparse Gram matrix of ``Ws`` is cheap: few non-zero entries and pairs."""
    nonzero = np.count_nonzero(Ws, axis=1).astype(np.float64)
    return nonzero.sum() <= _SPARSE_DENSITY * Ws.size and np.sum(nonzero**2) <= _SPARSE_PAIRS


def _sparse_route(Ws: np.ndarray, keep: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    r"""Component labels of the kept columns and the capacities of all, from one sparse Gram.

    ``G = W^T W`` holds only the pairs of columns that share a dimension, so
    :math:`C_i = G_{ii}^2 / \sum_j G_{ij}^2` and the cosines come at the cost of
    those pairs, never a dense ``n x n`` matrix.
    """
    from scipy.sparse import coo_matrix, csc_matrix
    from scipy.sparse.csgraph import connected_components

    S = csc_matrix(Ws)
    G = (S.T @ S).tocoo()
    N = np.zeros(Ws.shape[1])
    on_diag = G.row == G.col
    N[G.row[on_diag]] = G.data[on_diag]
    q = np.bincount(G.row, weights=G.data**2, minlength=Ws.shape[1])
    C = np.zeros_like(N)
    np.divide(N**2, q, out=C, where=q > 0)
    index = np.full(Ws.shape[1], -1)
    index[keep] = np.arange(keep.size)
    rows, cols = index[G.row], index[G.col]
    inside = (rows >= 0) & (cols >= 0)
    rows, cols, dots = rows[inside], cols[inside], G.data[inside]
    edge = np.abs(dots) > tol * np.sqrt(N[keep][rows] * N[keep][cols])
    k = keep.size
    graph = coo_matrix((np.ones(int(edge.sum()), np.int8), (rows[edge], cols[edge])), (k, k))
    return connected_components(graph, directed=False)[1], np.clip(C, 0.0, 1.0)


def _dense_components(U: np.ndarray, tol: float, progress: bool) -> np.ndarray:
    r"""Components from the dense Gram matrix, formed a chunk of rows at a time.

    After each chunk the edges found so far are replaced by a spanning star per
    component, so memory stays :math:`O(k + \text{chunk} \cdot k)` for ``k``
    columns; once every column is in one component the remaining chunks are
    skipped (typical of dense decoders, where almost no pair is orthogonal).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    k = U.shape[1]
    nodes = np.arange(k)
    root = nodes.copy()  # a representative node of each node's component
    step = max(1, _GRAM_ENTRIES // max(k, 1))
    bar = None
    if progress and k > step:
        from tqdm.auto import tqdm

        bar = tqdm(total=-(-k // step), desc="cosine graph", unit="chunk", leave=False)
    try:
        for start in range(0, k, step):
            cos = U[:, start : start + step].T @ U
            rows, cols = np.nonzero(np.abs(cos) > tol)
            rows = np.concatenate([rows + start, nodes])
            cols = np.concatenate([cols, root])
            graph = coo_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(k, k))
            count, labels = connected_components(graph, directed=False)
            _, first = np.unique(labels, return_index=True)
            root = first[labels]
            if bar is not None:
                bar.update()
            if count == 1:
                break
    finally:
        if bar is not None:
            bar.close()
    _, labels = np.unique(root, return_inverse=True)
    return labels


def _block_stats(Wb: np.ndarray, tol: float) -> tuple[int, float, float]:
    r"""``(dim, scale, residual)`` of one block from the singular values of its columns.

    Large blocks take them from the eigenvalues of the smaller Gram matrix
    (:math:`O(n_b d_b \min(n_b, d_b))`, resolving eigenvalues to ``1e-16`` of the top).
    """
    if Wb.size > _SVD_ENTRIES:
        eig = np.linalg.eigvalsh(Wb @ Wb.T if Wb.shape[0] <= Wb.shape[1] else Wb.T @ Wb)
    else:
        eig = np.linalg.svd(Wb, compute_uv=False) ** 2
    top = eig.max(initial=0.0)
    on = eig > tol * top
    dim = int(np.count_nonzero(on))
    lam = float(np.mean(eig[on]))
    residual = math.sqrt(float(np.sum((eig[on] - lam) ** 2) + np.sum(eig[~on] ** 2))) / lam
    return dim, lam, residual


def find_blocks(W: Any, tol: float = 1e-6, *, progress: bool = False) -> list[Block]:
    r"""Split the columns of ``W`` into blocks of mutually non-orthogonal features.

    Columns with :math:`N_i \le \text{tol}\cdot\max_j N_j` are dropped (see
    :func:`ignored_features`); features ``i`` and ``j`` are joined when

    .. math::

        |\cos(W_i, W_j)| = \frac{|W_i \cdot W_j|}{\lVert W_i\rVert\,\lVert W_j\rVert} > \text{tol},

    and the connected components of that graph are the blocks.

    Parameters
    ----------
    W : (d, n) array_like of float
        Embedding matrix (e.g. a trained one).
    tol : float, default 1e-6
        Relative threshold on squared norms, on cosines and on the eigenvalues
        that count towards a block's rank. Use a looser value (``1e-2``) for
        embeddings trained on samples.
    progress : bool, default False
        Show a progress bar on stderr while the cosines are formed.

    Returns
    -------
    blocks : list of Block
        Ordered by their smallest feature index. A monosemantic feature is a
        block of one feature with ``dim = 1`` and ``capacity_sum = 1``.

    Notes
    -----
    Cost :math:`O(n^2 d)` time for the cosines; they are formed a chunk of rows
    at a time (about four million entries), and the edges found so far are
    reduced to one spanning star per component after each chunk, so memory
    stays bounded; the search stops as soon as all features are connected. An
    embedding whose entries are mostly exactly zero goes through a sparse Gram
    matrix instead, which costs only the pairs of features sharing a dimension.

    References
    ----------
    .. [1] Scherlis et al., "Polysemanticity and Capacity in Neural Networks",
       arXiv:2210.01892.

    Examples
    --------
    >>> import numpy as np
    >>> from capalloc.geometry import find_blocks
    >>> angles = 2 * np.pi * np.arange(5) / 5                # a pentagon in the first two axes
    >>> W = np.zeros((3, 7))
    >>> W[:2, :5] = np.cos(angles), np.sin(angles)
    >>> W[2, 5] = 2.0                                          # one monosemantic feature
    >>> for block in find_blocks(W):                           # column 6 is ignored
    ...     print(block.features.tolist(), block.dim, round(block.scale, 6),
    ...           round(block.capacity_sum, 6))
    [0, 1, 2, 3, 4] 2 2.5 2.0
    [5] 1 4.0 1.0
    """
    W = as_float_array(W, "W", ndim=2)
    tol = _check_tol(tol)
    Ws = _check_embedding(W)
    keep = np.flatnonzero(_kept(Ws, tol))
    if keep.size == 0:
        return []
    if _is_sparse(Ws):
        labels, C = _sparse_route(Ws, keep, tol)
    else:
        U = Ws[:, keep] if keep.size < Ws.shape[1] else Ws  # Ws is a copy: normalised in place
        U /= np.sqrt(np.einsum("kn,kn->n", U, U))
        labels = _dense_components(U, tol, progress)
        C = capacity(W, features_axis=-1)
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    blocks = []
    for members in np.split(order, bounds):
        features = keep[members]  # ascending: keep and the stable sort are ordered
        columns = W if features.size == W.shape[1] else W[:, features]
        dim, lam, residual = _block_stats(columns, tol)
        blocks.append(
            Block(
                features=readonly(features),
                dim=dim,
                scale=lam,
                capacity_sum=float(C[features].sum()),
                residual=residual,
            )
        )
    blocks.sort(key=lambda b: int(b.features[0]))
    return blocks


def is_block_semi_orthogonal(W: Any, tol: float = 1e-6, *, rtol: float | None = None) -> bool:
    r"""Whether ``W`` is block-semi-orthogonal (up to rotation, permutation and zero columns).

    True when every block of :func:`find_blocks` satisfies
    :math:`W_b W_b^\top = \lambda_b P_b` to within ``rtol``.

    Parameters
    ----------
    W : (d, n) array_like of float
        Embedding matrix.
    tol : float, default 1e-6
        Threshold of :func:`find_blocks`.
    rtol : float, optional
        Largest accepted block residual; default ``sqrt(tol)`` (the residual
        is first order in a perturbation of ``W`` while the cosine test is too,
        but a block's residual adds up over its features).

    Returns
    -------
    bool

    Examples
    --------
    >>> import numpy as np
    >>> from capalloc.geometry import is_block_semi_orthogonal
    >>> is_block_semi_orthogonal([[1.0, -1.0, 0.0], [0.0, 0.0, 3.0]])   # antipodal pair + mono
    True
    >>> is_block_semi_orthogonal([[1.0, 0.5], [0.0, 1.0]])
    False
    """
    tol = _check_tol(tol)
    rtol = math.sqrt(tol) if rtol is None else _check_tol(rtol, "rtol")
    return all(block.residual <= rtol for block in find_blocks(W, tol))


# ---------------------------------------------------------------------------
# Realisation of an allocation
# ---------------------------------------------------------------------------


def tight_frame(c: Any, r: int | None = None) -> np.ndarray:
    r"""A Parseval frame with prescribed squared norms (a projector with prescribed diagonal).

    Returns ``F`` of shape ``(r, k)`` with

    .. math::

        F F^\top = I_r, \qquad \lVert f_i\rVert^2 = c_i,

    so :math:`P = F^\top F` is a rank-``r`` orthogonal projector with
    :math:`\operatorname{diag} P = c` (Schur–Horn for projectors).

    Parameters
    ----------
    c : (k,) array_like of float
        Squared norms in (0, 1] summing to the integer ``r``.
    r : int, optional
        Rank; default ``round(sum(c))``.

    Returns
    -------
    F : (r, k) ndarray

    Notes
    -----
    Construction by plane rotations, ``k`` steps of :math:`O(r)` each. Start
    from ``r`` unit vectors :math:`e_1, \dots, e_r` and ``k - r`` zero vectors.
    One "partial" vector ``p`` (initially a zero vector) is kept orthogonal to
    every unused vector. For each target :math:`c_t`, with :math:`a = \lVert
    p\rVert^2`, rotate ``p`` with an unused vector ``q`` orthogonal to it,
    :math:`f_t = \cos\theta\, p + \sin\theta\, q`, choosing ``q`` zero when
    :math:`a \ge c_t` and a unit vector when :math:`a < c_t`; then
    :math:`\lVert f_t\rVert^2 = \cos^2\theta\, a + \sin^2\theta\, \lVert q\rVert^2`
    takes the value :math:`c_t` for some :math:`\theta`, the other output of
    the rotation becomes the new ``p`` (norm :math:`a + \lVert q\rVert^2 - c_t`),
    and ``F`` keeps :math:`FF^\top = I` because rotations of columns are
    orthogonal. Mass balance :math:`\sum c = r` with :math:`c \le 1` guarantees
    the needed kind of vector is always left.

    Examples
    --------
    >>> import numpy as np
    >>> from capalloc.geometry import tight_frame
    >>> F = tight_frame([0.9, 0.6, 0.3, 0.2])
    >>> F.shape, bool(np.allclose(F @ F.T, np.eye(2))), (F * F).sum(0).round(12).tolist()
    ((2, 4), True, [0.9, 0.6, 0.3, 0.2])
    """
    c = as_float_array(c, "c", ndim=1)
    if c.size and (c.min() <= 0 or c.max() > 1):
        raise ValueError(f"c must lie in (0, 1], got range [{c.min()}, {c.max()}]")
    total = float(c.sum())
    r = round(total) if r is None else check_budget(r, "r")
    if abs(total - r) > _SUM_ATOL * max(1, c.size):
        raise ValueError(f"c must sum to the integer r={r}, got sum {total!r}")
    k = c.size
    if r == 0:
        return np.zeros((0, k))
    c = c * (r / total)  # remove rounding error in the sum
    F = np.zeros((r, k))
    p = np.zeros(r)
    units = 0  # unit vectors e_0 .. e_{units-1} are used
    zeros = k - r - 1  # zero vectors still unused (one became p)
    if zeros < -1:
        raise ValueError(f"c has {k} entries, fewer than r={r}")
    if zeros == -1:  # k == r: every c_i is 1, the frame is the identity
        return np.eye(r)
    for t in range(k):
        a = float(p @ p)
        ct = float(c[t])
        if a >= ct and zeros > 0:
            # rotate with a zero vector: f_t = sqrt(ct/a) p, new p keeps the rest
            ratio = ct / a
            F[:, t] = math.sqrt(ratio) * p
            p = math.sqrt(max(0.0, 1.0 - ratio)) * p
            zeros -= 1
        elif a < ct and units < r:
            # rotate with the unit vector e_u: cos^2 = (1 - ct)/(1 - a)
            cos2 = min(1.0, max(0.0, (1.0 - ct) / (1.0 - a)))
            cos, sin = math.sqrt(cos2), math.sqrt(1.0 - cos2)
            q = np.zeros(r)
            q[units] = 1.0
            F[:, t] = cos * p + sin * q
            p = -sin * p + cos * q
            units += 1
        else:
            # balance forces a == ct here (up to rounding): take p as it is
            F[:, t] = p
            if zeros > 0:
                p = np.zeros(r)
                zeros -= 1
            elif units < r:
                p = np.zeros(r)
                p[units] = 1.0
                units += 1
            else:
                p = np.zeros(r)
    gram_err = np.abs(F @ F.T - np.eye(r)).max()
    norm_err = np.abs(np.einsum("rk,rk->k", F, F) - c).max()
    if gram_err > 1e-10 or norm_err > 1e-10:  # pragma: no cover - a bug, not a user error
        raise RuntimeError(
            f"tight_frame failed: |FF^T - I| = {gram_err:.2e}, |norms - c| = {norm_err:.2e}"
        )
    return F


def _realize_row(C: np.ndarray, N: np.ndarray) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """Blocks ``(features, columns)`` of one allocation and the rows they need."""
    mono = np.flatnonzero(C >= 1 - _MONO_ATOL)
    poly = np.flatnonzero((C > 0) & (C < 1 - _MONO_ATOL))
    zero = np.flatnonzero(C == 0)
    if np.any(N[zero] > 0):
        i = int(zero[np.argmax(N[zero])])
        raise ValueError(
            f"feature {i} has capacity 0 but norms {N[i]!r} > 0: a non-zero column "
            f"always has positive capacity"
        )
    if np.any(N[poly] <= 0) or np.any(N[mono] <= 0):
        i = int(np.concatenate([mono, poly])[np.argmin(N[np.concatenate([mono, poly])])])
        raise ValueError(
            f"feature {i} has capacity {C[i]!r} > 0 but norms {N[i]!r}: a "
            f"feature with positive capacity needs a positive squared norm"
        )
    pieces: list[tuple[np.ndarray, np.ndarray]] = [
        (np.array([i]), np.array([[math.sqrt(N[i])]])) for i in mono
    ]
    rows = mono.size
    if poly.size:
        lam = N[poly] / C[poly]
        order = np.argsort(lam, kind="stable")
        breaks = np.flatnonzero(np.diff(lam[order]) > _GROUP_RTOL * lam[order][1:]) + 1
        for group in np.split(poly[order], breaks):
            group = np.sort(group)
            total = float(C[group].sum())
            r = round(total)
            if r < 1 or abs(total - r) > _SUM_ATOL * group.size:
                lam_g = N[group[0]] / C[group[0]]
                raise ValueError(
                    f"the polysemantic features {short(group)} share N/C = {lam_g:.6g} but their "
                    f"capacities sum to {total!r}, not an integer: a block of capacity sum "
                    f"d_b needs d_b dimensions, so no embedding has these capacities and norms"
                )
            F = tight_frame(C[group], r)
            pieces.append((group, F * np.sqrt(N[group] / C[group])))
            rows += r
    return pieces, rows


def realize(result_or_capacity: Any, norms: Any = None, *, d: int | None = None) -> np.ndarray:
    r"""An embedding ``W`` with prescribed capacities and squared column norms.

    Builds ``W`` of shape ``(d, n)`` with :math:`C_i(W) = C_i` and
    :math:`\lVert W_i\rVert^2 = N_i`, without search:

    - monosemantic features (:math:`C_i = 1`) get a coordinate axis each,
      :math:`W_i = \sqrt{N_i}\, e_k`;
    - polysemantic features are grouped by their scale :math:`\lambda_i = N_i / C_i`;
      a group with :math:`\sum C_i = r` (an integer) gets ``r`` fresh axes and
      the columns :math:`\sqrt{\lambda_i}\, f_i` of a tight frame
      :math:`F F^\top = I_r`, :math:`\lVert f_i\rVert^2 = C_i` (:func:`tight_frame`),
      so :math:`W_b W_b^\top = \lambda I_r` and
      :math:`C_i = \lambda^2 C_i^2 / (\lambda^2 C_i) = C_i`;
    - ignored features (:math:`C_i = 0`) get zero columns;
    - zero rows pad ``W`` to ``d`` rows.

    With the optimal norms of :func:`capalloc.solve` every polysemantic feature
    has :math:`\lambda_i = \mu` (the threshold :math:`T = 2\mu^2`), so they form
    one block, and ``quadratic_loss(W, v, K)`` equals ``result.loss``.

    Parameters
    ----------
    result_or_capacity : AllocationResult or (n,) or (m, n) array_like of float
        A solver result (its ``capacity`` and ``norms`` are used) or capacities in [0, 1].
    norms : (n,) or (m, n) array_like of float, optional
        Squared column norms. Default: ``result.norms``, or ``norms = C`` for
        bare capacities (every block with scale :math:`\lambda = 1`).
    d : int, optional
        Number of rows; default the fewest needed, ``#mono + sum of block ranks``.

    Returns
    -------
    W : (d, n) or (m, d, n) ndarray

    Raises
    ------
    ValueError
        Capacities outside [0, 1], shapes that differ, a capacity-0 feature with
        a positive norm, a polysemantic group whose capacities do not sum to an
        integer, or ``d`` smaller than the rows needed.

    References
    ----------
    .. [1] Scherlis et al., "Polysemanticity and Capacity in Neural Networks",
       arXiv:2210.01892.

    Examples
    --------
    >>> import numpy as np
    >>> import capalloc
    >>> from capalloc.geometry import realize
    >>> problem = capalloc.QuadraticProblem([4.0, 2.0, 1.0, 0.2], d=2, kurtosis=10.0)
    >>> res = capalloc.solve(problem)
    >>> W = realize(res)
    >>> W.shape, bool(np.allclose(capalloc.capacity(W), res.capacity, atol=1e-12))
    ((2, 4), True)
    >>> bool(np.isclose(capalloc.quadratic_loss(W, [4.0, 2.0, 1.0, 0.2], 10.0), res.loss))
    True
    >>> realize([0.75, 0.75, 0.75, 0.75]).shape                   # a tetrahedron
    (3, 4)
    """
    if isinstance(result_or_capacity, AllocationResult):
        C = np.asarray(result_or_capacity.capacity, dtype=float)
        default_norms = result_or_capacity.norms
        name = "result.capacity"
    else:
        C = as_float_array(result_or_capacity, "capacity", ndim=(1, 2))
        default_norms = C
        name = "capacity"
    N = as_float_array(default_norms if norms is None else norms, "norms", ndim=(1, 2))
    if N.shape != C.shape:
        raise ValueError(f"norms must have the shape of the capacities {C.shape}, got {N.shape}")
    if C.size and (C.min() < 0 or C.max() > 1):
        raise ValueError(f"{name} must lie in [0, 1], got range [{C.min()!r}, {C.max()!r}]")
    if N.size and N.min() < 0:
        raise ValueError(f"norms must be >= 0, found {N.min()!r}")
    batched = C.ndim == 2
    C2, N2 = np.atleast_2d(C), np.atleast_2d(N)
    parts = [_realize_row(c, nn) for c, nn in zip(C2, N2, strict=True)]
    need = max((rows for _, rows in parts), default=0)
    if d is None:
        d = need
    else:
        d = check_budget(d, "d")
        if d < need:
            raise ValueError(
                f"d={d} is too small: the allocation needs {need} dimensions "
                f"(monosemantic features plus the rank of each block)"
            )
    W = np.zeros((C2.shape[0], d, C2.shape[1]))
    for row, (pieces, _) in enumerate(parts):
        top = 0
        for features, cols in pieces:
            r = cols.shape[0]
            W[row][top : top + r, features] = cols
            top += r
    return W if batched else W[0]
