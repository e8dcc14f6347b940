"""Tests of :mod:`capalloc._lib.validation`: every checker with good and bad values.

Each error must name the argument, so every ``pytest.raises`` matches the name
passed in (a made-up one, so that it cannot come from anywhere else).
"""

from __future__ import annotations

import datetime
from fractions import Fraction

import numpy as np
import pytest

from capalloc._lib.validation import (
    as_float_array,
    check_budget,
    check_importance,
    check_kurtosis,
    check_positive,
    check_probability,
    importance_and_max,
    readonly,
    short,
)

NAME = "my_arg"

# ----------------------------------------------------------------------------- as_float_array


@pytest.mark.parametrize(
    "value, expected",
    [
        ([1, 2.5], [1.0, 2.5]),
        (np.arange(3, dtype=np.int32), [0.0, 1.0, 2.0]),
        (np.array([0.5, 1.5], dtype=np.float32), [0.5, 1.5]),
        (np.array([1.0, 2.0], dtype=object), [1.0, 2.0]),
        ([Fraction(1, 2), 3], [0.5, 3.0]),
        (np.float64(2.0), 2.0),
        (7, 7.0),
        ([], []),
    ],
)
def test_as_float_array_accepts_real_numbers(value, expected):
    arr = as_float_array(value, NAME)
    assert arr.dtype == np.float64
    np.testing.assert_array_equal(arr, expected)


def test_as_float_array_does_not_copy_float64():
    x = np.ones(3)
    assert as_float_array(x, NAME) is x


@pytest.mark.parametrize(
    "value, why",
    [
        (np.array([1 + 2j, 3]), "complex"),
        ([1 + 0j], "complex"),
        (np.array([1.0, 2j], dtype=object), "complex"),
        (np.array([True, False]), "bool"),
        ([True, False], "bool"),
        (True, "bool"),
        (np.array([1.0, True], dtype=object), "bool"),
        (np.array(["2020-01-01"], dtype="datetime64[D]"), "datetime64"),
        (np.array([1, 2], dtype="timedelta64[s]"), "timedelta64"),
        ([np.timedelta64(1, "s")], "timedelta64"),
        ([datetime.timedelta(days=1)], "timedelta"),
        ([datetime.date(2020, 1, 1)], "date"),
        (np.array(["1.5", "2"]), "str"),
        (["1.5", 2], "str"),
        (np.array(["1.5", 2.0], dtype=object), "str"),
        (np.array([b"1"]), "bytes"),
        (np.zeros(2, dtype=[("a", "f8")]), "structured"),
    ],
)
def test_as_float_array_refuses_values_that_are_not_real(value, why):
    with pytest.raises(TypeError, match=rf"{NAME} must be array-like of real numbers.*{why}"):
        as_float_array(value, NAME)


@pytest.mark.parametrize("mask", [[False, True], [False, False]])
def test_as_float_array_refuses_masked_arrays(mask):
    with pytest.raises(TypeError, match=rf"{NAME} must be a plain array.*masked"):
        as_float_array(np.ma.array([1.0, 2.0], mask=mask), NAME)


@pytest.mark.parametrize("value", [[[1.0, 2.0], [3.0]], None, "abc", {"a": 1}])
def test_as_float_array_refuses_non_numeric(value):
    with pytest.raises(TypeError, match=NAME):
        as_float_array(value, NAME)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_as_float_array_refuses_non_finite(bad):
    with pytest.raises(ValueError, match=rf"{NAME} must be finite, found {bad!r}"):
        as_float_array([1.0, bad], NAME)


def test_as_float_array_dimensions():
    assert as_float_array(np.ones((2, 3)), NAME, ndim=2).shape == (2, 3)
    assert as_float_array(np.ones(3), NAME, ndim=(1, 2)).shape == (3,)
    assert as_float_array(np.ones((1, 2, 3)), NAME, min_ndim=2).ndim == 3
    with pytest.raises(ValueError, match=rf"{NAME} must have 2 dimension\(s\), got ndim=1"):
        as_float_array(np.ones(3), NAME, ndim=2)
    with pytest.raises(ValueError, match=rf"{NAME} must have 1 or 2 dimension\(s\), got ndim=0"):
        as_float_array(1.0, NAME, ndim=(1, 2))
    with pytest.raises(ValueError, match=rf"{NAME} must have at least 2 dimensions"):
        as_float_array(np.ones(3), NAME, min_ndim=2)


# ----------------------------------------------------------------------------- importance, kurtosis


def test_check_importance():
    np.testing.assert_array_equal(check_importance([0.0, 2.0], NAME), [0.0, 2.0])
    assert check_importance(np.ones((2, 3)), NAME, ndim=(1, 2)).shape == (2, 3)
    assert check_importance([], NAME).size == 0
    with pytest.raises(ValueError, match=rf"{NAME} must be >= 0, found -1.0"):
        check_importance([1.0, -1.0], NAME)
    with pytest.raises(ValueError, match=rf"{NAME} must have 1 dimension"):
        check_importance(np.ones((2, 2)), NAME)
    with pytest.raises(ValueError, match=rf"{NAME} must be finite"):
        check_importance([np.nan], NAME)
    with pytest.raises(TypeError, match=rf"{NAME} .*bool"):
        check_importance([True, False], NAME)
    with pytest.raises(TypeError, match=rf"{NAME} .*complex"):
        check_importance(np.array([1.0 + 1j]), NAME)


def test_check_importance_default_name():
    with pytest.raises(ValueError, match="importance must be >= 0"):
        check_importance([-1.0])


def test_check_kurtosis():
    np.testing.assert_array_equal(check_kurtosis([1.0, 3.0, 40.0], NAME), [1.0, 3.0, 40.0])
    assert check_kurtosis(3, NAME).ndim == 0
    with pytest.raises(ValueError, match=rf"{NAME} must be >= 1 .*found 0.5"):
        check_kurtosis([0.5, 3.0], NAME)
    with pytest.raises(ValueError, match=rf"{NAME} must be finite"):
        check_kurtosis(np.inf, NAME)
    with pytest.raises(TypeError, match=rf"{NAME} .*str"):
        check_kurtosis("3", NAME)
    with pytest.raises(TypeError, match=rf"{NAME} .*bool"):
        check_kurtosis(True, NAME)
    with pytest.raises(ValueError, match="kurtosis must be >= 1"):
        check_kurtosis(0.0)


# ----------------------------------------------------------------------------- scalars


@pytest.mark.parametrize("value", [0, 3, np.int64(5), 2.0, np.float32(4.0)])
def test_check_budget_accepts_non_negative_integers(value):
    out = check_budget(value, NAME)
    assert type(out) is int and out == int(value)


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        np.True_,
        -1,
        np.int8(-2),
        2.5,
        np.nan,
        np.inf,
        "3",
        None,
        1 + 0j,
        np.array(3),
        [3],
    ],
)
def test_check_budget_refuses(value):
    with pytest.raises(ValueError, match=rf"{NAME} must be a non-negative integer"):
        check_budget(value, NAME)


def test_check_budget_default_name():
    with pytest.raises(ValueError, match=r"d must be a non-negative integer, got True"):
        check_budget(True)


@pytest.mark.parametrize(
    "value, kwargs, expected",
    [
        (0.5, {}, 0.5),
        (3, {}, 3.0),
        (Fraction(1, 4), {}, 0.25),
        (0.0, {"strict": False}, 0.0),
        (4, {"integer": True}, 4),
        (np.int64(2), {"integer": True}, 2),
        (0, {"integer": True, "strict": False}, 0),
    ],
)
def test_check_positive_accepts(value, kwargs, expected):
    out = check_positive(value, NAME, **kwargs)
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize(
    "value, kwargs, match",
    [
        (0.0, {}, "must be > 0"),
        (-1.0, {"strict": False}, "must be >= 0"),
        (np.nan, {}, "must be a finite positive number"),
        (np.inf, {}, "must be a finite positive number"),
        (True, {}, "must be a finite positive number"),
        (np.True_, {}, "must be a finite positive number"),
        (1 + 0j, {}, "must be a finite positive number"),
        ("1", {}, "must be a finite positive number"),
        (2.0, {"integer": True}, "must be a finite positive integer"),
        (True, {"integer": True}, "must be a finite positive integer"),
        (0, {"integer": True}, "must be > 0"),
    ],
)
def test_check_positive_refuses(value, kwargs, match):
    with pytest.raises(ValueError, match=rf"{NAME} {match}, got"):
        check_positive(value, NAME, **kwargs)


@pytest.mark.parametrize("value", [1, 1.0, 0.25, np.float32(0.5), Fraction(1, 3)])
def test_check_probability_accepts(value):
    out = check_probability(value, NAME)
    assert type(out) is float and out == float(value)


@pytest.mark.parametrize(
    "value", [0, 0.0, -0.1, 1.5, np.nan, np.inf, True, np.True_, "0.5", None, 0.5 + 0j]
)
def test_check_probability_refuses(value):
    with pytest.raises(ValueError, match=rf"{NAME} must lie in \(0, 1\], got"):
        check_probability(value, NAME)


def test_check_probability_default_name():
    with pytest.raises(ValueError, match=r"p must lie in \(0, 1\], got 2"):
        check_probability(2)


# ----------------------------------------------------------------------------- helpers


def test_short_truncates_and_summarises_arrays():
    assert short(1.5) == "1.5"
    assert short("x" * 100).endswith("...") and len(short("x" * 100)) == 60
    assert short(np.arange(100)).startswith("array(shape=(100,),")
    assert len(short(list(range(100)), limit=20)) == 20


def test_readonly():
    x = np.arange(3.0)
    y = readonly(x)
    assert not y.flags.writeable and x.flags.writeable and y is not x
    z = readonly(x, copy=False)
    assert z is x and not x.flags.writeable
    w = readonly([1, 2], dtype=np.float64)
    assert w.dtype == np.float64 and not w.flags.writeable
    assert readonly(3.0) == 3.0
    assert readonly("label") == "label"


def test_check_budget_refuses_counts_beyond_exact_floats():
    assert check_budget(2**53) == 2**53
    for value in (2**53 + 1, 10**400):
        with pytest.raises(ValueError, match=r"d must be at most 2\*\*53"):
            check_budget(value)


def test_readonly_shared_keeps_frozen_arrays_and_copies_the_rest():
    frozen = np.arange(4.0)
    frozen.setflags(write=False)
    shared = readonly(frozen, float, copy="shared")
    assert np.shares_memory(shared, frozen) and not shared.flags.writeable
    writeable = np.arange(4.0)
    copied = readonly(writeable, float, copy="shared")
    assert not np.shares_memory(copied, writeable) and not copied.flags.writeable
    ints = np.arange(4)
    ints.setflags(write=False)
    assert readonly(ints, float, copy="shared").dtype == np.float64


@pytest.mark.parametrize(
    "values",
    [
        [0.0, 1.0, 5e-324],
        [1e308, np.finfo(float).max, 0.0],
        [-0.0, 2.0],  # the sign bit: the two-pass path, which accepts -0.0 >= 0
        np.geomspace(1e-300, 1e300, 1001),
    ],
)
def test_importance_max_in_one_pass_agrees_with_numpy(values):
    v = np.asarray(values, dtype=float)
    for arr in (v, v[::-2], np.broadcast_to(v, (3, v.size))):
        got, vmax = importance_and_max(arr, ndim=None)
        assert got is arr and vmax == arr.max()


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.nan, "finite, found nan"),
        (-np.nan, "finite, found nan"),
        (np.inf, "finite, found inf"),
        (-np.inf, "finite, found -inf"),
        (-5e-324, ">= 0, found -5e-324"),
        (-1.0, ">= 0, found -1.0"),
    ],
)
def test_importance_one_pass_still_names_the_bad_value(bad, match):
    v = np.linspace(0.0, 1.0, 10_001)
    v[1234] = bad
    with pytest.raises(ValueError, match=match):
        importance_and_max(v)


def test_readonly_shared_copies_strided_views():
    base = np.arange(8.0)
    base.setflags(write=False)
    strided = readonly(base[::2], float, copy="shared")
    assert strided.flags.c_contiguous and not np.shares_memory(strided, base)
