r"""Feature capacity of an embedding matrix.

An embedding ``h = W x`` stores feature ``i`` in column :math:`W_i` of the
``(d, n)`` matrix ``W``. Its capacity is

.. math::

    C_i = \frac{(W_i \cdot W_i)^2}{\sum_j (W_i \cdot W_j)^2} \in [0, 1],
    \qquad \sum_i C_i \le \operatorname{rank} W \le d .

Because :math:`\sum_j (W_i\cdot W_j)^2 = W_i^\top M W_i` with :math:`M = W W^\top`,
every capacity costs :math:`O(d^2)` and the ``(n, n)`` Gram matrix is never formed.

Real weights often store features along rows (an SAE decoder ``W_dec`` of shape
``(n_features, d)``, ``nn.Linear`` and ``nn.Embedding`` weights): pass
``features_axis=0``. Every function here reads ``W`` a block of features at a
time, so memory-mapped files (``numpy.load(..., mmap_mode="r")``) and
``dask.array`` inputs larger than memory work too.

References
----------
.. [1] A. Scherlis, K. Sachan, A. S. Jermyn, J. Benton, B. Shlegeris,
   "Polysemanticity and Capacity in Neural Networks", arXiv:2210.01892 (2022).
"""

from __future__ import annotations

import mmap
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from capalloc._lib.threads import default_threads
from capalloc._lib.validation import as_float_array, check_positive, readonly, short

__all__ = [
    "capacity",
    "leverage",
    "numerical_rank",
    "capacity_report",
    "CapacityReport",
    "FeaturesAxisWarning",
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

_CHUNK = 8192  # columns per block of the batched path: extra memory O(d * _CHUNK)
#: A block of the 2-D path holds about this many bytes of float64 (BLAS calls on smaller
#: blocks lose speed), and at most an eighth of W, at least _MIN_BLOCK_BYTES.
_BLOCK_BYTES = 1 << 24
_MIN_BLOCK_BYTES = 1 << 20
#: float64 matrices whose largest entry lies in this range are used as stored (no
#: rescaled copy); the others are rescaled by a power of two first.
_AS_STORED = (2.0**-8, 2.0**8)
#: In-memory matrices of at most this many entries take the batched path (less overhead
#: per call) unless a block size is given.
_SMALL = 1 << 12
#: A matrix with more rows than columns, and at least this many columns, looks transposed.
_WARN_MIN_COLUMNS = 16


class FeaturesAxisWarning(UserWarning):
    """``W`` has more rows than columns and ``features_axis`` was not given: maybe transposed."""


# ----------------------------------------------------------------------------- input


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _is_dask(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "dask"


def _is_sliceable(x: Any) -> bool:
    """A lazy 2-D array (memory map, safetensors slice, HDF5 or zarr array) read by slicing."""
    return (
        not isinstance(x, (np.ndarray, list, tuple))
        and hasattr(x, "shape")
        and hasattr(x, "dtype")
        and hasattr(x, "__getitem__")
        and len(x.shape) == 2
    )


def _axis(features_axis: Any, ndim: int) -> int:
    """``features_axis`` as -1 (columns) or -2 (rows); ``ValueError`` naming it otherwise."""
    if features_axis is None:
        return -1
    if (
        isinstance(features_axis, (bool, np.bool_))
        or not isinstance(features_axis, (int, np.integer))
        or not -ndim <= features_axis < ndim
        or int(features_axis) % ndim not in (ndim - 1, ndim - 2)
    ):
        allowed = "0, 1, -1 or -2" if ndim == 2 else f"-1, -2, {ndim - 2} or {ndim - 1}"
        raise ValueError(
            f"features_axis must be one of the last two axes of W ({allowed} for ndim={ndim}), "
            f"got {short(features_axis)}"
        )
    return -1 if int(features_axis) % ndim == ndim - 1 else -2


def _warn_transposed(d: int, n: int, features_axis: Any, stacklevel: int) -> None:
    if features_axis is None and d > n >= _WARN_MIN_COLUMNS:
        warnings.warn(
            f"W has more rows than columns ({d} x {n}): these are the capacities of its {n} "
            f"columns in {d} dimensions. If its rows are the features (an SAE decoder or an "
            "nn.Linear/nn.Embedding weight, stored (n_features, d)), pass features_axis=0; "
            "pass features_axis=-1 to keep the columns without this warning",
            FeaturesAxisWarning,
            stacklevel=stacklevel + 1,
        )


def _check_center(center: Any) -> bool:
    if not isinstance(center, (bool, np.bool_)):
        raise ValueError(f"center must be True or False, got {short(center)}")
    return bool(center)


def _work_dtype(dtype: Any) -> np.dtype:
    work = np.dtype(np.float64 if dtype is None else dtype)
    if work not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {work}")
    return work


def _check_block(block: Any) -> int | None:
    return None if block is None else check_positive(block, "block", integer=True)


_CONTROLLER: Any = None
#: Multiply-adds below which the BLAS threads are left alone (a limit costs ~40 us).
_LIMIT_WORK = 1 << 24


@contextmanager
def _blas_threads(threads: Any, W: Any) -> Iterator[None]:
    """Limit the BLAS threads (threadpoolctl) while a large ``W`` is processed.

    ``threads=None`` lowers the current count to the cores no other process is
    running on (:func:`capalloc._lib.threads.default_threads`), never raises it, and
    leaves small problems alone; an integer sets the count. Without
    threadpoolctl nothing changes.
    """
    global _CONTROLLER
    if threads is not None:
        threads = check_positive(threads, "threads", integer=True)
    shape = tuple(getattr(W, "shape", ())) or np.shape(W)
    work = float(np.prod(shape, dtype=np.float64)) * min(shape[-2:], default=0)
    if threads is None and work < _LIMIT_WORK:
        yield
        return
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - a dependency, but optional here
        yield
        return
    if _CONTROLLER is None:
        import scipy.linalg.blas  # noqa: F401 - scipy's BLAS must be loaded to be found

        _CONTROLLER = ThreadpoolController()
    blas = _CONTROLLER.select(user_api="blas")
    target = default_threads() if threads is None else threads
    limits = {  # per library, lowering only, unless the caller asked for a number
        lib.prefix: target
        for lib in blas.lib_controllers
        if lib.num_threads > target or (threads is not None and lib.num_threads != target)
    }
    if not limits:
        yield
        return
    with _CONTROLLER.limit(limits=limits):
        yield


def _check_matrix(W: Any, name: str = "W") -> np.ndarray:
    if _is_torch(W):  # every torch float dtype (bfloat16 included) widens exactly to float64
        W = W.detach().cpu().double().numpy()
    return as_float_array(W, name, min_ndim=2)


def _as_array(W: Any) -> Any:
    """``W`` as a numpy array of a float dtype or as a lazy 2-D array, checked but not copied.

    Arrays of float16/32/64 (memory maps included) and lazy arrays keep their storage;
    anything else goes through :func:`as_float_array` (a float64 copy, checked finite).
    Finiteness of the kept ones is checked block by block later.
    """
    if _is_torch(W):
        return _check_matrix(W)
    if _is_sliceable(W):
        if np.dtype(W.dtype).kind != "f":
            raise TypeError(f"W must hold floating-point numbers, got dtype {W.dtype}")
        return W
    if (
        isinstance(W, np.ndarray)
        and not isinstance(W, np.ma.MaskedArray)
        and W.dtype in (np.float16, np.float32, np.float64)
    ):
        if W.ndim < 2:
            raise ValueError(f"W must have at least 2 dimensions, got shape {W.shape}")
        return W
    return as_float_array(W, "W", min_ndim=2)


# ----------------------------------------------------------------------------- scaling


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


# ----------------------------------------------------------------------------- batched path


def _blocks(W: np.ndarray, scale: tuple[np.ndarray, np.ndarray], dtype: Any = np.float64):
    """Yield ``(columns, scaled W[..., :, columns])`` in blocks of ``_CHUNK`` columns."""
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


def _centered(W: np.ndarray) -> np.ndarray:
    """``W`` minus its mean column (float64, rescaled first so the mean cannot overflow)."""
    p, q = _scale(W)
    A = W * p * q
    return A - A.mean(axis=-1, keepdims=True)


def _ratio(forms: np.ndarray, norms2: np.ndarray) -> np.ndarray:
    """``norms2**2 / forms`` clipped to [0, 1], 0 where ``forms`` is 0."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        C = np.where(forms > 0, norms2**2 / np.where(forms > 0, forms, 1.0), 0.0)
    return np.clip(C, 0.0, 1.0)


# ----------------------------------------------------------------------------- 2-D engine
#
# The 2-D path reads W a block of features at a time, in two passes: the Gram matrix
# M = sum_blocks A A^T by symmetric rank-k updates (BLAS syrk), then, per block, the
# quadratic forms a^T M a = sum_k a_k (T a)_k with the triangular T = diag(M) + 2
# tril(M, -1), one triangular product (BLAS trmm) of half the cost of M @ A. Both
# cost n d^2 flops, so capacity costs about two syrk: about two W @ W.T (which numpy
# computes by syrk too), one general W @ W^T product.


@dataclass
class _Plan:
    """How a stored block becomes a work block: cast, times ``p * q``, minus ``mean``."""

    dtype: np.dtype
    p: float = 1.0
    q: float = 1.0
    mean: np.ndarray | None = None

    @property
    def as_stored(self) -> bool:
        return self.p == 1.0 and self.q == 1.0 and self.mean is None


def _block_layout_f(blk: np.ndarray) -> bool:
    """Whether the block's rows are contiguous in memory (features along rows of the file)."""
    return blk.flags.f_contiguous or (blk.ndim == 2 and blk.strides[0] == blk.itemsize)


def _work(blk: np.ndarray, plan: _Plan) -> np.ndarray:
    """The work block of ``blk`` (the block itself where nothing changes), in its layout."""
    if plan.as_stored and blk.dtype == plan.dtype:
        return blk
    out = np.empty(blk.shape, plan.dtype, order="F" if _block_layout_f(blk) else "C")
    # in the wider of both dtypes: exact, and rounded once into the work dtype
    wide = np.promote_types(blk.dtype, plan.dtype)
    np.multiply(blk, plan.p, out=out, dtype=wide, casting="unsafe")
    if plan.q != 1.0:
        out *= plan.q
    if plan.mean is not None:
        out -= plan.mean[:, None]
    return out


def _syrk(A: np.ndarray, M: np.ndarray) -> np.ndarray:
    """``M += A A^T`` in the lower triangle of the Fortran-ordered ``M`` (BLAS syrk)."""
    from scipy.linalg import blas

    if A.shape[1] == 0 or A.shape[0] == 0:
        return M
    syrk = blas.dsyrk if A.dtype == np.float64 else blas.ssyrk
    if A.flags.f_contiguous:
        return syrk(1.0, A, beta=1.0, c=M, trans=0, lower=1, overwrite_c=1)
    return syrk(1.0, A.T, beta=1.0, c=M, trans=1, lower=1, overwrite_c=1)


def _triangle(S: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``T = diag(S) + 2 tril(S, -1)`` (Fortran order), so that ``a^T S a = a^T T a``."""
    T = np.tril(S, -1)
    T *= 2.0
    T[np.diag_indices_from(T)] = np.diagonal(S)
    return np.asfortranarray(T, dtype=dtype)


def _form(T: np.ndarray, A: np.ndarray) -> np.ndarray:
    """``a_i^T T a_i`` for every column of ``A``: one BLAS trmm on a copy, then a dot."""
    from scipy.linalg import blas

    if A.shape[0] == 0 or A.shape[1] == 0:
        return np.zeros(A.shape[1])
    trmm = blas.dtrmm if A.dtype == np.float64 else blas.strmm
    if _block_layout_f(A):
        R = trmm(1.0, T, A, side=0, lower=1)  # T A, (d, b) in Fortran order
    else:
        R = trmm(1.0, T, A.T, side=1, lower=1, trans_a=1).T  # (A^T T^T)^T = T A
    return np.einsum("kn,kn->n", A, R, dtype=np.float64)


def _release(blk: np.ndarray, base: np.ndarray | None) -> None:
    """Drop the pages of a memory-mapped block from this process (they stay in the page cache).

    Without this, every page of a memory-mapped file that was read counts towards the
    resident memory of the process, so one pass over a 1 GB file would hold 1 GB.
    """
    mm = getattr(base, "_mmap", None)
    if mm is None or blk.size == 0 or not hasattr(mmap, "MADV_DONTNEED"):
        return
    try:
        start = np.frombuffer(mm, dtype=np.uint8).ctypes.data
        lo = max(blk.ctypes.data - start, 0)
        hi = (
            lo
            + sum((s - 1) * abs(st) for s, st in zip(blk.shape, blk.strides, strict=True))
            + blk.itemsize
        )
        lo -= lo % mmap.PAGESIZE
        mm.madvise(mmap.MADV_DONTNEED, lo, min(hi, len(mm)) - lo)
    except (ValueError, OSError, TypeError, BufferError):  # pragma: no cover - best effort
        pass


class _Progress:
    """A tqdm bar on stderr over ``total`` blocks, or nothing."""

    def __init__(self, enabled: bool, total: int, desc: str):
        self.bar = None
        if enabled and total > 1:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="block", file=sys.stderr, leave=False)

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class _Columns:
    """A ``(d, n)`` view of a 2-D ``W`` with features last, read a block of features at a time.

    ``W`` is a numpy array (memory maps included) or a lazy array sliced as
    ``W[start:stop]`` (features along rows) or ``W[:, start:stop]``.
    """

    W: Any
    rows: bool  # features along the rows of W
    block: int | None = None
    progress: bool = False
    d: int = field(init=False)
    n: int = field(init=False)

    def __post_init__(self) -> None:
        n, d = self.W.shape if self.rows else self.W.shape[::-1]
        self.d, self.n = int(d), int(n)
        if self.block is None:
            size = min(_BLOCK_BYTES, max(_MIN_BLOCK_BYTES, self.d * self.n))  # n d bytes: W / 8
            self.block = max(1, size // (8 * max(self.d, 1)))

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.W.dtype)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.W, np.ndarray) and getattr(self.W, "_mmap", None) is None

    def whole(self) -> np.ndarray:
        """All of ``W`` as a ``(d, n)`` numpy array (a view where it is one)."""
        A = np.asarray(self.W[:] if not isinstance(self.W, np.ndarray) else self.W)
        return A.T if self.rows else A

    def blocks(self, desc: str):
        """Yield ``(start, stop, block)``, each block a ``(d, b)`` numpy array."""
        step = int(self.block or 1)
        bar = _Progress(self.progress, -(-self.n // step), desc)
        try:
            for start in range(0, self.n, step):
                stop = min(self.n, start + step)
                if self.rows:
                    blk = np.asarray(self.W[start:stop]).T
                else:
                    blk = np.asarray(self.W[:, start:stop])
                yield start, stop, blk
                if isinstance(self.W, np.ndarray):
                    _release(blk, self.W)
                bar.update()
        finally:
            bar.close()


def _bad_entry(blk: np.ndarray, start: int) -> str:
    bad = ~np.isfinite(blk)
    k, i = np.argwhere(bad)[0]
    return f"W must be finite, found {float(blk[k, i])!r} in feature {start + int(i)}"


def _stats(src: _Columns, center: bool) -> tuple[float, np.ndarray | None]:
    """Largest absolute entry and (``center``) the mean feature, in one pass."""
    amax = 0.0
    total = np.zeros(src.d) if center else None
    for start, _, blk in src.blocks("statistics"):
        if blk.size == 0:
            continue
        hi, lo = float(blk.max()), float(blk.min())
        if not (np.isfinite(hi) and np.isfinite(lo)):
            raise ValueError(_bad_entry(blk, start))
        amax = max(amax, hi, -lo)
        if total is not None:
            total += blk.sum(axis=1, dtype=np.float64)
    return amax, (None if total is None else total / max(src.n, 1))


def _scale_plan(amax: float, work: np.dtype, mean: np.ndarray | None) -> _Plan:
    p, q = (float(x) for x in _unit_scale(np.float64(amax)))
    if work == np.float64 and mean is None and _AS_STORED[0] <= amax <= _AS_STORED[1]:
        p = q = 1.0
    shift = None if mean is None else (mean * p * q).astype(work)
    return _Plan(work, p, q, shift)


def _gram_pass(src: _Columns, plan: _Plan, check: bool) -> tuple[np.ndarray, float]:
    """``M = A A^T`` (full, symmetric, Fortran order) and, with ``check``, the largest entry."""
    M = np.zeros((src.d, src.d), dtype=plan.dtype, order="F")
    amax = 0.0
    if (
        plan.as_stored
        and src.in_memory
        and src.dtype == plan.dtype
        and (src.W.flags.c_contiguous or src.W.flags.f_contiguous)
    ):
        A = src.whole()  # one syrk, no copy
        if check and A.size:
            hi, lo = float(A.max()), float(A.min())
            if not (np.isfinite(hi) and np.isfinite(lo)):
                raise ValueError(_bad_entry(A, 0))
            amax = max(hi, -lo)
        M = _syrk(A, M)
    else:
        for start, _, blk in src.blocks("Gram matrix"):
            if check and blk.size:
                hi, lo = float(blk.max()), float(blk.min())
                if not (np.isfinite(hi) and np.isfinite(lo)):
                    raise ValueError(_bad_entry(blk, start))
                amax = max(amax, hi, -lo)
            M = _syrk(_work(blk, plan), M)
    M = np.tril(M) + np.tril(M, -1).T
    return np.asfortranarray(M), amax


def _forms_pass(
    src: _Columns, plan: _Plan, mats: list[np.ndarray]
) -> tuple[list[np.ndarray], np.ndarray]:
    """``a_i^T S a_i`` for each symmetric ``S`` of ``mats``, and ``a_i^T a_i``."""
    triangles = [_triangle(S, plan.dtype) for S in mats]
    forms = [np.empty(src.n) for _ in mats]
    norms2 = np.empty(src.n)
    for start, stop, blk in src.blocks("quadratic forms"):
        A = _work(blk, plan)
        norms2[start:stop] = np.einsum("kn,kn->n", A, A, dtype=np.float64)
        for T, out in zip(triangles, forms, strict=True):
            out[start:stop] = _form(T, A)
    return forms, norms2


def _gram_2d(src: _Columns, work: np.dtype, center: bool) -> tuple[np.ndarray, _Plan]:
    """The Gram matrix of the work matrix and the plan that made it.

    A float64 matrix used as stored is read once; otherwise one pass of
    statistics (largest entry, mean) comes first. If the largest entry turns out
    to be outside :data:`_AS_STORED`, the Gram matrix is formed again, rescaled.
    """
    low_precision = src.dtype.itemsize < 8 and work == np.float64  # squares cannot over/underflow
    if not center and (low_precision or work == src.dtype == np.float64):
        plan = _Plan(work)
        M, amax = _gram_pass(src, plan, check=True)
        if low_precision or _AS_STORED[0] <= amax <= _AS_STORED[1] or amax == 0:
            return M, plan
        plan = _scale_plan(amax, work, None)
    else:
        amax, mean = _stats(src, center)
        plan = _scale_plan(2 * amax if center else amax, work, mean)
    return _gram_pass(src, plan, check=False)[0], plan


def _source(
    W: Any, features_axis: Any, block: Any, progress: bool, stacklevel: int
) -> _Columns | np.ndarray:
    """A :class:`_Columns` for 2-D input, or the batched float64 array with features last."""
    block = _check_block(block)
    W = _as_array(W)
    axis = _axis(features_axis, len(W.shape))
    if len(W.shape) > 2:
        W = as_float_array(W, "W")
        return W if axis == -1 else np.swapaxes(W, -1, -2)
    src = _Columns(W, rows=axis == -2, block=block, progress=bool(progress))
    _warn_transposed(src.d, src.n, features_axis, stacklevel + 1)
    return src


def _small_side(src: _Columns, center: bool) -> np.ndarray:
    """``d > n``: the whole (centred) matrix in float64, features last."""
    A = src.whole()
    if not np.all(np.isfinite(A)):
        raise ValueError(_bad_entry(A, 0))
    A = np.asarray(A, dtype=np.float64)
    return _centered(A) if center else A


# ----------------------------------------------------------------------------- capacity


def capacity(
    W: Any,
    *,
    features_axis: int | None = None,
    center: bool = False,
    dtype: Any = None,
    block: int | None = None,
    progress: bool = False,
    threads: int | None = None,
) -> Any:
    r"""Capacity of every feature of an embedding matrix.

    .. math::

        C_i = \frac{\lVert W_i\rVert^4}{W_i^\top (W W^\top) W_i}

    Parameters
    ----------
    W : (..., d, n) array_like of float, numpy memory map, dask.array or torch.Tensor
        Embedding matrix; column ``i`` embeds feature ``i`` (see ``features_axis``).
        Leading batch dimensions are allowed (numpy and torch). A 2-D numpy
        array of float16/32/64 (a memory map included) or any lazy 2-D array
        that slices into numpy arrays is read a block of features at a time and
        never copied whole.
    features_axis : int, optional
        The axis that indexes features: -1 (default, columns) or -2 (rows; ``0``
        for a matrix), e.g. ``features_axis=0`` for an SAE decoder ``W_dec`` of
        shape ``(n_features, d)`` or an ``nn.Embedding`` weight. When it is not
        given and a matrix has more rows than columns (and at least 16
        columns, as any real weight matrix), a :class:`FeaturesAxisWarning`
        says so.
    center : bool, default False
        Subtract the mean feature vector from every feature first. A shared mean
        direction makes all features overlap (and lowers every capacity) without
        any superposition; centring removes it.
    dtype : {None, numpy.float64, numpy.float32}, optional
        Arithmetic of the matrix products (numpy and dask input; reductions stay
        in float64). float32 halves memory and roughly doubles speed on large
        matrices, at a relative error near 1e-7. Torch input is computed in its
        own dtype, float16 and bfloat16 in float32.
    block : int, optional
        Features per block of the 2-D path (default: 16 MiB of float64, at most an
        eighth of ``W``).
    progress : bool, default False
        Show a progress bar on stderr over the blocks of the 2-D path.
    threads : int, optional
        BLAS threads for numpy input (threadpoolctl). Default, for large matrices:
        the cores no other process is running on at the call (never more than BLAS
        already uses), which keeps a busy machine from stalling every BLAS call at
        its barriers.

    Returns
    -------
    C : (..., n) ndarray or torch.Tensor
        Capacities in [0, 1], float64 for numpy and dask input; for torch input
        of its type, dtype (float16 and bfloat16 included) and device, and
        differentiable. This is also Elhage et al.'s "feature dimensionality".

    Notes
    -----
    Cost is :math:`O(n d^2)` time and :math:`O(d^2 + n)` extra memory; when
    ``d > n`` the smaller ``(n, n)`` Gram matrix is used instead,
    :math:`O(n^2 d)`. A matrix is read in two passes: the Gram matrix by
    symmetric rank-k updates (BLAS ``syrk``), then the quadratic forms by one
    triangular product per block (BLAS ``trmm``), each of the cost of one
    ``W @ W.T``. Pages of a memory-mapped file are released after each block, so
    the resident memory stays :math:`O(d^2 + \text{block})` however large the file.

    A float64 matrix whose largest absolute entry lies in :math:`[2^{-8}, 2^8]`
    is used as stored; any other matrix is first multiplied by the power of two
    that brings that entry into [0.5, 1), in float64 (numpy) or in the working
    dtype (torch; float16 and bfloat16 are widened to float32 first). This is
    exact, leaves capacities unchanged and comes before any cast to float32, so
    the overall magnitude never matters: any scale the input's dtype can hold
    works, from the smallest subnormal ``5e-324`` to ``1.7e308`` for numpy input,
    also with ``dtype=float32`` (subnormal entries are taken as stored, with
    their fewer significant bits).

    The precision does limit the spread of column norms within one matrix:
    :math:`q_i = a_i^\top M a_i \ge \lVert a_i\rVert^4` underflows for a column
    :math:`a_i` far shorter than the largest entry. Its capacity is accurate
    down to a norm of about ``1e-77`` times that entry in float64 (numpy or
    torch; up to 256 times more for a matrix used as stored), ``2e-13`` with
    ``dtype=float32`` (``1e-19`` when ``d > n``) and ``3e-10`` in torch float32,
    float16 and bfloat16; below, it loses digits, and from about ``1e-81``,
    ``1e-15`` (``5e-23``) and ``6e-12`` it is exactly 0. Only a short column
    (nearly) orthogonal to all long ones is misreported so, as its true capacity
    can be up to 1; one overlapping long columns has a negligible true capacity
    anyway (of order its squared relative norm). Exactly zero columns get ``C = 0``.

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

    Features along rows, and a shared mean direction removed by centring:

    >>> W_dec = np.array([[1.0, 1.0], [1.0, -1.0], [1.0, 0.0]])   # 3 features in 2-D
    >>> capacity(W_dec, features_axis=0).round(4)
    array([0.8   , 0.8   , 0.3333])
    >>> capacity(W_dec, features_axis=0, center=True).round(4)
    array([0.5, 0.5, 0. ])
    """
    work = _work_dtype(dtype)
    center = _check_center(center)
    if _is_torch(W):
        return _capacity_torch(W, _axis(features_axis, W.ndim), features_axis, center)
    if _is_dask(W):
        return _capacity_dask(W, features_axis, center, work)
    with _blas_threads(threads, W):
        return _capacity_numpy(W, features_axis, center, work, block, progress)


def _capacity_numpy(
    W: Any, features_axis: Any, center: bool, work: np.dtype, block: Any, progress: bool
) -> np.ndarray:
    src = _source(W, features_axis, block, progress, stacklevel=3)
    if isinstance(src, _Columns) and block is None and src.in_memory and src.d * src.n <= _SMALL:
        src = np.asarray(src.whole(), dtype=np.float64)  # small: the batched path is quicker
        if not np.all(np.isfinite(src)):
            raise ValueError(_bad_entry(src, 0))
    if isinstance(src, np.ndarray):  # batched
        A = _centered(src) if center else src
        scale = _scale(A)
        if A.shape[-2] > A.shape[-1]:
            return _ratio(*_gram_route(A, scale, work))
        return _ratio(*_quadratic_forms(A, scale, _gram(A, scale, work)))
    if src.d > src.n:
        A = _small_side(src, center)
        return _ratio(*_gram_route(A, _scale(A), work))
    M, plan = _gram_2d(src, work, center)
    (forms,), norms2 = _forms_pass(src, plan, [M])
    return _ratio(forms, norms2)


def _capacity_torch(W: Any, axis: int, features_axis: Any, center: bool) -> Any:
    import torch

    if W.ndim < 2:
        raise ValueError(f"W must have at least 2 dimensions, got shape {tuple(W.shape)}")
    if not torch.isfinite(W).all():
        raise ValueError("W must be finite, found a non-finite entry")
    if axis == -2:
        W = W.transpose(-1, -2)
    if W.ndim == 2:
        _warn_transposed(W.shape[0], W.shape[1], features_axis, stacklevel=3)
    work = torch.promote_types(W.dtype, torch.float32)
    amax = W.detach().abs().amax(dim=(-2, -1), keepdim=True).to(work)
    p, q = _unit_scale(amax, torch)
    A = W * p * q  # in the dtype of p: float16 and bfloat16 widen (exactly) to float32
    if center:
        A = A - A.mean(dim=-1, keepdim=True)
    M = A @ A.transpose(-1, -2)
    forms = ((M @ A) * A).sum(dim=-2)
    norms2 = (A * A).sum(dim=-2)
    positive = forms > 0
    safe = torch.where(positive, forms, torch.ones_like(forms))
    C = torch.where(positive, norms2**2 / safe, torch.zeros_like(forms)).clamp(0.0, 1.0)
    return C.to(W.dtype) if W.dtype.is_floating_point else C


# ----------------------------------------------------------------------------- leverage, rank


def _check_rcond(rcond: Any, d: int, n: int) -> float:
    if rcond is None:
        return float(np.sqrt(max(d, n, 1) * np.finfo(float).eps))
    rcond = check_positive(rcond, "rcond", strict=False)
    if rcond >= 1:
        raise ValueError(f"rcond must lie in [0, 1), got {rcond!r}")
    return rcond


def _pseudo_inverse(M: np.ndarray, rcond: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigenvalues of ``M`` (ascending), the kept mask, and the pseudo-inverse of ``M``."""
    lam, U = np.linalg.eigh(M)
    sing = np.sqrt(np.clip(lam, 0.0, None))
    keep = sing > rcond * sing.max(axis=-1, keepdims=True, initial=0.0)
    inv = np.where(keep, 1.0 / np.where(keep, lam, 1.0), 0.0)
    return lam, keep, (U * inv[..., None, :]) @ np.swapaxes(U, -1, -2)


def _small_side_leverage(A: np.ndarray, rcond: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``d > n``: eigenvalues, kept mask and leverage from the ``(n, n)`` Gram matrix."""
    A = _scaled(A, _scale(A), np.float64)
    lam, V = np.linalg.eigh(A.T @ A)
    sing = np.sqrt(np.clip(lam, 0.0, None))
    keep = sing > rcond * sing.max(initial=0.0)
    return lam, keep, np.sum(V[:, keep] ** 2, axis=1)


def leverage(
    W: Any,
    rcond: float | None = None,
    *,
    features_axis: int | None = None,
    center: bool = False,
    block: int | None = None,
    progress: bool = False,
    threads: int | None = None,
) -> np.ndarray:
    r"""Leverage score of every feature, an upper bound on its capacity.

    .. math::

        \ell_i = W_i^\top (W W^\top)^{+} W_i, \qquad C_i \le \ell_i \le 1,
        \qquad \sum_i \ell_i = \operatorname{rank} W .

    Parameters
    ----------
    W : (..., d, n) array_like of float, numpy memory map or torch.Tensor
        Embedding matrix, read as by :func:`capacity`.
    rcond : float, optional
        Singular values of ``W`` below ``rcond`` times the largest are treated
        as zero. Default ``sqrt(max(d, n) * eps)``: the computation goes through
        the eigenvalues of :math:`W W^\top` (squared singular values), which
        resolve singular values only down to about ``sqrt(eps)`` of the largest.
    features_axis, center, block, progress, threads
        As for :func:`capacity`.

    Returns
    -------
    leverage : (..., n) ndarray

    Notes
    -----
    :math:`\sum_i (\ell_i - C_i)` is the part of the rank that capacity does not
    see: it is zero exactly when ``W`` is block-semi-orthogonal, and large when
    features share directions (correlated features, a common mean), whether or
    not they are in superposition.

    Examples
    --------
    >>> import numpy as np
    >>> from capalloc import leverage
    >>> W = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    >>> leverage(W)
    array([0.5, 0.5, 0. ])
    """
    center = _check_center(center)
    if _is_torch(W):
        W = _check_matrix(W)
    if _is_dask(W):
        lev = _report_dask(W, features_axis, center, np.dtype(np.float64), rcond).leverage
        assert lev is not None  # computed: the report was asked for it
        return np.asarray(lev)
    with _blas_threads(threads, W):
        return _leverage_numpy(W, rcond, features_axis, center, block, progress)


def _leverage_numpy(
    W: Any, rcond: Any, features_axis: Any, center: bool, block: Any, progress: bool
) -> np.ndarray:
    src = _source(W, features_axis, block, progress, stacklevel=3)
    if isinstance(src, np.ndarray):  # batched
        A = _centered(src) if center else src
        scale = _scale(A)
        rcond = _check_rcond(rcond, *A.shape[-2:])
        _, _, Minv = _pseudo_inverse(_gram(A, scale), rcond)
        return np.clip(_quadratic_forms(A, scale, Minv)[0], 0.0, 1.0)
    rcond = _check_rcond(rcond, src.d, src.n)
    if src.d > src.n:
        return np.clip(_small_side_leverage(_small_side(src, center), rcond)[2], 0.0, 1.0)
    M, plan = _gram_2d(src, np.dtype(np.float64), center)
    _, _, Minv = _pseudo_inverse(M, rcond)
    (lev,), _ = _forms_pass(src, plan, [Minv])
    return np.clip(lev, 0.0, 1.0)


def _eigenvalues(W: Any, features_axis: Any, center: bool, block: Any) -> np.ndarray:
    """Eigenvalues of the smaller Gram matrix of a (centred) 2-D ``W``, float64, ascending."""
    if _is_dask(W):
        lam = _report_dask(W, features_axis, center, np.dtype(np.float64), None).eigenvalues
        assert lam is not None  # computed: the report was asked for it
        return np.sort(lam)
    src = _source(W, -1 if features_axis is None else features_axis, block, False, 3)
    if isinstance(src, np.ndarray):
        raise ValueError(f"W must be a matrix (2 dimensions), got shape {src.shape}")
    if src.d > src.n:
        A = _small_side(src, center)
        A = _scaled(A, _scale(A), np.float64)
        return np.linalg.eigvalsh(A.T @ A)
    return np.linalg.eigvalsh(_gram_2d(src, np.dtype(np.float64), center)[0])


def _rank(lam: np.ndarray, rcond: float) -> int:
    sing = np.sqrt(np.clip(lam, 0.0, None))
    return int(np.count_nonzero(sing > rcond * sing.max(initial=0.0)))


def numerical_rank(
    W: Any,
    rcond: float | None = None,
    *,
    features_axis: int | None = None,
    center: bool = False,
    block: int | None = None,
) -> int:
    r"""Numerical rank of a matrix: its singular values above ``rcond`` times the largest.

    Computed from the eigenvalues of the smaller of :math:`W W^\top` and
    :math:`W^\top W` in float64, in one pass over ``W``: the same directions
    :func:`leverage` keeps, so :math:`\sum_i \ell_i` equals this rank.

    Parameters
    ----------
    W : (d, n) array_like of float, numpy memory map or dask.array
        Matrix, read as by :func:`capacity`.
    rcond : float, optional
        Default ``sqrt(max(d, n) * eps)``, as for :func:`leverage`.
    features_axis, center, block
        As for :func:`capacity` (only centring changes the rank).

    Returns
    -------
    rank : int

    Examples
    --------
    >>> import numpy as np
    >>> from capalloc import numerical_rank
    >>> numerical_rank(np.outer([1.0, 2.0, 3.0], [1.0, -1.0]))
    1
    >>> numerical_rank(np.eye(3)[:, [0, 1, 1]], center=True)   # centring removes a direction
    1
    """
    center = _check_center(center)
    if _is_torch(W):
        W = _check_matrix(W)
    shape = tuple(W.shape) if hasattr(W, "shape") else np.shape(W)
    with _blas_threads(None, W):
        lam = _eigenvalues(W, features_axis, center, block)
    return _rank(lam, _check_rcond(rcond, *shape[-2:]) if len(shape) >= 2 else 0.0)


# ----------------------------------------------------------------------------- report


@dataclass(frozen=True, eq=False, repr=False)
class CapacityReport:
    r"""Capacities of a weight matrix next to what bounds and explains them.

    Made by :func:`capacity_report`; every array is read-only and indexed by feature.

    Attributes
    ----------
    capacity : (n,) ndarray
        :math:`C_i`, as :func:`capacity` gives it.
    leverage : (n,) ndarray or None
        :math:`\ell_i \ge C_i`, as :func:`leverage` gives it (``None`` when not computed).
    norms : (n,) ndarray
        Squared norms :math:`N_i = \lVert W_i\rVert^2` (of the centred features
        when ``centered``).
    labels : (n,) ndarray of str
        :func:`classify` labels of the capacities.
    eigenvalues : (min(d, n),) ndarray or None
        Eigenvalues of :math:`W W^\top` (squared singular values), descending
        (with the leverage only).
    d, n : int
        Dimensions and features.
    rank : int or None
        Numerical rank (:func:`numerical_rank`), with the leverage only;
        :math:`\sum_i \ell_i` equals it.
    effective_rank : float
        Participation ratio :math:`(\sum_k \sigma_k^2)^2 / \sum_k \sigma_k^4` of
        the spectrum, in [1, rank] (0 for a zero matrix); it equals
        :math:`\sum_i C_i` when all norms are equal.
    top_share : float
        Share :math:`\sigma_1^2 / \lVert W\rVert_F^2` of the top singular direction.
    centered : bool
        Whether the mean feature was subtracted first.
    atol : float
        Tolerance of the labels.
    """

    capacity: np.ndarray
    leverage: np.ndarray | None
    norms: np.ndarray
    labels: np.ndarray
    eigenvalues: np.ndarray | None
    d: int
    n: int
    rank: int | None
    effective_rank: float
    top_share: float
    centered: bool
    atol: float

    @property
    def sum_capacity(self) -> float:
        r""":math:`\sum_i C_i \le` ``rank``."""
        return float(np.sum(self.capacity))

    @property
    def sum_leverage(self) -> float:
        r""":math:`\sum_i \ell_i`, the rank up to rounding (nan without the leverage)."""
        return float("nan") if self.leverage is None else float(np.sum(self.leverage))

    @property
    def gap(self) -> float:
        r""":math:`\sum_i (\ell_i - C_i) \ge 0`: zero iff ``W`` is block-semi-orthogonal."""
        return self.sum_leverage - self.sum_capacity

    @property
    def counts(self) -> dict[str, int]:
        """Number of features per label, in the order of :data:`LABELS`."""
        return label_counts(self.labels)

    def __repr__(self) -> str:
        counts = ", ".join(f"{k} {lab}" for lab, k in self.counts.items())
        return (
            f"CapacityReport(d={self.d}, n={self.n}, sum_capacity={self.sum_capacity:.6g}, "
            f"sum_leverage={self.sum_leverage:.6g}, gap={self.gap:.6g}, rank={self.rank}, "
            f"effective_rank={self.effective_rank:.4g}, top_share={self.top_share:.4g}, "
            f"centered={self.centered}, {counts})"
        )


def _spread(M: np.ndarray, lam: np.ndarray | None) -> tuple[float, float]:
    """Effective rank and top share of the PSD ``M``, from its eigenvalues where known."""
    M = np.asarray(M, dtype=np.float64)
    total = float(np.trace(M))
    if total <= 0 or M.size == 0:
        return 0.0, 0.0
    U = M / total  # no overflow in the squares
    if lam is None:
        if M.shape[0] <= 512:
            top = float(np.linalg.eigvalsh(M)[-1])
        else:
            from scipy.sparse.linalg import eigsh

            top = float(eigsh(M, k=1, which="LA", return_eigenvectors=False)[0])
    else:
        top = float(np.max(lam))
    return float(1.0 / np.sum(U * U)), min(1.0, max(0.0, top / total))


def _make_report(
    C: np.ndarray,
    lev: np.ndarray | None,
    norms: np.ndarray,
    M: np.ndarray,
    lam: np.ndarray | None,
    keep: np.ndarray | None,
    factor: float,
    shape: tuple[int, int],
    center: bool,
    atol: float,
) -> CapacityReport:
    """The report; ``M`` is ``factor`` times the Gram matrix (d x d or n x n), ``lam`` its
    eigenvalues (or ``None``)."""
    effective, top = _spread(M, lam)
    d, n = shape
    return CapacityReport(
        capacity=readonly(C, np.float64),
        leverage=None if lev is None else readonly(np.clip(lev, 0.0, 1.0), np.float64),
        norms=readonly(norms, np.float64),
        labels=readonly(classify(C, atol)),
        eigenvalues=None
        if lam is None
        else readonly(np.sort(np.clip(lam, 0.0, None))[::-1][: min(d, n)] / factor, np.float64),
        d=d,
        n=n,
        rank=None if keep is None else int(np.count_nonzero(keep)),
        effective_rank=effective,
        top_share=top,
        centered=center,
        atol=float(atol),
    )


def capacity_report(
    W: Any,
    *,
    features_axis: int | None = None,
    center: bool = False,
    atol: float = 1e-6,
    rcond: float | None = None,
    dtype: Any = None,
    block: int | None = None,
    progress: bool = False,
    leverage: bool = True,
    threads: int | None = None,
) -> CapacityReport:
    r"""Capacity, leverage and spectrum of a weight matrix, from one Gram matrix.

    Capacity alone conflates two things: features in superposition (more
    features than dimensions) and features that share directions for other
    reasons (a common mean, correlated features). The report puts it next to the
    leverage :math:`\ell_i \ge C_i` (whose sum is the rank), their gap, the
    effective rank and the share of :math:`\lVert W\rVert_F^2` in the top
    singular direction; a large ``top_share`` with a large gap points to a
    shared direction, which ``center=True`` removes.

    Parameters
    ----------
    W : (d, n) array_like of float, numpy memory map, dask.array or torch.Tensor
        Embedding matrix, read as by :func:`capacity` (two passes over it).
    features_axis, center, dtype, block, progress, threads
        As for :func:`capacity`.
    atol : float, default 1e-6
        Tolerance of the labels (:func:`classify`).
    rcond : float, optional
        As for :func:`leverage`.
    leverage : bool, default True
        Compute the leverage, the rank and the spectrum, at the cost of an
        eigendecomposition of the ``(d, d)`` Gram matrix, :math:`O(d^3)`
        (:func:`leverage` is named after them; ``False`` leaves them ``None``).

    Returns
    -------
    CapacityReport

    Examples
    --------
    Six features of a hexagon lifted along a common direction ``e_2`` in 3-D
    (capacity 25/99 each; with equal norms, the sum is the effective rank):

    >>> import numpy as np
    >>> from capalloc import capacity_report
    >>> angles = 2 * np.pi * np.arange(6) / 6
    >>> W = np.stack([np.cos(angles), np.sin(angles), 2 * np.ones(6)])
    >>> r = capacity_report(W)
    >>> round(r.sum_capacity, 4), round(r.sum_leverage, 4), r.rank, round(r.top_share, 4)
    (1.5152, 3.0, 3, 0.8)
    >>> c = capacity_report(W, center=True)       # the hexagon alone: C = 1/3 each
    >>> round(c.sum_capacity, 4), c.rank, round(c.gap, 4), c.counts["polysemantic"]
    (2.0, 2, 0.0, 6)
    """
    center = _check_center(center)
    work = _work_dtype(dtype)
    want = bool(leverage)
    if not (0 <= atol < 0.5):
        raise ValueError(f"atol must lie in [0, 0.5), got {atol!r}")
    if _is_torch(W):
        W = _check_matrix(W)
    if _is_dask(W):
        return _report_dask(W, features_axis, center, work, rcond, atol, want)
    with _blas_threads(threads, W):
        return _report_numpy(W, features_axis, center, atol, rcond, work, block, progress, want)


def _report_numpy(
    W: Any,
    features_axis: Any,
    center: bool,
    atol: float,
    rcond: Any,
    work: np.dtype,
    block: Any,
    progress: bool,
    want: bool,
) -> CapacityReport:
    src = _source(W, features_axis, block, progress, stacklevel=3)
    if isinstance(src, np.ndarray):
        raise ValueError(f"W must be a matrix (2 dimensions), got shape {src.shape}")
    rcond = _check_rcond(rcond, src.d, src.n)
    if src.d > src.n:
        A = _small_side(src, center)
        scale = _scale(A)
        C = _ratio(*_gram_route(A, scale, work))
        S = _scaled(A, scale, np.float64)
        G = S.T @ S
        lam, keep, lev = _small_side_leverage(A, rcond) if want else (None, None, None)
        factor = float((scale[0] * scale[1]).item()) ** 2
        norms = np.einsum("kn,kn->n", A, A)
        return _make_report(C, lev, norms, G, lam, keep, factor, (src.d, src.n), center, atol)
    M, plan = _gram_2d(src, work, center)
    factor = (plan.p * plan.q) ** 2
    if not want:
        (forms,), norms2 = _forms_pass(src, plan, [M])
        C = _ratio(forms, norms2)
        shape = (src.d, src.n)
        return _make_report(C, None, norms2 / factor, M, None, None, factor, shape, center, atol)
    lam, keep, Minv = _pseudo_inverse(M.astype(np.float64), rcond)
    (forms, lev), norms2 = _forms_pass(src, plan, [M, Minv])
    C = _ratio(forms, norms2)
    shape = (src.d, src.n)
    return _make_report(C, lev, norms2 / factor, M, lam, keep, factor, shape, center, atol)


# ----------------------------------------------------------------------------- dask


def _chunk_gram(blk: Any, plan: _Plan) -> np.ndarray:
    """Lower triangle of ``A A^T`` of one chunk (a task of the dask graph)."""
    A = _work(np.asarray(blk), plan)
    return _syrk(A, np.zeros((A.shape[0], A.shape[0]), plan.dtype, order="F"))


def _chunk_forms(blk: Any, plan: _Plan, mats: np.ndarray) -> np.ndarray:
    """``[a^T a, a^T S_1 a, ...]`` for the columns of one chunk (a task of the dask graph)."""
    A = _work(np.asarray(blk), plan)
    rows = [np.einsum("kn,kn->n", A, A, dtype=np.float64)]
    rows += [_form(_triangle(S, plan.dtype), A) for S in mats]
    return np.stack(rows)


def _tree_sum(parts: list[Any]) -> Any:
    import dask

    while len(parts) > 1:
        pairs = [parts[i : i + 2] for i in range(0, len(parts), 2)]
        parts = [dask.delayed(np.add)(*p) if len(p) == 2 else p[0] for p in pairs]
    return parts[0]


def _dask_columns(W: Any, features_axis: Any) -> Any:
    axis = _axis(features_axis, W.ndim)
    if W.ndim != 2:
        raise ValueError(f"a dask W must be a matrix (2 dimensions), got shape {W.shape}")
    if np.dtype(W.dtype).kind != "f":
        W = W.astype(np.float64)
    V = W.T if axis == -2 else W
    _warn_transposed(int(V.shape[0]), int(V.shape[1]), features_axis, stacklevel=4)
    return V.rechunk({0: -1})  # every chunk holds whole features


def _dask_pass(V: Any, center: bool, work: np.dtype, mats_of: Any) -> tuple[Any, ...]:
    """Statistics, the Gram matrix and the forms of a dask ``(d, n)`` matrix, blockwise."""
    import dask

    hi, lo, total = dask.compute(V.max(), V.min(), V.sum(axis=1, dtype=np.float64))
    hi, lo = float(hi), float(lo)
    if not (np.isfinite(hi) and np.isfinite(lo)):
        raise ValueError(f"W must be finite, found {hi if not np.isfinite(hi) else lo!r}")
    amax = max(hi, -lo, 0.0)
    d, n = (int(s) for s in V.shape)
    mean = np.asarray(total) / max(n, 1) if center else None
    if not center and np.dtype(V.dtype).itemsize < 8 and work == np.float64:
        plan = _Plan(work)
    else:
        plan = _scale_plan(2 * amax if center else amax, work, mean)
    blocks = list(V.to_delayed().ravel())
    if not blocks or d == 0:
        M = np.zeros((d, d))
    else:
        M = _tree_sum([dask.delayed(_chunk_gram)(b, plan) for b in blocks]).compute()
        M = np.tril(M) + np.tril(M, -1).T
    mats = np.stack(mats_of(M))
    shared = dask.delayed(mats)
    out = dask.compute(*[dask.delayed(_chunk_forms)(b, plan, shared) for b in blocks])
    rows = np.concatenate(out, axis=1) if out else np.zeros((1 + len(mats), 0))
    return M, plan, rows


def _capacity_dask(W: Any, features_axis: Any, center: bool, work: np.dtype) -> np.ndarray:
    V = _dask_columns(W, features_axis)
    if V.shape[0] > V.shape[1]:
        A = np.asarray(V.compute(), dtype=np.float64)
        A = _centered(A) if center else A
        return _ratio(*_gram_route(A, _scale(A), work))
    _, _, rows = _dask_pass(V, center, work, lambda M: [M])
    return _ratio(rows[1], rows[0])


def _report_dask(
    W: Any,
    features_axis: Any,
    center: bool,
    work: np.dtype,
    rcond: Any,
    atol: float = 1e-6,
    want: bool = True,
) -> CapacityReport:
    V = _dask_columns(W, features_axis)
    d, n = (int(s) for s in V.shape)
    rcond = _check_rcond(rcond, d, n)
    if d > n:
        A = np.asarray(V.compute(), dtype=np.float64)
        return capacity_report(
            A, features_axis=-1, center=center, atol=atol, rcond=rcond, leverage=want
        )
    spectrum: dict[str, Any] = {"lam": None, "keep": None}

    def mats_of(M: np.ndarray) -> list[np.ndarray]:
        if not want:
            return [M]
        lam, keep, Minv = _pseudo_inverse(M.astype(np.float64), rcond)
        spectrum.update(lam=lam, keep=keep)
        return [M, Minv]

    M, plan, rows = _dask_pass(V, center, work, mats_of)
    factor = (plan.p * plan.q) ** 2
    C = _ratio(rows[1], rows[0])
    lev = rows[2] if want else None
    lam, keep = spectrum["lam"], spectrum["keep"]
    return _make_report(C, lev, rows[0] / factor, M, lam, keep, factor, (d, n), center, atol)


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
