"""AllocationResult and the problems as value objects: equality, hashing, ``replace``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import capalloc
from capalloc import QuadraticProblem, SeparableProblem


@pytest.fixture
def problem():
    return QuadraticProblem([4.0, 2.0, 1.0, 0.2], d=2, kurtosis=10.0)


def test_problems_and_results_compare_by_identity_and_hash(problem):
    twin = QuadraticProblem([4.0, 2.0, 1.0, 0.2], d=2, kurtosis=10.0)
    assert problem == problem and problem != twin  # no elementwise array comparison
    res = capalloc.solve(problem)
    assert res == res and res != capalloc.solve(twin)
    assert len({problem, twin, res}) == 3  # hashable
    sep = SeparableProblem(lambda C: 1 - C, lambda C: np.ones_like(C), n=2, d=1)
    assert len({sep}) == 1


def test_replace_recomputes_derived_fields(problem):
    res = capalloc.solve(problem)
    C = np.array([1.0, 1.0, 0.0, 0.0])
    other = dataclasses.replace(res, capacity=C)
    # norms follow the capacities held: N* = (K - 1) v C / (2 + (K - 3) C) = v for C = 1
    np.testing.assert_allclose(other.norms, [4.0, 2.0, 0.0, 0.0])
    assert other.labels.tolist() == ["monosemantic", "monosemantic", "ignored", "ignored"]
    np.testing.assert_allclose(res.norms, problem.optimal_norms(res.capacity))


def test_replace_on_a_problem_validates_again(problem):
    bigger = dataclasses.replace(problem, importance=[8.0, 1.0, 0.5, 0.1])
    assert bigger.vmax == 8.0 and bigger.n == 4
    with pytest.raises(ValueError, match="importance"):
        dataclasses.replace(problem, importance=[-1.0, 1.0, 0.5, 0.1])


def test_result_arrays_are_read_only(problem):
    res = capalloc.solve(problem)
    for array in (res.capacity, res.norms, res.labels):
        with pytest.raises(ValueError):
            array[0] = array[1]
