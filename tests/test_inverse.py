"""capalloc.fit_importance: importances recovered from capacities, against the generating ones.

Capacities come from the exact solver on known importances; the recovered polysemantic
importances are compared with the truth divided by the water level (the allocation's scale),
the bounds of the others must hold the truth, and re-solving must reproduce the capacities.
"""

from __future__ import annotations

import numpy as np
import pytest

import capalloc
from capalloc.allocation.inverse import fit_importance
from capalloc.allocation.result import AllocationWarning


def _solved(v, d, K):
    res = capalloc.solve(capalloc.QuadraticProblem(v, d, K))
    return np.asarray(res.capacity), np.sqrt(np.asarray(res.threshold) / 2)


def test_public_name():
    assert capalloc.fit_importance is fit_importance


@pytest.mark.parametrize("seed", range(5))
def test_convex_problems_are_recovered_up_to_scale(seed):
    rng = np.random.default_rng(seed)
    n, d = 40, 9
    v = rng.lognormal(0.0, 1.0, n)
    K = rng.uniform(3.2, 15.0, n)
    C, mu = _solved(v, d, K)
    fit = fit_importance(C, d, K)
    truth = v / mu
    assert fit.status == 0 and fit.residual < 1e-12
    poly = (C > 1e-9) & (C < 1 - 1e-9)
    assert np.array_equal(fit.identifiable, poly) and poly.sum() >= 3
    np.testing.assert_allclose(fit.importance[poly], truth[poly], rtol=1e-12)
    assert np.all(fit.lower <= truth * (1 + 1e-12)) and np.all(truth <= fit.upper * (1 + 1e-12))
    np.testing.assert_array_equal(fit.labels, capalloc.classify(C))
    assert fit.level == 1.0


def test_every_importance_inside_the_bounds_reproduces_a_convex_allocation(rng):
    v = rng.lognormal(0.0, 0.7, 30)
    K = rng.uniform(4.0, 10.0, 30)
    C, _ = _solved(v, 8, K)
    fit = fit_importance(C, 8, K)
    for _ in range(20):
        hi = np.where(np.isinf(fit.upper), fit.lower * 10, fit.upper)
        sample = fit.lower + rng.uniform(0, 1, 30) * (hi - fit.lower)
        got, _ = _solved(sample, 8, K)
        np.testing.assert_allclose(got, C, atol=1e-12)


def test_batched_rows_and_level_scale(rng):
    V = rng.lognormal(0.0, 1.0, (4, 20))
    C, mu = _solved(V, 5, 6.0)
    fit = fit_importance(C, 5, 6.0, level=2.5)
    assert fit.importance.shape == (4, 20) and fit.residual.shape == (4,)
    assert fit.status == 0 and np.all(fit.level == 2.5)
    poly = fit.identifiable
    np.testing.assert_allclose(fit.importance[poly], (2.5 * V / mu[:, None])[poly], rtol=1e-12)


def test_linear_kurtosis_ties_are_identified():
    C, _ = _solved([3.0, 2.0, 2.0, 1.0], 2, 3.0)  # the tied pair shares: mu = 2
    fit = fit_importance(C, 2, 3.0)
    assert fit.identifiable.tolist() == [False, True, True, False]
    assert fit.importance[1:3].tolist() == [1.0, 1.0]
    assert fit.status == 0


def test_no_polysemantic_feature_gives_bounds_only():
    C, _ = _solved([3.0, 2.0, 0.1, 0.05], 2, 10.0)
    fit = fit_importance(C, 2, 10.0)
    assert not fit.identifiable.any() and fit.status == 0
    assert fit.lower.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert fit.upper[:2].tolist() == [np.inf, np.inf]
    np.testing.assert_allclose(fit.upper[2:], 2 / 9)


def test_slack_budget():
    fit = fit_importance([1.0, 1.0, 0.0], 5, 6.0)
    assert fit.level == 0.0 and fit.status == 0
    assert fit.lower.tolist() == [0.0, 0.0, 0.0] and fit.upper.tolist() == [np.inf, np.inf, 0.0]


def test_mixed_curvature_fractional_concave_feature_is_identified():
    v = np.array([1.19, 0.451, 1.969, 1.271, 0.311, 1.614])
    K = np.array([5.418, 7.105, 2.847, 1.601, 4.702, 2.542])
    C, mu = _solved(v, 2, K)
    fit = fit_importance(C, 2, K)
    assert fit.identifiable.tolist() == [True, True, False, False, False, True]
    np.testing.assert_allclose(fit.importance[fit.identifiable], (v / mu)[fit.identifiable])
    assert np.all(fit.lower <= v / mu + 1e-12) and np.all(v / mu <= fit.upper + 1e-12)
    assert fit.status == 0  # this representative happens to reproduce; see the next test


def test_concave_representative_that_fails_is_reported():
    # K < 3: the bounds are necessary only; the concave monosemantic feature at 2 mu gains
    # (K - 1) v^2 = 0.2 from its unit, less than the convex pair would
    C = np.array([1.0, 0.5, 0.5])
    with pytest.warns(AllocationWarning, match="necessary bounds only"):
        fit = fit_importance(C, 2, [1.05, 8.0, 8.0])
    assert fit.status == 1 and fit.residual == pytest.approx(1.0)
    assert fit.identifiable.tolist() == [False, True, True]
    big = fit.importance.copy()
    big[0] = 100.0  # inside its bounds [1, inf): reproduces
    np.testing.assert_allclose(_solved(big, 2, [1.05, 8.0, 8.0])[0], C, atol=1e-12)


def test_capacities_that_are_no_optimum_are_reported():
    C, _ = _solved([2.0, 1.5, 1.0, 0.5], 2, 8.0)
    noisy = np.clip(C + np.array([0.0, 0.02, -0.01, 0.0]), 0, 1)  # sum != d
    with pytest.warns(AllocationWarning, match="not reproduced"):
        fit = fit_importance(noisy, 2, 8.0)
    assert fit.status == 1 and fit.residual > 1e-3


def test_exactly_trained_model_capacities_recover_importances():
    from capalloc.training import effective_capacity

    v = 0.8 ** np.arange(10)
    problem = capalloc.QuadraticProblem(v, 4, 7.5)
    run = capalloc.train_quadratic(problem, method="exact", seed=0)
    C = np.clip(effective_capacity(run.W), 0, 1)
    with np.errstate(all="ignore"):
        fit = fit_importance(C, 4, 7.5, tol=0.02, atol=1e-2)
    _, mu = _solved(v, 4, 7.5)
    poly = fit.identifiable
    assert poly.sum() >= 4
    np.testing.assert_allclose(fit.importance[poly], (v / mu)[poly], rtol=0.02)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (([1.2, 0.5], 1), {}, "capacity must lie in"),
        (([0.5, np.nan], 1), {}, "C must be finite|capacity must be finite"),
        (([0.5, 0.5], -1), {}, "d must be a non-negative integer"),
        (([0.5, 0.5], 1, 0.5), {}, "kurtosis must be >= 1"),
        (([0.5, 0.5], 1, [5.0, 5.0, 5.0]), {}, "does not broadcast"),
        (([0.5, 0.5], 1), {"level": 0.0}, "level must be > 0"),
        (([0.5, 0.5], 1), {"tol": -1.0}, "tol must be >= 0"),
        ((np.zeros((2, 2, 2)), 1), {}, "capacity must have 1 or 2 dimensions"),
    ],
)
def test_bad_input_names_the_argument(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_importance(*args, **kwargs)
