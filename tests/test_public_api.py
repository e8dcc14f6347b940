"""The public API of 0.1.0 survives the re-layering: every name still imports from capalloc."""

from __future__ import annotations

import inspect

import pytest

import capalloc

#: ``capalloc.__all__`` of version 0.1.0.
NAMES_0_1_0 = """
AllocationResult AllocationWarning IGNORED LABELS MONOSEMANTIC POLYSEMANTIC QuadraticProblem
SeparableProblem __version__ capacity capacity_form_loss classify distributions get_method
kkt_residual leverage methods optimal_bias quadratic_loss quadratic_loss_grad register_method
solve waterfill theory testing plots experiments sweep sensitivity train geometry solve_scipy
solve_slsqp solve_cvxpy train_quadratic TrainResult find_blocks Block is_block_semi_orthogonal
realize tight_frame
""".split()

MODULES = {
    "distributions",
    "theory",
    "testing",
    "plots",
    "experiments",
    "sweep",
    "sensitivity",
    "train",
    "geometry",
}


@pytest.mark.parametrize("name", NAMES_0_1_0)
def test_every_0_1_0_name_imports_from_capalloc(name):
    assert name in capalloc.__all__
    obj = getattr(capalloc, name)
    assert inspect.ismodule(obj) == (name in MODULES)


def test_the_method_names_keep_working():
    assert {"waterfill", "scipy", "slsqp", "cvxpy"} <= set(capalloc.methods())


def test_moved_modules_keep_their_public_functions():
    assert capalloc.sweep.run_sweep is not None
    assert capalloc.sensitivity.sensitivity is not None
    assert capalloc.train.train_quadratic is capalloc.train_quadratic
    assert capalloc.experiments.phase_diagram is not None
