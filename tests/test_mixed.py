"""Exact mixed-curvature search (:mod:`capalloc.allocation.methods.mixed`).

References: the brute force of :mod:`capalloc.testing` (n <= 7), hand-derived
problems, a multistart SLSQP written here for larger problems, and the pure
convex / concave rules of ``"waterfill"`` (the search is exact for any curvature).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import optimize

from capalloc import QuadraticProblem, waterfill
from capalloc.allocation.methods import mixed as _mixed
from capalloc.allocation.methods.mixed import mixed_capacities
from capalloc.testing import REFERENCE_PROBLEMS, brute_force, check_kkt, random_quadratic_problem


def total_loss(problem: QuadraticProblem, C: np.ndarray) -> float:
    return float(np.sum(problem.loss(C)))


def scale(problem: QuadraticProblem) -> float:
    """Loss at zero capacity: the natural unit of a loss gap."""
    return max(total_loss(problem, np.zeros(problem.n)), 1e-300)


def fractional_prone(rng: np.random.Generator, n: int) -> QuadraticProblem:
    """Concave features near K = 3 next to convex ones of large K: a concave feature is
    often polysemantic at the optimum (second-order condition A < a_j easy to meet)."""
    v = 10 ** rng.uniform(-1, 1, n)
    concave = rng.random(n) < 0.5
    concave[0], concave[1] = True, False
    K = np.where(concave, rng.uniform(2.2, 3.0, n), 3 + 10 ** rng.uniform(0, 2, n))
    if rng.random() < 0.2:
        K[rng.integers(n)] = 3.0
    return QuadraticProblem(v, int(rng.integers(1, n)), K)


def assert_optimal_against(problem, C, ref_loss, tol=1e-10):
    C = np.asarray(C)
    assert np.all((C >= 0) & (C <= 1))
    assert C.sum() <= problem.d + 1e-12
    gap = (total_loss(problem, C) - ref_loss) / scale(problem)
    assert gap <= tol, f"loss above the reference by {gap:.3g} (relative) for {problem!r}"


# ---------------------------------------------------------------------------
# Reference problems: the search is exact for every curvature
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REFERENCE_PROBLEMS))
def test_reference_problems(name):
    problem, C_ref, loss_ref, unique = REFERENCE_PROBLEMS[name]
    C, _ = mixed_capacities(problem.importance, problem.kurtosis, problem.d)
    assert total_loss(problem, C) == pytest.approx(loss_ref, rel=1e-12, abs=1e-12)
    if unique:
        np.testing.assert_allclose(C, C_ref, atol=1e-12)


def test_docstring_case_is_polysemantic_concave():
    C, nit = mixed_capacities([1.0, 0.6], [2.5, 5.0], 1)
    np.testing.assert_allclose(C, [2 / 3, 1 / 3], rtol=1e-14)
    assert nit >= 1


# ---------------------------------------------------------------------------
# Against brute force
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_random(seed):
    rng = np.random.default_rng(seed)
    for it in range(12):
        problem = random_quadratic_problem(
            rng,
            n=int(rng.integers(2, 8)),
            kurtosis="mixed",
            ties=0.3 if it % 3 == 0 else 0.0,
            zeros=0.15 if it % 4 == 0 else 0.0,
            linear=0.25 if it % 5 == 0 else 0.0,
        )
        C, _ = mixed_capacities(problem.importance, problem.kurtosis, problem.d)
        assert_optimal_against(problem, C, brute_force(problem).loss)


@pytest.mark.parametrize("seed", [100, 102, 103, 104])  # 101 happens to draw no fraction
def test_matches_brute_force_fractional_concave(seed):
    rng = np.random.default_rng(seed)
    n_frac = 0
    for _ in range(25):
        problem = fractional_prone(rng, int(rng.integers(2, 8)))
        C, _ = mixed_capacities(problem.importance, problem.kurtosis, problem.d)
        bf = brute_force(problem)
        assert_optimal_against(problem, C, bf.loss)
        concave = problem.kurtosis < 3
        inner = (C > 1e-9) & (C < 1 - 1e-9)
        assert np.count_nonzero(inner & concave) <= 1
        n_frac += int(np.any(inner & concave))
    assert n_frac >= 1  # the generator does reach the interesting case


@pytest.mark.parametrize("kurtosis", ["convex", "concave"])
def test_pure_curvature_matches_waterfill(kurtosis):
    rng = np.random.default_rng(7)
    for _ in range(20):
        problem = random_quadratic_problem(rng, n=int(rng.integers(1, 12)), kurtosis=kurtosis)
        C, _ = mixed_capacities(problem.importance, problem.kurtosis, problem.d)
        ref = waterfill(problem)
        assert total_loss(problem, C) == pytest.approx(float(ref.loss), rel=1e-12, abs=1e-300)
        if kurtosis == "convex":
            np.testing.assert_allclose(C, ref.capacity, atol=1e-9)


# ---------------------------------------------------------------------------
# Degenerate inputs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("v", "K", "d"),
    [
        ([0.0, 1.0, 2.0, 0.0], [2.0, 5.0, 2.5, 9.0], 1),  # zero importances on both sides
        ([1.0, 2.0, 0.5, 1.5], [3.0, 2.0, 3.0, 7.0], 2),  # K = 3 exactly next to both sides
        ([1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 6.0, 6.0], 1),  # equal importances
        ([1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 6.0, 6.0], 3),
        ([1.0, 3.0, 2.0], [1.0, 1.0, 5.0], 2),  # K = 1: zero loss whatever the capacity
        ([1.0, 2.0, 3.0], [2.0, 9.0, 1.5], 3),  # d >= n
        ([1.0, 2.0, 3.0], [2.0, 9.0, 1.5], 5),
        ([1.0, 2.0, 3.0], [2.0, 9.0, 1.5], 0),  # d = 0
        ([1.0, 2.0, 3.0, 0.5], [2.0, 2.5, 1.5, 3.5], 2),  # one convex feature
        ([1.0, 2.0, 3.0, 0.5], [2.0, 4.5, 5.5, 3.5], 2),  # one concave feature
        ([0.0, 1.0, 2.0], [9.0, 2.0, 1.5], 1),  # no convex feature of positive importance
    ],
)
def test_degenerate_cases(v, K, d):
    problem = QuadraticProblem(v, d, K)
    C, _ = mixed_capacities(problem.importance, problem.kurtosis, d)
    assert np.all(np.isfinite(C))
    assert np.all(C[problem.importance == 0] == 0)
    assert_optimal_against(problem, C, brute_force(problem).loss, tol=1e-12)
    if d >= np.count_nonzero(problem.importance):
        np.testing.assert_array_equal(C, (problem.importance > 0).astype(float))
    res = waterfill(problem)
    check_kkt(problem, res)


def test_chunked_enumeration_gives_the_same_answer(monkeypatch):
    rng = np.random.default_rng(3)
    problems = [fractional_prone(rng, 40) for _ in range(5)]
    full = [mixed_capacities(p.importance, p.kurtosis, p.d) for p in problems]
    monkeypatch.setattr(_mixed, "_CHUNK", 7)
    for p, (C, nit) in zip(problems, full, strict=True):
        C2, nit2 = mixed_capacities(p.importance, p.kurtosis, p.d)
        np.testing.assert_array_equal(C, C2)
        assert nit == nit2


# ---------------------------------------------------------------------------
# Numerics
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_kkt_with_extreme_magnitudes_and_kurtosis_near_3(seed):
    rng = np.random.default_rng(seed)
    for it in range(15):
        n = int(rng.integers(2, 40))
        v = 10 ** rng.uniform(-150, 150, n) if it % 2 else 10 ** rng.uniform(-2, 2, n)
        concave = rng.random(n) < 0.5
        concave[:2] = [True, False]
        K = np.where(concave, rng.uniform(1.05, 3.0, n), 3 + 10 ** rng.uniform(-1, 2, n))
        if it % 3 == 0:
            near = rng.random(n) < 0.3
            K = np.where(near, 3 + np.sign(K - 3) * 10 ** rng.uniform(-13, -6, n), K)
        problem = QuadraticProblem(v, int(rng.integers(1, n)), K)
        res = waterfill(problem)
        check_kkt(problem, res)
        assert abs(res.capacity.sum() - problem.d) <= 1e-9 * problem.d


def test_scale_invariance():
    rng = np.random.default_rng(5)
    for _ in range(10):
        p = fractional_prone(rng, 8)
        C, _ = mixed_capacities(p.importance, p.kurtosis, p.d)
        for s in (1e-100, 3.0, 1e100):
            Cs, _ = mixed_capacities(s * p.importance, p.kurtosis, p.d)
            np.testing.assert_allclose(Cs, C, atol=1e-12)


# ---------------------------------------------------------------------------
# Larger problems: multistart SLSQP never beats the search
# ---------------------------------------------------------------------------


def slsqp_multistart(problem: QuadraticProblem, rng: np.random.Generator, starts: int = 8):
    """Best local optimum of SLSQP from random and vertex starts."""
    v, K, d, n = problem.importance, problem.kurtosis, problem.d, problem.n

    def f(C):
        return total_loss(problem, C)

    def grad(C):
        return -problem.marginal_benefit(C)

    cons = [{"type": "ineq", "fun": lambda C: d - C.sum(), "jac": lambda C: -np.ones(n)}]
    inits = [rng.dirichlet(np.ones(n)) * min(d, n) for _ in range(starts)]
    top = np.zeros(n)
    top[np.argsort(-(K - 1) * v * v)[:d]] = 1.0
    inits += [np.full(n, d / n), top, np.clip(top * 0.9 + 0.05, 0, 1)]
    best = np.inf
    for x0 in inits:
        out = optimize.minimize(
            f,
            np.clip(x0, 0, 1),
            jac=grad,
            bounds=[(0, 1)] * n,
            constraints=cons,
            method="SLSQP",
            options={"maxiter": 300, "ftol": 1e-14},
        )
        C = np.clip(out.x, 0, 1)
        if C.sum() <= d + 1e-9:
            best = min(best, f(C))
    return best


@pytest.mark.parametrize("seed", range(3))
def test_never_worse_than_multistart_slsqp(seed):
    rng = np.random.default_rng(200 + seed)
    for it in range(3):
        n = int(rng.integers(10, 18))
        problem = (
            fractional_prone(rng, n)
            if it % 2
            else random_quadratic_problem(rng, n=n, kurtosis="mixed")
        )
        C, _ = mixed_capacities(problem.importance, problem.kurtosis, problem.d)
        best = slsqp_multistart(problem, rng)
        assert_optimal_against(problem, C, best, tol=1e-9)
        check_kkt(problem, waterfill(problem))


def test_large_mixed_problem_is_fast():
    """n = 2000 mixed: not pathological (time printed, no assertion on it)."""
    rng = np.random.default_rng(9)
    n = 2000
    v = 10 ** rng.uniform(-1, 1, n)
    K = np.where(rng.random(n) < 0.5, rng.uniform(1.05, 3.0, n), 3 + 10 ** rng.uniform(-1, 2, n))
    for d in (1, n // 10, n // 2, n - 1):
        problem = QuadraticProblem(v, d, K)
        t0 = time.perf_counter()
        res = waterfill(problem)
        elapsed = time.perf_counter() - t0
        print(f"mixed n={n} d={d}: {1e3 * elapsed:.1f} ms, {res.nit} candidates")
        check_kkt(problem, res)


@pytest.mark.slow
def test_large_mixed_problem_20000():
    rng = np.random.default_rng(10)
    n = 20_000
    v = 10 ** rng.uniform(-1, 1, n)
    K = np.where(rng.random(n) < 0.5, rng.uniform(1.05, 3.0, n), 3 + 10 ** rng.uniform(-1, 2, n))
    for d in (n // 10, n // 2):
        problem = QuadraticProblem(v, d, K)
        check_kkt(problem, waterfill(problem))
