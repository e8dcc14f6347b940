"""One shared suite for every registered solver method (spec section 5, checkable fact 7).

Every test is parametrised over :func:`capalloc.methods`, so a method is tested
the moment it registers. A method that does not accept a kind of problem (its
``MethodInfo.problems``, or a ``ValueError`` for a curvature, a batch or a size it
does not handle) is skipped for that kind, found by a probe on a tiny problem.
Tolerances: ``1e-9`` for methods registered ``exact=True``, ``1e-4`` otherwise
(the certification tolerance of the approximate methods).
Problems with known optima, the KKT checker and the brute force come from
:mod:`capalloc.testing`.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import capalloc
from capalloc import AllocationWarning, QuadraticProblem, get_method, solve, waterfill
from capalloc.testing import REFERENCE_PROBLEMS, brute_force, check_kkt

METHODS = capalloc.methods()
KINDS = ("convex", "concave", "mixed")


# ---------------------------------------------------------------------------
# Method support and tolerances
# ---------------------------------------------------------------------------

_PROBES = {
    "convex": QuadraticProblem([2.0, 1.0, 0.5], 1, 5.0),
    "concave": QuadraticProblem([2.0, 1.0, 0.5], 1, 2.0),
    "mixed": QuadraticProblem([2.0, 1.0, 0.5], 1, [2.0, 5.0, 2.5]),
}


@functools.cache
def supports(method: str, kind: str, batched: bool = False) -> bool:
    """Whether ``method`` solves problems of this curvature (and batching)."""
    info = get_method(method)
    if QuadraticProblem not in info.problems:
        return False
    probe = _PROBES[kind]
    if batched:
        probe = QuadraticProblem(
            np.stack([probe.importance] * 2), probe.d, np.stack([probe.kurtosis] * 2)
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AllocationWarning)
            solve(probe, method=method)
    except ValueError:
        return False
    return True


def require(method: str, kind: str, batched: bool = False) -> None:
    if not supports(method, kind, batched):
        pytest.skip(f"{method!r} does not solve {kind}{' batched' if batched else ''} problems")


def tol(method: str) -> float:
    return 1e-9 if get_method(method).exact else 1e-4


def cap_tol(method: str) -> float:
    """Tolerance on capacities: looser than on the residual where the method is inexact
    (capacities move like the square root of a loss error near a flat optimum)."""
    return 1e-7 if get_method(method).exact else 3e-3


def examples(method: str) -> int:
    return 30 if get_method(method).exact else 8


def run(problem: QuadraticProblem, method: str, allow_failure: bool = False):
    """Solve, failing on a non-optimal status (which also warns).

    ``allow_failure``: on numerically hard problems an inexact method may instead
    report non-convergence honestly (status != 0 with an AllocationWarning); the
    result is then returned for the caller to skip its optimality checks. Exact
    methods must always succeed.
    """
    with warnings.catch_warnings():
        if allow_failure and not get_method(method).exact:
            warnings.simplefilter("ignore", AllocationWarning)
            return solve(problem, method=method)
        warnings.simplefilter("error", AllocationWarning)
        return solve(problem, method=method)


def scale(problem: QuadraticProblem) -> np.ndarray:
    """Loss at zero capacity, the unit of a loss error."""
    return np.maximum(np.sum(problem.loss(np.zeros(problem.importance.shape)), axis=-1), 1e-300)


def assert_loss_close(problem, got, expected, rtol) -> None:
    err = np.abs(np.asarray(got) - np.asarray(expected)) / scale(problem)
    assert np.all(err <= rtol), f"relative loss error {np.max(err):.3g} > {rtol:g}"


def hypothesis_check(method: str, strategy, body, n: int | None = None) -> None:
    """Run ``body(example)`` over ``strategy`` with a per-method number of examples."""

    def inner(example):
        body(example)

    # a distinct name per test and method keeps their example databases apart
    name = f"{body.__qualname__.split('.')[0]}__{method}"
    inner.__name__ = inner.__qualname__ = "".join(c if c.isalnum() else "_" for c in name)
    test = settings(
        max_examples=n or examples(method),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )(given(strategy)(inner))
    test()


# ---------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------

_POOL = [0.5, 1.0, 2.0, 3.0]  # repeated values make ties


def kurtosis_for(kind: str, linear: bool = True):
    convex = st.floats(3.05, 40.0)
    concave = st.floats(1.05, 2.95)
    if linear:
        convex = st.one_of(convex, st.just(3.0))
        concave = st.one_of(concave, st.just(3.0))
    return {"convex": convex, "concave": concave, "mixed": st.one_of(convex, concave)}[kind]


@st.composite
def problems(
    draw,
    kinds=KINDS,
    max_n: int = 7,
    ties: bool = True,
    zeros: bool = True,
    linear: bool = True,
    d=None,
    n=None,
):
    """Small quadratic problems of the given curvature kinds (``K >= 1.05``).

    ``ties=False`` drops the pool of repeated values (equal values remain possible).
    """
    kind = draw(st.sampled_from(kinds))
    if n is None:
        n = draw(st.integers(2 if kind == "mixed" else 1, max_n))
    value = st.floats(0.05, 20.0)
    if ties:
        value = st.one_of(value, st.sampled_from(_POOL))
    if zeros:
        value = st.one_of(value, st.just(0.0))
    v = draw(st.lists(value, min_size=n, max_size=n))
    K = draw(st.lists(kurtosis_for(kind, linear), min_size=n, max_size=n))
    if kind == "mixed":  # make sure both sides are present
        i, j = draw(st.permutations(range(n)))[:2]
        K[i] = draw(st.floats(1.05, 2.95))
        K[j] = draw(st.floats(3.05, 40.0))
    budget = draw(st.integers(0, n + 1)) if d is None else d
    return QuadraticProblem(np.array(v), budget, np.array(K))


def strategy_for(method: str, **kw):
    kinds = tuple(k for k in kw.pop("kinds", KINDS) if supports(method, k))
    if not kinds:
        pytest.skip(f"{method!r} solves none of the requested kinds")
    return problems(kinds=kinds, **kw)


# ---------------------------------------------------------------------------
# Reference problems with known optima
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REFERENCE_PROBLEMS))
@pytest.mark.parametrize("method", METHODS)
def test_reference_problems(method, name):
    problem, C, loss, unique = REFERENCE_PROBLEMS[name]
    require(method, problem.curvature)
    res = run(problem, method)
    check_kkt(problem, res, rtol=tol(method))
    assert_loss_close(problem, res.loss, loss, tol(method))
    if unique or method == "waterfill":  # waterfill's tie rule is documented
        np.testing.assert_allclose(res.capacity, C, atol=cap_tol(method))


# ---------------------------------------------------------------------------
# Properties on random problems
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_feasible_and_kkt(method):
    """Feasibility, certificate and consistency (check_kkt) on random problems."""

    def body(problem):
        check_kkt(problem, run(problem, method), rtol=tol(method))

    hypothesis_check(method, strategy_for(method), body)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "waterfill"])
def test_agrees_with_waterfill(method):
    def body(problem):
        res = run(problem, method)
        ref = run(problem, "waterfill")
        assert_loss_close(problem, res.loss, ref.loss, tol(method))
        if problem.curvature == "convex" and np.all(problem.kurtosis > 3):
            np.testing.assert_allclose(res.capacity, ref.capacity, atol=cap_tol(method))

    hypothesis_check(method, strategy_for(method), body)


@pytest.mark.parametrize("method", METHODS)
def test_permutation_equivariance(method):
    def body(args):
        problem, perm = args
        perm = np.array(perm)
        permuted = QuadraticProblem(problem.importance[perm], problem.d, problem.kurtosis[perm])
        a, b = run(problem, method), run(permuted, method)
        assert_loss_close(problem, a.loss, b.loss, tol(method))
        if np.all(problem.kurtosis > 3):  # strictly convex: the optimum is unique
            np.testing.assert_allclose(b.capacity, a.capacity[perm], atol=cap_tol(method))

    strategy = strategy_for(method, ties=False).flatmap(
        lambda p: st.tuples(st.just(p), st.permutations(range(p.n)))
    )
    hypothesis_check(method, strategy, body)


@pytest.mark.parametrize("method", METHODS)
def test_monotone_in_importance(method):
    """At equal kurtosis, v_i > v_j implies C_i >= C_j (swapping would gain otherwise)."""

    def body(problem):
        res = run(problem, method)
        v, K, C = problem.importance, problem.kurtosis, res.capacity
        more = (v[:, None] > v[None, :] * (1 + 1e-6)) & (K[:, None] == K[None, :])
        bad = more & (C[:, None] < C[None, :] - cap_tol(method))
        assert not bad.any(), f"capacities {C} not monotone in importance {v}"

    def shared_kurtosis(p):
        K = np.where(np.arange(p.n) % 2 == 0, p.kurtosis[0], p.kurtosis[-1])
        return QuadraticProblem(p.importance, p.d, K)

    hypothesis_check(method, strategy_for(method).map(shared_kurtosis), body)


@pytest.mark.parametrize("method", METHODS)
def test_scaling(method):
    """v -> s v leaves C unchanged and multiplies threshold and loss by s^2."""

    def body(args):
        problem, s = args
        scaled = QuadraticProblem(s * problem.importance, problem.d, problem.kurtosis)
        a, b = run(problem, method), run(scaled, method)
        assert_loss_close(scaled, b.loss, s * s * a.loss, tol(method))
        if np.all(problem.kurtosis > 3) or get_method(method).exact:
            np.testing.assert_allclose(b.capacity, a.capacity, atol=cap_tol(method))
        if get_method(method).exact:
            np.testing.assert_allclose(b.threshold, s * s * a.threshold, rtol=1e-9)

    strategy = st.tuples(strategy_for(method, ties=False), st.sampled_from([1e-3, 0.37, 8.0, 1e3]))
    hypothesis_check(method, strategy, body)


@pytest.mark.parametrize("method", METHODS)
def test_budget_used(method):
    """With positive importances (and K > 1) the whole budget min(d, n) is used."""

    def body(problem):
        res = run(problem, method)
        target = min(problem.d, problem.n)
        assert abs(res.capacity.sum() - target) <= tol(method) * max(target, 1)

    hypothesis_check(method, strategy_for(method, zeros=False), body)


@pytest.mark.parametrize("method", METHODS)
def test_matches_brute_force(method):
    """Concave and mixed problems (n <= 7) against the exhaustive search."""

    def body(problem):
        res = run(problem, method)
        assert_loss_close(problem, res.loss, brute_force(problem).loss, tol(method))

    kinds = tuple(k for k in ("concave", "mixed") if supports(method, k))
    if not kinds:
        pytest.skip(f"{method!r} solves neither concave nor mixed problems")
    hypothesis_check(method, problems(kinds=kinds), body, n=max(examples(method) // 2, 5))


@pytest.mark.parametrize("method", METHODS)
def test_batched_equals_row_by_row(method):
    require(method, "convex", batched=True)

    def body(rows):
        v = np.stack([p.importance for p in rows])
        K = np.stack([p.kurtosis for p in rows])
        batch = QuadraticProblem(v, rows[0].d, K)
        res = run(batch, method)
        check_kkt(batch, res, rtol=tol(method))
        for r, p in enumerate(rows):
            one = run(p, method)
            assert_loss_close(p, res.loss[r], one.loss, tol(method))
            np.testing.assert_allclose(res.capacity[r], one.capacity, atol=cap_tol(method))
            if get_method(method).exact:
                np.testing.assert_allclose(res.threshold[r], one.threshold, rtol=1e-9)
                np.testing.assert_array_equal(res.labels[r], one.labels)

    kinds = tuple(k for k in KINDS if supports(method, k, batched=True))

    @st.composite
    def batches(draw):
        n = draw(st.integers(2, 6))
        d = draw(st.integers(0, n))
        m = draw(st.integers(1, 4))
        return [draw(problems(kinds=kinds, ties=False, d=d, n=n)) for _ in range(m)]

    hypothesis_check(method, batches(), body, n=max(examples(method) // 2, 4))


# ---------------------------------------------------------------------------
# Two features, one dimension (spec section 5)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [1.0, 1.5, 3.0])
@pytest.mark.parametrize("method", METHODS)
def test_two_feature_boundary(method, ratio):
    """Polysemantic iff K > 1 + 2a/b; just below the boundary b is ignored."""
    a, b = 2.0 * ratio, 2.0
    K_crit = 1 + 2 * a / b
    eps = 1e-6 if get_method(method).exact else 1e-2
    for K, poly in ((K_crit * (1 + eps), True), (K_crit * (1 - eps), False)):
        problem = QuadraticProblem([a, b], 1, K)
        if not supports(method, problem.curvature):
            continue
        res = run(problem, method)
        check_kkt(problem, res, rtol=tol(method))
        if poly:
            assert list(res.labels) == ["polysemantic", "polysemantic"], res.capacity
        else:
            np.testing.assert_allclose(res.capacity, [1.0, 0.0], atol=cap_tol(method))


@pytest.mark.parametrize("K", [3.5, 5.0, 10.0, 100.0])
@pytest.mark.parametrize("method", METHODS)
def test_two_feature_closed_form(method, K):
    """W = [c, e]: c^2 = (K-1)(aK-a-2b)/((K-3)(K+1)), e^2 likewise, C_1 = c^2/(c^2+e^2)."""
    a, b = 1.2, 1.0
    problem = QuadraticProblem([a, b], 1, K)
    require(method, "convex")
    res = run(problem, method)
    c2 = (K - 1) * (a * K - a - 2 * b) / ((K - 3) * (K + 1))
    e2 = (K - 1) * (b * K - b - 2 * a) / ((K - 3) * (K + 1))
    if e2 > 0:
        np.testing.assert_allclose(res.norms, [c2, e2], rtol=cap_tol(method))
        np.testing.assert_allclose(
            res.capacity, [c2 / (c2 + e2), e2 / (c2 + e2)], atol=cap_tol(method)
        )
    else:  # below the boundary: monosemantic a, N = a
        np.testing.assert_allclose(res.capacity, [1.0, 0.0], atol=cap_tol(method))
        np.testing.assert_allclose(res.norms, [a, 0.0], rtol=cap_tol(method), atol=1e-12)


# ---------------------------------------------------------------------------
# Kurtosis 3, ties
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("method", METHODS)
def test_continuity_across_kurtosis_3(method, d):
    v = np.array([3.0, 2.0, 1.5, 1.0, 0.4])
    results = []
    for K in (3 - 1e-12, 3.0, 3 + 1e-12):
        problem = QuadraticProblem(v, d, K)
        if not supports(method, problem.curvature):
            continue
        res = run(problem, method, allow_failure=True)
        assert np.all(np.isfinite(res.capacity)) and np.isfinite(res.loss)
        assert np.isfinite(res.threshold) and np.all(np.isfinite(res.norms))
        if res.success:
            check_kkt(problem, res, rtol=tol(method))
            results.append(res.capacity)
    top = (np.arange(v.size) < d).astype(float)
    for C in results:
        np.testing.assert_allclose(C, top, atol=cap_tol(method))


@pytest.mark.parametrize("method", METHODS)
def test_ties(method):
    ones = np.ones(4)
    cases = [
        (QuadraticProblem(ones, 2, 3.0), np.full(4, 0.5), "linear: equal split"),
        (QuadraticProblem(ones, 2, 2.0), np.array([1.0, 1, 0, 0]), "concave: lower index"),
        (QuadraticProblem(ones, 3, 7.0), np.full(4, 0.75), "convex: d/n (unique)"),
        (QuadraticProblem([1.0, 2, 1, 2], 3, 3.0), np.array([0.5, 1, 0.5, 1]), "linear tie"),
    ]
    for problem, expected, what in cases:
        if not supports(method, problem.curvature):
            continue
        res = run(problem, method)
        check_kkt(problem, res, rtol=tol(method))
        assert_loss_close(problem, res.loss, float(np.sum(problem.loss(expected))), tol(method))
        if method == "waterfill" or "unique" in what:
            np.testing.assert_allclose(res.capacity, expected, atol=cap_tol(method), err_msg=what)


# ---------------------------------------------------------------------------
# Edge cases
# ---------------------------------------------------------------------------

_EDGE = {
    "d=0": QuadraticProblem([1.0, 2.0, 0.5], 0, [5.0, 2.0, 3.0]),
    "d=n": QuadraticProblem([1.0, 2.0, 0.5], 3, [5.0, 2.0, 3.0]),
    "d>n": QuadraticProblem([1.0, 2.0, 0.5], 7, 5.0),
    "n=1": QuadraticProblem([1.5], 1, 9.0),
    "n=1,d=0": QuadraticProblem([1.5], 0, 2.0),
    "zero importance": QuadraticProblem([0.0, 1.0, 0.0, 2.0], 1, 6.0),
    "all zero": QuadraticProblem([0.0, 0.0], 1, 6.0),
    "zero importance mixed": QuadraticProblem([0.0, 1.0, 0.0, 2.0], 1, [2.0, 6.0, 9.0, 2.5]),
    # a feature with K - 3 = 1e-12 polysemantic next to ordinary ones: its capacity moves
    # by 1e12 per unit of 1/mu, so restoring the budget must not shift the others
    "kurtosis 3+1e-12 among 10": QuadraticProblem(
        [1.0, 0.9, 0.5, 0.3, 0.2], 2, [3 + 1e-12, 10, 10, 10, 10]
    ),
    "kurtosis 3-1e-12 among 10": QuadraticProblem(
        [1.0, 0.9, 0.5, 0.3, 0.2], 2, [3 - 1e-12, 10, 10, 10, 10]
    ),
}


@pytest.mark.parametrize("case", sorted(_EDGE))
@pytest.mark.parametrize("method", METHODS)
def test_edge_cases(method, case):
    problem = _EDGE[case]
    require(method, problem.curvature)
    res = run(problem, method, allow_failure="kurtosis" in case)
    if not res.success:
        return
    check_kkt(problem, res, rtol=tol(method))
    v, K = problem.importance, problem.kurtosis
    assert np.all(res.capacity[v == 0] <= cap_tol(method))
    if problem.d == 0:
        np.testing.assert_allclose(res.capacity, 0.0, atol=cap_tol(method))
        assert_loss_close(problem, res.loss, np.sum((K - 1) * v * v), tol(method))
    if problem.d >= np.count_nonzero(v):
        np.testing.assert_allclose(res.capacity, (v > 0).astype(float), atol=cap_tol(method))
        assert abs(float(res.loss)) <= tol(method) * scale(problem)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", METHODS)
def test_extreme_magnitudes(method, kind):
    """Importances from 1e-150 to 1e150 in one problem: no overflow, no NaN, KKT holds.

    (An inexact method may report non-convergence instead.) Breakpoints of
    features 1e300 apart interleave in the water-filling sweep, so running sums
    must not carry rounding residue from one scale to the next.
    """
    require(method, kind)
    rng = np.random.default_rng(42)
    n = 60
    for d in (1, 7, 18, 30, 45):
        v = 10.0 ** rng.uniform(-150, 150, n)
        v[:2] = [1e-150, 1e150]
        convex, concave = rng.uniform(3.5, 40, n), rng.uniform(1.1, 2.9, n)
        K = {
            "convex": convex,
            "concave": concave,
            "mixed": np.where(np.arange(n) % 2 == 0, concave, convex),
        }[kind]
        problem = QuadraticProblem(v, d, K)
        if method == "scipy" and kind == "mixed":
            # scipy's mixed search brackets roots on a threshold grid, which can miss
            # across 300 decades; it must then say so (status 1), never claim optimality.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", AllocationWarning)
                res = solve(problem, method=method)
        else:
            res = run(problem, method, allow_failure=True)
        assert np.all(np.isfinite(res.capacity)) and np.isfinite(res.loss)
        assert np.isfinite(res.threshold) and np.all(np.isfinite(res.norms))
        if res.success:
            check_kkt(problem, res, rtol=tol(method))
            assert abs(res.capacity.sum() - d) <= tol(method) * d


@pytest.mark.parametrize("kind", KINDS)
def test_importances_beyond_float_range_of_losses(kind):
    """Past ~1e154 the losses (K - 1) v^2 overflow: water-filling solves the problem
    rescaled by a power of two, so the capacities are those of v / max(v), and the
    threshold and loss are the rescaled ones times max(v)^2 (inf where that overflows,
    never NaN). Each row of a batch has its own scale."""
    rng = np.random.default_rng(7)
    n = 40
    convex, concave = rng.uniform(3.5, 40, n), rng.uniform(1.1, 2.9, n)
    K = {
        "convex": convex,
        "concave": concave,
        "mixed": np.where(np.arange(n) % 2 == 0, concave, convex),
    }[kind]
    base = 10.0 ** rng.uniform(-6, 0, n)
    base[0] = 1.0
    for top in (1e151, 1e200, 1e300):
        big = waterfill(QuadraticProblem(top * base, 9, K))
        ref = waterfill(QuadraticProblem(base, 9, K))
        np.testing.assert_allclose(big.capacity, ref.capacity, rtol=0, atol=1e-12)
        with np.errstate(over="ignore"):
            expected = np.array([ref.threshold, ref.loss]) * top * top
        np.testing.assert_allclose([big.threshold, big.loss], expected, rtol=1e-12)
        assert big.kkt_residual <= 1e-9
    rows = waterfill(QuadraticProblem(np.stack([1e200 * base, base]), 9, K))
    np.testing.assert_allclose(rows.capacity[1], ref.capacity, rtol=0, atol=1e-12)
    assert rows.threshold[1] == pytest.approx(ref.threshold, rel=1e-12)


# ---------------------------------------------------------------------------
# Bad input, result object
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"importance": [1.0, -0.5], "d": 1}, "importance"),
        ({"importance": [1.0, 2.0], "d": 1, "kurtosis": 0.5}, "kurtosis"),
        ({"importance": [1.0, 2.0], "d": 1.5}, "d"),
        ({"importance": [1.0, 2.0], "d": -1}, "d"),
        ({"importance": [1.0, 2.0, 3.0], "d": 1, "kurtosis": [3.0, 4.0]}, "broadcast"),
        ({"importance": [1.0, np.nan], "d": 1}, "finite"),
        ({"importance": [[[1.0]]], "d": 1}, "dimension"),
    ],
)
def test_bad_problem_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuadraticProblem(**kwargs)


def test_unknown_method_lists_valid_names():
    problem = QuadraticProblem([1.0, 2.0], 1, 5.0)
    with pytest.raises(ValueError) as info:
        solve(problem, method="no-such-method")
    for name in ["auto", *METHODS]:
        assert repr(name) in str(info.value)
    with pytest.raises(ValueError, match="waterfill"):
        get_method("no-such-method")


@pytest.mark.parametrize("method", METHODS)
def test_non_problem_is_type_error(method):
    with pytest.raises(TypeError):
        solve({"importance": [1.0], "d": 1}, method=method)
    with pytest.raises(TypeError):
        get_method(method).function([1.0, 2.0])


@pytest.mark.parametrize("method", METHODS)
def test_result_is_frozen_and_read_only(method):
    require(method, "convex")
    problem = QuadraticProblem([3.0, 2.0, 1.0], 2, 6.0)
    res = run(problem, method)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.capacity = np.zeros(3)
    for name in ("capacity", "norms", "labels"):
        arr = getattr(res, name)
        assert not arr.flags.writeable
        with pytest.raises(ValueError):
            arr[0] = arr[1]
    if supports(method, "convex", batched=True):
        batch = run(QuadraticProblem(np.ones((2, 3)), 1, 6.0), method)
        for name in ("loss", "threshold", "kkt_residual"):
            assert not np.asarray(getattr(batch, name)).flags.writeable


@pytest.mark.parametrize("method", METHODS)
def test_repr_is_short(method):
    require(method, "convex")
    res = run(QuadraticProblem(np.linspace(1, 2, 8), 3, 6.0), method)
    text = repr(res)
    assert "\n" not in text and len(text) < 250
    assert method in text


# ---------------------------------------------------------------------------
# The testing helpers themselves
# ---------------------------------------------------------------------------


def test_check_kkt_rejects_wrong_results():
    problem = QuadraticProblem([3.0, 2.0, 1.0], 2, 6.0)
    good = solve(problem)
    check_kkt(problem, good)
    C = good.capacity
    wrong = {
        "budget": np.minimum(C + 0.4, 1.0),
        "KKT": np.array([1.0, 0.5, 0.5]),
        "outside": np.array([1.2, 0.8, 0.0]),
    }
    for bad in wrong.values():
        with pytest.raises(AssertionError, match="check_kkt failed"):
            check_kkt(problem, dataclasses.replace(good, capacity=bad))
    with pytest.raises(AssertionError, match="loss"):
        check_kkt(problem, dataclasses.replace(good, loss=good.loss * 1.01))
    with pytest.raises(AssertionError, match="threshold"):
        check_kkt(problem, dataclasses.replace(good, threshold=-1.0))
    with pytest.raises(AssertionError, match="shape"):
        check_kkt(problem, dataclasses.replace(good, capacity=C[:2]))


def test_brute_force_reproduces_reference_problems():
    for name, (problem, C, loss, unique) in REFERENCE_PROBLEMS.items():
        bf = brute_force(problem)
        assert bf.loss == pytest.approx(loss, rel=1e-12, abs=1e-12), name
        if unique:
            np.testing.assert_allclose(bf.capacity, C, atol=1e-6, err_msg=name)


def test_random_generators():
    from capalloc.testing import random_kurtosis, random_quadratic_problem

    rng = np.random.default_rng(0)
    for kind in ("convex", "concave", "mixed"):
        for _ in range(20):
            p = random_quadratic_problem(rng, kurtosis=kind)
            assert p.curvature == kind
    K = random_kurtosis(rng, (6, 5), "mixed")
    assert np.all((K < 3).any(axis=1) & (K > 3).any(axis=1))
    p = random_quadratic_problem(rng, n=4, d=2, batched=3)
    assert p.importance.shape == (3, 4) and p.batched
    with pytest.raises(ValueError, match="kind"):
        random_kurtosis(rng, 3, "wobbly")


def test_auto_picks_waterfill_for_quadratic():
    res = solve(QuadraticProblem([1.0, 2.0], 1, 5.0))
    assert res.method == "waterfill"


def test_problem_copies_writeable_importances_and_shares_read_only_ones(tmp_path):
    v = np.array([3.0, 2.0, 1.0])
    copied = QuadraticProblem(v, 2, 6.0)
    v[0] = 100.0  # the caller's array changes; the problem does not
    assert copied.importance[0] == 3.0 and copied.vmax == 3.0
    np.save(tmp_path / "v.npy", np.array([3.0, 2.0, 1.0]))
    mapped = np.load(tmp_path / "v.npy", mmap_mode="r")  # read-only: used as it is
    shared = QuadraticProblem(mapped, 2, 6.0)
    assert np.shares_memory(shared.importance, mapped) and shared.vmax == 3.0
    again = QuadraticProblem(shared.importance, 1, 6.0)
    assert np.shares_memory(again.importance, mapped)
    np.testing.assert_array_equal(
        solve(shared).capacity, solve(QuadraticProblem([3.0, 2.0, 1.0], 2, 6.0)).capacity
    )
