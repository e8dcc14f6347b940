"""Tests for capalloc.theory: the symbolic derivation against hand forms and numerics.

Spec references: §3 (loss, capacity form), §4 (per-feature loss, marginal benefit,
sign rule), §5 (two features in one neuron; water-filling form for K > 3).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize, minimize_scalar

from capalloc import theory

D = theory.derive()
C, v, K, a, b = D.C, D.v, D.K, D.a, D.b

# Hand forms of spec §4 and §5.
HAND = {
    "optimal_norm": (K - 1) * v * C / (2 + (K - 3) * C),
    "per_feature_loss": 2 * (K - 1) * v**2 * (1 - C) / (2 + (K - 3) * C),
    "marginal_benefit": 2 * (K - 1) ** 2 * v**2 / (2 + (K - 3) * C) ** 2,
    "curvature": 4 * (K - 1) ** 2 * (K - 3) * v**2 / (2 + (K - 3) * C) ** 3,
}
HAND_PAIR = {
    "polysemantic_threshold": 1 + 2 * a / b,
    "c2": (K - 1) * (a * K - a - 2 * b) / ((K - 3) * (K + 1)),
    "e2": (K - 1) * (b * K - b - 2 * a) / ((K - 3) * (K + 1)),
    "beta": 2 * (a + b) / (K + 1),
}


def random_points(rng, size=50):
    c = rng.uniform(0.01, 1.0, size)
    vv = rng.uniform(0.1, 3.0, size)
    kk = rng.uniform(1.05, 12.0, size)
    return c, vv, kk


# ---------------------------------------------------------------------------
# Single feature (spec §4)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(HAND))
def test_symbolic_matches_hand_form(name):
    assert sp.simplify(getattr(D, name) - HAND[name]) == 0


@pytest.mark.parametrize("name", sorted(HAND_PAIR))
def test_two_feature_symbolic_matches_hand_form(name):
    assert sp.simplify(getattr(D, name) - HAND_PAIR[name]) == 0


@pytest.mark.parametrize("name", sorted(HAND))
def test_closed_form_matches_derivation(name, rng):
    # theory re-exports capalloc.quadratic.closed_form; the reference is sympy's own result
    c, vv, kk = random_points(rng)
    got = getattr(theory, name)(c, vv, kk)
    derived = sp.lambdify((C, v, K), getattr(D, name), "numpy")(c, vv, kk)
    np.testing.assert_allclose(got, derived, rtol=1e-12)


def test_derivation_is_cached_and_frozen():
    assert theory.derive() is D
    with pytest.raises(dataclasses.FrozenInstanceError):
        D.K = sp.Symbol("K2")  # type: ignore[misc]


def test_optimal_norm_is_stationary_point():
    assert sp.simplify(sp.diff(D.loss, D.N).subs(D.N, D.optimal_norm)) == 0
    # and a minimum: d2L/dN2 = 2(K-1) + 4(1/C - 1) > 0 for K > 1, C in (0, 1]
    assert sp.simplify(sp.diff(D.loss, D.N, 2) - (2 * (K - 1) + 4 * (1 / C - 1))) == 0


def test_endpoints():
    assert sp.simplify(D.per_feature_loss.subs(C, 0) - (K - 1) * v**2) == 0
    assert sp.simplify(D.per_feature_loss.subs(C, 1)) == 0
    kk = np.array([1.0, 1.8, 3.0, 7.0])
    np.testing.assert_allclose(theory.per_feature_loss(0.0, 2.0, kk), (kk - 1) * 4.0)
    np.testing.assert_allclose(theory.per_feature_loss(1.0, 2.0, kk), 0.0, atol=1e-15)


def test_sign_rule_by_factoring():
    assert D.curvature_sign == K - 3
    rest = sp.factor(D.curvature / (K - 3))
    # what is left is 4 v^2 (K-1)^2 / (2 + (K-3) C)^3: the base is 2 at C = 0 and K - 1 at C = 1
    base = 2 + (K - 3) * C
    assert sp.simplify(rest - 4 * v**2 * (K - 1) ** 2 / base**3) == 0
    assert (base.subs(C, 0), sp.expand(base.subs(C, 1))) == (2, K - 1)


@settings(max_examples=60)
@given(c=st.floats(0, 1), vv=st.floats(0.01, 10), kk=st.floats(1.001, 50))
def test_sign_rule_numeric(c, vv, kk):
    assert np.sign(theory.curvature(c, vv, kk)) == np.sign(kk - 3)
    assert theory.marginal_benefit(c, vv, kk) > 0


def test_linear_at_three():
    c = np.linspace(0, 1, 11)
    np.testing.assert_allclose(theory.per_feature_loss(c, 1.5, 3.0), 2 * 1.5**2 * (1 - c))
    np.testing.assert_allclose(theory.curvature(c, 1.5, 3.0), 0.0)


def test_compiled_against_direct_minimisation(rng):
    c, vv, kk = random_points(rng, 40)
    for ci, vi, ki in zip(c, vv, kk, strict=True):
        res = minimize_scalar(
            lambda n, ci=ci, vi=vi, ki=ki: (ki - 1) * (vi - n) ** 2 + 2 * n**2 * (1 / ci - 1),
            bounds=(0.0, vi),
            method="bounded",
            options={"xatol": 1e-12},
        )
        assert theory.optimal_norm(ci, vi, ki) == pytest.approx(res.x, rel=1e-6, abs=1e-9)
        assert theory.per_feature_loss(ci, vi, ki) == pytest.approx(res.fun, rel=1e-9, abs=1e-12)


def test_marginal_benefit_and_curvature_are_derivatives(rng):
    c, vv, kk = random_points(rng)
    c = np.clip(c, 1e-3, 1 - 1e-3)
    h = 1e-6
    fd1 = -(theory.per_feature_loss(c + h, vv, kk) - theory.per_feature_loss(c - h, vv, kk)) / (
        2 * h
    )
    np.testing.assert_allclose(theory.marginal_benefit(c, vv, kk), fd1, rtol=1e-6)
    fd2 = -(theory.marginal_benefit(c + h, vv, kk) - theory.marginal_benefit(c - h, vv, kk)) / (
        2 * h
    )
    np.testing.assert_allclose(theory.curvature(c, vv, kk), fd2, rtol=1e-5, atol=1e-8)


def test_water_filling_form():
    """For K > 3, -l'(C) = 2 mu^2 inverts to C = ((K-1) v / mu - 2) / (K - 3) (spec §5)."""
    mu = sp.Symbol("mu", positive=True)
    c_mu = ((K - 1) * v / mu - 2) / (K - 3)
    assert sp.simplify(D.marginal_benefit.subs(C, c_mu) - 2 * mu**2) == 0
    assert sp.simplify(c_mu.subs(v, mu) - 1) == 0  # monosemantic from v = mu
    assert sp.simplify(c_mu.subs(v, 2 * mu / (K - 1))) == 0  # ignored below v = 2 mu / (K-1)
    # optimal norm in the band is mu * C
    assert sp.simplify(D.optimal_norm.subs(C, c_mu) - mu * c_mu) == 0


def test_broadcasting_and_scalars():
    out = theory.per_feature_loss(np.linspace(0, 1, 3)[:, None], [1.0, 2.0], 5.0)
    assert out.shape == (3, 2)
    assert np.ndim(theory.optimal_norm(0.5, 1.0, 4.0)) == 0


def test_rademacher_kurtosis_one_has_no_nan():
    c = np.array([0.0, 0.5, 1.0])
    for f in (
        theory.optimal_norm,
        theory.per_feature_loss,
        theory.marginal_benefit,
        theory.curvature,
    ):
        np.testing.assert_array_equal(f(c, 2.0, 1.0), 0.0)


@pytest.mark.parametrize(
    ("func", "args", "match"),
    [
        (theory.per_feature_loss, (1.5, 1.0, 3.0), r"C must lie in \[0, 1\], found 1.5"),
        (theory.per_feature_loss, (-0.1, 1.0, 3.0), r"C must lie in \[0, 1\], found -0.1"),
        (theory.marginal_benefit, (0.5, -1.0, 3.0), r"v must be >= 0.*-1"),
        (theory.curvature, (0.5, 1.0, 0.5), r"K must be >= 1.*0.5"),
        (theory.optimal_norm, (0.5, 1.0, np.nan), r"K must be finite"),
        (theory.two_feature_threshold, (1.0, 2.0), r"a must be >= b.*a=1.0, b=2.0"),
        (theory.two_feature_threshold, (1.0, 0.0), r"b must be > 0, got 0.0"),
        (theory.two_feature_optimum, (2.0, 1.0, 0.9), r"K must be >= 1.*0.9"),
        (theory.two_feature_optimum, (2.0, -1.0, 5.0), r"b must be > 0, got -1.0"),
    ],
)
def test_input_validation(func, args, match):
    with pytest.raises(ValueError, match=match):
        func(*args)


# ---------------------------------------------------------------------------
# The teaching version's typo (spec §3)
# ---------------------------------------------------------------------------


def test_capacity_form_needs_squared_norm(rng):
    W = rng.normal(size=(3, 7))
    G = W.T @ W
    N = np.diag(G)
    cross = (G**2).sum(axis=1) - N**2  # sum over j != i of (W_i . W_j)^2
    cap = N**2 / (G**2).sum(axis=1)
    np.testing.assert_allclose(N**2 * (1 / cap - 1), cross, rtol=1e-12)  # N_i^2: correct
    assert not np.allclose(N * (1 / cap - 1), cross, rtol=1e-3)  # N_i as printed: wrong


# ---------------------------------------------------------------------------
# Two features, one neuron (spec §5)
# ---------------------------------------------------------------------------


def exact_loss(c, e, beta, av, bv, kk):
    """Spec §3 loss for W = [[c, e]], y = a x1^2 + b x2^2, with bias beta."""
    n1, n2 = c * c, e * e
    return (
        (kk - 1) * ((av - n1) ** 2 + (bv - n2) ** 2)
        + ((av - n1) + (bv - n2) - beta) ** 2
        + 2 * 2 * (c * e) ** 2
    )


def exact_loss_grad(x, av, bv, kk):
    c, e, beta = x
    u1, u2 = av - c * c, bv - e * e
    r = u1 + u2 - beta
    return np.array(
        [
            -4 * c * ((kk - 1) * u1 + r) + 8 * c * e * e,
            -4 * e * ((kk - 1) * u2 + r) + 8 * e * c * c,
            -2 * r,
        ]
    )


def brute_force(av, bv, kk, starts=16, seed=0):
    """Best of many BFGS runs on (c, e, beta), from random starts."""
    rng = np.random.default_rng(seed)
    best = None
    for x0 in rng.normal(scale=np.sqrt(av), size=(starts, 3)):
        res = minimize(
            lambda x: exact_loss(*x, av, bv, kk),
            x0,
            method="BFGS",
            jac=lambda x: exact_loss_grad(x, av, bv, kk),
            options={"gtol": 1e-12},
        )
        if best is None or res.fun < best.fun:
            best = res
    c, e, beta = best.x
    return c * c, e * e, beta, best.fun


def test_exact_loss_gradient():
    x, args = np.array([0.7, -0.4, 0.2]), (2.0, 1.0, 6.0)
    h = 1e-6
    fd = [
        (exact_loss(*(x + h * ei), *args) - exact_loss(*(x - h * ei), *args)) / (2 * h)
        for ei in np.eye(3)
    ]
    np.testing.assert_allclose(exact_loss_grad(x, *args), fd, rtol=1e-6)


def test_exact_two_feature_loss_monte_carlo():
    """The brute-force objective is the expected loss (sparse Gaussian inputs, K = 3/p)."""
    rng = np.random.default_rng(7)
    p, m = 0.4, 400_000
    x = rng.normal(size=(m, 2)) * (rng.random((m, 2)) < p) / np.sqrt(p)
    av, bv, c, e, beta = 2.0, 1.0, 0.9, -0.6, 0.3
    y = av * x[:, 0] ** 2 + bv * x[:, 1] ** 2
    yhat = (c * x[:, 0] + e * x[:, 1]) ** 2 + beta
    mc = np.mean((y - yhat) ** 2)
    assert mc == pytest.approx(exact_loss(c, e, beta, av, bv, 3 / p), rel=0.05)


@pytest.mark.parametrize(("av", "bv"), [(1.0, 1.0), (2.0, 1.0), (3.0, 0.5)])
def test_threshold_against_brute_force(av, bv):
    kstar = float(theory.two_feature_threshold(av, bv))
    assert kstar == pytest.approx(1 + 2 * av / bv, rel=1e-14)
    # the weaker of the two squared weights (when a == b either feature may win)
    weak_below = min(brute_force(av, bv, kstar * 0.97)[:2])
    weak_above = min(brute_force(av, bv, kstar * 1.03)[:2])
    assert weak_below < 1e-5 * av  # monosemantic just below
    assert weak_above > 1e-3 * av  # polysemantic just above


def test_threshold_routes_agree():
    """The capacity route (threshold) and the W route (explicit optimum) meet: e^2 = 0 at K*."""
    at = {K: D.polysemantic_threshold}
    assert sp.simplify(D.e2.subs(at)) == 0
    assert sp.simplify(D.c2.subs(at) - a) == 0
    assert sp.simplify(D.beta.subs(at) - b) == 0


@pytest.mark.parametrize(
    ("av", "bv", "kk"),
    [
        (1.0, 1.0, 7.0),
        (2.0, 1.0, 6.5),
        (2.0, 1.0, 4.0),
        (3.0, 0.5, 20.0),
        (1.0, 1.0, 1.8),
        (2.0, 1.0, 2.5),
        (1.5, 1.0, 12.0),
    ],
)
def test_two_feature_optimum_against_brute_force(av, bv, kk):
    c2, e2, beta = theory.two_feature_optimum(av, bv, kk)
    bc2, be2, bbeta, bloss = brute_force(av, bv, kk)
    # the brute force may put the larger weight on either feature only when a == b
    if av == bv and abs(be2 - c2) < abs(bc2 - c2):
        bc2, be2 = be2, bc2
    np.testing.assert_allclose([c2, e2, beta], [bc2, be2, bbeta], atol=1e-5)
    assert exact_loss(np.sqrt(c2), np.sqrt(e2), beta, av, bv, kk) <= bloss + 1e-9


def test_two_feature_optimum_broadcasts():
    c2, e2, beta = theory.two_feature_optimum(2.0, 1.0, np.array([3.0, 5.0, 9.0]))
    assert c2.shape == e2.shape == beta.shape == (3,)
    np.testing.assert_allclose(e2[:2], 0.0)
    assert e2[2] > 0


@settings(max_examples=40)
@given(
    ratio=st.floats(1.0, 5.0),
    bv=st.floats(0.1, 3.0),
    kk=st.floats(1.0, 40.0),
    c=st.floats(-3, 3),
    e=st.floats(-3, 3),
)
def test_two_feature_optimum_beats_any_point(ratio, bv, kk, c, e):
    av = ratio * bv
    c2, e2, beta = theory.two_feature_optimum(av, bv, kk)
    assert min(c2, e2) >= 0
    best = exact_loss(np.sqrt(c2), np.sqrt(e2), beta, av, bv, kk)
    other_beta = (av - c * c) + (bv - e * e)  # optimal bias for (c, e)
    assert best <= exact_loss(c, e, other_beta, av, bv, kk) * (1 + 1e-12) + 1e-12


def test_sparse_gaussian_boundary():
    """K = 3/p: polysemantic iff p < 3 / (1 + 2 a / b); any sparsity when a == b."""
    av, bv = 2.0, 1.0
    p_crit = 3 / float(theory.two_feature_threshold(av, bv))
    assert p_crit == pytest.approx(0.6)
    assert theory.two_feature_optimum(av, bv, 3 / (p_crit * 0.95))[1] > 0
    assert theory.two_feature_optimum(av, bv, 3 / (p_crit * 1.05))[1] == 0
    assert theory.two_feature_optimum(1.0, 1.0, 3 / 0.99)[1] > 0


# ---------------------------------------------------------------------------
# User-supplied separable losses
# ---------------------------------------------------------------------------


def test_compile_separable_reproduces_quadratic_model(rng):
    f = theory.compile_separable(D.per_feature_loss, C, [v, K])
    c, vv, kk = random_points(rng)
    np.testing.assert_allclose(f.loss(c, vv, kk), theory.per_feature_loss(c, vv, kk), rtol=1e-12)
    np.testing.assert_allclose(
        f.marginal_benefit(c, vv, kk), theory.marginal_benefit(c, vv, kk), rtol=1e-12
    )
    np.testing.assert_allclose(f.curvature(c, vv, kk), theory.curvature(c, vv, kk), rtol=1e-10)
    assert theory.compile_separable(D.per_feature_loss, C, (v, K)) is f  # cached


def test_compile_separable_broadcasts_constant_derivatives():
    x, w = sp.symbols("x w")
    f = theory.compile_separable(w * (1 - x), x, [w])
    assert f.curvature(np.zeros(4), 2.0).shape == (4,)
    np.testing.assert_array_equal(f.marginal_benefit(np.zeros(3), [1.0, 2.0, 3.0]), [1, 2, 3])


def test_compile_separable_validation():
    x, w = sp.symbols("x w")
    with pytest.raises(ValueError, match=r"\['w'\]"):
        theory.compile_separable(w * x, x, [])
    with pytest.raises(TypeError, match="C_symbol"):
        theory.compile_separable(w * x, "x", [w])
    with pytest.raises(TypeError, match="param_symbols"):
        theory.compile_separable(w * x, x, [2])


def test_curvature_class_quadratic_model():
    f = theory.compile_separable(D.per_feature_loss, C, [v, K])
    kk = np.array([1.0, 1.8, 2.99, 3.0, 3.01, 10.0])
    got = theory.curvature_class(f, [np.ones_like(kk), kk])
    assert got.tolist() == ["linear", "concave", "concave", "linear", "convex", "convex"]
    assert theory.curvature_class(f, [0.0, 5.0]).tolist() == "linear"  # v = 0: no loss at all


@pytest.mark.parametrize(
    ("expr", "param_values", "expected"),
    [
        (sp.sin(5 * sp.Symbol("C")), [], "mixed"),  # numerical (sin is not factorable)
        (sp.sin(sp.Symbol("C")), [], "concave"),  # numerical: -sin(C) <= 0 on [0, 1]
        (sp.exp(sp.Symbol("C")), [], "convex"),  # numerical
        ((sp.Symbol("C") - sp.Rational(1, 2)) ** 3, [], "mixed"),  # affine factor changes sign
        (-sp.log(sp.Symbol("C")), [], "convex"),  # symbolic: 1 / C**2
        (sp.sqrt(1 + sp.Symbol("C")), [], "concave"),  # symbolic: real power of a positive base
        (3 * sp.Symbol("C") - 1, [], "linear"),
    ],
)
def test_curvature_class_examples(expr, param_values, expected):
    f = theory.compile_separable(expr, sp.Symbol("C"), [])
    assert theory.curvature_class(f, param_values).tolist() == expected


def test_curvature_class_mixed_parameters_and_validation():
    x, w = sp.symbols("x w")
    f = theory.compile_separable(w * sp.sin(5 * x) + x**2, x, [w])
    got = theory.curvature_class(f, [[0.0, 0.01, 1.0]])
    assert got.tolist() == ["convex", "convex", "mixed"]
    with pytest.raises(ValueError, match="must hold 1 arrays"):
        theory.curvature_class(f, [])
    with pytest.raises(ValueError, match=r"grid must lie in \[0, 1\], found 2.0"):
        theory.curvature_class(f, [1.0], grid=[0.0, 2.0])
    with pytest.raises(TypeError, match="CompiledLoss"):
        theory.curvature_class(object(), [])  # type: ignore[arg-type]


def test_separable_problem_from_sympy_uses_theory():
    from capalloc import SeparableProblem

    prob = SeparableProblem.from_sympy(D.per_feature_loss, C, {v: [3.0, 2.0, 1.0], K: 5.0}, d=1)
    assert prob.curvature.tolist() == ["convex"] * 3
    cc = np.array([0.2, 0.5, 0.9])
    np.testing.assert_allclose(
        prob.marginal_benefit(cc), theory.marginal_benefit(cc, [3.0, 2.0, 1.0], 5.0)
    )


def test_import_capalloc_does_not_import_sympy():
    code = "import sys, capalloc; assert 'sympy' not in sys.modules; capalloc.theory"
    code += "; assert 'sympy' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
