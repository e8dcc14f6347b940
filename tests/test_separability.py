"""The basis test of capalloc.prediction.separability: exact invariances and the ReLU model's basis."""

from __future__ import annotations

import numpy as np
import pytest

from capalloc.prediction.separability import basis_dependence, haar_rotations

torch = pytest.importorskip("torch")


def test_rotations_are_orthogonal_and_small_angles_are_small():
    for angle in (None, 0.05, 1.0):
        Q = haar_rotations(5, 6, seed=3, angle=angle)
        np.testing.assert_allclose(
            Q @ np.swapaxes(Q, -1, -2), np.broadcast_to(np.eye(6), Q.shape), atol=1e-12
        )
    small = haar_rotations(5, 6, seed=3, angle=0.05)
    # exp(theta A) with ||A||_2 = 1 moves no vector by more than theta
    assert np.linalg.norm(small - np.eye(6), ord=2, axis=(-2, -1)).max() <= 0.05 + 1e-12
    with pytest.raises(ValueError, match="count"):
        haar_rotations(0, 3)
    with pytest.raises(ValueError, match="angle"):
        haar_rotations(2, 3, angle=-1.0)


@pytest.mark.parametrize("model", ["quadratic", "relu-ae"])
def test_capacity_only_models_are_rotation_invariant(model):
    # quadratic: sum_k (Wx)_k^2 = |Wx|^2; relu-ae: the output depends on W^T W only
    (row,) = basis_dependence(
        model, n=6, d=3, sparsities=[0.8], seeds=2, steps=60, rotations=3, eval_batch=4096
    )
    assert row["ratio_min"] == pytest.approx(1.0, abs=1e-9)
    assert row["ratio_max"] == pytest.approx(1.0, abs=1e-9)
    assert row["permuted_ratio"] == pytest.approx(1.0, abs=1e-12)
    assert row["max_capacity_change"] < 1e-12


def test_relu_model_uses_its_neuron_basis():
    rows = basis_dependence(
        "relu",
        n=6,
        d=3,
        sparsities=[0.9],
        seeds=2,
        steps=300,
        rotations=4,
        angles=(0.01, None),
        eval_batch=8192,
    )
    small, haar = rows
    assert small["angle"] == 0.01 and haar["angle"] is None
    assert haar["ratio_min"] > 1.5  # a random basis loses much of what training found
    assert 1.0 - 1e-9 <= small["ratio"] < haar["ratio"]  # the trained basis is a minimum
    assert haar["permuted_ratio"] == pytest.approx(1.0, abs=1e-12)  # neurons are exchangeable
    assert haar["max_capacity_change"] < 1e-12


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="sparsities"):
        basis_dependence("relu", sparsities=[1.0])
    with pytest.raises(ValueError, match="rotations"):
        basis_dependence("relu", rotations=0)


def test_cli_separability_json():
    import json
    import subprocess
    import sys

    args = ["--model", "quadratic", "--n", "5", "--d", "2", "--sparsities", "0.8", "--seeds", "1"]
    args += ["--steps", "30", "--rotations", "2", "--angles", "0.1", "haar", "--json"]
    done = subprocess.run(
        [sys.executable, "-m", "capalloc.cli", "experiment", "separability", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [r["angle"] for r in rows] == [0.1, None]
    assert all(r["ratio"] == pytest.approx(1.0, abs=1e-9) for r in rows)
    bad = subprocess.run(
        [sys.executable, "-m", "capalloc.cli", "experiment", "separability", "--angles", "-1"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "angle must be a positive number" in bad.stderr


def test_quadratic_curve_against_brute_force_allocation():
    from capalloc import QuadraticProblem, solve
    from capalloc.prediction.curves import quadratic_curve

    v, d, K = 0.8 ** np.arange(7), 3, 8.0
    # at integer c the others' optimum is the exact solver's with budget d - c
    L = quadratic_curve(v, d, K, feature=1, capacities=[0.0, 1.0])
    rest = np.delete(v, 1)
    for c, got in zip([0.0, 1.0], L, strict=True):
        res = solve(QuadraticProblem(rest, d - int(c), K))
        own = float((K - 1) * v[1] ** 2) if c == 0 else 0.0
        assert got == pytest.approx(own + float(res.loss), rel=1e-9)
    # the free optimum is the minimum of the curve, at the solver's capacity of feature 1
    free = solve(QuadraticProblem(v, d, K))
    grid = np.linspace(0, 1, 201)
    curve = quadratic_curve(v, d, K, feature=1, capacities=grid)
    assert grid[np.argmin(curve)] == pytest.approx(free.capacity[1], abs=0.005)
    assert curve.min() == pytest.approx(float(free.loss), rel=1e-6)


def test_held_capacity_training_reaches_its_targets_and_bounds_the_exact_curve():
    from capalloc.prediction.curves import constrained_loss_curve

    rows = constrained_loss_curve(
        "quadratic", feature=1, capacities=[0.5, 1.0], n=6, d=3, sparsity=0.8, steps=1500
    )
    for r in rows:
        assert abs(r["capacity"] - r["target"]) < 0.02
        assert r["loss"] >= r["exact"] * (1 - 1e-9)  # training can only be above the optimum
        assert r["loss"] <= r["exact"] * 1.2
    with pytest.raises(ValueError, match="capacities"):
        constrained_loss_curve("quadratic", capacities=[1.5])
    with pytest.raises(ValueError, match="feature"):
        constrained_loss_curve("quadratic", feature=99, n=5)
