"""Tests of :mod:`capalloc.quadratic.model` (spec section 3, checkable facts 4 and 5).

References used here: Monte Carlo means of the squared error, a brute-force
loss through the full ``(n, n)`` Gram matrix, central finite differences, and
closed forms for embeddings whose columns lie on coordinate axes.
"""

from __future__ import annotations

import math
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from capalloc import (
    capacity,
    capacity_form_loss,
    optimal_bias,
    quadratic_loss,
    quadratic_loss_grad,
)
from capalloc import distributions as D
from capalloc.quadratic.model import predict, target

# ---------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------


def brute_loss(W, v, K, b=None):
    """Section 3 loss through the (n, n) Gram matrix, one matrix at a time."""
    G = W.T @ W
    N = np.diag(G)
    off = G - np.diag(N)
    resid = np.sum(v - N)
    r = 0.0 if b is None else resid - b
    return np.sum((K - 1) * (v - N) ** 2) + r**2 + 2 * np.sum(off**2)


def mc_squared_error(W, v, x, b):
    """Per-sample squared error of the model, written out here (not via the module)."""
    y = (x * x) @ v
    h = x @ W.T
    return (np.sum(h * h, axis=1) + b - y) ** 2


def central_difference(f, W, h=1e-6):
    """Gradient of f (scalar or (...,) output summed) by central differences."""
    g = np.zeros_like(W)
    for idx in np.ndindex(W.shape):
        E = np.zeros_like(W)
        E[idx] = h
        g[idx] = (np.sum(f(W + E)) - np.sum(f(W - E))) / (2 * h)
    return g


# ---------------------------------------------------------------------------
# Fact 4: exact loss equals the Monte Carlo loss
# ---------------------------------------------------------------------------

MC_SAMPLES = 300_000
Z = 5.0

LAWS = {
    "gaussian": D.Gaussian(),
    "sparse-gaussian-0.3": D.Sparse(D.Gaussian(), 0.3),
    "uniform": D.Uniform(),
    "rademacher": D.Rademacher(),
    "mixed": D.PerFeature(
        [D.Gaussian(), D.Uniform(), D.Rademacher(), D.Sparse(D.Gaussian(), 0.25), D.ThreePoint(5.0)]
    ),
}

# Measured (300k samples, seed 2022): |exact - MC| / standard error, given bias / optimal bias:
#   gaussian 0.42 / 0.60, sparse-gaussian-0.3 0.62 / 0.69, uniform 1.10 / 1.15,
#   rademacher 0.39 / 0.76, mixed 1.24 / 1.39.  Largest: 1.39 standard errors
#   (relative errors 0.1% to 1.1%; writing K for K - 1 would be off by 11 to 410 SE).


def _problem(n, d, seed):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((d, n)) * 0.6
    v = rng.uniform(0.2, 1.5, size=n)
    return W, v


@pytest.mark.parametrize("bias", [0.7, None], ids=["given-bias", "optimal-bias"])
@pytest.mark.parametrize("name", list(LAWS))
def test_exact_loss_equals_monte_carlo(name, bias):
    law = LAWS[name]
    W, v = _problem(5, 2, seed=1)
    K = law.kurtosis
    b = np.sum(v - np.sum(W * W, axis=0)) if bias is None else bias  # E[y - |Wx|^2]
    err2 = mc_squared_error(W, v, law.sample(MC_SAMPLES, 5, seed=2022), b)
    mc, se = err2.mean(), err2.std(ddof=1) / math.sqrt(MC_SAMPLES)
    exact = quadratic_loss(W, v, K, bias=bias)
    assert abs(exact - mc) <= Z * se, (exact, mc, se)
    assert math.isclose(exact, brute_loss(W, v, K, bias), rel_tol=1e-12)


@pytest.mark.parametrize("name", ["gaussian", "sparse-gaussian-0.3", "uniform", "mixed"])
def test_optimal_bias_minimises_monte_carlo_loss(name):
    law = LAWS[name]
    W, v = _problem(5, 2, seed=3)
    x = law.sample(MC_SAMPLES, 5, seed=7)
    e = (x * x) @ v - np.sum((x @ W.T) ** 2, axis=1)  # target - prediction without bias
    b = optimal_bias(W, v)
    assert abs(b - e.mean()) <= Z * e.std(ddof=1) / math.sqrt(MC_SAMPLES)
    assert math.isclose(b, np.sum(v) - np.sum(W * W), rel_tol=1e-12)
    mc = [np.mean((e - c) ** 2) for c in (b - 0.3, b, b + 0.3)]
    assert mc[1] < mc[0] and mc[1] < mc[2]
    # Exact loss at the optimal bias: the given-bias formula at b, and the minimum over b.
    assert math.isclose(
        quadratic_loss(W, v, law.kurtosis),
        quadratic_loss(W, v, law.kurtosis, bias=b),
        rel_tol=1e-12,
    )
    for c in (b - 0.3, b + 0.3):
        gap = quadratic_loss(W, v, law.kurtosis, bias=c) - quadratic_loss(W, v, law.kurtosis)
        assert math.isclose(gap, 0.09, rel_tol=1e-9)


def test_predict_and_target_are_the_model_whose_loss_is_exact():
    # E[(target - predict)^2] over a law is quadratic_loss: the helpers define the model
    W, v = _problem(4, 3, seed=5)
    law = LAWS["sparse-gaussian-0.3"]
    x = law.sample(MC_SAMPLES, 4, seed=11)
    err2 = (target(x, v) - predict(W, x, 0.5)) ** 2
    mc, se = err2.mean(), err2.std(ddof=1) / math.sqrt(MC_SAMPLES)
    assert abs(quadratic_loss(W, v, law.kurtosis, bias=0.5) - mc) <= Z * se
    # one feature on its own: y = v_i t^2 and y_hat = |W_i|^2 t^2 + b
    for i in range(4):
        e = np.zeros((1, 4))
        e[0, i] = 3.0
        assert target(e, v)[0] == pytest.approx(9 * v[i], rel=1e-15)
        assert predict(W, e, 0.5)[0] == pytest.approx(9 * W[:, i] @ W[:, i] + 0.5, rel=1e-14)
    torch = pytest.importorskip("torch")
    xt, Wt, vt = torch.tensor(x[:50]), torch.tensor(W), torch.tensor(v)
    np.testing.assert_allclose(predict(Wt, xt, 0.5).numpy(), predict(W, x[:50], 0.5), rtol=1e-13)
    np.testing.assert_allclose(target(xt, vt).numpy(), target(x[:50], v), rtol=1e-13)


# ---------------------------------------------------------------------------
# Exact formula against the brute-force Gram version on random problems
# ---------------------------------------------------------------------------


@st.composite
def problems(draw, batch: bool = False):
    d, n = draw(st.integers(1, 6)), draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (draw(st.integers(1, 3)),) if batch else ()
    W = rng.standard_normal(shape + (d, n)) * rng.uniform(0.1, 2.0)
    W[..., :, rng.random(n) < 0.2] = 0.0
    v = rng.uniform(0.0, 3.0, size=n)
    K = rng.uniform(1.0, 20.0, size=n) if draw(st.booleans()) else float(rng.uniform(1, 20))
    bias = draw(st.one_of(st.none(), st.floats(-5, 5)))
    return W, v, K, bias


@given(problems())
def test_loss_equals_brute_force_gram_formula(prob):
    W, v, K, bias = prob
    loss = quadratic_loss(W, v, K, bias=bias)
    assert isinstance(loss, float)
    assert math.isclose(loss, brute_loss(W, v, K, bias), rel_tol=1e-10, abs_tol=1e-12)
    grad_loss, _ = quadratic_loss_grad(W, v, K, bias=bias)
    assert math.isclose(grad_loss, loss, rel_tol=1e-12, abs_tol=1e-14)


@given(problems(batch=True))
def test_batched_loss_equals_brute_force(prob):
    W, v, K, bias = prob
    loss = quadratic_loss(W, v, K, bias=bias)
    assert loss.shape == W.shape[:1]
    ref = [brute_loss(Wb, v, K, bias) for Wb in W]
    np.testing.assert_allclose(loss, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        optimal_bias(W, v), np.sum(v - np.sum(W * W, axis=1), axis=-1), rtol=1e-12, atol=1e-12
    )


def test_batched_importance_and_bias(rng):
    W = rng.standard_normal((3, 2, 4))
    v = rng.uniform(0.5, 1.5, size=(3, 4))
    b = np.array([0.0, 1.0, -2.0])
    np.testing.assert_allclose(
        quadratic_loss(W, v, 4.0, bias=b),
        [brute_loss(W[i], v[i], 4.0, b[i]) for i in range(3)],
        rtol=1e-12,
    )


# ---------------------------------------------------------------------------
# Fact 5: capacity form of the loss
# ---------------------------------------------------------------------------


@given(problems())
def test_capacity_form_equals_loss_at_optimal_bias(prob):
    W, v, K, _ = prob
    C, N = capacity(W), np.sum(W * W, axis=0)
    expected = brute_loss(W, v, K)
    assert math.isclose(capacity_form_loss(C, N, v, K), expected, rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(quadratic_loss(W, v, K), expected, rel_tol=1e-10, abs_tol=1e-12)


@given(problems(batch=True))
def test_capacity_form_batched(prob):
    W, v, K, _ = prob
    C, N = capacity(W), np.sum(W * W, axis=-2)
    np.testing.assert_allclose(
        capacity_form_loss(C, N, v, K), quadratic_loss(W, v, K), rtol=1e-9, atol=1e-12
    )


def test_capacity_form_on_known_shapes():
    # Antipodal pair, v = 1, K = 3: no norm error, cross term 2 * 2 * 1 = 4.
    assert capacity_form_loss([0.5, 0.5], [1.0, 1.0], [1.0, 1.0], 3.0) == 4.0
    # A zero column costs (K - 1) v^2 whatever its capacity.
    assert capacity_form_loss([0.0, 1.0], [0.0, 2.0], [1.5, 2.0], 5.0) == 4 * 1.5**2
    # Pentagon of unit vectors in 2-D, C = 2/5: sum_j!=i cos^2 = 3/2, cross = 2 * 5 * 3/2 = 15.
    angles = 2 * np.pi * np.arange(5) / 5
    W = np.stack([np.cos(angles), np.sin(angles)])
    assert math.isclose(
        capacity_form_loss(capacity(W), np.ones(5), np.ones(5), 3.0), 15.0, rel_tol=1e-12
    )


# ---------------------------------------------------------------------------
# Gradient
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [None, 0.4, -1.3])
@pytest.mark.parametrize("K", [3.0, np.array([1.0, 2.5, 7.0, 12.0, 1.8])], ids=["K=3", "K_i"])
def test_gradient_matches_central_differences(K, bias, rng):
    W = rng.standard_normal((3, 5)) * 0.7
    v = rng.uniform(0.2, 1.5, size=5)
    loss, grad = quadratic_loss_grad(W, v, K, bias=bias)
    assert math.isclose(loss, quadratic_loss(W, v, K, bias=bias), rel_tol=1e-13)
    fd = central_difference(lambda A: quadratic_loss(A, v, K, bias=bias), W)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-7)
    # Independent check: finite differences of the brute-force loss.
    fd_ref = central_difference(lambda A: brute_loss(A, v, K, bias), W)
    np.testing.assert_allclose(grad, fd_ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "bias", [None, 0.25, np.array([0.0, 1.0, -0.5])], ids=["optimal", "scalar", "per-matrix"]
)
def test_batched_gradient_matches_central_differences(bias, rng):
    W = rng.standard_normal((3, 2, 4))
    v = rng.uniform(0.2, 1.5, size=4)
    loss, grad = quadratic_loss_grad(W, v, 4.0, bias=bias)
    assert grad.shape == W.shape and loss.shape == (3,)
    bs = np.broadcast_to(np.asarray(bias if bias is not None else np.nan, float), (3,))

    def total(A):
        return sum(brute_loss(A[i], v, 4.0, None if bias is None else bs[i]) for i in range(3))

    np.testing.assert_allclose(grad, central_difference(total, W), rtol=1e-6, atol=1e-7)


def test_gradient_is_zero_at_orthonormal_optimum():
    # Orthogonal columns with N_i = v_i for the kept features: a stationary point.
    v = np.array([2.0, 0.5, 1.0])
    W = np.zeros((2, 3))
    W[0, 0], W[1, 1] = math.sqrt(2.0), math.sqrt(0.5)
    _, grad = quadratic_loss_grad(W, v, 3.0)
    np.testing.assert_allclose(grad, 0.0, atol=1e-14)


# ---------------------------------------------------------------------------
# No (n, n) matrix: n = 20000, d = 8
# ---------------------------------------------------------------------------


def test_many_features_without_gram_matrix():
    """Columns a_i e_k(i) rotated by Q: every quantity has an O(n) closed form."""
    n, d = 20_000, 8
    rng = np.random.default_rng(9)
    group = rng.integers(0, d, size=n)
    a = rng.uniform(0.01, 0.1, size=n)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    W = Q[:, group] * a
    v = rng.uniform(0.0, 0.05, size=n)
    K = rng.uniform(1.0, 10.0, size=n)

    N = a * a
    S = np.bincount(group, weights=N, minlength=d)  # eigenvalues of W W^T
    C_ref = N / S[group]
    cross = np.sum(S**2) - np.sum(N**2)  # sum_{i != j} (W_i . W_j)^2
    loss_ref = np.sum((K - 1) * (v - N) ** 2) + 2 * cross
    grad_ref = W * (-4 * (K - 1) * (v - N) + 8 * (S[group] - N))

    tracemalloc.start()
    t0 = time.perf_counter()
    C = capacity(W)
    loss, grad = quadratic_loss_grad(W, v, K)
    form = capacity_form_loss(C, N, v, K)
    b = optimal_bias(W, v)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    np.testing.assert_allclose(C, C_ref, rtol=1e-10)
    assert math.isclose(loss, loss_ref, rel_tol=1e-10)
    assert math.isclose(form, loss_ref, rel_tol=1e-9)
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-8, atol=1e-14)
    assert math.isclose(b, np.sum(v) - np.sum(N), rel_tol=1e-10)
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB; an (n, n) matrix is 3 GiB"
    assert elapsed < 5.0


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------

W_OK = np.ones((2, 3))
V_OK = np.ones(3)

BAD_CASES = [
    ("W", dict(W=np.ones(3))),
    ("W", dict(W=np.array(1.0))),
    ("W", dict(W=np.array([[1.0, np.nan, 0.0], [0.0, 1.0, 0.0]]))),
    ("W", dict(W=np.array([[1.0, np.inf, 0.0], [0.0, 1.0, 0.0]]))),
    ("importance", dict(importance=[1.0, -0.5, 1.0])),
    ("importance", dict(importance=[1.0, 1.0])),
    ("importance", dict(importance=[1.0, np.nan, 1.0])),
    ("importance", dict(importance=np.ones((2, 3)))),
    ("importance", dict(W=np.ones((4, 2, 3)), importance=np.ones((3, 3)))),
    ("kurtosis", dict(kurtosis=0.5)),
    ("kurtosis", dict(kurtosis=[3.0, 0.9, 3.0])),
    ("kurtosis", dict(kurtosis=[3.0, 3.0])),
    ("kurtosis", dict(kurtosis=np.nan)),
    ("bias", dict(bias=np.nan)),
]


@pytest.mark.parametrize("func", [quadratic_loss, quadratic_loss_grad])
@pytest.mark.parametrize(
    ("name", "change"), BAD_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD_CASES)]
)
def test_loss_rejects_bad_input(func, name, change):
    args = dict(W=W_OK, importance=V_OK, kurtosis=3.0, bias=None) | change
    with pytest.raises(ValueError, match=name):
        func(**args)


@pytest.mark.parametrize(("name", "change"), [c for c in BAD_CASES if c[0] in ("W", "importance")])
def test_optimal_bias_rejects_bad_input(name, change):
    args = dict(W=W_OK, importance=V_OK) | change
    with pytest.raises(ValueError, match=name):
        optimal_bias(**args)


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("C", ([1.2, 0.5], [1.0, 1.0], [1.0, 1.0], 3.0)),
        ("C", ([-0.1, 0.5], [1.0, 1.0], [1.0, 1.0], 3.0)),
        ("C", ([0.0, 0.5], [1.0, 1.0], [1.0, 1.0], 3.0)),
        ("C", (0.5, 1.0, [1.0], 3.0)),
        ("C", ([np.nan, 0.5], [1.0, 1.0], [1.0, 1.0], 3.0)),
        ("norms", ([0.5, 0.5], [-1.0, 1.0], [1.0, 1.0], 3.0)),
        ("norms", ([0.5, 0.5], [1.0, 1.0, 1.0], [1.0, 1.0], 3.0)),
        ("importance", ([0.5, 0.5], [1.0, 1.0], [1.0, -1.0], 3.0)),
        ("importance", ([0.5, 0.5], [1.0, 1.0], [1.0, 1.0, 1.0], 3.0)),
        ("kurtosis", ([0.5, 0.5], [1.0, 1.0], [1.0, 1.0], 0.5)),
        ("kurtosis", ([0.5, 0.5], [1.0, 1.0], [1.0, 1.0], [3.0, 3.0, 3.0])),
    ],
)
def test_capacity_form_rejects_bad_input(name, args):
    with pytest.raises(ValueError, match=name):
        capacity_form_loss(*args)
