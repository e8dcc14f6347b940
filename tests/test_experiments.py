"""Tests of capalloc.experiments.reproductions and the ``capalloc experiment`` CLI handlers."""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import capalloc
from capalloc.experiments import reproductions as ex

mpl = pytest.importorskip("matplotlib")
mpl.use("Agg")


# ----------------------------------------------------------------------------- exact curve


def test_exact_polysemanticity_rises_with_sparsity():
    v = 0.9 ** np.arange(20)
    S = np.linspace(0.0, 0.995, 400)
    curve = ex.exact_sparsity_curve(S, v, d=10)
    np.testing.assert_allclose(curve["kurtosis"], 3 / (1 - S))
    for key in (
        "polysemantic_fraction",
        "polysemantic_fraction_all",
        "capacity_held_by_poly",
        "n_poly",
    ):
        assert np.all(np.diff(curve[key]) >= -1e-12), key
    assert curve["polysemantic_fraction"][0] == 0 and curve["polysemantic_fraction"][-1] >= 0.85
    assert np.all(curve["n_mono"] + curve["n_poly"] + curve["n_ignored"] == 20)
    # the batched curve agrees with one solve per row
    for i in (0, 150, 399):
        res = capalloc.solve(capalloc.QuadraticProblem(v, 10, curve["kurtosis"][i]))
        assert int(np.sum(res.labels == "polysemantic")) == curve["n_poly"][i]


def test_exact_curve_rejects_bad_sparsity():
    with pytest.raises(ValueError, match="sparsities"):
        ex.exact_sparsity_curve([0.5, 1.0], np.ones(3), 1)
    with pytest.raises(ValueError, match="sparsities"):
        ex.exact_sparsity_curve([], np.ones(3), 1)


# ----------------------------------------------------------------------------- phase diagram


def _analytic_regime(K, r):
    """Two features, one neuron, importances (1, r): regime of the second feature."""
    KK, RR = np.meshgrid(K, r, indexing="ij")
    poly = KK > 1 + 2 * np.maximum(RR, 1 / RR)
    return np.where(poly, 1, np.where(RR > 1, 0, 2)), KK, RR


def test_phase_diagram_matches_the_analytic_boundary():
    pd = ex.phase_diagram()  # 200 x 200 cells, one batched problem
    assert pd.regime.shape == (200, 200)
    expected, KK, RR = _analytic_regime(pd.kurtosis, pd.ratio)
    boundary = 1 + 2 * np.maximum(RR, 1 / RR)
    dK = np.diff(pd.kurtosis).max()
    away = (np.abs(KK - boundary) > 1.5 * dK) & (np.abs(np.log(RR)) > 0.03)
    assert away.mean() > 0.9
    np.testing.assert_array_equal(pd.regime[away], expected[away])
    # the mismatches, if any, sit in the band around the boundary
    assert np.mean(pd.regime != expected) < 0.02
    np.testing.assert_allclose(pd.analytic_boundary(), boundary[0])
    assert set(np.unique(pd.labels)) == {"monosemantic", "polysemantic", "ignored"}
    assert "PhaseDiagram(grid=(200, 200)" in repr(pd)


def test_phase_diagram_capacity_matches_the_closed_form():
    # polysemantic optimum of (c x1 + e x2)^2: C_2 = e^2 / (c^2 + e^2)
    K = np.array([8.0, 12.0, 30.0])
    r = np.array([0.5, 0.8])
    pd = ex.phase_diagram(K, r)
    KK, RR = np.meshgrid(K, r, indexing="ij")
    a, b = 1.0, RR
    c2 = (KK - 1) * (a * KK - a - 2 * b) / ((KK - 3) * (KK + 1))
    e2 = (KK - 1) * (b * KK - b - 2 * a) / ((KK - 3) * (KK + 1))
    np.testing.assert_allclose(pd.capacity, e2 / (c2 + e2), rtol=1e-9)


def test_phase_diagram_many_features_agrees_with_row_solves():
    v = np.array([1.0, 0.8, 0.6, 0.4])
    K = np.array([2.0, 5.0, 20.0])
    r = np.array([0.3, 1.0, 2.5])
    pd = ex.phase_diagram(K, r, importance=v, d=2, feature=2)
    for i, k in enumerate(K):
        for j, q in enumerate(r):
            w = v.copy()
            w[2] *= q
            res = capalloc.solve(capalloc.QuadraticProblem(w, 2, k))
            assert pd.labels[i, j] == res.labels[2]
            assert pd.capacity[i, j] == pytest.approx(res.capacity[2])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kurtosis_grid=[0.5, 2.0]), "kurtosis"),
        (dict(ratio_grid=[0.0, 1.0]), "ratio_grid"),
        (dict(ratio_grid=[]), "ratio_grid"),
        (dict(feature=2), "feature"),
        (dict(importance=[1.0, -1.0]), "importance"),
    ],
)
def test_phase_diagram_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ex.phase_diagram(**{"kurtosis_grid": [4.0], "ratio_grid": [1.0], **kwargs})


def test_plot_phase_diagram_with_trained_points(tmp_path):
    pd = ex.phase_diagram(np.linspace(1.5, 20, 30), np.geomspace(0.1, 10, 30))
    trained = [
        {"kurtosis": 10.0, "ratio": 0.7, "label": "polysemantic", "exact_label": "polysemantic"},
        {"kurtosis": 4.0, "ratio": 3.0, "label": "polysemantic", "exact_label": "monosemantic"},
    ]
    fig = ex.plot_phase_diagram(pd, trained)
    assert len(fig.axes) == 4  # the map and three marginal-benefit panels
    titles = " ".join(ax.get_title() for ax in fig.axes[1:])
    assert "increasing" in titles and "constant" in titles and "diminishing" in titles
    fig.savefig(tmp_path / "pd.png", dpi=40)
    assert (tmp_path / "pd.png").stat().st_size > 0


def test_train_phase_points_rejects_low_kurtosis():
    with pytest.raises(ValueError, match="kurtosis >= 3"):
        ex.train_phase_points([(2.0, 1.0)])


def test_train_phase_points_agree_with_the_exact_regime():
    pytest.importorskip("torch")
    pts = [(4.0, 0.3), (4.0, 3.0), (15.0, 1.0)]
    out = ex.train_phase_points(pts, steps=600, batch_size=512)
    assert [t["exact_label"] for t in out] == ["ignored", "monosemantic", "polysemantic"]
    assert [t["label"] for t in out] == [t["exact_label"] for t in out]
    assert out[2]["capacity"] == pytest.approx(0.5, abs=0.05)


# ----------------------------------------------------------------------------- sparsity sweep

SMALL = dict(n=6, d=3, steps=60, batch_size=128)


def test_sparsity_sweep_rows_and_resume(tmp_path):
    pytest.importorskip("torch")
    with ThreadPoolExecutor(1) as pool:
        rows = ex.sparsity_sweep(
            ("quadratic", "relu-ae"), (0.0, 0.9), seeds=2, **SMALL, out_dir=tmp_path, executor=pool
        )
        assert [(r["model"], r["sparsity"]) for r in rows] == [
            ("quadratic", 0.0),
            ("quadratic", 0.9),
            ("relu-ae", 0.0),
            ("relu-ae", 0.9),
            ("quadratic-exact", 0.0),
            ("quadratic-exact", 0.9),
        ]
        assert len(list(tmp_path.glob("*.json"))) == 4
        again = ex.sparsity_sweep(
            ("quadratic", "relu-ae"), (0.0, 0.9), seeds=2, **SMALL, out_dir=tmp_path, executor=pool
        )
    assert again == rows  # loaded from the resume directory
    json.dumps(rows)  # JSON-ready
    q = rows[1]
    assert q["kurtosis"] == pytest.approx(30.0) and len(q["polysemantic_fraction_seeds"]) == 2
    assert q["polysemantic_fraction"] == pytest.approx(np.mean(q["polysemantic_fraction_seeds"]))
    assert rows[2]["kurtosis"] is None
    assert rows[5]["polysemantic_fraction"] == 1.0 and rows[4]["polysemantic_fraction"] == 0.0


def test_sparsity_sweep_in_process_without_exact(tmp_path):
    pytest.importorskip("torch")
    rows = ex.sparsity_sweep("gelu", [0.5], seeds=1, **SMALL, exact=False, workers=0)
    assert len(rows) == 1 and rows[0]["model"] == "gelu"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(models=["tanh"]), "models must be drawn"),
        (dict(sparsities=[1.0]), "sparsities"),
        (dict(seeds=0), "seeds"),
        (dict(workers=-1), "workers"),
    ],
)
def test_sparsity_sweep_bad_input(kwargs, match):
    pytest.importorskip("torch")
    with pytest.raises(ValueError, match=match):
        ex.sparsity_sweep(**kwargs)


FAKE_ROWS = [
    {
        "model": m,
        "sparsity": s,
        "n": 20,
        "d": 10,
        "polysemantic_fraction": f,
        "polysemantic_fraction_std": 0.05,
        "polysemantic_fraction_all": f,
        "capacity_held_by_poly": f,
        "block_shapes": b,
    }
    for m, s, f, b in [
        ("quadratic", 0.0, 0.0, {"1x1": 30}),
        ("quadratic", 0.9, 0.85, None),
        ("relu-ae", 0.0, 0.0, {"1x1": 30}),
        ("relu-ae", 0.9, 1.0, {"1x2": 30}),
        ("quadratic-exact", 0.9, 0.85, None),
    ]
]


def test_plot_sparsity_sweep_and_block_sizes():
    ax = ex.plot_sparsity_sweep(FAKE_ROWS)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(labels) == [
        "quadratic (exact, solver)",
        "quadratic (trained)",
        "relu-ae (trained)",
    ]
    assert ax.xaxis_inverted()
    table = ex.block_size_table(FAKE_ROWS)
    assert table == {"quadratic": {"1x1": 30}, "relu-ae": {"1x1": 30, "1x2": 30}}
    bx = ex.plot_block_sizes(FAKE_ROWS)
    assert len(bx.patches) == 4  # two models x block sizes {1, 2}
    empty = ex.plot_block_sizes([{**r, "block_shapes": None} for r in FAKE_ROWS])
    assert "no block data" in empty.texts[0].get_text()


# ----------------------------------------------------------------------------- CLI handlers


def _parse(argv):
    from capalloc.cli.experiment import add_experiment_parser

    top = argparse.ArgumentParser(prog="capalloc")
    add_experiment_parser(top.add_subparsers())
    return top.parse_args(argv)


def test_cli_sparsity_json_and_table(tmp_path, capsys):
    pytest.importorskip("torch")
    base = [
        "experiment",
        "sparsity",
        "--model",
        "quadratic",
        "--sparsities",
        "0",
        "0.9",
        "--seeds",
        "2",
        "--steps",
        "40",
        "--n",
        "6",
        "--d",
        "3",
        "--batch-size",
        "64",
        "--workers",
        "0",
        "--out-dir",
        str(tmp_path / "sweep"),
    ]
    args = _parse(
        [
            *base,
            "--json",
            "--plot",
            str(tmp_path / "s.png"),
            "--plot-blocks",
            str(tmp_path / "b.png"),
        ]
    )
    assert args.func(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == [
        "quadratic",
        "quadratic",
        "quadratic-exact",
        "quadratic-exact",
    ]
    for r in rows:
        assert {"sparsity", "polysemantic_fraction", "polysemantic_fraction_std"} <= set(r)
    assert (tmp_path / "s.png").stat().st_size > 0 and (tmp_path / "b.png").exists()
    args = _parse(base)  # resumed from the directory: a table
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "poly frac" in out and "quadratic-exact" in out


@pytest.mark.slow  # starts worker processes that import torch (~10-30 s)
def test_cli_sparsity_default_pool(tmp_path, capsys):
    pytest.importorskip("torch")
    args = _parse(
        [
            "experiment",
            "sparsity",
            "--model",
            "relu",
            "gelu",
            "--sparsities",
            "0.5",
            "--seeds",
            "1",
            "--steps",
            "20",
            "--n",
            "5",
            "--d",
            "2",
            "--no-exact",
            "--json",
            "--workers",
            "2",
            "--out-dir",
            str(tmp_path),
        ]
    )
    assert args.func(args) == 0
    assert [r["model"] for r in json.loads(capsys.readouterr().out)] == ["relu", "gelu"]


def test_cli_phase_diagram(tmp_path, capsys):
    out = tmp_path / "pd.png"
    args = _parse(
        [
            "experiment",
            "phase-diagram",
            "-o",
            str(out),
            "--resolution",
            "40",
            "--json",
            "--dpi",
            "40",
        ]
    )
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["grid"] == [40, 40] and sum(summary["cells"].values()) == 1600
    assert out.stat().st_size > 0


def test_cli_experiment_without_subcommand(capsys):
    args = _parse(["experiment"])
    assert args.func(args) == 2
    assert "choose an experiment" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["experiment", "sparsity", "--sparsities", "1.5"],
        ["experiment", "sparsity", "--seeds", "0"],
        ["experiment", "sparsity", "--model", "tanh"],
        ["experiment", "sparsity", "--device", "tpu"],
        ["experiment", "phase-diagram"],  # -o is required
    ],
)
def test_cli_rejects_bad_arguments(argv):
    with pytest.raises(SystemExit):
        _parse(argv)


def test_cli_via_main(tmp_path, capsys):
    cli = pytest.importorskip("capalloc.cli.main")
    status = cli.main(
        ["experiment", "phase-diagram", "-o", str(tmp_path / "x.png"), "--resolution", "20"]
    )
    assert status == 0 and "solved in" in capsys.readouterr().out
