"""The SPEC language of capalloc.profiles and the sparsity-to-kurtosis conversion."""

from __future__ import annotations

import math

import numpy as np
import pytest

import capalloc
from capalloc import distributions as D
from capalloc.profiles import (
    constant,
    geometric,
    parse_profile,
    powerlaw,
    spec_length,
    uniform,
)

# ----------------------------------------------------------------------------- generators


def test_generators_against_hand_values():
    assert geometric(0.5, 4).tolist() == [1.0, 0.5, 0.25, 0.125]
    assert geometric(3.0, 3).tolist() == [1.0, 3.0, 9.0]
    np.testing.assert_allclose(powerlaw(1.0, 4), [1.0, 1 / 2, 1 / 3, 1 / 4], rtol=1e-15)
    np.testing.assert_allclose(powerlaw(-0.5, 3), [1.0, math.sqrt(2), math.sqrt(3)], rtol=1e-15)
    assert constant(2).tolist() == [1.0, 1.0]
    assert constant(3, -2.5).tolist() == [-2.5, -2.5, -2.5]


def test_uniform_is_seeded_and_uniform():
    u = uniform(20_000, seed=5)
    assert u.shape == (20_000,) and u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005
    np.testing.assert_array_equal(u, uniform(20_000, seed=5))
    assert not np.array_equal(u[:10], uniform(10, seed=6))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: geometric(0.0, 3), "ratio must be > 0, got 0.0"),
        (lambda: geometric(0.5, 0), "n must be > 0, got 0"),
        (lambda: powerlaw(float("nan"), 3), "exponent must be a finite number, got nan"),
        (lambda: uniform(3, seed=-1), "seed must be >= 0, got -1"),
        (lambda: constant(2, float("inf")), "value must be a finite number, got inf"),
        (lambda: constant(2.5), "n must be a finite positive integer, got 2.5"),
    ],
)
def test_generator_errors_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


# ----------------------------------------------------------------------------- SPEC parsing


def test_specs_give_the_generators_and_lists():
    np.testing.assert_array_equal(parse_profile("geometric:0.8:5"), 0.8 ** np.arange(5))
    np.testing.assert_allclose(parse_profile("powerlaw:2:4"), [1, 1 / 4, 1 / 9, 1 / 16])
    assert parse_profile(" Constant : 3 : 0.5 ").tolist() == [0.5, 0.5, 0.5]
    assert parse_profile("constant:1e1").tolist() == [1.0] * 10  # an integral float is a count
    np.testing.assert_array_equal(parse_profile("uniform:50:7"), uniform(50, seed=7))
    np.testing.assert_array_equal(parse_profile("uniform:50"), uniform(50, seed=0))
    assert parse_profile("1, 0.5,0.25").tolist() == [1.0, 0.5, 0.25]
    assert parse_profile("2.5").tolist() == [2.5]
    assert capalloc.parse_profile is parse_profile


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".txt", ".csv", ".tsv"])
def test_file_specs(tmp_path, suffix):
    v = np.array([1.0, 0.7, 0.4, 0.2, 0.05])
    path = tmp_path / f"v{suffix}"
    if suffix == ".npy":
        np.save(path, v)
    elif suffix == ".npz":
        np.savez(path, importance=v)
    else:
        sep = {".csv": ",", ".tsv": "\t", ".txt": "\n"}[suffix]
        path.write_text(sep.join(repr(float(x)) for x in v) + "\n")
    np.testing.assert_array_equal(parse_profile(str(path)), v)
    np.testing.assert_array_equal(parse_profile(path), v)
    assert spec_length(str(path)) is None


def test_spec_length_allocates_nothing(monkeypatch):
    def no_alloc(*args, **kwargs):
        raise AssertionError("allocated")

    monkeypatch.setattr(np, "arange", no_alloc)
    monkeypatch.setattr(np, "full", no_alloc)
    assert spec_length("powerlaw:1.1:10000000000") == 10**10
    assert spec_length("constant:" + "9" * 300) == int("9" * 300)
    assert spec_length("1,2,3,4") == 4
    assert spec_length("missing.npy") is None


def test_huge_generators_are_refused_before_allocating(monkeypatch):
    import capalloc.io

    monkeypatch.setattr(capalloc.io, "_available_memory", lambda: 2**20)
    with pytest.raises(ValueError, match="needs 7.63 MiB of memory; only 1 MiB available"):
        parse_profile("constant:1000000")
    assert parse_profile("constant:1000").size == 1000


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "importance SPEC is empty"),
        ("1,,3", "importance SPEC '1,,3' has an empty entry"),
        ("1,x,3", "importance entry must be a number, got 'x'"),
        ("1,nan", "importance entry must be finite, got 'nan'"),
        ("zipf:2:10", "importance SPEC 'zipf:2:10' is not a generator; use geometric:RATIO:N"),
        ("geometric:0.5", "importance SPEC 'geometric:0.5' is not a generator"),
        ("geometric:0.5:-3", "N in importance SPEC 'geometric:0.5:-3' must be a positive integer"),
        ("geometric:0:3", "RATIO in importance SPEC 'geometric:0:3' must be > 0, got 0.0"),
        ("powerlaw:x:3", "EXPONENT in importance SPEC 'powerlaw:x:3' must be a number, got 'x'"),
        ("uniform:4:-1", "SEED in importance SPEC 'uniform:4:-1' must be a non-negative integer"),
        ("uniform:4:1.5", "SEED in importance SPEC 'uniform:4:1.5' must be a non-negative"),
        ("constant:2.5", "N in importance SPEC 'constant:2.5' must be a positive integer"),
        ("constant:3:inf", "VALUE in importance SPEC 'constant:3:inf' must be finite, got 'inf'"),
    ],
)
def test_bad_specs_name_spec_argument_and_value(spec, message):
    with pytest.raises(ValueError) as info:
        parse_profile(spec)
    assert str(info.value).startswith(message), str(info.value)
    with pytest.raises(ValueError):
        spec_length(spec)


def test_the_name_appears_in_messages():
    with pytest.raises(ValueError, match="^kurtosis SPEC '1,,2' has an empty entry$"):
        parse_profile("1,,2", "kurtosis")
    with pytest.raises(TypeError, match="importance SPEC must be a string or a path, got 3"):
        parse_profile(3)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- sparsity -> kurtosis


@pytest.mark.parametrize(
    "base, K0", [(None, 3.0), (D.Gaussian(), 3.0), (D.Uniform(), 1.8), (D.Rademacher(), 1.0)]
)
@pytest.mark.parametrize("S", [0.0, 0.5, 0.9, 0.99])
def test_sparse_kurtosis_is_base_over_active_probability(base, K0, S):
    K = D.sparse_kurtosis(S, base)
    assert isinstance(K, float)
    assert K == pytest.approx(K0 / (1.0 - S), rel=1e-15)
    assert K == pytest.approx(D.Sparse(base or D.Gaussian(), p=1.0 - S).kurtosis, rel=1e-15)


def test_sparse_kurtosis_matches_a_sampled_fourth_moment():
    x = D.Sparse(D.Uniform(), p=0.25).sample(400_000, 1, seed=1)
    assert float(np.mean(x**4)) == pytest.approx(D.sparse_kurtosis(0.75, D.Uniform()), rel=0.03)


def test_sparse_kurtosis_arrays_and_errors():
    np.testing.assert_allclose(
        D.sparse_kurtosis([0.0, 0.5, 0.8], 2.0), [2.0, 4.0, 10.0], rtol=1e-15
    )
    for bad in (1.0, -0.1, [0.2, 1.5]):
        with pytest.raises(ValueError, match=r"sparsity must lie in \[0, 1\)"):
            D.sparse_kurtosis(bad)
    with pytest.raises(ValueError, match="base"):
        D.sparse_kurtosis(0.5, 0.5)
    with pytest.raises(TypeError, match="sparsity"):
        D.sparse_kurtosis("0.5")
