"""Shared pytest configuration: hypothesis profiles and a seeded generator.

Profiles
--------
``ci`` (default)
    No deadline (numerical examples vary a lot in cost), a moderate number of
    examples and a derandomised search, so that a CI run is reproducible.
``dev``
    More examples, random search: ``HYPOTHESIS_PROFILE=dev pytest``.
``thorough``
    Many examples, for an occasional long run.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    deadline=None,
    max_examples=40,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=200)
settings.register_profile("thorough", deadline=None, max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def rng() -> np.random.Generator:
    """A freshly seeded numpy generator (the same stream in every test)."""
    return np.random.default_rng(20221004)
