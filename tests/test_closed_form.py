"""The quadratic model's closed forms (capalloc.quadratic.closed_form) against
independent references: the exact loss minimised over the norm numerically, the
water-filling condition g(C(mu)) = 2 mu^2, and exact rational arithmetic.

Theory: docs/theory.md (per-feature loss, marginal benefit, water-filling form).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar

from capalloc.quadratic import closed_form as cf


def exact_loss(c: Fraction, v: Fraction, k: Fraction) -> Fraction:
    """min over N of (K-1)(v-N)^2 + 2 N^2 (1/C - 1), in rationals (vertex of a parabola)."""
    if c == 0:
        return (k - 1) * v * v
    q = (k - 1) + 2 * (1 / c - 1)  # L = q N^2 - 2 (K-1) v N + (K-1) v^2
    n = (k - 1) * v / q
    return (k - 1) * (v - n) ** 2 + 2 * n * n * (1 / c - 1)


@settings(max_examples=200, deadline=None)
@given(
    c=st.fractions(0, 1, max_denominator=1000),
    v=st.fractions(Fraction(1, 1000), 1000, max_denominator=1000),
    k=st.fractions(Fraction(101, 100), 50, max_denominator=100),
)
def test_loss_is_the_minimum_over_norms_in_exact_arithmetic(c, v, k):
    got = float(cf.feature_loss(float(c), float(v), float(k)))
    assert got == pytest.approx(float(exact_loss(c, v, k)), rel=1e-13, abs=1e-300)


def test_norm_is_the_numerical_minimiser(rng):
    for _ in range(30):
        c, v, k = rng.uniform(0.05, 1), 10 ** rng.uniform(-2, 2), rng.uniform(1.2, 20)
        res = minimize_scalar(
            lambda n, c=c, v=v, k=k: (k - 1) * (v - n) ** 2 + 2 * n * n * (1 / c - 1),
            bounds=(0, v),
            method="bounded",
            options={"xatol": 1e-12 * v},
        )
        assert float(cf.feature_norm(c, v, k)) == pytest.approx(res.x, rel=1e-7)


def test_benefit_is_minus_the_derivative_and_curvature_its_derivative(rng):
    c = rng.uniform(0.1, 0.9, 40)
    v = 10 ** rng.uniform(-3, 3, 40)
    k = rng.uniform(1.1, 30, 40)
    h = 1e-6
    fd = -(cf.feature_loss(c + h, v, k) - cf.feature_loss(c - h, v, k)) / (2 * h)
    np.testing.assert_allclose(cf.feature_benefit(c, v, k), fd, rtol=1e-7)
    fd2 = -(cf.feature_benefit(c + h, v, k) - cf.feature_benefit(c - h, v, k)) / (2 * h)
    np.testing.assert_allclose(cf.feature_curvature(c, v, k), fd2, rtol=1e-6)


@pytest.mark.parametrize("scale", [2.0**-1000, 2.0**-500, 1.0, 2.0**500, 2.0**1000])
def test_level_and_capacity_over_the_float_range(scale, rng):
    # h = sqrt(g / 2) stays representable where g = 2 h^2 does not; C(mu) is scale free
    # (exactly so under power-of-two scaling)
    v = scale * rng.uniform(0.5, 2.0, 100)
    k = rng.uniform(3.5, 40, 100)
    c = rng.uniform(0, 1, 100)
    ratio = cf.benefit_level(c, v, k) / v
    np.testing.assert_allclose(ratio, (k - 1) / (2 + (k - 3) * c), rtol=1e-15)
    mu = scale * 1.3
    np.testing.assert_array_equal(cf.capacity_at(mu, v, k), cf.capacity_at(1.3, v / scale, k))


def test_capacity_meets_the_water_level(rng):
    # inside the polysemantic band, g(C(mu)) = 2 mu^2: the water-filling condition
    v = 10 ** rng.uniform(-5, 5, 500)
    k = 3 + 10 ** rng.uniform(-6, 2, 500)
    mu = v * (1 + rng.uniform(0.01, 0.99, 500) * (k - 3) / 2)
    C = cf.capacity_at(mu, v, k)
    inside = (C > 0) & (C < 1)
    assert inside.mean() > 0.9
    np.testing.assert_allclose(cf.benefit_level(C, v, k)[inside], mu[inside], rtol=1e-9)
    saturate, enter = cf.breakpoints(v, k)
    np.testing.assert_array_equal(cf.capacity_at(saturate, v, k), 1.0)
    np.testing.assert_array_equal(cf.capacity_at(enter * (1 + 1e-12), v, k), 0.0)
    a, b = cf.segment_coefficients(v, k)
    np.testing.assert_allclose((a / mu - b)[inside], C[inside], rtol=1e-6, atol=1e-12)


def test_capacity_step_at_kurtosis_three():
    v = np.array([2.0, 1.0, 0.5, 0.0])
    np.testing.assert_array_equal(cf.capacity_at(1.0, v, 3.0), [1, 0, 0, 0])
    np.testing.assert_array_equal(cf.capacity_at(1.0, v, 3.0, share=0.25), [1, 0.25, 0, 0])
    np.testing.assert_array_equal(cf.capacity_at(1.0, v, 3.0, share=np.nan), [1, 0, 0, 0])


def test_kurtosis_one_has_zero_loss_and_norm():
    C = np.linspace(0, 1, 5)
    for form in (cf.feature_loss, cf.feature_benefit, cf.feature_norm, cf.feature_curvature):
        np.testing.assert_array_equal(form(C, 2.0, 1.0), 0.0)


def test_scalar_forms_agree_with_array_forms(rng):
    v = 10 ** rng.uniform(-3, 3, 300)
    k = np.where(rng.random(300) < 0.1, 3.0, 3 + 10 ** rng.uniform(-8, 2, 300))
    mu = float(np.median(v))
    c = [cf.capacity_scalar(vi, ki, mu, 0.5) for vi, ki in zip(v, k, strict=True)]
    np.testing.assert_array_equal(c, cf.capacity_at(mu, v, k, 0.5))
    h = [cf.level_scalar(vi, ki, ci) for vi, ki, ci in zip(v, k, c, strict=True)]
    np.testing.assert_array_equal(h, cf.benefit_level(c, v, k))
    ab = np.array([cf.segment_scalar(vi, ki) for vi, ki in zip(v, k, strict=True) if ki != 3])
    a, b = cf.segment_coefficients(v[k != 3], k[k != 3])
    np.testing.assert_array_equal(ab[:, 0], a)
    np.testing.assert_array_equal(ab[:, 1], b)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((1.5, 1.0, 3.0), r"C must lie in \[0, 1\], found 1.5"),
        ((0.5, -1.0, 3.0), r"v must be >= 0"),
        ((0.5, 1.0, 0.5), r"K must be >= 1"),
    ],
)
def test_public_forms_validate(args, match):
    with pytest.raises(ValueError, match=match):
        cf.per_feature_loss(*args)
