"""Capacity of real-weight layouts: features along rows, centring, the report, streaming, dask.

Every expected value comes from a reference written here: the naive ``O(n^2 d)``
Gram formula, leverage from an SVD, closed forms (orthonormal columns, the
regular simplex, an equiangular tight frame) and explicit centring.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from capalloc import (
    FeaturesAxisWarning,
    capacity,
    capacity_report,
    leverage,
    numerical_rank,
)


def naive_capacity(W: np.ndarray) -> np.ndarray:
    """C_i = G_ii^2 / sum_j G_ij^2, with the full (n, n) Gram matrix, by explicit loops over i."""
    W = np.asarray(W, dtype=np.float64)
    n = W.shape[1]
    out = np.zeros(n)
    for i in range(n):
        dots = W[:, i] @ W  # row i of the Gram matrix
        if dots[i] > 0:
            out[i] = dots[i] ** 2 / np.sum(dots**2)
    return out


def svd_leverage(W: np.ndarray, rcond: float = 1e-8) -> np.ndarray:
    U, s, Vt = np.linalg.svd(np.asarray(W, dtype=np.float64), full_matrices=False)
    keep = s > rcond * s.max(initial=0.0)
    return np.sum(Vt[keep] ** 2, axis=0)


def simplex(d: int) -> np.ndarray:
    """d + 1 unit vectors in R^d with pairwise dot -1/d (a regular simplex): C = d / (d + 1)."""
    E = np.eye(d + 1) - 1.0 / (d + 1)
    U, s, _ = np.linalg.svd(E)
    V = (U[:, :d] * s[:d]).T  # d x (d + 1), same Gram matrix as E
    return V / np.linalg.norm(V, axis=0)


def icosahedron_lines() -> np.ndarray:
    """The 6 diagonals of the icosahedron: an equiangular tight frame of 6 unit vectors in R^3."""
    phi = (1 + math.sqrt(5)) / 2
    V = np.array(
        [[0, 1, phi], [0, 1, -phi], [1, phi, 0], [1, -phi, 0], [phi, 0, 1], [-phi, 0, 1]]
    ).T
    return V / np.linalg.norm(V, axis=0)


# ----------------------------------------------------------------------------- closed forms


def test_closed_forms_in_every_layout():
    Q = np.linalg.qr(np.random.default_rng(0).standard_normal((40, 12)))[0]  # orthonormal columns
    for W, expected in [(Q, 1.0), (simplex(5), 5 / 6), (simplex(30), 30 / 31)]:
        np.testing.assert_allclose(capacity(W, features_axis=-1), expected, rtol=1e-12)
        np.testing.assert_allclose(capacity(W.T.copy(), features_axis=0), expected, rtol=1e-12)
        np.testing.assert_allclose(capacity(np.asfortranarray(W), block=2), expected, rtol=1e-12)


def test_equiangular_tight_frame():
    """Unit-norm tight frame of n vectors in R^d: W W^T = (n/d) I, so C_i = l_i = d / n."""
    W = icosahedron_lines()
    G = W.T @ W
    assert np.allclose(np.abs(G[~np.eye(6, dtype=bool)]), 1 / math.sqrt(5))  # equiangular
    assert np.allclose(W @ W.T, 2 * np.eye(3))  # tight
    np.testing.assert_allclose(capacity(W), 1 / 2, rtol=1e-12)
    np.testing.assert_allclose(leverage(W), 1 / 2, rtol=1e-12)
    r = capacity_report(W)
    assert r.gap == pytest.approx(0.0, abs=1e-12) and r.effective_rank == pytest.approx(3.0)


# ----------------------------------------------------------------------------- features axis


def test_features_axis_rows_equals_transpose(rng):
    A = rng.standard_normal((300, 24))  # 300 features stored as rows
    ref = naive_capacity(A.T)
    np.testing.assert_allclose(capacity(A, features_axis=0), ref, rtol=1e-11)
    np.testing.assert_allclose(capacity(A, features_axis=-2, block=17), ref, rtol=1e-11)
    np.testing.assert_allclose(leverage(A, features_axis=0), svd_leverage(A.T), atol=1e-12)
    B = rng.standard_normal((2, 30, 5))
    np.testing.assert_allclose(
        capacity(B, features_axis=-2), np.stack([naive_capacity(b.T) for b in B]), rtol=1e-11
    )


def test_transposed_decoder_warns_and_explicit_axis_silences(rng):
    A = rng.standard_normal((200, 32))
    with pytest.warns(FeaturesAxisWarning, match=r"200 x 32.*features_axis=0"):
        C = capacity(A)
    assert C.shape == (32,)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert capacity(A, features_axis=0).shape == (200,)
        assert capacity(A, features_axis=-1).shape == (32,)
        capacity(rng.standard_normal((7, 6)))  # a toy matrix with d > n: no warning
        capacity(rng.standard_normal((20, 100)))
    with pytest.warns(FeaturesAxisWarning):
        leverage(A)
    with pytest.warns(FeaturesAxisWarning):
        capacity_report(A)


@pytest.mark.parametrize("axis", [2, -3, 1.0, True, "rows"])
def test_bad_features_axis_names_it(axis):
    with pytest.raises(ValueError, match="features_axis"):
        capacity(np.eye(3), features_axis=axis)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"center": 1}, "center"), ({"block": 0}, "block"), ({"dtype": np.int32}, "dtype")],
)
def test_bad_options_name_themselves(kwargs, match):
    with pytest.raises(ValueError, match=match):
        capacity(np.eye(3), **kwargs)


# ----------------------------------------------------------------------------- centring


def test_center_removes_the_mean_feature(rng):
    W = rng.standard_normal((8, 50)) + 5.0 * rng.standard_normal((8, 1))  # a shared direction
    Wc = W - W.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(capacity(W, center=True), naive_capacity(Wc), rtol=1e-10)
    np.testing.assert_allclose(capacity(W, center=True, block=7), naive_capacity(Wc), rtol=1e-10)
    np.testing.assert_allclose(leverage(W, center=True), svd_leverage(Wc), atol=1e-10)
    assert numerical_rank(W, center=True) == 8
    assert capacity(W).sum() < 0.5 * capacity(W, center=True).sum()


def test_center_of_a_shifted_simplex_is_the_simplex():
    """A simplex around a common offset: centring gives back the closed form d / (d + 1)."""
    S = simplex(4)
    W = np.vstack([S, np.zeros((1, 5))]) + np.array([[0.0], [0.0], [0.0], [0.0], [3.0]])
    np.testing.assert_allclose(capacity(W, center=True), 4 / 5, rtol=1e-12)
    assert capacity(W).max() < 4 / 5


# ----------------------------------------------------------------------------- report


def test_report_matches_independent_references(rng):
    W = rng.standard_normal((12, 90)) + 2.0
    W[:, 5] = 0.0
    r = capacity_report(W)
    np.testing.assert_allclose(r.capacity, naive_capacity(W), rtol=1e-10)
    np.testing.assert_allclose(r.leverage, svd_leverage(W), atol=1e-10)
    np.testing.assert_allclose(r.norms, np.sum(W**2, axis=0), rtol=1e-13)
    s = np.linalg.svd(W, compute_uv=False)
    np.testing.assert_allclose(r.eigenvalues, s**2, rtol=1e-10)
    assert r.rank == 12 and r.sum_leverage == pytest.approx(12.0)
    assert r.gap == pytest.approx(12.0 - naive_capacity(W).sum())
    assert r.effective_rank == pytest.approx(np.sum(s**2) ** 2 / np.sum(s**4))
    assert r.top_share == pytest.approx(s[0] ** 2 / np.sum(s**2))
    assert r.counts == {"monosemantic": 0, "polysemantic": 89, "ignored": 1}
    assert r.labels[5] == "ignored"
    assert r.capacity.flags.writeable is False
    fast = capacity_report(W, leverage=False)
    assert fast.leverage is None and fast.rank is None and math.isnan(fast.gap)
    np.testing.assert_allclose(fast.capacity, r.capacity, rtol=1e-14)
    assert fast.top_share == pytest.approx(r.top_share) and "rank=None" in repr(fast)


def test_report_of_block_semi_orthogonal_has_no_gap():
    W = np.zeros((3, 7))
    W[:2, :5] = np.stack(
        [np.cos(2 * np.pi * np.arange(5) / 5), np.sin(2 * np.pi * np.arange(5) / 5)]
    )
    W[2, 5] = 3.0
    r = capacity_report(W)
    assert r.gap == pytest.approx(0.0, abs=1e-12) and r.rank == 3
    assert r.counts == {"monosemantic": 1, "polysemantic": 5, "ignored": 1}


def test_report_with_more_dimensions_than_features(rng):
    W = rng.standard_normal((50, 20))
    r = capacity_report(W, features_axis=-1)
    np.testing.assert_allclose(r.capacity, naive_capacity(W), rtol=1e-10)
    np.testing.assert_allclose(r.leverage, 1.0, rtol=1e-10)
    np.testing.assert_allclose(r.eigenvalues, np.linalg.svd(W, compute_uv=False) ** 2, rtol=1e-10)


def test_numerical_rank(rng):
    low = rng.standard_normal((30, 4)) @ rng.standard_normal((4, 200))
    assert numerical_rank(low) == 4
    assert numerical_rank(low.T, features_axis=0) == 4
    assert numerical_rank(np.zeros((3, 5))) == 0
    with pytest.raises(ValueError, match="2 dimensions"):
        numerical_rank(np.zeros((2, 3, 4)))


# ----------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_memory_map_streams_in_blocks(tmp_path, rng, order, dtype):
    A = np.asarray(rng.standard_normal((500, 16)), dtype=dtype, order=order)  # rows = features
    path = tmp_path / "W.npy"
    np.save(path, A)
    M = np.load(path, mmap_mode="r")
    ref = naive_capacity(A.astype(np.float64).T)
    for block in (1, 33, None):
        np.testing.assert_allclose(capacity(M, features_axis=0, block=block), ref, rtol=1e-10)
        np.testing.assert_allclose(
            capacity(M.T, features_axis=-1, block=block), ref, rtol=1e-10
        )  # columns of a transposed map
    r = capacity_report(M, features_axis=0, block=50, center=True)
    Wc = A.astype(np.float64).T
    Wc = Wc - Wc.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(r.capacity, naive_capacity(Wc), rtol=1e-9)
    np.testing.assert_allclose(r.leverage, svd_leverage(Wc), atol=1e-9)


def test_streamed_non_finite_entry_names_the_feature(tmp_path):
    A = np.ones((40, 3))
    A[27, 1] = np.nan
    np.save(tmp_path / "W.npy", A)
    with pytest.raises(ValueError, match=r"W must be finite, found nan in feature 27"):
        capacity(np.load(tmp_path / "W.npy", mmap_mode="r"), features_axis=0, block=8)


@pytest.mark.parametrize("scale", [1e-300, 2.0**-9, 1.0, 2.0**9, 1e300])
def test_stored_and_rescaled_blocks_agree(rng, scale):
    """Inside [2^-8, 2^8] blocks are used as stored, outside they are rescaled: same answer."""
    W = rng.standard_normal((6, 3000))
    ref = naive_capacity(W)
    for block in (None, 250):
        np.testing.assert_allclose(capacity(scale * W, block=block), ref, rtol=1e-11)
        np.testing.assert_allclose(
            capacity(scale * W, block=block, dtype=np.float32), ref, rtol=1e-4
        )


def test_lazy_sliceable_array(rng):
    """Any 2-D object with shape, dtype and slicing (a safetensors slice, HDF5) is streamed."""

    class Lazy:
        def __init__(self, A):
            self.A, self.shape, self.dtype, self.reads = A, A.shape, A.dtype, 0

        def __getitem__(self, index):
            self.reads += 1
            return self.A[index].copy()

    A = rng.standard_normal((400, 10)).astype(np.float32)
    lazy = Lazy(A)
    np.testing.assert_allclose(
        capacity(lazy, features_axis=0, block=64), naive_capacity(A.T), rtol=1e-10
    )
    assert lazy.reads == 2 * math.ceil(400 / 64)  # two passes, one slice per block


@pytest.mark.slow
def test_memory_mapped_file_stays_out_of_memory(tmp_path):
    """A 256 MiB float32 .npy: the resident memory grows by far less than the file."""
    import subprocess
    import sys

    path = tmp_path / "big.npy"
    M = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(1 << 19, 128))
    rng = np.random.default_rng(0)
    for lo in range(0, M.shape[0], 1 << 16):
        M[lo : lo + (1 << 16)] = rng.standard_normal((1 << 16, 128), dtype=np.float32)
    M.flush()
    del M
    code = (
        "import resource, numpy as np, capalloc\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"C = capalloc.capacity(np.load({str(path)!r}, mmap_mode='r'), features_axis=0)\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print((peak - base) / 1024, C.size, C.sum())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    grown_mib, size, total = out.stdout.split()
    assert int(size) == 1 << 19 and 127 < float(total) <= 128
    assert float(grown_mib) < 128, out.stdout  # half the file; measured ~60 MiB


# ----------------------------------------------------------------------------- dask


def test_dask_matches_numpy_threaded(rng):
    da = pytest.importorskip("dask.array")
    import dask

    W = rng.standard_normal((20, 3000)) + 0.5
    X = da.from_array(W, chunks=(7, 400))  # chunks split the d axis too: rechunked
    with dask.config.set(scheduler="threads"):
        np.testing.assert_allclose(capacity(X), naive_capacity(W), rtol=1e-10)
        np.testing.assert_allclose(capacity(X.T, features_axis=0), naive_capacity(W), rtol=1e-10)
        Wc = W - W.mean(axis=1, keepdims=True)
        np.testing.assert_allclose(capacity(X, center=True), naive_capacity(Wc), rtol=1e-10)
        np.testing.assert_allclose(leverage(X), svd_leverage(W), atol=1e-10)
        r = capacity_report(X.astype(np.float32))
        np.testing.assert_allclose(r.capacity, naive_capacity(W.astype(np.float32)), rtol=1e-9)
        assert r.rank == 20 and numerical_rank(X) == 20
        small = da.from_array(W[:, :10], chunks=(20, 5))  # d > n: the (n, n) route
        np.testing.assert_allclose(
            capacity(small, features_axis=-1), naive_capacity(W[:, :10]), rtol=1e-10
        )


@pytest.mark.slow
def test_dask_on_a_local_cluster():
    """Worker processes of a dask.distributed LocalCluster: the same numbers as numpy."""
    da = pytest.importorskip("dask.array")
    distributed = pytest.importorskip("dask.distributed")
    X = da.random.default_rng(3).standard_normal((32, 40_000), chunks=(32, 5_000))
    W = X.compute()
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        C = capacity(X)
        r = capacity_report(X, center=True)
    np.testing.assert_allclose(C, capacity(W), rtol=1e-11)
    np.testing.assert_allclose(r.capacity, capacity(W, center=True), rtol=1e-11)


# ----------------------------------------------------------------------------- torch


def test_torch_features_axis_and_center(rng):
    torch = pytest.importorskip("torch")
    A = rng.standard_normal((40, 6))
    T = torch.tensor(A, requires_grad=True)
    C = capacity(T, features_axis=0, center=True)
    Wc = A.T - A.T.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(C.detach().numpy(), naive_capacity(Wc), rtol=1e-10)
    C.sum().backward()
    assert T.grad is not None and T.grad.shape == (40, 6)
    r = capacity_report(torch.tensor(A), features_axis=0)
    np.testing.assert_allclose(r.capacity, naive_capacity(A.T), rtol=1e-10)


# ----------------------------------------------------------------------------- BLAS threads


def test_threads_option_limits_blas_only_during_the_call(rng):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import scipy.linalg.blas  # noqa: F401 - both BLAS libraries loaded before counting

    def counts() -> dict[str, int]:
        """Threads of the BLAS libraries of numpy and scipy (not torch's or others')."""
        return {
            i["filepath"]: i["num_threads"]
            for i in threadpoolctl.threadpool_info()
            if i["user_api"] == "blas" and "scipy_openblas" in i["filepath"]
        }

    from capalloc import _capacity

    W = rng.standard_normal((64, 5000))
    before, seen = counts(), []
    original = _capacity._syrk

    def spy(A, M):
        seen.append(set(counts().values()))
        return original(A, M)

    _capacity._syrk = spy
    try:
        C = capacity(W, threads=1)
    finally:
        _capacity._syrk = original
    assert seen and all(s == {1} for s in seen)
    assert counts() == before
    np.testing.assert_allclose(C, naive_capacity(W), rtol=1e-10)
    np.testing.assert_allclose(capacity_report(W, threads=2).capacity, C, rtol=1e-12)
    with pytest.raises(ValueError, match="threads"):
        capacity(W, threads=0)
