"""Tests of capalloc.allocation.sensitivity against finite differences of capalloc.solve."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import capalloc
from capalloc import QuadraticProblem
from capalloc.allocation.sensitivity import Sensitivity, sensitivity


def _solve(v, d, K):
    res = capalloc.solve(QuadraticProblem(v, d, K))
    return res, float(np.sqrt(res.threshold / 2))


def _instance(seed, n=9, d=3, per_feature=True):
    """A random problem with a margin around every feature's regime (finite steps stay inside)."""
    rng = np.random.default_rng(seed)
    while True:
        v = rng.uniform(0.2, 2.0, n)
        K = rng.uniform(4.0, 14.0, n) if per_feature else np.full(n, rng.uniform(4.0, 14.0))
        p = QuadraticProblem(v, d, K)
        s = sensitivity(p)
        lo, hi = s.regime_interval.T
        margin = np.minimum((v - lo) / v, (hi - v) / v)
        if np.any(s.labels == "polysemantic") and margin.min() > 1e-3:
            return p, s


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_importance_derivatives_match_central_differences(seed):
    p, s = _instance(seed)
    v, K, d = p.importance, p.kurtosis, p.d
    h = 1e-6
    for j in range(v.size):
        e = np.zeros(v.size)
        e[j] = h * v[j]
        (rp, mp), (rm, mm) = _solve(v + e, d, K), _solve(v - e, d, K)
        step = 2 * e[j]
        np.testing.assert_allclose((rp.capacity - rm.capacity) / step, s.dC_dv[:, j], atol=1e-6)
        np.testing.assert_allclose((mp - mm) / step, s.dmu_dv[j], atol=1e-6)
        np.testing.assert_allclose((rp.threshold - rm.threshold) / step, s.dT_dv[j], atol=1e-5)
        np.testing.assert_allclose((rp.loss - rm.loss) / step, s.dloss_dv[j], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 3])
def test_kurtosis_derivatives_match_central_differences(seed):
    p, s = _instance(seed)
    v, K, d = p.importance, p.kurtosis, p.d
    h = 1e-6
    for j in range(v.size):
        e = np.zeros(v.size)
        e[j] = h * K[j]
        (rp, mp), (rm, mm) = _solve(v, d, K + e), _solve(v, d, K - e)
        step = 2 * e[j]
        np.testing.assert_allclose((rp.capacity - rm.capacity) / step, s.dC_dK[:, j], atol=1e-6)
        np.testing.assert_allclose((mp - mm) / step, s.dmu_dK[j], atol=1e-6)
        np.testing.assert_allclose((rp.threshold - rm.threshold) / step, s.dT_dK[j], atol=1e-5)
        np.testing.assert_allclose((rp.loss - rm.loss) / step, s.dloss_dK[j], rtol=1e-6, atol=1e-7)


def test_common_kurtosis_derivative():
    p, s = _instance(4, per_feature=False)
    K = float(p.kurtosis[0])
    h = 1e-6 * K
    rp, _ = _solve(p.importance, p.d, K + h)
    rm, _ = _solve(p.importance, p.d, K - h)
    np.testing.assert_allclose((rp.capacity - rm.capacity) / (2 * h), s.dC_dK_common, atol=1e-6)
    np.testing.assert_allclose((rp.loss - rm.loss) / (2 * h), s.dloss_dK_common, rtol=1e-6)


def test_budget_derivatives_are_exact_for_a_unit_step():
    # inside a regime 1/mu and every C_i are affine in d, so a step of one is exact
    v = np.linspace(2.0, 0.5, 12)
    p = QuadraticProblem(v, 4, 20.0)
    s = sensitivity(p)
    r1, mu1 = _solve(v, 5, 20.0)
    assert np.array_equal(r1.labels, s.labels)  # same regime at d + 1
    np.testing.assert_allclose(1 / mu1 - 1 / s.mu, -s.dmu_dd / s.mu**2, rtol=1e-10)
    np.testing.assert_allclose(r1.capacity - s.capacity, s.dC_dd, atol=1e-10)
    assert s.dC_dd.sum() == pytest.approx(1.0)
    # the optimal loss is convex in d with slope -T: the unit step lies between the slopes
    assert s.dloss_dd == pytest.approx(-s.threshold)
    assert -s.threshold <= r1.loss - s.loss <= -r1.threshold
    assert s.dT_dd == pytest.approx(4 * s.mu * s.dmu_dd)


def test_own_boundaries_by_solving_just_across():
    p, s = _instance(5, n=10, d=4)
    v, K, d = p.importance, p.kurtosis, p.d
    order = {"ignored": 0, "polysemantic": 1, "monosemantic": 2}
    checked = 0
    for i in range(v.size):
        for side in (0, 1):
            b = s.regime_boundaries[i, side]
            if np.isnan(b) or b != s.regime_interval[i, side]:
                continue  # no boundary, or another feature changes regime first
            checked += 1
            eps = 1e-7 * b
            w = v.copy()
            w[i] = b - eps if side == 0 else b + eps
            outside = capalloc.solve(QuadraticProblem(w, d, K)).labels[i]
            w[i] = b + eps if side == 0 else b - eps
            inside = capalloc.solve(QuadraticProblem(w, d, K)).labels[i]
            assert inside == s.labels[i]
            assert order[outside] == order[s.labels[i]] + (1 if side else -1)
    assert checked >= 5


def test_regime_interval_ends_by_solving_just_across():
    p, s = _instance(6)
    v, K, d = p.importance, p.kurtosis, p.d
    for i in range(v.size):
        for side in (0, 1):
            b = s.regime_interval[i, side]
            if not np.isfinite(b) or b == 0:
                continue
            eps = 1e-7 * b
            w = v.copy()
            w[i] = b + (eps if side == 0 else -eps)
            assert np.array_equal(capalloc.solve(QuadraticProblem(w, d, K)).labels, s.labels)
            w[i] = b - (eps if side == 0 else -eps)
            assert not np.array_equal(capalloc.solve(QuadraticProblem(w, d, K)).labels, s.labels)


@given(seed=st.integers(0, 10_000), n=st.integers(3, 12), d=st.integers(1, 6))
def test_capacity_is_conserved_and_monotone(seed, n, d):
    rng = np.random.default_rng(seed)
    v = rng.uniform(0.1, 3.0, n)
    p = QuadraticProblem(v, min(d, n - 1), rng.uniform(3.5, 30.0, n))
    s = sensitivity(p)
    if not np.isfinite(s.mu):
        return
    # the budget is fixed: moving v or K only moves capacity between features
    np.testing.assert_allclose(s.dC_dv.sum(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(s.dC_dK.sum(axis=0), 0.0, atol=1e-9)
    assert np.all(np.diag(s.dC_dv) >= 0)  # a feature's capacity grows with its importance
    off = s.dC_dv - np.diag(np.diag(s.dC_dv))
    assert np.all(off <= 1e-12)  # and the others' shrink
    assert np.all(s.dmu_dv >= 0) and np.all(s.dmu_dv < 1)
    assert np.all(s.dloss_dv >= 0)
    assert s.dloss_dd == pytest.approx(-s.threshold)


def test_given_result_is_used_and_scaling():
    p = QuadraticProblem([4.0, 2.0, 1.0, 0.2], d=2, kurtosis=10.0)
    s = sensitivity(p, capalloc.solve(p))
    s3 = sensitivity(QuadraticProblem(3 * p.importance, 2, 10.0))
    # v -> 3 v: C unchanged, mu scales by 3, dC/dv by 1/3, the loss by 9
    np.testing.assert_allclose(s3.capacity, s.capacity)
    assert s3.mu == pytest.approx(3 * s.mu)
    np.testing.assert_allclose(s3.dC_dv, s.dC_dv / 3, atol=1e-12)
    np.testing.assert_allclose(s3.dloss_dv, 3 * s.dloss_dv)
    assert isinstance(s, Sensitivity) and not s.dC_dv.flags.writeable
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.mu = 0.0  # type: ignore[misc]
    assert repr(s).startswith("Sensitivity(n=4, mono=1, poly=2, ignored=1")


def test_no_polysemantic_feature_and_slack_budget():
    # a gap (K-1)/2 = 2 wider than v_2 / v_3 = 3 / 1: no polysemantic feature, mu undetermined
    p = QuadraticProblem([3.0, 3.0, 1.0], d=2, kurtosis=5.0)
    s = sensitivity(p)
    assert list(s.labels) == ["monosemantic", "monosemantic", "ignored"]
    assert np.isnan(s.mu) and np.isnan(s.dloss_dd) and np.all(np.isnan(s.dmu_dv))
    assert np.all(s.dC_dv == 0)
    np.testing.assert_allclose(s.regime_boundaries, [[2.0, np.nan], [2.0, np.nan], [np.nan, 1.5]])
    for i, (b, label) in enumerate(
        [(2.0, "polysemantic"), (2.0, "polysemantic"), (1.5, "polysemantic")]
    ):
        w = np.array([3.0, 3.0, 1.0])
        w[i] = b - 1e-6 if i < 2 else b + 1e-6
        assert capalloc.solve(QuadraticProblem(w, 2, 5.0)).labels[i] == label
    # envelope theorem still holds for the loss
    h = 1e-6
    lp = capalloc.solve(QuadraticProblem([3.0, 3.0, 1.0 + h], 2, 5.0)).loss
    lm = capalloc.solve(QuadraticProblem([3.0, 3.0, 1.0 - h], 2, 5.0)).loss
    assert (lp - lm) / (2 * h) == pytest.approx(s.dloss_dv[2], rel=1e-6)

    slack = sensitivity(QuadraticProblem([1.0, 2.0], d=3, kurtosis=5.0))
    assert slack.mu == 0 and slack.dloss_dd == 0 and np.all(slack.dloss_dv == 0)


@pytest.mark.parametrize(
    "problem, exc, match",
    [
        (QuadraticProblem([1.0, 2.0, 3.0], 1, 3.0), ValueError, "kurtosis must be > 3"),
        (QuadraticProblem([[1.0, 2.0, 3.0]], 1, 5.0), ValueError, "unbatched"),
        ("problem", TypeError, "QuadraticProblem"),
    ],
)
def test_bad_input(problem, exc, match):
    with pytest.raises(exc, match=match):
        sensitivity(problem)
