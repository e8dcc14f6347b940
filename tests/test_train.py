"""Tests of :mod:`capalloc.training` (spec sections 5-6, checkable facts 10 and 11).

Training is checked against :func:`capalloc.solve` (an independent method: the
exact allocation problem rather than descent on ``W``); the geometry of the
trained embedding is checked against the structure the theory predicts (one
1 x 1 block per monosemantic feature, one block of dimension ``d - #mono``
holding the polysemantic features, with scale :math:`\\mu = \\sqrt{T/2}`), and
the loss against its defining double sum over the full Gram matrix.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import capalloc
from capalloc import distributions as D
from capalloc.geometry import find_blocks, ignored_features, is_block_semi_orthogonal
from capalloc.training import (
    TrainConfig,
    TrainResult,
    default_config,
    polysemantic_summary,
    train_methods,
    train_quadratic,
)


def _torch():
    """torch, or skip: it is an optional dependency."""
    return pytest.importorskip("torch")


@pytest.fixture
def one_thread():
    """Run torch on one CPU thread (small problems; avoids oversubscribed shared runners)."""
    t = _torch()
    before = t.get_num_threads()
    t.set_num_threads(1)
    yield
    t.set_num_threads(before)


def naive_loss(W: np.ndarray, v: np.ndarray, K: np.ndarray, b: float | None = None) -> float:
    """E[(|Wx|^2 + b - sum v x^2)^2] written out from the fourth moments."""
    G = W.T @ W
    N = np.diag(G)
    off = G - np.diag(N)
    resid = np.sum(v - N) - (np.sum(v - N) if b is None else b)
    return float(np.sum((K - 1) * (v - N) ** 2) + resid**2 + 2 * np.sum(off * off))


def naive_capacity(W: np.ndarray) -> np.ndarray:
    G = W.T @ W
    den = np.sum(G * G, axis=1)
    out = np.zeros(W.shape[1])
    np.divide(np.diag(G) ** 2, den, out=out, where=den > 0)
    return out


# ---------------------------------------------------------------------------
# "exact" training reaches the solver's optimum (K > 3)
# ---------------------------------------------------------------------------


@st.composite
def convex_problems(draw):
    n = draw(st.integers(2, 30))
    d = draw(st.integers(1, n - 1))
    v = np.array(draw(st.lists(st.floats(0.1, 1.0), min_size=n, max_size=n)))
    if draw(st.booleans()):
        K = draw(st.floats(3.5, 40.0))
    else:
        K = np.array(draw(st.lists(st.floats(3.5, 40.0), min_size=n, max_size=n)))
    return capalloc.QuadraticProblem(v, d=d, kurtosis=K)


def well_separated(problem, res, margin=1e-3) -> bool:
    """No feature sits within ``margin`` of a regime boundary (v = mu or v = 2 mu / (K - 1))."""
    mu = math.sqrt(res.threshold / 2)
    v, K = problem.importance, np.broadcast_to(problem.kurtosis, (problem.n,))
    return bool(
        np.all(np.abs(v - mu) > margin * mu) and np.all(np.abs(v - 2 * mu / (K - 1)) > margin * mu)
    )


@settings(max_examples=5)
@given(convex_problems())
def test_exact_training_matches_solver_and_geometry(problem):
    check_exact_training_against_solver(problem)


@pytest.mark.slow
@settings(max_examples=30)
@given(convex_problems())
def test_exact_training_matches_solver_and_geometry_many(problem):
    check_exact_training_against_solver(problem)


def check_exact_training_against_solver(problem):
    """Capacities, loss and block structure of exact training against the solver and theory."""
    res = capalloc.solve(problem)
    assume(well_separated(problem, res))
    out = train_quadratic(problem, restarts=2)
    K = np.broadcast_to(problem.kurtosis, (problem.n,))
    v = problem.importance
    # allocation and loss
    np.testing.assert_allclose(out.capacity, res.capacity, atol=1e-4)
    assert out.loss == pytest.approx(res.loss, rel=1e-6)
    assert naive_loss(out.W, v, K) == pytest.approx(out.loss, rel=1e-10)
    np.testing.assert_allclose(naive_capacity(out.W), out.capacity, atol=1e-10)
    # block structure: mono -> 1 x 1 blocks with scale v_i, poly -> one block of dim d - #mono
    mono = np.flatnonzero(res.labels == capalloc.MONOSEMANTIC)
    poly = np.flatnonzero(res.labels == capalloc.POLYSEMANTIC)
    ignored = np.flatnonzero(res.labels == capalloc.IGNORED)
    assert is_block_semi_orthogonal(out.W)
    np.testing.assert_array_equal(ignored_features(out.W), ignored)
    blocks = {tuple(b.features.tolist()): b for b in find_blocks(out.W)}
    expected = {(int(i),) for i in mono} | ({tuple(poly.tolist())} if poly.size else set())
    assert set(blocks) == expected
    for i in mono:
        block = blocks[(int(i),)]
        assert block.dim == 1 and block.scale == pytest.approx(v[i], rel=1e-6)
    if poly.size:
        block = blocks[tuple(poly.tolist())]
        assert block.dim == problem.d - mono.size
        assert block.scale == pytest.approx(math.sqrt(res.threshold / 2), rel=1e-6)
        assert block.capacity_sum == pytest.approx(block.dim, abs=1e-6)


def test_exact_result_fields():
    problem = capalloc.QuadraticProblem([4.0, 2.0, 1.0, 0.2], d=2, kurtosis=10.0)
    out = train_quadratic(problem, restarts=3, seed=5)
    assert isinstance(out, TrainResult)
    assert out.method == "exact" and out.device == "cpu"
    assert out.W.shape == (2, 4) and out.capacity.shape == (4,)
    assert out.restart_losses.shape == (3,)
    assert out.loss == pytest.approx(out.restart_losses.min(), rel=1e-12)
    assert out.bias == pytest.approx(np.sum(problem.importance - np.sum(out.W**2, axis=0)))
    hist = out.loss_history
    assert hist.ndim == 1 and hist.size >= 1 and out.history is hist  # 0.1.0's name
    assert np.all(np.diff(hist) <= 1e-12 * hist[0])  # L-BFGS never goes up
    assert hist[-1] == pytest.approx(out.loss, rel=1e-9)
    assert out.nit >= 1 and out.model == "quadratic" and out.elapsed > 0
    assert out.config == default_config("exact").replace(restarts=3, seed=5)
    np.testing.assert_array_equal(out.importance, problem.importance)
    assert out.sparsity is None and out.instances == 1
    assert repr(out).startswith("TrainResult(method='exact', W.shape=(2, 4)")
    for field in (out.W, out.capacity, hist, out.restart_losses, out.labels):
        assert not field.flags.writeable


def _second_derivative(f, h=0.5):
    """f''(0) of a polynomial of degree <= 4, exactly, from its values at five points."""
    t = h * np.arange(-2.0, 3.0)
    return 2 * np.polyfit(t, [f(s) for s in t], 4)[-3]


def test_hessian_vector_product_matches_the_quartic_loss():
    """<U, H V> against the second derivatives of the Gram-matrix loss along lines (exact:
    the loss is a quartic polynomial in W), by polarisation."""
    from capalloc.training.train import _hessp

    rng = np.random.default_rng(0)
    W, U, V = rng.standard_normal((3, 3, 5))
    v, K = rng.uniform(0.1, 1, 5), rng.uniform(1.5, 9, 5)

    def q(X):
        return _second_derivative(lambda t: naive_loss(W + t * X, v, K))

    HV = _hessp(W, v, K, V)
    assert np.sum(V * HV) == pytest.approx(q(V), rel=1e-9)
    assert np.sum(U * HV) == pytest.approx((q(U + V) - q(U - V)) / 4, rel=1e-9)
    np.testing.assert_array_equal(_hessp(W, v, K, np.zeros_like(V)), 0.0)


def test_polish_sharpens_weakly_curved_directions():
    """Without the Newton polish a mono feature keeps a ~1e-6 overlap with a small poly one."""
    v = np.array(
        [1, 1, 1, 1, 1, 0.25, 0.25, 0.4375, 1, 0.625, 0.25, 1, 0.5, 0.75, 0.625, 0.25, 0.25, 0.375]
    )
    problem = capalloc.QuadraticProblem(v, d=10, kurtosis=5.0)
    res = capalloc.solve(problem)
    rough = train_quadratic(problem, restarts=1, polish=False)
    sharp = train_quadratic(problem, restarts=1)
    assert rough.loss == pytest.approx(res.loss, rel=1e-12)
    err_rough = np.abs(rough.capacity - res.capacity).max()
    err_sharp = np.abs(sharp.capacity - res.capacity).max()
    assert err_sharp < 1e-10 and err_sharp < err_rough
    assert "Newton" in sharp.message


def test_exact_is_seeded():
    problem = capalloc.QuadraticProblem([1.0, 0.8, 0.5], d=1, kurtosis=6.0)
    a = train_quadratic(problem, restarts=2, seed=3)
    b = train_quadratic(problem, restarts=2, seed=3)
    np.testing.assert_array_equal(a.W, b.W)


def test_exact_batched_problem_rows():
    v = np.array([[4.0, 2.0, 1.0, 0.2], [1.0, 0.9, 0.5, 0.4], [0.3, 1.0, 0.6, 0.6]])
    K = np.array([[10.0], [5.0], [25.0]])
    problem = capalloc.QuadraticProblem(v, d=2, kurtosis=K)
    res = capalloc.solve(problem)
    out = train_quadratic(problem, restarts=2)
    assert out.W.shape == (3, 2, 4)
    assert out.restart_losses.shape == (3, 2)
    assert out.loss_history.shape[0] == 3 and out.instances == 3
    np.testing.assert_allclose(out.capacity, res.capacity, atol=1e-5)
    np.testing.assert_allclose(out.loss, res.loss, rtol=1e-8)


def test_exact_wider_embedding_than_budget():
    """Training with d larger than needed (d >= n) gives every feature C = 1 and loss 0."""
    problem = capalloc.QuadraticProblem([1.0, 0.5, 0.25], d=1, kurtosis=10.0)
    out = train_quadratic(problem, d=3, restarts=1)
    np.testing.assert_allclose(out.capacity, 1.0, atol=1e-6)
    assert out.loss < 1e-12


def test_exact_large_problem_reaches_kkt():
    """n = 300, d = 30 reaches the optimum quickly (loss+gradient costs O(n d^2))."""
    rng = np.random.default_rng(0)
    problem = capalloc.QuadraticProblem(rng.uniform(0.1, 1.0, 300), d=30, kurtosis=10.0)
    res = capalloc.solve(problem)
    out = train_quadratic(problem, restarts=1)
    assert out.loss == pytest.approx(res.loss, rel=1e-10)
    assert capalloc.kkt_residual(problem, out.capacity, res.threshold) < 1e-4
    assert np.abs(out.capacity - res.capacity).max() < 1e-5


# ---------------------------------------------------------------------------
# K < 3: all-or-nothing optimum, spurious minima for descent
# ---------------------------------------------------------------------------

CONCAVE_PROBLEMS = [
    (np.array([1.0, 0.9, 0.6, 0.5, 0.3, 0.2]), 2, 1.8),
    (np.linspace(1.0, 0.1, 10), 3, 2.0),
    (np.array([0.2, 0.9, 0.4, 1.0, 0.7, 0.5, 0.8, 0.3]), 3, 1.5),
    (np.array([0.5, 0.45, 0.9, 0.85, 0.3]), 2, 2.8),
]


@pytest.fixture(scope="module")
def concave_runs():
    """Solver optimum and 12 restarts of exact training for each concave reference problem."""
    runs = []
    for v, d, K in CONCAVE_PROBLEMS:
        problem = capalloc.QuadraticProblem(v, d=d, kurtosis=K)
        runs.append(
            (problem, capalloc.solve(problem), train_quadratic(problem, restarts=12, seed=1))
        )
    return runs


@pytest.mark.parametrize("case", range(len(CONCAVE_PROBLEMS)))
def test_concave_best_restart_is_top_d(case, concave_runs):
    problem, res, out = concave_runs[case]
    v, d = problem.importance, problem.d
    top = np.zeros(v.size)
    top[np.argsort(-v)[:d]] = 1.0  # reference: the d most important features (K is common)
    np.testing.assert_array_equal(res.capacity, top)
    assert out.loss == pytest.approx(res.loss, rel=1e-9)
    np.testing.assert_allclose(out.capacity, top, atol=1e-6)


def test_concave_descent_has_spurious_minima(concave_runs):
    """A sizeable fraction of random starts ends in spurious minima; those are all-or-nothing too."""
    stuck = []
    for problem, res, out in concave_runs:
        bad = out.restart_losses > res.loss * (1 + 1e-6)
        print(
            f"n={problem.n} d={problem.d} K={problem.kurtosis[0]}: {bad.mean():.0%} of "
            f"{bad.size} restarts in spurious minima"
        )
        stuck.append(bad)
    fraction = float(np.mean(np.concatenate(stuck)))
    print(f"spurious-minimum fraction for K < 3: {fraction:.2f}")
    assert 0.1 < fraction < 1.0


# ---------------------------------------------------------------------------
# "sampled" training (torch)
# ---------------------------------------------------------------------------


def test_sampled_smoke(one_thread):
    problem = capalloc.QuadraticProblem([1.0, 0.8, 0.5, 0.3], d=2, kurtosis=10.0)
    res = capalloc.solve(problem)
    out = train_quadratic(problem, "sampled", steps=600, batch_size=1024, seed=0)
    assert out.method == "sampled" and out.device == "cpu" and out.nit == 600
    assert out.W.shape == (2, 4) and out.loss_history.shape == (600,)
    assert np.abs(out.capacity - res.capacity).max() < 0.15
    assert out.loss < 1.1 * res.loss
    assert out.loss == pytest.approx(
        naive_loss(out.W, problem.importance, np.full(4, 10.0), out.bias), rel=1e-9
    )
    assert np.mean(out.loss_history[-50:]) < np.mean(out.loss_history[:50])


def test_sampled_is_seeded_and_batched(one_thread):
    v = np.array([[1.0, 0.8, 0.5], [0.6, 1.0, 0.9]])
    problem = capalloc.QuadraticProblem(v, d=1, kurtosis=np.array([[8.0], [3.0]]))
    a = train_quadratic(problem, "sampled", steps=30, batch_size=64, restarts=2, seed=4)
    b = train_quadratic(problem, "sampled", steps=30, batch_size=64, restarts=2, seed=4)
    c = train_quadratic(problem, "sampled", steps=30, batch_size=64, restarts=2, seed=5)
    np.testing.assert_array_equal(a.W, b.W)
    assert not np.array_equal(a.W, c.W)
    assert a.W.shape == (2, 1, 3) and a.restart_losses.shape == (2, 2)
    assert a.loss_history.shape == (2, 30) and np.shape(a.bias) == (2,)
    np.testing.assert_allclose(a.loss, a.restart_losses.min(axis=1), rtol=1e-12)


def test_sampled_progress_bar(one_thread, capsys):
    problem = capalloc.QuadraticProblem([1.0, 0.5], d=1, kurtosis=5.0)
    train_quadratic(problem, "sampled", steps=5, batch_size=16, progress=True)
    assert "sampled training" in capsys.readouterr().err


def test_sampled_with_explicit_laws(one_thread):
    problem = capalloc.QuadraticProblem([1.0, 0.5, 0.2], d=1, kurtosis=[10.0, 3.0, 1.8])
    law = D.PerFeature([D.Sparse(D.Gaussian(), 0.3), D.Gaussian(), D.Uniform()])
    out = train_quadratic(problem, "sampled", steps=20, batch_size=32, law=law)
    assert np.isfinite(out.loss)
    batched = capalloc.QuadraticProblem([[1.0, 0.5], [0.5, 1.0]], d=1, kurtosis=[[3.0], [1.0]])
    out = train_quadratic(
        batched, "sampled", steps=10, batch_size=16, law=[D.Gaussian(), D.Rademacher()]
    )
    assert out.W.shape == (2, 1, 2)
    with pytest.raises(ValueError, match="law kurtosis"):
        train_quadratic(problem, "sampled", steps=2, law=D.Gaussian())
    with pytest.raises(ValueError, match="law must be"):
        train_quadratic(batched, "sampled", steps=2, law=[D.Gaussian()])
    with pytest.raises(ValueError, match="per-feature laws"):
        train_quadratic(problem, "sampled", steps=2, law=D.PerFeature([D.Gaussian()]))


SAMPLED_REFERENCE = (
    np.array(
        [
            [1.0, 0.9, 0.7, 0.6, 0.4, 0.3],
            [1.0, 0.8, 0.8, 0.5, 0.5, 0.2],
            [0.9, 1.0, 0.3, 0.6, 0.4, 0.7],
        ]
    ),
    3,
    10.0,
)


@pytest.mark.slow
def test_sampled_matches_solver(one_thread):
    """Three n = 6, d = 3, K = 10 problems trained as one batched tensor program."""
    v, d, K = SAMPLED_REFERENCE
    problem = capalloc.QuadraticProblem(v, d=d, kurtosis=K)
    # Solve row by row: the batched solve runs numba's parallel kernel, whose
    # worker threads were seen to slow the torch training that follows 5-30x on
    # a 2-core runner.
    rows = [capalloc.solve(capalloc.QuadraticProblem(row, d=d, kurtosis=K)) for row in v]
    capacity = np.stack([r.capacity for r in rows])
    loss = np.array([r.loss for r in rows])
    out = train_quadratic(problem, "sampled", steps=4000, batch_size=4096, seed=0)
    assert np.abs(out.capacity - capacity).max() < 1e-2
    np.testing.assert_allclose(out.loss, loss, rtol=1e-3)


@pytest.mark.slow
def test_sampled_sparse_gaussian_matches_solver(one_thread):
    """The same with sparse Gaussian inputs, K = 3 / p = 10."""
    v = SAMPLED_REFERENCE[0][0]
    problem = capalloc.QuadraticProblem(v, d=3, kurtosis=10.0)
    res = capalloc.solve(problem)
    out = train_quadratic(
        problem, "sampled", steps=4000, batch_size=4096, seed=1, law=D.Sparse(D.Gaussian(), 0.3)
    )
    assert np.abs(out.capacity - res.capacity).max() < 1e-2
    assert out.loss == pytest.approx(res.loss, rel=1e-3)


def test_sampled_without_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    problem = capalloc.QuadraticProblem([1.0, 0.5], d=1, kurtosis=5.0)
    with pytest.raises(ImportError, match=r"pip install capalloc\[torch\]"):
        train_quadratic(problem, "sampled", steps=2)
    # the exact method needs no torch
    assert train_quadratic(problem, restarts=1).loss >= 0
    # arguments are checked before torch is looked for
    with pytest.raises(ValueError, match="law kurtosis"):
        train_quadratic(problem, "sampled", steps=2, law=D.Gaussian())
    with pytest.raises(ValueError, match="steps"):
        train_quadratic(problem, "sampled", steps=0)


def test_torch_models_without_torch_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.delitem(sys.modules, "capalloc.training.torch_models", raising=False)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'capalloc\[torch\]'") as info:
        import capalloc.training.torch_models  # noqa: F401
    assert info.value.name == "torch"


def test_cuda_without_gpu():
    t = _torch()
    if t.cuda.is_available():
        pytest.skip("a GPU is available")
    problem = capalloc.QuadraticProblem([1.0, 0.5], d=1, kurtosis=5.0)
    with pytest.raises(ValueError, match="CUDA is not available"):
        train_quadratic(problem, "sampled", steps=2, device="cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        train_quadratic(problem, "sampled", steps=2, device=t.device("cuda:0"))


def test_bad_device_name():
    _torch()
    problem = capalloc.QuadraticProblem([1.0, 0.5], d=1, kurtosis=5.0)
    with pytest.raises(ValueError, match="device"):
        train_quadratic(problem, "sampled", steps=2, device="banana")


# ---------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------

PROBLEM = capalloc.QuadraticProblem([1.0, 0.5, 0.2], d=1, kurtosis=5.0)


@pytest.mark.parametrize("method", ["exact", "sampled"])
@pytest.mark.parametrize(
    "name, value",
    [
        ("lr", 0.0),
        ("lr", -1e-3),
        ("lr", float("nan")),
        ("steps", 0),
        ("steps", 2.5),
        ("batch_size", 0),
        ("batch_size", -4),
        ("restarts", 0),
        ("restarts", True),
        ("tol", 0.0),
        ("seed", -1),
    ],
)
def test_bad_arguments(method, name, value):
    with pytest.raises(ValueError, match=name):
        train_quadratic(PROBLEM, method, **{name: value})


def test_bad_method_problem_and_width():
    with pytest.raises(ValueError, match=r"method must be one of \['exact', 'sampled'\]"):
        train_quadratic(PROBLEM, "adam")
    with pytest.raises(TypeError, match="QuadraticProblem"):
        train_quadratic([1.0, 0.5], "exact")
    with pytest.raises(ValueError, match="d must be >= 1"):
        train_quadratic(capalloc.QuadraticProblem([1.0, 0.5], d=0, kurtosis=5.0))
    with pytest.raises(ValueError, match="d must be"):
        train_quadratic(PROBLEM, d=-2)
    with pytest.raises(ValueError, match="law"):
        train_quadratic(PROBLEM, "exact", law=D.Gaussian())


def test_methods_registry():
    assert train_methods() == ["exact", "sampled"]
    with pytest.raises(ValueError, match="method must be one of"):
        default_config("adam")


# ---------------------------------------------------------------------------
# One config: TrainConfig, its schedule, and the keywords of 0.1.0
# ---------------------------------------------------------------------------


def test_config_and_keywords_are_one_setting():
    problem = capalloc.QuadraticProblem([1.0, 0.8, 0.5], d=1, kurtosis=6.0)
    config = default_config("exact").replace(restarts=2, seed=3, steps=500)
    by_config = train_quadratic(problem, config=config)
    by_keywords = train_quadratic(problem, restarts=2, seed=3, steps=500)
    np.testing.assert_array_equal(by_config.W, by_keywords.W)
    assert by_config.config == by_keywords.config == config
    assert train_quadratic(problem, config=config, seed=4).config.seed == 4
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        train_quadratic(problem, config={"restarts": 2})


def test_default_configs():
    exact, sampled = default_config("exact"), default_config("sampled")
    assert (exact.steps, exact.restarts, exact.tol, exact.polish) == (100_000, 4, 1e-12, True)
    assert (sampled.steps, sampled.batch_size, sampled.lr) == (4000, 2048, 0.01)
    assert (sampled.lr_final, sampled.warmup, sampled.num_threads) == (0.0, 0.02, None)
    assert TrainConfig() == TrainConfig(steps=3000, batch_size=1024, lr=0.01, lr_final=0.05)


def test_learning_rate_schedule_closed_form():
    config = TrainConfig(steps=1000, lr=0.2, lr_final=0.1, warmup=0.1)
    assert config.warmup_steps == 100
    lr = np.array([config.lr_at(t) for t in range(1000)])
    np.testing.assert_allclose(lr[:100], 0.2 * np.arange(1, 101) / 100, rtol=1e-15)
    assert lr[100] == 0.2  # the peak, where the cosine starts
    assert lr[550] == pytest.approx(0.2 * (0.1 + 0.9 / 2), rel=1e-12)  # half-way down
    assert np.all(np.diff(lr[100:]) < 0) and lr[-1] > 0.02  # decays towards lr * lr_final
    assert [TrainConfig(steps=3, lr=1.0, lr_final=0.0).lr_at(t) for t in range(3)] == [
        1.0,
        pytest.approx(0.75),
        pytest.approx(0.25),
    ]


@pytest.mark.parametrize(
    "name, value",
    [
        ("steps", 0),
        ("steps", 1.5),
        ("batch_size", -1),
        ("lr", float("inf")),
        ("lr_final", 1.5),
        ("lr_final", -0.1),
        ("warmup", 1.0),
        ("seed", -1),
        ("seed", True),
        ("device", 3),
        ("dtype", "int64"),
        ("restarts", 0),
        ("tol", -1.0),
        ("eval_batch", 0),
        ("num_threads", 0),
        ("polish", "yes"),
        ("progress", 1),
    ],
)
def test_config_rejects_bad_values(name, value):
    with pytest.raises(ValueError, match=name):
        TrainConfig(**{name: value})


def test_config_is_frozen_and_replace_checks_names():
    config = TrainConfig()
    with pytest.raises(AttributeError):
        config.steps = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="no field 'step'"):
        config.replace(step=3)
    with pytest.raises(ValueError, match="steps"):
        config.replace(steps=-3)
    assert hash(config) == hash(TrainConfig())  # plain values: usable as a key


def test_polysemantic_summary_counts():
    labels = np.array(
        [["monosemantic", "polysemantic", "polysemantic", "ignored"], ["ignored"] * 4]
    )
    C = np.array([[1.0, 0.6, 0.4, 0.0], [0.0] * 4])
    s = polysemantic_summary(labels, C)
    np.testing.assert_allclose(s["polysemantic_fraction"], [2 / 3, 0.0])
    np.testing.assert_allclose(s["polysemantic_fraction_all"], [0.5, 0.0])
    np.testing.assert_allclose(s["capacity_held_by_poly"], [0.5, 0.0])
