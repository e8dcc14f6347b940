"""Tests of :mod:`capalloc._capacity` (spec section 1, checkable facts 1-3).

Every expected value comes from an independent reference written here: closed
forms for the shapes of section 1, the naive ``(n, n)`` Gram-matrix formula,
leverage scores from an SVD, and Monte Carlo correlations for the r² reading.
"""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from capalloc import IGNORED, LABELS, MONOSEMANTIC, POLYSEMANTIC, capacity, classify, leverage

# ---------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------


def naive_capacity(W: np.ndarray) -> np.ndarray:
    """C_i = G_ii^2 / sum_j G_ij^2 with the full Gram matrix G = W^T W (batched)."""
    G = np.swapaxes(W, -1, -2) @ W
    diag = np.diagonal(G, axis1=-2, axis2=-1)
    den = np.sum(G * G, axis=-1)
    out = np.zeros_like(den)
    np.divide(diag**2, den, out=out, where=den > 0)
    return out


def assert_capacity_close(actual, expected, W: np.ndarray, eps: float = 2.0**-52) -> None:
    """Agreement within the forward error of the O(n d^2) formula in precision ``eps``.

    ``q_i = w_i^T (W W^T) w_i`` is computed with an absolute error of about
    ``eps |w_i|^2 |W|_2^2`` while ``q_i >= N_i^2``, so ``C_i`` carries a relative
    error up to about ``eps |W|_2^2 / N_i``: columns far shorter than ``W``'s
    largest singular direction (and nearly orthogonal to it) lose digits.
    """
    actual, expected = np.asarray(actual), np.asarray(expected)
    d, n = W.shape[-2:]
    lam = np.linalg.svd(W, compute_uv=False)[..., :1] ** 2
    N = np.sum(W * W, axis=-2)
    cond = np.divide(lam, N, out=np.zeros_like(N), where=N > 0)
    rtol = max(1e-10, 10 * eps) + 10 * (d + n) * eps * cond
    bad = np.abs(actual - expected) > rtol * np.abs(expected) + 1e-15
    assert not bad.any(), (actual[bad], expected[bad], rtol[bad])


def random_rotation(k: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random orthogonal k x k matrix (QR with the sign fix)."""
    Q, R = np.linalg.qr(rng.standard_normal((k, k)))
    return Q * np.sign(np.diag(R))


def polygon(k: int) -> np.ndarray:
    angles = 2 * np.pi * np.arange(k) / k
    return np.stack([np.cos(angles), np.sin(angles)])


def hadamard(k: int) -> np.ndarray:
    """The Sylvester Hadamard matrix of order 2**k: entries +-1, orthogonal columns."""
    H = np.ones((1, 1))
    for _ in range(k):
        H = np.block([[H, H], [H, -H]])
    return H


TETRAHEDRON = np.array([[1.0, 1.0, -1.0, -1.0], [1.0, -1.0, 1.0, -1.0], [1.0, -1.0, -1.0, 1.0]])


# ---------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------

dims = st.integers(1, 8)
widths = st.integers(1, 20)
batch_shapes = st.sampled_from([(), (1,), (3,), (2, 2)])
seeds = st.integers(0, 2**32 - 1)


@st.composite
def gaussian_matrices(draw, batch: bool = True) -> np.ndarray:
    """Random (..., d, n) matrices with zero, repeated, negated and rescaled columns."""
    d, n = draw(dims), draw(widths)
    shape = draw(batch_shapes) if batch else ()
    rng = np.random.default_rng(draw(seeds))
    W = rng.standard_normal(shape + (d, n))
    # Column edits: some zero, some copies (+/-) of another column, wide norm range.
    edit = rng.integers(0, 4, size=n)
    for i in range(n):
        if edit[i] == 0 and n > 1:
            W[..., :, i] = 0.0
        elif edit[i] == 1 and i > 0:
            W[..., :, i] = rng.choice([-2.0, 0.5, 1.0]) * W[..., :, rng.integers(0, i)]
    W *= 10.0 ** rng.uniform(-3, 3, size=n)
    return W


nonzero_floats = st.one_of(st.just(0.0), st.floats(1e-3, 1e3), st.floats(-1e3, -1e-3))


@st.composite
def hypothesis_arrays(draw) -> np.ndarray:
    """Matrices whose entries hypothesis chooses (and shrinks) itself."""
    shape = draw(st.tuples(dims, widths))
    return draw(hnp.arrays(np.float64, shape, elements=nonzero_floats))


@st.composite
def well_conditioned(draw) -> tuple[np.ndarray, np.ndarray, int]:
    """``W = U diag(s) V^T`` of known rank r with s in [0.5, 2]·scale, plus zero columns.

    Returns ``(W, lev, r)`` where ``lev_i = |V_i|^2`` is the exact leverage.
    """
    d, n = draw(dims), draw(widths)
    r = draw(st.integers(0, min(d, n)))
    rng = np.random.default_rng(draw(seeds))
    U = random_rotation(d, rng)[:, :r]
    V = random_rotation(n, rng)[:, :r]
    s = rng.uniform(0.5, 2.0, size=r) * 10.0 ** rng.uniform(-3, 3)
    W = (U * s) @ V.T
    lev = np.sum(V * V, axis=1)
    k = draw(st.integers(0, 3))  # zero columns inserted at random places
    where = rng.integers(0, n + 1, size=k)
    W = np.insert(W, where, 0.0, axis=1)
    lev = np.insert(lev, where, 0.0)
    return W, lev, r


@st.composite
def block_semi_orthogonal(draw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random block-semi-orthogonal W of rank d (spec section 6).

    Blocks ``sqrt(lam_b) A_b`` with ``A_b A_b^T = I`` (d_b x n_b, from the QR of a
    random n_b x d_b matrix), block-diagonal, zero columns appended, then a random
    rotation and a random column permutation. Returns ``(W, lam, N)``: each
    column's block scale (``nan`` for zero columns) and squared norm.
    """
    d = draw(dims)
    rng = np.random.default_rng(draw(seeds))
    sizes, left = [], d
    while left:
        size = draw(st.integers(1, left))
        sizes.append(size)
        left -= size
    blocks, lams = [], []
    for d_b in sizes:
        n_b = d_b + draw(st.integers(0, 3))
        Q, _ = np.linalg.qr(rng.standard_normal((n_b, d_b)))  # n_b x d_b, orthonormal columns
        lam = 10.0 ** rng.uniform(-2, 2)
        blocks.append(np.sqrt(lam) * Q.T)
        lams.append(np.full(n_b, lam))
    n_zero = draw(st.integers(0, 3))
    n_tot = sum(b.shape[1] for b in blocks)
    W = np.zeros((d, n_tot + n_zero))
    row = col = 0
    for b in blocks:
        W[row : row + b.shape[0], col : col + b.shape[1]] = b
        row, col = row + b.shape[0], col + b.shape[1]
    lam = np.concatenate(lams + [np.full(n_zero, np.nan)])
    perm = rng.permutation(W.shape[1])
    W = random_rotation(d, rng) @ W[:, perm]
    lam = lam[perm]
    return W, lam, np.sum(W * W, axis=0)


# ---------------------------------------------------------------------------
# Fact 1: shapes, bounds, monosemantic iff orthogonal, ignored iff zero
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("W", "expected"),
    [
        pytest.param(np.array([[1.0, -1.0]]), 1 / 2, id="antipodal-pair-1d"),
        pytest.param(polygon(3), 2 / 3, id="triangle-2d"),
        pytest.param(polygon(4), 1 / 2, id="square-2d"),
        pytest.param(polygon(5), 2 / 5, id="pentagon-2d"),
        pytest.param(TETRAHEDRON, 3 / 4, id="tetrahedron-3d"),
    ],
)
def test_shapes_have_the_closed_form_capacity(W, expected, rng):
    d = W.shape[0]
    np.testing.assert_allclose(capacity(W), expected, rtol=1e-13)
    # The shapes are tight frames: capacities sum to d.
    assert math.isclose(capacity(W).sum(), d, rel_tol=1e-13)
    # Same capacities after an arbitrary rotation and rescaling.
    moved = 3.7 * random_rotation(d, rng) @ W
    np.testing.assert_allclose(capacity(moved), expected, rtol=1e-12)


@pytest.mark.parametrize(
    ("a", "b"), [(1.0, 1.0), (1.0, 2.0), (0.3, -5.0), (1e-3, 1.0), (7.0, 1e-4)]
)
def test_collinear_pair(a, b, rng):
    u = rng.standard_normal(3)
    u /= np.linalg.norm(u)
    W = np.stack([a * u, b * u], axis=1)
    expected = np.array([a * a, b * b]) / (a * a + b * b)
    np.testing.assert_allclose(capacity(W), expected, rtol=1e-12)


@pytest.mark.parametrize(("d", "n"), [(1, 1), (3, 2), (5, 5), (8, 3)])
def test_orthogonal_columns_are_monosemantic(d, n, rng):
    lengths = 10.0 ** rng.uniform(-3, 3, size=n)
    W = random_rotation(d, rng)[:, :n] * lengths
    np.testing.assert_allclose(capacity(W), 1.0, rtol=0, atol=1e-12)


def test_zero_column_has_exactly_zero_capacity(rng):
    W = rng.standard_normal((3, 6))
    W[:, [1, 4]] = 0.0
    C = capacity(W)
    assert C[1] == 0.0 and C[4] == 0.0
    assert np.all(C[[0, 2, 3, 5]] > 0)
    assert np.array_equal(capacity(np.zeros((2, 4))), np.zeros(4))
    assert np.array_equal(capacity(np.zeros((3, 2, 4))), np.zeros((3, 4)))


@given(gaussian_matrices())
def test_capacity_equals_naive_gram_formula_and_lies_in_unit_interval(W):
    C = capacity(W)
    assert C.shape == W.shape[:-2] + W.shape[-1:]
    assert np.all((C >= 0) & (C <= 1))
    assert_capacity_close(C, naive_capacity(W), W)


@given(hypothesis_arrays())
def test_capacity_equals_naive_gram_formula_on_chosen_entries(W):
    C = capacity(W)
    assert np.all((C >= 0) & (C <= 1))
    assert_capacity_close(C, naive_capacity(W), W)
    # Ignored exactly when the column is zero.
    assert np.array_equal(C == 0, ~W.any(axis=0))


@given(dims, widths, st.integers(0, 8), seeds)
def test_monosemantic_iff_orthogonal_to_all_others(d, n, m, seed):
    """Columns a_k e_k (k < m) are orthogonal to everything; the rest share the other axes."""
    m = min(m, d, n)
    rng = np.random.default_rng(seed)
    W0 = np.zeros((d, n))
    W0[np.arange(m), np.arange(m)] = 10.0 ** rng.uniform(-1, 1, size=m)
    W0[m:, m:] = rng.standard_normal((d - m, n - m))
    W0[:, rng.random(n) < 0.15] = 0.0
    # Ground truth from the exact (unrotated) Gram matrix: non-zero and orthogonal.
    G = W0.T @ W0
    off = G - np.diag(np.diag(G))
    orthogonal = (np.diag(G) > 0) & np.all(off == 0, axis=1)
    C = capacity(random_rotation(d, rng) @ W0)
    # The O(n d^2) formula has absolute error ~ eps * |W|_2^2 / N_i in C_i, hence the
    # moderate norm range above and the 1e-10 margin.
    assert np.array_equal(C >= 1 - 1e-10, orthogonal)


def test_small_overlap_breaks_monosemanticity():
    for eps in [1e-2, 1e-4]:
        W = np.array([[1.0, eps], [0.0, 1.0]])
        C = capacity(W)
        # Gram matrix by hand: G_00 = 1, G_01 = eps, G_11 = 1 + eps^2.
        g01, n0, n1 = eps, 1.0, 1.0 + eps**2
        np.testing.assert_allclose(
            C, [n0**2 / (n0**2 + g01**2), n1**2 / (n1**2 + g01**2)], rtol=1e-14
        )
        assert np.all(C < 1)


def test_permuting_columns_permutes_capacities(rng):
    W = rng.standard_normal((4, 9))
    perm = rng.permutation(9)
    np.testing.assert_allclose(capacity(W[:, perm]), capacity(W)[perm], rtol=1e-13)


# ---------------------------------------------------------------------------
# Fact 2: sum C <= rank W via the leverage bound; equality for block-semi-orthogonal W
# ---------------------------------------------------------------------------


@given(gaussian_matrices())
def test_sum_of_capacities_at_most_rank(W):
    C = capacity(W)
    rank = np.linalg.matrix_rank(W)
    assert np.all(C.sum(axis=-1) <= rank + 1e-9)


@given(well_conditioned())
def test_leverage_is_exact_and_bounds_capacity(case):
    W, lev, r = case
    ell = leverage(W)
    np.testing.assert_allclose(ell, lev, rtol=1e-9, atol=1e-10)
    assert math.isclose(ell.sum(), r, abs_tol=1e-9)
    C = capacity(W)
    assert np.all(C <= ell + 1e-9)
    assert C.sum() <= r + 1e-9


def test_leverage_on_rank_deficient_examples(rng):
    np.testing.assert_array_equal(
        leverage(np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])), [0.5, 0.5, 0.0]
    )
    # Columns u, 2u, w, 0 in R^3 (rank 2): leverage 1/5, 4/5, 1, 0.
    Q = random_rotation(3, rng)
    u, w = Q[:, 0], Q[:, 1]
    W = np.stack([u, 2 * u, 3 * w, 0 * u], axis=1)
    np.testing.assert_allclose(leverage(W), [0.2, 0.8, 1.0, 0.0], atol=1e-12)
    # Product of thin factors: rank 2 in R^6, compared with the SVD hat matrix.
    for _ in range(20):
        W = rng.standard_normal((6, 2)) @ rng.standard_normal((2, 15))
        _, s, Vt = np.linalg.svd(W, full_matrices=False)
        hat = np.sum(Vt[:2] ** 2, axis=0)
        np.testing.assert_allclose(leverage(W), hat, atol=1e-8)
        assert math.isclose(leverage(W).sum(), 2.0, abs_tol=1e-8)


def test_leverage_batched(rng):
    W = rng.standard_normal((3, 2, 5))
    W[1, :, 2:] = 0.0  # second matrix: rank 2 on two columns
    ell = leverage(W)
    assert ell.shape == (3, 5)
    np.testing.assert_allclose(ell.sum(axis=-1), [2.0, 2.0, 2.0], atol=1e-12)
    np.testing.assert_allclose(ell[1], [1.0, 1.0, 0.0, 0.0, 0.0], atol=1e-12)


@given(block_semi_orthogonal())
def test_block_semi_orthogonal_attains_sum_equal_to_d(case):
    W, lam, N = case
    d = W.shape[0]
    C = capacity(W)
    assert math.isclose(C.sum(), d, rel_tol=0, abs_tol=1e-9)
    zero = np.isnan(lam)
    assert np.all(C[zero] == 0)
    # Inside a block of scale lam: C_i = N_i / lam.
    np.testing.assert_allclose(C[~zero], N[~zero] / lam[~zero], rtol=1e-9)
    # Leverage equals capacity here (every column is an eigenvector of W W^T).
    np.testing.assert_allclose(leverage(W), C, atol=1e-9)


@given(block_semi_orthogonal(), seeds)
def test_perturbed_block_semi_orthogonal_falls_below_d(case, seed):
    """The equality case is strict: moving one column generically loses capacity."""
    W, _, N = case
    d = W.shape[0]
    assume(d >= 2)
    rng = np.random.default_rng(seed)
    i = int(np.argmax(N))
    W = W.copy()
    W[:, i] += 0.1 * np.sqrt(N[i]) * rng.standard_normal(d)
    assert capacity(W).sum() < d - 1e-12


def test_random_gaussian_matrix_is_strictly_below_rank(rng):
    for d, n in [(2, 5), (4, 9), (8, 20)]:
        W = rng.standard_normal((d, n))
        assert capacity(W).sum() < d - 1e-3


# ---------------------------------------------------------------------------
# Invariances
# ---------------------------------------------------------------------------


@given(gaussian_matrices(), seeds)
def test_invariant_under_rotation(W, seed):
    Q = random_rotation(W.shape[-2], np.random.default_rng(seed))
    assert_capacity_close(capacity(Q @ W), capacity(W), W)


@given(gaussian_matrices(), st.sampled_from([1e-200, 1e-100, 1e-8, 3.0, 1e100, 1e200]))
def test_invariant_under_global_scale(W, s):
    C = capacity(W)
    assert_capacity_close(capacity(s * W), C, W)
    assert_capacity_close(capacity(-s * W), C, W)


def test_extreme_scales_match_closed_form():
    for s in [1e-200, 1e-150, 1e150, 1e200]:
        np.testing.assert_allclose(capacity(s * polygon(5)), 0.4, rtol=1e-13)
        np.testing.assert_allclose(capacity(s * np.array([[1.0, 2.0]])), [0.2, 0.8], rtol=1e-13)


# ---------------------------------------------------------------------------
# Magnitude: the power-of-two rescaling comes before any cast to float32
# ---------------------------------------------------------------------------

F32_EPS = float(np.finfo(np.float32).eps)
DTYPES = [np.float64, np.float32]

# (matrix, closed-form capacity): orthogonal columns (d > n and d = n), regular tight
# frames of k unit vectors in d dimensions (C = d / k), identical columns (C = 1 / n).
CLOSED_FORMS = [
    pytest.param(TETRAHEDRON.T, 1.0, id="orthogonal-4x3"),
    pytest.param(hadamard(8), 1.0, id="hadamard-256"),
    pytest.param(polygon(5), 2 / 5, id="pentagon"),
    pytest.param(TETRAHEDRON, 3 / 4, id="tetrahedron"),
    pytest.param(np.ones((16, 300)), 1 / 300, id="ones-16x300"),
]
SCALES = [
    pytest.param(2.0**-1000, id="2^-1000"),
    1e-300,
    1e-200,
    1.0,
    1e200,
    1e300,
    pytest.param(2.0**1000, id="2^1000"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("s", SCALES)
@pytest.mark.parametrize(("W", "expected"), CLOSED_FORMS)
def test_closed_forms_at_every_magnitude(W, expected, s, dtype):
    """Before the fix, float32 gave all zeros for x 1e200 (overflow) and x 1e-300 (underflow)."""
    rtol = 1e-12 if dtype == np.float64 else sum(W.shape) * F32_EPS  # float32 sums of n terms
    C = capacity(s * W, dtype=dtype)
    np.testing.assert_allclose(C, expected, rtol=rtol)
    np.testing.assert_allclose(capacity(-s * W[None], dtype=dtype), [C], rtol=rtol)


@given(hypothesis_arrays(), st.integers(-990, 990), st.sampled_from(DTYPES))
def test_power_of_two_scaling_is_exact(W, k, dtype):
    """W and W 2**k are rescaled to the very same matrix, so capacities agree bit for bit."""
    assert np.array_equal(capacity(np.ldexp(W, k), dtype=dtype), capacity(W, dtype=dtype))


@given(
    hypothesis_arrays(), st.floats(-300, 300), st.sampled_from([1.0, -1.0]), st.sampled_from(DTYPES)
)
def test_capacity_at_any_magnitude_matches_naive_formula(W, exponent, sign, dtype):
    """Scales 1e-300 .. 1e300 (entries then span 1e-303 .. 1e303) against unscaled float64."""
    C = capacity(sign * 10.0**exponent * W, dtype=dtype)
    eps = 2.0**-52 if dtype == np.float64 else F32_EPS
    assert_capacity_close(C, naive_capacity(W), W, eps=eps)
    assert np.array_equal(C == 0, ~W.any(axis=0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_subnormal_input_is_taken_as_stored(dtype):
    """Integers times 2**-1074 are exact subnormals: the capacities of the integers."""
    K = np.array([[1.0, 2.0, 0.0, 7.0], [3.0, -4.0, 5.0, 0.0], [0.0, 1.0, -6.0, 2.0]])
    assert np.array_equal(capacity(np.ldexp(K, -1074), dtype=dtype), capacity(K, dtype=dtype))
    np.testing.assert_allclose(capacity(np.ldexp(K, -1074)), naive_capacity(K), rtol=1e-14)
    # Closed forms with entries +-1, from 2**-1060 (subnormal) up.
    for W, expected in [(hadamard(8), 1.0), (TETRAHEDRON, 0.75), (np.ones((16, 300)), 1 / 300)]:
        rtol = 1e-12 if dtype == np.float64 else sum(W.shape) * F32_EPS
        np.testing.assert_allclose(capacity(np.ldexp(W, -1060), dtype=dtype), expected, rtol=rtol)


def _triangle_and_small_square(r: float) -> np.ndarray:
    """A triangle (C = 2/3) and, orthogonal to it, a square of side r (C = 1/2)."""
    W = np.zeros((4, 7))
    W[:2, :3] = polygon(3)
    W[2:, 3:] = r * polygon(4)
    return W


@pytest.mark.parametrize(
    ("compute", "accurate", "zero"),
    [
        pytest.param(lambda W: capacity(W), 1e-76, 1e-82, id="float64"),
        pytest.param(lambda W: capacity(W, dtype=np.float32), 3e-13, 1e-16, id="float32"),
    ],
)
def test_documented_underflow_limits(compute, accurate, zero):
    """Short orthogonal columns: accurate above the documented limit, exactly 0 below it."""
    rtol = 1e-12 if zero < 1e-20 else 1e-6
    C = compute(_triangle_and_small_square(accurate))
    np.testing.assert_allclose(C, [2 / 3] * 3 + [1 / 2] * 4, rtol=rtol)
    C = compute(_triangle_and_small_square(zero))
    np.testing.assert_allclose(C[:3], 2 / 3, rtol=rtol)
    assert np.array_equal(C[3:], np.zeros(4))


def test_documented_underflow_limit_of_float32_gram_route():
    """d > n goes through the (n, n) Gram matrix: limits 1e-19 (accurate) and 5e-23 (zero)."""
    for r, expected in [(1e-3, 1.0), (2e-19, 1.0), (1e-24, 0.0)]:
        W = np.diag([1.0, r, r])  # 3 x 3 would take the block route: append a zero row
        W = np.vstack([W, np.zeros((1, 3))])
        np.testing.assert_allclose(
            capacity(W, dtype=np.float32), [1.0, expected, expected], rtol=1e-6
        )


@given(hypothesis_arrays(), st.integers(-990, 990))
def test_leverage_power_of_two_scaling_is_exact(W, k):
    assert np.array_equal(leverage(np.ldexp(W, k)), leverage(W))


@pytest.mark.parametrize("s", [1e-300, 1e-200, 1e200, 1e300])
def test_leverage_at_extreme_scales(s, rng):
    Q = random_rotation(3, rng)
    u, w = Q[:, 0], Q[:, 1]
    W = np.stack([u, 2 * u, 3 * w, 0 * u], axis=1)
    np.testing.assert_allclose(leverage(s * W), [0.2, 0.8, 1.0, 0.0], atol=1e-12)


def test_batched_equals_loop(rng):
    W = rng.standard_normal((2, 3, 4, 7))
    C = capacity(W)
    assert C.shape == (2, 3, 7)
    for idx in np.ndindex(2, 3):
        np.testing.assert_allclose(C[idx], naive_capacity(W[idx]), rtol=1e-12)


def test_many_columns_processed_in_blocks(rng):
    """n larger than the internal column block: still the naive formula."""
    W = rng.standard_normal((3, 9000))
    W[:, 8191:8194] = 0.0
    idx = rng.choice(9000, size=50, replace=False)
    # Naive formula for a subset of rows of the Gram matrix.
    G = W[:, idx].T @ W
    ref = np.zeros(50)
    np.divide(
        np.sum(W[:, idx] ** 2, axis=0) ** 2,
        np.sum(G * G, axis=1),
        out=ref,
        where=np.any(W[:, idx] != 0, axis=0),
    )
    np.testing.assert_allclose(capacity(W)[idx], ref, rtol=1e-10)
    assert np.all(capacity(W)[8191:8194] == 0)


@pytest.mark.parametrize("func", [capacity, leverage])
def test_extra_memory_is_far_below_the_size_of_W(func, rng):
    """O(d^2 + n) extra memory: no (n, n) matrix and no full-size copy of W."""
    W = rng.standard_normal((16, 200_000))
    tracemalloc.start()
    try:
        func(W)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.5 * W.nbytes, f"peak {peak / 2**20:.1f} MiB for W of {W.nbytes / 2**20:.1f} MiB"


# ---------------------------------------------------------------------------
# Fact 3: r² reading by Monte Carlo
# ---------------------------------------------------------------------------

# Measured with 2e5 samples (seed 7, 7 features, C from 0.015 to 0.74): max |r² - C|
# = 2.8e-3 / 3.4e-3 / 3.3e-3, i.e. at most 2.85 / 2.32 / 2.62 standard errors for the
# Gaussian / Laplace (K = 6) / Rademacher (K = 1) laws. The standard error is taken
# from the spread of r² over 20 batches of the sample.
MC_SAMPLES = 200_000
MC_BATCHES = 20


def _laplace(rng, shape):
    return rng.laplace(scale=1 / math.sqrt(2), size=shape)  # variance 1, K = 6


def _rademacher(rng, shape):
    return rng.choice([-1.0, 1.0], size=shape)  # K = 1


@pytest.mark.parametrize(
    "draw",
    [lambda rng, shape: rng.standard_normal(shape), _laplace, _rademacher],
    ids=["gaussian", "laplace", "rademacher"],
)
def test_capacity_is_squared_correlation_of_feature_with_readout(draw):
    rng = np.random.default_rng(7)
    W = rng.standard_normal((3, 7)) * rng.uniform(0.3, 2.0, size=7)
    G = W.T @ W  # brute-force (n, n) Gram matrix: readout y_i = sum_j G_ij x_j
    C = capacity(W)
    x = draw(rng, (MC_SAMPLES, W.shape[1]))
    y = x @ G

    def r2(xb, yb):
        xc, yc = xb - xb.mean(0), yb - yb.mean(0)
        return np.sum(xc * yc, 0) ** 2 / (np.sum(xc * xc, 0) * np.sum(yc * yc, 0))

    full = r2(x, y)
    batches = zip(np.array_split(x, MC_BATCHES), np.array_split(y, MC_BATCHES), strict=True)
    parts = np.array([r2(xb, yb) for xb, yb in batches])
    se = parts.std(axis=0, ddof=1) / math.sqrt(MC_BATCHES)
    assert np.all(np.abs(full - C) <= 5 * se), (full - C) / se


# ---------------------------------------------------------------------------
# classify
# ---------------------------------------------------------------------------


def test_classify_labels():
    C = np.array([1.0, 1 - 1e-7, 1 - 1e-5, 0.5, 1e-5, 1e-7, 0.0])
    expected = [
        MONOSEMANTIC,
        MONOSEMANTIC,
        POLYSEMANTIC,
        POLYSEMANTIC,
        POLYSEMANTIC,
        IGNORED,
        IGNORED,
    ]
    assert classify(C).tolist() == expected
    assert classify(C, atol=1e-3).tolist() == [MONOSEMANTIC] * 3 + [POLYSEMANTIC] + [IGNORED] * 3
    assert classify(C.reshape(1, 7)).shape == (1, 7)
    assert LABELS == (MONOSEMANTIC, POLYSEMANTIC, IGNORED)


def test_classify_capacity_of_mixed_embedding():
    # e_0 alone (mono), a pentagon in the next two axes (poly), a zero column (ignored).
    W = np.zeros((3, 7))
    W[0, 0] = 2.0
    W[1:, 1:6] = polygon(5)
    assert classify(capacity(W)).tolist() == [MONOSEMANTIC] + [POLYSEMANTIC] * 5 + [IGNORED]


@pytest.mark.parametrize("atol", [-0.1, 0.5, 2.0])
def test_classify_rejects_bad_atol(atol):
    with pytest.raises(ValueError, match="atol"):
        classify([0.5], atol=atol)


# ---------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("func", [capacity, leverage])
@pytest.mark.parametrize(
    "W",
    [np.ones(3), np.array(2.0), np.array([[1.0, np.nan]]), np.array([[np.inf, 1.0]])],
    ids=["1d", "0d", "nan", "inf"],
)
def test_bad_matrix_raises_naming_W(func, W):
    with pytest.raises(ValueError, match="W"):
        func(W)


# ---------------------------------------------------------------------------
# torch backend
# ---------------------------------------------------------------------------


@given(gaussian_matrices(), st.sampled_from([1e-200, 1.0, 1e200]))
def test_torch_float64_agrees_with_numpy(W, s):
    torch = pytest.importorskip("torch")
    C = capacity(torch.from_numpy(s * W))
    assert isinstance(C, torch.Tensor) and C.dtype == torch.float64
    assert tuple(C.shape) == W.shape[:-2] + W.shape[-1:]
    assert_capacity_close(C.numpy(), naive_capacity(W), W)


def test_torch_keeps_dtype_and_batch_dims(rng):
    torch = pytest.importorskip("torch")
    W = rng.standard_normal((2, 3, 4, 6))
    C32 = capacity(torch.tensor(W, dtype=torch.float32))
    assert C32.dtype == torch.float32 and tuple(C32.shape) == (2, 3, 6)
    np.testing.assert_allclose(C32.numpy(), naive_capacity(W), rtol=1e-4)
    C64 = capacity(torch.tensor(W))
    np.testing.assert_allclose(C64.numpy(), capacity(W), rtol=1e-12)


def test_torch_gradient_matches_numpy_finite_differences(rng):
    torch = pytest.importorskip("torch")
    W = rng.standard_normal((3, 6))
    Wt = torch.tensor(W, requires_grad=True)
    capacity(Wt).sum().backward()
    h = 1e-6
    fd = np.zeros_like(W)
    for idx in np.ndindex(W.shape):
        E = np.zeros_like(W)
        E[idx] = h
        fd[idx] = (capacity(W + E).sum() - capacity(W - E).sum()) / (2 * h)
    np.testing.assert_allclose(Wt.grad.numpy(), fd, rtol=1e-6, atol=1e-8)


def test_torch_gradient_of_scaled_input_and_zero_column(rng):
    torch = pytest.importorskip("torch")
    W = rng.standard_normal((2, 3, 5))
    W[1, :, 2] = 0.0
    for s in [1e-3, 1e3]:
        Wt = torch.tensor(s * W, requires_grad=True)
        (capacity(Wt) * torch.arange(5.0, dtype=torch.float64)).sum().backward()
        g = Wt.grad.numpy()
        assert np.all(np.isfinite(g))
        # C is homogeneous of degree 0, so sum_ij W_ij dC/dW_ij = 0 (Euler).
        np.testing.assert_allclose(np.sum(g * s * W, axis=(-2, -1)), 0.0, atol=1e-10)


def test_torch_rejects_bad_input():
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="W"):
        capacity(torch.ones(3))
    with pytest.raises(ValueError, match="W"):
        capacity(torch.tensor([[1.0, float("nan")]]))


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
@pytest.mark.parametrize(
    ("W", "s", "expected"),
    [
        pytest.param(hadamard(8), 1.0, 1.0, id="hadamard-256"),
        pytest.param(hadamard(8), 2.0**15, 1.0, id="hadamard-256-x2^15"),
        pytest.param(np.ones((16, 300)), 1.0, 1 / 300, id="ones-16x300"),
        pytest.param(np.ones((16, 300)), 2.0**-24, 1 / 300, id="ones-16x300-subnormal"),
        pytest.param(polygon(4), 1.0, 1 / 2, id="square"),
    ],
)
def test_torch_half_and_bfloat16_are_computed_in_float32(W, s, expected, dtype_name):
    """Before the fix, float16 gave NaN for Hadamard(256) and 0 for ones(16, 300)."""
    torch = pytest.importorskip("torch")
    dtype = getattr(torch, dtype_name)
    C = capacity(torch.tensor(s * W, dtype=dtype))
    assert C.dtype == dtype and tuple(C.shape) == (W.shape[1],)
    assert torch.isfinite(C).all()
    # Computed in float32, so the only error is the final rounding to the input dtype.
    half_ulp = torch.finfo(dtype).eps / 2
    np.testing.assert_allclose(C.double().numpy(), expected, rtol=half_ulp + 2 * F32_EPS)


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_torch_low_precision_matches_naive_formula_and_has_gradients(dtype_name, rng):
    torch = pytest.importorskip("torch")
    dtype = getattr(torch, dtype_name)
    Wt = torch.tensor(rng.standard_normal((6, 20)), dtype=dtype, requires_grad=True)
    W = Wt.detach().double().numpy()  # the stored values, exactly
    C = capacity(Wt)
    assert C.dtype == dtype
    ref = naive_capacity(W)
    rounded = torch.tensor(ref).to(dtype).double().numpy()
    # Float32 arithmetic, then one rounding: within a float32 error of the rounded reference.
    np.testing.assert_allclose(C.detach().double().numpy(), rounded, rtol=torch.finfo(dtype).eps)
    C.sum().backward()
    assert Wt.grad.dtype == dtype and torch.isfinite(Wt.grad).all()


@pytest.mark.parametrize("s", [2.0**-140, 1e-30, 1e30, 2.0**120])
def test_torch_float32_at_extreme_scales(s):
    torch = pytest.importorskip("torch")
    for W, expected in [(TETRAHEDRON, 0.75), (hadamard(8), 1.0), (np.ones((16, 300)), 1 / 300)]:
        C = capacity(torch.tensor(s * W, dtype=torch.float32))
        assert C.dtype == torch.float32
        np.testing.assert_allclose(C.numpy(), expected, rtol=sum(W.shape) * F32_EPS)


def test_torch_documented_underflow_limits():
    """float32 (and float16/bfloat16, computed in float32): accurate to 3e-10, zero at 6e-12."""
    torch = pytest.importorskip("torch")
    for r, small in [(1e-9, 0.5), (1e-12, 0.0)]:
        C = capacity(torch.tensor(_triangle_and_small_square(r), dtype=torch.float32)).numpy()
        np.testing.assert_allclose(C, [2 / 3] * 3 + [small] * 4, rtol=1e-5)
    # 2**15 and 2**-14 are both normal float16 numbers; half arithmetic would lose 2**-14.
    W = torch.diag(torch.tensor([2.0**15, 2.0**-14], dtype=torch.float16))
    assert capacity(W).tolist() == [1.0, 1.0]


def test_leverage_accepts_any_torch_float_tensor():
    torch = pytest.importorskip("torch")
    W = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    for dtype in [torch.float16, torch.bfloat16, torch.float32]:
        Wt = torch.tensor(W, dtype=dtype, requires_grad=dtype == torch.float32)
        np.testing.assert_allclose(leverage(Wt), [0.5, 0.5, 1.0], rtol=1e-12)


@pytest.mark.parametrize("rcond", [-1.0, 1.0, 2.0, float("nan"), True, "0.1"])
def test_leverage_rejects_bad_rcond(rcond):
    with pytest.raises(ValueError, match="rcond"):
        leverage(np.eye(3), rcond=rcond)


def test_leverage_rcond_drops_small_singular_values():
    W = np.diag([1.0, 1e-3, 1e-9])  # leverage 1 per kept direction, 0 for the dropped ones
    np.testing.assert_allclose(leverage(W, rcond=1e-6), [1.0, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(leverage(W, rcond=0.0), [1.0, 1.0, 1.0], atol=1e-12)
