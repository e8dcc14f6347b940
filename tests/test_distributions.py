"""Tests of :mod:`capalloc.distributions` (spec section 2).

Each law's exact moments are compared with sample moments, within five
standard errors estimated from the same sample.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from capalloc import distributions as D

N_SAMPLES = 200_000
N_FEATURES = 3
Z = 5.0  # tolerance in standard errors

# Measured (2e5 samples per feature, numpy and torch, the 12 laws below and the mixed
# PerFeature law; about 300 comparisons): largest deviation 2.9 SE for the mean, 3.0 SE
# for E[x^2], 2.7 SE for E[x^4] and 3.3 SE for E[x_i^2 x_j^2]; typical 1-2 SE.

LAWS = {
    "gaussian": (D.Gaussian(), 3.0),
    "uniform": (D.Uniform(), 9 / 5),
    "rademacher": (D.Rademacher(), 1.0),
    "sparse-gaussian-0.1": (D.Sparse(D.Gaussian(), 0.1), 30.0),
    "sparse-uniform-0.5": (D.Sparse(D.Uniform(), 0.5), 3.6),
    "sparse-rademacher-0.25": (D.Sparse(D.Rademacher(), 0.25), 4.0),
    "sparse-default": (D.Sparse(), 3.0),
    "sparse-of-sparse": (D.Sparse(D.Sparse(D.Gaussian(), 0.5), 0.5), 12.0),
    "threepoint-1": (D.ThreePoint(1.0), 1.0),
    "threepoint-5": (D.ThreePoint(5.0), 5.0),
    "from-kurtosis-3": (D.from_kurtosis(3.0), 3.0),
    "from-kurtosis-7.5": (D.from_kurtosis(7.5), 7.5),
}


def _as_numpy(x):
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def _draw(law, backend, seed=0, n_features=N_FEATURES):
    if backend == "torch":
        torch = pytest.importorskip("torch")
        return _as_numpy(
            law.sample(N_SAMPLES, n_features, seed=seed, backend="torch", dtype=torch.float64)
        )
    return law.sample(N_SAMPLES, n_features, seed=seed)


def assert_mean_close(values: np.ndarray, expected, label: str) -> float:
    """Column means of ``values`` equal ``expected`` within Z sample standard errors.

    Returns the largest deviation in standard errors (0 for a constant sample).
    """
    mean = values.mean(axis=0)
    se = values.std(axis=0, ddof=1) / math.sqrt(values.shape[0])
    dev = np.abs(mean - expected)
    assert np.all(dev <= Z * se + 1e-12), f"{label}: mean {mean}, expected {expected}, se {se}"
    return float(np.max(np.where(se > 0, dev / np.where(se > 0, se, 1), 0)))


# ---------------------------------------------------------------------------
# Exact moments
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LAWS))
def test_exact_kurtosis_attribute(name):
    law, K = LAWS[name]
    assert law.kurtosis == pytest.approx(K, rel=1e-15)
    assert law.fourth_moment == law.kurtosis
    assert law.mean == 0.0 and law.variance == 1.0


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("name", list(LAWS))
def test_sample_moments_match_exact_moments(name, backend):
    law, K = LAWS[name]
    x = _draw(law, backend, seed=11)
    assert x.shape == (N_SAMPLES, N_FEATURES) and x.dtype == np.float64
    assert_mean_close(x, 0.0, "mean")
    assert_mean_close(x**2, 1.0, "variance")
    assert_mean_close(x**4, K, "fourth moment")
    # Independence between features: E[x_i^2 x_j^2] = 1 (the only cross moment in the loss).
    assert_mean_close(x[:, :1] ** 2 * x[:, 1:] ** 2, 1.0, "E[x_i^2 x_j^2]")


@pytest.mark.parametrize("base", [D.Gaussian(), D.Uniform(), D.Rademacher(), D.ThreePoint(4.0)])
@pytest.mark.parametrize("p", [1.0, 0.5, 0.3, 0.01, 1e-6])
def test_sparse_kurtosis_is_base_over_p(base, p):
    assert D.Sparse(base, p).kurtosis == base.kurtosis / p


@pytest.mark.parametrize("p", [0.05, 0.3, 1.0])
def test_sparse_activity_rate(p):
    x = D.Sparse(D.Gaussian(), p).sample(N_SAMPLES, 2, seed=3)
    assert_mean_close((x != 0).astype(float), p, "active fraction")
    active = x[x != 0]
    # Active values are the base law scaled by 1/sqrt(p): variance 1/p.
    assert_mean_close(active[:, None] ** 2 * p, 1.0, "active variance")


@pytest.mark.parametrize("K", [1.0, 1.5, 3.0, 12.0])
def test_three_point_law(K):
    x = D.ThreePoint(K).sample(N_SAMPLES, 2, seed=4)
    root = math.sqrt(K)
    assert np.all(np.isclose(np.abs(x), root, rtol=1e-14) | (x == 0))
    assert_mean_close((x > 0).astype(float), 1 / (2 * K), "P(x = +sqrt K)")
    assert_mean_close((x < 0).astype(float), 1 / (2 * K), "P(x = -sqrt K)")


def test_support_of_uniform_and_rademacher():
    u = D.Uniform().sample(10_000, 2, seed=0)
    assert np.all(np.abs(u) <= math.sqrt(3))
    r = D.Rademacher().sample(10_000, 2, seed=0)
    assert set(np.unique(r)) == {-1.0, 1.0}


def test_from_kurtosis():
    assert isinstance(D.from_kurtosis(3.0), D.Gaussian)
    law = D.from_kurtosis(7.5)
    assert isinstance(law, D.ThreePoint) and law.kurtosis == 7.5
    assert D.from_kurtosis(1).kurtosis == 1.0


# ---------------------------------------------------------------------------
# Per-feature laws
# ---------------------------------------------------------------------------

MIXED = [D.Gaussian(), D.Uniform(), D.Rademacher(), D.Sparse(D.Gaussian(), 0.2), D.ThreePoint(6.0)]
MIXED_K = np.array([3.0, 1.8, 1.0, 15.0, 6.0])


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_per_feature_moments(backend):
    law = D.PerFeature(MIXED)
    np.testing.assert_allclose(law.kurtosis, MIXED_K, rtol=1e-15)
    x = _draw(law, backend, seed=5, n_features=len(MIXED))
    assert x.shape == (N_SAMPLES, len(MIXED))
    assert_mean_close(x, 0.0, "mean")
    assert_mean_close(x**2, 1.0, "variance")
    assert_mean_close(x**4, MIXED_K, "fourth moment")
    # The Rademacher column really is Rademacher: the columns follow their own laws.
    assert set(np.unique(x[:, 2])) == {-1.0, 1.0}


def test_per_feature_rejects_wrong_width():
    law = D.PerFeature(MIXED)
    with pytest.raises(ValueError, match="n_features"):
        law.sample(10, len(MIXED) + 1, seed=0)
    pytest.importorskip("torch")
    with pytest.raises(ValueError, match="n_features"):
        law.sample(10, 2, seed=0, backend="torch")


@pytest.mark.parametrize("laws", [[], [D.Gaussian(), 3.0], "gaussian"])
def test_per_feature_rejects_bad_laws(laws):
    with pytest.raises(ValueError, match="laws"):
        D.PerFeature(laws)


def test_kurtosis_vector():
    np.testing.assert_array_equal(D.kurtosis_vector(D.Gaussian(), 3), [3.0, 3.0, 3.0])
    np.testing.assert_array_equal(D.kurtosis_vector(4.5, 2), [4.5, 4.5])
    np.testing.assert_array_equal(D.kurtosis_vector(D.PerFeature(MIXED), 5), MIXED_K)
    with pytest.raises(ValueError, match="kurtosis"):
        D.kurtosis_vector([3.0, 3.0], 3)
    with pytest.raises(ValueError, match="kurtosis"):
        D.kurtosis_vector(0.5, 3)


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.0, -0.1, 1.5, float("nan"), float("inf"), True, "0.5"])
def test_sparse_rejects_bad_p(p):
    with pytest.raises(ValueError, match="p"):
        D.Sparse(D.Gaussian(), p)


def test_sparse_rejects_non_law_base():
    with pytest.raises(TypeError, match="base"):
        D.Sparse(3.0, 0.5)


@pytest.mark.parametrize("K", [0.999, 0.0, -2.0, float("nan")])
def test_kurtosis_below_one_is_rejected(K):
    with pytest.raises(ValueError, match="K"):
        D.ThreePoint(K)
    with pytest.raises(ValueError, match="K"):
        D.from_kurtosis(K)


@pytest.mark.parametrize(
    ("args", "kwargs", "name"),
    [
        ((-1, 2), {}, "n_samples"),
        ((2.5, 2), {}, "n_samples"),
        ((10, -3), {}, "n_features"),
        ((10, True), {}, "n_features"),
        ((10, 2), {"backend": "jax"}, "backend"),
    ],
)
def test_sample_rejects_bad_arguments(args, kwargs, name):
    with pytest.raises(ValueError, match=name):
        D.Gaussian().sample(*args, **kwargs)


# ---------------------------------------------------------------------------
# Seeded samplers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LAWS))
def test_numpy_sampler_is_reproducible(name):
    law, _ = LAWS[name]
    a = law.sample(1000, 4, seed=123)
    np.testing.assert_array_equal(a, law.sample(1000, 4, seed=123))
    np.testing.assert_array_equal(a, law.sample(1000, 4, seed=np.random.default_rng(123)))
    assert not np.array_equal(a, law.sample(1000, 4, seed=124))


@pytest.mark.parametrize("name", list(LAWS))
def test_torch_sampler_is_reproducible(name):
    torch = pytest.importorskip("torch")
    law, _ = LAWS[name]
    a = law.sample(1000, 4, seed=123, backend="torch")
    assert isinstance(a, torch.Tensor) and a.dtype == torch.float32 and a.shape == (1000, 4)
    assert torch.equal(a, law.sample(1000, 4, seed=123, backend="torch"))
    gen = torch.Generator().manual_seed(123)
    assert torch.equal(a, law.sample(1000, 4, seed=gen, backend="torch"))
    assert not torch.equal(a, law.sample(1000, 4, seed=124, backend="torch"))
    b = law.sample(10, 4, seed=1, backend="torch", dtype=torch.float64)
    assert b.dtype == torch.float64


def test_unseeded_torch_sampling_leaves_global_rng_alone():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    expected = torch.rand(5)
    torch.manual_seed(0)
    D.Gaussian().sample(10, 2, backend="torch")
    assert torch.equal(torch.rand(5), expected)


# ---------------------------------------------------------------------------
# draw_numpy / draw_torch: the public extension points of a law
# ---------------------------------------------------------------------------


class Laplace(D.InputLaw):
    """Laplace with scale 1/sqrt(2): variance 1, kurtosis 6 (a law defined outside the module)."""

    @property
    def kurtosis(self) -> float:
        return 6.0

    def draw_numpy(self, rng, shape):
        return rng.laplace(0.0, 1 / math.sqrt(2), shape)

    def draw_torch(self, gen, shape, device, dtype):
        import torch

        u = torch.rand(shape, generator=gen, device=device, dtype=dtype) - 0.5
        return -torch.sign(u) * torch.log1p(-2 * u.abs()) / math.sqrt(2)  # inverse CDF


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_a_law_defined_by_its_draw_methods_samples_through_sample(backend):
    x = _draw(Laplace(), backend, seed=4)
    assert x.shape == (N_SAMPLES, N_FEATURES)
    assert_mean_close(x, 0.0, "mean")
    assert_mean_close(x**2, 1.0, "E[x^2]")
    assert_mean_close(x**4, 6.0, "E[x^4]")
    # inside Sparse and PerFeature the draw methods compose
    y = _draw(D.PerFeature([D.Sparse(Laplace(), 0.5), D.Gaussian()]), backend, n_features=2)
    assert_mean_close(y**4, [12.0, 3.0], "E[x^4] per feature")


def test_draw_methods_are_public_and_abstract():
    assert {"draw_numpy", "draw_torch"} <= D.InputLaw.__abstractmethods__
    z = D.Gaussian().draw_numpy(np.random.default_rng(0), (4, 2))
    assert z.shape == (4, 2)
