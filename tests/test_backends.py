"""Tests for the reference backends: methods ``scipy``, ``slsqp`` (scipy.optimize) and ``cvxpy``.

Each is checked against the exact water-filling method, against hand solutions
written here independently of the package (closed forms, bisection, brute-force
grids), and for its error and non-convergence behaviour. Spec: theory §4-5.
"""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import warnings

import _reference
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import capalloc
from capalloc import AllocationWarning, QuadraticProblem, SeparableProblem
from capalloc.allocation.methods import kernels
from capalloc.allocation.methods import scipy_methods as sm
from capalloc.quadratic import closed_form

# capacity tolerance against waterfill on convex problems, per method
C_TOL = {"scipy": 1e-9, "cvxpy": 2e-5, "slsqp": 5e-6}
LOSS_RTOL = {"scipy": 1e-12, "cvxpy": 1e-7, "slsqp": 1e-9}
N_MAX = {"scipy": 50, "cvxpy": 50, "slsqp": 12}
BACKENDS = sorted(C_TOL)


def solve(problem, method, **options):
    return capalloc.solve(problem, method=method, **options)


def random_convex(rng, n, per_feature):
    v = rng.uniform(0.1, 1.0, n)
    K = rng.uniform(3.5, 40.0, n) if per_feature else float(rng.choice([3.5, 5.0, 10.0, 40.0]))
    d = int(rng.integers(1, max(n // 2, 1) + 1))
    return QuadraticProblem(v, d=d, kurtosis=K)


def hand_quadratic_water(v, K, d):
    """Spec §5 closed form, mu by plain bisection (K > 3, 0 < d < n)."""
    lo, hi = 0.0, float(np.max((K - 1) * v))
    for _ in range(300):
        mu = 0.5 * (lo + hi)
        if np.clip(((K - 1) * v / mu - 2) / (K - 3), 0, 1).sum() > d:
            lo = mu
        else:
            hi = mu
    return np.clip(((K - 1) * v / mu - 2) / (K - 3), 0, 1), 2 * mu * mu


def squares_problem(w, d):
    """l_i(C) = w_i (1 - C)^2, convex, with g_i(C) = 2 w_i (1 - C)."""
    return SeparableProblem(lambda C: w * (1 - C) ** 2, lambda C: 2 * w * (1 - C), n=w.size, d=d)


def hand_squares(w, d):
    """C_i = clip(1 - T / (2 w_i), 0, 1) with sum C = d, T by bisection."""
    lo, hi = 0.0, 2 * float(w.max())
    for _ in range(300):
        T = 0.5 * (lo + hi)
        if np.clip(1 - T / (2 * w), 0, 1).sum() > d:
            lo = T
        else:
            hi = T
    return np.clip(1 - T / (2 * w), 0, 1), T


def brute_force(loss, n, d, m):
    """Smallest sum of losses on a grid of step 1/m in the first n - 1 coordinates.

    The last coordinate takes min(1, d - rest), the best choice when losses decrease.
    ``loss`` must broadcast over a leading axis of points.
    """
    axes = np.meshgrid(*[np.linspace(0, 1, m + 1)] * (n - 1), indexing="ij")
    pts = np.stack([a.ravel() for a in axes], axis=1)
    last = np.minimum(1.0, d - pts.sum(axis=1))
    keep = last >= 0
    C = np.column_stack([pts[keep], last[keep]])
    values = np.sum(loss(C), axis=1)
    return values.min(), C[np.argmin(values)]


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------


def test_registered():
    names = capalloc.methods()
    assert {"scipy", "slsqp", "cvxpy"} <= set(names)
    assert capalloc.get_method("scipy").exact
    assert not capalloc.get_method("slsqp").exact
    assert not capalloc.get_method("cvxpy").exact
    assert capalloc.get_method("scipy").problems == (QuadraticProblem, SeparableProblem)


def test_import_does_not_load_cvxpy():
    code = (
        "import sys, capalloc; capalloc.methods(); "
        "assert 'cvxpy' not in sys.modules, 'cvxpy imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------
# Convex quadratic problems: agreement with waterfill and the closed form
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", BACKENDS)
@pytest.mark.parametrize("per_feature", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_convex_matches_waterfill(method, per_feature, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, N_MAX[method] + 1))
    p = random_convex(rng, n, per_feature)
    ref = solve(p, "waterfill")
    res = solve(p, method)
    assert res.status == 0 and res.method == method
    np.testing.assert_allclose(res.capacity, ref.capacity, atol=C_TOL[method], rtol=0)
    np.testing.assert_allclose(res.loss, ref.loss, rtol=LOSS_RTOL[method])
    if np.any(ref.labels == "polysemantic"):
        np.testing.assert_allclose(res.threshold, ref.threshold, rtol=100 * C_TOL[method])
    assert res.capacity.sum() <= p.d + 1e-9


@pytest.mark.parametrize("K", [3.2, 4.0, 10.0, 1e3])
def test_scipy_matches_hand_closed_form(K):
    rng = np.random.default_rng(7)
    v = rng.uniform(0.05, 2.0, 40)
    C, T = hand_quadratic_water(v, np.full(40, K), 9)
    res = sm.solve_scipy(QuadraticProblem(v, d=9, kurtosis=K))
    np.testing.assert_allclose(res.capacity, C, atol=1e-12)
    np.testing.assert_allclose(res.threshold, T, rtol=1e-12)
    assert res.kkt_residual < 1e-12


@given(
    v=st.lists(st.floats(1e-3, 1e3), min_size=2, max_size=30),
    K=st.floats(3.0, 1e4),
    frac=st.floats(0.01, 0.99),
)
def test_scipy_agrees_with_waterfill_property(v, K, frac):
    v = np.array(v)
    d = max(1, int(frac * v.size))
    p = QuadraticProblem(v, d=d, kurtosis=K)
    ref, res = solve(p, "waterfill"), solve(p, "scipy")
    np.testing.assert_allclose(res.loss, ref.loss, rtol=1e-9, atol=1e-12 * ref.loss + 1e-300)
    assert res.kkt_residual < 1e-9


def test_scipy_k3_ties_share_budget():
    p = QuadraticProblem([2.0, 1.0, 1.0, 1.0, 0.5], d=2, kurtosis=3.0)
    res = sm.solve_scipy(p)
    np.testing.assert_allclose(res.capacity, [1, 1 / 3, 1 / 3, 1 / 3, 0], atol=1e-15)
    np.testing.assert_allclose(res.capacity, solve(p, "waterfill").capacity, atol=1e-15)
    np.testing.assert_allclose(res.threshold, 2.0)


def test_scipy_k3_mixed_with_convex():
    p = QuadraticProblem([2.0, 1.0, 1.0, 0.9, 0.3], d=2, kurtosis=[3, 3, 3, 8, 8])
    ref, res = solve(p, "waterfill"), sm.solve_scipy(p)
    np.testing.assert_allclose(res.capacity, ref.capacity, atol=1e-12)
    assert res.kkt_residual < 1e-12


@pytest.mark.parametrize("method", BACKENDS)
def test_trivial_budgets(method):
    v = np.array([1.0, 0.0, 0.5, 0.25])
    for d, expect in [(0, [0, 0, 0, 0]), (3, [1, 0, 1, 1]), (10, [1, 0, 1, 1])]:
        res = solve(QuadraticProblem(v, d=d, kurtosis=6.0), method)
        np.testing.assert_allclose(res.capacity, expect, atol=1e-8)


@pytest.mark.parametrize("method", BACKENDS)
def test_batched_rows(method):
    rng = np.random.default_rng(3)
    V = rng.uniform(0.1, 1.0, (4, 8))
    p = QuadraticProblem(V, d=3, kurtosis=rng.uniform(4.0, 20.0, (4, 8)))
    ref, res = solve(p, "waterfill"), solve(p, method)
    assert res.capacity.shape == (4, 8) and np.shape(res.threshold) == (4,)
    np.testing.assert_allclose(res.capacity, ref.capacity, atol=C_TOL[method])
    np.testing.assert_allclose(res.loss, ref.loss, rtol=LOSS_RTOL[method])


def test_cvxpy_importance_scaling():
    from capalloc.allocation.methods.cvxpy_method import solve_cvxpy

    rng = np.random.default_rng(11)
    v, s = rng.uniform(0.1, 1.0, 30), 1e3
    a = solve_cvxpy(QuadraticProblem(v, d=8, kurtosis=7.0))
    b = solve_cvxpy(QuadraticProblem(s * v, d=8, kurtosis=7.0))
    np.testing.assert_allclose(b.capacity, a.capacity, atol=1e-6)
    np.testing.assert_allclose(b.threshold, s * s * a.threshold, rtol=1e-6)
    np.testing.assert_allclose(b.loss, s * s * a.loss, rtol=1e-8)
    # the multiplier is T = 2 mu^2 of the closed form
    _, T = hand_quadratic_water(s * v, np.full(30, 7.0), 8)
    np.testing.assert_allclose(b.threshold, T, rtol=1e-5)


def test_quadratic_kernel_twins():
    rng = np.random.default_rng(5)
    v = rng.uniform(0.0, 2.0, 200)
    K = np.where(rng.random(200) < 0.2, 3.0, rng.uniform(3.0, 30.0, 200))
    for log_mu in np.linspace(-4, 3, 15):
        mu = np.exp(log_mu)
        naive = _reference.quad_capacities_numpy(v, K, mu)
        assert kernels.dual_excess(log_mu, v, K, 7.0) == pytest.approx(naive.sum() - 7.0, abs=1e-11)
        np.testing.assert_allclose(kernels.dual_capacities(v, K, mu), naive, atol=1e-13)
        m, npoly, A, B = kernels.dual_segment(v, K, mu)
        m2, npoly2, A2, B2 = _reference.quad_segment_numpy(v, K, mu)
        assert (m, npoly) == (m2, npoly2)
        assert A == pytest.approx(A2, rel=1e-14) and B == pytest.approx(B2, rel=1e-14)


# ---------------------------------------------------------------------------
# Concave problems: top-d rule
# ---------------------------------------------------------------------------


def hand_top_d(v, K, d):
    gain = (K - 1) * v * v
    C = np.zeros(v.size)
    C[np.argsort(-gain)[:d]] = 1
    return C


@pytest.mark.parametrize("method", ["scipy", "cvxpy"])
@pytest.mark.parametrize("seed", range(3))
def test_concave_top_d(method, seed):
    rng = np.random.default_rng(seed)
    n = 30
    v, K = rng.uniform(0.1, 1.0, n), rng.uniform(1.2, 2.95, n)
    p = QuadraticProblem(v, d=7, kurtosis=K)
    res = solve(p, method)
    np.testing.assert_array_equal(res.capacity, hand_top_d(v, K, 7))
    np.testing.assert_array_equal(res.capacity, solve(p, "waterfill").capacity)


def test_slsqp_concave_small():
    rng = np.random.default_rng(4)
    v, K = rng.uniform(0.1, 1.0, 6), rng.uniform(1.5, 2.8, 6)
    p = QuadraticProblem(v, d=2, kurtosis=K)
    res = sm.solve_slsqp(p, starts=16, seed=1)
    expect = p.loss(hand_top_d(v, K, 2)).sum()
    assert res.loss == pytest.approx(expect, rel=1e-6)


# ---------------------------------------------------------------------------
# Separable problems
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 5, 50, 500])
def test_scipy_separable_squares(n):
    rng = np.random.default_rng(n)
    w = rng.uniform(0.1, 3.0, n)
    d = max(n // 3, 1) if n > 1 else 0
    C, T = hand_squares(w, d)
    res = solve(squares_problem(w, d), "scipy")
    np.testing.assert_allclose(res.capacity, C, atol=1e-9)
    if 0 < d:
        np.testing.assert_allclose(res.threshold, T, rtol=1e-9)
    assert res.kkt_residual < 1e-12


def test_slsqp_separable_squares():
    rng = np.random.default_rng(8)
    w = rng.uniform(0.1, 3.0, 10)
    C, _ = hand_squares(w, 4)
    res = solve(squares_problem(w, 4), "slsqp")
    np.testing.assert_allclose(res.capacity, C, atol=1e-6)


def test_scipy_separable_slack_budget():
    # a loss minimised inside (0, 1): l = (C - a)^2, budget larger than needed
    a = np.array([0.2, 0.5, 0.7])
    p = SeparableProblem(lambda C: (C - a) ** 2, lambda C: -2 * (C - a), n=3, d=3)
    res = sm.solve_scipy(p)
    np.testing.assert_allclose(res.capacity, a, atol=1e-15)
    assert res.threshold == 0.0


def test_scipy_separable_linear_ties():
    w = np.array([3.0, 2.0, 2.0, 1.0])
    p = SeparableProblem(lambda C: w * (1 - C), lambda C: w + 0 * C, n=4, d=2, curvature="linear")
    res = sm.solve_scipy(p)
    np.testing.assert_allclose(res.capacity, [1, 0.5, 0.5, 0], atol=1e-15)


def test_scipy_separable_concave():
    w = np.array([1.0, 3.0, 2.0, 0.5])
    p = SeparableProblem(
        lambda C: w * (1 - C**2), lambda C: 2 * w * C, n=4, d=2, curvature="concave"
    )
    np.testing.assert_array_equal(sm.solve_scipy(p).capacity, [0, 1, 1, 0])


def mixed_problem(w, concave, d):
    """Convex w (1 - C)^2 and concave w (1 - C^2) features."""
    return SeparableProblem(
        lambda C: np.where(concave, w * (1 - C * C), w * (1 - C) ** 2),
        lambda C: np.where(concave, 2 * w * C, 2 * w * (1 - C)),
        n=w.size,
        d=d,
        curvature=np.where(concave, "concave", "convex"),
    )


@pytest.mark.parametrize("seed", range(4))
def test_scipy_mixed_separable_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 3 + seed % 2
    w = rng.uniform(0.3, 2.0, n)
    concave = np.arange(n) % 2 == 0
    d = 1 + seed % 2
    p = mixed_problem(w, concave, d)
    res = sm.solve_scipy(p)
    best, _ = brute_force(p.loss, n, d, 200 if n == 3 else 40)
    assert res.loss <= best + 1e-12  # never worse than any grid point
    assert res.loss >= best - 0.02 * np.sum(w)  # and within the grid error of the best
    assert res.kkt_residual < 1e-9


@pytest.mark.parametrize("seed", range(4))
def test_scipy_mixed_quadratic_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    v = rng.uniform(0.5, 2.0, 3)
    K = np.array([rng.uniform(1.5, 2.99), rng.uniform(3.5, 30), rng.uniform(1.5, 40)])
    p = QuadraticProblem(v, d=1, kurtosis=K)
    res = sm.solve_scipy(p)
    best, _ = brute_force(p.loss, 3, 1, 400)
    assert res.loss <= best + 1e-12
    assert res.loss >= best - 1e-3 * np.sum(v * v)


def test_scipy_mixed_fractional_concave_feature():
    # an optimum where the concave feature (K < 3) is polysemantic
    v, K = np.array([1.11, 0.57, 0.57]), np.array([2.99, 20.79, 10.91])
    p = QuadraticProblem(v, d=1, kurtosis=K)
    res = sm.solve_scipy(p)
    assert 0.1 < res.capacity[0] < 0.2
    best, _ = brute_force(p.loss, 3, 1, 400)
    assert res.loss <= best
    assert res.kkt_residual < 1e-12
    slsqp = sm.solve_slsqp(p, starts=16)
    assert res.loss <= slsqp.loss + 1e-12
    np.testing.assert_allclose(res.capacity, slsqp.capacity, atol=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_scipy_mixed_quadratic_matches_waterfill(seed):
    rng = np.random.default_rng(200 + seed)
    n = int(rng.integers(2, 30))
    v, K = rng.uniform(0.1, 2.0, n), rng.choice([1.5, 2.5, 2.9, 3.0, 4.0, 5.0, 20.0], n)
    p = QuadraticProblem(v, d=int(rng.integers(1, n)), kurtosis=K)
    try:
        ref = solve(p, "waterfill")
    except NotImplementedError:
        pytest.skip("waterfill has no mixed-curvature solver yet")
    res = sm.solve_scipy(p)
    np.testing.assert_allclose(res.loss, ref.loss, rtol=1e-12)
    np.testing.assert_allclose(res.capacity, ref.capacity, atol=1e-9)


def test_scipy_mixed_zero_importance_features():
    v = np.array([1.0, 0.0, 0.6, 0.3, 0.0, 0.8])
    K = np.array([2.0, 5.0, 5.0, 2.5, 2.0, 9.0])
    res = sm.solve_scipy(QuadraticProblem(v, d=2, kurtosis=K))
    keep = v > 0
    sub = sm.solve_scipy(QuadraticProblem(v[keep], d=2, kurtosis=K[keep]))
    np.testing.assert_array_equal(res.capacity[~keep], 0.0)
    np.testing.assert_allclose(res.capacity[keep], sub.capacity, atol=1e-12)


def test_scipy_mixed_quadratic_against_slsqp():
    rng = np.random.default_rng(21)
    v = rng.uniform(0.2, 2.0, 12)
    K = rng.choice([1.5, 2.5, 2.9, 5.0, 20.0], 12)
    p = QuadraticProblem(v, d=4, kurtosis=K)
    res, ref = sm.solve_scipy(p), sm.solve_slsqp(p, starts=16)
    assert res.loss <= ref.loss + 1e-12
    assert res.kkt_residual < 1e-12


@pytest.mark.slow
def test_scipy_mixed_separable_largest():
    rng = np.random.default_rng(9)
    n = sm.MAX_MIXED_N
    w = rng.uniform(0.5, 2.0, n)
    p = mixed_problem(w, rng.random(n) < 0.5, n // 2)
    res, ref = sm.solve_scipy(p), sm.solve_slsqp(p, starts=4)
    assert res.loss <= ref.loss + 1e-9
    assert res.kkt_residual < 1e-9


def test_from_sympy():
    theory = pytest.importorskip("capalloc.theory")
    if not hasattr(theory, "compile_separable"):
        pytest.skip("capalloc.theory has no compile_separable yet")
    import sympy as sp

    C, w, a = sp.symbols("C w a")
    rng = np.random.default_rng(12)
    ws = rng.uniform(0.2, 2.0, 6)
    p = SeparableProblem.from_sympy(w * (1 - C) ** 2, C, {w: ws}, d=2)
    assert set(p.curvature.tolist()) == {"convex"}
    np.testing.assert_allclose(sm.solve_scipy(p).capacity, hand_squares(ws, 2)[0], atol=1e-9)
    # mixed: a = 1 convex (1 - C)^2, a = 0 concave (1 - C^2)
    expr = w * (a * (1 - C) ** 2 + (1 - a) * (1 - C**2))
    flags = np.array([1.0, 0.0, 1.0, 0.0])
    q = SeparableProblem.from_sympy(expr, C, {w: ws[:4], a: flags}, d=2)
    assert q.curvature.tolist() == ["convex", "concave", "convex", "concave"]
    res = sm.solve_scipy(q)
    np.testing.assert_allclose(
        res.loss, sm.solve_scipy(mixed_problem(ws[:4], flags == 0, 2)).loss, rtol=1e-12
    )


# ---------------------------------------------------------------------------
# Errors and non-convergence
# ---------------------------------------------------------------------------


def test_wrong_problem_types():
    from capalloc.allocation.methods.cvxpy_method import solve_cvxpy

    sep = squares_problem(np.ones(3), 1)
    with pytest.raises(ValueError, match="cvxpy"):
        capalloc.solve(sep, method="cvxpy")
    with pytest.raises(TypeError, match="QuadraticProblem"):
        solve_cvxpy(sep)
    with pytest.raises(TypeError, match="problem must be"):
        sm.solve_scipy(np.ones(3))
    with pytest.raises(TypeError, match="problem must be"):
        sm.solve_slsqp([1.0, 2.0])


def test_slsqp_rejects_large_n():
    p = QuadraticProblem(np.ones(sm.MAX_SLSQP_N + 1), d=3, kurtosis=5.0)
    with pytest.raises(ValueError, match=f"n={sm.MAX_SLSQP_N + 1}"):
        capalloc.solve(p, method="slsqp")


def test_cvxpy_rejects_mixed():
    p = QuadraticProblem([1.0, 2.0, 3.0], d=1, kurtosis=[2.0, 5.0, 5.0])
    with pytest.raises(ValueError, match="waterfill.*scipy"):
        capalloc.solve(p, method="cvxpy")


def test_scipy_mixed_size_cap():
    n = sm.MAX_MIXED_N + 1
    p = QuadraticProblem(np.ones(n), d=3, kurtosis=np.where(np.arange(n) % 2, 2.0, 5.0))
    with pytest.raises(ValueError, match="slsqp"):
        sm.solve_scipy(p)


def test_scipy_rejects_mixed_curvature_feature():
    p = SeparableProblem(
        lambda C: np.sin(5 * C), lambda C: -5 * np.cos(5 * C), n=2, d=1, curvature="mixed"
    )
    with pytest.raises(ValueError, match="slsqp"):
        sm.solve_scipy(p)


@pytest.mark.parametrize("bad", [{"maxiter": 0}, {"xtol": 0.0}, {"maxiter": 2.5}])
def test_scipy_bad_options(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        sm.solve_scipy(QuadraticProblem([1.0, 2.0], d=1, kurtosis=5.0), **bad)


@pytest.mark.parametrize(
    "problem",
    [
        QuadraticProblem(np.linspace(0.1, 1.0, 20), d=5, kurtosis=6.0),
        squares_problem(np.linspace(0.1, 1.0, 20), 5),
    ],
    ids=["quadratic", "separable"],
)
def test_scipy_non_convergence_warns(problem):
    with pytest.warns(AllocationWarning, match="brentq did not converge"):
        res = capalloc.solve(problem, method="scipy", maxiter=1)
    assert res.status == 1 and not res.success
    assert res.capacity.shape == (20,)


def test_scipy_batched_non_convergence_names_rows():
    p = QuadraticProblem(np.linspace(0.1, 1.0, 20).reshape(2, 10), d=3, kurtosis=6.0)
    with pytest.warns(AllocationWarning, match="rows"):
        res = capalloc.solve(p, method="scipy", maxiter=1)
    assert res.status == 1


def test_slsqp_non_convergence_warns():
    p = QuadraticProblem(np.linspace(0.1, 1.0, 20), d=5, kurtosis=6.0)
    with pytest.warns(AllocationWarning, match="SLSQP"):
        res = capalloc.solve(p, method="slsqp", starts=2, maxiter=1)
    assert res.status == 1


def test_cvxpy_non_convergence_warns():
    p = QuadraticProblem(np.linspace(0.1, 1.0, 20), d=5, kurtosis=6.0)
    with pytest.warns(AllocationWarning, match="cvxpy"):
        res = capalloc.solve(p, method="cvxpy", max_iter=1)
    assert res.status == 1


def test_cvxpy_wrong_solver_is_a_status():
    p = QuadraticProblem([1.0, 2.0, 3.0], d=1, kurtosis=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AllocationWarning)
        res = capalloc.solve(p, method="cvxpy", solver="CLARABEL")
    assert res.status == 1 and "CLARABEL" in res.message


def test_brute_force_helper_sanity():
    # the grid helper finds the known optimum of a tiny convex case
    w = np.array([1.0, 1.0])
    best, C = brute_force(lambda c: w * (1 - c) ** 2, 2, 1, 100)
    assert best == pytest.approx(0.5) and np.allclose(C, [0.5, 0.5])
    assert list(itertools.islice(itertools.count(), 2)) == [0, 1]


# ---------------------------------------------------------------------------
# scipy over the whole float range and next to K = 3 (regressions)
# ---------------------------------------------------------------------------


def assert_exact(problem, result, reference):
    """Status 0, feasible, and within 1e-9 (relative) of the reference loss."""
    from capalloc.testing import relative_excess_loss

    assert result.status == 0, result.message
    C = result.capacity
    assert np.all((C >= 0) & (C <= 1))
    assert np.all(np.sum(C, axis=-1) <= problem.d + 1e-9 * max(problem.d, 1))
    assert np.max(relative_excess_loss(problem, C, reference)) <= 1e-9


@pytest.mark.parametrize("seed", range(6))
def test_scipy_concave_over_the_float_range(seed):
    # (K - 1) v^2 overflows above ~1e154 and underflows below ~1e-162: the vertex order
    # must not see it (before: ties of inf and of 0 put the wrong features at 1)
    from capalloc.testing import bisection_reference

    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    v = 10.0 ** rng.uniform(-300, 300, (3, n) if seed % 2 else n)
    K = 1 + 2 * rng.random(v.shape) if seed % 3 else 2.2
    p = QuadraticProblem(v, int(rng.integers(1, n)), K)
    assert_exact(p, sm.solve_scipy(p), bisection_reference(p))


def test_scipy_concave_tiny_and_huge_importances():
    v = np.array([1e300, 1e-300, 3e-300, 2e-300, 1.7e308, 0.0])
    p = QuadraticProblem(v, 3, kurtosis=[2.0, 2.0, 2.0, 2.9, 2.5, 2.0])
    res = sm.solve_scipy(p)
    assert res.status == 0
    np.testing.assert_array_equal(res.capacity, [1, 0, 1, 0, 1, 0])


@pytest.mark.parametrize("profile", ["loguniform", "geometric", "powerlaw", "decades", "batched"])
@pytest.mark.parametrize("seed", range(3))
def test_scipy_hard_profiles(profile, seed):
    from capalloc.testing import bisection_reference, random_hard_problem

    rng = np.random.default_rng(100 + seed)
    p = random_hard_problem(rng, profile, max_n=3000)
    assert_exact(p, sm.solve_scipy(p), bisection_reference(p))


@pytest.mark.parametrize("scale", [1e300, 1e-300, 2.0**1000, 2.0**-1060])
@pytest.mark.parametrize("seed", range(3))
def test_scipy_mixed_extreme_scale(scale, seed):
    # mixed rows are rescaled by a power of two before squares are taken
    # (before: inf/NaN losses at 1e300, every loss 0 at 1e-300, both status 1)
    from capalloc.testing import brute_force

    rng = np.random.default_rng(seed)
    p = capalloc.testing.random_quadratic_problem(rng, n=5, d=2, kurtosis="mixed")
    ref = brute_force(p).capacity
    big = QuadraticProblem(p.importance * scale, p.d, p.kurtosis)
    assert_exact(big, sm.solve_scipy(big), ref)


@pytest.mark.parametrize(
    "v, K, d",
    [
        ([0.69, 6.71, 0.69], [3.0000000002934, 1.89, 3.0000000000386], 2),
        ([0.78, 0.2, 0.78, 0.32], [3.0000000000427, 2.47, 3.0000000001547, 3.0000000000725], 1),
        ([0.11, 4.7, 2.23, 0.11], [3.000000000707, 1.85, 2.19, 3.0000000009433], 3),
        (
            [0.22, 0.21, 0.3, 1.68, 0.22],
            [3.0000000000216, 1.62, 3.0000000003548, 3.0000000001771, 3.0000000002463],
            3,
        ),
        (
            [0.13, 8.43, 0.13, 2.83, 0.67],
            [3.0000000000946, 2.6, 3.0000000005067, 2.41, 3.0000000002014],
            4,
        ),
    ],
)
def test_scipy_mixed_kurtosis_near_three(v, K, d):
    # convex features with K - 3 ~ 1e-10: S_X(mu) jumps by ~1e-6 between neighbouring
    # doubles mu, so the budget needs the segment-exact root plus a step in 1/mu
    # (before: KKT residual 5e-8 .. 3e-6, status 1)
    from capalloc.testing import brute_force

    p = QuadraticProblem(v, d, K)
    ref = brute_force(p).capacity
    assert ref.sum() <= d + 1e-12  # the grid reference itself is feasible here
    assert_exact(p, sm.solve_scipy(p), ref)


def test_scipy_mixed_fractional_concave_next_to_near_three():
    # the concave feature is fractional at a root between steep convex features
    rng = np.random.default_rng(4)
    for _ in range(20):
        n = int(rng.integers(3, 6))
        K = np.where(
            np.arange(n) % 2 == 0,
            3 + 10 ** rng.uniform(-11, -9, n),
            3 - 10 ** rng.uniform(-11, -9, n),
        )
        p = QuadraticProblem(10 ** rng.uniform(-1, 1, n), int(rng.integers(1, n)), K)
        res = sm.solve_scipy(p)
        assert res.status == 0 and res.kkt_residual <= 1e-9
        assert res.capacity.sum() <= p.d + 1e-9


def test_scipy_restore_budget_moves_along_one_level():
    # a step in 1/mu: every fractional level moves by the same relative amount
    v = np.array([1.0, 0.9, 0.5, 0.3])
    K = np.array([3 + 1e-12, 10.0, 10.0, 5.0])
    mu = 0.6
    C = closed_form.capacity_at(mu, v, K)
    target = C.sum() + 1e-6
    D = sm._restore_budget(C.copy(), K, target)
    assert math.fsum(D) == pytest.approx(target, abs=1e-15)
    live = (C > 0) & (C < 1)
    h = lambda c: (K - 1) * v / (2 + (K - 3) * c)  # noqa: E731
    rel = h(D)[live] / h(C)[live]
    np.testing.assert_allclose(rel, rel[0], rtol=1e-15)
