"""Figures of capalloc.plots, rendered headless and checked through their artists."""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

import capalloc  # noqa: E402
from capalloc import plots  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def solved():
    problem = capalloc.QuadraticProblem(0.8 ** np.arange(12), d=5, kurtosis=15.0)
    return problem, capalloc.solve(problem)


def _arrows(ax):
    return [a for a in ax.get_children() if str(a.get_gid() or "").startswith("feature-")]


def _polygon(n):
    angles = 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(angles), np.sin(angles)])


def test_import_does_not_load_matplotlib():
    code = "import sys, capalloc.plots; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_capacities_bars_heights_and_colours(solved):
    _, res = solved
    ax = plots.plot_capacities(res)
    bars = ax.patches
    assert len(bars) == res.capacity.size
    np.testing.assert_allclose([b.get_height() for b in bars], res.capacity)
    for bar, label in zip(bars, res.labels, strict=True):
        assert bar.get_facecolor() == to_rgba(plots.LABEL_COLORS[label])
    colours = {
        lab: {b.get_facecolor() for b, lb in zip(bars, res.labels, strict=True) if lb == lab}
        for lab in set(res.labels)
    }
    assert all(len(c) == 1 for c in colours.values())  # one colour per label
    assert len({next(iter(c)) for c in colours.values()}) == len(colours)  # distinct
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["monosemantic (2)", "polysemantic (9)", "ignored (1)"]


def test_capacities_from_plain_array_and_given_axes():
    fig, ax = plt.subplots()
    out = plots.plot_capacities([1.0, 0.5, 0.0], ax=ax)
    assert out is ax
    assert [b.get_facecolor() for b in ax.patches] == [
        to_rgba(plots.LABEL_COLORS[lab]) for lab in capalloc.LABELS
    ]


def test_capacities_rejects_batches():
    res = capalloc.solve(capalloc.QuadraticProblem(np.ones((2, 3)), d=1, kurtosis=5.0))
    with pytest.raises(ValueError, match="one problem"):
        plots.plot_capacities(res)


def test_marginal_benefit_threshold_and_points(solved):
    problem, res = solved
    ax = plots.plot_marginal_benefit(problem, res)
    (line,) = [ln for ln in ax.get_lines() if ln.get_gid() == "threshold"]
    np.testing.assert_allclose(line.get_ydata(), [res.threshold, res.threshold])
    (points,) = ax.collections[1:2]
    xy = points.get_offsets()
    np.testing.assert_allclose(xy[:, 0], problem.importance)
    np.testing.assert_allclose(xy[:, 1], problem.marginal_benefit(res.capacity))
    poly = res.labels == capalloc.POLYSEMANTIC
    np.testing.assert_allclose(xy[poly, 1], res.threshold, rtol=1e-10)
    (cap_line,) = ax.capacity_axes.get_lines()
    order = np.argsort(problem.importance)
    np.testing.assert_allclose(cap_line.get_ydata(), res.capacity[order])
    assert ax.get_yscale() == "log"


def test_marginal_benefit_separable_problem_uses_index():
    w = np.array([3.0, 2.0, 1.0])
    problem = capalloc.SeparableProblem(
        lambda C: w * (1 - C) ** 2, lambda C: 2 * w * (1 - C), n=3, d=1
    )
    res = capalloc.solve(problem)
    ax = plots.plot_marginal_benefit(problem, res, log=False)
    np.testing.assert_allclose(ax.collections[1].get_offsets()[:, 0], [0, 1, 2])
    assert ax.get_yscale() == "linear"


def test_loss_curves_match_formula():
    Ks = (1.5, 3.0, 9.0)
    ax = plots.plot_loss_curves(2.0, Ks)
    lines = ax.get_lines()
    assert len(lines) == 3
    for line, K in zip(lines, Ks, strict=True):
        C = line.get_xdata()
        expected = 2 * (1 - C) / (2 + (K - 3) * C)  # loss / loss(0)
        np.testing.assert_allclose(line.get_ydata(), expected, atol=1e-12)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [lab.split("(")[1] for lab in labels] == ["concave)", "linear)", "convex)"]
    raw = plots.plot_loss_curves(2.0, 9.0, normalize=False)
    C = raw.get_lines()[0].get_xdata()
    np.testing.assert_allclose(raw.get_lines()[0].get_ydata(), 2 * 8 * 4 * (1 - C) / (2 + 6 * C))


def test_embedding_2d_counts_nonzero_columns():
    W = np.hstack([_polygon(5), np.zeros((2, 2))])
    ax = plots.plot_embedding(W)
    arrows = _arrows(ax)
    assert len(arrows) == 5
    assert sorted(a.get_gid() for a in arrows) == [f"feature-{i}" for i in range(5)]


def test_embedding_1d_and_3d():
    ax = plots.plot_embedding(np.array([[1.0, -1.0, 0.0]]))
    assert len(_arrows(ax)) == 2
    tetra = np.array([[1, 1, -1, -1], [1, -1, 1, -1], [1, -1, -1, 1]], dtype=float)
    ax3 = plots.plot_embedding(tetra)
    assert ax3.name == "3d"
    assert len(_arrows(ax3)) == 4
    with pytest.raises(ValueError, match="d <= 3"):
        plots.plot_embedding(np.eye(4))
    with pytest.raises(ValueError, match="3-D"):
        plots.plot_embedding(tetra, ax=plt.subplots()[1])


def test_embedding_colours_follow_blocks(monkeypatch):
    Block = types.SimpleNamespace
    fake = types.ModuleType("capalloc.geometry")
    fake.find_blocks = lambda W, tol=1e-6: [Block(features=[0, 1]), Block(features=[2, 3, 4])]
    monkeypatch.setitem(sys.modules, "capalloc.geometry", fake)
    W = np.array([[1.0, -1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, -0.5, -0.5]])
    colours = {a.get_gid(): a.get_edgecolor() for a in _arrows(plots.plot_embedding(W))}
    assert colours["feature-0"] == colours["feature-1"]
    assert colours["feature-2"] == colours["feature-3"] == colours["feature-4"]
    assert colours["feature-0"] != colours["feature-2"]


def test_embedding_with_real_geometry():
    pytest.importorskip("capalloc.geometry")
    W = np.hstack([_polygon(3), np.zeros((2, 1))])
    assert len(_arrows(plots.plot_embedding(W))) == 3


def test_capacity_histogram_counts(rng):
    C = capalloc.capacity(rng.standard_normal((8, 100)))
    C[:3] = [0.0, 1.0, 1.0]
    ax = plots.plot_capacity_histogram(C, bins=10)
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == 10
    assert sum(heights) == 100
    assert heights[-1] >= 2 and heights[0] >= 1
    with pytest.raises(ValueError):
        plots.plot_capacity_histogram(C, bins=0)


def test_figures_save_to_png(tmp_path, solved):
    problem, res = solved
    fig, axes = plt.subplots(1, 2)
    plots.plot_capacities(res, ax=axes[0])
    plots.plot_marginal_benefit(problem, res, ax=axes[1])
    fig.savefig(tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
