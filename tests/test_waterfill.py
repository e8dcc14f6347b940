"""The water-filling method's two engines: numpy (small problems, no JIT) and the compiled
kernels, each against references that share no code with them (the bisection oracle,
brute force, the reference problems' known optima), and the lazy-import contract.

Theory: docs/theory.md (water-filling, certified answers).
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from capalloc import AllocationWarning, QuadraticProblem, waterfill
from capalloc.testing import (
    HARD_PROFILES,
    REFERENCE_PROBLEMS,
    bisection_reference,
    brute_force,
    random_hard_problem,
    relative_excess_loss,
)

UNBATCHED = [p for p in HARD_PROFILES if p != "batched"]


def assert_optimal(problem, result, reference):
    assert result.status == 0, result.message
    assert result.kkt_residual <= 1e-9
    C = result.capacity
    assert C.min(initial=0) >= 0 and C.max(initial=0) <= 1
    assert C.sum() <= problem.d * (1 + 1e-12) + 1e-12
    assert relative_excess_loss(problem, C, reference) <= 1e-9


@pytest.mark.parametrize("engine", ["numpy", "compiled"])
@pytest.mark.parametrize("profile", UNBATCHED)
def test_hard_profiles_against_bisection(engine, profile):
    rng = np.random.default_rng(abs(hash((engine, profile))) % 2**32)
    for _ in range(6):
        problem = random_hard_problem(rng, profile, max_n=3000)
        assert_optimal(problem, waterfill(problem, engine=engine), bisection_reference(problem))


@pytest.mark.parametrize("name", sorted(REFERENCE_PROBLEMS))
def test_numpy_engine_on_reference_problems(name):
    ref = REFERENCE_PROBLEMS[name]
    res = waterfill(ref.problem, engine="numpy")
    assert res.status == 0
    np.testing.assert_allclose(res.loss, ref.loss, rtol=1e-12, atol=1e-300)


def test_numpy_engine_matches_brute_force_with_mixed_curvature():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(2, 5))
        p = QuadraticProblem(
            rng.uniform(0.1, 2, n), int(rng.integers(1, n)), rng.uniform(1.5, 8, n)
        )
        res = waterfill(p, engine="numpy")
        assert res.status == 0
        assert res.loss <= brute_force(p).loss * (1 + 1e-9) + 1e-12


@pytest.mark.parametrize("scale", [1e-300, 1e-200, 1.0, 1e200, 1e300])
def test_numpy_engine_over_the_float_range(scale):
    v = scale * np.geomspace(1.0, 1e-6, 200)
    for K in (2.0, 7.0, np.linspace(3.0, 30.0, 200)):
        p = QuadraticProblem(v, 40, K)
        assert_optimal(p, waterfill(p, engine="numpy"), bisection_reference(p))


def test_engines_share_kurtosis_three_ties_alike():
    # K = 3 everywhere is linear: the tie at the threshold is shared, by both engines
    p = QuadraticProblem([1.0, 1.0, 1.0, 0.5], 2, 3.0)
    for engine in ("numpy", "compiled"):
        C = waterfill(p, engine=engine).capacity
        np.testing.assert_allclose(C, [2 / 3, 2 / 3, 2 / 3, 0.0], rtol=0, atol=1e-15)


def test_engines_agree():
    rng = np.random.default_rng(8)
    v = rng.pareto(1.1, 5000) + 1e-3
    p = QuadraticProblem(v, 300, rng.uniform(3.5, 30, 5000))
    a, b = waterfill(p, engine="numpy"), waterfill(p, engine="compiled")
    np.testing.assert_allclose(a.capacity, b.capacity, rtol=0, atol=1e-12)
    assert a.threshold == pytest.approx(b.threshold, rel=1e-12)


def test_numpy_engine_reports_what_it_cannot_certify():
    # an infinite importance: no finite allocation has a finite level certificate
    p = QuadraticProblem([np.finfo(float).max, 1.0, 0.5], 1, 5.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AllocationWarning)
        res = waterfill(p, engine="numpy")
    assert res.status in (0, 1)
    if res.status == 0:
        assert res.kkt_residual <= 1e-9


def test_engine_is_validated():
    p = QuadraticProblem([1.0, 0.5], 1, 5.0)
    with pytest.raises(
        ValueError, match=r"engine must be one of \['auto', 'numpy', 'compiled'\], got 'gpu'"
    ):
        waterfill(p, engine="gpu")
    batch = QuadraticProblem([[1.0, 0.5], [2.0, 1.0]], 1, 5.0)
    with pytest.raises(ValueError, match="engine='numpy' solves unbatched problems"):
        waterfill(batch, engine="numpy")


def test_first_small_solve_loads_neither_numba_nor_scipy():
    code = (
        "import sys, json, capalloc\n"
        "before = sorted(m for m in ('numba', 'scipy', 'sympy', 'cvxpy') if m in sys.modules)\n"
        "p = capalloc.QuadraticProblem([3.0, 2.0, 1.0, 0.5] * 2500, d=900, kurtosis=[2.0, 9.0] * 5000)\n"
        "r = capalloc.solve(p)\n"
        "after = sorted(m for m in ('numba', 'scipy', 'sympy', 'cvxpy') if m in sys.modules)\n"
        "print(json.dumps([before, after, r.status]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [[], [], 0]
    assert out.stderr == ""


def test_threads_option_leaves_the_answer_alone():
    # 2**18 features: the parallel passes; one thread and the default give one answer
    rng = np.random.default_rng(4)
    p = QuadraticProblem(rng.pareto(1.2, 1 << 18) + 1e-3, 5000, 12.0)
    one, default = waterfill(p, threads=1), waterfill(p)
    assert one.status == default.status == 0
    np.testing.assert_array_equal(one.capacity, default.capacity)
    batch = QuadraticProblem(rng.uniform(0, 1, (300, 20)), 4, 7.0)
    np.testing.assert_array_equal(waterfill(batch, threads=1).capacity, waterfill(batch).capacity)
    with pytest.raises(ValueError, match="threads must be a finite positive integer, got 1.5"):
        waterfill(p, threads=1.5)
