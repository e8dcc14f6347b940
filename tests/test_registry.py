"""The one registry behind solver methods, training methods and models."""

from __future__ import annotations

import pytest

import capalloc
from capalloc._lib.registry import Registry
from capalloc.training.train import train_methods


def test_names_are_sorted_and_entries_returned():
    reg = Registry("method")
    reg.add("b", 2)
    reg.register("a")(1)
    assert reg.names() == ["a", "b"] and list(reg) == ["a", "b"]
    assert reg["a"] == 1 and "b" in reg and "c" not in reg
    assert reg.items() == [("a", 1), ("b", 2)]


def test_a_name_is_registered_once():
    reg = Registry("method")
    reg.add("x", 1)
    with pytest.raises(ValueError, match="method 'x' is already registered"):
        reg.add("x", 2)
    assert reg["x"] == 1  # the first entry is kept


@pytest.mark.parametrize("name", ["", None, 3])
def test_names_must_be_non_empty_strings(name):
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        Registry("model_name").add(name, 1)


def test_unknown_names_list_the_valid_ones():
    reg = Registry("model_name")
    reg.add("relu", 1)
    with pytest.raises(ValueError, match=r"model_name must be one of \['relu'\], got 'gelu'"):
        reg["gelu"]


def test_solver_methods_refuse_a_second_registration():
    with pytest.raises(ValueError, match="already registered"):
        capalloc.register_method("waterfill")(lambda problem: None)
    assert capalloc.get_method("waterfill").function is capalloc.waterfill


def test_every_registry_is_the_shared_one():
    import importlib

    solve_module = importlib.import_module("capalloc.allocation.solve")
    train_module = importlib.import_module("capalloc.training.train")

    assert isinstance(solve_module._REGISTRY, Registry)
    assert isinstance(train_module._METHODS, Registry)
    assert train_methods() == ["exact", "sampled"]
