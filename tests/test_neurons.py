"""capalloc.neurons against polytopes, brute-force single-feature inputs and capalloc.capacity."""

from __future__ import annotations

import numpy as np
import pytest

import capalloc
from capalloc.neurons import (
    dimensions_per_feature,
    feature_dimensionality,
    neuron_monosemanticity,
    neuron_polysemantic_counts,
)


def _polygon(k):
    a = 2 * np.pi * np.arange(k) / k
    return np.stack([np.cos(a), np.sin(a)])


TETRAHEDRON = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float).T / np.sqrt(3)


@pytest.mark.parametrize(
    ("W", "want"),
    [
        (_polygon(2)[:1], 1 / 2),
        (_polygon(3), 2 / 3),
        (_polygon(5), 2 / 5),
        (TETRAHEDRON, 3 / 4),
        (np.eye(4), 1.0),
    ],
)
def test_fractions_of_the_uniform_polytopes(W, want):
    np.testing.assert_allclose(feature_dimensionality(W), want, rtol=1e-12)
    np.testing.assert_allclose(dimensions_per_feature(W), want, rtol=1e-12)


def test_square_antiprism_has_three_eighths_when_tight():
    # a square antiprism on the unit sphere is a tight frame for one height: W W^T = (8/3) I
    h = np.sqrt(1 / 3)
    top = [
        (np.sqrt(1 - h * h) * np.cos(t), np.sqrt(1 - h * h) * np.sin(t), h)
        for t in np.pi / 2 * np.arange(4)
    ]
    bot = [
        (
            x * np.cos(np.pi / 4) - y * np.sin(np.pi / 4),
            x * np.sin(np.pi / 4) + y * np.cos(np.pi / 4),
            -z,
        )
        for x, y, z in top
    ]
    W = np.array(top + bot).T
    np.testing.assert_allclose(W @ W.T, 8 / 3 * np.eye(3), atol=1e-12)
    np.testing.assert_allclose(feature_dimensionality(W), 3 / 8, rtol=1e-12)


def test_feature_dimensionality_is_the_capacity():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(4, 3, 7))
    W[1, :, 2] = 0.0
    got = feature_dimensionality(W)
    want = np.stack([capalloc.capacity(w) for w in W])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-15)
    assert got[1, 2] == 0.0


def test_dimensions_per_feature_batched_and_torch():
    rng = np.random.default_rng(1)
    W = rng.normal(size=(2, 3, 5, 9))
    want = np.array([[5 / np.sum(w**2) for w in row] for row in W])
    np.testing.assert_allclose(dimensions_per_feature(W), want, rtol=1e-12)
    assert dimensions_per_feature(np.zeros((2, 3))) == np.inf
    torch = pytest.importorskip("torch")
    np.testing.assert_allclose(dimensions_per_feature(torch.tensor(W)).numpy(), want, rtol=1e-12)


def _brute_monosemanticity(W, b):
    d, n = W.shape
    out = np.empty(d)
    for k in range(d):
        acts = [max(0.0, float(W[k] @ np.eye(n)[i] + b[k])) for i in range(n)]
        out[k] = max(acts) / sum(acts) if sum(acts) > 0 else np.nan
    return out


def test_neuron_monosemanticity_against_single_feature_inputs():
    rng = np.random.default_rng(2)
    W = rng.normal(size=(3, 6, 8))
    b = rng.normal(scale=0.5, size=(3, 6))
    b[0, 0] = -50.0  # a dead neuron
    got = neuron_monosemanticity(W, b)
    want = np.stack([_brute_monosemanticity(w, bb) for w, bb in zip(W, b, strict=True)])
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert np.isnan(got[0, 0]) and np.nanmin(got) >= 1 / 8 and np.nanmax(got) <= 1
    counts = neuron_polysemantic_counts(W, b)
    total = counts["monosemantic"] + counts["polysemantic"] + counts["dead"]
    assert total.tolist() == [6, 6, 6] and counts["dead"].tolist() == [1, 0, 0]
    mono = np.sum(np.nan_to_num(want) > 0.999, axis=-1)
    assert counts["monosemantic"].tolist() == mono.tolist()
    torch = pytest.importorskip("torch")
    t = neuron_monosemanticity(torch.tensor(W), torch.tensor(b)).numpy()
    np.testing.assert_allclose(t, want, rtol=1e-12)


def test_monosemantic_threshold():
    W = np.array([[1.0, 0.0005], [1.0, 0.002]])  # 1/1.0005 > 0.999 > 1/1.002
    assert neuron_polysemantic_counts(W)["monosemantic"] == 1
    assert neuron_polysemantic_counts(W, threshold=0.99)["monosemantic"] == 2


def test_bad_input():
    with pytest.raises(ValueError, match="bias"):
        neuron_monosemanticity(np.ones((2, 3)), [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="threshold"):
        neuron_polysemantic_counts(np.ones((2, 3)), threshold=1.5)
    with pytest.raises(ValueError, match="W"):
        dimensions_per_feature(np.ones(3))
