"""Tests of :mod:`capalloc.geometry` (spec section 6, checkable facts 2, 11 and 12).

References used here are independent of the package: capacities from the full
``(n, n)`` Gram matrix, the quadratic loss from its defining double sum,
hand-built frames (pentagon, tetrahedron, antipodal pair, orthogonal features)
with closed-form scales and capacities, and allocations generated here with a
known block structure.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import capalloc
from capalloc import geometry
from capalloc.geometry import (
    Block,
    find_blocks,
    ignored_features,
    is_block_semi_orthogonal,
    realize,
    tight_frame,
)

# ---------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------


def naive_capacity(W: np.ndarray) -> np.ndarray:
    """C_i = G_ii^2 / sum_j G_ij^2 from the full Gram matrix (0 for zero columns)."""
    G = W.T @ W
    den = np.sum(G * G, axis=1)
    out = np.zeros(W.shape[1])
    np.divide(np.diag(G) ** 2, den, out=out, where=den > 0)
    return out


def naive_loss(W: np.ndarray, v: np.ndarray, K: np.ndarray) -> float:
    """sum_i (K_i - 1)(v_i - N_i)^2 + 2 sum_{i != j} (W_i . W_j)^2 (optimal bias)."""
    G = W.T @ W
    N = np.diag(G)
    off = G - np.diag(N)
    return float(np.sum((K - 1) * (v - N) ** 2) + 2 * np.sum(off * off))


def random_rotation(k: int, rng: np.random.Generator) -> np.ndarray:
    Q, R = np.linalg.qr(rng.standard_normal((k, k)))
    return Q * np.sign(np.diag(R))


def pentagon() -> np.ndarray:
    angles = 2 * np.pi * np.arange(5) / 5
    return np.stack([np.cos(angles), np.sin(angles)])


TETRAHEDRON = np.array([[1.0, 1.0, -1.0, -1.0], [1.0, -1.0, 1.0, -1.0], [1.0, -1.0, -1.0, 1.0]])


def composite(rng: np.random.Generator, rotate: bool = True):
    """Pentagon + tetrahedron + antipodal pair + 2 orthogonal features + 2 zero columns.

    Returns ``W`` (9 x 15, rotated and permuted) and the expected blocks as a
    list of ``(features, dim, scale, capacity_sum)`` plus the ignored features.
    """
    d = 9
    W = np.zeros((d, 15))
    W[0:2, 0:5] = 1.5 * pentagon()  # scale 2.25 * 5/2
    W[2:5, 5:9] = TETRAHEDRON  # T T^T = 4 I
    W[5, 9:11] = [0.7, -0.7]  # antipodal pair, scale 2 * 0.49
    W[6, 11] = 2.0  # orthogonal (monosemantic) features
    W[7, 12] = 0.3
    # columns 13, 14 stay zero; row 8 stays zero
    expected = [
        (np.arange(0, 5), 2, 2.25 * 2.5, 2.0),
        (np.arange(5, 9), 3, 4.0, 3.0),
        (np.arange(9, 11), 1, 0.98, 1.0),
        (np.array([11]), 1, 4.0, 1.0),
        (np.array([12]), 1, 0.09, 1.0),
    ]
    ignored = np.array([13, 14])
    if rotate:
        W = random_rotation(d, rng) @ W
    perm = rng.permutation(15)  # new column j holds old column perm[j]
    inverse = np.argsort(perm)
    W = W[:, perm]
    expected = [(np.sort(inverse[f]), dim, lam, cs) for f, dim, lam, cs in expected]
    return W, expected, np.sort(inverse[ignored])


def by_features(blocks: list[Block]) -> dict[tuple[int, ...], Block]:
    return {tuple(b.features.tolist()): b for b in blocks}


# ---------------------------------------------------------------------------
# find_blocks / is_block_semi_orthogonal
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("scale", [1.0, 1e-6, 1e6])
def test_find_blocks_recovers_hand_built_frames(seed, scale):
    rng = np.random.default_rng(seed)
    W, expected, ignored = composite(rng)
    W = scale * W
    blocks = find_blocks(W)
    found = by_features(blocks)
    assert set(found) == {tuple(f.tolist()) for f, *_ in expected}
    for features, dim, lam, cap_sum in expected:
        block = found[tuple(features.tolist())]
        assert block.dim == dim
        assert block.size == features.size
        assert block.scale == pytest.approx(scale**2 * lam, rel=1e-12)
        assert block.capacity_sum == pytest.approx(cap_sum, abs=1e-12)
        assert block.residual < 1e-12
    np.testing.assert_array_equal(ignored_features(W), ignored)
    assert [int(b.features[0]) for b in blocks] == sorted(int(b.features[0]) for b in blocks)
    assert is_block_semi_orthogonal(W)


def test_shapes_capacities_inside_blocks():
    """Inside a semi-orthogonal block C_i = N_i / lambda_b (pentagon 2/5, tetrahedron 3/4)."""
    W, expected, _ = composite(np.random.default_rng(0), rotate=False)
    C = naive_capacity(W)
    N = np.sum(W * W, axis=0)
    for features, _, lam, _ in expected:
        np.testing.assert_allclose(C[features], N[features] / lam, rtol=1e-12)


def test_sum_of_capacities_equals_rank_iff_block_semi_orthogonal():
    rng = np.random.default_rng(1)
    W, _, _ = composite(rng)
    assert naive_capacity(W).sum() == pytest.approx(np.linalg.matrix_rank(W), abs=1e-12)
    assert is_block_semi_orthogonal(W)
    G = rng.standard_normal((3, 6))
    assert naive_capacity(G).sum() < np.linalg.matrix_rank(G) - 1e-3
    assert not is_block_semi_orthogonal(G)


@pytest.mark.parametrize("seed", range(5))
def test_generic_random_matrix_is_one_block_and_not_semi_orthogonal(seed):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((4, 9))
    blocks = find_blocks(W)
    assert len(blocks) == 1
    assert blocks[0].dim == 4 and blocks[0].size == 9
    assert blocks[0].residual > 1e-2
    assert not is_block_semi_orthogonal(W)


def test_non_tight_block_and_tolerance():
    W = np.array([[1.0, 0.5], [0.0, 1.0]])
    assert not is_block_semi_orthogonal(W)
    # a perturbation below the tolerance is invisible, one above it is not
    pair = np.array([[1.0, -1.0, 0.0], [0.0, 0.0, 1.0]])
    assert is_block_semi_orthogonal(pair + 1e-9 * np.array([[0, 0, 1.0], [0, 0, 0]]))
    assert len(find_blocks(pair + 1e-3 * np.array([[0, 0, 1.0], [0, 0, 0]]))) == 1


def test_all_zero_matrix_has_no_blocks():
    W = np.zeros((3, 4))
    assert find_blocks(W) == []
    np.testing.assert_array_equal(ignored_features(W), np.arange(4))
    assert is_block_semi_orthogonal(W)


def test_chunked_gram_matches_single_chunk(monkeypatch):
    rng = np.random.default_rng(5)
    W, _, _ = composite(rng)
    whole = [(b.features.tolist(), b.dim) for b in find_blocks(W)]
    monkeypatch.setattr(geometry, "_GRAM_ENTRIES", 7)  # one or two rows per chunk
    chunked = [(b.features.tolist(), b.dim) for b in find_blocks(W)]
    assert chunked == whole


def test_find_blocks_large_n():
    """n = 2000 features in 100 collinear 1 x 20 blocks, rotated and permuted (chunked Gram)."""
    rng = np.random.default_rng(2)
    k, size = 100, 20
    d = k
    W = np.zeros((d, k * size))
    for b in range(k):
        W[b, b * size : (b + 1) * size] = rng.choice([-1.0, 1.0], size) * rng.uniform(0.5, 1, size)
    W = random_rotation(d, rng) @ W
    perm = rng.permutation(W.shape[1])
    W = W[:, perm]
    blocks = find_blocks(W)
    assert len(blocks) == k
    owner = perm // size  # new column j holds old column perm[j]
    for block in blocks:
        assert block.size == size and block.dim == 1
        assert np.unique(owner[block.features]).size == 1


def _reference_components(W: np.ndarray, tol: float) -> list[list[int]]:
    """Blocks by breadth-first search over the explicit cosine matrix (dropping short columns)."""
    N = np.sum(W * W, axis=0)
    kept = [i for i in range(W.shape[1]) if N[i] > tol * N.max()]
    scale = np.sqrt(np.outer(N, N))
    cos = np.divide(W.T @ W, scale, out=np.zeros_like(scale), where=scale > 0)
    seen, blocks = set(), []
    for start in kept:
        if start in seen:
            continue
        block, frontier = {start}, [start]
        while frontier:
            i = frontier.pop()
            for j in kept:
                if j not in block and abs(cos[i, j]) > tol:
                    block.add(j)
                    frontier.append(j)
        seen |= block
        blocks.append(sorted(block))
    return sorted(blocks)


def _sparse_blocks(rng: np.random.Generator, k: int) -> np.ndarray:
    """k unrotated blocks: polygons of 3 to 5 features in their own 2 axes, plus zeros."""
    W = np.zeros((2 * k + 1, 0))
    for b in range(k):
        m = int(rng.integers(3, 6))
        angles = 2 * np.pi * np.arange(m) / m + rng.uniform(0, 1)
        part = np.zeros((2 * k + 1, m))
        part[2 * b : 2 * b + 2] = rng.uniform(0.5, 2) * np.stack([np.cos(angles), np.sin(angles)])
        W = np.hstack([W, part, np.zeros((2 * k + 1, 1))])
    return W[:, rng.permutation(W.shape[1])]


@pytest.mark.parametrize("seed", range(3))
def test_sparse_route_matches_dense_route_and_reference(monkeypatch, seed):
    rng = np.random.default_rng(seed)
    W = _sparse_blocks(rng, 30)
    assert geometry._is_sparse(geometry._check_embedding(W))
    sparse = find_blocks(W)
    monkeypatch.setattr(geometry, "_is_sparse", lambda Ws: False)
    dense = find_blocks(W)
    assert [b.features.tolist() for b in sparse] == _reference_components(W, 1e-6)
    assert [b.features.tolist() for b in dense] == _reference_components(W, 1e-6)
    C = naive_capacity(W)
    for a, b in zip(sparse, dense, strict=True):
        assert (a.dim, a.size) == (b.dim, b.size)
        assert a.capacity_sum == pytest.approx(C[a.features].sum(), rel=1e-12)
        assert b.capacity_sum == pytest.approx(a.capacity_sum, rel=1e-12)
        assert a.scale == pytest.approx(b.scale, rel=1e-12)


def test_dense_route_stops_once_everything_is_connected(monkeypatch):
    rng = np.random.default_rng(4)
    W = rng.standard_normal((8, 400))
    import scipy.sparse.csgraph as csgraph

    calls = []
    original = csgraph.connected_components
    monkeypatch.setattr(geometry, "_GRAM_ENTRIES", 400 * 10)  # chunks of 10 rows
    monkeypatch.setattr(
        csgraph, "connected_components", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    blocks = find_blocks(W)
    assert len(blocks) == 1 and blocks[0].size == 400 and blocks[0].dim == 8
    assert len(calls) == 1  # one chunk of cosines, not 40


def test_large_block_spectrum_from_the_gram_matrix(monkeypatch):
    rng = np.random.default_rng(6)
    W = rng.standard_normal((6, 300))
    ref = find_blocks(W)[0]
    monkeypatch.setattr(geometry, "_SVD_ENTRIES", 10)
    via_gram = find_blocks(W, progress=True)[0]
    assert via_gram.dim == ref.dim == 6
    assert via_gram.scale == pytest.approx(ref.scale, rel=1e-12)
    assert via_gram.residual == pytest.approx(ref.residual, rel=1e-9)


def test_block_repr_and_readonly():
    W, _, _ = composite(np.random.default_rng(0), rotate=False)
    block = find_blocks(W)[0]
    assert repr(block).startswith("Block(features=[")
    with pytest.raises(ValueError):
        block.features[0] = 3


@pytest.mark.parametrize("tol", [0.0, 1.0, -1e-3, float("nan"), "1e-6"])
def test_bad_tolerance(tol):
    with pytest.raises(ValueError, match="tol"):
        find_blocks(np.eye(2), tol)


def test_bad_matrix():
    with pytest.raises(ValueError, match="W"):
        find_blocks(np.ones(3))
    with pytest.raises(ValueError, match="rtol"):
        is_block_semi_orthogonal(np.eye(2), rtol=2.0)


# ---------------------------------------------------------------------------
# tight_frame and realize
# ---------------------------------------------------------------------------


def fill_to_integer(x: np.ndarray, r: int) -> np.ndarray:
    """c_i = min(1, t x_i) with t chosen so that sum(c) = r (exactly, up to rounding)."""
    xs = np.sort(x)[::-1]
    for j in range(r):  # j features capped at 1
        t = (r - j) / xs[j:].sum()
        if t * xs[j] <= 1 and (j == 0 or t * xs[j - 1] >= 1):
            return np.minimum(1.0, t * x)
    raise AssertionError("no water level")  # pragma: no cover


@st.composite
def frame_targets(draw):
    r = draw(st.integers(1, 5))
    k = r + draw(st.integers(1, 8))
    x = np.array(draw(st.lists(st.floats(0.02, 1.0), min_size=k, max_size=k)))
    return fill_to_integer(x, r), r


@given(frame_targets())
def test_tight_frame_is_parseval_with_prescribed_norms(target):
    c, r = target
    F = tight_frame(c, r)
    assert F.shape == (r, c.size)
    np.testing.assert_allclose(F @ F.T, np.eye(r), atol=1e-12)
    np.testing.assert_allclose(np.sum(F * F, axis=0), c, atol=1e-12)
    P = F.T @ F  # projector with prescribed diagonal
    np.testing.assert_allclose(P @ P, P, atol=1e-12)


def test_tight_frame_special_cases():
    np.testing.assert_allclose(tight_frame([1.0, 1.0]), np.eye(2))
    F = tight_frame([0.5, 0.5])
    assert F.shape == (1, 2) and np.allclose(F**2, 0.5)
    with pytest.raises(ValueError, match="sum to the integer"):
        tight_frame([0.5, 0.6])
    with pytest.raises(ValueError, match="c must lie"):
        tight_frame([1.5, 0.5])


@st.composite
def allocations(draw):
    """Capacities and norms with a known block structure, randomly permuted.

    Returns ``(C, N, rows)`` where ``rows`` is the number of dimensions needed.
    """
    n_mono = draw(st.integers(0, 3))
    n_ignored = draw(st.integers(0, 2))
    groups = draw(st.lists(st.tuples(frame_targets(), st.floats(0.05, 20.0)), max_size=2))
    C = [np.ones(n_mono)]
    N = [np.array(draw(st.lists(st.floats(0.01, 10.0), min_size=n_mono, max_size=n_mono)))]
    rows = n_mono
    for (c, r), lam in groups:
        C.append(c)
        N.append(lam * c)
        rows += r
    C.append(np.zeros(n_ignored))
    N.append(np.zeros(n_ignored))
    C, N = np.concatenate(C), np.concatenate(N)
    perm = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).permutation(C.size)
    return C[perm], N[perm], rows


@given(allocations(), st.integers(0, 2))
def test_realize_has_requested_capacities_and_norms(alloc, pad):
    C, N, rows = alloc
    W = realize(C, N, d=rows + pad)
    assert W.shape == (rows + pad, C.size)
    np.testing.assert_allclose(naive_capacity(W), C, atol=1e-10)
    np.testing.assert_allclose(np.sum(W * W, axis=0), N, rtol=1e-10, atol=1e-300)
    assert naive_capacity(W).sum() == pytest.approx(rows, abs=1e-9)
    assert is_block_semi_orthogonal(W)
    assert sum(b.capacity_sum for b in find_blocks(W)) == pytest.approx(rows, abs=1e-9)


@given(frame_targets())
def test_realize_bare_capacities_default_norms(target):
    c, r = target
    W = realize(c)
    assert W.shape == (r, c.size)
    np.testing.assert_allclose(naive_capacity(W), c, atol=1e-10)
    np.testing.assert_allclose(np.sum(W * W, axis=0), c, atol=1e-12)  # norms = C: lambda = 1


@st.composite
def quadratic_problems(draw):
    n = draw(st.integers(2, 30))
    d = draw(st.integers(1, n - 1))
    v = np.array(draw(st.lists(st.floats(0.1, 1.0), min_size=n, max_size=n)))
    kind = draw(st.sampled_from(["convex", "per-feature", "concave"]))
    if kind == "convex":
        K = draw(st.floats(3.5, 40.0))
    elif kind == "per-feature":
        K = np.array(draw(st.lists(st.floats(3.5, 40.0), min_size=n, max_size=n)))
    else:
        K = draw(st.floats(1.2, 2.9))
    return capalloc.QuadraticProblem(v, d=d, kurtosis=K)


@given(quadratic_problems())
def test_realize_solver_optimum(problem):
    res = capalloc.solve(problem)
    W = realize(res, d=problem.d)
    assert W.shape == (problem.d, problem.n)
    np.testing.assert_allclose(naive_capacity(W), res.capacity, atol=1e-10)
    np.testing.assert_allclose(np.sum(W * W, axis=0), res.norms, rtol=1e-10, atol=1e-14)
    K = np.broadcast_to(problem.kurtosis, (problem.n,))
    assert naive_loss(W, problem.importance, K) == pytest.approx(res.loss, rel=1e-10, abs=1e-14)
    assert capalloc.quadratic_loss(W, problem.importance, K) == pytest.approx(
        res.loss, rel=1e-10, abs=1e-14
    )


def test_realize_batched_result():
    v = np.array([[4.0, 2.0, 1.0, 0.2], [1.0, 1.0, 1.0, 1.0]])
    res = capalloc.solve(capalloc.QuadraticProblem(v, d=2, kurtosis=10.0))
    W = realize(res)
    assert W.shape == (2, 2, 4)
    for row in range(2):
        np.testing.assert_allclose(naive_capacity(W[row]), res.capacity[row], atol=1e-12)
        assert naive_loss(W[row], v[row], np.full(4, 10.0)) == pytest.approx(
            res.loss[row], rel=1e-12
        )


def test_realize_equal_importances_gives_one_block():
    """Four equal features in 3 dimensions with K > 3: a tetrahedron-like tight frame, C = 3/4."""
    res = capalloc.solve(capalloc.QuadraticProblem(np.ones(4), d=3, kurtosis=10.0))
    W = realize(res)
    np.testing.assert_allclose(naive_capacity(W), 0.75, atol=1e-12)
    blocks = find_blocks(W)
    assert sum(b.dim for b in blocks) == 3
    assert all(b.residual < 1e-12 for b in blocks)
    mu = math.sqrt(res.threshold / 2)
    assert all(b.scale == pytest.approx(mu, rel=1e-12) for b in blocks)


def test_realize_errors():
    with pytest.raises(ValueError, match="not an integer"):
        realize([0.5, 0.6])
    with pytest.raises(ValueError, match="capacity must lie"):
        realize([1.2, 0.5])
    with pytest.raises(ValueError, match="capacity 0 but norms"):
        realize([1.0, 0.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="positive squared norm"):
        realize([1.0, 0.5, 0.5], [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="too small"):
        realize([1.0, 1.0, 1.0], d=2)
    with pytest.raises(ValueError, match="norms must have the shape"):
        realize([1.0, 1.0], [1.0])
    with pytest.raises(ValueError, match="norms must be >= 0"):
        realize([1.0, 1.0], [1.0, -1.0])
    # two poly features with different N/C are two blocks, each needing an integer sum
    with pytest.raises(ValueError, match="N/C"):
        realize([0.5, 0.5], [0.5, 1.0])
