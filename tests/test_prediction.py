"""Prediction of trained allocations (issue 17): exact group losses against independent
references (closed forms, Monte Carlo, a separately coded quadrature minimised by scipy),
and predictions against trained models."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import optimize

from capalloc.prediction import GROUP_TYPES, feature_loss, ignored_loss, optimise_group
from capalloc.prediction.compare import capacity_error, make_importance, predict_capacity
from capalloc.prediction.relu_ae import group_loss, predict_relu_ae

PAIR, TRIANGLE, PENTAGON = GROUP_TYPES[1], GROUP_TYPES[2], GROUP_TYPES[3]


def _mc_feature_loss(a, c, b, density, samples=400_000, seed=0):
    """Monte Carlo of E[(x_i - ReLU(a x_i + sum_j c_j x_j + b))^2], sparse uniform inputs."""
    rng = np.random.default_rng(seed)
    k = 1 + len(c)
    x = rng.random((samples, k)) * (rng.random((samples, k)) < density)
    out = np.maximum(a * x[:, 0] + x[:, 1:] @ np.asarray(c, dtype=float) + b, 0.0)
    err = (x[:, 0] - out) ** 2
    return err.mean(), err.std() / np.sqrt(samples)


@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
def test_closed_forms(density):
    S = 1 - density
    assert feature_loss(1.0, [], 0.0, S) == pytest.approx(0.0, abs=1e-12)
    assert feature_loss(1.0, [-1.0], 0.0, S) == pytest.approx(density**2 / 6, rel=1e-6)
    assert feature_loss(0.0, [], density / 2, S) == pytest.approx(
        density / 3 - density**2 / 4, rel=1e-9
    )
    assert ignored_loss(S) == pytest.approx(density / 3 - density**2 / 4)


@pytest.mark.parametrize(
    ("a", "c", "b", "density"),
    [
        (0.9, [-0.8], 0.1, 0.5),
        (1.2, [0.3, -0.9], -0.15, 0.3),  # positive and negative interference
        (0.7, [-0.4, 0.2, -0.6, 0.5], 0.05, 0.6),  # four interferers: the Sobol part
    ],
)
def test_feature_loss_against_monte_carlo(a, c, b, density):
    mc, se = _mc_feature_loss(a, c, b, density)
    assert feature_loss(a, c, b, 1 - density) == pytest.approx(mc, abs=4 * se + 2e-4)


def _pair_total_midpoint(params, density, importance=(1.0, 1.0), m=300):
    """Loss of two features in one dimension, W = (w1, w2), biases b1, b2, coded
    independently: midpoint rule over the four activation patterns."""
    w1, w2, b1, b2 = params
    u = (np.arange(m) + 0.5) / m
    x, y = np.meshgrid(u, u, indexing="ij")
    s, q = density, 1 - density
    total = 0.0
    for imp, (aa, cc, bb) in zip(
        importance, [(w1 * w1, w1 * w2, b1), (w2 * w2, w1 * w2, b2)], strict=True
    ):
        both = ((x - np.maximum(aa * x + cc * y + bb, 0)) ** 2).mean()
        own = ((u - np.maximum(aa * u + bb, 0)) ** 2).mean()
        other = (np.maximum(cc * u + bb, 0) ** 2).mean()
        none = max(bb, 0.0) ** 2
        total += imp * (s * s * both + s * q * own + q * s * other + q * q * none)
    return total


@pytest.mark.parametrize(("density", "expected"), [(0.45, 0.0634), (0.7, 0.1081)])
def test_pair_optimum_against_direct_minimisation(density, expected):
    best = optimise_group(PAIR, 1 - density)
    direct = optimize.minimize(
        _pair_total_midpoint,
        [1.0, -1.0, 0.0, 0.0],
        args=(density,),
        method="Nelder-Mead",
        options={"xatol": 1e-7, "fatol": 1e-11, "maxiter": 4000},
    )
    assert best["loss"] == pytest.approx(direct.fun, abs=2e-4)
    assert best["loss"] == pytest.approx(expected, abs=1e-4)  # the n = 2, d = 1 minima quoted
    # in docs/prediction.md: at density 0.7 the biased pair beats ignoring one feature
    if density == 0.7:
        assert best["loss"] < ignored_loss(1 - density)


def test_unequal_pair_and_separability():
    S, imp = 0.5, np.array([1.0, 0.6])
    joint = optimise_group(PAIR, S, imp, symmetric=False)
    direct = optimize.minimize(
        _pair_total_midpoint,
        [1.0, -1.0, 0.1, 0.1],
        args=(0.5, tuple(imp)),
        method="Nelder-Mead",
        options={"xatol": 1e-7, "fatol": 1e-11, "maxiter": 4000},
    )
    assert joint["loss"] == pytest.approx(direct.fun, abs=2e-4)
    separable = optimise_group(PAIR, S)["loss"] / 2 * imp.sum()
    assert joint["loss"] <= separable + 1e-9  # the interaction term is a gain
    assert separable - joint["loss"] < 0.05 * separable  # and a small one
    assert joint["capacity"][0] > 0.5 > joint["capacity"][1]  # the stronger gets more


def test_polygon_loss_against_monte_carlo():
    fit = optimise_group(TRIANGLE, 0.8)
    u, b = fit["norms"][0], fit["biases"][0]
    c = u * u * np.cos(2 * np.pi / 3)
    mc, se = _mc_feature_loss(u * u, [c, c], b, 0.2)
    assert fit["loss"] / 3 == pytest.approx(mc, abs=4 * se + 2e-4)
    assert group_loss(TRIANGLE, [u] * 3, [b] * 3, 0.8).sum() == pytest.approx(fit["loss"])
    np.testing.assert_allclose(fit["capacity"], 2 / 3, atol=1e-9)


def test_predict_dense_and_sparse():
    dense = predict_relu_ae(0.9 ** np.arange(6), 3, 0.0, types=GROUP_TYPES[:2])
    assert dense.capacity.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    sparse = predict_relu_ae(np.ones(4), 2, 0.8, types=GROUP_TYPES[:2])
    np.testing.assert_allclose(sparse.capacity, 0.5, atol=1e-3)  # two antipodal pairs
    assert sparse.loss <= sparse.separable_loss + 1e-9


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: predict_relu_ae([1.0, -1.0], 1, 0.5), "importance"),
        (lambda: predict_relu_ae([1.0], -1, 0.5), "d must"),
        (lambda: predict_relu_ae([1.0], 1, 1.0), "sparsity"),
        (lambda: predict_capacity("mlp", [1.0], 1, 0.5), "model"),
        (lambda: make_importance(3, "zipf"), "importance"),
        (lambda: capacity_error([1.0], [1.0, 0.0]), "same shape"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_quadratic_prediction_matches_exact_training():
    from capalloc import QuadraticProblem
    from capalloc.training import train_quadratic

    v, S = make_importance(8), 0.8
    trained = train_quadratic(QuadraticProblem(v, 4, kurtosis=3 / (1 - S)), restarts=2)
    assert capacity_error(predict_capacity("quadratic", v, 4, S), trained.capacity) < 1e-3


@pytest.mark.slow
def test_relu_ae_prediction_against_training():
    pytest.importorskip("torch")
    from capalloc.training import TrainConfig
    from capalloc.training.torch_models import train_model

    run = train_model(
        "relu-ae", np.ones(8), d=4, sparsity=[0.7, 0.7], config=TrainConfig(steps=1500, seed=1)
    )
    pred = predict_relu_ae(np.ones(8), 4, 0.7, types=GROUP_TYPES[:3]).capacity
    errors = [capacity_error(pred, c) for c in run.effective_capacity]
    assert np.mean(errors) < 0.05


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "capalloc.cli", "experiment", "predict", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_predict_no_train_json():
    out = _cli(
        "--model",
        "quadratic",
        "--n",
        "6",
        "--d",
        "3",
        "--sparsities",
        "0.5",
        "--no-train",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    assert row["model"] == "quadratic" and row["sparsity"] == 0.5
    assert len(row["predicted_capacity"]) == 6 and sum(row["predicted_capacity"]) <= 3 + 1e-6


def test_cli_predict_bad_sparsity():
    out = _cli("--sparsities", "1.5")
    assert out.returncode == 2
    assert "sparsity must lie in [0, 1)" in out.stderr


def test_capacity_penalty_against_numpy():
    torch = pytest.importorskip("torch")
    from capalloc.prediction.regularise import capacity_penalty

    rng = np.random.default_rng(3)
    W = rng.normal(size=(3, 5))
    G = W.T @ W
    C = np.diag(G) ** 2 / (G**2).sum(1)  # the capacity formula, coded here
    Wt = torch.tensor(W, requires_grad=True)
    P = capacity_penalty(Wt)
    assert float(P.detach()) == pytest.approx((C * (1 - C)).sum(), rel=1e-10)
    P.backward()
    assert torch.isfinite(Wt.grad).all()
    assert float(capacity_penalty(torch.eye(3, 4))) == 0.0  # monosemantic and ignored


@pytest.mark.slow
def test_frontier_trades_loss_for_monosemanticity():
    pytest.importorskip("torch")
    from capalloc.prediction.regularise import frontier

    rows = frontier(strengths=(0.0, 0.3), n=8, d=4, sparsity=0.8, seeds=1, steps=800)
    free, forced = rows
    assert forced["polysemantic_fraction"] < free["polysemantic_fraction"]
    assert forced["loss"] > free["loss"]


_ROW_KEYS = {
    "model",
    "sparsity",
    "intervention",
    "value",
    "width",
    "loss",
    "polysemantic_fraction",
    "penalty",
    "total_capacity",
    "represented",
    "dead_outputs",
}


def test_interventions_bias_and_width_against_the_penalty():
    pytest.importorskip("torch")
    from capalloc.prediction.regularise import frontier, interventions

    setting = {"n": 6, "d": 3, "sparsity": 0.8, "seeds": 1, "steps": 300}
    rows = interventions(strengths=(0.0,), biases=(0.0, -5.0), widths=(3, 6), **setting)
    assert [(r["intervention"], r["value"], r["width"]) for r in rows] == [
        ("penalty", 0.0, 3),
        ("bias", 0.0, 3),
        ("bias", -5.0, 3),
        ("width", 3, 3),
        ("width", 6, 6),
    ]
    for r in rows:
        assert set(r) == _ROW_KEYS
        assert r["loss"] >= 0 and 0 <= r["polysemantic_fraction"] <= 1
        assert r["total_capacity"] <= r["width"] + 1e-6 and 0 <= r["represented"] <= 6
    penalty, free, dead, narrow, wide = rows
    # the penalty rows are frontier's rows (one code path)
    (same,) = frontier(strengths=(0.0,), **setting)
    assert {k: penalty[k] for k in same if k != "strength"} == {
        k: v for k, v in same.items() if k != "strength"
    }
    # a bias of -5 at initialisation switches every output off: no gradient ever reaches W
    assert dead["dead_outputs"] == 6 and free["dead_outputs"] == 0
    assert dead["loss"] > 3 * free["loss"]
    # d' = n: room for every feature alone, so monosemantic and (near) lossless
    assert narrow["polysemantic_fraction"] > 0.5
    assert wide["polysemantic_fraction"] == 0.0 and wide["total_capacity"] > 5.9
    assert wide["loss"] < 0.1 * narrow["loss"]
    assert narrow["width"] == 3 and narrow["total_capacity"] <= 3 + 1e-6


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"biases": (0.0, float("nan"))}, "biases"),
        ({"biases": "x"}, "biases"),
        ({"widths": (0, 3)}, "widths"),
        ({"widths": (2.5,)}, "widths"),
        ({"widths": (True,)}, "widths"),
        ({"strengths": (-0.1,)}, "strengths"),
        ({"fixed_bias": "yes"}, "fixed_bias"),
        ({"strengths": (), "biases": (), "widths": ()}, "all empty"),
        ({"seeds": 0, "biases": (), "widths": ()}, "seeds"),
    ],
)
def test_interventions_bad_arguments(kwargs, match):
    pytest.importorskip("torch")
    from capalloc.prediction.regularise import interventions

    with pytest.raises(ValueError, match=match):
        interventions(n=4, d=2, steps=1, **kwargs)


def test_cli_frontier_interventions_json(capsys):
    pytest.importorskip("torch")
    from capalloc.cli.main import main

    args = ["experiment", "frontier", "--model", "relu-ae", "--interventions", "--json"]
    small = ["--n", "4", "--d", "2", "--seeds", "1", "--steps", "20", "--strengths", "0", "0.1"]
    assert main([*args, *small, "--biases", "-0.1", "--widths", "2", "4"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["intervention"] for r in rows] == ["penalty", "penalty", "bias", "width", "width"]
    assert all(set(r) == _ROW_KEYS for r in rows)
    for bad, message in [
        (["--widths", "0"], "widths must be positive integers"),
        (["--biases", "inf"], "biases must be finite numbers"),
    ]:
        assert main([*args, *small, *bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("capalloc: error: ") and message in err and err.count("\n") == 1
    assert main(["experiment", "frontier", "--widths", "3"]) == 2
    assert capsys.readouterr().err == "capalloc: error: --widths needs --interventions\n"


def test_prediction_rows_keep_the_best_restart_of_each_seed():
    pytest.importorskip("torch")
    from capalloc.prediction.compare import prediction_rows
    from capalloc.training import TrainConfig
    from capalloc.training.torch_models import train_model

    kw = {"n": 6, "d": 3, "sparsities": [0.8], "seeds": 2, "steps": 60, "seed": 4}
    (row,) = prediction_rows("quadratic", restarts=3, **kw)
    # the same six runs, laid out (sparsity, seed, restart)
    run = train_model(
        "quadratic",
        make_importance(6),
        d=3,
        sparsity=[0.8] * 6,
        config=TrainConfig(steps=60, seed=4),
    )
    losses = np.asarray(run.loss).reshape(2, 3)
    np.testing.assert_allclose(row["trained_loss"], losses.min(axis=1).round(6))
    assert row["restarts"] == 3 and row["predicted_loss"] is None
    best = np.asarray(run.effective_capacity).reshape(2, 3, 6)[np.arange(2), losses.argmin(axis=1)]
    np.testing.assert_allclose(row["trained_capacity"], np.sort(best, axis=1)[:, ::-1].round(4))
    with pytest.raises(ValueError, match="restarts"):
        prediction_rows("quadratic", restarts=0, **kw)


def _non_crossing(items):
    """Every non-crossing perfect matching of the list ``items`` (independent enumeration)."""
    if not items:
        yield []
        return
    first = items[0]
    for k in range(1, len(items), 2):
        for inner in _non_crossing(items[1:k]):
            for outer in _non_crossing(items[k + 1 :]):
                yield [(first, items[k]), *inner, *outer]


def test_best_pairing_is_the_cheapest_non_crossing_matching():
    from capalloc.prediction.relu_ae import _best_pairing

    pair = next(t for t in GROUP_TYPES if t.k == 2)
    imp, S = 0.6 ** np.arange(6), 0.8
    got = _best_pairing(pair, S, imp)
    got_cost = sum(f["loss"] for _, _, f in got)
    costs = {
        tuple(m): sum(optimise_group(pair, S, imp[[a, b]], symmetric=False)["loss"] for a, b in m)
        for m in _non_crossing(list(range(6)))
    }
    assert len(costs) == 5  # Catalan(3)
    best = min(costs, key=costs.get)
    assert sorted((a, b) for a, b, _ in got) == sorted(best)
    assert got_cost == pytest.approx(costs[best], rel=1e-6)
    # unequal partners pay: nesting beats neighbours here
    assert costs[((0, 5), (1, 4), (2, 3))] < costs[((0, 1), (2, 3), (4, 5))]
