"""The n = 2, d = 1 ReLU autoencoder: closed forms against Monte Carlo, sympy and scipy."""

from __future__ import annotations

import numpy as np
import pytest

from capalloc.experiments.toy_phase import (
    antipodal_boundary,
    candidate_losses,
    configuration_label,
    exact_loss,
    exact_optimum,
    toy_phase,
)


def _monte_carlo(w, b, p, r, n=400_000, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, 2)) * (rng.uniform(size=(n, 2)) < p)
    xhat = np.maximum((x @ w)[:, None] * w + b, 0.0)
    err = ((x - xhat) ** 2 * [1.0, r]).sum(1)
    return err.mean(), err.std() / np.sqrt(n)


@pytest.mark.parametrize("seed", range(4))
def test_exact_loss_against_monte_carlo(seed):
    rng = np.random.default_rng(10 + seed)
    w, b = rng.normal(size=2), rng.normal(scale=0.4, size=2)
    p, r = rng.uniform(0.05, 1.0), rng.uniform(0.1, 1.0)
    mean, se = _monte_carlo(w, b, p, r, seed=seed)
    assert abs(exact_loss(w, b, p, r) - mean) < 4 * se + 1e-12


@pytest.mark.parametrize(("p", "r"), [(0.05, 0.3), (0.4, 0.7), (1.0, 1.0)])
def test_candidates_in_closed_form_match_the_exact_integrals(p, r):
    cands = candidate_losses(p, r)
    assert exact_loss([0.0, 0.0], [p / 2, p / 2], p, r) == pytest.approx(float(cands["none"]))
    assert exact_loss([1.0, 0.0], [0.0, p / 2], p, r) == pytest.approx(float(cands["one"]))
    assert exact_loss([1.0, -1.0], [0.0, 0.0], p, r) == pytest.approx(float(cands["antipodal"]))


def test_boundary_derived_with_sympy():
    sympy = pytest.importorskip("sympy")
    p, r, u, v = sympy.symbols("p r u v", positive=True)
    second = p * sympy.integrate(u**2, (u, 0, 1))
    first = p * sympy.integrate(u, (u, 0, 1))
    variance = second - first**2
    min_sq = 2 * sympy.integrate(sympy.integrate(v**2, (v, 0, u)), (u, 0, 1))  # E[min(u,v)^2]
    root = sympy.solve(sympy.Eq((1 + r) * p**2 * min_sq, r * variance), p)
    for ratio in (0.1, 0.5, 1.0):
        got = [float(x.subs(r, ratio)) for x in root if float(x.subs(r, ratio)) > 0]
        assert got == pytest.approx([float(antipodal_boundary(ratio))])


def test_exact_optimum_beats_every_candidate_and_finds_biased_superposition():
    for p, r in ((0.1, 0.5), (0.8, 0.2), (0.45, 0.5), (0.8, 1.0)):
        opt = exact_optimum(p, r)
        best = min(float(x) for x in candidate_losses(p, r).values())
        assert opt["loss"] <= best + 1e-10
        mean, se = _monte_carlo(np.array(opt["w"]), np.array(opt["b"]), p, r)
        assert abs(opt["loss"] - mean) < 4 * se
    # near equal importance and high density: both features kept, better than both candidates
    opt = exact_optimum(0.8, 1.0)
    assert opt["label"] == "superposition" and opt["kind"] == "biased superposition"
    assert opt["loss"] < float(candidate_losses(0.8, 1.0)["one"]) - 0.001
    assert min(opt["b"]) > 0.05
    # far from the boundary the candidates are the optimum
    assert exact_optimum(0.1, 0.5)["kind"] == "antipodal"
    assert exact_optimum(0.8, 0.2)["label"] == "one"


def test_labels_and_bad_input():
    assert configuration_label([0.0, 0.0]) == "none"
    with pytest.raises(ValueError, match="density"):
        exact_loss([1.0, 0.0], [0.0, 0.0], 0.0, 0.5)
    with pytest.raises(ValueError, match="density"):
        toy_phase([1.5], [0.5], train=False)
    with pytest.raises(ValueError, match="relative_importance"):
        toy_phase([0.5], [0.0], train=False)
    with pytest.raises(ValueError, match="density"):
        candidate_losses([0.5, -0.1], 0.5)


@pytest.mark.slow
def test_trained_models_agree_with_the_exact_diagram():
    pytest.importorskip("torch")
    rows = toy_phase([0.1, 0.8], [0.2, 1.0], seeds=2, steps=1500)
    exact = [row["exact"] for row in rows]  # cells (p, r): (0.1, .2) (0.8, .2) (0.1, 1) (0.8, 1)
    assert exact == ["superposition", "one", "superposition", "superposition"]
    assert all(row["trained"] == row["exact"] for row in rows)
    for row in rows:
        assert row["trained_loss"] <= row["exact_loss"] * 1.05 + 1e-4
